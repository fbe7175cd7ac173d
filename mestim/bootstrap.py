"""Nonparametric bootstrap on the compiled fit, as a check on the sandwich.

Each replicate refits the whole stack with resampling weights instead of a resampled copy of the data: drawing
n rows with replacement gives row i the weight c_i ~ Multinomial(n, 1/n) (Efron's bootstrap, exactly); with
``cluster=`` whole clusters are drawn. Weights follow the two identities of :mod:`mestim.covariance`: frequency
weights (whole numbers) are the expanded table, so its Σw units are drawn; sampling weights are part of each
row, so rows (or clusters) are drawn uniformly and carry their weights, c_i·w_i (the design-based bootstrap of
a with-replacement sample, Rao & Wu 1988). A batch of
replicates is one ``jax.vmap`` of :func:`mestim.pure.fit_function`'s pure fit: one compilation, no Python loop
over rows or replicates. Replicates start from θ̂ (fast, and the usual practice).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import data as datamod
from .errors import ConvergenceError, MestimWarning, SpecificationError
from .estimate import fit
from .options import FitOptions
from .pure import fit_function
from .results import Result, z_crit
from .sums import QUICK_CPU_OPTIONS, quick_compile


@dataclasses.dataclass
class BootstrapResult:
    """Bootstrap replicates beside the sandwich fit they check."""

    fit: Result
    replicates: np.ndarray  # (B_ok, p) estimates of the converged replicates
    failed: int  # replicates that did not converge (excluded, and counted here)

    @property
    def se(self) -> np.ndarray:
        return self.replicates.std(axis=0, ddof=1)

    def ci(self, level: float = 0.95, method: str = "percentile") -> np.ndarray:
        """Percentile CI (quantiles of the replicates) or ``"normal"`` (θ̂ ± z·SE_boot), shape (p, 2)."""
        if method == "percentile":
            return np.quantile(self.replicates, [0.5 - level / 2, 0.5 + level / 2], axis=0).T
        if method == "normal":
            z = z_crit(level)
            return np.column_stack([self.fit.theta - z * self.se, self.fit.theta + z * self.se])
        raise SpecificationError(f"method={method!r}: use 'percentile' or 'normal'")

    def table(self, level: float = 0.95):
        import pandas as pd

        ci = self.ci(level)
        return pd.DataFrame({"param": list(self.fit.labels), "estimate": self.fit.theta,
                             "se_sandwich": self.fit.se, "se_bootstrap": self.se,
                             "se_ratio": self.se / self.fit.se, "ci_low": ci[:, 0], "ci_high": ci[:, 1]})


def bootstrap(estimator, data, init=None, *, replicates: int = 1000, seed: int = 0, cluster=None, weights=None,
              weight_type: str = "frequency", correction: str | None = None, batch: int = 100, level: float = 0.95,
              progress: bool | None = False, **fit_kw) -> BootstrapResult:
    """Refit ``estimator`` on ``replicates`` bootstrap resamples of ``data``; see the module docstring.

    ``weights``, ``weight_type``, ``cluster`` and ``correction`` are those of :func:`mestim.fit`, which gives the
    sandwich fit the replicates are set beside (``correction`` applies to it alone). ``progress``: a bar over the
    replicates on stderr: True (always), False (never), None (only when stderr is a terminal).

    Example (200 resamples of a mean: its bootstrap SE near s/√n)::

        >>> import numpy as np, mestim
        >>> from mestim.bootstrap import bootstrap
        >>> y = np.random.default_rng(0).exponential(size=300)
        >>> mean = mestim.Block("m", lambda t, row: row["y"] - t, init=[0.0])
        >>> boot = bootstrap(mean, {"y": y}, replicates=200, seed=1)
        >>> np.round(boot.se / (y.std() / np.sqrt(300)), 1)
        array([1.])
    """
    if replicates < 2:
        raise SpecificationError("replicates must be at least 2")
    if fit_kw.get("gmm") is not None:
        raise SpecificationError("the bootstrap refits by solving Σψ = 0, which has no solution with gmm=: "
                                 "bootstrap an exactly identified stack")
    FitOptions(weight_type, correction)  # checked before any work
    cols = datamod.as_columns(data)
    n = datamod.n_rows(cols)
    w = datamod.row_weights(cols, weights, n)
    frequency = weights is not None and weight_type == "frequency"
    if frequency and cluster is None and not np.array_equal(w, np.round(w)):
        raise SpecificationError("the bootstrap draws the Σw units that frequency weights count, so they must be "
                                 "whole numbers (counts); for weights that are not counts (normalised to sum to 1, "
                                 "inverse-probability or survey weights) pass weight_type='sampling'")
    result = fit(estimator, data, init, weights=weights, weight_type=weight_type, cluster=cluster,
                 correction=correction, **fit_kw)
    columns, f, problem = fit_function(estimator, data, init, weight_type=weight_type,
                                       **{k: v for k, v in fit_kw.items() if k in ("names", "solve", "chunk_size")})
    if cluster is not None:
        codes, g = datamod.cluster_codes(problem.columns, cluster, n)
        draw, draw_args = functools.partial(_cluster_draw, g=g), (codes, w)
    elif frequency:
        draw, draw_args = functools.partial(_unit_draw, total=int(round(float(w.sum())))), (np.cumsum(w),)
    else:
        draw, draw_args = _row_draw, (w,)

    batch = min(batch, replicates)
    n_batches = -(-replicates // batch)

    # small data on a CPU: compiled for compile speed, as the engine's passes are (mestim.sums.quick_compile); the
    # vmapped solve of 100 replicates of 240 rows compiled in 3.0 s instead of 10.7 s and ran as fast (28-32 ms)
    quick = quick_compile(problem.spec, jax.devices()[0].platform, problem.n_rows)

    @functools.partial(jax.jit, compiler_options=QUICK_CPU_OPTIONS if quick else None)
    def run(columns, draw_args, theta_hat, seed, start):
        # the data are arguments, not constants baked into the program; replicate r's key is fold_in(key, r)
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(start + jnp.arange(batch))
        return jax.vmap(lambda k: f(columns, draw(k, *draw_args), theta_hat))(keys)

    thetas, oks = [], []
    with _replicate_bar(replicates, progress) as bar:
        for start in range(0, n_batches * batch, batch):  # batches of replicates bound the memory; rows never looped
            out = run(columns, draw_args, result.theta, np.int64(seed), np.int64(start))
            thetas.append(np.asarray(out.theta))
            oks.append(np.asarray(out.converged) & np.all(np.isfinite(np.asarray(out.theta)), axis=1))
            bar.update(min(batch, replicates - start))
    thetas, oks = np.concatenate(thetas)[:replicates], np.concatenate(oks)[:replicates]
    failed = int((~oks).sum())
    if failed > replicates - 2:
        raise ConvergenceError(f"{failed} of {replicates} bootstrap replicates did not converge: too few are left "
                               "for a standard error (check that the full-data fit is well identified)")
    if failed:
        warnings.warn(f"{failed} of {replicates} bootstrap replicates did not converge and are excluded",
                      MestimWarning, stacklevel=2)
    return BootstrapResult(result, thetas[oks], failed)


def _replicate_bar(replicates: int, progress: bool | None):
    """tqdm's bar over the replicates on stderr (``disable=None``: only on a terminal); it leaves no trace."""
    import sys

    from tqdm import tqdm

    return tqdm(total=replicates, desc="bootstrap", unit="replicate", file=sys.stderr, leave=False,
                disable=None if progress is None else not progress)


def _row_draw(key, w):
    """n rows drawn with replacement: row i's weight is w_i times how often it was drawn (w = 1 unweighted)."""
    n = w.shape[0]
    return w * jnp.zeros(n).at[jax.random.randint(key, (n,), 0, n)].add(1.0)


def _unit_draw(key, cumulative_w, total):
    """Frequency weights: ``total`` = Σw units drawn with probabilities w/Σw (by inverting the cumulative
    weights: memory O(Σw), not O(Σw · n)); a row's weight is how often it was drawn."""
    u = jax.random.uniform(key, (total,)) * cumulative_w[-1]
    rows = jnp.searchsorted(cumulative_w, u, side="right")
    return jnp.zeros(cumulative_w.shape[0]).at[rows].add(1.0)


def _cluster_draw(key, codes, w, g):
    counts = jnp.zeros(g).at[jax.random.randint(key, (g,), 0, g)].add(1.0)
    return w * counts[codes]
