"""Constants a block learns from the data (``center``/``scale``/``standardize``/``poly`` in a formula, a robust
regression's κ) are learnt from all rows in a stream and on Dask partitions (:mod:`mestim.constants`): equal to the in-memory fit
(θ 1e-10, SE 1e-8); those that are not sums over rows are refused before any pass. (Across processes:
``test_processes_agreement.py``.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import estimators as est
import mestim
from mestim.scale import fit_stream

BATCH = 450
SCALED = "~ center(x1) + scale(x2) + standardize(x1):x2 + scale(x3, center=False, ddof=0)"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(8)
    n = 2000
    x1 = rng.normal(3.0, 1.0, n) + np.linspace(0, 4, n)  # each batch has its own mean and spread
    x2 = rng.normal(size=n) * np.linspace(0.5, 2, n)
    y = 1.0 + 0.5 * x1 - x2 + 0.3 * x1 * x2 + rng.standard_t(3, n)
    x3, a = rng.gamma(2.0, 1.0, n), (rng.random(n) < 0.5).astype(float)
    return {"x1": x1, "x2": x2, "x3": x3, "a": a, "y": y + 0.2 * x3 + a, "w": rng.uniform(0.5, 2.0, n)}


def _same(got, ref):
    np.testing.assert_allclose(got.theta, ref.theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.se, ref.se, rtol=1e-8, atol=0)


def _gformula(formula):
    outcome = est.linear("om", "y", formula=formula)
    return [outcome, est.gformula("gf", "a", outcome=outcome)]


def _counted(data):
    """A source that counts how often it is read (once per pass; the first batch's read included)."""
    frame = pd.DataFrame(data)

    def chunks():
        chunks.opened += 1
        return (frame.iloc[a:a + 300] for a in range(0, len(frame), 300))

    chunks.opened = 0
    return chunks


@pytest.mark.parametrize("blocks, passes_to_learn", [
    (lambda: [est.linear("m", "y", formula=SCALED)], 2),  # scale's sd needs its agreed mean: two levels
    (lambda: [est.linear("m", "y", formula="~ center(x1) + x2")], 1),
    (lambda: [est.linear("m", "y", formula="~ poly(x1, 3) + center(x2)")], 4),  # poly: one degree at a time
    (lambda: [est.robust_regression("r", "y", ["x1", "x2"])], 1),
    (lambda: [est.robust_regression("r", "y", formula="~ center(x1) + x2", norm="tukey", scale=1.5)], 1),
    (lambda: [est.linear("m", "y", ["x1", "x2"])], 0),  # nothing to learn: no extra pass
    (lambda: _gformula("~ a * center(x1) + scale(x2):x1"), 2),  # counterfactual designs keep the learnt constants
])
def test_streamed_constants_learnt_from_every_batch(data, blocks, passes_to_learn):
    ref = mestim.fit(blocks(), data, weights="w")
    source, seen = _counted(data), []
    res = fit_stream(blocks(), source, weights="w", batch_rows=BATCH, progress=seen.append)
    _same(res, ref)
    assert source.opened == 1 + passes_to_learn + len(seen)  # the first batch, the learning passes, the fit's


def test_parquet_file_streamed_with_learnt_constants(data, tmp_path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame(data).to_parquet(path, row_group_size=300)
    blocks = lambda: [est.linear("m", "y", formula=SCALED), est.robust_regression("r", "y", ["x1"])]  # noqa: E731
    _same(fit_stream(blocks(), str(path), weights="w", batch_rows=BATCH), mestim.fit(blocks(), data, weights="w"))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # a cluster starts in ~20 s
def test_dask_partitions_learn_constants_from_every_partition(data, workers):
    """On Dask's own scheduler, and on a cluster of two worker processes (the learning pass runs on them)."""
    dd = pytest.importorskip("dask.dataframe")
    blocks = lambda: [est.linear("m", "y", formula=SCALED), est.robust_regression("r", "y", ["x1"])]  # noqa: E731
    ref = mestim.fit(blocks(), data, weights="w")
    if not workers:
        _same(fit_stream(blocks(), dd.from_pandas(pd.DataFrame(data), npartitions=4), weights="w"), ref)
        return
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        frame = dd.from_pandas(pd.DataFrame(data), npartitions=4).persist()
        with distributed.get_task_stream(client) as tasks:
            res = fit_stream(blocks(), frame, weights="w")
    _same(res, ref)
    learning = [t for t in tasks.data if str(t["key"]).startswith("_partition_constants")]
    assert len(learning) == 2 * 4  # two levels (a scale's sd after its mean), every partition, on the workers


@pytest.mark.parametrize("block, words", [
    (lambda: est.linear("m", "y", formula="~ bs(x1, df=4) + x2"), ["bs(x1, df=4)", "knots"]),
    (lambda: est.linear("m", "y", formula="~ 0 + cr(x1, df=3)"), ["cr(x1, df=3)", "knots"]),
    (lambda: est.robust_regression("r", "y", ["x1"], scale="mad"), ["scale='mad'", "give scale="]),
    (lambda: mestim.Block("q", lambda t, r: 0.5 - 1.0 * (r["y"] <= t[0]), init=[1.0], smooth="auto"),
     ["smooth='auto'", "smooth=h"]),
])
def test_constants_that_are_not_sums_are_refused_before_any_pass(data, block, words):
    source = _counted(data)
    with pytest.raises(mestim.MestimError, match="in a streamed fit it would be learnt from part of the rows") as e:
        fit_stream([block()], source, batch_rows=BATCH)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert source.opened == 1  # only the first batch was read
    mestim.fit([block()], data)  # in memory every row is there: the same estimator is fine


def test_a_statsmodels_block_is_refused_in_a_stream(data):
    """It holds the model's arrays of all rows, row for row: no batch matches them."""
    sm = pytest.importorskip("statsmodels.api")
    frame = pd.DataFrame(data)
    fitted = sm.OLS(frame.y, sm.add_constant(frame[["x1"]])).fit()
    source = _counted(data)
    with pytest.raises(mestim.SpecificationError, match="holds its 2000 rows, so in a streamed fit"):
        fit_stream([est.from_statsmodels("o", fitted)], source, batch_rows=BATCH)
    assert source.opened == 1


@pytest.mark.parametrize("scale, norm", [("huber", "huber"), ("huber", "tukey"), (1.5, "huber")])
def test_robust_stream_whose_last_batch_is_smaller_than_its_coefficients(data, scale, norm):
    """The last batch (2 rows, 3 coefficients) cannot give a start, and needs none: no false 'too few rows'."""
    blocks = lambda: [est.robust_regression("r", "y", ["x1", "x2"], scale=scale, norm=norm)]  # noqa: E731
    _same(fit_stream(blocks(), data, batch_rows=666), mestim.fit(blocks(), data))
