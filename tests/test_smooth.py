"""Smoothed non-smooth estimating functions (``Block(..., smooth=h)``, :mod:`mestim.smooth`).

References: numpy's quantiles and the median of the Walsh averages (θ̂), delicatessen's positive mean deviation
(θ̂), and the closed-form asymptotic variances of the sample quantile q(1−q)/(n f(θ)²), of the positive mean
deviation and of Hodges–Lehmann (π/(3n) for normal data). The smoothed estimator differs from these by the
errors stated in docs/nonsmooth.md, and each test checks exactly that error:

- θ̂_h = θ̂ + (θ_h − θ) + O_p(√(h/n)): θ_h is the root of the population's smoothed equation (−h²f'/(2f) to
  first order), the O_p term the SD of the difference of the two estimators' linearisations;
- SE_h² = Var G / (n f̂_h(θ̂_h)²), G = Φ((θ_h − Y)/h): the bread is the Gaussian kernel density estimate f̂_h,
  with relative SD √(1/(2√π n h f)); to first order Var G = q(1−q) − h f/√π and
  f_h(θ_h) = f + (h²/2)(f'' − f'²/f), so SE_h differs from the closed form by those terms and no more.

Population quantities at bandwidth h (θ_h, f_h(θ_h), Var G) are computed by numerical integration, so the
tolerances are the sampling noise alone (3.5 SD at n = 2·10⁶: about 1% relative for the SE).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.integrate import quad
from scipy.optimize import brentq

import mestim
from mestim.errors import DataError, SpecificationError
from mestim.pure import coverage, fit_function, prepare_columns, stack_columns

Phi, phi = stats.norm.cdf, stats.norm.pdf


def quantile_psi(q):
    return lambda t, row: jnp.atleast_1d(q - (row["y"] <= t[0]))


def median_block(smooth, init=0.0, name="median"):
    return mestim.Block(name, quantile_psi(0.5), init=[init], smooth=smooth)


def expect(g, dist, at):
    """E g(Y) under ``dist`` by adaptive quadrature (``at``: where g is steep)."""
    lo, hi = max(dist.support()[0], dist.ppf(1e-13)), min(dist.support()[1], dist.ppf(1 - 1e-13))
    return quad(lambda y: g(y) * dist.pdf(y), lo, hi, points=[at], limit=500, epsabs=1e-14, epsrel=1e-12)[0]


def smoothed_quantile(q, h, dist):
    """Population (θ_h, f_h(θ_h), Var G) of the smoothed equation E[q − Φ((θ − Y)/h)] = 0."""
    theta = dist.ppf(q)
    root = brentq(lambda t: expect(lambda y: Phi((t - y) / h), dist, theta) - q, theta - 5 * h - 1,
                  theta + 5 * h + 1, xtol=1e-14)
    density = expect(lambda y: phi((root - y) / h) / h, dist, root)
    var_g = expect(lambda y: Phi((root - y) / h) ** 2, dist, root) - q ** 2
    return root, density, var_g


# ---------------------------------------------------------------------------------------------- exact identities
def test_bread_is_the_kernel_density_estimate_and_the_root_solves_the_smoothed_equation():
    y = np.random.default_rng(1).standard_t(5, size=3000)
    h = 0.2
    res = mestim.fit(mestim.Block("q", quantile_psi(0.3), init=[0.0], smooth=h), {"y": y})
    t = res.theta[0]
    assert abs(np.sum(0.3 - Phi((t - y) / h))) < 1e-9  # Σ (q − Φ((θ̂ − y)/h)) = 0
    np.testing.assert_allclose(res.bread[0, 0], np.sum(phi((t - y) / h) / h), rtol=1e-10)  # n·f̂_h(θ̂)
    np.testing.assert_allclose(res.meat[0, 0], np.sum((0.3 - Phi((t - y) / h)) ** 2), rtol=1e-10)
    assert res.converged
    assert any("h = 0.2 (smooth=h)" in n for n in res.notes)


def test_an_indicator_written_five_ways_gives_one_fit():
    y = np.random.default_rng(2).exponential(size=500)
    forms = {
        "y <= t": lambda t, r: 0.25 - (r["y"] <= t[0]),
        "where": lambda t, r: 0.25 - jnp.where(r["y"] <= t[0], 1.0, 0.0),
        "where, integers": lambda t, r: 0.25 - jnp.where(r["y"] <= t[0], 1, 0),
        "heaviside": lambda t, r: 0.25 - jnp.heaviside(t[0] - r["y"], 1.0),
        "not >": lambda t, r: -0.75 + (~(r["y"] > t[0])).astype(float) * -1.0 + 1.0,
    }
    fits = {k: mestim.fit(mestim.Block("q", lambda t, r, f=f: jnp.atleast_1d(f(t, r)), init=[0.3], smooth=0.1),
                          {"y": y}) for k, f in forms.items()}
    first = fits["y <= t"]
    for k, res in fits.items():
        np.testing.assert_allclose(res.theta, first.theta, rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(res.se, first.se, rtol=1e-10, err_msg=k)


def test_parts_without_indicators_in_theta_are_unchanged():
    """A θ-free comparison (a subgroup) stays exact; smooth parts of the same block are untouched."""
    rng = np.random.default_rng(3)
    d = {"y": rng.normal(size=800), "g": (rng.random(800) < 0.4).astype(float)}

    def psi(t, r):
        return jnp.array([r["y"] - t[0], jnp.where(r["g"] > 0.5, r["y"] - t[1], 0.0), 0.5 - (r["y"] <= t[2])])

    res = mestim.fit(mestim.Block("b", psi, init=[0.0, 0.0, 0.0], smooth=0.15), d)
    plain = mestim.fit(mestim.Block("b", lambda t, r: psi(t, r)[:2], init=[0.0, 0.0]), d)
    np.testing.assert_allclose(res.theta[:2], [d["y"].mean(), d["y"][d["g"] > 0.5].mean()], rtol=1e-12)
    np.testing.assert_allclose(res.se[:2], plain.se, rtol=1e-12)
    assert abs(res.theta[2] - np.median(d["y"])) < 0.3 * res.se[2]  # O_p(√(h/n)) = 0.1 SE here


# ---------------------------------------------------------------------------------------------- quantiles
@pytest.mark.parametrize("name, dist, second", [
    ("normal", stats.norm(), lambda t, f: (t * t - 1) * f),  # f''
    ("exponential", stats.expon(), lambda t, f: f),
])
def test_quantiles_against_numpy_and_the_closed_form_variance(name, dist, second):
    """q = 0.25, 0.5, 0.9 at n = 2·10⁶, each with the h that makes f̂_h's relative SD 0.3%."""
    n, rel = 2_000_000, 0.003
    y = dist.rvs(size=n, random_state=np.random.default_rng(12))
    qs = (0.25, 0.5, 0.9)
    hs = [float(f"{1 / (2 * np.sqrt(np.pi) * n * dist.pdf(dist.ppf(q)) * rel ** 2):.2g}") for q in qs]
    blocks = [mestim.Block(f"q{int(100 * q)}", quantile_psi(q), init=[float(np.quantile(y, q))], smooth=h)
              for q, h in zip(qs, hs)]
    res = mestim.fit(blocks, {"y": y})
    for i, (q, h) in enumerate(zip(qs, hs)):
        theta = dist.ppf(q)
        f, f1 = dist.pdf(theta), (-theta * dist.pdf(theta) if name == "normal" else -dist.pdf(theta))
        root, f_h, var_g = smoothed_quantile(q, h, dist)
        # θ̂_h − np.quantile = θ_h − θ (≈ −h²f'/(2f)) + the difference of the linearisations (SD below) + O(1/n)
        assert abs((root - theta) - (-h * h * f1 / (2 * f))) < 0.05 * abs(root - theta) + 1e-12
        var_diff = expect(lambda v: (Phi((root - v) / h) / f_h - (v <= theta) / f) ** 2, dist, root) \
            - (q / f_h - q / f) ** 2
        shifted = np.quantile(y, q) + (root - theta)
        assert abs(res.theta[i] - shifted) < 4 * np.sqrt(var_diff / n) + 2 * n ** -0.75 / f, (q, res.theta[i])
        # SE: Var G / (n f_h²) up to f̂_h's noise, relative SD √(1/(2√π n h f))
        se_h = np.sqrt(var_g / n) / f_h
        noise = np.sqrt(1 / (2 * np.sqrt(np.pi) * n * h * f_h))
        assert abs(res.se[i] / se_h - 1) < 3.5 * noise + 1e-3, (q, res.se[i], se_h)
        # the closed form q(1−q)/(n f²), and the first-order terms that separate it from SE_h
        closed = np.sqrt(q * (1 - q) / n) / f
        first = np.sqrt((q * (1 - q) - h * f / np.sqrt(np.pi)) / n) / (f + h * h / 2 * (second(theta, f) - f1 ** 2 / f))
        assert abs(first / se_h - 1) < 0.1 * abs(se_h / closed - 1), (q, first, se_h, closed)
        assert abs(res.se[i] / closed - 1) < abs(se_h / closed - 1) + 3.5 * noise + 1e-3


def test_default_bandwidth_rule_and_its_note():
    rng = np.random.default_rng(4)
    y = rng.lognormal(size=1000)
    mask = rng.random(1000) < 0.6
    res = mestim.fit(mestim.Block("m", quantile_psi(0.5), init=[1.0], smooth="auto", mask=mask), {"y": y})
    d = y[mask] - 1.0
    scale = min(np.std(d, ddof=1), np.subtract(*np.percentile(d, [75, 25])) / 1.34)
    h = float(f"{scale * mask.sum() ** (-1 / 3):.2g}")
    assert any(f"h = {h:.3g} (smooth='auto'" in n and f"n = {mask.sum()}" in n for n in res.notes), res.notes
    again = mestim.fit(mestim.Block("m", quantile_psi(0.5), init=[1.0], smooth=h, mask=mask), {"y": y})
    np.testing.assert_allclose(res.theta, again.theta, rtol=1e-12)
    np.testing.assert_allclose(res.se, again.se, rtol=1e-12)


def test_refits_reuse_compiled_programs():
    """Equal options on the same ψ give an equal (hashable) smoothed ψ: a refit compiles nothing."""
    rng = np.random.default_rng(5)
    psi = quantile_psi(0.5)
    mestim.fit(mestim.Block("median", psi, init=[0.0], smooth=0.2), {"y": rng.normal(size=300)})
    with mestim.compilations() as count:
        mestim.fit(mestim.Block("median", psi, init=[0.0], smooth=0.2), {"y": rng.normal(size=300)})
    assert count.programs == 0
    y = rng.normal(size=300)
    mestim.fit(mestim.Block("median", psi, init=[0.0], smooth="auto"), {"y": y})
    with mestim.compilations() as count:
        mestim.fit(mestim.Block("median", psi, init=[0.0], smooth="auto"), {"y": y})
    assert count.programs == 0


# ---------------------------------------------------------------------------------------------- other estimators
def test_positive_mean_deviation_against_delicatessen_and_the_closed_form():
    """delicatessen's ee_positive_mean_deviation (θ = (PMD, median)) at n = 10⁶, normal data, h = 0.04."""
    from delicatessen import MEstimator
    from delicatessen.estimating_equations import ee_positive_mean_deviation

    n, h = 1_000_000, 0.04
    y = np.random.default_rng(7).normal(size=n)

    def psi(t, r):
        return jnp.array([2 * (r["y"] - t[1]) * (r["y"] > t[1]) - t[0], 0.5 - (r["y"] <= t[1])])

    res = mestim.fit(mestim.Block("pmd", psi, init=[0.8, 0.0], smooth=h), {"y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deli = MEstimator(lambda theta: ee_positive_mean_deviation(theta, y), init=[0.8, 0.0])
        deli.estimate(solver="hybr", dx=1e-3, tolerance=1e-9)
    m = np.median(y)
    np.testing.assert_allclose(deli.theta, [np.mean(2 * (y - m) * (y > m)), m], atol=1e-5)
    # population values of the smoothed stack (normal: median_h = 0, PMD_h = √(2/π)/√(1 + h²))
    dist = stats.norm()
    pmd_h = np.sqrt(2 / np.pi) / np.sqrt(1 + h * h)
    f_h = phi(0, scale=np.sqrt(1 + h * h))
    psi0 = lambda v: 2 * v * Phi(v / h) - pmd_h  # noqa: E731
    psi1 = lambda v: 0.5 - Phi(-v / h)  # noqa: E731
    a01 = expect(lambda v: 2 * Phi(v / h) + 2 * v / h * phi(v / h), dist, 0.0)
    meat = np.array([[expect(lambda v: psi0(v) ** 2, dist, 0), expect(lambda v: psi0(v) * psi1(v), dist, 0)],
                     [0, expect(lambda v: psi1(v) ** 2, dist, 0)]])
    meat[1, 0] = meat[0, 1]

    def se(density):
        inv = np.linalg.inv(np.array([[1.0, a01], [0.0, density]]))
        return np.sqrt(np.diag(inv @ meat @ inv.T) / n)

    # θ̂: delicatessen's (the unsmoothed sample values) moved by θ_h − θ (−√(2/π)h²/2 for the PMD), within the
    # SD of the difference of the two estimators' linearisations (4 SD)
    sd_median = np.sqrt(expect(lambda v: (Phi(v / h) - (v > 0)) ** 2, dist, 0) / n) / f_h
    sd_pmd = np.sqrt(expect(lambda v: (2 * v * (Phi(v / h) - (v > 0))) ** 2, dist, 0) / n) + sd_median
    assert abs(res.theta[1] - deli.theta[1]) < 4 * sd_median
    assert abs(res.theta[0] - (deli.theta[0] + pmd_h - np.sqrt(2 / np.pi))) < 4 * sd_pmd
    assert abs(pmd_h - np.sqrt(2 / np.pi)) > 4 * sd_pmd  # the shift is visible: the test can tell
    # SE: the smoothed sandwich, up to f̂_h's noise (3.5 SD), and the closed form (h = 0) within that plus h's terms
    noise = np.sqrt(1 / (2 * np.sqrt(np.pi) * n * h * f_h))
    band = np.sort(np.stack([se(f_h * (1 - 3.5 * noise)), se(f_h * (1 + 3.5 * noise))]), axis=0)
    assert np.all((res.se > band[0] * (1 - 1e-3)) & (res.se < band[1] * (1 + 1e-3))), (res.se, band)
    f0 = phi(0)
    inv0 = np.linalg.inv(np.array([[1.0, 1.0], [0.0, f0]]))
    meat0 = np.array([[2 - 2 / np.pi, 1 / np.sqrt(2 * np.pi)], [1 / np.sqrt(2 * np.pi), 0.25]])
    closed = np.sqrt(np.diag(inv0 @ meat0 @ inv0.T) / n)  # (√(0.934/n), √(π/(2n)))
    assert np.all(np.abs(res.se / closed - 1) < np.abs(se(f_h) / closed - 1) + 3.5 * noise + 1e-3)


def test_positive_mean_deviation_as_two_blocks_reading_the_smoothed_median():
    """The PMD in its own (smooth) block reading the smoothed median: its ψ is exact, its bread entry for the
    median is −2·mean 1{y > m̂} by autodiff."""
    y = np.random.default_rng(8).normal(size=4000)
    stack = [median_block(0.1),
             mestim.Block("pmd", lambda t, r, median: jnp.atleast_1d(2 * jnp.maximum(r["y"] - median[0], 0) - t[0]),
                          init=[0.8], reads=("median",))]
    res = mestim.fit(stack, {"y": y})
    m = res.theta[0]
    np.testing.assert_allclose(res.theta[1], np.mean(2 * np.maximum(y - m, 0)), rtol=1e-12)
    np.testing.assert_allclose(res.bread[1, 0], 2 * np.sum(y > m), rtol=1e-12)
    assert sum("smoothed" in n for n in res.notes) == 1  # only the median block says so


def test_hodges_lehmann_sign_form_and_the_hajek_factor():
    """ψ_i = (1/n) Σ_j sign(x_i + x_j − 2θ) closes over the data. As written it is half the Hájek projection of
    the U-statistic, so its SE is half the right one; ψ_i = 2·a_i(θ) − ā(θ) (ā the mean of a_i over all pairs,
    computed once per chunk under vmap) solves the same equation with the projection's meat."""
    n = 1500
    x = np.random.default_rng(9).normal(size=n)
    data = jnp.asarray(x)

    def pairs(t, r):
        return jnp.mean(jnp.sign(r["x"] + data - 2 * t[0]))

    def hajek(t, r):
        return jnp.atleast_1d(2 * pairs(t, r) - jnp.mean(jnp.sign(data[:, None] + data[None, :] - 2 * t[0])))

    naive = mestim.fit(mestim.Block("hl", lambda t, r: jnp.atleast_1d(pairs(t, r)), init=[0.0], smooth="auto"),
                       {"x": x})
    res = mestim.fit(mestim.Block("hl", hajek, init=[0.0], smooth="auto"), {"x": x})
    walsh = (x[:, None] + x[None, :])[np.triu_indices(n)] / 2
    np.testing.assert_allclose(res.theta, naive.theta, rtol=1e-10)
    np.testing.assert_allclose(naive.se / res.se, 0.5, rtol=1e-8)
    assert abs(res.theta[0] - np.median(walsh)) < 0.04 * res.se[0]
    # normal data: Var = (2 + h²)·arcsin(1/(2 + h²))/n at bandwidth h, π/(3n) at h = 0; noise ≈ 1% at n = 1500
    h = float(res.notes[0].split("h = ")[1].split(",")[0])
    se_h = np.sqrt((2 + h * h) * np.arcsin(1 / (2 + h * h)) / n)
    assert abs(res.se[0] / se_h - 1) < 0.04
    assert abs(res.se[0] / np.sqrt(np.pi / (3 * n)) - 1) < abs(se_h / np.sqrt(np.pi / (3 * n)) - 1) + 0.04


def test_quantile_regression_against_statsmodels_and_the_asymptotic_variance():
    """ψ = x(q − 1{y ≤ xᵀβ}) smoothed gives Powell's kernel sandwich. y = 1 + 2x + (1 + x/2)ε, x ~ U(0, 2),
    ε ~ N(0, 1): the q-quantile is linear in x, β_q = (1 + z_q, 2 + z_q/2), and the asymptotic covariance is
    q(1−q) D₁⁻¹ E[xxᵀ] D₁⁻¹ / n with D₁ = E[f(ξ_q|x) xxᵀ], f(ξ_q|x) = φ(z_q)/(1 + x/2). statsmodels' QuantReg
    solves the unsmoothed problem by linear programming; the two differ by O_p(√(h/n)), with SD
    √((√2 − 1)/√π · f h/(q(1−q))) ≈ 0.13 SE here (4 SD: half an SE). The SE is within its stated error of the
    asymptotic one: the meat term h f/√π (≈ −3% in variance) and f̂_h's relative noise √(1/(2√π n h f)) ≈ 3%
    (3.5 SD)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    n, q = 20_000, 0.7
    x = rng.uniform(0, 2, size=n)
    y = 1 + 2 * x + rng.normal(size=n) * (1 + 0.5 * x)

    def psi(b, r):
        design = jnp.array([1.0, r["x"]])
        return design * (q - (r["y"] <= design @ b))

    res = mestim.fit(mestim.Block("qr", psi, init=[1.0, 2.0], smooth="auto"), {"x": x, "y": y})
    ref = sm.QuantReg(y, sm.add_constant(x)).fit(q=q)
    assert np.all(np.abs(res.theta - ref.params) < 0.5 * res.se), (res.theta, ref.params)
    z = stats.norm.ppf(q)
    mean_u = lambda g: quad(lambda v: g(v) / 2, 0, 2)[0]  # noqa: E731  E over x ~ U(0, 2)
    second = np.array([[1.0, 1.0], [1.0, mean_u(lambda v: v * v)]])
    d1 = phi(z) * np.array([[mean_u(lambda v: 1 / (1 + v / 2)), mean_u(lambda v: v / (1 + v / 2))],
                            [mean_u(lambda v: v / (1 + v / 2)), mean_u(lambda v: v * v / (1 + v / 2))]])
    inv = np.linalg.inv(d1)
    se = np.sqrt(np.diag(inv @ second @ inv) * q * (1 - q) / n)
    assert np.all(np.abs(res.theta - [1 + z, 2 + z / 2]) < 3.5 * se)
    h = float(res.notes[0].split("h = ")[1].split(" ")[0])
    f = phi(z) / 1.5  # the conditional density at the quantile, at the middle of x's range
    noise = np.sqrt(1 / (2 * np.sqrt(np.pi) * n * h * f))
    np.testing.assert_allclose(res.se, se, rtol=h * f / np.sqrt(np.pi) / (q * (1 - q)) / 2 + 3.5 * noise)


# ---------------------------------------------------------------------------------------------- composition
def test_vmapped_pure_fit_and_a_stacked_block_match_fit():
    rng = np.random.default_rng(10)
    stack = [median_block(0.15),
             mestim.Block("mad", lambda t, r, median: jnp.atleast_1d(jnp.abs(r["y"] - median[0]) - t[0]),
                          init=[0.7], reads=("median",))]
    tables = [{"y": rng.normal(size=250)} for _ in range(4)]
    _, f, problem = fit_function(stack, tables[0])
    out = jax.jit(jax.vmap(lambda c: f(c, jnp.ones(250))))(stack_columns([prepare_columns(problem, t)
                                                                           for t in tables]))
    assert np.all(np.asarray(out.converged))
    for i, table in enumerate(tables):
        res = mestim.fit(stack, table)
        np.testing.assert_allclose(np.asarray(out.theta[i]), res.theta, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out.vcov[i]), res.vcov, rtol=1e-7, atol=1e-14)


def test_coverage_of_the_median_quick():
    """1000 replicates at n = 200 (normal and exponential; the 2000-replicate run is benchmarks/coverage.py)."""
    n, reps = 200, 1000
    for draw, truth in [(lambda g: g.normal(size=(reps, n)), 0.0), (lambda g: g.exponential(size=(reps, n)),
                                                                    np.log(2))]:
        ys = draw(np.random.default_rng(2026))
        _, f, problem = fit_function(median_block("auto", init=0.5), {"y": ys[0]})
        out = jax.jit(jax.vmap(lambda y: f({"y": y}, jnp.ones(n))))(ys)
        assert np.all(np.asarray(out.converged))
        cov = coverage(np.asarray(out.theta), np.asarray(out.vcov), np.array([truth]))[0]
        assert 0.93 <= cov <= 0.97, cov  # ±3 Monte Carlo SE (0.7 points) around 95%


# ---------------------------------------------------------------------------------------------- errors
Y = {"y": np.linspace(-2, 2, 101), "g": np.arange(101) % 2.0}


@pytest.mark.parametrize("psi, smooth, error, words", [
    (quantile_psi(0.5), -1.0, SpecificationError, "positive number h"),
    (quantile_psi(0.5), 0, SpecificationError, "positive number h"),
    (quantile_psi(0.5), True, SpecificationError, "not a bandwidth"),
    (quantile_psi(0.5), "Auto", SpecificationError, "use 'auto'"),
    (quantile_psi(0.5), (0.1, 0.2), SpecificationError, "gives 2 bandwidths but ψ smooths 1"),
    (lambda t, r: jnp.atleast_1d(r["y"] - t[0]), 0.1, SpecificationError, "nothing to smooth"),
    (lambda t, r: jnp.atleast_1d(r["y"] - t[0]), "auto", SpecificationError, "nothing to smooth"),
    (lambda t, r: jnp.atleast_1d(jnp.where(r["g"] > 0.5, r["y"] - t[0], 0.0)), 0.1, SpecificationError,
     "nothing to smooth"),
    (lambda t, r: jnp.atleast_1d(0.5 - ((r["y"] <= t[0]) & (r["y"] > -5)) * 1.0), 0.1, SpecificationError,
     "(y <= b) * 1.0 - (y <= a) * 1.0"),
    (lambda t, r: jnp.atleast_1d(0.5 - jnp.sum(jnp.stack([r["y"], r["y"]]) <= t[0]) / 2), 0.1,
     SpecificationError, "as an integer"),
    (lambda t, r: jnp.atleast_1d(jax.lax.fori_loop(0, 2, lambda i, c: c + 0.5 - (r["y"] <= t[0]), 0.0)), 0.1,
     SpecificationError, "loop or conditional"),
    (lambda t, r: jnp.atleast_1d(jax.lax.cond(r["y"] <= t[0], lambda: -0.5, lambda: 0.5)), 0.1,
     SpecificationError, "jax's cond"),
    (lambda t, r: jnp.atleast_1d(0.5 - (r["z"] <= t[0])), "auto", DataError, "column 'z'"),
    (lambda t, r: jnp.atleast_1d(0.5 - (r["y"] <= t[0]) + 0.0 * (t[0] > 1)), "auto", SpecificationError,
     "does not vary over the rows"),
])
def test_clear_errors(psi, smooth, error, words):
    with pytest.raises(error) as info:
        mestim.fit(mestim.Block("b", psi, init=[0.0], smooth=smooth), Y)
    assert words in str(info.value), str(info.value)
    assert "'b'" in str(info.value)


def test_auto_refuses_starting_values_where_the_smoothed_psi_is_flat():
    far = mestim.Block("m", quantile_psi(0.5), init=[50.0], smooth="auto")
    with pytest.raises(SpecificationError, match="start θ inside the data"):
        mestim.fit(far, Y)


def test_auto_needs_the_blocks_it_reads_first():
    later = mestim.Block("resid", lambda t, r, loc: jnp.atleast_1d(0.5 - (r["y"] - loc[0] <= t[0])), init=[0.0],
                         reads=("loc",), smooth="auto")
    loc = mestim.Block("loc", lambda t, r: jnp.atleast_1d(r["y"] - t[0]), init=[0.0])
    with pytest.raises(SpecificationError, match="list them before 'resid'"):
        mestim.fit([later, loc], Y)
    res = mestim.fit([loc, later], Y)
    assert res.converged and "n = 101" in res.notes[0]
