"""Integrity of streamed fits, on every pass: each fault is a DataError naming the pass, the chunk and the row of
the source (0-based, over the whole source), raised where the fault is, never a wrong answer or a solver error.

The source yields chunks of 333 rows (chunk k holds rows 333k … 333k + 332) read in batches of 700 rows.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mestim.errors import DataError
from mestim.scale import fit_stream
from test_scale import BATCH, CHUNK, N, _data, _small_stack

STEP = 333


@pytest.fixture(scope="module")
def data():
    return _data()


def _source(data, change=lambda chunk, k, p: chunk, step=STEP):
    """A function source: ``change(chunk, k, p)`` may alter chunk k on pass p (p counts calls from 0: the first
    call reads the first batch, call 1 is pass 1, call 2 is pass 2, …)."""
    calls = []

    def chunks():
        p = len(calls)
        calls.append(p)
        for k, i in enumerate(range(0, N, step)):
            chunk = change({c: v[i:i + step].copy() for c, v in data.items()}, k, p)
            if chunk is not None:
                yield chunk
    return chunks


def _fit(source, batch_rows=BATCH):
    return fit_stream(_small_stack(), source, weights="w", batch_rows=batch_rows, chunk_size=CHUNK)


def _raises(source, *patterns, batch_rows=BATCH):
    with pytest.raises(DataError) as info:
        _fit(source, batch_rows)
    for p in patterns:
        assert re.search(p, str(info.value)), f"{p!r} not in: {info.value}"
    return str(info.value)


# ---------------------------------------------------------------------------------------------- between passes
def test_values_changed_on_a_later_pass(data):
    def change(chunk, k, p):
        if p >= 2 and k == 4:
            chunk["x1"][167] += 1e-3  # row 4·333 + 167 = 1499, in batch 2 (rows 1400–2099, chunks 4–6)
        return chunk
    _raises(_source(data, change), r"^pass 2, chunks 4–6 \(rows 1,400–2,099 of the source\)",
            r"changed since pass 1", r"column 'part\.X'")


def test_fewer_rows_on_a_later_pass(data):
    # a batch that lost rows is named; a pass that lost whole batches is caught by its row count
    _raises(_source(data, lambda c, k, p: None if p >= 3 and k == 7 else c),
            r"^pass 3, chunk 6 \(rows 2,100–2,330 of the source\): the source changed since pass 1 \(the row count")
    _raises(_source(data, lambda c, k, p: None if p >= 3 and k == 3 else c, step=BATCH),
            r"the streamed source changed between passes: pass 3 read 2,100 rows .* pass 1 read 2,500 rows")


def test_more_rows_on_a_later_pass(data):
    def change(chunk, k, p):
        return {c: np.concatenate([v, v[:50]]) for c, v in chunk.items()} if p >= 2 and k == 7 else chunk
    _raises(_source(data, change), r"^pass 2, chunks 6–7 \(rows 2,100–2,549 of the source\)", "row count")
    _raises(_source(data, change), r"^pass 2, chunk 7 \(rows 2,500–2,549 of the source\): the source has more "
            r"rows than on pass 1, which read 2,500 rows", batch_rows=500)


def test_weights_changed_on_a_later_pass(data):
    def change(chunk, k, p):
        if p >= 2 and k == 1:
            chunk["w"] = chunk["w"] * 1.5
        return chunk
    _raises(_source(data, change), r"^pass 2, chunks 0–2 \(rows 0–699", r"total weight")


# ---------------------------------------------------------------------------------------------- one chunk
def test_missing_and_extra_columns(data):
    _raises(_source(data, lambda c, k, p: {n: v for n, v in c.items() if n != "x2"} if k == 5 else c),
            r"^pass 1, chunk 5 \(from row 1,665 of the source\): column\(s\) \['x2'\] are missing")
    _raises(_source(data, lambda c, k, p: dict(c, extra=c["x1"]) if k == 5 else c),
            r"^pass 1, chunk 5 \(from row 1,665 of the source\): column\(s\) \['extra'\] are not in the first chunk")


def test_ragged_chunk_reported_where_it_is(data):
    _raises(_source(data, lambda c, k, p: dict(c, x1=c["x1"][:-1]) if k == 5 else c),
            r"^pass 1, chunk 5 \(from row 1,665 of the source\): its columns have different numbers of rows",
            r"'x1': 332", "ragged")


def test_non_numeric_and_non_table_chunks(data):
    def text(chunk, k, p):
        if k == 5:
            chunk["x1"] = chunk["x1"].astype(object)
            chunk["x1"][3] = "n/a"
        return chunk
    _raises(_source(data, text), r"^pass 1, chunk 5 \(from row 1,665 of the source\): column 'x1' holds 'n/a', "
            r"not a number")
    _raises(_source(data, lambda c, k, p: list(c.values()) if k == 5 else c),
            r"^pass 1, chunk 5 \(from row 1,665 of the source\) is a list, not a table")


def test_nan_named_by_global_row_and_chunk_on_every_pass(data):
    def nan(chunk, k, p, first_pass=1):
        if p >= first_pass and k == 4:
            chunk["x1"][191] = np.nan  # row 4·333 + 191 = 1523
        return chunk
    _raises(_source(data, nan), r"^pass 1, chunk 4: ", r"NaN first at row 1,523\)")
    _raises(_source(data, lambda c, k, p: nan(c, k, p, first_pass=2)), r"^pass 2, chunk 4: ",
            r"NaN first at row 1,523\)")
    bad = dict(data, Y=data["Y"].copy())
    bad["Y"][2222] = np.inf
    _raises(bad, r"^pass 1, chunk 3: ",
            r"inf first at row 2,222\)")


# ---------------------------------------------------------------------------------------------- Parquet
def _corrupt_page(path, row_group: int):
    """Flip a byte inside the last data page of column 0 of ``row_group`` (uncompressed, so the values change)."""
    column = pq.ParquetFile(path).metadata.row_group(row_group).column(0)
    raw = bytearray(path.read_bytes())
    raw[column.data_page_offset + column.total_compressed_size - 40] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_parquet_page_is_a_data_error_naming_the_file(data, tmp_path):
    path = tmp_path / "pooled.parquet"
    pq.write_table(pa.table(data), path, row_group_size=400, write_page_checksum=True, compression="none")
    _corrupt_page(path, 4)  # rows 1600–1999: beyond the first batch
    message = _raises(str(path), r"^pass 1, chunk 2 \(from row 1,400 of the source\): the Parquet file",
                      r"is corrupt: a page failed its checksum")
    assert str(path) in message
