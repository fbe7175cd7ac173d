"""Reading users' files: delimiters, encodings, and command-line values that start with a minus sign."""

import json

import numpy as np
import pandas as pd
import pytest

from estimators.cli import main as cli
from estimators.io import read_table
from estimators.transport import simulate
from mestim.errors import DataError


@pytest.fixture(scope="module")
def trials():
    return simulate.load_transport_sim()


@pytest.mark.parametrize("sep", [";", "\t", "|", ","])
def test_delimiter_is_detected(trials, tmp_path, sep):
    path = tmp_path / "data.csv"
    trials.to_csv(path, sep=sep, index=False)
    got = read_table(path)
    assert list(got.columns) == list(trials.columns)
    np.testing.assert_allclose(got.to_numpy(float), trials.to_numpy(float))


def test_named_delimiter_and_latin1_text(trials, tmp_path):
    df = trials.assign(site=np.where(trials.S > 0, "Zürich", "Genève"))
    path = tmp_path / "latin.csv"
    df.to_csv(path, sep=";", index=False, encoding="latin-1")
    got = read_table(path, sep=";")
    assert set(got.site) == {"Zürich", "Genève"}
    assert read_table(path).shape == df.shape  # detected: semicolons and Latin-1


def test_small_cp1252_file_ending_in_an_accent(tmp_path):
    """A file shorter than the encoding sample whose last bytes are not UTF-8 is not UTF-8 (only a sample cut
    mid-character may end that way)."""
    path = tmp_path / "small.csv"
    path.write_bytes(b"name,y\nabc,1\nRen\xe9,2\n")
    assert list(read_table(path).name) == ["abc", "René"]


def test_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(DataError, match="binary"):
        read_table(path)


def test_semicolon_file_and_negative_bias_grid_on_the_command_line(trials, tmp_path, capsys):
    path = tmp_path / "trials.csv"
    trials.to_csv(path, sep=";", index=False)
    out = tmp_path / "out.json"
    code = cli(["transport", str(path), "--covariates", "X1,X2", "--estimators", "outcome", "--bias", "X1",
                "--bias-grid", "-0.5,0,0.5", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    sweep = pd.DataFrame(json.loads(out.read_text())["sensitivity"])
    assert sorted(set(sweep["delta"])) == [-0.5, 0.0, 0.5]


def _through_a_pipe(data: bytes):
    """A path that reads ``data`` once, as ``<(cat file)`` gives the command line: /dev/fd/N of a pipe."""
    import os
    import threading

    read, write = os.pipe()

    def feed():
        with os.fdopen(write, "wb") as fh:
            fh.write(data)
    threading.Thread(target=feed, daemon=True).start()
    return read, f"/dev/fd/{read}"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_pipe_is_read_like_its_file(tmp_path, kind):
    """``mestim meta <(cat bcg.csv)`` said the file "is empty": detecting the delimiter and the encoding read the
    pipe's first lines, which a pipe gives once."""
    import os

    from estimators.meta_batch import load_bcg

    path = tmp_path / f"bcg.{kind}"
    getattr(load_bcg(), f"to_{kind}")(path, index=False)
    fd, pipe = _through_a_pipe(path.read_bytes())
    try:
        cli_json = tmp_path / "pipe.json"
        assert cli(["meta", pipe, "--json", str(cli_json)]) == 0
    finally:
        os.close(fd)
    assert cli(["meta", str(path), "--json", str(tmp_path / "file.json")]) == 0
    piped, filed = (json.loads((tmp_path / f).read_text())["results"] for f in ("pipe.json", "file.json"))
    assert [r["estimate"] for r in piped] == [r["estimate"] for r in filed] and len(piped) >= 5
