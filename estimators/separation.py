"""Separation in binary and multinomial regression, detected by a linear program (Konis 2007).

The maximum likelihood estimate of a logistic (or probit, complementary log-log, …; any link onto (0, 1)) or
multinomial logistic regression exists if and only if the classes are not *separated* (Albert & Anderson 1984):
there is no direction b ≠ 0 of the coefficients along which every row's fitted probability of its own class can
only rise. For a binary outcome that is a b with

    x_iᵀb ≥ 0  where y_i = 1,     x_iᵀb ≤ 0  where y_i = 0,     not all x_iᵀb = 0;

moving β along such a b raises the likelihood for ever, so the "estimate" runs off to infinity in the coefficients
that b involves. Complete separation: some b gives every row a strictly positive margin; quasi-complete: only some.

Konis (2007, ch. 4; R's ``detectseparation`` and ``safeBinaryRegression``) finds b by a linear program:

    maximise   Σ_i y*_i x_iᵀb      subject to   y*_i x_iᵀb ≥ 0 for every row,   −1 ≤ b_j ≤ 1,

with y*_i = ±1. Its optimum is 0 exactly when the data are not separated. Its solution need not make every
separable row's margin positive (a vertex of the box), so the program is solved again on the margins still zero
and the directions added, until no margin can grow: the rows with a positive margin are then exactly those fitted
with probability 0 or 1 in the limit, and separation is complete when that is every row.

For C classes (class 0 the reference, β_0 = 0) the margins are x_iᵀ(β_{c_i} − β_j) ≥ 0 for every other class j,
and a proportion 0 < y_i < 1 (binomial with prior weights) forces x_iᵀb = 0. The design's columns are scaled to
max |x_ij| = 1 first, so the box and the tolerances do not depend on the covariates' units (positive column
scaling maps separating directions to separating directions).

The check runs after the fit (a block's ``check``; streamed fits skip it) on the block's rows (its mask; prior
weights > 0). It cannot see :func:`mestim.fit`'s ``weights=``, so a row with frequency weight 0 still counts as
data here.

Fitted probabilities of exactly 0 or 1 are *not* the test: a fit whose MLE exists can put some rows at |xᵀβ| > 20
(a covariate with a wide range), and statsmodels and R fit it without complaint. They are used only as a cheap
screen, see :func:`suspicious`.
"""

from __future__ import annotations

import warnings

import numpy as np

from mestim.errors import MestimWarning, SeparationError

# A fit is only checked by the linear program when some row's fitted probability of its own class is within this
# of 1. With separation the solver can only stop (Σψ ≈ 0 to gtol) once the separated rows are saturated to about
# gtol·n, far below this; without it the check is skipped, which saves the program on large data (it takes about
# 1 s per 10⁵ rows). A judgement call: lower means fewer programs, higher means more margin for early stopping.
SCREEN = 1e-6
MARGIN_TOL = 1e-7  # margins of the scaled program below this are zero (HiGHS' default feasibility tolerance)
DIRECTION_TOL = 1e-3  # |b_j| above this marks coefficient j as diverging (detectseparation's beta tolerance)


def suspicious(p_own: np.ndarray) -> bool:
    """Whether a fit deserves the linear program: a row fitted with probability ≥ 1 − SCREEN for its own class."""
    return bool(np.any(p_own >= 1.0 - SCREEN))


def separation(x: np.ndarray, classes: np.ndarray, n_classes: int, fractional=None):
    """Konis' linear program for rows ``x`` (n, k) of classes 0..C−1.

    ``fractional``: rows with a proportion strictly between 0 and 1 (binary only), whose margin must be 0.
    Returns None when the data are not separated, else ``(rows, direction, complete)``: the rows with a positive
    margin (fitted with probability 1 for their class in the limit), the separating direction ((C−1)·k entries,
    class-major, scaled design) and whether the separation is complete.
    """
    x = np.asarray(x, float)
    scale = np.abs(x).max(axis=0)
    fixed = np.zeros(len(x), bool) if fractional is None else np.asarray(fractional, bool)
    # Identical rows give identical constraints: solve on the distinct (row, class) pairs (categorical designs
    # collapse to a few cells), then map back.
    distinct, inverse = np.unique(np.column_stack([x / np.where(scale > 0, scale, 1.0), classes, fixed]), axis=0,
                                  return_inverse=True)
    inverse = inverse.ravel()
    x, own, fixed = distinct[:, :-2], distinct[:, -2].astype(int), distinct[:, -1] > 0
    n, k = x.shape
    n_dir = (n_classes - 1) * k
    # One margin row per (row, other class j): x_iᵀ(β_{c_i} − β_j), as coefficients on the flat direction.
    rows, blocks = [], []
    for j in range(n_classes):
        sel = np.flatnonzero(own != j)
        m = np.zeros((sel.size, n_dir))
        for cls, sign in ((own[sel], 1.0), (np.full(sel.size, j), -1.0)):
            for c in range(1, n_classes):
                hit = cls == c
                m[hit, (c - 1) * k:c * k] += sign * x[sel[hit]]
        rows.append(sel)
        blocks.append(m)
    row_of = np.concatenate(rows)
    margins = np.concatenate(blocks)
    free = ~fixed[row_of]
    equality = margins[~free] if fixed.any() else None
    # Konis' program, with the rows' margins weighted by how often each distinct row occurs (same optimum sign).
    counts = np.bincount(inverse, minlength=n)[row_of[free]]
    margins, row_of = margins[free], row_of[free]
    direction = None
    positive = np.zeros(len(margins), bool)
    while not positive.all():
        # Konis' program on the margins still zero: its solution is one separating direction; adding directions
        # (the feasible set is a cone) grows the set of positive margins until it is the largest possible, i.e.
        # every row that is fitted with probability 1 in the limit (one program if the data are not separated).
        from scipy.optimize import linprog  # only when a fit looks separated

        res = linprog(-(counts[~positive, None] * margins[~positive]).sum(axis=0), A_ub=-margins,
                      b_ub=np.zeros(len(margins)), A_eq=equality,
                      b_eq=None if equality is None else np.zeros(len(equality)), bounds=[(-1.0, 1.0)] * n_dir,
                      method="highs")
        if res.status != 0:  # b = 0 is feasible and the box bounds the optimum: only a numerical failure gets here
            warnings.warn(f"the separation check's linear program failed ({res.message}); separation was not "
                          "checked", MestimWarning, stacklevel=3)
            return None
        grown = (margins @ (res.x if direction is None else direction + res.x)) > MARGIN_TOL
        if -res.fun <= MARGIN_TOL or not (grown & ~positive).any():
            break
        direction = res.x if direction is None else direction + res.x
        positive = grown
    if direction is None:
        return None
    # A row is fitted with probability 1 for its class when its margin against every other class is positive.
    all_positive = ~fixed
    all_positive[row_of[~positive]] = False
    return (np.flatnonzero(all_positive[inverse]), direction / np.abs(direction).max(),
            bool(positive.all()) and equality is None)


def raise_if_separated(block: str, x, classes, n_classes: int, labels, rows_index, *, model: str,
                       fractional=None) -> None:
    """Run :func:`separation` and raise a :class:`SeparationError` naming the rows and coefficients involved.

    ``labels``: one per direction entry (class-major); ``rows_index``: the data row of each row of ``x``.
    """
    found = separation(x, classes, n_classes, fractional)
    if found is None:
        return
    rows, direction, complete = found
    diverging = [lab for lab, b in zip(labels, direction) if abs(b) > DIRECTION_TOL]
    where = ", ".join(str(int(r)) for r in np.asarray(rows_index)[rows[:8]]) + (", …" if rows.size > 8 else "")
    coefs = f"the estimates of {diverging} run off to ±infinity" if diverging else "the estimates run off to infinity"
    if complete:
        raise SeparationError(
            f"block '{block}': the outcome is perfectly separated by the covariates (complete separation, found by "
            f"a linear program: every row is fitted with probability 0 or 1 in the limit), so the {model} MLE does "
            f"not exist and {coefs}; remove the separating covariate or use a penalised (Firth) model")
    raise SeparationError(
        f"block '{block}': quasi-complete separation: {rows.size} of {len(x)} rows (data rows {where}) are fitted "
        f"with probability 0 or 1 in the limit along a direction found by a linear program (Konis 2007), so the "
        f"{model} MLE does not exist and {coefs}; merge sparse categories, drop the separating covariate, or use "
        "a penalised (Firth) model")
