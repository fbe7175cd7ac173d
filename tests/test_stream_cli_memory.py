"""The command line on files larger than memory: a clear error up front (convert to Parquet, fit with
``mestim.scale.fit_stream``), never a MemoryError traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import estimators.io as io
from estimators.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _transport_table(n, seed=0):
    """A transport data set in the CLI's default layout (S, Z, Y, X1..X3; target S = 0 without Z and Y)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 5, n)
    x = rng.standard_normal((n, 3))
    z = np.where(s > 0, rng.integers(0, 2, n), np.nan)
    y = np.where(s > 0, x @ [0.5, -0.2, 0.1] + 2.0 * z + rng.standard_normal(n), np.nan)
    return pd.DataFrame({"S": s, "Z": z, "Y": y, "X1": x[:, 0], "X2": x[:, 1], "X3": x[:, 2]})


def test_files_too_large_for_memory_are_refused_before_reading(tmp_path, monkeypatch, capsys):
    table = _transport_table(20_000)
    table.to_csv(tmp_path / "big.csv", index=False)
    table.to_parquet(tmp_path / "big.parquet")
    monkeypatch.setattr(io, "available_memory", lambda: 10 * 2**20)  # 10 MB left: transport needs ~96, meta ~38
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("the file was read"))
    assert main(["transport", str(tmp_path / "big.csv"), "--covariates", "X1,X2,X3"]) == 2
    err = capsys.readouterr().err
    rows = re.search(r"is too large to analyse in memory \(about ([\d,]+) rows × 6 columns", err)
    assert rows and abs(int(rows.group(1).replace(",", "")) - 20_000) < 1_000, err  # estimated from the first lines
    assert "sink_parquet" in err and "mestim.scale.fit_stream" in err
    assert main(["meta", str(tmp_path / "big.parquet"), "--by", "S"]) == 2  # Parquet: rows from its metadata
    err = capsys.readouterr().err
    assert "about 20,000 rows × 6 columns" in err and "mestim.scale.fit_stream(estimator, " in err


def test_memory_error_during_the_analysis_is_the_same_clear_error(tmp_path, monkeypatch, capsys):
    import estimators.transport.api as api

    _transport_table(2_000).to_csv(tmp_path / "data.csv", index=False)

    def out_of_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(api, "transport", out_of_memory)
    assert main(["transport", str(tmp_path / "data.csv"), "--covariates", "X1,X2,X3"]) == 2
    assert "is too large to analyse in memory" in capsys.readouterr().err


_LIMITED_CLI = """
import resource, runpy, sys
limit = 4 * 2**30  # ulimit -v 4 GB (JAX alone reserves ~1.6 GB of address space)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["mestim"] + sys.argv[1:]
runpy.run_module("estimators.cli", run_name="__main__")
"""


@pytest.mark.parametrize("first_lines", ["short", pytest.param("long", marks=pytest.mark.slow)])
def test_address_space_limit_gives_one_clear_line(tmp_path, first_lines):
    """The real behaviour under ``ulimit -v``: this file needs ~5 GB to analyse; it used to die with a
    MemoryError traceback inside the engine. With long first lines its rows were underestimated 65×, the check
    passed, and it died with a RESOURCE_EXHAUSTED traceback."""
    path = tmp_path / "big.csv"
    if first_lines == "long":
        _long_first_lines(path, 1_000_000, long_rows=200, note=20_000)
    else:
        _transport_table(1_000_000).to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-c", _LIMITED_CLI, "transport", str(path), "--covariates", "X1,X2,X3"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("mestim transport: error: ") and "too large to analyse in memory" in out.stderr


def _long_first_lines(path, n, long_rows=100, note=6000):
    """A transport CSV with a text column that is long in its first rows only (notes, then blanks)."""
    table = _transport_table(n)
    table["note"] = ""
    table.loc[: long_rows - 1, "note"] = "x" * note
    table.to_csv(path, index=False)
    return table


def test_row_count_of_a_csv_whose_first_lines_are_long(tmp_path, monkeypatch, capsys):
    """The rows were estimated from the first 64 kB only: 65× too few here, and the command died out of memory
    past the check (a RESOURCE_EXHAUSTED traceback)."""
    path = tmp_path / "notes.csv"
    _long_first_lines(path, 40_000)
    rows, columns = io._csv_shape(str(path), "utf-8", ",")
    assert columns == 7 and abs(rows - 40_000) < 0.05 * 40_000, rows
    monkeypatch.setattr(io, "available_memory", lambda: 100 * 2**20)  # transport needs ~100 × 40,000 × 7 × 8 B
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("the file was read"))
    assert main(["transport", str(path), "--covariates", "X1,X2,X3"]) == 2
    assert "is too large to analyse in memory (about" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["varied", "labels"])
def test_parquet_text_columns_are_counted_before_reading(tmp_path, monkeypatch, capsys, text):
    """Only rows × columns were counted, 8 bytes each: a file of long text was read for 13 s before the command
    ran out of memory. Its text is now estimated from the metadata (varied text: its uncompressed size) and a
    sample of rows (repeated labels, stored once in a dictionary), within a factor 2 of what pandas holds."""
    n, rng = 20_000, np.random.default_rng(3)
    table = _transport_table(n)
    if text == "varied":
        table["note"] = [None] * (n // 2) + ["%08x" % v * 250 for v in rng.integers(0, 2**31, n - n // 2)]
    else:
        table["site"] = np.array(["a long name of a recruiting site, number %04d" % k for k in range(20)])[
            rng.integers(0, 20, n)] + "." * 150
    path = tmp_path / "text.parquet"
    table.to_parquet(path, row_group_size=5_000)
    (rows, columns), text_bytes = io._parquet_size(str(path))
    held = pd.read_parquet(path).memory_usage(deep=True).sum() - 8 * n * 6  # what pandas holds beyond the numbers
    assert (rows, columns) == (n, 7) and held / 2 < text_bytes < 2 * held, (text_bytes, held)
    monkeypatch.setattr(io, "available_memory", lambda: 8 * n * 7 * 40 + held // 2)  # the numbers fit, not the text
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: pytest.fail("the file was read"))
    assert main(["meta", str(path), "--by", "S"]) == 2
    assert "is too large to analyse in memory (about 20,000 rows × 7 columns" in capsys.readouterr().err


def test_out_of_memory_in_xla_is_the_same_clear_error(tmp_path, monkeypatch, capsys):
    """XLA's out-of-memory is a RuntimeError 'RESOURCE_EXHAUSTED: …', not a MemoryError: it was a traceback."""
    import estimators.transport.api as api

    _transport_table(2_000).to_csv(tmp_path / "data.csv", index=False)

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes.")
    monkeypatch.setattr(api, "transport", exhausted)
    assert main(["transport", str(tmp_path / "data.csv"), "--covariates", "X1,X2,X3"]) == 2
    assert "is too large to analyse in memory" in capsys.readouterr().err
