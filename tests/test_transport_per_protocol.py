"""Per-protocol effects under non-adherence (eAppendix C): the outcome-model (iterated expectation, eq. C.2) and
doubly robust estimators, one trial at a time and pooled, in the same stack as the weighting estimators.

References: (1) the estimating equations of the whole stack written again in NumPy and solved by delicatessen
(its own root finder and exact derivatives): θ̂ and the joint sandwich; (2) closed forms (least squares and
statsmodels fits of each regression, then the plug-in and weighted-residual formulas); (3) a large simulated
data set whose per-protocol truth is known."""

import warnings

import numpy as np
import pytest
import statsmodels.api as sm

import mestim
from estimators.transport import simulate_trials, transport

COVS = ["X1", "X2"]
ESTIMATORS = ["outcome", "weighting", "dr"]


def expit(x):
    return 1 / (1 + np.exp(-x))


def _fit(df, covariates=COVS, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mestim.MestimWarning)
        return transport(df, covariates=covariates, received="A", post_covariates=["L"], **kw)


@pytest.fixture(scope="module")
def small():
    sim = simulate_trials(n_trials=2, n_per_trial=[260, 300], n_target=350, seed=17, nonadherence=True)
    return sim.data, _fit(sim.data, estimators=ESTIMATORS)


class Layout:
    """The data of the stack as NumPy arrays (names as in the paper)."""

    def __init__(self, df):
        S = df.S.to_numpy()
        n = len(df)
        self.n = n
        self.X = np.column_stack([np.ones(n), df[COVS].to_numpy()])
        self.s0 = (S == 0).astype(float)
        self.R = 1 - self.s0
        self.shot = np.stack([(S == 1), (S == 2)], 1).astype(float)
        self.D = self.shot[:, [1]]
        self.Z = np.nan_to_num(df.Z.to_numpy())
        self.A = np.nan_to_num(df.A.to_numpy())
        self.L = np.nan_to_num(df.L.to_numpy())
        self.Y = np.nan_to_num(df.Y.to_numpy())
        self.zh = np.stack([(self.Z == 0), (self.Z == 1)], 1) * self.R[:, None]
        self.ah = np.stack([(self.A == 0), (self.A == 1)], 1) * self.R[:, None]
        self.adherent = (self.zh * self.ah).sum(1)
        self.XL = np.column_stack([self.X, self.L])  # (1, X, L)
        self.XT = np.column_stack([self.X, self.D])  # treatment model: X and trial dummies
        self.XLD = np.column_stack([self.XL, self.D])  # adherence model: X, L and trial dummies

    def arm(self, x, c):
        """[x, I(c=1)·x] for arm c, every row."""
        return np.column_stack([x, x * (1.0 if c == 1 else 0.0)])

    def observed(self, x):
        """[x, I(Z=1)·x] at the row's own arm."""
        return np.column_stack([x, x * self.zh[:, [1]]])


def _psi_blocks(d: Layout):
    """ψ of every block of the per-protocol stack, as functions of that block's θ and the θ of all blocks:
    {block name: (size, f(theta_by_block) -> (size, n))}, in an order where each reads only earlier ones."""
    k, kl = d.X.shape[1], d.XL.shape[1]
    X, XL = d.X, d.XL

    def glm(mask, y, design, link=lambda e: e):
        return lambda b: design.T * mask * (y - link(design @ b))

    blocks = {}
    blocks["participation"] = (k, lambda t: glm(np.ones(d.n), d.s0, X, expit)(t["participation"]))
    for j in (1, 2):
        m = np.maximum(d.s0, d.shot[:, j - 1])
        blocks[f"participation_s{j}"] = (k, lambda t, m=m, j=j: glm(m, d.s0, X, expit)(t[f"participation_s{j}"]))
    blocks["treatment"] = (k + 1, lambda t: glm(d.R, d.zh[:, 1], d.XT, expit)(t["treatment"]))
    for c in (0, 1):
        blocks[f"adherence_z{c}"] = (kl + 1, lambda t, c=c: glm(d.zh[:, c], d.ah[:, c], d.XLD, expit)(t[f"adherence_z{c}"]))

    def q1_trial(t, j, c):
        return d.arm(XL, c) @ t[f"pp_inner_s{j}"]

    def q2_trial(t, j, c):
        return d.arm(X, c) @ t[f"pp_outer_s{j}"]

    for j in (1, 2):
        rows = d.shot[:, j - 1]
        blocks[f"pp_inner_s{j}"] = (2 * kl, lambda t, j=j, rows=rows: glm(rows * d.adherent, d.Y, d.observed(XL))(t[f"pp_inner_s{j}"]))
        blocks[f"pp_outer_s{j}"] = (2 * k, lambda t, j=j, rows=rows: glm(rows, d.observed(XL) @ t[f"pp_inner_s{j}"],
                                                                           d.observed(X))(t[f"pp_outer_s{j}"]))
    inner_design = np.column_stack([d.observed(XL), d.D])
    outer_design = np.column_stack([d.observed(X), d.D])
    blocks["pp_inner_pooled"] = (2 * kl + 1, lambda t: glm(d.R * d.adherent, d.Y, inner_design)(t["pp_inner_pooled"]))
    blocks["pp_outer_pooled"] = (2 * k + 1, lambda t: glm(d.R, inner_design @ t["pp_inner_pooled"], outer_design)(
        t["pp_outer_pooled"]))

    def weights(t):
        e1 = expit(d.XT @ t["treatment"])
        itt = d.zh / np.stack([1 - e1, e1], 1)
        pa = np.stack([expit(d.XLD @ t[f"adherence_z{c}"]) for c in (0, 1)], 1)
        return itt, itt * d.ah / pa

    def trial_terms(t):
        itt, pp = weights(t)
        odds = np.stack([np.exp(X @ t[f"participation_s{j}"]) for j in (1, 2)], 1) * d.shot  # (n, m)
        q1 = np.stack([np.stack([q1_trial(t, j, c) for c in (0, 1)], 1) for j in (1, 2)], 1)  # (n, m, C)
        q2 = np.stack([np.stack([q2_trial(t, j, c) for c in (0, 1)], 1) for j in (1, 2)], 1)
        return odds[:, :, None] * itt[:, None, :], odds[:, :, None] * pp[:, None, :], q1, q2

    s0 = d.s0[:, None, None]
    Y = d.Y[:, None, None]
    blocks["outcome_trials"] = (4, lambda t: (s0 * (trial_terms(t)[3] - t["outcome_trials"].reshape(2, 2))).reshape(d.n, 4).T)
    blocks["weighting_trials"] = (4, lambda t: (trial_terms(t)[1] * (Y - t["weighting_trials"].reshape(2, 2))).reshape(d.n, 4).T)

    def dr_trials(t):
        w1, w2, q1, q2 = trial_terms(t)
        mu, r1, r2 = (t["dr_trials"][i * 4:(i + 1) * 4].reshape(2, 2) for i in range(3))
        return np.vstack([(s0 * (q2 + r1 + r2 - mu)).reshape(d.n, 4).T, (w1 * (q1 - q2 - r1)).reshape(d.n, 4).T,
                          (w2 * (Y - q1 - r2)).reshape(d.n, 4).T])

    blocks["dr_trials"] = (12, dr_trials)

    def pooled_terms(t):
        itt, pp = weights(t)
        odds = (d.R * np.exp(X @ t["participation"]))[:, None]
        bi, bo = t["pp_inner_pooled"], t["pp_outer_pooled"]
        q1 = np.stack([d.arm(XL, c) @ bi[:-1] + d.D[:, 0] * bi[-1] for c in (0, 1)], 1)  # own trial
        q2s = np.stack([d.arm(X, c) @ bo[:-1] + d.D[:, 0] * bo[-1] for c in (0, 1)], 1)
        q20 = np.stack([d.arm(X, c) @ bo[:-1] for c in (0, 1)], 1)  # target rows: trial effects at zero
        return odds * itt, odds * pp, q1, q2s, q20

    p0 = d.s0[:, None]
    blocks["outcome_pooled_mean"] = (2, lambda t: (p0 * (pooled_terms(t)[4] - t["outcome_pooled_mean"])).T)
    blocks["weighting_pooled"] = (2, lambda t: (pooled_terms(t)[1] * (d.Y[:, None] - t["weighting_pooled"])).T)

    def dr_pooled(t):
        w1, w2, q1, q2s, q20 = pooled_terms(t)
        mu, r1, r2 = (t["dr_pooled"][i * 2:(i + 1) * 2] for i in range(3))
        return np.vstack([(p0 * (q20 + r1 + r2 - mu)).T, (w1 * (q1 - q2s - r1)).T, (w2 * (d.Y[:, None] - q1 - r2)).T])

    blocks["dr_pooled"] = (6, dr_pooled)
    return blocks


def test_per_protocol_stack_agrees_with_delicatessen(small):
    """θ̂ of every block and the joint sandwich equal delicatessen's on the same equations, written in NumPy
    (delicatessen's own root finder from a perturbed start, its own exact derivatives)."""
    import delicatessen  # a test dependency: missing, the test fails (it was skipped)
    df, res = small
    blocks = _psi_blocks(Layout(df))
    order = sorted(res.fit.blocks, key=lambda b: res.fit.blocks[b].start)
    assert set(order) == set(blocks), set(order) ^ set(blocks)
    sizes = {b: blocks[b][0] for b in order}
    assert all(res.fit.blocks[b].stop - res.fit.blocks[b].start == sizes[b] for b in order)

    def psi(theta):
        theta = np.asarray(theta)
        t, pos = {}, 0
        for b in order:
            t[b] = theta[pos:pos + sizes[b]]
            pos += sizes[b]
        return np.vstack([blocks[b][1](t) for b in order])

    theta = np.asarray(res.fit.theta)
    assert np.abs(psi(theta).sum(1)).max() < 1e-8 * len(df)  # mestim's root solves the NumPy equations
    init = theta + 0.02 * np.random.default_rng(0).normal(size=theta.size)
    est = delicatessen.MEstimator(psi, init=list(init))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.estimate(solver="lm", maxiter=20000, tolerance=1e-12, deriv_method="exact")
    np.testing.assert_allclose(est.theta, theta, rtol=1e-6, atol=1e-9)
    vcov = np.asarray(res.fit.vcov)
    np.testing.assert_allclose(est.variance, vcov, rtol=1e-6, atol=1e-9 * np.abs(vcov).max())


def test_per_protocol_closed_forms(small):
    """Each regression by least squares / statsmodels, then the plug-in and the normalised weighted residuals."""
    df, res = small
    d = Layout(df)
    t0 = d.s0 > 0
    lstsq = lambda x, y: np.linalg.lstsq(x, y, rcond=None)[0]  # noqa: E731
    e1 = sm.Logit(d.zh[d.R > 0, 1], d.XT[d.R > 0]).fit(disp=0).predict(d.XT)
    itt = d.zh / np.stack([1 - e1, e1], 1)
    pa = np.column_stack([sm.Logit(d.ah[d.zh[:, c] > 0, c], d.XLD[d.zh[:, c] > 0]).fit(disp=0).predict(d.XLD)
                          for c in (0, 1)])
    pp = itt * d.ah / pa
    for j in (1, 2):
        rows = d.shot[:, j - 1] > 0
        keep = rows | t0
        odds = np.exp(d.X @ sm.Logit(d.s0[keep], d.X[keep]).fit(disp=0).params) * rows
        mus = {}
        for c in (0, 1):
            arm = rows & (d.zh[:, c] > 0)
            q1 = d.XL @ lstsq(d.XL[arm & (d.adherent > 0)], d.Y[arm & (d.adherent > 0)])  # inner, arm c, trial j
            beta2 = lstsq(d.X[arm], q1[arm])  # outer: regress the inner prediction on X among rows of arm c
            q2 = d.X @ beta2
            w1, w2 = odds * itt[:, c], odds * pp[:, c]
            plug = q2[t0].mean()
            mus[c] = (plug, plug + np.sum(w1 * (q1 - q2)) / w1.sum() + np.sum(w2 * (d.Y - q1)) / w2.sum(),
                      np.sum(w2 * d.Y) / w2.sum())
        for i, e in enumerate(("outcome", "dr", "weighting")):
            np.testing.assert_allclose(res.estimate(e, j).estimate, mus[1][i] - mus[0][i], rtol=1e-7)


def _pooled_closed_form(d: Layout, binary: bool):
    """Per arm c: (q1, q2 at the own trial, q2 at the target (trial effects 0), W, W^A) from statsmodels fits:
    inner regression on the adherent trial rows, outer regression of its prediction on all trial rows (binary:
    logistic, then fractional logistic without trial effects; continuous: least squares with trial intercepts)."""
    R = d.R > 0
    fam = sm.families.Binomial() if binary else sm.families.Gaussian()
    extra = [] if binary else [d.D]
    xin, xout = np.column_stack([d.observed(d.XL)] + extra), np.column_stack([d.observed(d.X)] + extra)
    inner = sm.GLM(d.Y[R & (d.adherent > 0)], xin[R & (d.adherent > 0)], family=fam).fit(tol=1e-13).params
    link = expit if binary else (lambda e: e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels notes the non-integer outcome of the fractional regression
        outer = sm.GLM(link(xin @ inner)[R], xout[R], family=fam).fit(tol=1e-13).params
    e1 = sm.Logit(d.zh[R, 1], d.XT[R]).fit(disp=0).predict(d.XT)
    itt = d.zh / np.stack([1 - e1, e1], 1)
    pa = np.column_stack([sm.Logit(d.ah[d.zh[:, c] > 0, c], d.XLD[d.zh[:, c] > 0]).fit(disp=0).predict(d.XLD)
                          for c in (0, 1)])
    odds = np.exp(d.X @ sm.Logit(d.s0, d.X).fit(disp=0).params) * d.R
    own = (lambda x: np.column_stack([x] + extra))
    out = {}
    for c in (0, 1):
        q1 = link(own(d.arm(d.XL, c)) @ inner)
        q2 = link(own(d.arm(d.X, c)) @ outer)
        q2_target = link(d.arm(d.X, c) @ outer[:2 * d.X.shape[1]])
        out[c] = (q1, q2, q2_target, odds * itt[:, c], odds * itt[:, c] * d.ah[:, c] / pa[:, c])
    return out


def test_per_protocol_pooled_binary_outcome_against_statsmodels():
    """0/1 outcome: logistic inner regression, fractional logistic outer one (statsmodels' binomial GLM, which
    accepts a fitted probability as outcome), no trial effects; pooled outcome-model and DR estimates, risk ratios."""
    sim = simulate_trials(n_trials=2, n_per_trial=[300, 300], n_target=400, seed=23, nonadherence=True, binary=True)
    res = _fit(sim.data, estimators=["outcome", "dr"], per_trial=False)
    assert "logistic" in res.settings["outcome_model"] and "fractional" in res.settings["outcome_model"]
    d = Layout(sim.data)
    t0 = d.s0 > 0
    mus = {}
    for c, (q1, q2, q20, w1, w2) in _pooled_closed_form(d, binary=True).items():
        plug = q20[t0].mean()
        mus[c] = (plug, plug + np.sum(w1 * (q1 - q2)) / w1.sum() + np.sum(w2 * (d.Y - q1)) / w2.sum())
    for i, e in enumerate(("outcome", "dr")):
        np.testing.assert_allclose(res.estimate(e).estimate, mus[1][i] - mus[0][i], rtol=1e-7)
        np.testing.assert_allclose(res.estimate(e, scale="risk ratio").estimate, mus[1][i] / mus[0][i], rtol=1e-7)


def test_per_protocol_unnormalised_dr_closed_form():
    """Unnormalised DR (continuous outcome, trial intercepts): μ_z = mean_{S=0} q2 + n0⁻¹ Σ [W (q1 − q2) + W^A (Y − q1)]."""
    sim = simulate_trials(n_trials=2, n_per_trial=[250, 250], n_target=300, seed=5, nonadherence=True)
    res = _fit(sim.data, estimators=["dr"], per_trial=False, weighting="unnormalized")
    assert res.fit.blocks["dr_pooled"].stop - res.fit.blocks["dr_pooled"].start == 2  # μ only: no residual means
    d = Layout(sim.data)
    t0 = d.s0 > 0
    mu = {c: q20[t0].mean() + (np.sum(w1 * (q1 - q2)) + np.sum(w2 * (d.Y - q1))) / t0.sum()
          for c, (q1, q2, q20, w1, w2) in _pooled_closed_form(d, binary=False).items()}
    np.testing.assert_allclose(res.estimate("dr").estimate, mu[1] - mu[0], rtol=1e-7)


def test_per_protocol_truth_recovered_on_large_data():
    """Large n, every working model correctly specified: the per-protocol estimators are unbiased for the known
    per-protocol effect (|bias| < 3 SE, SE small enough for the check to have power), while the naive
    adherers-only comparison is not."""
    sim = simulate_trials(n_trials=2, n_per_trial=2500, n_target=3000, seed=101, nonadherence=True)
    res = _fit(sim.data, covariates=["X1", "X2", "X3"], estimators=["unadjusted", "outcome", "dr"])
    truth = sim.true_effect
    for e, trials in (("outcome", ("1", "2", "pooled")), ("dr", ("1", "2", "pooled"))):
        for s in trials:
            row = res.estimate(e, s)
            assert abs(row.estimate - truth) < 3 * row.se, (e, s, row.estimate, truth, row.se)
            assert row.se < 0.12, (e, s, row.se)  # large n: the check has power
    naive = [res.estimate("unadjusted", s) for s in ("1", "2")]
    assert any(abs(r.estimate - truth) > 4 * r.se for r in naive)
    assert res.tests["cate_equality"]["1 vs 0"]["p_value"] > 0.001
    assert "C.5" in res.tests["cate_equality"]["1 vs 0"]["null"]
