"""Seeded generator of a multi-trial data set with a known target-population effect.

Design (the biased sampling model of Dahabreh et al., eAppendix A): fixed numbers of rows per source
S = 0 (target sample), 1..m (trials). Given S = s,

    X1, X2 ~ N(μ_s, σ_s²) independently,  X3 ~ Bernoulli(q_s)
    Z | S = s ~ randomised with trial-specific probabilities (P[Z=1] = π_s for two arms)
    Y = α_s + Xβ + Σ_z I(Z=z)·(τ0_z + Xτ_z) + ε,   ε ~ N(0, 1)         (continuous outcome)
    Y ~ Bernoulli(expit(α + Xβ + Σ_z I(Z=z)(τ0_z + Xτ_z)))              (binary outcome; α common)

With σ_s = 1 for all s the log-density ratios between sources are linear in X, so every logistic and
multinomial participation model below is correctly specified; the CATE τ(z, z'; X) is common to all trials
(condition B4 holds), so every trial transports to the target. The true target effects are computed exactly
(continuous: E[τ(X) | S=0] in closed form; binary: Gauss–Hermite quadrature over the target covariate law).

Misspecification for the doubly robust checks:

- ``misspecify="outcome"``: Y also depends on X1² (and the CATE on X1²): linear outcome models in X are wrong,
  participation and treatment models stay right.
- ``misspecify="participation"``: σ_s differs between sources (log-density ratios quadratic in X): the
  participation models in X are wrong, linear outcome models stay right.

Non-adherence (eAppendix C): with ``nonadherence=True`` each trial row also has a post-randomisation
covariate L = 0.5·Z + 0.3·X1 + N(0, 1) and treatment received A (A = Z with probability depending on X, L);
Y then depends on A instead of Z and on L, and the truth is the per-protocol effect E[Y^{z,a=z} − Y^{z',a'=z'} | S=0].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

BETA = np.array([1.0, -0.5, 0.8])  # main effects of X1, X2, X3
TAU0 = 2.0  # treatment effect at X = 0 (arm 1 vs 0)
TAU = np.array([1.5, -1.0, 1.0])  # effect modification by X1, X2, X3
KAPPA = 0.8  # X1² modification under misspecify="outcome"
GAMMA = 0.6  # X1² main effect under misspecify="outcome"
LAMBDA_L = 1.0  # effect of L on Y (non-adherence)


@dataclasses.dataclass(frozen=True)
class SimulatedTrials:
    """A simulated data set and its known truths.

    Example (the rows and the truth behind them)::

        >>> from estimators.transport import simulate_trials
        >>> sim = simulate_trials(n_per_trial=100, n_target=200, seed=1)
        >>> sorted(sim.data.columns), {k: round(v, 4) for k, v in sim.true_means.items()}
        (['S', 'X1', 'X2', 'X3', 'Y', 'Z'], {0: 0.65, 1: 3.45})
    """

    data: pd.DataFrame
    true_effect: float  # E[Y^1 − Y^0 | S=0] (per-protocol effect with nonadherence=True)
    true_means: dict  # E[Y^z | S=0] per arm (exact; meaningful for binary outcomes)
    true_effects: dict  # {(z, z'): E[Y^z − Y^z' | S=0]}
    settings: dict


def _source_params(m: int):
    """Covariate means, X3 probabilities and randomisation probabilities by source (0 = target)."""
    mu = np.array([[0.0, 0.0]] + [[0.6 * np.cos(2 * np.pi * k / m), 0.6 * np.sin(2 * np.pi * k / m)] for k in range(m)])
    mu[0] = [0.4, 0.3]
    q = np.concatenate([[0.5], np.linspace(0.3, 0.7, m)])
    alpha = np.concatenate([[0.0], np.linspace(-1.0, 1.0, m)])
    pi = np.concatenate([[0.5], np.tile([0.5, 2 / 3, 0.5, 0.4], m)[:m]])
    return mu, q, alpha, pi


def simulate_trials(n_trials: int = 4, n_per_trial=300, n_target: int = 1000, *, seed: int = 2024,
                    binary: bool = False, n_arms: int = 2, target_has_outcome: bool = False,
                    misspecify: str | None = None, nonadherence: bool = False) -> SimulatedTrials:
    """Simulate ``n_trials`` randomised trials and a target sample (S=0), with the true target effect.

    Args:
        n_trials: m, the number of trials (labelled 1..m).
        n_per_trial: rows per trial (an int, or one per trial).
        n_target: rows in the target sample (S=0).
        seed: seed of NumPy's default generator: the same arguments give the same data.
        binary: Bernoulli outcome (logistic model) instead of a continuous one.
        n_arms: number of treatment arms (0..n_arms−1; arm k has effect k/(n_arms−1) times arm 1's
            for n_arms > 2, so every pair (z, z') has a known effect).
        target_has_outcome: the target sample is itself a trial (trial emulation): Z, Y observed there too;
            otherwise Z and Y are NaN on target rows.
        misspecify: None, ``"outcome"`` or ``"participation"`` (see the module docstring).
        nonadherence: add treatment received A and post-randomisation covariate L (eAppendix C).

    Returns:
        :class:`SimulatedTrials` with columns S, Z, Y, X1, X2, X3 (and A, L with ``nonadherence``).

    Example (four small trials and a target sample, with the known target effect)::

        >>> from estimators.transport import simulate_trials
        >>> sim = simulate_trials(n_per_trial=100, n_target=200, seed=1)
        >>> sim.data.shape, round(sim.true_effect, 4)
        ((600, 6), 2.8)
    """
    if misspecify not in (None, "outcome", "participation"):
        raise ValueError("misspecify must be None, 'outcome' or 'participation'")
    if n_arms < 2:
        raise ValueError("n_arms must be at least 2")
    rng = np.random.default_rng(seed)
    m = int(n_trials)
    sizes = np.broadcast_to(np.asarray(n_per_trial, int), (m,))
    mu, q, alpha, pi = _source_params(m)
    sd = np.ones(m + 1) if misspecify != "participation" else np.concatenate([[0.7], np.linspace(1.0, 1.5, m)])
    arm_scale = np.arange(n_arms) / (n_arms - 1) if n_arms > 2 else np.array([0.0, 1.0])
    frames = []
    for s, n_s in enumerate([n_target, *sizes]):
        x12 = mu[s] + sd[s] * rng.normal(size=(n_s, 2))
        x3 = (rng.random(n_s) < q[s]).astype(float)
        x = np.column_stack([x12, x3])
        if n_arms == 2:
            z = (rng.random(n_s) < pi[s]).astype(float)
        else:
            probs = np.full(n_arms, 1.0 / n_arms)
            z = rng.choice(n_arms, size=n_s, p=probs).astype(float)
        frame = {"S": np.full(n_s, s), "X1": x[:, 0], "X2": x[:, 1], "X3": x[:, 2]}
        received = z
        extra = 0.0
        if nonadherence:
            lcov = 0.5 * z + 0.3 * x[:, 0] + rng.normal(size=n_s)
            p_adhere = 1 / (1 + np.exp(-(1.2 + 0.6 * lcov - 0.4 * x[:, 0])))
            adhere = rng.random(n_s) < p_adhere
            received = np.where(adhere, z, 1 - z)
            extra = LAMBDA_L * lcov
            frame["A"], frame["L"] = received, lcov
        cate = TAU0 + x @ TAU + (KAPPA * x[:, 0] ** 2 if misspecify == "outcome" else 0.0)
        main = x @ BETA + (GAMMA * x[:, 0] ** 2 if misspecify == "outcome" else 0.0)
        eff = arm_scale[received.astype(int)] * cate
        if binary:
            eta = -0.3 + 0.5 * (main + eff - 2.0)  # α common across sources: the risk-difference CATE is common
            y = (rng.random(n_s) < 1 / (1 + np.exp(-eta))).astype(float)
        else:
            y = alpha[s] + main + eff + extra + rng.normal(size=n_s)
        frame["Z"], frame["Y"] = z, y
        if s == 0 and not target_has_outcome:
            frame["Z"] = np.full(n_s, np.nan)
            frame["Y"] = np.full(n_s, np.nan)
            for k in ("A", "L"):
                if k in frame:
                    frame[k] = np.full(n_s, np.nan)
        frames.append(pd.DataFrame(frame))
    data = pd.concat(frames, ignore_index=True)
    cols = ["S", "Z", "Y", "X1", "X2", "X3"] + (["A", "L"] if nonadherence else [])
    data = data[cols]
    means = _true_means(mu[0], sd[0], q[0], binary, misspecify, arm_scale, nonadherence)
    effects = {(a, b): means[a] - means[b] for a in range(n_arms) for b in range(n_arms) if a != b}
    return SimulatedTrials(data, effects[(1, 0)], means, effects,
                           dict(n_trials=m, n_per_trial=sizes.tolist(), n_target=n_target, seed=seed, binary=binary,
                                n_arms=n_arms, target_has_outcome=target_has_outcome, misspecify=misspecify,
                                nonadherence=nonadherence))


def _true_means(mu0, sd0, q0, binary, misspecify, arm_scale, nonadherence):
    """E[Y^z | S=0] per arm, exactly (closed form or 60-point Gauss–Hermite per normal covariate)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    x1 = mu0[0] + sd0 * nodes
    x2 = mu0[1] + sd0 * nodes
    g1, g2, g3 = np.meshgrid(x1, x2, [0.0, 1.0], indexing="ij")
    wgt = np.einsum("i,j,k->ijk", weights, weights, [1 - q0, q0])
    cate = TAU0 + TAU[0] * g1 + TAU[1] * g2 + TAU[2] * g3 + (KAPPA * g1**2 if misspecify == "outcome" else 0.0)
    main = BETA[0] * g1 + BETA[1] * g2 + BETA[2] * g3 + (GAMMA * g1**2 if misspecify == "outcome" else 0.0)
    out = {}
    for z, scale in enumerate(arm_scale):
        if binary:
            eta = -0.3 + 0.5 * (main + scale * cate - 2.0)
            val = np.sum(wgt / (1 + np.exp(-eta)))
        else:
            # E[L^{z}] = 0.5 z + 0.3 E[X1] under per-protocol intervention (a = z)
            val = np.sum(wgt * (main + scale * cate)) + (LAMBDA_L * (0.5 * z + 0.3 * mu0[0]) if nonadherence else 0.0)
        out[z] = float(val)
    return out


def bundled_data_path() -> str:
    """Path of the bundled simulated data set (``estimators/data/transport_sim.csv``)."""
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "transport_sim.csv")


BUNDLED = dict(n_trials=4, n_per_trial=[250, 400, 300, 350], n_target=1000, seed=20240607)


def load_transport_sim() -> pd.DataFrame:
    """The bundled simulated data set: 4 trials (S=1..4) and a target sample (S=0, Z and Y missing).

    Made by ``simulate_trials(**BUNDLED)`` (seed 20240607, 1000 target rows, trials of 250, 400, 300, 350 rows);
    its true target effect E[Y¹ − Y⁰ | S=0] is :func:`bundled_truth` = 2.8.

    Example (four trials (S = 1…4) and the target sample (S = 0))::

        >>> from estimators.transport import load_transport_sim
        >>> df = load_transport_sim()
        >>> df.shape, sorted(df.S.unique().tolist())
        ((2300, 6), [0, 1, 2, 3, 4])
    """
    return pd.read_csv(bundled_data_path())


def bundled_truth() -> float:
    """The true E[Y¹ − Y⁰ | S=0] of the bundled data set's generating law.

    Example::

        >>> from estimators.transport import bundled_truth
        >>> round(bundled_truth(), 6)
        2.8
    """
    return simulate_trials(**{**BUNDLED, "n_per_trial": [1] * 4, "n_target": 1}).true_effect


def write_bundled_data(path: str | None = None) -> str:
    """Regenerate the bundled CSV (deterministic)."""
    sim = simulate_trials(**BUNDLED)
    path = path or bundled_data_path()
    sim.data.to_csv(path, index=False, float_format="%.6g")
    return path
