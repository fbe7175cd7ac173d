"""GLM families and links (estimators.generalized_linear) against statsmodels GLM (HC0), delicatessen's ee_glm (exact
derivatives), MASS' published gamma shape, and autodiff for the closed-form Jacobian."""

import warnings

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import estimators as est
import mestim
from estimators.generalized_linear import FAMILIES, LINKS
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-6  # the README's promise (measured: ≤ 2.1e-8 θ, ≤ 3e-9 SE; statsmodels' IRLS stopping)
_L = sm.families.links
SM_LINKS = {"identity": _L.Identity, "log": _L.Log, "logit": _L.Logit, "probit": _L.Probit, "cloglog": _L.CLogLog,
            "loglog": _L.LogLog, "cauchit": _L.Cauchy, "inverse": _L.InversePower,
            "inverse_squared": _L.InverseSquared, "sqrt": _L.Sqrt}
NB_ALPHA = 0.7
SM_FAMILIES = {"gaussian": sm.families.Gaussian, "binomial": sm.families.Binomial, "poisson": sm.families.Poisson,
               "gamma": sm.families.Gamma, "inverse_gaussian": sm.families.InverseGaussian,
               "negative_binomial": lambda link: sm.families.NegativeBinomial(link=link, alpha=NB_ALPHA)}
PAIRS = [(f, lk) for f, fam in FAMILIES.items() for lk in fam.links]
CLOT_U = np.array([5, 10, 15, 20, 30, 40, 60, 80, 100.0])
CLOT_LOT1 = np.array([118, 58, 42, 35, 27, 25, 21, 19, 18.0])


def _simulate(family, link, n=400, seed=0):
    """Rows from the model itself: μ = g⁻¹(η) with η spanning g(μ_lo)..g(μ_hi) (so μ stays in a valid range for
    every link), frequency weights 1..3, a small offset, and a mask that drops a fifth of the rows (NaN outcome
    there)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(0, 1, n), rng.binomial(1, 0.4, n).astype(float)
    lo, hi = (0.15, 0.8) if family == "binomial" else (1.0, 3.0)
    g = LINKS[link].link
    eta = g(lo) + (g(hi) - g(lo)) * (0.6 * x1 + 0.4 * x2)
    mu = LINKS[link].inverse(eta, np)
    draw = {"gaussian": lambda: mu + rng.normal(0, 0.5, n), "binomial": lambda: (rng.random(n) < mu) * 1.0,
            "poisson": lambda: rng.poisson(mu) * 1.0, "gamma": lambda: rng.gamma(3.0, mu / 3.0),
            "inverse_gaussian": lambda: rng.wald(mu, 4.0),
            "negative_binomial": lambda: rng.negative_binomial(1 / NB_ALPHA, 1 / (1 + NB_ALPHA * mu)) * 1.0}
    df = pd.DataFrame({"x1": x1, "x2": x2, "y": draw[family](), "w": rng.integers(1, 4, n) * 1.0,
                       "off": rng.uniform(-0.05, 0.05, n), "keep": (rng.random(n) > 0.2) * 1.0})
    df.loc[df.keep == 0, "y"] = np.nan
    df.attrs["beta"] = np.array([g(lo), 0.6 * (g(hi) - g(lo)), 0.4 * (g(hi) - g(lo))])  # the true coefficients
    return df


def _statsmodels(df, family, link, **kw):
    sub = df[df.keep == 1]
    X = sm.add_constant(sub[["x1", "x2"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' DomainWarning for links it deems outside the family
        model = sm.GLM(sub.y, X, family=SM_FAMILIES[family](link=SM_LINKS[link]()), freq_weights=sub.w,
                       offset=sub.off, **kw)
        # started at the true β: statsmodels' own start (μ = (y + ȳ)/2) can leave the inverse-squared link's domain
        return model.fit(cov_type="HC0", tol=1e-14, maxiter=1000, start_params=df.attrs["beta"])


def _block(family, link, **kw):
    extra = {"gamma": {"shape": False}, "negative_binomial": {"alpha": NB_ALPHA}}.get(family, {})
    return est.glm("g", "y", ["x1", "x2"], family=family, link=link, offset="off", mask="keep", **extra, **kw)


@pytest.mark.parametrize("family,link", PAIRS)
def test_family_link_matches_statsmodels_hc0(family, link):
    """Every family–link pair, with frequency weights, an offset and a mask, against statsmodels GLM (HC0)."""
    df = _simulate(family, link)
    res = mestim.fit([_block(family, link)], df, weights="w")
    ref = _statsmodels(df, family, link)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, ref.bse.values, rtol=RTOL_SE)


def test_var_weights_match_statsmodels():
    """Prior weights multiply ψ (statsmodels' var_weights): a gamma–log and a grouped binomial (proportions)."""
    df = _simulate("gamma", "log", seed=4)
    df["v"] = np.random.default_rng(4).uniform(0.5, 2.0, len(df))
    res = mestim.fit([_block("gamma", "log", var_weights="v")], df, weights="w")
    ref = _statsmodels(df, "gamma", "log", var_weights=df[df.keep == 1].v)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, ref.bse.values, rtol=RTOL_SE)

    rng = np.random.default_rng(5)
    trials = rng.integers(1, 12, 300) * 1.0
    x = rng.normal(size=300)
    grouped = pd.DataFrame({"x": x, "n": trials, "p": rng.binomial(trials.astype(int), 1 / (1 + np.exp(-x))) / trials})
    res = mestim.fit([est.glm("b", "p", ["x"], family="binomial", link="probit", var_weights="n")], grouped)
    ref = sm.GLM(grouped.p, sm.add_constant(grouped.x), family=sm.families.Binomial(link=_L.Probit()),
                 var_weights=grouped.n).fit(cov_type="HC0", tol=1e-14)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, ref.bse.values, rtol=RTOL_SE)


@pytest.mark.parametrize("family,link", PAIRS + [("gamma-shape", "log"), ("gamma-shape", "inverse"),
                                                 ("nb-alpha", "log"), ("nb-alpha", "sqrt")])
def test_closed_form_jacobian_equals_autodiff(family, link):
    """chunk_sums' Σ w ∂ψ/∂θ (observed information, one GEMM) equals reverse-mode autodiff of ψ, away from θ̂ so
    that the (y − μ)·d(μ'/V)/dη term of non-canonical links counts."""
    from helpers import closed_form_and_autodiff

    base = {"gamma-shape": "gamma", "nb-alpha": "negative_binomial"}.get(family, family)
    df = _simulate(base, link, n=150, seed=2)
    kw = {"gamma-shape": {}, "nb-alpha": {}}.get(family)
    block = (est.glm("g", "y", ["x1", "x2"], family=base, link=link, offset="off", mask="keep") if kw is not None
             else _block(family, link))
    problem, closed, autodiff = closed_form_and_autodiff([block], df, perturb=0.05, weights="w")
    assert callable(problem.spec.blocks[0].psi.chunk_sums)
    np.testing.assert_allclose(closed.jac, autodiff.jac, rtol=1e-10, atol=1e-10 * np.abs(autodiff.jac).max())
    np.testing.assert_allclose(closed.psi, autodiff.psi, rtol=1e-12, atol=1e-12 * np.abs(autodiff.psi).max())


@pytest.mark.parametrize("name", list(LINKS))
def test_link_formulas(name):
    """dμ/dη equals autodiff of μ(η); 1 − μ equals the complement; g(g⁻¹(η)) = η; numpy and jax agree."""
    link = LINKS[name]
    eta = {"inverse": np.linspace(0.3, 3, 7), "inverse_squared": np.linspace(0.3, 3, 7),
           "sqrt": np.linspace(0.3, 3, 7)}.get(name, np.linspace(-3, 3, 7))
    jx = jnp.asarray(eta)
    np.testing.assert_allclose(link.derivative(jx, jnp), jax.vmap(jax.grad(lambda e: link.inverse(e, jnp)))(jx),
                               rtol=1e-13)
    np.testing.assert_allclose(link.complement(eta, np), 1 - link.inverse(eta, np), rtol=1e-12, atol=1e-15)
    # (1e-8: at η = 3 the cloglog mean is 1 − 4e-9, whose rounding g magnifies)
    np.testing.assert_allclose(link.link(link.inverse(eta, np)), eta, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(link.inverse(jx, jnp), link.inverse(eta, np), rtol=1e-14)


# ------------------------------------------------------------------------------------- stacked extra parameters
def _delicatessen_glm(X, y, distribution, link, init, weights=None):
    from delicatessen import MEstimator
    from delicatessen.estimating_equations import ee_glm

    ref = MEstimator(lambda theta: ee_glm(theta, X=X, y=y, distribution=distribution, link=link, weights=weights),
                     init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=500)
    return ref.theta, np.sqrt(np.diag(ref.variance))


def test_clotting_gamma_shape_matches_mass_and_delicatessen():
    """delicatessen's clotting case: lot1 ~ log(u), gamma with log link; MASS::gamma.shape gives 55.51389. The
    registered block's data-based start converges with the current solver."""
    d = {"log_u": np.log(CLOT_U), "lot1": CLOT_LOT1}
    res = mestim.fit([est.glm("clot", "lot1", ["log_u"], family="gamma", link="log")], d)
    assert res.labels == ("(Intercept)", "log_u", "log(shape)")
    assert np.exp(res.theta[2]) == pytest.approx(55.51389, rel=2e-7)  # MASS prints 7 significant digits
    X = np.column_stack([np.ones(9), np.log(CLOT_U)])
    theta, se = _delicatessen_glm(X, CLOT_LOT1, "gamma", "log", init=res.theta)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def _clotting_user_psi(theta, row):
    """The same model as a user writes it (delicatessen's ee_glm as one row): quasi-score and the shape score."""
    mu = jnp.exp(theta[0] + theta[1] * row["log_u"])
    y, alpha = row["lot1"], jnp.exp(theta[2])
    x = jnp.array([1.0, row["log_u"]])
    return jnp.append((y - mu) / mu * x, 1 - y / mu + jnp.log(alpha * y / mu) - jsp.digamma(alpha))


def test_clotting_from_delicatessen_start():
    """From delicatessen's start [0, 0, 1] Newton alone fails (log α runs off to ≈ 600); Levenberg–Marquardt
    takes over and converges."""
    res = mestim.fit(_clotting_user_psi, {"log_u": np.log(CLOT_U), "lot1": CLOT_LOT1}, init=[0.0, 0.0, 1.0])
    assert np.exp(res.theta[2]) == pytest.approx(55.51389, rel=2e-7)


@pytest.mark.parametrize("link", ["log", "inverse", "identity"])
def test_gamma_shape_matches_delicatessen_with_weights(link):
    df = _simulate("gamma", link, seed=7)
    res = mestim.fit([est.glm("g", "y", ["x1", "x2"], family="gamma", link=link, mask="keep", offset="off")], df,
                     weights="w")
    sub = df[df.keep == 1]
    X = np.column_stack([np.ones(len(sub)), sub.x1, sub.x2])
    theta, se = _delicatessen_glm(X, sub.y.values, "gamma", link, res.theta, weights=sub.w.values)
    # delicatessen's weights act inside ψ (meat Σ w²ψψᵀ): mestim's sampling weights
    res_s = mestim.fit([est.glm("g", "y", ["x1", "x2"], family="gamma", link=link, mask="keep")], df, weights="w",
                       weight_type="sampling")
    np.testing.assert_allclose(res_s.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res_s.se, se, rtol=RTOL_SE)
    # β̂ equals statsmodels' (the shape does not enter ψ_β)
    ref = _statsmodels(df, "gamma", link)
    np.testing.assert_allclose(res.theta[:3], ref.params.values, rtol=RTOL_THETA)


def test_negative_binomial_dispersion_matches_statsmodels_mle_and_delicatessen():
    """NB2 with α estimated: β̂ and α̂ equal statsmodels' NegativeBinomial MLE; the sandwich equals statsmodels' HC0
    (α's SE by the exact reparametrisation SE(log α) = SE(α)/α) and delicatessen's exact-derivative ee_glm."""
    df = _simulate("negative_binomial", "log", n=500, seed=11)
    df = df[df.keep == 1].reset_index(drop=True)
    res = mestim.fit([est.glm("nb", "y", ["x1", "x2"], family="negative_binomial", offset="off")], df)
    assert res.labels[-1] == "log(alpha)"
    X = sm.add_constant(df[["x1", "x2"]])
    ref = sm.NegativeBinomial(df.y, X, loglike_method="nb2", offset=df.off).fit(
        method="newton", tol=1e-14, maxiter=200, disp=0, cov_type="HC0")
    alpha = np.exp(res.theta[-1])
    np.testing.assert_allclose(np.r_[res.theta[:-1], alpha], ref.params.values, rtol=RTOL_THETA)
    np.testing.assert_allclose(np.r_[res.se[:-1], res.se[-1] * alpha], ref.bse.values, rtol=RTOL_SE)
    theta, se = _delicatessen_glm_offset(X.values, df.y.values, df.off.values, res.theta)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def _delicatessen_glm_offset(X, y, offset, init):
    from delicatessen import MEstimator
    from delicatessen.estimating_equations import ee_glm

    ref = MEstimator(lambda theta: ee_glm(theta, X=X, y=y, distribution="nb", link="log", offset=offset),
                     init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=500)
    return ref.theta, np.sqrt(np.diag(ref.variance))


def test_negative_binomial_frequency_weights_equal_expanded_rows():
    df = _simulate("negative_binomial", "log", n=200, seed=12)
    df = df[df.keep == 1].reset_index(drop=True)
    expanded = df.loc[df.index.repeat(df.w.astype(int))].reset_index(drop=True)
    block = est.glm("nb", "y", ["x1", "x2"], family="negative_binomial")
    a, b = mestim.fit([block], df, weights="w"), mestim.fit([block], expanded)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=1e-8)


def test_negative_binomial_without_overdispersion_is_not_silent():
    """Underdispersed counts (binomial): α̂ → 0, the boundary. The fit either stops with an error naming log(alpha)
    or warns that α̂ is at the boundary; it never returns a regular-looking SE."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 3000)
    d = {"x": x, "y": rng.binomial(10, 0.15 * np.exp(0.5 * x)) * 1.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mestim.fit([est.glm("nb", "y", ["x"], family="negative_binomial")], d)
        except mestim.ConvergenceError as e:
            assert "log(alpha)" in str(e)
            return
    assert any("boundary 0" in str(w.message) for w in caught)


# ------------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("kwargs,match", [
    ({"family": "gama"}, r"family='gama': use one of \['gaussian', 'binomial'"),
    ({"family": "binomial", "link": "inverse"}, r"link='inverse' is not available for the binomial family: use one of"),
    ({"family": "poisson", "alpha": 1.0}, "alpha= is the negative binomial dispersion"),
    ({"family": "negative_binomial", "alpha": -1.0}, "must be a positive number"),
    ({"family": "poisson", "shape": True}, "shape= is the gamma shape"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(SpecificationError, match=match):
        est.glm("g", "y", ["x"], **kwargs)


@pytest.mark.parametrize("family,y,match", [
    ("gamma", [1.0, 0.0, 2.0, 3.0], r"gamma model, whose outcome must be positive, but 'y' has 1 value\(s\) ≤ 0 "
                                    r"\(first at row 1\)"),
    ("inverse_gaussian", [1.0, -2.0, 2.0, 3.0], "inverse gaussian model, whose outcome must be positive"),
    ("negative_binomial", [1.0, -2.0, 2.0, 3.0], "negative binomial model but 'y' has negative values"),
])
def test_outcome_outside_the_family_is_refused(family, y, match):
    d = {"x": np.arange(4.0), "y": np.array(y)}
    with pytest.raises(DataError, match=match):
        mestim.fit([est.glm("g", "y", ["x"], family=family, link="log")], d)


def test_binomial_proportions_need_trials():
    d = {"x": np.arange(4.0), "y": np.array([0.0, 0.5, 1.0, 0.25])}
    with pytest.raises(DataError, match=r"binomial \(probit link\) model but 'y' takes values \[0.25, 0.5\] outside "
                                        r"0/1 \(or proportions in \[0, 1\] with var_weights = trials\)"):
        mestim.fit([est.glm("g", "y", ["x"], family="binomial", link="probit")], d)
