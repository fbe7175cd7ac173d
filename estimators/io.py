"""Reading a user's data file for the command line: CSV (any common delimiter and encoding) or Parquet.

A CSV's delimiter is detected from its first lines (comma, semicolon, tab or pipe; European exports use ';'),
unless ``sep`` names it; its encoding is UTF-8 (with or without a byte-order mark), else Windows-1252/Latin-1,
unless ``encoding`` names it. Every failure is a :class:`~mestim.errors.DataError` that says what to do.

The command line holds the whole table in memory. Before reading, the table's size as numbers (a Parquet file's
rows × columns from its metadata; a CSV's estimated from the line ends in windows spread over the file) times
what the command needs beyond the table, plus the table's text (a Parquet file's from its metadata and a sample
of rows; a CSV's at most its size), is compared with the memory this process can still use (``/proc/meminfo``,
the cgroup limit, ``ulimit -v``): a file too large fails at once with what to do instead (stream it from Parquet with
:func:`mestim.scale.fit_stream`), not with a ``MemoryError`` part-way through.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import stat
import tempfile

import numpy as np

from mestim.errors import DataError

DELIMITERS = ",;\t|"
FALLBACK_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")  # latin-1 decodes any byte: the last resort
SAMPLE_BYTES = 64 * 1024
COMMA_DECIMAL = re.compile(r"^[+-]?\d*,(\d+)(?:[eE][+-]?\d+)?$")  # 2,44 or -0,5e-3
POINT_DECIMAL = re.compile(r"^[+-]?\d*\.\d+(?:[eE][+-]?\d+)?$")
SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods")
SAMPLES = 16  # windows (CSV) or row groups (Parquet) sampled for a file's size
TEXT_VALUE_BYTES = 8  # pandas' memory per text value beyond its characters (an Arrow offset; pandas >= 3)
PARQUET_MAGIC = b"PAR1"


def add_file_options(parser) -> None:
    """``--sep`` and ``--encoding`` for a subcommand that reads a data file."""
    parser.add_argument("--sep", default=None, metavar="CHAR",
                        help="CSV delimiter (default: detected; ',', ';', '\\t' or '|')")
    parser.add_argument("--encoding", default=None, help="CSV text encoding (default: UTF-8, else Latin-1)")
    parser.add_argument("--decimal", default=None, metavar="CHAR", choices=[".", ","],
                        help="decimal mark of a CSV's numbers, '.' or ',' (default: ',' where a ';'-, tab- or "
                        "'|'-separated file writes its numbers so unambiguously, e.g. 2,44; else '.')")


def read_table(path: str, sep: str | None = None, encoding: str | None = None, *, working_memory: float = 1.0,
               decimal: str | None = None):
    """A CSV or Parquet file as a pandas DataFrame, or a :class:`DataError` saying why it cannot be read.

    ``working_memory``: the memory the command needs, as a multiple of the table's size as float64 numbers;
    a file whose table would not fit is refused before it is read (:func:`check_memory`). A pipe or a device
    (``<(cat data.csv)``, ``/dev/stdin``) is first copied to a temporary file: its start can be read only once.
    ``decimal``: the CSV's decimal mark; None detects ',' where that is unambiguous (:func:`_decimal`), noted in
    ``df.attrs["read_as"]``."""
    import pandas as pd

    path = str(path)
    if path.lower().endswith(SPREADSHEETS):
        raise DataError(f"'{path}' is a spreadsheet: export it to CSV (File > Save As > CSV) or Parquet, then "
                        "give that file")
    try:
        with _regular_file(path) as local:
            if path.endswith((".parquet", ".pq")) or (local != path and _starts_with(local, PARQUET_MAGIC)):
                shape, text_bytes = _parquet_size(local)
                check_memory(path, shape, working_memory, text_bytes)
                return pd.read_parquet(local)
            encoding = encoding or _encoding(local, path)
            sep = _unescape(sep if sep is not None else _delimiter(local, encoding))
            check_memory(path, _csv_shape(local, encoding, sep), working_memory, text_bytes=os.path.getsize(local))
            detected = decimal is None and _decimal(local, encoding, sep) == ","
            df = pd.read_csv(local, sep=sep, encoding=encoding, decimal="," if detected else (decimal or "."))
            if detected:
                df.attrs["read_as"] = f"{sep!r}-separated, decimal ',' (detected; --decimal to change)"
            return df
    except DataError:  # too large for memory
        raise
    except FileNotFoundError:
        raise DataError(f"file '{path}' does not exist") from None
    except IsADirectoryError:
        raise DataError(f"'{path}' is a directory, not a data file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"'{path}' is empty: no columns to read") from None
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not a text file in encoding {encoding!r}: give --encoding") from None
    except MemoryError:
        raise out_of_memory(path) from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not read '{path}': {first}") from None


@contextlib.contextmanager
def _regular_file(path: str):
    """``path`` when it is a regular file (or a directory, refused later); a pipe or a device copied to a
    temporary file first. Its delimiter and encoding are detected from its first lines, which a pipe gives only
    once: ``mestim meta <(cat bcg.csv)`` read the rest and said the file "is empty"."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="mestim-", suffix=".data") as copy:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, copy, 1 << 20)
        copy.flush()
        yield copy.name


def _starts_with(path: str, magic: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def out_of_memory(path: str, detail: str = "") -> DataError:
    """The error for a file too large to analyse in memory, with what to do instead."""
    if path.endswith((".parquet", ".pq")):
        todo = f"fit it in batches from Python with mestim.scale.fit_stream(estimator, '{path}')"
    else:
        todo = (f"convert it to Parquet in one streaming pass (e.g. with polars: pl.scan_csv('{path}')"
                ".sink_parquet('data.parquet')), then fit it in batches from Python with "
                "mestim.scale.fit_stream(estimator, 'data.parquet')")
    return DataError(f"'{path}' is too large to analyse in memory{detail}: the command line holds the whole table "
                     f"in memory; {todo} (README: 'Data larger than memory'), or analyse a subset of the rows")


def check_memory(path: str, shape: tuple[int, int], working_memory: float, text_bytes: int = 0) -> None:
    """A :func:`out_of_memory` error when a table of ``shape`` (rows, columns) needs more than the memory left:
    its float64 size times ``working_memory``, plus ``text_bytes`` for its text (held once, not analysed)."""
    rows, columns = shape
    needed = rows * columns * 8 * working_memory + text_bytes
    left = available_memory()
    if left is not None and needed > left:
        raise out_of_memory(path, f" (about {rows:,} rows × {columns} columns: {needed / 1e9:.1f} GB needed, "
                                  f"{left / 1e9:.1f} GB available)")


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the memory the system has available, what the
    cgroup's limit leaves, and what the address-space limit (``ulimit -v``) leaves; None where none is known."""
    left = [_meminfo("MemAvailable")]
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        left.append(limit - used)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            left.append(soft - _status("VmSize"))
    except (ImportError, OSError, TypeError):
        pass
    known = [b for b in left if b is not None]
    return min(known) if known else None


def _meminfo(key: str) -> int | None:
    return _kib_field("/proc/meminfo", key)


def _status(key: str) -> int | None:
    return _kib_field("/proc/self/status", key)


def _kib_field(path: str, key: str) -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())  # "max" (no limit) is not an int
    except (OSError, ValueError):
        return None


def _parquet_size(path: str) -> tuple[tuple[int, int], int]:
    """(rows, columns) of a Parquet file from its metadata, and the bytes its text columns will take in pandas.
    A text column's bytes are the larger of its uncompressed size in the file (which covers text too varied to be
    dictionary-encoded) and its mean length in a sample of a few rows of each of up to ``SAMPLES`` row groups
    (which covers repeated labels, stored once in a dictionary), plus ``TEXT_VALUE_BYTES`` a value. Long text
    columns were read for 13 s before the command ran out of memory."""
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    meta = reader.metadata
    text = [j for j in range(meta.num_columns)
            if meta.schema.column(j).physical_type in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY")]
    if not text or not meta.num_rows:
        return (meta.num_rows, meta.num_columns), 0
    stored = sum(meta.row_group(g).column(j).total_uncompressed_size for g in range(meta.num_row_groups) for j in text)
    groups = sorted({int(g) for g in np.linspace(0, meta.num_row_groups - 1, min(SAMPLES, meta.num_row_groups))})
    names = list(dict.fromkeys(meta.schema.column(j).path.split(".")[0] for j in text))
    sampled = [next(reader.iter_batches(batch_size=256, row_groups=[g], columns=names), None) for g in groups]
    sampled = [b for b in sampled if b is not None and b.num_rows]
    per_row = sum(b.nbytes for b in sampled) / max(sum(b.num_rows for b in sampled), 1)
    return (meta.num_rows, meta.num_columns), int(max(stored, per_row * meta.num_rows)
                                                   + TEXT_VALUE_BYTES * meta.num_rows * len(names))


def _csv_shape(path: str, encoding: str, sep: str) -> tuple[int, int]:
    """(rows, columns) of a CSV: its columns from the header, its rows from the density of line ends in
    ``SAMPLES`` windows spread over the file (the first lines alone underestimated a file whose first rows are
    long 65×, and the command died out of memory past the check). Quoted line ends over-count: the safe side."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.readline()
        if not header:
            return 0, 0
        columns = header.decode(encoding, errors="replace").count(sep) + 1
        body = size - len(header)
        window = SAMPLE_BYTES // SAMPLES
        if body <= SAMPLE_BYTES:
            starts, window = [len(header)], body
        else:
            starts = [len(header) + int(f) for f in np.linspace(0, body - window, SAMPLES)]
        ends, seen = 0, 0
        for start in starts:
            fh.seek(start)
            chunk = fh.read(window)
            ends, seen = ends + chunk.count(b"\n"), seen + len(chunk)
    if body <= SAMPLE_BYTES:  # read whole: the exact count, with a last line that has no line end
        return ends + (body > 0 and not chunk.endswith(b"\n")), columns
    return int(body * (ends + 1) / seen), columns  # + 1: a file of lines longer than the windows is not 0 rows


def _encoding(path: str, name: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    if b"\x00" in head:
        raise DataError(f"'{name}' is a binary file, not a CSV or Parquet file")
    for encoding in FALLBACK_ENCODINGS:
        try:
            head.decode(encoding)
            return encoding
        except UnicodeDecodeError as e:
            if len(head) == SAMPLE_BYTES and e.start >= len(head) - 4:  # a character cut by the sample's end
                return encoding
    return FALLBACK_ENCODINGS[-1]


def _delimiter(path: str, encoding: str) -> str:
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        lines = [line for line in (fh.readline() for _ in range(50)) if line.strip()]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or no consistent delimiter: count them in the header
        counts = {d: lines[0].count(d) for d in DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _decimal(path: str, encoding: str, sep: str) -> str:
    """',' when the first lines of a file not separated by ',' hold numbers written with a decimal comma (2,44)
    and none with a decimal point; '.' otherwise — also when every such number has three digits after the comma
    (1,500 may be 1.5 or 1500: not guessed; give --decimal)."""
    if sep == ",":
        return "."
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        fields = [f.strip() for row in csv.reader((fh.readline() for _ in range(200)), delimiter=sep) for f in row]
    comma = [m.group(1) for m in map(COMMA_DECIMAL.match, fields) if m]
    point = any(POINT_DECIMAL.match(f) for f in fields)
    return "," if comma and not point and any(len(d) != 3 for d in comma) else "."


def _unescape(sep: str) -> str:
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)
