"""Sensitivity analysis for violations of conditional exchangeability in measure (eq. 10–11).

Bias model: E[Y^z − Y^{z'} | X, S=0] = E[Y^z − Y^{z'} | X, S=s] + δ·u(s; X), with a user-supplied bias
function u (a constant, the name of a numeric covariate or design column, or a callable ``u(X, s)`` taking the
covariate table — design columns, and text covariates as given — and a trial label — or ``"pooled"`` for the
pooled estimators — and returning one value per row) and a grid of finite multipliers δ. Eq. (11): the target effect is ψ(z, z', s) + δ·E[u(s; X) | S=0], estimated by adding

    ū_s = {Σ I(S_i=0)}⁻¹ Σ I(S_i=0) u(s; X_i)

to each estimator. ū_s is itself an M-estimator (ψ = I(S=0)(u(s; X) − ū_s), block ``bias_mean``) stacked with
the rest, so the CI at each δ uses the joint covariance of (ψ̂, ū): Var = V_ψψ + 2δ V_ψū + δ² V_ūū.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mestim.errors import DataError, SpecificationError

from .data import listing


@dataclasses.dataclass(frozen=True)
class BiasMean:
    """ψ = I(S=0) (u(s; X) − ū_s) for every trial s and for the pooled analysis (last entry)."""

    def __call__(self, ubar, row):
        return row["tr.S0"] * (row["tr.U"] - ubar)


def bias_columns(data, bias) -> np.ndarray:
    """(n, m+1) values of u(s; X) for every trial s and 'pooled' (last column)."""
    n = data.columns["tr.R"].shape[0]
    keys = list(data.trials) + ["pooled"]
    if bias is None:
        return np.ones((n, len(keys)))
    if isinstance(bias, (int, float, np.integer, np.floating)):
        if not np.isfinite(bias):
            raise SpecificationError(f"bias={bias!r}: give a finite number, a covariate name or a function u(X, trial)")
        return np.full((n, len(keys)), float(bias))
    if isinstance(bias, str):
        if bias not in data.frame.columns:
            raise DataError(f"bias covariate '{bias}' is not one of the covariates ({listing(data.frame.columns)}); "
                            "u(s; X) is a function of the covariates")
        values = data.frame[bias]
        if not pd.api.types.is_numeric_dtype(values):
            raise DataError(f"bias covariate '{bias}' is text; name one of its indicator columns "
                            f"({listing(c for c in data.frame.columns if str(c).startswith(f'{bias}['))}) or give a "
                            "function u(X, trial)")
        return np.repeat(values.to_numpy(float)[:, None], len(keys), axis=1)
    if callable(bias):
        out = []
        for s in keys:
            vals = np.asarray(bias(data.frame, s), dtype=float)
            vals = np.broadcast_to(vals, (n,)) if vals.ndim == 0 else vals
            if vals.shape != (n,):
                raise SpecificationError(f"bias function returned shape {vals.shape} for trial {s!r}; expected ({n},)")
            if not np.all(np.isfinite(vals[data.columns['tr.S0'] > 0])):
                raise DataError(f"bias function returned non-finite values on target rows for trial {s!r}")
            out.append(np.where(data.columns["tr.S0"] > 0, vals, 0.0))
        return np.stack(out, axis=1)
    raise SpecificationError("bias must be a number, a covariate name, or a function u(X, trial) -> values")
