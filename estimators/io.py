"""Reading a user's data file for the command line: CSV (any common delimiter and encoding) or Parquet.

A CSV's delimiter is detected from its first lines (comma, semicolon, tab or pipe; European exports use ';'),
unless ``sep`` names it; its encoding is UTF-8 (with or without a byte-order mark), else Windows-1252/Latin-1,
unless ``encoding`` names it. Every failure is a :class:`~mestim.errors.DataError` that says what to do.
"""

from __future__ import annotations

import csv

from mestim.errors import DataError

DELIMITERS = ",;\t|"
FALLBACK_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")  # latin-1 decodes any byte: the last resort
SAMPLE_BYTES = 64 * 1024


def add_file_options(parser) -> None:
    """``--sep`` and ``--encoding`` for a subcommand that reads a data file."""
    parser.add_argument("--sep", default=None, metavar="CHAR",
                        help="CSV delimiter (default: detected; ',', ';', '\\t' or '|')")
    parser.add_argument("--encoding", default=None, help="CSV text encoding (default: UTF-8, else Latin-1)")


def read_table(path: str, sep: str | None = None, encoding: str | None = None):
    """A CSV or Parquet file as a pandas DataFrame, or a :class:`DataError` saying why it cannot be read."""
    import pandas as pd

    path = str(path)
    try:
        if path.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        encoding = encoding or _encoding(path)
        sep = sep if sep is not None else _delimiter(path, encoding)
        return pd.read_csv(path, sep=_unescape(sep), encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"file '{path}' does not exist") from None
    except IsADirectoryError:
        raise DataError(f"'{path}' is a directory, not a data file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"'{path}' is empty: no columns to read") from None
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not a text file in encoding {encoding!r}: give --encoding") from None
    except MemoryError:
        raise DataError(f"'{path}' does not fit in memory: convert it to Parquet and stream it with "
                        "mestim.scale.fit_stream, or analyse a subset") from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not read '{path}': {first}") from None


def _encoding(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    if b"\x00" in head:
        raise DataError(f"'{path}' is a binary file, not a CSV or Parquet file")
    for encoding in FALLBACK_ENCODINGS:
        try:
            head.decode(encoding)
            return encoding
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 4:  # a multi-byte character cut by the sample's end is still UTF-8
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


def _unescape(sep: str) -> str:
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)
