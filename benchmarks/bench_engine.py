"""Issue 9 benchmarks: how fast a fit starts (cold, fresh processes) and runs (warm), against peers in the same run.

    python -m benchmarks.bench_engine                  # cold, warm, chord and meta: ~3 min on 2 cores
    python -m benchmarks.bench_engine --only cold      # or: --only warm, --only chord, --only meta

**Cold** (every number a fresh Python process, measured from its start to its exit, median of ``--repeats``
runs interleaved tool by tool; ``MESTIM_CACHE_DIR=off`` is an empty compilation cache, "filled" a cache that a
first process wrote):

- a user-written logistic ψ (p = 11) on n = 1e4 rows, against delicatessen's default ``MEstimator`` on the same
  data (``ee_regression``, solver "lm", its finite-difference bread) and against ``python -c "import jax"``;
- ``mestim meta`` and ``mestim transport`` on the bundled data, against ``import jax``;
- the programs each mestim process compiled (:func:`mestim.compilations`).

Every case runs once before the timed runs (it fills the "filled" cache): Python writes the bytecode of the modules
it imports then, as a user's first run does (the children run with ``PYTHONDONTWRITEBYTECODE`` unset, so a sandbox
that sets it does not make every run compile the project's own modules from source, 0.08 s or more of each cold
``mestim transport``).

**Warm** (one process per n; ``--repeats`` repetitions after a first call, up to 10× more below n = 1e5 where a
fit takes milliseconds; each repetition runs every tool in turn, so the shared machine's load hits them alike;
medians of the times and of the per-repetition ratios): W2 written by a user as one ψ of 27 parameters
(:func:`benchmarks.workloads.w2_user_psi`) at n = 1e4, 1e5, 1e6, against the one-jit yardstick of
``shared/spec/performance.md`` (:func:`benchmarks.workloads.one_jit_fit`: vmap ψ, jacrev of Σψ, 8 Newton steps,
sandwich, data already on the device) and delicatessen (n ≤ 1e5, exact-derivative mode off: its defaults; up to 3
fits, each beside the median of 3 mestim fits, and against the main loop's median mestim fit: the fits just after
delicatessen start cache-cold); beside it the same estimator as registered blocks
(``workloads.mestim_stack("W2")``: closed-form GLM Jacobians). Each row records the programs the first fit compiled
(or loaded), the backward passes of the user ψ's coloured Jacobian (:mod:`mestim.colouring`; 27 without
colouring), whether its passes were hoisted (:mod:`mestim.hoist`; a fallback is counted in
``mestim.internals.FALLBACKS``), whether the solve ran in one program (hoisted rows in one slab,
:func:`mestim.hoist.solve_program`) or as host-driven passes (how many), and the load average around it.

**Chord steps** (one process, ``--chord-n`` rows, default 1e5): the engine's Newton solve against chord steps (a
prototype here: the Jacobian kept while residual-only steps converge fast) on the W2 user ψ, with plain passes (where
a pass cannot be hoisted) and hoisted ones: what each pass costs, how many each takes, the θ they reach. In the same
process, the engine's hoisted Jacobian pass against W2's pass written by hand in X'WX forms over the design hoisted
in the same layout (:func:`hand_written_pass`): what a pass that knew W2's structure would cost in XLA here.

**Meta-analysis at any k** (a fresh process per case): ``meta_analysis`` of k Cochrane-like 2×2 tables
(:func:`benchmarks.workloads.cochrane_like`) at k = 100 and 2,728 (a collection of 603 reviews read without
``--by``), time and peak memory, against the engine's stacked fit of the same causal estimator at k = 100 (the path
a single analysis took before: cubic in k).

Results: ``benchmarks/results/bench_engine.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import harness  # noqa: E402
from benchmarks import workloads as W  # noqa: E402


# ---------------------------------------------------------------------------------------------- cold children
def logistic_data(n: int):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 10))
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.2 + X @ np.linspace(-0.4, 0.4, 10))))).astype(float)
    return X, y


def child(kind: str, n: int) -> dict:
    """One cold run inside a fresh process: what a new user's script does."""
    if kind == "mestim":
        import jax
        import jax.numpy as jnp

        import mestim

        X, y = logistic_data(n)
        data = {f"x{j + 1}": X[:, j] for j in range(10)}
        data["y"] = y

        def psi(theta, row):
            x = jnp.array([1.0] + [row[f"x{j}"] for j in range(1, 11)])
            return (row["y"] - jax.nn.sigmoid(x @ theta)) * x

        with mestim.compilations() as count:
            res = mestim.fit(psi, data, init=np.zeros(11))
        return {"theta": res.theta.tolist(), "se": res.se.tolist(), "programs": count.programs,
                "loaded": count.loaded}
    if kind == "delicatessen":
        from delicatessen import MEstimator
        from delicatessen.estimating_equations import ee_regression

        X, y = logistic_data(n)
        Xd = np.column_stack([np.ones(n), X])
        est = MEstimator(lambda theta: ee_regression(theta, X=Xd, y=y, model="logistic"), init=[0.0] * 11)
        est.estimate()
        return {"theta": list(est.theta), "se": np.sqrt(np.diag(est.variance)).tolist()}
    if kind in ("meta-k", "meta-k-engine"):
        import resource

        from estimators import causal_meta as cm
        from estimators import meta_batch as mb

        tables = W.cochrane_like(n)
        start = time.perf_counter()
        if kind == "meta-k":
            long, report = mb.meta_analysis(tables, "RR")
            se = float(long.set_index("method").loc["causal", "se"])
        else:
            res = cm.fit_causal_meta(*(tables[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")), measure="RR")
            se = float(res.se[-1])
        return {"seconds": time.perf_counter() - start, "se": se,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if kind in ("meta", "transport"):
        import io
        from contextlib import redirect_stderr, redirect_stdout

        import mestim
        from estimators.cli import main

        with mestim.compilations() as count, redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            code = main([kind])
        heavy = sorted(m for m in ("scipy", "statsmodels", "matplotlib", "formulaic", "flwr") if m in sys.modules)
        return {"exit": code, "programs": count.programs, "loaded": count.loaded, "names": count.names,
                "heavy_modules": heavy}
    raise SystemExit(f"unknown child {kind}")


def run_child(argv: list[str], cache: str | None) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONPATH=ROOT, MESTIM_CACHE_DIR=cache or "off")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's modules are read from their bytecode after a first run
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    lines = out.stdout.strip().splitlines()
    return wall, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {})


def cold(a) -> list[dict]:
    import tempfile

    me = ["-m", "benchmarks.bench_engine", "--child"]
    cases = {
        "python -c 'import jax'": (["-c", "import jax"], None),
        f"delicatessen, logistic ψ, n={a.n_cold:,}": ([*me, "delicatessen", "--n", str(a.n_cold)], None),
        f"mestim, user logistic ψ, n={a.n_cold:,}, empty cache": ([*me, "mestim", "--n", str(a.n_cold)], None),
        f"mestim, user logistic ψ, n={a.n_cold:,}, filled cache": ([*me, "mestim", "--n", str(a.n_cold)], "filled"),
        "mestim meta (bundled BCG), empty cache": ([*me, "meta"], None),
        "mestim meta (bundled BCG), filled cache": ([*me, "meta"], "filled"),
        "mestim transport (bundled), empty cache": ([*me, "transport"], None),
        "mestim transport (bundled), filled cache": ([*me, "transport"], "filled"),
    }
    with tempfile.TemporaryDirectory() as filled:
        for argv, cache in cases.values():  # each once: bytecode written, the "filled" cases' cache filled
            run_child(argv, filled if cache else None)
        times = {name: [] for name in cases}
        info = {}
        for _ in range(a.repeats):  # interleaved: the machine's load hits every tool alike
            for name, (argv, cache) in cases.items():
                wall, out = run_child(argv, filled if cache else None)
                times[name].append(wall)
                info[name] = out
    base = statistics.median(times["python -c 'import jax'"])
    rows = []
    for name, ts in times.items():
        rows.append({"case": name, "median_s": statistics.median(ts), "runs": ts, "x_import_jax": statistics.median(ts) / base,
                     "programs": info[name].get("programs"), "loaded": info[name].get("loaded"),
                     "names": info[name].get("names"), "heavy_modules": info[name].get("heavy_modules")})
        print(f"cold {name}: {rows[-1]['median_s']:.2f} s ({rows[-1]['x_import_jax']:.1f}× import jax), "
              f"programs {rows[-1]['programs']}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- warm
def build_contracted(kernel, problem) -> bool:
    """Whether the hoisting build of the user ψ's Newton pass holds no (colours × rows × equations) cotangent, the
    outer product reverse mode multiplies out unless its sums run as contractions (:mod:`mestim.contractions`)."""
    import jax

    from mestim import hoist
    from mestim.sources import InMemory
    from mestim.sums import plan

    source = InMemory(kernel, {k: v[:kernel.chunk] for k, v in problem.used.items()}, problem.w[:kernel.chunk])
    every = tuple(b.name for b in problem.spec.blocks)
    key = hoist.hoisted_plan(tuple(int(m) for m in plan(problem.spec, values=every, jacobian=every)), len(every))
    rows, w, n_chunks = source._slabs[0]
    split = hoist.split(kernel, source._layout, key)
    stacks = tuple(jax.ShapeDtypeStruct((1,) + a.shape, a.dtype) for a in split.residuals)
    program = jax.make_jaxpr(lambda rows, w, n, into: hoist.slab_residuals(split, kernel, rows, w, n, 1, None, into))(
        rows, w, n_chunks, stacks)
    colours = kernel.pattern(problem.spec.blocks[0], {k: v[:kernel.chunk] for k, v in problem.used.items()})
    cotangent = colours.basis.shape[0] * kernel.chunk * kernel.shape[0]

    def largest(jaxpr):
        sizes = [1]
        for e in jaxpr.eqns:
            sizes += [int(np.prod(v.aval.shape)) for v in e.outvars if hasattr(v.aval, "shape")]
            sizes += [largest(sub.jaxpr if hasattr(sub, "jaxpr") else sub) for sub in e.params.values()
                      if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns")]
        return max(sizes)

    return largest(program.jaxpr) < cotangent


def warm_child(n: int, repeats: int, with_delicatessen: bool) -> dict:
    """One process per n: every tool timed in turn within each repetition (interleaved, so the shared machine's
    load hits them alike), medians of the times and of the per-repetition ratios."""
    import jax
    import jax.numpy as jnp

    import mestim
    from mestim import hoist, internals, sources
    from mestim.estimate import kernel_for
    from mestim.options import FitOptions
    from mestim.problem import prepare

    cols = W.pooled_data(n)
    used = {k: cols[k] for k in W.XCOLS + W.TRIALS + ["R", "A", "Y"]}
    out = {"n": n, "load_average_start": os.getloadavg()}
    # how the fit ran: the solve in one program (hoist.solve_program) or host-driven passes (InMemory.sums)
    ran = {"one_program": 0, "host_passes": 0}
    solve_program, host_sums = hoist.solve_program, sources.InMemory.sums
    hoist.solve_program = lambda *a: ran.__setitem__("one_program", ran["one_program"] + 1) or solve_program(*a)
    sources.InMemory.sums = lambda self, *a: ran.__setitem__("host_passes", ran["host_passes"] + 1) or host_sums(
        self, *a)

    def user_fit():
        return mestim.fit(W.w2_user_psi, used, init=np.zeros(27))

    with mestim.compilations() as count:
        res = user_fit()
    out["programs_first_fit"], out["loaded_first_fit"] = count.programs, count.loaded
    out["solved_in_one_program"], out["host_passes"] = ran["one_program"] == 1, ran["host_passes"]
    problem = prepare(W.w2_user_psi, used, np.zeros(27))
    kernel = kernel_for(problem, FitOptions())
    rows = {k: jax.ShapeDtypeStruct((kernel.chunk,) + v.shape[1:], jnp.float64) for k, v in problem.used.items()}
    out["jacobian_passes"] = int(kernel.pattern(problem.spec.blocks[0], rows).basis.shape[0])
    out["hoisted"] = bool(kernel.hoist and hoist.split.cache_info().currsize and not internals.FALLBACKS)
    out["build_contracted"] = build_contracted(kernel, problem)
    out["mestim_iterations"] = res.iterations
    yard = W.one_jit_fit(W.w2_user_psi)
    device = jax.device_put(used)
    tools = {"mestim_user_psi": user_fit, "one_jit": lambda: jax.block_until_ready(yard(jnp.zeros(27), device)),
             "mestim_registered_blocks": lambda: W.mestim_fit("W2", cols)}
    for f in tools.values():
        f()  # the first call compiles
    times = {name: [] for name in tools}
    out["repetitions"] = repetitions = repeats * max(1, min(10, 100_000 // n))  # small n: more, short, noisy fits
    for _ in range(repetitions):
        for name, f in tools.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        out[f"{name}_s"] = statistics.median(ts)
    out["mestim_over_one_jit"] = statistics.median(
        m / y for m, y in zip(times["mestim_user_psi"], times["one_jit"]))
    theta, vcov = tools["one_jit"]()
    out["max_dtheta_vs_one_jit"] = float(np.max(np.abs(np.asarray(theta) - res.theta)))
    out["max_rel_dse_vs_one_jit"] = float(np.max(np.abs(np.sqrt(np.diag(np.asarray(vcov))) / res.se - 1)))
    if with_delicatessen:  # seconds a fit: fewer repetitions, each beside the median of 3 mestim fits
        pairs = []
        for _ in range(max(1, min(repeats, 3))):
            t = time.perf_counter()
            theta_d, se_d = W.delicatessen_fit("W2", cols)
            d = time.perf_counter() - t
            beside = []
            for _ in range(3):
                t = time.perf_counter()
                user_fit()
                beside.append(time.perf_counter() - t)
            pairs.append((d, statistics.median(beside)))
        out["delicatessen_s"] = statistics.median(d for d, _ in pairs)
        out["delicatessen_over_mestim"] = statistics.median(d / m for d, m in pairs)
        # the same against the main loop's median fit: the fits just after 7 s of delicatessen start cache-cold
        out["delicatessen_over_mestim_main_loop"] = out["delicatessen_s"] / out["mestim_user_psi_s"]
        out["max_dtheta_vs_delicatessen"] = float(np.max(np.abs(theta_d - res.theta)))
    out["load_average_end"] = os.getloadavg()
    return out


def warm(a) -> list[dict]:
    rows = []
    for n in a.ns:
        argv = ["-m", "benchmarks.bench_engine", "--warm-child", str(n), "--repeats", str(a.repeats)]
        if n <= a.delicatessen_max:
            argv.append("--with-delicatessen")
        _, row = run_child(argv, None)
        rows.append(row)
        print(f"warm n={n:,}: mestim user ψ {row['mestim_user_psi_s']:.3f} s, one-jit {row['one_jit_s']:.3f} s "
              f"(mestim ÷ one-jit {row['mestim_over_one_jit']:.2f}), registered blocks "
              f"{row['mestim_registered_blocks_s']:.3f} s"
              + (f", delicatessen {row['delicatessen_s']:.1f} s ({row['delicatessen_over_mestim']:.0f}× mestim beside it, "
                 f"{row['delicatessen_over_mestim_main_loop']:.0f}× the main loop's)"
                 if "delicatessen_s" in row else "") + f"; load {row['load_average_start'][0]:.1f}", flush=True)
    return rows


def chord_child(n: int, repeats: int) -> list[dict]:
    """Chord steps (issue 19, item 3) against the engine's Newton solve, on the W2 user ψ from θ₀ = 0: a prototype
    here, not in the engine. Newton: :func:`mestim.solve.solve_host`, a Jacobian pass per step. Chord: the last
    Jacobian kept while each residual-only step shrinks ‖Σψ‖∞ at least 4×, refreshed where it does not; one more
    Jacobian pass at θ̂ for the bread. On plain passes (what a pass costs where it cannot be hoisted: streams, GPUs)
    and on hoisted ones (in memory on a CPU, host-driven: rows in several slabs)."""
    import dataclasses

    from mestim.estimate import kernel_for
    from mestim.options import FitOptions
    from mestim.problem import prepare
    from mestim.solve import SolverOptions, solve_host
    from mestim.sources import InMemory
    from mestim.sums import plan

    cols = W.pooled_data(n)
    problem = prepare(W.w2_user_psi, {k: cols[k] for k in W.XCOLS + W.TRIALS + ["R", "A", "Y"]}, np.zeros(27))
    spec, every = problem.spec, tuple(b.name for b in problem.spec.blocks)
    with_jac, residual_only = plan(spec, values=every, jacobian=every), plan(spec, values=every)
    kernel = kernel_for(problem, FitOptions())
    rows = []
    for name, k in (("plain", dataclasses.replace(kernel, hoist=False)), ("hoisted", kernel)):
        def source():
            return InMemory(k, problem.used, problem.w)

        def newton():
            src = source()
            state = solve_host(lambda t, want, closing: (lambda m: (m.psi, m.jac if want else None))(
                src.sums(t, with_jac if want else residual_only)), np.zeros(27), src.sum_w, SolverOptions())
            return state.theta, src.passes, 0

        def chord():
            src, theta = source(), np.zeros(27)
            m = src.sums(theta, with_jac)
            jac, r, passes = m.jac, m.psi, [1, 0]
            while np.max(np.abs(r)) / src.sum_w > 1e-12:
                step = -np.linalg.solve(jac, r)
                theta = theta + step
                if np.max(np.abs(step)) <= 1e-10 * (1 + np.max(np.abs(theta))):
                    break
                new = src.sums(theta, residual_only).psi
                passes[1] += 1
                if np.max(np.abs(new)) > np.max(np.abs(r)) / 4:  # slow: a Jacobian here
                    m = src.sums(theta, with_jac)
                    jac, new = m.jac, m.psi
                    passes[0] += 1
                r = new
            src.sums(theta, with_jac)  # the bread at θ̂
            return theta, passes[0] + 1, passes[1]

        def one_pass(p):
            src = source()
            src.sums(np.zeros(27), with_jac)  # builds the residuals (hoisted)
            t = time.perf_counter()
            src.sums(np.full(27, 0.01), p)
            return time.perf_counter() - t

        newton(), chord()  # compiles
        times = {"newton": [], "chord": [], "jacobian pass": [], "residual-only pass": []}
        for _ in range(repeats):
            for label, f in (("newton", newton), ("chord", chord)):
                t = time.perf_counter()
                out = f()
                times[label].append(time.perf_counter() - t)
                if label == "newton":
                    theta_n, newton_passes = out[0], out[1]
                else:
                    theta_c, chord_j, chord_r = out
            times["jacobian pass"].append(one_pass(with_jac))
            times["residual-only pass"].append(one_pass(residual_only))
        if name == "hoisted":  # the same pass written by hand (X'WX forms): what knowing W2's structure would buy
            from mestim import hoist

            hand, src, theta = hand_written_pass(cols, k.chunk, hoist.GROUP_CHUNKS), source(), np.full(27, 0.01)
            src.sums(np.zeros(27), with_jac)  # builds the residuals
            jac_by_hand, engine_jac = np.asarray(hand(theta)[1]), src.sums(theta, with_jac).jac
            paired = {"engine": [], "by hand": []}
            for _ in range(5 * repeats):
                for label, f in (("engine", lambda: src.sums(theta, with_jac)), ("by hand", lambda: hand(theta))):
                    t = time.perf_counter()
                    f()
                    paired[label].append(time.perf_counter() - t)
            hand_row = {"case": f"hoisted Jacobian pass, n={n:,}", "n": n,
                        "engine_pass_s": statistics.median(paired["engine"]),
                        "hand_written_pass_s": statistics.median(paired["by hand"]),
                        "max_rel_djac": float(np.max(np.abs(jac_by_hand - engine_jac)) / np.max(np.abs(engine_jac))),
                        "load_average": os.getloadavg()}
        rows.append({"case": f"chord vs Newton, {name} passes, n={n:,}", "n": n, "passes": name,
                     **{f"{key.replace(' ', '_').replace('-', '_')}_s": statistics.median(ts)
                        for key, ts in times.items()},
                     "chord_over_newton": statistics.median(c / t for c, t in zip(times["chord"], times["newton"])),
                     "newton_passes": newton_passes, "chord_jacobian_passes": chord_j,
                     "chord_residual_passes": chord_r, "max_dtheta": float(np.max(np.abs(theta_c - theta_n))),
                     "load_average": os.getloadavg()})
    return rows + [hand_row]


def hand_written_pass(cols: dict, chunk: int, group: int):
    """W2's Newton pass (Σψ and its Jacobian at θ) written by hand in JAX, in X'WX forms, over the design hoisted
    once in the engine's layout (stacks of chunks, ``group`` chunks a step): what a pass that knew W2's structure
    would cost in XLA on this machine. ``pass_(theta) -> (Σψ, J)``."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    n = cols["R"].shape[0]
    n_chunks = -(-n // chunk)
    capacity = 1 << max(n_chunks - 1, 0).bit_length()
    x = np.column_stack([np.ones(n)] + [cols[c] for c in W.XCOLS])

    def stack(a):
        out = np.zeros((capacity * chunk,) + a.shape[1:])
        out[:n] = a
        return jnp.asarray(out.reshape((capacity, chunk) + a.shape[1:]))

    data = {"x": stack(x), "xt": stack(np.column_stack([x] + [cols[t] for t in W.TRIALS])), "r": stack(cols["R"]),
            "a": stack(cols["A"]), "y": stack(cols["Y"]), "w": stack(np.ones(n))}

    def sums(theta, x, xt, r, a, y, w):  # over the rows of `group` chunks
        bp, bt, tau = theta[:11], theta[11:26], theta[26]
        p, e = jax.nn.sigmoid(x @ bp), jax.nn.sigmoid(xt @ bt)
        q = a * y / e - (1.0 - a) * y / (1.0 - e)
        estimand = r * (1.0 - p) / p * q - (1.0 - r) * tau
        psi = jnp.concatenate([x.T @ (w * (r - p)), xt.T @ (w * r * (a - e)), jnp.atleast_1d(w @ estimand)])
        d_p = w * (-r / (p * p) * q) * p * (1 - p)  # ∂estimand/∂η_p and ∂estimand/∂η_e, weighted
        d_e = w * r * (1.0 - p) / p * (-a * y / (e * e) - (1.0 - a) * y / ((1.0 - e) ** 2)) * e * (1 - e)
        jac = jnp.zeros((27, 27)).at[:11, :11].set(x.T @ ((-w * p * (1 - p))[:, None] * x))
        jac = jac.at[11:26, 11:26].set(xt.T @ ((-w * r * e * (1 - e))[:, None] * xt))
        jac = jac.at[26, :11].set(x.T @ d_p).at[26, 11:26].set(xt.T @ d_e).at[26, 26].set(-(w @ (1.0 - r)))
        return psi, jac

    @jax.jit
    def pass_(theta, data):
        def body(i, acc):
            part = {k: lax.dynamic_slice_in_dim(v, i * group, group) for k, v in data.items()}
            filled = (i * group + jnp.arange(group)) < n_chunks
            flat = {k: v.reshape((group * chunk,) + v.shape[2:]) for k, v in part.items()}
            flat["w"] = (part["w"] * filled[:, None]).reshape(-1)
            psi, jac = sums(theta, **flat)
            return acc[0] + psi, acc[1] + jac
        return lax.fori_loop(0, (n_chunks + group - 1) // group, body, (jnp.zeros(27), jnp.zeros((27, 27))))

    return lambda theta: jax.block_until_ready(pass_(jnp.asarray(theta), data))


def chord(a) -> list[dict]:
    _, rows = run_child(["-m", "benchmarks.bench_engine", "--chord-child", str(a.chord_n), "--repeats",
                         str(a.repeats)], None)
    for r in rows["rows"]:
        if "hand_written_pass_s" in r:
            print(f"{r['case']}: the engine's {r['engine_pass_s'] * 1e3:.1f} ms, by hand "
                  f"{r['hand_written_pass_s'] * 1e3:.1f} ms", flush=True)
            continue
        print(f"{r['case']}: Newton {r['newton_s']:.3f} s ({r['newton_passes']} passes), chord {r['chord_s']:.3f} s "
              f"({r['chord_jacobian_passes']} Jacobian + {r['chord_residual_passes']} residual-only passes): "
              f"chord ÷ Newton {r['chord_over_newton']:.2f}", flush=True)
    return rows["rows"]


def meta_k(a) -> list[dict]:
    me = ["-m", "benchmarks.bench_engine", "--child"]
    cases = [(f"meta_analysis, k={k:,} (closed form)", "meta-k", k) for k in a.meta_k]
    cases.append((f"engine's stacked causal fit, k={a.meta_engine_k:,}", "meta-k-engine", a.meta_engine_k))
    times = {name: [] for name, _, _ in cases}
    info = {}
    for _ in range(a.repeats):
        for name, kind, k in cases:
            wall, out = run_child([*me, kind, "--n", str(k)], None)
            times[name].append(out["seconds"])
            info[name] = dict(out, k=k)
    rows = []
    for name, ts in times.items():
        rows.append({"case": name, "k": info[name]["k"], "median_s": statistics.median(ts), "runs": ts,
                     "peak_rss_mb": info[name]["peak_rss_mb"], "se": info[name]["se"]})
        print(f"meta {name}: {rows[-1]['median_s']:.3f} s, peak {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def markdown(cold_rows, warm_rows, meta_rows=(), chord_rows=()) -> str:
    lines = []
    if cold_rows:
        lines += ["## Cold: fresh processes, start to exit (median)", "",
                  "| case | time | × `import jax` | programs compiled (loaded from cache) |", "|---|---|---|---|"]
        for r in cold_rows:
            progs = "" if r["programs"] is None else f"{r['programs']} ({r['loaded']})"
            lines.append(f"| {r['case']} | {r['median_s']:.2f} s | {r['x_import_jax']:.1f}× | {progs} |")
    if warm_rows:
        lines += ["", "## Warm: W2 as one user ψ (27 parameters), medians of interleaved repetitions in one process",
                  "",
                  "| n | mestim user ψ | one-jit yardstick | mestim ÷ one-jit (median of pairs) | mestim registered "
                  "blocks | delicatessen | delicatessen ÷ mestim (beside; main loop) | backward passes (of 27) | "
                  "hoisted | solve | "
                  "programs (loaded) | load (1 min) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in warm_rows:
            d, m = r.get("delicatessen_s"), r["mestim_user_psi_s"]
            peer = (harness.seconds_text(d), f"{r['delicatessen_over_mestim']:.0f}×; "
                    f"{r['delicatessen_over_mestim_main_loop']:.0f}×") if d else ("—", "—")
            solve = "one program" if r["solved_in_one_program"] else f"{r['host_passes']} host passes"
            lines.append(f"| {r['n']:,} | {harness.seconds_text(m)} | {harness.seconds_text(r['one_jit_s'])} | "
                         f"{r['mestim_over_one_jit']:.2f} | {harness.seconds_text(r['mestim_registered_blocks_s'])} | "
                         f"{peer[0]} | {peer[1]} | {r['jacobian_passes']} | {'yes' if r['hoisted'] else 'no'} | "
                         f"{solve} | {r['programs_first_fit']} ({r['loaded_first_fit']}) | "
                         f"{r['load_average_start'][0]:.1f}–{r['load_average_end'][0]:.1f} |")
    if chord_rows:
        lines += ["", "## Chord steps against Newton (W2 user ψ from θ₀ = 0; a prototype in this benchmark, not in the "
                  "engine; medians of interleaved repetitions)", "",
                  "| case | Jacobian pass | residual-only pass | Newton | chord | chord ÷ Newton | passes (Newton; "
                  "chord: Jacobian + residual-only) | max abs Δθ |", "|---|---|---|---|---|---|---|---|"]
        for r in chord_rows:
            if "hand_written_pass_s" in r:
                continue
            lines.append(f"| {r['case']} | {harness.seconds_text(r['jacobian_pass_s'])} | "
                         f"{harness.seconds_text(r['residual_only_pass_s'])} | {harness.seconds_text(r['newton_s'])} | "
                         f"{harness.seconds_text(r['chord_s'])} | {r['chord_over_newton']:.2f} | {r['newton_passes']}; "
                         f"{r['chord_jacobian_passes']} + {r['chord_residual_passes']} | {r['max_dtheta']:.1e} |")
    for r in chord_rows:
        if "hand_written_pass_s" in r:
            lines += ["", "## The hoisted Jacobian pass against the same pass written by hand (W2 at θ = 0.01: Σψ and its "
                      "Jacobian in X'WX forms over the design hoisted once, in the engine's chunk layout; medians of "
                      "interleaved repetitions)", "", "| case | engine | by hand | engine ÷ by hand | max rel ΔJ |",
                      "|---|---|---|---|---|",
                      f"| {r['case']} | {harness.seconds_text(r['engine_pass_s'])} | "
                      f"{harness.seconds_text(r['hand_written_pass_s'])} | "
                      f"{r['engine_pass_s'] / r['hand_written_pass_s']:.2f} | {r['max_rel_djac']:.1e} |"]
    if meta_rows:
        lines += ["", "## A single meta-analysis of k studies: fresh process per run (median)", "",
                  "| case | time | peak memory | causal SE (log RR) |", "|---|---|---|---|"]
        for r in meta_rows:
            lines.append(f"| {r['case']} | {r['median_s']:.3f} s | {r['peak_rss_mb']:.0f} MB | {r['se']:.6g} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["cold", "warm", "chord", "meta"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-cold", type=int, default=10_000)
    p.add_argument("--ns", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--meta-k", type=int, nargs="+", default=[100, 2728], help="studies per meta-analysis")
    p.add_argument("--meta-engine-k", type=int, default=100, help="studies in the engine's stacked fit (peer)")
    p.add_argument("--delicatessen-max", type=int, default=100_000, help="largest n delicatessen runs at (warm)")
    p.add_argument("--chord-n", type=int, default=100_000, help="rows of the chord-against-Newton comparison")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=10_000, help=argparse.SUPPRESS)
    p.add_argument("--warm-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--with-delicatessen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chord-child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.n)))
        if a.child in ("meta", "transport"):  # the command line's run ends as the mestim executable's does
            from estimators.cli import exit_now

            exit_now(0)
        return
    if a.warm_child:
        print(json.dumps(warm_child(a.warm_child, a.repeats, a.with_delicatessen)))
        return
    if a.chord_child:
        print(json.dumps({"rows": chord_child(a.chord_child, a.repeats)}))
        return
    meta = dict(hardware=harness.hardware(), started=time.strftime("%Y-%m-%d %H:%M:%S"), budget="n/a",
                repeats=a.repeats)
    cold_rows = cold(a) if a.only in (None, "cold") else []
    warm_rows = warm(a) if a.only in (None, "warm") else []
    chord_rows = chord(a) if a.only in (None, "chord") else []
    meta_rows = meta_k(a) if a.only in (None, "meta") else []
    meta["load_average_end"] = os.getloadavg()
    notes = ("Peers in the same run: `python -c 'import jax'`; delicatessen "
             f"{meta['hardware']['versions'].get('delicatessen')} (`MEstimator` defaults); the one-jit yardstick of "
             "`shared/spec/performance.md`. Ratios within this run are what to compare; the machine is shared.")
    out = harness.write_results("bench_engine", cold_rows + warm_rows + chord_rows + meta_rows, meta,
                                markdown(cold_rows, warm_rows, meta_rows, chord_rows), notes)
    print(f"results in {out}/bench_engine.md")


if __name__ == "__main__":
    main()
