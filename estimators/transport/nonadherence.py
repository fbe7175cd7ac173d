"""Non-adherence (eAppendix C): per-protocol effects E[Y^{z, a=z} − Y^{z', a'=z'} | S=0].

In each trial we also observe treatment received A and post-randomisation covariates L. Under sequential
exchangeability and positivity (C1–C5), eq. (C.6)–(C.7) give the per-protocol version of every weighting
estimator by replacing the arm weight I(Z=z)/e(z; X, S) with

    W_z = I(Z=z, A=z) / ( e(z; X, S) · P[A=z | X, S, Z=z, L] ).

The adherence model P[A=z | X, S, Z=z, L] is a logistic regression, one per assigned arm z, on trial rows with
Z=z, with X, L and trial indicators as regressors (block ``adherence_z{c}``). The weighting estimators (one
trial at a time and pooled, normalised or not) and the pooled pseudo-outcome regression (eq. C.7) then
estimate per-protocol effects; "unadjusted" becomes the naive per-protocol comparison (adherers only). The
outcome-model and doubly robust per-protocol estimators use the iterated-expectation regressions of eq. (C.2)
(:mod:`~estimators.transport.iterated`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd

from estimators.regression import logistic
from mestim.errors import DataError

from .data import arm_codes, label, missing_column


@dataclasses.dataclass(frozen=True)
class Adherence:
    """Evaluates I(A=z_c)/P[A=z_c | X, S, Z=z_c, L] for every arm c (hashable)."""

    n_arms: int

    def blocks(self) -> tuple[str, ...]:
        return tuple(f"adherence_z{c}" for c in range(self.n_arms))

    def weights(self, up, row):
        import jax.numpy as jnp

        xl = row["tr.XL"]
        p = jnp.stack([jax.nn.sigmoid(xl @ up[f"adherence_z{c}"]) for c in range(self.n_arms)])
        return row["tr.Ahot"] / p


def add_adherence_columns(data, df, received: str, post_covariates, *, per_trial: bool) -> tuple[list, list]:
    """Add tr.Ahot, tr.adherent, tr.XL, tr.XL1 and the post-randomisation columns (and their arm interactions).

    Returns (the adherence model's regressors, the post-randomisation column names)."""
    cols = data.columns
    R = cols["tr.R"] > 0
    post = [post_covariates] if isinstance(post_covariates, str) else list(post_covariates or [])
    for c in [received, *post]:
        if c not in df.columns:
            raise missing_column(c, df.columns)
        bad = R & pd.isna(df[c].to_numpy())
        if c in post:
            bad |= R & ~np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
        if bad.any():
            raise DataError(f"column '{c}' has {int(bad.sum())} NaN/missing (or non-numeric) value(s) in trial rows; "
                            "the per-protocol analysis needs treatment received and post-randomisation covariates "
                            "in every trial row")
    a_code = arm_codes(df[received].to_numpy(), data.arms)
    ahot = (R[:, None] & (a_code[:, None] == np.arange(data.n_arms)[None, :])).astype(float)
    cols["tr.Ahot"] = ahot
    cols["tr.adherent"] = (cols["tr.Zhot"] * ahot).sum(1)  # received the arm assigned
    names = []
    for c in post:
        name = f"post:{c}"
        cols[name] = np.where(R, pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float), 0.0)
        names.append(name)
        for ci, arm in enumerate(data.arms):
            cols[f"[{data.treatment}={label(arm)}]*{name}"] = cols["tr.Zhot"][:, ci] * cols[name]
    dummies = [f"[{data.study}={label(s)}]" for s in data.trials[1:]]
    cols["tr.XL1"] = np.column_stack([cols["tr.X"]] + [cols[nm] for nm in names])
    cols["tr.XL"] = np.column_stack([cols["tr.XL1"]] + [cols[nm] for nm in dummies])
    groups = [(j, cols["tr.Shot"][:, j - 1] > 0) for j in range(1, data.m + 1)] if per_trial else [(0, R)]
    for ci in range(data.n_arms):
        cols[f"tr.Aeq{ci}"] = ahot[:, ci]
        for j, rows in groups:
            if cols["tr.adherent"][rows & (cols["tr.Zhot"][:, ci] > 0)].sum() == 0:
                where = f" in trial {data.study}={label(data.trials[j - 1])}" if j else ""
                raise DataError(f"no trial row{where} assigned {data.treatment}={label(data.arms[ci])} received it "
                                f"({received}={label(data.arms[ci])}): the per-protocol effect is not identified"
                                + (" one trial at a time; estimate the pooled effect only (per_trial=False, --pooled-only)" if j else ""))
    return data.covariates + names + dummies, names


def adherence_blocks(data, regressors: list) -> list:
    """One logistic adherence model per assigned arm (``adherence_z{c}``)."""
    out = []
    for c in range(data.n_arms):
        mask = (lambda cols, c=c: (cols["tr.R"] > 0) & (cols["tr.Zhot"][:, c] > 0))
        out.append(logistic(f"adherence_z{c}", f"tr.Aeq{c}", regressors, mask=mask))
    return out
