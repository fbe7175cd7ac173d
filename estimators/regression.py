"""Regression working models as blocks: linear, logistic, multinomial logistic, GLM (canonical links), mean.

Each factory returns a :class:`mestim.Block`; restrict it to rows with ``mask=``. Estimating functions
(spec §1), with m_i = I(row i in the mask) and design row x_i:

    linear        ψ = m_i (y_i − x_iᵀβ) x_i
    logistic      ψ = m_i (y_i − expit(x_iᵀβ)) x_i
    multinomial   ψ_c = m_i (I(y_i = c) − π_c(x_i)) x_i,  c = 1..C−1, π_c = exp(x_iᵀβ_c) / (1 + Σ_c' exp(x_iᵀβ_c'))
    GLM           ψ = m_i (y_i − μ(x_iᵀβ + offset_i)) x_i   (canonical link: score equations of the MLE)
    mean          ψ = m_i (y_i − μ)

These are the score equations of the (quasi-)likelihood, so θ̂ equals the MLE and the sandwich is the
robust (HC0) covariance that statsmodels reports with ``cov_type="HC0"``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.data import require_numeric
from mestim.errors import DataError, SeparationError

from .design import binary_outcome, clean_in_mask, design_matrix, row_mask

# Inverse canonical links μ(η) by family, and μ'(η) as a function of (η, μ).
MEAN_FUNCTIONS = {"gaussian": lambda eta: eta, "binomial": jax.nn.sigmoid, "poisson": jnp.exp}
MEAN_DERIVATIVES = {"gaussian": lambda eta, mu: jnp.ones_like(eta), "binomial": lambda eta, mu: mu * (1 - mu),
                    "poisson": lambda eta, mu: mu}


@dataclasses.dataclass(frozen=True)
class GLMScore:
    """ψ = m (y − μ(xᵀβ + offset)) x for a block ``name`` (hashable: refits reuse compiled code)."""

    name: str
    family: str

    def __call__(self, beta, row):
        x = row[f"{self.name}.X"]
        eta = x @ beta + row[f"{self.name}.offset"]
        return row[f"{self.name}.mask"] * (row[f"{self.name}.y"] - MEAN_FUNCTIONS[self.family](eta)) * x

    def chunk_sums(self, beta, rows, w):
        """ψ of a chunk of rows and its closed-form weighted Jacobian Σ w ∂ψ/∂β = −Xᵀ diag(w m μ'(η)) X: one
        matrix product (what IRLS uses) instead of k backward passes of autodiff; checked against autodiff."""
        x, m = rows[f"{self.name}.X"], rows[f"{self.name}.mask"]
        eta = x @ beta + rows[f"{self.name}.offset"]
        mu = MEAN_FUNCTIONS[self.family](eta)
        values = (m * (rows[f"{self.name}.y"] - mu))[:, None] * x
        return values, -(x * (w * m * MEAN_DERIVATIVES[self.family](eta, mu))[:, None]).T @ x


@dataclasses.dataclass(frozen=True)
class MultinomialScore:
    """ψ_c = m (I(y = c) − π_c) x for classes c = 1..C−1 (class 0 the reference), flattened class-major."""

    name: str
    n_classes: int

    def __call__(self, beta, row):
        x = row[f"{self.name}.X"]
        b = beta.reshape(self.n_classes - 1, x.shape[0])
        eta = b @ x
        prob = jnp.exp(eta - jnp.logaddexp(0.0, jax.nn.logsumexp(eta)))  # π_c, stable
        return (row[f"{self.name}.mask"] * (row[f"{self.name}.Y"] - prob)[:, None] * x[None, :]).ravel()


@dataclasses.dataclass(frozen=True)
class MeanScore:
    name: str

    def __call__(self, mu, row):
        return row[f"{self.name}.mask"] * (row[f"{self.name}.y"] - mu)


def _prepared_design(name, cols, X, formula, intercept, mask):
    n = next(iter(cols.values())).shape[0]
    m = row_mask(cols, mask, n)
    if not m.any():
        raise DataError(f"block '{name}' has no rows: its mask selects none of the {n} rows")
    x, labels = design_matrix(cols, X, formula, intercept)
    return m, clean_in_mask(x, m, f"{name} design"), labels


def glm(name: str, y: str, X=None, *, formula: str | None = None, family: str = "gaussian", mask=None,
        intercept: bool = True, offset: str | None = None) -> Block:
    """GLM with canonical link (``family``: gaussian, binomial, poisson) on the rows in ``mask``."""
    if family not in MEAN_FUNCTIONS:
        raise DataError(f"family={family!r}: use one of {sorted(MEAN_FUNCTIONS)}")

    def prepare(cols):
        m, x, labels = _prepared_design(name, cols, X, formula, intercept, mask)
        if family == "binomial":
            yv = binary_outcome(cols, y, m, name)
        else:
            yv = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
            if family == "poisson" and (yv[m] < 0).any():
                raise DataError(f"block '{name}' is a Poisson model but '{y}' has negative values")
        off = np.zeros(m.size) if offset is None else clean_in_mask(require_numeric(cols, offset), m, offset)
        init = _start(x[m], yv[m], off[m], family)
        note = f"{family} regression of {y} on {len(labels)} design column(s), {int(m.sum())} rows"
        return Prepared({f"{name}.X": x, f"{name}.y": yv, f"{name}.mask": m.astype(float), f"{name}.offset": off},
                        init, tuple(labels), (note,))

    check = _separation_check(name) if family == "binomial" else None
    return Block(name, GLMScore(name, family), prepare=prepare, check=check)


def linear(name: str, y: str, X=None, **kw) -> Block:
    """Linear regression (least squares) block: ψ = m (y − xᵀβ) x."""
    return glm(name, y, X, family="gaussian", **kw)


def logistic(name: str, y: str, X=None, **kw) -> Block:
    """Logistic regression block for a 0/1 outcome: ψ = m (y − expit(xᵀβ)) x."""
    return glm(name, y, X, family="binomial", **kw)


def poisson(name: str, y: str, X=None, **kw) -> Block:
    """Poisson (log-link) regression block: ψ = m (y − exp(xᵀβ + offset)) x."""
    return glm(name, y, X, family="poisson", **kw)


def multinomial(name: str, y: str, X=None, *, formula=None, mask=None, intercept=True, reference=None) -> Block:
    """Multinomial logistic regression for a categorical ``y`` (reference class: ``reference`` or the smallest)."""
    def prepare(cols):
        m, x, labels = _prepared_design(name, cols, X, formula, intercept, mask)
        if y not in cols:
            raise DataError(f"outcome '{y}' is not in the data; available columns: {sorted(cols)}")
        yv = cols[y]
        if yv.dtype.kind == "f":
            from mestim.data import check_finite
            check_finite(yv, y, where=m)
        classes = list(np.unique(yv[m]))
        if reference is not None:
            if reference not in classes:
                raise DataError(f"reference class {reference!r} of block '{name}' does not occur in '{y}'")
            classes.remove(reference)
            classes.insert(0, reference)
        if len(classes) < 2:
            raise DataError(f"block '{name}': '{y}' has a single class {classes} on the rows used")
        onehot = np.stack([(yv == c) & m for c in classes[1:]], axis=1).astype(float)
        plabels = tuple(f"{_class_label(c)}:{lab}" for c in classes[1:] for lab in labels)
        note = f"multinomial logistic regression of {y} ({len(classes)} classes, reference {classes[0]!r})"
        return Prepared({f"{name}.X": x, f"{name}.Y": onehot, f"{name}.mask": m.astype(float)},
                        np.zeros((len(classes) - 1) * x.shape[1]), plabels, (note,),
                        psi=MultinomialScore(name, len(classes)))  # the class count fixes the parameter count

    return Block(name, None, prepare=prepare)


def mean(name: str, y: str, *, mask=None) -> Block:
    """Mean of ``y`` over the rows in ``mask``: ψ = m (y − μ)."""

    def prepare(cols):
        m = row_mask(cols, mask)
        if not m.any():
            raise DataError(f"block '{name}' has no rows: its mask selects none of the rows")
        yv = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
        return Prepared({f"{name}.y": yv, f"{name}.mask": m.astype(float)}, np.array([yv[m].mean()]), (y,),
                        (f"mean of {y} over {int(m.sum())} rows",))

    return Block(name, MeanScore(name), prepare=prepare)


def _class_label(c) -> str:
    return str(int(c)) if isinstance(c, (float, np.floating)) and float(c).is_integer() else str(c)


def _start(x, y, offset, family):
    """A starting β: least squares on the linear predictor scale (exact for the gaussian family)."""
    if family == "gaussian":
        target = y - offset
    elif family == "poisson":
        target = np.log(np.maximum(y, 0.5)) - offset
    else:
        return np.zeros(x.shape[1])
    beta, *_ = np.linalg.lstsq(x, target, rcond=None)
    return beta


def _separation_check(name):
    """Complete or quasi-complete separation shows at the 'solution' as rows fitted with probability 0 or 1:
    with separation the likelihood keeps rising as ‖β‖ → ∞, so the solver stops where expit saturates. In a fit
    whose MLE exists no row has |xᵀβ| near 20 (fitted probability within 2e-9 of its outcome)."""

    def check(beta, cols):
        x, y, m = cols[f"{name}.X"], cols[f"{name}.y"], cols[f"{name}.mask"] > 0
        margin = np.where(y[m] == 1, 1.0, -1.0) * (x[m] @ beta)
        if np.all(margin > 15):
            raise SeparationError(
                f"block '{name}': the outcome is perfectly separated by the covariates (every row is fitted "
                "with probability ≈ 0 or 1), so the logistic MLE does not exist; remove the separating covariate "
                "or use a penalised model")
        saturated = int(np.sum(margin > 20))
        if saturated:
            raise SeparationError(
                f"block '{name}': quasi-complete separation: {saturated} of {int(m.sum())} rows are fitted with "
                "probability 0 or 1 (a covariate or category predicts their outcome exactly), so the logistic MLE "
                "does not exist; merge sparse categories, drop the separating covariate, or use a penalised model")
        return []

    return check
