"""Fuzz the command line (hypothesis): random, mostly broken tables never crash it with a traceback.

Whatever the table, ``mestim meta`` and ``mestim transport`` end with exit code 0 (it ran; warnings allowed) or 2
(one readable ``error:`` line on stderr), never an uncaught exception.
"""

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estimators.cli import main as cli

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CELL = st.one_of(st.integers(-3, 60), st.floats(allow_nan=True, allow_infinity=True, width=32),
                 st.sampled_from(["", "x", "NA", "1e400", " 3 "]), st.none())


@st.composite
def tables(draw, columns):
    names = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=len(columns), unique=True))
    rows = draw(st.integers(0, 6))
    return pd.DataFrame({c: draw(st.lists(CELL, min_size=rows, max_size=rows)) for c in names}, dtype=object)


def _run(argv, capsys):
    code = cli(argv)
    out = capsys.readouterr()
    assert code in (0, 2), (code, out.err)
    assert "Traceback" not in out.err + out.out
    if code == 2:
        lines = [ln for ln in out.err.splitlines() if ln.strip() and not ln.startswith("warning")]
        assert len(lines) == 1 and "error:" in lines[0], out.err


@SETTINGS
@given(tables(["study", "ai", "bi", "ci", "di", "event.e", "n.e", "event.c", "n.c"]))
def test_meta_never_crashes(tmp_path_factory, capsys, table):
    path = tmp_path_factory.mktemp("fuzz") / "t.csv"
    table.to_csv(path, index=False)
    _run(["meta", str(path)], capsys)


@SETTINGS
@given(tables(["S", "Z", "Y", "X1", "X2"]))
def test_transport_never_crashes(tmp_path_factory, capsys, table):
    path = tmp_path_factory.mktemp("fuzz") / "t.csv"
    table.to_csv(path, index=False)
    _run(["transport", str(path), "--covariates", "X1,X2"], capsys)
