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


def test_address_space_limit_gives_one_clear_line(tmp_path):
    """The real behaviour under ``ulimit -v``: this file needs ~5 GB to analyse; it used to die with a
    MemoryError traceback inside the engine."""
    path = tmp_path / "big.csv"
    _transport_table(1_000_000).to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-c", _LIMITED_CLI, "transport", str(path), "--covariates", "X1,X2,X3"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("mestim transport: error: ") and "too large to analyse in memory" in out.stderr
