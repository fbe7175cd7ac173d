"""The conformance matrix across two real processes: weights (none, frequency, sampling) × clusters (none, a
column) × corrections (None, ``"df"``, ``"fay"``), each cell fitted by two ``jax.distributed`` processes holding
unequal parts of the rows, against the in-memory one-process fit of all rows as reference (θ 1e-10, SE 1e-8).
Fay's correction needs every row's leverage in one place: across processes it is refused, on both processes, before
any pass. One launch of two processes runs every cell (:func:`test_processes_agreement.launch`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import mestim
from test_processes import data, stack
from test_processes_agreement import PROMPT, launch

WEIGHTS = {"none": {}, "frequency": {"weights": "w"}, "sampling": {"weights": "w", "weight_type": "sampling"}}
CLUSTERS = {"none": None, "g": "g"}
CORRECTIONS = (None, "df", "fay")
CELLS = {f"weights={w} cluster={c} correction={k}": (w, c, k)
         for w, c, k in itertools.product(WEIGHTS, CLUSTERS, CORRECTIONS)}


def _options(cell):
    w, c, k = CELLS[cell]
    return dict(WEIGHTS[w], cluster=CLUSTERS[c], correction=k)


def _case(cell):
    def run(rank):
        d = data()
        rows = slice(0, 1100) if rank == 0 else slice(1100, None)
        return mestim.fit(stack(["x1", "x2"]), {k: v[rows] for k, v in d.items()}, devices="all", **_options(cell))
    return run


CASES = {cell: _case(cell) for cell in CELLS}


@pytest.fixture(scope="module")
def processes():
    return launch("test_processes_conformance")


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cell_across_processes_equals_one_process(processes, cell):
    if CELLS[cell][2] == "fay":
        for out in processes:
            got = out["results"][cell]
            assert "SpecificationError" in got.get("error", []), got
            assert "correction='fay' is not available across processes" in got["message"]
            assert got["seconds"] < PROMPT
        return
    ref = mestim.fit(stack(["x1", "x2"]), data(), **_options(cell))
    for out in processes:
        got = out["results"][cell]
        assert "theta" in got, got
        np.testing.assert_allclose(got["theta"], ref.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got["se"], ref.se, rtol=1e-8, atol=0)
        assert got["n_rows"] == ref.n_rows
