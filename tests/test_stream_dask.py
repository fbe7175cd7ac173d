"""A Dask DataFrame is a row source summed where it lives: on the workers of a real ``distributed`` cluster (two
worker processes), equal to the in-memory fit to 1e-10, with integrity faults named by pass, partition and row."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import mestim
import test_scale
from mestim.errors import DataError
from mestim.scale import fit_stream
from test_scale import CHUNK, N, _data, _same, _stack

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    cloudpickle.register_pickle_by_value(test_scale)  # the stack's ψ lives in a test module the workers lack
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    cloudpickle.unregister_pickle_by_value(test_scale)


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def reference(data):
    return mestim.fit(_stack(), data, weights="w", chunk_size=CHUNK)


def test_dask_frame_summed_on_the_workers_equals_in_memory(client, data, reference):
    frame = dd.from_pandas(pd.DataFrame(data), npartitions=5).persist()  # the rows live on the workers
    seen = []
    with distributed.get_task_stream(client) as tasks:
        res = fit_stream(_stack(), frame, weights="w", batch_rows=700, chunk_size=CHUNK, progress=seen.append)
    _same(res, reference)
    assert res.n_rows == N and "5 Dask partitions summed on the workers" in res.notes[-1]
    sums = [t for t in tasks.data if str(t["key"]).startswith("_partition_sums")]
    assert len(sums) == 5 * len(seen)  # every partition on every pass, as a task
    assert {t["worker"] for t in sums} == set(client.scheduler_info()["workers"])  # on both worker processes


def test_dask_parquet_directory_equals_in_memory(client, data, reference, tmp_path):
    pd.DataFrame(data).to_parquet(tmp_path / "pooled.parquet", row_group_size=600)
    frame = dd.read_parquet(tmp_path / "pooled.parquet", split_row_groups=True)  # read on the workers, each pass
    _same(fit_stream(_stack(), frame, weights="w", chunk_size=CHUNK), reference)


def test_dask_partition_faults_name_the_partition_and_row(client, data):
    bad = pd.DataFrame(data)
    bad.loc[1523, "x1"] = np.nan
    frame = dd.from_pandas(bad, npartitions=5)  # partitions of 500 rows: row 1523 is in partition 3
    with pytest.raises(DataError) as info:
        fit_stream(_stack(), frame, weights="w", chunk_size=CHUNK)
    assert re.search(r"^pass 1, partition 3: .*NaN first at row 1,523\)", str(info.value)), str(info.value)


@pytest.mark.parametrize("dropped", [2, 0])
def test_empty_partitions_of_a_filtered_frame(client, data, dropped):
    """A filtered frame's empty partition was refused ('the data has no rows'), an empty first one too."""
    table = pd.DataFrame(dict(data, part=np.arange(N) // 500))
    frame = dd.from_pandas(table, npartitions=5)  # partitions of 500 rows
    kept = table[table.part != dropped]
    reference = mestim.fit(_stack(), kept, weights="w", chunk_size=CHUNK)
    res = fit_stream(_stack(), frame[frame.part != dropped], weights="w", batch_rows=700, chunk_size=CHUNK)
    _same(res, reference)
    assert res.n_rows == len(kept)


def test_partition_of_zero_weights(client, data):
    """A partition whose weights are all zero was refused ('w are all zero'); fit accepts such rows."""
    table = pd.DataFrame(data)
    table.loc[1000:1499, "w"] = 0.0  # partition 2
    reference = mestim.fit(_stack(), table, weights="w", chunk_size=CHUNK)
    _same(fit_stream(_stack(), dd.from_pandas(table, npartitions=5), weights="w", chunk_size=CHUNK), reference)


def test_dask_file_deleted_mid_fit(client, data, tmp_path):
    """dd.read_parquet reads the files on the workers on every pass: a file deleted after pass 1 raised the
    worker's FileNotFoundError."""
    table = pd.DataFrame(data)
    paths = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    for path, rows in zip(paths, np.array_split(np.arange(N), 3)):
        table.iloc[rows].to_parquet(path)
    frame = dd.read_parquet([str(p) for p in paths])
    with pytest.raises(DataError) as info:
        fit_stream(_stack(), frame, weights="w", chunk_size=CHUNK,
                   progress=lambda seen: paths[1].unlink() if seen["passes"] == 1 else None)
    assert re.search(r"^pass 2, partition 1 \(from row 834 of the source\): the source could not be read "
                     rf"\(FileNotFoundError: .*{re.escape(paths[1].name)}", str(info.value)), info.value


def test_all_dask_workers_killed_mid_fit(data):
    """Workers killed between passes (their nannies start new ones): the fit's scattered stack and tasks are lost
    and distributed raised FutureCancelledError ('… already forgotten')."""
    import os
    import signal

    import cloudpickle

    cloudpickle.register_pickle_by_value(test_scale)  # as the module's client does (which unregisters it)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            def kill(seen):
                if seen["passes"] == 1:
                    for pid in c.run(os.getpid).values():
                        os.kill(pid, signal.SIGKILL)
            frame = dd.from_pandas(pd.DataFrame(data), npartitions=5).persist()
            with pytest.raises(DataError) as info:
                fit_stream(_stack(), frame, weights="w", chunk_size=CHUNK, progress=kill)
    finally:
        cluster.close()
    assert re.search(r"^pass 2, partition \d \(from row [\d,]+ of the source\): the Dask workers were lost",
                     str(info.value)), info.value
