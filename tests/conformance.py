"""The conformance matrix's options, data, entry points and independent reference (importable by other tests,
e.g. the multi-process cells: ``from conformance import CELLS, data, reference, run``).

Every entry point of mestim fits one logistic ψ on one small table under every combination of weight type
(none, frequency, sampling) × clusters (none, given) × correction (None, "df", "fay") × data dtype (float64,
float32). :func:`reference` computes the answer in numpy, independently of mestim, from two identities and
geex's formulas:

- frequency weights are the expanded table (row i repeated w_i times, its cluster label with it);
- sampling weights are w written inside ψ: the unweighted fit of ψ*_i = w_i ψ_i (so A*_i = w_i A_i);
- the unweighted sandwich is geex's: A = Σ_u A_u, B = Σ_u U_u U_uᵀ over units u (rows, or clusters with
  U_g = Σ_{i∈g} ψ_i, A_g = Σ_{i∈g} A_i), V = A⁻¹ B A⁻ᵀ; ``"df"`` multiplies by m/(m − p), m the number of
  units (rows of the expanded table, or clusters); ``"fay"`` is geex's ``fay_bias_correction`` (Fay & Graubard
  2001, b = 0.75): B = Σ_u H_u U_u U_uᵀ H_u, H_u = diag((1 − min(b, diag(A_u A⁻¹)))^(−1/2)).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

N, N_CLUSTERS, P = 240, 30, 3
BATCH = 70  # stream batches smaller than the table (4 batches, the last one short)
WEIGHTS = (None, "frequency", "sampling")
CLUSTERS = (None, "g")
CORRECTIONS = (None, "df", "fay")
DTYPES = (None, "float32")
ENTRIES = ("fit", "sandwich", "stream", "dask", "devices", "stream-devices", "pure", "gmm", "bootstrap")
CELLS = list(itertools.product(WEIGHTS, CLUSTERS, CORRECTIONS, DTYPES))
SE_RTOL = 1e-8
# float32 storage rounds each value to 2⁻²⁴ ≈ 6e-8 of its (centred) size; ψ and every sum stay float64, so an SE
# moves by that relative error times the bread's condition number (≈ 10 here): 1e-6 bounds it with room.
SE_RTOL_FLOAT32 = 1e-6
INIT = [0.0, 0.0, 0.0]
FAY_B = 0.75


def data(seed: int = 15) -> pd.DataFrame:
    """Logistic rows y ~ Bernoulli(expit(0.3 + x1 − 0.5 x2)), frequency weights w (whole numbers 1..3), sampling
    weights s ~ U(0.2, 5) (spread out: drawn as frequency counts, the bootstrap SE was 0.55× the sandwich's),
    30 clusters in no particular order (a cluster spans stream batches and Dask partitions)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=N), rng.normal(size=N)
    y = (rng.random(N) < 1 / (1 + np.exp(-(0.3 + x1 - 0.5 * x2)))).astype(float)
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y, "w": rng.integers(1, 4, N).astype(float),
                         "s": rng.uniform(0.2, 5.0, N), "g": rng.integers(0, N_CLUSTERS, N)})


def weight_column(weight_type) -> str | None:
    return {None: None, "frequency": "w", "sampling": "s"}[weight_type]


def psi(theta, row):
    """Logistic regression's score, written by hand (no closed-form Jacobian: autodiff, the general path)."""
    x = jnp.stack([1.0, row["x1"], row["x2"]])
    return (row["y"] - jax.nn.sigmoid(x @ theta)) * x


def options(weight_type, cluster, correction, dtype) -> dict:
    """The keyword arguments of ``fit`` for a cell."""
    return dict(weights=weight_column(weight_type), weight_type=weight_type or "frequency",
                cluster=cluster, correction=correction, data_dtype=dtype)


def reference(df: pd.DataFrame, weight_type, cluster, correction) -> tuple[np.ndarray, np.ndarray]:
    """(θ̂, V) in numpy, from the identities and geex's formulas in the module docstring."""
    X = np.column_stack([np.ones(len(df)), df.x1, df.x2])
    y = df.y.to_numpy()
    w = df[weight_column(weight_type)].to_numpy() if weight_type else np.ones(len(df))
    g = df.g.to_numpy() if cluster else np.arange(len(df))
    scale = w if weight_type == "sampling" else np.ones(len(df))
    if weight_type == "frequency":  # the expanded table
        rows = np.repeat(np.arange(len(df)), w.astype(int))
        X, y, g, scale = X[rows], y[rows], (g[rows] if cluster else np.arange(rows.size)), scale[rows]
    theta = np.zeros(P)
    for _ in range(50):  # Newton on Σ ψ*_i = 0
        p = 1 / (1 + np.exp(-X @ theta))
        step = np.linalg.solve((X * (scale * p * (1 - p))[:, None]).T @ X, X.T @ (scale * (y - p)))
        theta += step
        if np.max(np.abs(step)) < 1e-14:
            break
    p = 1 / (1 + np.exp(-X @ theta))
    ee = X * (scale * (y - p))[:, None]  # ψ*_i
    a_i = scale[:, None, None] * (p * (1 - p))[:, None, None] * X[:, :, None] * X[:, None, :]  # A*_i = −∂ψ*_i/∂θ
    units, codes = np.unique(g, return_inverse=True)
    u, a_u = np.zeros((units.size, P)), np.zeros((units.size, P, P))
    np.add.at(u, codes, ee)
    np.add.at(a_u, codes, a_i)
    a_inv = np.linalg.inv(a_u.sum(axis=0))
    if correction == "fay":  # geex: H_i = diag((1 − pmin(b, diag(A_i %*% Ainv)))^(−0.5))
        h = (1 - np.minimum(FAY_B, np.einsum("ujk,kj->uj", a_u, a_inv))) ** -0.5
        u = u * h
    v = a_inv @ (u.T @ u) @ a_inv.T
    if correction == "df":
        v = v * units.size / (units.size - P)
    return theta, v


def run(entry: str, df: pd.DataFrame, weight_type, cluster, correction, dtype, *, replicates: int = 100):
    """(θ̂, SE) of one cell by one in-process entry point (``"devices"`` runs in a process of its own, see
    tests/test_conformance.py; ``"bootstrap"`` returns its BootstrapResult). Raises what the entry point raises."""
    import mestim
    from mestim.scale import fit_stream

    kw = options(weight_type, cluster, correction, dtype)
    if entry == "fit":
        res = mestim.fit(psi, df, init=INIT, **kw)
    elif entry == "gmm":  # an exactly identified stack by GMM is its M-estimator, whatever the weight matrix
        res = mestim.fit(psi, df, init=INIT, gmm="two-step", **kw)
    elif entry == "sandwich":
        theta, _ = reference(df, weight_type, cluster, correction)
        res = mestim.sandwich(psi, df, theta, **kw)
    elif entry == "stream":
        res = fit_stream(psi, df, init=INIT, batch_rows=BATCH, **kw)
    elif entry == "dask":
        import dask.dataframe as dd

        res = fit_stream(psi, dd.from_pandas(df, npartitions=3), init=INIT, **kw)
    elif entry == "pure":
        return pure_fit(df, weight_type, cluster, correction, dtype)
    elif entry == "bootstrap":
        from mestim.bootstrap import bootstrap

        return bootstrap(psi, df, init=INIT, replicates=replicates, seed=1, **kw)
    else:
        raise ValueError(entry)
    return res.theta, res.se


_PURE = {}


def pure_fit(df, weight_type, cluster, correction, dtype):
    """(θ̂, SE) of the pure fit. One program per options, as a simulation study would run it: ``jax.vmap(f)`` over
    the float64 columns and the same columns rounded to float32 (what float32 storage holds; ``f`` reads any float
    columns in float64, and float32 arrays are checked in tests/test_conformance.py), shared by no weights and
    frequency weights (w is its argument), compiled for compile speed as the bootstrap compiles small data."""
    from mestim.pure import fit_function
    from mestim.sums import QUICK_CPU_OPTIONS

    key = (id(df), weight_type or "frequency", cluster, correction)
    if key not in _PURE:
        columns, f, _ = fit_function(psi, df, init=INIT, weight_type=key[1], cluster=cluster, correction=correction)
        both = {k: np.stack([v, v.astype(np.float32).astype(np.float64)]) for k, v in columns.items()}
        _PURE[key] = both, jax.jit(jax.vmap(f, in_axes=(0, None)), compiler_options=QUICK_CPU_OPTIONS)
    both, program = _PURE[key]
    out = program(both, df[weight_column(weight_type)].to_numpy() if weight_type else np.ones(len(df)))
    i = int(dtype == "float32")
    assert bool(out.converged[i]), int(out.status[i])
    return np.asarray(out.theta[i]), np.sqrt(np.diag(np.asarray(out.vcov[i])))


def refused(entry: str, weight_type, cluster, correction, dtype) -> str | None:
    """The error message pattern a cell must raise (a SpecificationError), or None: the cell is supported."""
    if entry == "gmm" and correction == "fay":
        return "correction='fay' is not available with gmm="
    return None
