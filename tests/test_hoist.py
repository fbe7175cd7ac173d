"""Hoisting (mestim.hoist): the θ-free work of a full Jacobian pass done once per in-memory source gives the same
sums as the whole chunk program, and a hoisted program serves only passes that ask for no more than it computes."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import estimators as est
from mestim import Block
from mestim.hoist import residuals_program as _residuals  # the real programs (spied on below)
from mestim.hoist import solve_program as _solve
from mestim.problem import prepare
from mestim.sources import InMemory
from mestim.sums import Kernel, plan


def _ratio(tau, row, lg):  # reads the logistic block: a stack with two levels and a user's ψ
    p = 1 / (1 + jnp.exp(-(row["lg.X"] @ lg)))
    return jnp.atleast_1d(row["y"] / p - tau[0])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 2))
    y = (rng.random(700) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    data = {"x1": x[:, 0], "x2": x[:, 1], "y": y, "w": rng.integers(1, 4, 700).astype(float)}
    return prepare([est.logistic("lg", "y", ["x1", "x2"]), Block("r", _ratio, init=[1.0], reads=("lg",))], data,
                   weights="w")


def _sources(problem):
    hoisted = InMemory(Kernel(problem.spec, 256, hoist=True), problem.used, problem.w)
    whole = InMemory(Kernel(problem.spec, 256), problem.used, problem.w)
    return hoisted, whole


def _same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(y).max())))


def test_hoisted_sums_equal_the_whole_program(problem):
    every = ("lg", "r")
    theta = problem.init + 0.05
    hoisted, whole = _sources(problem)
    for p in (plan(problem.spec, values=every, jacobian=every, meat=True),  # makes the residuals
              plan(problem.spec, values=every),  # residual-only: served by the hoisted program
              plan(problem.spec, values=("lg",), jacobian=("lg",))):
        _same(hoisted.sums(theta, p), whole.sums(theta, p))
    assert any(r is not None for r in hoisted._hoisted.values())  # the hoisted path ran


def test_a_hoisted_plan_without_the_meat_does_not_serve_a_pass_that_asks_for_it(problem):
    """Hoisted without the meat (or with other weights in it), a program would return a zero or w²-weighted meat."""
    every = ("lg", "r")
    theta = problem.init + 0.05
    hoisted, whole = _sources(problem)
    hoisted.sums(theta, plan(problem.spec, values=every, jacobian=every))  # hoisted: no meat
    for sampling in (False, True):
        asked = plan(problem.spec, values=every, jacobian=every, meat=True, sampling=sampling)
        got = hoisted.sums(theta, asked)
        assert np.abs(got.meat).max() > 0
        _same(got, whole.sums(theta, asked))


def test_a_residual_only_pass_is_residual_only(problem):
    """Served by the hoisted residuals, a residual-only pass returns no Jacobian and no meat (the whole program
    returns zeros there), and a pass that skips a block returns zero for its equations."""
    every = ("lg", "r")
    theta = problem.init + 0.05
    hoisted, whole = _sources(problem)
    hoisted.sums(theta, plan(problem.spec, values=every, jacobian=every))
    for p in (plan(problem.spec, values=every), plan(problem.spec, values=("r",))):
        got = hoisted.sums(theta, p)
        assert not np.any(got.jac) and not np.any(got.meat)
        _same(got, whole.sums(theta, p))
    assert len(hoisted._hoisted) == 1  # both served by the first pass's residuals


def test_without_partial_evaluation_the_source_falls_back_visibly(problem, monkeypatch, caplog):
    """Where JAX's internal partial evaluation is missing, the source runs the whole program (same sums), the
    fallback is counted and logged."""
    from mestim import hoist, internals

    def moved():
        raise ImportError("jax._src.interpreters.partial_eval moved")

    monkeypatch.setattr(internals, "_partial_eval_module", moved)
    monkeypatch.setattr(internals, "FALLBACKS", type(internals.FALLBACKS)())
    hoist.split.cache_clear()
    try:
        every = ("lg", "r")
        theta = problem.init + 0.05
        hoisted, whole = _sources(problem)
        p = plan(problem.spec, values=every, jacobian=every, meat=True)
        with caplog.at_level("WARNING", logger="mestim"):
            _same(hoisted.sums(theta, p), whole.sums(theta, p))
        assert list(hoisted._hoisted.values()) == [None]
        assert sum(internals.FALLBACKS.values()) == 1 and "moved" in caplog.text
    finally:
        hoist.split.cache_clear()


def _psi_user(theta, row):  # a user's ψ of two models and an estimand written as one block (W2's form)
    x = jnp.array([1.0, row["x1"], row["x2"]])
    p = 1 / (1 + jnp.exp(-(x @ theta[:3])))
    mu = x @ theta[3:6]
    return jnp.concatenate([(row["y"] - p) * x, (row["z"] - mu) * x, jnp.atleast_1d(row["y"] / p - theta[6])])


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-0.3 - x[:, 0]))).astype(float)
    return {"x1": x[:, 0], "x2": x[:, 1], "y": y, "z": x @ [0.5, -1.0] + rng.normal(size=3000),
            "w": rng.uniform(0.5, 2.0, 3000)}


def _case(table, case):
    if case == "user psi":  # 12 chunks
        return (_psi_user, table), dict(init=np.r_[np.zeros(6), 1.0], weights="w", chunk_size=256)
    if case == "registered blocks, joint":
        return ([est.logistic("lg", "y", ["x1", "x2"]), Block("r", _ratio, init=[1.0], reads=("lg",))],
                table), dict(solve="joint", weights="w")
    if case == "user psi, 6 slabs":  # 375 chunks (over hoist.ONE_PROGRAM_CHUNKS): host-driven hoisted passes
        return (_psi_user, table), dict(init=np.r_[np.zeros(6), 1.0], weights="w", chunk_size=8)
    return (_psi_user, table), dict(init=np.r_[np.zeros(6), 1.0], weights="w", weight_type="sampling",
                                    data_dtype="float32", chunk_size=512)


CASES = ["user psi", "registered blocks, joint", "sampling weights, float32 columns", "user psi, 6 slabs"]


@pytest.mark.parametrize("case", CASES)
def test_fits_with_hoisting_forced_on_equal_the_plain_path(table, case, monkeypatch):
    """Whole fits (every pass of the solve and the sandwich) with hoisting forced on (data this small are
    otherwise compiled quick, unhoisted) equal the plain path to 1e-12, and the hoisted path ran: the solve in one
    program for up to hoist.ONE_PROGRAM_CHUNKS chunks, host-driven hoisted passes over slabs for more."""
    import mestim
    from mestim import hoist, sums

    args, kw = _case(table, case)
    monkeypatch.setattr(sums, "QUICK_WORK", 0)  # every fit here is compiled optimised, so hoisted on a CPU
    built = []
    monkeypatch.setattr(hoist, "residuals_program", lambda *a: built.append("passes") or _residuals(*a))
    monkeypatch.setattr(hoist, "solve_program", lambda *a: built.append("one program") or _solve(*a))
    on = mestim.fit(*args, **kw)
    assert set(built) == {"passes" if case.endswith("slabs") else "one program"}, built
    monkeypatch.setattr(hoist, "HOIST_BUDGET", 0)  # the residuals never fit: the plain path
    built.clear()
    off = mestim.fit(*args, **kw)
    assert not built
    np.testing.assert_allclose(on.theta, off.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(on.vcov, off.vcov, rtol=1e-12, atol=1e-14 * np.abs(off.vcov).max())
    assert on.iterations == off.iterations


@pytest.mark.parametrize("case", ["user psi", "user psi, 6 slabs"])
def test_a_fit_builds_its_residuals_over_the_stacks_an_earlier_fit_gave_back(table, case, monkeypatch):
    """A fit gives its residual stacks back when it ends, and the next fit of the same shapes builds over them (the
    same memory, donated). What the earlier fit left past the new fit's rows is never read: a fit of fewer rows over
    the leftovers of a fit of all of them equals, bitwise, the same fit over new stacks. With SPARE_BYTES = 0 none
    are kept."""
    import collections

    import mestim
    from mestim import hoist, sums

    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    monkeypatch.setattr(hoist, "_spares", collections.OrderedDict())
    (psi, data), kw = _case(table, case)
    fewer = {k: v[:2200] for k, v in data.items()}  # fewer chunks in slabs of the same capacity as all rows'

    mestim.fit(psi, data, **kw)
    left = _kept_pointers()
    assert left and sum(a.nbytes for stacks in hoist._spares.values() for one in stacks for a in one) <= \
        hoist.SPARE_BYTES
    over_leftovers = mestim.fit(psi, fewer, **kw)
    assert set(_kept_pointers()) <= set(left)  # built over the earlier fit's stacks, and given back again
    monkeypatch.setattr(hoist, "SPARE_BYTES", 0)
    monkeypatch.setattr(hoist, "_spares", collections.OrderedDict())
    over_new = mestim.fit(psi, fewer, **kw)
    assert not hoist._spares
    np.testing.assert_array_equal(over_leftovers.theta, over_new.theta)
    np.testing.assert_array_equal(over_leftovers.vcov, over_new.vcov)


def _kept_pointers() -> list:
    """Where the stacks the process keeps for later builds live (mestim.hoist.give_back)."""
    from mestim import hoist

    return sorted(a.unsafe_buffer_pointer() for stacks in hoist._spares.values() for one in stacks for a in one)


def test_the_sandwich_at_a_given_theta_gives_its_stacks_back(table, monkeypatch):
    """``sandwich()`` hoists its one pass like a fit and gives the stacks back when it ends, for the next fit or
    sandwich of the same shapes to build over."""
    import collections

    import mestim
    from mestim import hoist, sums

    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    monkeypatch.setattr(hoist, "_spares", collections.OrderedDict())
    (psi, data), kw = _case(table, "user psi")
    fitted = mestim.fit(psi, data, **kw)
    left = _kept_pointers()
    at = mestim.sandwich(psi, data, fitted.theta, weights="w", chunk_size=kw["chunk_size"])
    kept = _kept_pointers()
    assert kept and set(kept) <= set(left)
    np.testing.assert_allclose(at.vcov, fitted.vcov, rtol=1e-9, atol=1e-14 * np.abs(fitted.vcov).max())


def test_closed_form_stacks_over_several_slabs_are_not_hoisted(monkeypatch):
    """Registered blocks whose Jacobian is closed form (X'WX: their θ-free work is reading the design) run plain
    passes over several slabs, where host-driven hoisted passes were slower (1.10×, logistic at n = 1e6); in one slab
    they are still solved in one program. Either way the numbers equal the plain path."""
    import mestim
    from mestim import hoist, sums

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 2))
    data = {"x1": x[:, 0], "x2": x[:, 1], "y": (rng.random(3000) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)}
    block = [est.logistic("lg", "y", ["x1", "x2"])]
    assert Kernel(prepare(block, data).spec, 8).closed_form
    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    built = []
    monkeypatch.setattr(hoist, "residuals_program", lambda *a: built.append("passes") or _residuals(*a))
    monkeypatch.setattr(hoist, "solve_program", lambda *a: built.append("one program") or _solve(*a))
    several, one = mestim.fit(block, data, chunk_size=8), mestim.fit(block, data, chunk_size=512)
    assert built == ["one program"]  # 3000 rows in chunks of 8: 6 slabs, not hoisted; of 512: one slab, one program
    monkeypatch.setattr(hoist, "HOIST_BUDGET", 0)
    plain = mestim.fit(block, data, chunk_size=8)
    for res in (several, one):
        np.testing.assert_allclose(res.theta, plain.theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.se, plain.se, rtol=1e-12)


@pytest.mark.parametrize("case", CASES[:3])
def test_the_solve_in_one_program_equals_host_driven_hoisted_passes_and_repeats_bitwise(table, case, monkeypatch):
    """The solve in one program (rows hoisted in one slab) visits the points of the host-driven hoisted passes:
    the same θ̂, sandwich and iterations to 1e-12; run again, the same bits. Its sums at θ̂ come from the Newton pass
    that ended the solve (mestim.solve.closing), as the host loop's do."""
    import mestim
    from mestim import hoist, sums
    from mestim.sources import InMemory

    args, kw = _case(table, case)
    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    ran = []
    monkeypatch.setattr(hoist, "solve_program", lambda *a: ran.append(_solve(*a)) or ran[-1])
    one, again = mestim.fit(*args, **kw), mestim.fit(*args, **kw)
    assert len(ran) == 2 and all(bool(closed) for _, _, closed, _ in ran)
    np.testing.assert_array_equal(one.theta, again.theta)
    np.testing.assert_array_equal(one.vcov, again.vcov)
    monkeypatch.setattr(InMemory, "solve_in_one_program", lambda *a: None)
    host = mestim.fit(*args, **kw)
    np.testing.assert_allclose(one.theta, host.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(one.vcov, host.vcov, rtol=1e-12, atol=1e-14 * np.abs(host.vcov).max())
    assert one.iterations == host.iterations


def test_the_solve_in_one_program_reports_non_convergence_like_the_host_loop(table, monkeypatch):
    """A solve in one program that stops (here at max_iter=1) raises the host loop's error, naming the block."""
    import mestim
    from mestim import hoist, sums
    from mestim.errors import ConvergenceError

    args, kw = _case(table, "user psi")
    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    ran = []
    monkeypatch.setattr(hoist, "solve_program", lambda *a: ran.append(1) or _solve(*a))
    with pytest.raises(ConvergenceError, match=r"block\(s\) 'theta' did not converge: reached the iteration limit "
                       r"after 1 iteration\(s\)"):
        mestim.fit(*args, **kw, max_iter=1)
    assert ran


def test_the_meat_is_taken_once_at_the_estimate(table, monkeypatch):
    """In memory, the Newton passes take no meat but the one that ends the solve (mestim.solve.closing: it takes the
    Jacobian and the meat at θ̂, and no pass follows it); the same sandwich as the meat taken on every pass of the
    last level, as a stream still does."""
    import mestim
    from mestim.sources import InMemory

    asked = []
    sums = InMemory.sums
    monkeypatch.setattr(InMemory, "sums", lambda self, theta, p: asked.append(tuple(p)) or sums(self, theta, p))
    once = mestim.fit(_psi_user, table, init=np.r_[np.zeros(6), 1.0], weights="w")
    n_blocks = 1
    assert all(p[n_blocks] == 0 for p in asked[:-1]) and asked[-1][:n_blocks + 1] == (2, 1)
    monkeypatch.setattr(InMemory, "meat_once", False)
    every_pass = mestim.fit(_psi_user, table, init=np.r_[np.zeros(6), 1.0], weights="w")
    np.testing.assert_array_equal(once.theta, every_pass.theta)
    np.testing.assert_allclose(once.vcov, every_pass.vcov, rtol=1e-12, atol=0)


_SHARDED = textwrap.dedent("""
    import json, sys
    import numpy as np, jax, mestim
    sys.path.insert(0, {tests!r})
    from mestim import hoist, sums
    from test_hoist import _psi_user, _residuals, _solve, table
    assert len(jax.devices()) == 4
    sums.QUICK_WORK = 0  # compiled optimised, so hoisted on a CPU
    data = table.__wrapped__()
    meshes = []
    hoist.residuals_program = lambda *a: meshes.append(a[0].mesh is not None) or _residuals(*a)
    hoist.solve_program = lambda *a: meshes.append(("one program", a[0].mesh is not None)) or _solve(*a)
    kw = dict(init=np.r_[np.zeros(6), 1.0], weights="w", chunk_size=128)
    sharded = mestim.fit(_psi_user, data, devices=4, **kw)
    one = mestim.fit(_psi_user, data, **kw)
    hoist.HOIST_BUDGET = 0
    plain = mestim.fit(_psi_user, data, devices=4, **kw)
    def diff(a, b):
        return [float(np.max(np.abs(a.theta - b.theta))), float(np.max(np.abs(a.vcov - b.vcov) / np.abs(b.vcov).max()))]
    print(json.dumps(dict(meshes=meshes, one=diff(sharded, one), plain=diff(sharded, plain))))
""")


def test_rows_sharded_over_devices_are_hoisted_per_device():
    """devices=k on a CPU hoists each device's rows (it ran unhoisted: 0.41× one device), in one program as one
    device does for rows in one slab, with the same sums as one hoisted device and the plain sharded path."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = _SHARDED.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # each solved in one program (sharded: residuals and sums per device), then the plain sharded path
    assert res["meshes"] == [["one program", True], ["one program", False]], res["meshes"]
    assert max(res["one"]) < 1e-12 and max(res["plain"]) < 1e-12, res


def _log_scale(theta, row):  # log(θ s): the θ-free residual s is 0 in a group's chunks past the filled ones
    return jnp.atleast_1d(jnp.log(theta[0] * row["s"]) - row["y"])


@pytest.mark.parametrize("n_rows", [5 * 8 + 3, 13 * 8])  # 6 and 13 filled chunks of 8: groups of 4 overrun
def test_a_hoisted_pass_masks_the_chunks_past_the_filled_ones_in_its_last_group(n_rows, monkeypatch):
    """A hoisted pass evaluates hoist.GROUP_CHUNKS chunks at once; in the last group, chunks past the filled
    ones hold zero residuals, where this ψ is −∞: they are masked out (summed with them, the fit fails at θ₀).
    θ̂ = exp(mean(y − log s)) and SE = θ̂ sd(y − log s)/√n (ψ's derivative 1/θ) in closed form."""
    import mestim
    from mestim import hoist, sums

    monkeypatch.setattr(sums, "QUICK_WORK", 0)  # hoisted on a CPU
    rng = np.random.default_rng(3)
    data = {"s": rng.uniform(0.5, 2.0, n_rows), "y": rng.normal(size=n_rows)}
    ran = []
    monkeypatch.setattr(hoist, "solve_program", lambda *a: ran.append(a[4]) or _solve(*a))
    res = mestim.fit(_log_scale, data, init=[1.0], chunk_size=8)
    assert ran and ran[0] % hoist.GROUP_CHUNKS == 0 and -(-n_rows // 8) % hoist.GROUP_CHUNKS  # capacity; overrun
    d = data["y"] - np.log(data["s"])
    np.testing.assert_allclose(res.theta, [np.exp(d.mean())], rtol=1e-10)
    np.testing.assert_allclose(res.se, [np.exp(d.mean()) * d.std() / np.sqrt(n_rows)], rtol=1e-8)
