"""What a fit returns: estimates with their joint covariance, inference on them, and how the fit went.

:class:`Estimates` is any vector of estimates with a joint covariance (a fit, or a delta-method transform of
one): SEs, Wald CIs, z and p values, further delta-method transforms, Wald χ² tests. :class:`Result` adds the
fit's diagnostics (solver status, iterations, residual norm, bread condition number, warnings) and per-row
influence functions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import SpecificationError


def z_crit(level: float) -> float:
    """z_{1−α/2} of a two-sided Wald interval at confidence ``level``."""
    check_level(level)
    return NormalDist().inv_cdf(0.5 + level / 2)


def check_level(level, label: str | None = None) -> float:
    """The confidence level as a float in (0, 1), or a :class:`SpecificationError` that says what to give (a
    percentage such as 95 gets "did you mean 0.95?"). ``label`` names the value in the message."""
    label = label or f"level={level!r}"
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise SpecificationError(f"{label} is not a number: give a confidence level in (0, 1), e.g. 0.95") from None
    if not 0 < value < 1:
        hint = f"; did you mean {value / 100:g}?" if 1 < value < 100 else ""
        raise SpecificationError(f"{label}: a confidence level must lie strictly between 0 and 1 (e.g. 0.95)"
                                 + hint)
    return value


def normal_two_sided_p(z) -> np.ndarray:
    """2·(1 − Φ(|z|)) = erfc(|z|/√2)."""
    return np.vectorize(lambda v: math.erfc(abs(v) / math.sqrt(2.0)) if np.isfinite(v) else np.nan,
                        otypes=[float])(np.asarray(z, float))


def chi2_upper(x: float, df: int) -> float:
    """P(χ²_df > x) for an integer df ≥ 1, in closed form (Abramowitz & Stegun 26.4.4–5; scipy.special.chdtrc takes
    0.15–0.18 s to import, a tenth of a cold command). With c = √x: odd df, erfc(c/√2) + √(2/π) e^{−x/2}
    Σ_{r=1}^{(df−1)/2} c^{2r−1}/(1·3···(2r−1)); even df, e^{−x/2} Σ_{r=0}^{df/2−1} (x/2)^r/r!. Every term is
    positive (no cancellation) and formed as exp(log term − x/2), which neither overflows nor underflows early."""
    if math.isnan(x) or x <= 0 or math.isinf(x):
        return float("nan") if math.isnan(x) else float(x <= 0)
    half = x / 2
    if df % 2:
        log_term, total = 0.5 * math.log(x) - half, 0.0
        for r in range(1, (df + 1) // 2):
            total += math.exp(log_term)
            log_term += math.log(x / (2 * r + 1))
        return math.erfc(math.sqrt(half)) + math.sqrt(2 / math.pi) * total
    log_term, total = -half, 0.0
    for r in range(df // 2):
        total += math.exp(log_term)
        log_term += math.log(half / (r + 1))
    return total


def value_and_jacobian(g: Callable, theta):
    """(g(θ) as a vector, ∂g/∂θ by reverse-mode autodiff): the delta method's pieces, traceable, so a caller may
    compute them inside its own compiled program (then :meth:`Estimates.delta_from`)."""
    flat = lambda t: jnp.atleast_1d(g(t))  # noqa: E731
    return flat(theta), jax.jacrev(flat)(theta)


# One compiled program per (g, θ's shape): g is a static argument, so an equal g reuses the program. Eagerly,
# jacrev would dispatch (and compile) every primitive of g separately.
delta_program = jax.jit(value_and_jacobian, static_argnums=0)


def made_per_call(g) -> bool:
    """A lambda or a function defined inside another: a new object every time its definition runs."""
    return isinstance(g, types.FunctionType) and "<" in g.__qualname__  # "<lambda>", "f.<locals>.g"


def hashable(g) -> bool:
    try:
        hash(g)
    except TypeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class OfBlocks:
    """g of a dict of blocks as a function of the flat θ; hashable and equal when g and the blocks are."""

    g: Callable
    blocks: tuple  # ((name, start, stop), ...)

    def __call__(self, theta):
        return self.g({name: theta[a:b] for name, a, b in self.blocks})


class WaldTest(NamedTuple):
    """Wald χ² test of H₀: g(θ) = c (``statistic`` ~ χ²_df under H₀).

    Example (a Wald test that two coefficients are equal: χ², its degrees of freedom and p-value)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> d["z"] = rng.normal(size=300)
        >>> design = lambda row: jnp.array([1.0, row["x"], row["z"]])
        >>> ols = mestim.Block("lm", lambda t, row: (row["y"] - t @ design(row)) * design(row), init=[0.0, 0.0, 0.0],
        ...                    labels=("1", "x", "z"))
        >>> test = mestim.fit(ols, d).test_equal(["x", "z"])
        >>> round(test.statistic, 2), test.df, test.p_value < 1e-10
        (531.56, 1, True)
    """

    statistic: float
    df: int
    p_value: float

    @classmethod
    def of(cls, statistic: float, df: int) -> "WaldTest":
        return cls(float(statistic), int(df), chi2_upper(float(statistic), int(df)) if df > 0 else float("nan"))

    def __str__(self):
        return f"Wald χ² = {self.statistic:.4g} on {self.df} df, p = {self.p_value:.4g}"


INTERCEPT_NAMES = ("(Intercept)", "Intercept")  # R's and mestim's name, formulaic's and statsmodels'


def _same_name(label: str, key) -> bool:
    """A parameter label and a lookup key name the same parameter: equal, or both an intercept of the same block
    ("m:Intercept" and "m:(Intercept)")."""
    if label == key:
        return True
    if not isinstance(key, str):
        return False
    (lb, ls, ln), (kb, ks, kn) = label.rpartition(":"), key.rpartition(":")
    return (lb, ls) == (kb, ks) and ln in INTERCEPT_NAMES and kn in INTERCEPT_NAMES


@dataclasses.dataclass(frozen=True, repr=False)
class Estimates:
    """Estimates θ̂ with joint covariance V; every inference below is read off V.

    ``scale="log"`` (from ``delta(..., exponentiate=True)``): θ̂ and V are logarithms of ratios; :meth:`ci`,
    :meth:`table` and :meth:`summary` report the ratios exp(θ̂) with the CIs exp(θ̂ ± z·SE), and z and p test
    ratio = 1 (θ = 0), as for odds and risk ratios.

    Example (two estimates and their covariance, as a table with Wald CIs and tests)::

        >>> import numpy as np, mestim
        >>> est = mestim.Estimates(np.array([0.0, np.log(2.0)]), np.diag([0.01, 0.04]), ("a", "b"))
        >>> print(est.table().round(4))
          param  estimate   se  ci_low  ci_high       z       p
        a     a    0.0000  0.1 -0.1960   0.1960  0.0000  1.0000
        b     b    0.6931  0.2  0.3012   1.0851  3.4657  0.0005
    """

    theta: np.ndarray
    vcov: np.ndarray
    labels: tuple[str, ...]
    scale: str = "identity"

    @property
    def se(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # a negative variance (rounding of a degenerate sandwich) is NaN
            return np.sqrt(np.diag(self.vcov))

    def ci(self, level: float = 0.95) -> np.ndarray:
        """Wald CIs θ̂ ± z_{1-α/2}·SE, shape (p, 2) (exponentiated on the log scale)."""
        z = z_crit(level)
        ci = np.column_stack([self.theta - z * self.se, self.theta + z * self.se])
        return np.exp(ci) if self.scale == "log" else ci

    @property
    def estimate(self) -> np.ndarray:
        """θ̂, or the ratios exp(θ̂) on the log scale."""
        return np.exp(self.theta) if self.scale == "log" else self.theta

    def conf_int(self, level: float = 0.95):
        """:meth:`ci` as a pandas DataFrame indexed by the parameter labels (as statsmodels' ``conf_int``)."""
        import pandas as pd

        return pd.DataFrame(self.ci(level), index=list(self.labels), columns=["ci_low", "ci_high"])

    def cov_params(self):
        """The covariance as a pandas DataFrame labelled by parameter (as statsmodels' ``cov_params``)."""
        import pandas as pd

        return pd.DataFrame(self.vcov, index=list(self.labels), columns=list(self.labels))

    @property
    def z(self) -> np.ndarray:
        """θ̂/SE; NaN where the SE is 0 or NaN (no Wald statistic: the fit warned)."""
        se = self.se
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(se > 0, self.theta / se, np.nan)

    @property
    def p_values(self) -> np.ndarray:
        return normal_two_sided_p(self.z)

    def index(self, key) -> np.ndarray:
        """Positions of parameters by label, block name (all its parameters), position, or a list of these."""
        if isinstance(key, (list, tuple, np.ndarray)):
            return np.concatenate([self.index(k) for k in key]) if len(key) else np.array([], int)
        if isinstance(key, (int, np.integer)):
            return np.array([int(key)])
        hits = [i for i, lab in enumerate(self.labels) if _same_name(lab, key) or lab.split(":")[0] == key]
        if not hits:
            raise SpecificationError(f"no parameter or block named {key!r}; labels are {list(self.labels)}")
        return np.array(hits)

    def __getitem__(self, key) -> np.ndarray:
        return self.theta[self.index(key)]

    def _g_of_flat(self, g: Callable) -> Callable:
        """g as a function of the flat θ."""
        return g

    def delta(self, g: Callable, labels: Sequence[str] | None = None, *, exponentiate: bool = False) -> "Estimates":
        """Delta method: estimates g(θ̂) with covariance ∇g V ∇gᵀ, ∇g by autodiff.

        ``g`` takes θ in the form the fit was specified in (a flat array for one ψ, a dict of block arrays
        for a stack) and returns a scalar or vector. ``exponentiate=True``: g is the logarithm of a ratio (log RR,
        log OR, a difference of log means); the result reports exp(g) with its CI from the log scale and a test
        of ratio = 1 (``scale="log"``).

        One compiled program per g and θ's shape: a g that is hashable and equal across calls (a module-level
        function, a frozen dataclass) compiles once and its program is kept; a lambda or a function defined inside
        another, made anew at every call, gets a program of its own that is freed with it (kept, they would only
        grow the cache).
        """
        flat_g = self._g_of_flat(g)
        if made_per_call(g) or not hashable(flat_g):
            value, jacobian = jax.jit(functools.partial(value_and_jacobian, flat_g))(self.theta)
        else:
            value, jacobian = delta_program(flat_g, self.theta)
        return self.delta_from(value, jacobian, labels, exponentiate=exponentiate)

    def delta_from(self, value, jacobian, labels: Sequence[str] | None = None, *,
                   exponentiate: bool = False) -> "Estimates":
        """:meth:`delta` from g(θ̂) and G = ∂g/∂θ (flat θ) computed elsewhere, e.g. by :func:`value_and_jacobian`
        inside a caller's own compiled program: estimates g(θ̂) with covariance G V Gᵀ."""
        value, jacobian = np.asarray(value), np.asarray(jacobian)
        labels = tuple(labels) if labels is not None else tuple(f"g[{i}]" for i in range(value.size))
        if len(labels) != value.size:
            raise SpecificationError(f"{len(labels)} labels given for {value.size} transformed estimates")
        return Estimates(value, jacobian @ self.vcov @ jacobian.T, labels, "log" if exponentiate else "identity")

    def wald_test(self, hypothesis, rhs=None) -> WaldTest:
        """Wald χ² test of H₀: Lθ = c (``hypothesis`` a (q, p) matrix) or g(θ) = c (a function, via delta).

        ``rhs`` is c (zeros by default). Statistic (Lθ̂ − c)ᵀ (L V Lᵀ)⁻¹ (Lθ̂ − c) on q = rank df.
        """
        if callable(hypothesis):
            est = self.delta(hypothesis)
            value, cov = est.theta, est.vcov
        else:
            lmat = np.atleast_2d(np.asarray(hypothesis, float))
            if lmat.shape[1] != self.theta.size:
                raise SpecificationError(f"hypothesis matrix has {lmat.shape[1]} columns; θ has {self.theta.size}")
            value, cov = lmat @ self.theta, lmat @ self.vcov @ lmat.T
        diff = value - (np.zeros_like(value) if rhs is None else np.asarray(rhs, float))
        rank = np.linalg.matrix_rank(cov)
        stat = float(diff @ np.linalg.pinv(cov, hermitian=True) @ diff)  # pinv: redundant rows of L are fine
        return WaldTest.of(stat, int(rank))

    def test_equal(self, keys) -> WaldTest:
        """Wald χ² test that the selected parameters are all equal (m − 1 df)."""
        idx = self.index(keys)
        if idx.size < 2:
            raise SpecificationError("test_equal needs at least two parameters")
        lmat = np.zeros((idx.size - 1, self.theta.size))
        lmat[np.arange(idx.size - 1), idx[:-1]] = 1.0
        lmat[np.arange(idx.size - 1), idx[1:]] = -1.0
        return self.wald_test(lmat)

    def table(self, level: float = 0.95):
        """Tidy table (a pandas DataFrame): one row per parameter with estimate, SE, CI, z and p."""
        import pandas as pd

        ci = self.ci(level)
        se = "se(log)" if self.scale == "log" else "se"
        return pd.DataFrame({"param": list(self.labels), "estimate": self.estimate, se: self.se,
                             "ci_low": ci[:, 0], "ci_high": ci[:, 1], "z": self.z, "p": self.p_values},
                            index=list(self.labels))

    def summary(self, level: float = 0.95) -> str:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.6g}".format):
            text = self.table(level).to_string(index=False)
        if self.scale == "log":
            text += "\nratios exp(θ̂) with CIs from the log scale; SE on the log scale; z and p test ratio = 1"
        return text

    def __repr__(self):
        return f"{type(self).__name__}(p={self.theta.size})\n{self.summary()}"


@dataclasses.dataclass(frozen=True, repr=False)
class Result(Estimates):
    """A fitted M-estimator: joint estimates, sandwich covariance and fit diagnostics.

    Example (a fit's labelled table, its diagnostics and the delta method)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> design = lambda row: jnp.array([1.0, row["x"]])
        >>> ols = mestim.Block("lm", lambda t, row: (row["y"] - t @ design(row)) * design(row), init=[0.0, 0.0],
        ...                    labels=("intercept", "slope"))
        >>> res = mestim.fit(ols, d)
        >>> print(res.table()[["estimate", "se"]].round(4))
                   estimate      se
        intercept    0.9918  0.0561
        slope        2.0405  0.0548
        >>> res.converged, res.n_rows
        (True, 300)
        >>> print(res.delta(lambda t: t[1] / t[0], labels=["slope/intercept"]).table()[["estimate", "se"]].round(4))
                         estimate      se
        slope/intercept    2.0573  0.1328
    """

    blocks: dict[str, slice] = dataclasses.field(default_factory=dict)
    n: float = 0.0  # Σw (frequency weights) or rows
    n_rows: int = 0
    n_clusters: int | None = None
    correction: str | None = None
    converged: bool = True
    status: str = "converged"
    iterations: int = 0
    residual_norm: float = 0.0  # ‖Σ w ψ(θ̂)‖∞ over the whole stack
    bread_cond: float = 1.0
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    bread: np.ndarray | None = None  # A = -Σ w ∂ψ/∂θ (unnormalised)
    meat: np.ndarray | None = None  # Σ w ψψᵀ (unnormalised; corrected if asked)
    flat_theta: bool = True  # g in delta() receives a flat θ (one ψ) or a dict of blocks (a stack)
    j_test: WaldTest | None = None  # GMM: Hansen's J test of the over-identifying restrictions
    _influence: Callable[[], np.ndarray] | None = dataclasses.field(default=None, compare=False)

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: self.theta[sl] for name, sl in self.blocks.items()}

    def _g_of_flat(self, g: Callable) -> Callable:
        if self.flat_theta:
            return g
        return OfBlocks(g, tuple((name, sl.start, sl.stop) for name, sl in self.blocks.items()))

    def index(self, key) -> np.ndarray:
        """As :meth:`Estimates.index`; a single-block fit's labels carry no block prefix, yet "m:x" and "m" (the
        block's name) find its parameters as in a stack."""
        if isinstance(key, str) and len(self.blocks) == 1:
            name = next(iter(self.blocks))
            if key == name and key not in self.labels:
                return np.arange(self.theta.size)
            if key.startswith(name + ":") and not any(_same_name(lab, key) for lab in self.labels):
                key = key[len(name) + 1:]
        return super().index(key)

    def influence(self) -> np.ndarray:
        """Per-row influence functions φ_i = B⁻¹ψ_i, B = −(1/n)Σ w ∂ψ/∂θ: θ̂ − θ ≈ (1/n) Σ w_i φ_i, shape (rows, p)."""
        if self._influence is None:
            raise SpecificationError("influence functions are not available for this result (an unpickled result "
                                     "does not carry the data: refit to get them)")
        return self._influence()

    def __getstate__(self):
        """A pickled Result holds the estimates and diagnostics, not the data behind :meth:`influence`."""
        return {**self.__dict__, "_influence": None}

    def diagnostics(self) -> dict[str, Any]:
        return {"converged": self.converged, "status": self.status, "iterations": self.iterations,
                "residual_norm": self.residual_norm, "bread_cond": self.bread_cond, "n": self.n,
                "n_rows": self.n_rows, "n_clusters": self.n_clusters, "correction": self.correction,
                "warnings": list(self.warnings)}

    def summary(self, level: float = 0.95) -> str:
        d = self.diagnostics()
        lines = [super().summary(level), "",
                 f"n = {d['n']:g} (rows {d['n_rows']}"
                 + (f", clusters {d['n_clusters']}" if d["n_clusters"] else "") + ")"
                 + f"; sandwich correction: {d['correction'] or 'none'}",
                 f"solver: {d['status']} in {d['iterations']} iteration(s); ‖Σψ(θ̂)‖∞ = {d['residual_norm']:.3g}; "
                 f"bread condition number {d['bread_cond']:.3g}"]
        if self.j_test is not None:
            lines.append(f"Hansen's J test of the over-identifying restrictions: {self.j_test}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
