"""Regression working models as blocks: linear, logistic, multinomial logistic, GLM, mean.

Each factory returns a :class:`mestim.Block`; restrict it to rows with ``mask=``. Estimating functions
(spec §1), with m_i = I(row i in the mask) and design row x_i:

    linear        ψ = m_i (y_i − x_iᵀβ) x_i
    logistic      ψ = m_i (y_i − expit(x_iᵀβ)) x_i
    multinomial   ψ_c = m_i (I(y_i = c) − π_c(x_i)) x_i,  c = 1..C−1, π_c = exp(x_iᵀβ_c) / (1 + Σ_c' exp(x_iᵀβ_c'))
    GLM           ψ = m_i (y_i − μ_i) μ'(η_i)/V(μ_i) x_i,  η_i = x_iᵀβ + offset_i (families and links:
                  :mod:`estimators.generalized_linear`; linear, logistic and poisson are its canonical cases)
    mean          ψ = m_i (y_i − μ)

These are the score equations of the (quasi-)likelihood, so θ̂ equals the MLE and the sandwich is the
robust (HC0) covariance that statsmodels reports with ``cov_type="HC0"``. Logistic and multinomial blocks are
checked for separation after fitting (:mod:`estimators.separation`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.data import levels, require_numeric
from mestim.errors import DataError

from .design import block_rows, clean_in_mask, level_label
from .generalized_linear import GLMScore, glm, prepared_design
from .separation import raise_if_separated, suspicious

__all__ = ["GLMScore", "glm", "linear", "logistic", "poisson", "multinomial", "mean"]


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


def linear(name: str, y: str, X=None, **kw) -> Block:
    """Linear regression (least squares) block: ψ = m (y − xᵀβ) x.

    Example (least squares, as NumPy's polyfit)::

        >>> import numpy as np, mestim
        >>> from estimators import linear
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> res = mestim.fit(linear("lm", "y", ["x"]), d)
        >>> bool(np.allclose(res.theta, np.polyfit(x, d["y"], 1)[::-1])), res.labels
        (True, ('(Intercept)', 'x'))
    """
    return glm(name, y, X, family="gaussian", **kw)


def logistic(name: str, y: str, X=None, **kw) -> Block:
    """Logistic regression block for a 0/1 outcome: ψ = m (y − expit(xᵀβ)) x.

    Example (a logistic model of a 0/1 outcome; truth (−0.5, 1))::

        >>> import numpy as np, mestim
        >>> from estimators import logistic
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": (rng.random(300) < 1 / (1 + np.exp(0.5 - x))) * 1.0}
        >>> np.round(mestim.fit(logistic("lg", "y", ["x"]), d).theta, 3)
        array([-0.565,  0.947])
    """
    return glm(name, y, X, family="binomial", **kw)


def poisson(name: str, y: str, X=None, **kw) -> Block:
    """Poisson (log-link) regression block: ψ = m (y − exp(xᵀβ + offset)) x.

    Example (a log-linear model of counts; truth (0.5, 0.3))::

        >>> import numpy as np, mestim
        >>> from estimators import poisson
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": rng.poisson(np.exp(0.5 + 0.3 * x)) * 1.0}
        >>> np.round(mestim.fit(poisson("pois", "y", ["x"]), d).theta, 3)
        array([0.489, 0.326])
    """
    return glm(name, y, X, family="poisson", **kw)


def multinomial(name: str, y: str, X=None, *, formula=None, mask=None, intercept=True, reference=None) -> Block:
    """Multinomial logistic regression for a categorical ``y`` (reference class: ``reference`` or the smallest).

    Checked for separation after fitting, as logistic blocks are (:mod:`estimators.separation`).

    Example (a three-category outcome, category 0 the reference)::

        >>> import numpy as np, mestim
        >>> from estimators import multinomial
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": np.digitize(x + rng.logistic(size=300), [-1.0, 1.0]) * 1.0}
        >>> res = mestim.fit(multinomial("mn", "y", ["x"]), d)
        >>> np.round(res.theta, 3)
        array([0.779, 1.043, 0.262, 1.878])
    """
    prepared = {}  # the parameter labels of the last prepare, for the separation message

    def prepare(cols):
        m, x, labels = prepared_design(name, cols, X, formula, intercept, mask)
        if y not in cols:
            raise DataError(f"outcome '{y}' is not in the data; available columns: {sorted(cols)}")
        yv = cols[y]
        if yv.dtype.kind == "f":
            from mestim.data import check_finite
            check_finite(yv, y, where=m)
        classes = list(levels(cols, y, yv[m]))  # the classes agreed across processes when they fit together
        if reference is not None:
            if reference not in classes:
                raise DataError(f"reference class {reference!r} of block '{name}' does not occur in '{y}'")
            classes.remove(reference)
            classes.insert(0, reference)
        if len(classes) < 2:
            raise DataError(f"block '{name}': '{y}' has a single class {classes} on the rows used")
        onehot = np.stack([(yv == c) & m for c in classes[1:]], axis=1).astype(float)
        plabels = tuple(f"{level_label(c)}:{lab}" for c in classes[1:] for lab in labels)
        prepared["labels"] = plabels
        note = f"multinomial logistic regression of {y} ({len(classes)} classes, reference {classes[0]!r})"
        return Prepared({f"{name}.X": x, f"{name}.Y": onehot, f"{name}.mask": m.astype(float)},
                        np.zeros((len(classes) - 1) * x.shape[1]), plabels, (note,),
                        psi=MultinomialScore(name, len(classes)), rows=m)  # the class count fixes the parameter count

    def check(beta, cols):
        m = cols[f"{name}.mask"] > 0
        x, onehot = cols[f"{name}.X"][m], cols[f"{name}.Y"][m]
        eta = np.column_stack([np.zeros(len(x)), x @ beta.reshape(onehot.shape[1], -1).T])
        own = onehot @ np.arange(1, onehot.shape[1] + 1)  # class index, 0 = reference
        log_p = eta - np.logaddexp.reduce(eta, axis=1, keepdims=True)
        if suspicious(np.exp(log_p[np.arange(len(x)), own.astype(int)])):
            raise_if_separated(name, x, own.astype(int), onehot.shape[1] + 1, prepared["labels"], np.flatnonzero(m),
                               model="multinomial logistic")
        return []

    return Block(name, None, prepare=prepare, check=check)


def mean(name: str, y: str, *, mask=None) -> Block:
    """Mean of ``y`` over the rows in ``mask``: ψ = m (y − μ).

    Example (the mean of the rows a mask keeps)::

        >>> import numpy as np, mestim
        >>> from estimators import mean
        >>> d = {"y": np.arange(10.0), "keep": (np.arange(10) < 5) * 1.0}
        >>> res = mestim.fit(mean("m", "y", mask="keep"), d)
        >>> res.theta, res.labels
        (array([2.]), ('y',))
    """

    def prepare(cols):
        m = block_rows(cols, mask, name)
        yv = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
        return Prepared({f"{name}.y": yv, f"{name}.mask": m.astype(float)}, np.array([yv[m].mean()]), (y,),
                        (f"mean of {y} over {int(m.sum())} rows",), rows=m)

    return Block(name, MeanScore(name), prepare=prepare)

