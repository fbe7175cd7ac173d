"""The float32 data path: columns stored centred in float32 (x − c, c on a power-of-two grid kept in float64) and
widened to c + (x − c) in float64 before ψ, so large offsets cost no accuracy; in-memory and streamed float32 fits
agree with float64 (measured: within 6e-8 SE at n = 20,000, offsets 0 and 1e4)."""

from __future__ import annotations

import numpy as np
import pytest

import mestim
from estimators import linear, logistic
from mestim.scale import fit_stream
from mestim.sources import centres, store
from mestim.sums import widen

N = 20_000


def test_centred_storage_error_is_relative_to_the_spread_not_the_offset():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(N)
    cols = {"x": 1e6 + z, "year": rng.integers(1990, 2024, N).astype(float), "a": (z > 0.3).astype(float),
            "one": np.ones(N), "X": np.column_stack([np.ones(N), 1e4 + z])}
    centre = centres(cols)
    back = {k: np.asarray(v) for k, v in widen(store(cols, np.float32, centre), centre, np.float64).items()}
    assert np.max(np.abs(back["x"] - cols["x"])) < 2e-7  # uncentred float32 rounds 1e6 + z to a multiple of 1/16
    assert np.max(np.abs(back["X"] - cols["X"])) < 2e-7
    for exact in ("year", "a", "one"):  # integer-valued columns, indicators and constants are stored exactly
        np.testing.assert_array_equal(back[exact], cols[exact])


def _data(offset, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(N)
    return {"x": offset + z, "y": 1 + 0.5 * z + rng.standard_normal(N),
            "yb": (rng.random(N) < 1 / (1 + np.exp(-(0.3 + z)))).astype(float)}


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_float32_in_memory_and_streamed_agree_with_float64(model, offset):
    """Before centring: a 1e4 offset kept ~3 digits of x's N(0, 1) part (streamed linear fits did not converge,
    estimates 0.07 SE off); now float32 storage moves estimates by < 1e-6 SE."""
    block = linear("m", "y", ["x"]) if model == "linear" else logistic("m", "yb", ["x"])
    data = _data(offset)
    # one chunking for all three fits: with a 1e4 offset the bread's condition number is ~4e8, and the order of
    # the float64 sums alone moves the intercept's SE by ~2e-6 relative
    reference = mestim.fit(block, data, chunk_size=4096)
    for res in (mestim.fit(block, data, data_dtype="float32", chunk_size=4096),
                fit_stream(block, data, batch_rows=4096, chunk_size=4096, data_dtype="float32")):
        assert np.max(np.abs(res.theta - reference.theta) / reference.se) < 1e-6
        np.testing.assert_allclose(res.se, reference.se, rtol=1e-6)
