"""Streamed fits from the sources users already have equal the in-memory fit to 1e-10 (θ and vcov).

The stack, data and tolerance are those of ``test_scale``: a small transport weighting stack (p = 8), 2500 rows
read in batches of 700 (three full batches and a short one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import mestim
from mestim.readers import chunk_reader
from mestim.scale import batches, fit_stream
from test_scale import BATCH, CHUNK, N, _data, _same, _stack


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def reference(data):
    return mestim.fit(_stack(), data, weights="w", chunk_size=CHUNK)


@pytest.fixture(scope="module")
def parquet_dir(data, tmp_path_factory):
    """The data as three Parquet files (row groups of 400 rows, page checksums written)."""
    root = tmp_path_factory.mktemp("pooled")
    table = pa.table(data)
    for i, (a, b) in enumerate([(0, 1000), (1000, 1800), (1800, N)]):
        pq.write_table(table.slice(a, b - a), root / f"part-{i}.parquet", row_group_size=400,
                       write_page_checksum=True)
    return root


def _sources(data, parquet_dir):
    import pandas as pd
    import polars as pl

    table = pa.table(data)
    return {
        "parquet directory": lambda: str(parquet_dir),
        "pyarrow Table": lambda: table,
        "pyarrow Dataset": lambda: ds.dataset(parquet_dir, format="parquet"),
        "polars LazyFrame": lambda: pl.scan_parquet(parquet_dir / "*.parquet"),
        "polars DataFrame": lambda: pl.DataFrame(data),
        "pandas DataFrame": lambda: pd.DataFrame(data),
        "iterator function": lambda: lambda: ({k: v[i:i + 333] for k, v in data.items()} for i in range(0, N, 333)),
    }


@pytest.mark.parametrize("kind", ["parquet directory", "pyarrow Table", "pyarrow Dataset", "polars LazyFrame",
                                  "polars DataFrame", "pandas DataFrame", "iterator function"])
def test_every_source_equals_in_memory(kind, data, reference, parquet_dir):
    res = fit_stream(_stack(), _sources(data, parquet_dir)[kind](), weights="w", batch_rows=BATCH, chunk_size=CHUNK)
    _same(res, reference)
    assert res.n_rows == N and res.n == pytest.approx(data["w"].sum(), rel=1e-14)


def test_parquet_file_equals_in_memory(data, parquet_dir):
    part = {k: v[:1000] for k, v in data.items()}
    reference = mestim.fit(_stack(), part, weights="w", chunk_size=CHUNK)
    _same(fit_stream(_stack(), str(parquet_dir / "part-0.parquet"), weights="w", batch_rows=BATCH,
                     chunk_size=CHUNK), reference)


def test_dataset_and_columns_read_in_batches(data, parquet_dir):
    """A pyarrow Dataset is read in batches (it used to fail: an int was passed as its columns)."""
    out = list(batches(ds.dataset(parquet_dir, format="parquet"), 700, columns=["x1", "w"]))
    assert [len(b["x1"]) for b in out] == [700, 700, 700, 400]
    assert all(list(b) == ["x1", "w"] for b in out)
    np.testing.assert_array_equal(np.concatenate([b["x1"] for b in out]), data["x1"])


def test_polars_lazyframe_is_collected_in_streaming_batches(parquet_dir):
    import polars as pl

    chunks = list(chunk_reader(pl.scan_parquet(parquet_dir / "*.parquet"), 300)())
    assert len(chunks) >= N // 300 and max(c.height for c in chunks) <= 300
    assert sum(c.height for c in chunks) == N


_READ_MEMORY = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from mestim.scale import batches
    path, pause, rows = sys.argv[1], float(sys.argv[2]), 0
    for b in batches(path, 8192):  # a consumer slower than the decoder, as a fit is
        time.sleep(pause)
        rows += len(b["x0"])
    print(json.dumps([rows, pa.default_memory_pool().max_memory()]))
""")


def test_parquet_reading_holds_one_batch_not_the_file(tmp_path):
    """pyarrow's defaults (pre-buffering; the Dataset scanner's decoding ahead of a slower consumer) held up to
    the whole file: memory grew with the rows."""
    n, path = 400_000, tmp_path / "wide.parquet"
    table = pa.table({f"x{j}": np.random.default_rng(j).standard_normal(n) for j in range(8)})  # 25.6 MB
    pq.write_table(table, path, row_group_size=20_000, compression="none")
    rows, arrow_peak = _arrow_peak(path)
    assert rows == n
    assert arrow_peak < 0.25 * table.nbytes, f"pyarrow held {arrow_peak / 1e6:.1f} MB of {table.nbytes / 1e6:.1f} MB"


def _arrow_peak(path, pause=0.01):
    out = subprocess.run([sys.executable, "-c", _READ_MEMORY, str(path), str(pause)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parquet_file_of_one_row_group_is_read_in_bounded_memory(tmp_path):
    """A file written as one row group (older pyarrow's default) was read a whole column chunk per column at a
    time: memory grew with the rows (19.8 MB at 300,000 rows, 39.1 MB at 900,000). Read through a bounded buffer
    it is the same at both sizes."""
    peaks = []
    for n in (300_000, 900_000):
        path = tmp_path / f"one-{n}.parquet"
        pq.write_table(pa.table({f"x{j}": np.random.default_rng(j).standard_normal(n) for j in range(4)}), path,
                       row_group_size=n)
        assert pq.ParquetFile(path).metadata.num_row_groups == 1
        rows, peak = _arrow_peak(path, pause=0.0)
        assert rows == n
        peaks.append(peak)
    assert peaks[1] < 1.2 * peaks[0], f"pyarrow held {peaks[0] / 1e6:.1f} MB, then {peaks[1] / 1e6:.1f} MB"


def test_hive_partitioned_dataset(data, reference, tmp_path):
    """Partition keys (directory names ``site=k``) come back as columns; the rows, regrouped by site, give the
    same fit."""
    site = np.arange(N) % 3
    pq.write_to_dataset(pa.table(dict(data, site=site)), tmp_path, partition_cols=["site"])
    dataset = ds.dataset(tmp_path, format="parquet", partitioning="hive")
    read = list(batches(dataset, 700, columns=["x1", "site"]))
    x1, sites = (np.concatenate([b[k] for b in read]) for k in ("x1", "site"))
    mine, theirs = np.argsort(x1), np.argsort(data["x1"])  # the same rows, each with its own site
    np.testing.assert_array_equal(x1[mine], data["x1"][theirs])
    np.testing.assert_array_equal(sites[mine], site[theirs])
    _same(fit_stream(_stack(), dataset, weights="w", batch_rows=BATCH, chunk_size=CHUNK), reference)
