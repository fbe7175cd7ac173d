"""Issue 6 benchmarks: W1–W3 against peers on CPU, and mestim on a GPU against the memory-bandwidth roofline.

    python -m benchmarks.bench_scale                      # CPU: n = 1e3…1e6, peers in the same run (~10 min)
    python -m benchmarks.bench_scale --ns 1000 10000 100000 --workloads W2
    python -m benchmarks.bench_scale --gpu                # GPU: n = 1e6…1e8 in memory, + a streamed fit

CPU mode: every (tool, workload, n) in a fresh process (:mod:`benchmarks.harness`; cold, warm, peak RSS);
delicatessen (defaults: solver "lm", deriv_method "approx") and statsmodels (W1), skipped past ``--budget``
seconds per fit (projected linearly in n). mestim float32-data rows at n ≥ 1e5 measure that path's speed and
accuracy. Results: ``benchmarks/results/bench_scale_cpu.{json,md}``.

GPU mode (one process, mestim only; written for an H100/H200, runs unchanged on any JAX device):
for each workload and n, the data are prepared and moved to the device once; ``device_s`` is the warm time of
the compiled solve of every group + bread/meat + sandwich with the data resident on the device (median of 3),
``fit_s`` the warm time of a whole ``mestim.fit`` from host arrays (host preparation and transfer included).
Roofline: bytes per pass = the bytes of the columns ψ reads + weights; passes = the passes the row source counted
(every pass reads every row once); the floor = passes × bytes ÷ the bandwidth measured in the same run (a
reduction over a 4 GiB array). ``--stream-n`` adds a streamed fit
(``mestim.scale.fit_stream``, float32 data) of W2 from host batches cycled from a pool. Results:
``benchmarks/results/bench_scale_gpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402
from benchmarks import workloads as W  # noqa: E402


def cpu(a):
    meta = dict(hardware=harness.hardware(), budget=a.budget, ns=a.ns, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    for n in a.ns:
        W.cached_data(n)
    rows = harness.sweep(a.workloads, a.ns, ["mestim", "statsmodels", "delicatessen"], budget=a.budget,
                         repeats=a.repeats)
    if not a.no_float32:
        for wl in a.workloads:
            for n in [n for n in a.ns if n >= 100_000]:
                rows.append(harness.run_case("mestim", wl, n, budget=a.budget, repeats=a.repeats, float32=True))
                print(f"{wl} mestim float32 n={n:,}: warm {harness.seconds_text(rows[-1].get('warm_s'))}")
    meta["load_average_end"] = os.getloadavg()
    meta["targets"] = targets(rows)
    notes = ("Workloads of `benchmarks/workloads.py` (pooled data, d = 10, 5 trials + target). delicatessen: "
             "MEstimator + ee_regression, solver 'lm', deriv_method='approx' (finite-difference bread: SEs differ "
             "from exact ones by ~1e-6 relative). statsmodels: GLM Binomial HC0 (W1). Peak memory: ru_maxrss per "
             "fresh process; 'fit memory' = peak after the fits − peak after loading the data.\n\n"
             "Targets: " + "; ".join(f"{k}: {v}" for k, v in meta["targets"].items()))
    out = harness.write_results("bench_scale_cpu", rows, meta, harness.markdown(rows), notes)
    print(f"results in {out}/bench_scale_cpu.md")


def targets(rows) -> dict:
    def get(tool, wl, n):
        return next((r for r in rows if r["tool"] == tool and r["workload"] == wl and r["n"] == n
                     and not r.get("float32") and "cold_s" in r), None)
    m, d = get("mestim", "W2", 100_000), get("delicatessen", "W2", 100_000)
    if m and d and m.get("warm_s"):
        t, kind = (d["warm_s"], "warm") if d.get("warm_s") else (d["cold_s"], "cold: its warm runs were skipped")
        ratio = t / m["warm_s"]
        return {"W2 n=1e5 delicatessen ÷ mestim warm (target ≥ 100)":
                f"{ratio:.0f}× (delicatessen {kind}; {'met' if ratio >= 100 else 'not met'})"}
    return {"W2 n=1e5 vs delicatessen": "not measured in this run"}


# ---------------------------------------------------------------------------------------------- GPU
def bandwidth(gib=4, reps=10) -> float:
    """Read bandwidth (bytes/s) of the default device: best time of a sum over a ``gib`` GiB float32 array."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(int(gib * 2**30) // 4, jnp.float32)
    f = jax.jit(lambda v: jnp.sum(v, dtype=jnp.float32))
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    del x
    return gib * 2**30 / best


def device_fit(problem, options, source):
    """The on-device part of ``mestim.fit``: the solve of every level and the sandwich, on a source whose slabs
    are already on the device; returns the Result and the passes over the rows it made."""
    from mestim.driver import solve_stack
    from mestim.estimate import assemble

    before = source.passes
    theta, moments, iterations = solve_stack(source, problem.init, problem.labels, options)
    return assemble(problem, source, theta, moments, options, iterations=iterations), source.passes - before


def gpu(a):
    import statistics

    import jax
    import numpy as np

    import mestim
    from mestim.estimate import kernel_for
    from mestim.options import FitOptions
    from mestim.problem import prepare
    from mestim.sources import InMemory

    dev = jax.devices()[0]
    meta = dict(hardware=harness.hardware(), device=str(dev), device_kind=dev.device_kind, n_devices=jax.device_count(),
                started=time.strftime("%Y-%m-%d %H:%M:%S"))
    meta["bandwidth_GBps"] = bw = bandwidth(a.bandwidth_gib) / 1e9
    print(f"device {dev.device_kind}: measured read bandwidth {bw:.0f} GB/s", flush=True)
    rows = []
    for n in a.gpu_ns:
        cols = W.pooled_data(n, seed=0)
        for wl in a.workloads:
            data = W.add_design(cols) if wl == "W3" else cols
            row = dict(workload=wl, n=n, data_dtype=a.dtype)
            try:
                t = time.perf_counter()
                res = mestim.fit(W.mestim_stack(wl), data, data_dtype=a.dtype, chunk_size=a.chunk)
                row["cold_fit_s"] = time.perf_counter() - t
                ts = []
                for _ in range(2):
                    t = time.perf_counter()
                    mestim.fit(W.mestim_stack(wl), data, data_dtype=a.dtype, chunk_size=a.chunk)
                    ts.append(time.perf_counter() - t)
                row["fit_s"] = min(ts)
                options = FitOptions(chunk_size=a.chunk, data_dtype=a.dtype)
                problem = prepare(W.mestim_stack(wl), data)
                source = InMemory(kernel_for(problem, options), problem.used, problem.w, dtype=options.data_dtype)
                device_fit(problem, options, source)  # compiled already; warms the device path
                ts = []
                for _ in range(3):
                    t = time.perf_counter()
                    r2, passes = device_fit(problem, options, source)
                    ts.append(time.perf_counter() - t)
                itemsize = 4 if a.dtype == "float32" else 8
                nbytes = sum(v[:1].size for v in problem.used.values()) * n * itemsize + 8 * n
                floor = passes * nbytes / (bw * 1e9)
                row.update(device_s=statistics.median(ts), passes=passes, bytes_per_pass=nbytes,
                           roofline_s=floor, roofline_fraction=floor / statistics.median(ts),
                           theta_last=float(res.theta[-1]), se_last=float(res.se[-1]),
                           max_dtheta_device_vs_fit=float(np.max(np.abs(r2.theta - res.theta))))
                del problem, source
            except Exception as e:  # out of memory at the largest n, …: record and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        del cols
    if a.stream_n:
        rows.append(stream_row(a))
    meta["targets"] = {"W2 n=1e8 device time ≤ 1 s, within 3× of the roofline": next(
        (f"device {r['device_s']:.3f} s, roofline fraction {r['roofline_fraction']:.2f}" for r in rows
         if r.get("workload") == "W2" and r.get("n") == 10**8 and "device_s" in r), "not measured")}
    table = ["| workload | n | data | cold fit | warm fit (host prep + transfer) | warm on-device | passes | "
             "bytes/pass | roofline | fraction of roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "device_s" in r:
            table.append(f"| {r['workload']} | {r['n']:,} | {r['data_dtype'] or 'float64'} | {r['cold_fit_s']:.2f} s | "
                         f"{r['fit_s']:.3f} s | {r['device_s'] * 1e3:.1f} ms | {r['passes']} | "
                         f"{r['bytes_per_pass'] / 1e9:.2f} GB | {r['roofline_s'] * 1e3:.1f} ms | "
                         f"{r['roofline_fraction']:.2f} |")
        elif "stream_s" in r:
            table.append(f"| W2 streamed | {r['n']:,} | float32 | | {r['stream_s']:.1f} s | | {r['passes']} | | | |")
        else:
            table.append(f"| {r.get('workload')} | {r.get('n'):,} | | {r.get('error')} | | | | | | |")
    notes = f"Device {meta['device_kind']}, measured read bandwidth {bw:.0f} GB/s."
    out = harness.write_results("bench_scale_gpu", rows, dict(meta, budget="n/a"), "\n".join(table), notes)
    print(f"results in {out}/bench_scale_gpu.md")


def stream_row(a):
    """W2 streamed from host batches (a pool of distinct batches, cycled to reach ``stream_n`` rows)."""
    from mestim.scale import fit_stream

    pool = [W.pooled_data(a.batch, seed=100 + i) for i in range(a.pool)]
    n_batches = -(-int(a.stream_n) // a.batch)

    def source():
        for b in range(n_batches):
            yield pool[b % len(pool)]
    t = time.perf_counter()
    res = fit_stream(W.mestim_stack("W2"), source, batch_rows=a.batch, chunk_size=a.chunk, data_dtype="float32",
                     progress=True)
    row = dict(workload="W2 streamed", n=n_batches * a.batch, stream_s=time.perf_counter() - t,
               passes=int(res.notes[-1].split("rows in batches of")[1].split(", ")[1].split()[0]),
               theta_last=float(res.theta[-1]),
               se_last=float(res.se[-1]))
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3"])
    p.add_argument("--ns", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--budget", type=float, default=60.0, help="seconds per fit past which a peer is skipped")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-float32", action="store_true")
    p.add_argument("--gpu", action="store_true", help="GPU mode (mestim only, roofline)")
    p.add_argument("--gpu-ns", type=int, nargs="+", default=[10**6, 10**7, 10**8])
    p.add_argument("--dtype", default=None, help="GPU mode: data dtype (float32 for the float32 data path)")
    p.add_argument("--chunk", type=int, default=None, help="GPU mode: rows per chunk (default: mestim's choice)")
    p.add_argument("--bandwidth-gib", type=float, default=4, help="GPU mode: size of the bandwidth probe (GiB)")
    p.add_argument("--stream-n", type=float, default=0, help="GPU mode: rows of the streamed W2 fit (e.g. 1e9)")
    p.add_argument("--batch", type=int, default=1 << 23, help="streamed fit: rows per host batch")
    p.add_argument("--pool", type=int, default=4, help="streamed fit: distinct host batches cycled")
    a = p.parse_args(argv)
    gpu(a) if a.gpu else cpu(a)


if __name__ == "__main__":
    main()
