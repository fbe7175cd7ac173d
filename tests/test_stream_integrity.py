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


def _parquet_parts(data, root, row_group_size=400):
    """The data as three Parquet files under ``root``: rows 0–999, 1000–1799, 1800–2499."""
    root.mkdir(exist_ok=True)
    table, paths = pa.table(data), []
    for i, (a, b) in enumerate([(0, 1000), (1000, 1800), (1800, N)]):
        paths.append(root / f"part-{i}.parquet")
        pq.write_table(table.slice(a, b - a), paths[-1], row_group_size=row_group_size, write_page_checksum=True)
    return paths


def _after_pass(k, action):
    """A progress callback that runs ``action()`` once pass ``k`` has ended."""
    return lambda info: action() if info["passes"] == k else None


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("when", [0, 1])
def test_truncated_file_in_a_parquet_directory(data, tmp_path, when):
    """It raised pyarrow's ArrowInvalid (not an OSError, so not caught): before the fit, or between passes."""
    paths = _parquet_parts(data, tmp_path / "parts")
    if when == 0:
        _truncate(paths[1])
    with pytest.raises(DataError) as info:
        fit_stream(_small_stack(), str(tmp_path / "parts"), weights="w", batch_rows=BATCH, chunk_size=CHUNK,
                   progress=_after_pass(1, lambda: _truncate(paths[1])))
    assert re.search(rf"^pass {when + 1}, chunk 2 \(from row 1,000 of the source\): the Parquet file "
                     rf"'{re.escape(str(paths[1]))}' could not be read \(ArrowInvalid", str(info.value)), info.value


def _footer_row_counts(path, hits: list, n: int):
    """Write ``n - 1`` over the row counts ``n`` of the footer numbered ``hits`` (0: the file's; with one row
    group, -1: the row group's): zigzag varints of the same length in Thrift's compact encoding."""
    def varint(v):
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v >> 7 else 0))
            v >>= 7
            if not v:
                return bytes(out)
    raw = bytearray(path.read_bytes())
    start = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    old, new = varint(2 * n), varint(2 * (n - 1))
    assert len(old) == len(new)
    found = [i for i in range(start, len(raw) - 8) if raw[i:i + len(old)] == old]
    for at in (found[h] for h in hits):
        raw[at:at + len(old)] = new
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("hits, message", [
    ([0, -1], r"row group 0 says 2,499 rows but its column '.*' holds 2,500 values"),  # the file's count agrees
    ([-1], r"its footer says 2,500 rows but its row groups hold 2,499"),
    ([0], r"its footer says 2,499 rows but its row groups hold 2,500")])
def test_parquet_footer_row_count_off_by_one(data, tmp_path, hits, message):
    """pyarrow reads as many rows as a row group's count says: one short dropped a row silently, page checksums
    on (the fit had 2,499 rows and moved θ); a file count that disagrees with its row groups is as suspect."""
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table(data), path, row_group_size=N, write_page_checksum=True)
    _footer_row_counts(path, hits, N)
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.row_group(0).num_rows) == tuple(N - (h in hits) for h in (0, -1))
    _raises(str(path), rf"^pass 1, chunk 0 \(from row 0 of the source\): the Parquet file '.*' is damaged: {message}")


def test_polars_source_deleted_or_rewritten_mid_fit(data, tmp_path):
    """polars raised FileNotFoundError (deleted) or ComputeError (rewritten) from the middle of a fit."""
    pl = pytest.importorskip("polars")

    def fit_then(action):
        paths = _parquet_parts(data, tmp_path / "parts")
        with pytest.raises(DataError) as info:
            fit_stream(_small_stack(), pl.scan_parquet(tmp_path / "parts" / "*.parquet"), weights="w",
                       batch_rows=BATCH, chunk_size=CHUNK, progress=_after_pass(1, lambda: action(paths)))
        return str(info.value)

    message = fit_then(lambda paths: paths[1].unlink())
    assert re.search(r"^pass 2, chunk \d+ \(from row [\d,]+ of the source\): the source could not be read "
                     r"\(FileNotFoundError", message), message
    message = fit_then(lambda paths: pq.write_table(pa.table(data).drop_columns(["x2"]), paths[2]))
    assert re.search(r"^pass 2, chunk \d+ \(from row [\d,]+ of the source\): the source could not be read "
                     r"\(\w+Error", message), message
    message = fit_then(lambda paths: pq.write_table(pa.table(data).slice(0, 10), paths[2]))  # fewer rows
    assert re.search(r"^pass 2, chunks? [\d–]+ .*the source changed since pass 1|^the streamed source changed "
                     r"between passes: pass 2 read", message), message


def test_zero_weight_batches_are_rows_fit_accepts(data):
    """A batch whose weights are all zero was refused ('w are all zero'); fit accepts such rows."""
    import mestim

    w = data["w"].copy()
    w[:BATCH] = 0.0
    w[1500:2200] = 0.0
    light = dict(data, w=w)
    from test_scale import _same
    reference = mestim.fit(_small_stack(), light, weights="w", chunk_size=CHUNK)
    _same(_fit(light), reference)
    _raises(dict(data, w=np.zeros(N)), r"^the weights are all zero over the 2,500 rows of the source")
