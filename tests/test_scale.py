"""Scale: streamed (host memory, iterator, Parquet) and sharded fits equal the in-memory fit to 1e-10."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mestim
from estimators import linear, logistic
from mestim import Block
from mestim.errors import SpecificationError
from mestim.scale import batches, fit_stream

TOL = 1e-10
N = 2500
BATCH = 700  # 3 full batches and a padded one
CHUNK = 256


def _estimand(tau, row, part, trt):  # module level: the same ψ object in every fit (no recompilation)
    p = jax.nn.sigmoid(row["part.X"] @ part)
    e = jax.nn.sigmoid(row["trt.X"] @ trt)
    a, y, r = row["A"], row["Y"], row["R"]
    return r * (1 - p) / p * (a * y / e - (1 - a) * y / (1 - e)) - (1 - r) * tau[0]


def _stack():
    """A small transport weighting stack: participation, treatment in the trials, weighted estimand (p = 8)."""
    return [logistic("part", "R", ["x1", "x2"]), logistic("trt", "A", ["x1", "x2", "t2"], mask="R"),
            Block("tau", _estimand, init=[0.0], reads=("part", "trt"))]


def _ratio(tau, row, part):
    p = jax.nn.sigmoid(row["part.X"] @ part)
    return row["R"] * (1 - p) / p * row["Y"] - (1 - row["R"]) * tau[0]


def _small_stack():
    """Two groups (the second reads the first): the cheapest stack that exercises blockwise solving."""
    return [logistic("part", "R", ["x1", "x2"]), Block("tau", _ratio, init=[0.0], reads=("part",))]


def _data(n=N, seed=1):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal(n), rng.standard_normal(n)
    r = (rng.random(n) < 1 / (1 + np.exp(-(0.3 * x1 - 0.2 * x2)))).astype(float)
    a = ((rng.random(n) < 0.5) & (r > 0)).astype(float)
    t2 = ((rng.random(n) < 0.5) & (r > 0)).astype(float)
    y = (x1 + a * (1 + 0.5 * x1) + rng.standard_normal(n)) * r
    return {"x1": x1, "x2": x2, "R": r, "A": a, "Y": y, "t2": t2, "w": rng.uniform(0.5, 2.0, n)}


def _same(a, b, tol=TOL):
    assert a.labels == b.labels
    np.testing.assert_allclose(a.theta, b.theta, rtol=0, atol=tol)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=tol, atol=tol * np.abs(a.vcov).max())


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def reference(data):
    return mestim.fit(_stack(), data, weights="w", chunk_size=CHUNK)


def test_batches_rebatch_arbitrary_chunks(data):
    def source():
        i = 0
        for size in [1, 999, 5, 1200, 295]:  # chunks of any sizes
            yield {k: v[i:i + size] for k, v in data.items()}
            i += size
    out = list(batches(source, 700))
    assert [len(b["x1"]) for b in out] == [700, 700, 700, 400]
    np.testing.assert_array_equal(np.concatenate([b["Y"] for b in out]), data["Y"])


def test_stream_host_dataframe_equals_in_memory(data, reference):
    import pandas as pd

    seen = []
    res = fit_stream(_stack(), pd.DataFrame(data), weights="w", batch_rows=BATCH, chunk_size=CHUNK,
                     progress=seen.append)
    _same(res, reference)
    assert res.n_rows == N and res.n == pytest.approx(data["w"].sum())
    from mestim.blocks import solve_levels
    from mestim.problem import prepare

    levels = len(solve_levels(prepare(_stack(), data).spec.blocks))
    # a pass per Newton iteration and one at each level's start; the last pass also gives the bread and meat
    assert len(seen) == res.iterations + levels
    assert all(s["rows"] == N for s in seen)


def test_stream_iterator_and_parquet_equal_in_memory(data, reference, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def chunks():  # a generator function: called once per pass
        for i in range(0, N, 333):
            yield {k: v[i:i + 333] for k, v in data.items()}
    _same(fit_stream(_stack(), chunks, weights="w", batch_rows=BATCH, chunk_size=CHUNK), reference)
    path = tmp_path / "pooled.parquet"
    pq.write_table(pa.table(data), path, row_group_size=600)
    _same(fit_stream(_stack(), str(path), weights="w", batch_rows=BATCH, chunk_size=CHUNK), reference)
    with pytest.raises(SpecificationError, match="fresh iterator"):
        fit_stream(_stack(), chunks(), weights="w", batch_rows=BATCH)


def test_streamed_slabs_hold_no_more_rows_than_a_batch(data, reference, monkeypatch):
    """A batch is cut into whole slabs, not padded up to a larger one (a 16-chunk batch in a 64-chunk slab held 4×
    its rows on the host and the device: +250 MB at the default batch of the W2 benchmark)."""
    import mestim.scale as scale
    from mestim.sums import SLAB_CHUNKS

    slab_rows = []

    def spy(columns, w, chunk, parts=1, capacity=None):
        slab_rows.append(capacity * chunk)
        return layout(columns, w, chunk, parts, capacity)
    layout = scale.layout
    monkeypatch.setattr(scale, "layout", spy)
    for batch in (BATCH, 16 * CHUNK, 100 * CHUNK):
        slab_rows.clear()
        _same(fit_stream(_stack(), data, weights="w", batch_rows=batch, chunk_size=CHUNK), reference)
        allowed = max((c for c in SLAB_CHUNKS if c * CHUNK <= batch), default=1) * CHUNK
        assert set(slab_rows) == {allowed}


def test_stream_does_not_recompile(data):
    fit_stream(_stack(), data, weights="w", batch_rows=BATCH, chunk_size=CHUNK)
    other = _data(seed=7)  # new values, same shapes
    with mestim.compilations() as count:
        fit_stream(_stack(), other, weights="w", batch_rows=BATCH, chunk_size=CHUNK)
    assert count.programs == 0


def test_in_memory_refit_does_not_recompile(data, reference):
    with mestim.compilations() as count:
        mestim.fit(_stack(), _data(seed=3), weights="w", chunk_size=CHUNK)
    assert count.programs == 0


def test_stream_rejects_unsupported(data):
    with pytest.raises(SpecificationError, match="fay"):
        fit_stream(_stack(), data, correction="fay")


def test_float32_data_path_accuracy(data):
    reference = mestim.fit(logistic("part", "R", ["x1", "x2"]), data, weights="w", chunk_size=CHUNK)
    res = mestim.fit(logistic("part", "R", ["x1", "x2"]), data, weights="w", chunk_size=CHUNK, data_dtype="float32")
    # float32 storage rounds the data (relative 6e-8); ψ and the sums stay float64 (measured: θ̂ moves 3.5e-8 SE,
    # the SEs 3.8e-10 relative)
    assert np.max(np.abs(res.theta - reference.theta) / reference.se) < 1e-6
    np.testing.assert_allclose(res.se, reference.se, rtol=1e-8)



def test_float32_data_path_fay_leverages_read_the_data_not_its_centred_storage():
    """Fay's leverages diag(J_i J⁻¹) come from ψ's derivative on each row: float32 columns must be widened to
    c + (x − c) there too (they were read as x − c, off by 99.9% for a covariate 1000 + N(0, 1))."""
    rng = np.random.default_rng(0)
    x = 1000 + rng.normal(size=500)
    d = {"x": x, "y": 2 * (x - 1000) + rng.normal(size=500)}

    def psi(t, r):
        e = r["y"] - t[0] - t[1] * r["x"]
        return jnp.array([e, e * r["x"]])
    for estimator, init in (([linear("m", "y", ["x"])], None), (psi, [0.0, 0.0])):
        ref = mestim.fit(estimator, d, init=init, correction="fay")
        res = mestim.fit(estimator, d, init=init, correction="fay", data_dtype="float32")
        np.testing.assert_allclose(res.se, ref.se, rtol=1e-6)


_SHARDED = textwrap.dedent("""
    import json, sys
    import numpy as np, jax, mestim
    sys.path.insert(0, {tests!r})
    from test_scale import _small_stack as _stack, _data, BATCH, CHUNK
    from mestim.scale import fit_stream
    assert len(jax.devices()) == 8, jax.devices()
    d = _data(2501)  # not a multiple of 8: padding rows
    d["site"] = np.arange(2501) % 37
    ref = mestim.fit(_stack(), d, weights="w", chunk_size=CHUNK)
    out = {{}}
    def diff(a, b):
        return [float(np.max(np.abs(a.theta - b.theta))),
                float(np.max(np.abs(a.vcov - b.vcov)) / np.max(np.abs(b.vcov))), a.n_rows]
    out["sharded"] = diff(mestim.fit(_stack(), d, weights="w", chunk_size=CHUNK, devices=8), ref)
    out["streamed+sharded"] = diff(fit_stream(_stack(), d, weights="w", batch_rows=BATCH, chunk_size=CHUNK,
                                              devices=8), ref)
    refc = mestim.fit(_stack(), d, weights="w", chunk_size=CHUNK, cluster="site")
    shc = mestim.fit(_stack(), d, weights="w", chunk_size=CHUNK, cluster="site", devices=4)
    out["clustered sharded"] = diff(shc, refc)
    out["influence rows"] = list(shc.influence().shape)
    print(json.dumps(out))
""")


def test_sharded_8_devices_equals_streamed_and_in_memory():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = _SHARDED.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("sharded", "streamed+sharded", "clustered sharded"):
        dtheta, dvcov, n_rows = res[name]
        assert dtheta < TOL and dvcov < TOL, (name, res[name])
        assert n_rows == 2501
    assert res["influence rows"][0] == 2501


def test_persistent_compilation_cache_reused_by_second_process(tmp_path):
    code = textwrap.dedent("""
        import numpy as np, mestim  # the persistent cache is on by default, in $MESTIM_CACHE_DIR
        rng = np.random.default_rng(0)
        x = rng.standard_normal(300)
        mestim.fit(lambda t, r: r["y"] - t, {"y": x + 1.0}, init=[0.0])
    """)
    env = dict(os.environ, MESTIM_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    first = run()
    assert first, "the first process wrote no compiled code to the cache"
    assert run() == first  # the second process found every compiled function there: nothing new written
