"""Benchmark harness: every (tool, workload, n) runs in a fresh Python process.

A fresh process gives honest cold times (imports done, nothing compiled: the first fit pays tracing and XLA
compilation; JAX's persistent compilation cache is off unless ``cache_dir`` is given) and an honest peak
memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak resident set) is read after the data
are loaded (``rss_base_mb``: interpreter + libraries + data) and after all fits (``rss_peak_mb``); their
difference (``rss_fit_mb``) is the memory the fits needed beyond the data. Data come from an .npz cache
(:func:`benchmarks.workloads.cached_data`), so the generator's temporaries do not count.

Times: ``cold_s`` is the first fit in the process; ``warm_s`` the median of up to ``repeats`` further fits
(fewer when a fit is slow, none when the cold fit is already past the time budget). Budget: a peer whose
projected time at the next n (linear in n from its last time) exceeds the budget is skipped and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def child(args) -> dict:
    os.environ["MESTIM_CACHE_DIR"] = args.cache_dir or "off"  # before mestim is imported: it reads it then
    sys.path.insert(0, ROOT)
    from benchmarks import workloads as W

    if args.tool == "mestim":
        import mestim  # noqa: F401  (imports jax, x64, the persistent cache when asked)

        kw = {"data_dtype": "float32"} if args.float32 else {}

        def fit(cols):
            r = W.mestim_fit(args.workload, cols, **kw)
            return r.theta, r.se
    elif args.tool == "delicatessen":
        import delicatessen  # noqa: F401

        def fit(cols):
            return W.delicatessen_fit(args.workload, cols, deriv_method=args.deriv)
    elif args.tool == "statsmodels":
        import statsmodels.api  # noqa: F401

        def fit(cols):
            return W.statsmodels_fit(args.workload, cols)
    else:
        raise SystemExit(f"unknown tool {args.tool}")
    cols = W.cached_data(args.n)
    base = _rss_mb()
    t = time.perf_counter()
    theta, se = fit(cols)
    cold = time.perf_counter() - t
    warm_times = []
    if cold <= args.budget:
        reps = max(1, min(args.repeats, int(args.budget / max(cold, 1e-3))))
        for _ in range(reps):
            t = time.perf_counter()
            theta, se = fit(cols)
            warm_times.append(time.perf_counter() - t)
    peak = _rss_mb()
    import numpy as np

    return dict(tool=args.tool, workload=args.workload, n=args.n, cold_s=cold,
                warm_s=statistics.median(warm_times) if warm_times else None, warm_runs=len(warm_times),
                rss_base_mb=base, rss_peak_mb=peak, rss_fit_mb=peak - base,
                theta=np.asarray(theta).tolist(), se=np.asarray(se).tolist(),
                cache=bool(args.cache_dir), float32=bool(args.float32), deriv=args.deriv)


def run_case(tool, workload, n, *, budget, repeats=3, cache_dir=None, float32=False, deriv="approx",
             timeout=None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.harness", "--tool", tool, "--workload", workload, "--n", str(n),
           "--budget", str(budget), "--repeats", str(repeats), "--deriv", deriv]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if float32:
        cmd += ["--float32"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout or (3 * budget + 120))
    except subprocess.TimeoutExpired:
        return dict(tool=tool, workload=workload, n=n, skipped=f"timed out after {timeout or 3 * budget + 120:.0f} s")
    if out.returncode != 0:
        return dict(tool=tool, workload=workload, n=n, error=out.stderr.strip().splitlines()[-1:] or ["?"])
    return json.loads(out.stdout.strip().splitlines()[-1])


def hardware() -> dict:
    info = dict(python=platform.python_version(), machine=platform.machine(), cores=os.cpu_count(),
                load_average=os.getloadavg())
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                                  if ln.startswith("Model name")), "?")
    except OSError:
        info["cpu_model"] = "?"
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    import importlib.metadata as md

    info["versions"] = {p: md.version(p) for p in ("jax", "numpy", "delicatessen", "statsmodels", "scipy")}
    return info


def sweep(workloads, ns, tools, *, budget, repeats=3, log=print, **kw) -> list[dict]:
    """Run every case; a tool whose projected time at the next n exceeds ``budget`` is skipped from there on."""
    rows, last = [], {}
    for wl in workloads:
        for tool in tools:
            if tool == "statsmodels" and wl != "W1":
                continue
            for n in ns:
                key = (tool, wl)
                if key in last:
                    n0, t0 = last[key]
                    projected = t0 * n / n0
                    if projected > budget:
                        rows.append(dict(tool=tool, workload=wl, n=n, skipped=f"projected {projected:.0f} s > budget "
                                         f"{budget:.0f} s (linear from {t0:.1f} s at n={n0:g})"))
                        log(f"{wl} {tool:13s} n={n:>9,}: skipped ({rows[-1]['skipped']})")
                        continue
                row = run_case(tool, wl, n, budget=budget, repeats=repeats, **kw)
                rows.append(row)
                t = row.get("warm_s") or row.get("cold_s")
                if t is not None:
                    last[key] = (n, t)
                else:
                    last[key] = (n, float("inf"))
                log(f"{wl} {tool:13s} n={n:>9,}: " + (
                    f"cold {row['cold_s']:.3f} s, warm {seconds_text(row.get('warm_s'))}, fit memory "
                    f"{row['rss_fit_mb']:.0f} MB" if "cold_s" in row else str(row.get("skipped") or row.get("error"))))
    return rows


def seconds_text(t):
    return "—" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")


def markdown_table(header: list[str], rows) -> list[str]:
    """A markdown table's lines: the header, its rule, and one line per row of cells (already formatted)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, cells)) + " |"
                                                                          for cells in rows]


def markdown(rows, reference="mestim") -> str:
    """One line per (workload, n, tool): cold, warm, ratio to mestim warm, memory, max differences."""
    import numpy as np

    ref = {(r["workload"], r["n"]): r for r in rows if r["tool"] == reference and "cold_s" in r and not r.get("cache")
           and not r.get("float32")}
    lines = ["| workload | n | tool | cold | warm | warm ÷ mestim warm | fit memory (MB) | peak RSS (MB) | "
             "max |Δθ| vs mestim | max rel ΔSE vs mestim |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tool = r["tool"] + (" (persistent cache, 2nd process)" if r.get("cache") else "") + (
            " float32 data" if r.get("float32") else "")
        if "cold_s" not in r:
            lines.append(f"| {r['workload']} | {r['n']:,} | {tool} | — | — | — | — | — | "
                         f"{r.get('skipped') or r.get('error')} | |")
            continue
        m = ref.get((r["workload"], r["n"]))
        ratio = dth = dse = ""
        if m is not None and m.get("warm_s") and r is not m:
            t = r.get("warm_s") or r["cold_s"]
            ratio = f"{t / m['warm_s']:.1f}×" + ("" if r.get("warm_s") else " (cold)")
            dth = f"{np.max(np.abs(np.subtract(r['theta'], m['theta']))):.1e}"
            dse = f"{np.max(np.abs(np.divide(r['se'], m['se']) - 1)):.1e}"
        lines.append(f"| {r['workload']} | {r['n']:,} | {tool} | {seconds_text(r['cold_s'])} | {seconds_text(r.get('warm_s'))} | "
                     f"{ratio} | {r['rss_fit_mb']:.0f} | {r['rss_peak_mb']:.0f} | {dth} | {dse} |")
    return "\n".join(lines)


def results_dir() -> str:
    """Where results go: ``$MESTIM_BENCH_RESULTS`` (the smoke tests point it at a temporary folder), else
    ``benchmarks/results``."""
    return os.environ.get("MESTIM_BENCH_RESULTS") or os.path.join(ROOT, "benchmarks", "results")


def write_results(name, rows, meta, table_md, notes=""):
    out = results_dir()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(f"# {name}\n\nHardware: {meta['hardware'].get('cpu_model')}, {meta['hardware'].get('cores')} cores, "
                f"load average at start {tuple(round(x, 1) for x in meta['hardware']['load_average'])} "
                f"(a shared machine: compare tools as ratios within this run).\n"
                f"Versions: {meta['hardware']['versions']}. Time budget per fit: {meta['budget']} s.\n\n"
                f"{notes}\n\n{table_md}\n")
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tool", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--float32", action="store_true")
    p.add_argument("--deriv", default="approx")
    print(json.dumps(child(p.parse_args(argv))))


if __name__ == "__main__":
    main()
