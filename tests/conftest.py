import gc

import jax
import numpy as np
import pandas as pd
import pytest

import mestim  # noqa: F401  (float64 on)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each compiled XLA CPU program holds memory mappings of its own: a process holding every program of the suite
    (thousands) passes Linux's vm.max_map_count (65,530) and the next mmap fails inside XLA, a segfault (measured:
    40k mappings at 40% of the suite). The programs of a test module are let go after it."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def logit_df():
    """Logistic data: y ~ Bernoulli(expit(0.3 + x1 − 0.5 x2)), 60 clusters, integer weights 1..3."""
    rng = np.random.default_rng(20261121)
    n = 1500
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "g": rng.integers(0, 60, n),
                       "w": rng.integers(1, 4, n).astype(float)})
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + df.x1 - 0.5 * df.x2)))).astype(float)
    df["yc"] = 1.0 + 2.0 * df.x1 - df.x2 + rng.normal(size=n) * (1 + 0.5 * np.abs(df.x1))
    return df
