"""Issue 10 benchmark: streamed fits from Parquet in bounded memory, against a plain pyarrow read of the same file.

    python -m benchmarks.bench_stream                       # n = 1e6 and 1e7 (~10 min on 2 cores)
    python -m benchmarks.bench_stream --ns 1000000 --no-dask

For each n, a Parquet file of the pooled data (:func:`benchmarks.workloads.pooled_data`, 22 float64 columns,
row groups of 131,072 rows, page checksums, snappy) is written once (in pieces: the writer never holds all rows).
Every measurement then runs in a fresh process and reports its peak resident set (``ru_maxrss``; the parent
writes no data, since Linux starts a child's ``ru_maxrss`` from its parent's RSS):

- ``pyarrow read``: ``pyarrow.parquet.ParquetFile(path).iter_batches()`` with pyarrow's defaults, every column
  turned into NumPy (what a plain reader does), batches of ``--batch`` rows;
- ``mestim.scale.batches``: the same file through mestim's reader (checksums verified, chunks checked);
- ``fit_stream W2``: the W2 stack (:func:`benchmarks.workloads.mestim_stack`, p = 27) streamed from the file
  (float64, and float32 data at the smallest n), ``--batch`` rows per batch (and two other batch sizes at the
  smallest n, for the per-batch-row cost of the bound); rows/s = rows × passes ÷ time;
- ``fit in memory``: ``mestim.fit`` on the whole file (smallest n): the reference the streamed fits must equal;
- ``Dask``: ``fit_stream`` on ``dask.dataframe.read_parquet(path)`` with a ``distributed.LocalCluster`` of 2
  worker processes × 1 thread (smallest n): the partitions are read and summed on the workers;
- ``two processes``: ``fit_stream(..., devices="all")`` in two processes joined by ``jax.distributed`` (smallest n),
  each streaming every other batch of the file: time from launch to both results (start-up included), each
  process's own fit time and peak RSS beside it.

Results: ``benchmarks/results/bench_stream.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402

ROW_GROUP = 1 << 17
PIECE = 1 << 20  # rows generated and written at a time


def parquet_file(n: int, root: str) -> str:
    """The pooled data with ``n`` rows as a Parquet file (written once, piece by piece)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.workloads import pooled_data

    path = os.path.join(root, f"stream_n{n}.parquet")
    if not os.path.exists(path):
        os.makedirs(root, exist_ok=True)
        schema = pa.schema([(k, pa.float64()) for k in pooled_data(8)])
        with pq.ParquetWriter(path + ".tmp", schema, write_page_checksum=True) as writer:
            for seed, start in enumerate(range(0, n, PIECE)):
                writer.write_table(pa.table(pooled_data(min(PIECE, n - start), seed=seed)), row_group_size=ROW_GROUP)
        os.replace(path + ".tmp", path)
    return path


# ---------------------------------------------------------------------------------------------- one process
def peak_mb() -> float:
    """This process's peak resident set (``ru_maxrss``). On Linux it starts from the RSS of the process that
    forked it (kept across ``exec``), so the parent of the measured processes stays small: it writes no data."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hwm_mb() -> float:
    """The peak resident set of this process's own memory since ``exec`` (``VmHWM``): a check on ``peak_mb``."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024.0 for line in fh if line.startswith("VmHWM"))


def child(kind: str, path: str, batch: int, dtype: str | None) -> dict:
    os.environ.setdefault("MESTIM_CACHE_DIR", "off")  # honest cold fits: compile time counts

    out = dict(kind=kind, batch_rows=batch, data_dtype=dtype or "float64")
    if kind == "pyarrow read":
        import numpy as np
        import pyarrow.parquet as pq

        out["rss_base_mb"] = peak_mb()
        t, rows = time.perf_counter(), 0
        for b in pq.ParquetFile(path).iter_batches(batch_size=batch):
            rows += len([np.asarray(c.to_numpy(zero_copy_only=False)) for c in b.columns][0])
        out.update(seconds=time.perf_counter() - t, rows=rows, passes=1)
    elif kind == "mestim.scale.batches":
        from mestim.scale import batches

        out["rss_base_mb"] = peak_mb()
        t, rows = time.perf_counter(), 0
        for b in batches(path, batch):
            rows += len(b["x1"])
        out.update(seconds=time.perf_counter() - t, rows=rows, passes=1)
    elif kind == "two processes":
        return two_processes(path, batch, dtype)
    else:
        import mestim
        from benchmarks.workloads import mestim_stack
        from mestim.scale import fit_stream

        out["rss_base_mb"] = peak_mb()
        t = time.perf_counter()
        if kind == "fit in memory":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            data = {k: table.column(k).to_numpy() for k in table.column_names}
            del table
            res = mestim.fit(mestim_stack("W2"), data, data_dtype=dtype)
            passes = None
        elif kind == "Dask":
            import dask.dataframe as dd
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                out["cluster_start_s"] = time.perf_counter() - t
                t = time.perf_counter()
                frame = dd.read_parquet(path, split_row_groups=True)
                seen = []
                res = fit_stream(mestim_stack("W2"), frame, data_dtype=dtype, progress=seen.append)
                passes = len(seen)
                out["partitions"] = frame.npartitions
                out["worker_peak_mb"] = sorted(client.run(hwm_mb).values())
        else:
            seen = []
            res = fit_stream(mestim_stack("W2"), path, batch_rows=batch, data_dtype=dtype, progress=seen.append)
            passes = len(seen)
            out["pass_seconds"] = [round(s["seconds"], 3) for s in seen]
        out.update(seconds=time.perf_counter() - t, rows=res.n_rows, passes=passes, iterations=res.iterations,
                   theta=res.theta.tolist(), vcov=res.vcov.tolist(), se=res.se.tolist())
    out["rss_peak_mb"], out["vm_hwm_mb"] = peak_mb(), hwm_mb()
    return out


def two_processes(path: str, batch: int, dtype: str | None) -> dict:
    """Launch two ranks (``--child rank``) that fit together; rank 0's result, timed from launch to both done."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "benchmarks.bench_stream", "--child", "rank", "--path", path, "--batch", str(batch),
           "--port", port] + (["--dtype", dtype] if dtype else [])
    env = dict(os.environ, PYTHONPATH=harness.ROOT, JAX_PLATFORMS="cpu")
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--rank", str(rank)], cwd=harness.ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    ranks = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1800)
        line = next((ln for ln in stdout.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise RuntimeError(f"a rank of the two-process fit failed: {stderr[-2000:]}")
        ranks.append(json.loads(line))
    out = dict(ranks[0], seconds=time.perf_counter() - t, rank_fit_seconds=[r["seconds"] for r in ranks],
               rank_peak_mb=[r["rss_peak_mb"] for r in ranks])
    out["rss_peak_mb"] = max(r["rss_peak_mb"] for r in ranks)  # the larger rank's
    out["rss_base_mb"] = max(r["rss_base_mb"] for r in ranks)
    return out


def rank(path: str, batch: int, dtype: str | None, rank_id: int, port: str) -> None:
    """One of the two processes: streams batches rank_id, rank_id + 2, … of the file and prints its result."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank_id)
    import jax.experimental.multihost_utils
    import pyarrow.parquet as pq

    from benchmarks.workloads import mestim_stack
    from mestim.scale import fit_stream

    def my_batches():
        for i, b in enumerate(pq.ParquetFile(path).iter_batches(batch_size=batch)):
            if i % 2 == rank_id:
                yield b

    out = dict(kind="two processes", batch_rows=batch, data_dtype=dtype or "float64", rss_base_mb=peak_mb())
    t, seen = time.perf_counter(), []
    res = fit_stream(mestim_stack("W2"), my_batches, batch_rows=batch, data_dtype=dtype, devices="all",
                     progress=seen.append)
    out.update(seconds=time.perf_counter() - t, rows=res.n_rows, passes=len(seen), iterations=res.iterations,
               theta=res.theta.tolist(), vcov=res.vcov.tolist(), se=res.se.tolist(), rss_peak_mb=peak_mb(),
               vm_hwm_mb=hwm_mb())
    print(json.dumps(out), flush=True)
    jax.experimental.multihost_utils.sync_global_devices("printed")  # both have printed before rank 0 leaves
    os._exit(0)  # skip JAX's shutdown barrier


def run(kind, path, n, batch, dtype=None, timeout=1800) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_stream", "--child", kind, "--path", path, "--batch", str(batch)]
    if dtype:
        cmd += ["--dtype", dtype]
    env = dict(os.environ, PYTHONPATH=harness.ROOT)
    out = subprocess.run(cmd, cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return dict(kind=kind, n=n, batch_rows=batch, error=(out.stderr.strip().splitlines() or ["?"])[-1])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(n=n, file_mb=os.path.getsize(path) / 1e6)
    if row.get("passes"):
        row["rows_per_s"] = row["rows"] * row["passes"] / row["seconds"]
    speed = f", {row['rows_per_s']:,.0f} rows/s" if "rows_per_s" in row else ""
    print(f"n={n:>10,} {kind:22s} {row.get('data_dtype', ''):8s} batch {batch:>7,}: {row['seconds']:7.1f} s, "
          f"peak RSS {row['rss_peak_mb']:6.0f} MB{speed}", flush=True)
    return row


def agreement(rows) -> None:
    """Max |Δθ|, max |Δθ|/SE and the relative vcov difference of every fit against the in-memory float64 fit."""
    import numpy as np

    ref = next((r for r in rows if r["kind"] == "fit in memory" and r["data_dtype"] == "float64" and "theta" in r),
               None)
    if ref is None:
        return
    theta, vcov, se = (np.asarray(ref[k]) for k in ("theta", "vcov", "se"))
    for r in rows:
        if "theta" in r and r is not ref and r["n"] == ref["n"]:
            d = np.abs(np.asarray(r["theta"]) - theta)
            r.update(max_dtheta=float(d.max()), max_dtheta_se=float((d / se).max()),
                     vcov_rel=float(np.abs(np.asarray(r["vcov"]) - vcov).max() / np.abs(vcov).max()),
                     se_rel=float(np.max(np.abs(np.asarray(r["se"]) / se - 1))))


def table(rows) -> str:
    lines = ["| n | file | what | data | batch rows | time | passes | rows/s | peak RSS | above imports | "
             "vs in-memory: max abs Δθ (in SE) | rel Δvcov |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | | {r['kind']} | | {r['batch_rows']:,} | {r['error']} | | | | | | |")
            continue
        what = r["kind"] + (f" (workers' peak RSS {' and '.join(f'{m:.0f}' for m in r['worker_peak_mb'])} MB)"
                            if "worker_peak_mb" in r else "")
        if "rank_fit_seconds" in r:
            what += (f" (each fits in {' and '.join(f'{x:.1f}' for x in r['rank_fit_seconds'])} s, peak RSS "
                     f"{' and '.join(f'{m:.0f}' for m in r['rank_peak_mb'])} MB)")
        cells = [f"{r['n']:,}", f"{r['file_mb']:.0f} MB", what, r["data_dtype"],
                 "" if r["kind"] in ("fit in memory", "Dask") else f"{r['batch_rows']:,}", f"{r['seconds']:.1f} s",
                 str(r.get("passes") or ""), f"{r['rows_per_s']:,.0f}" if "rows_per_s" in r else "",
                 f"{r['rss_peak_mb']:.0f} MB", f"{r['rss_peak_mb'] - r['rss_base_mb']:.0f} MB",
                 f"{r['max_dtheta']:.1e} ({r['max_dtheta_se']:.1e})" if "max_dtheta" in r else "",
                 f"{r['vcov_rel']:.1e}" if "vcov_rel" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bound(rows) -> dict:
    """Peak RSS of the float64 fits at the smallest n as a + b × batch_rows (least squares over batch sizes)."""
    import numpy as np

    n0 = min(r["n"] for r in rows)
    fits = [r for r in rows if r["kind"] == "fit_stream W2" and r["n"] == n0 and r["data_dtype"] == "float64"
            and "rss_peak_mb" in r]
    if len({r["batch_rows"] for r in fits}) < 2:
        return {}
    x = np.array([r["batch_rows"] for r in fits], float)
    y = np.array([r["rss_peak_mb"] for r in fits])
    b, a = np.polyfit(x, y, 1)
    return {"rss_intercept_mb": float(a), "rss_bytes_per_batch_row": float(b * 2**20)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--batch", type=int, default=1 << 16)
    p.add_argument("--other-batches", type=int, nargs="*", default=[1 << 14, 1 << 18])
    p.add_argument("--root", default=os.environ.get("MESTIM_BENCH_DATA", "/tmp/mestim_bench_data"))
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--no-processes", action="store_true", help="skip the two-process fit")
    p.add_argument("--write", type=int, help="write the Parquet file of this many rows (in its own process)")
    p.add_argument("--child")
    p.add_argument("--path")
    p.add_argument("--dtype", default=None)
    p.add_argument("--rank", type=int)
    p.add_argument("--port")
    a = p.parse_args(argv)
    if a.child == "rank":
        rank(a.path, a.batch, a.dtype, a.rank, a.port)
    if a.write:
        parquet_file(a.write, a.root)
        return
    if a.child:
        print(json.dumps(child(a.child, a.path, a.batch, a.dtype)))
        return
    meta = dict(hardware=harness.hardware(), budget="n/a", started=time.strftime("%Y-%m-%d %H:%M:%S"),
                batch_rows=a.batch, row_group=ROW_GROUP)
    rows, smallest = [], min(a.ns)
    for n in a.ns:
        path = os.path.join(a.root, f"stream_n{n}.parquet")
        subprocess.run([sys.executable, "-m", "benchmarks.bench_stream", "--write", str(n), "--root", a.root],
                       cwd=harness.ROOT, env=dict(os.environ, PYTHONPATH=harness.ROOT), check=True)
        rows.append(run("pyarrow read", path, n, a.batch))
        rows.append(run("mestim.scale.batches", path, n, a.batch))
        rows.append(run("fit_stream W2", path, n, a.batch))
        if n == smallest:
            rows.append(run("fit in memory", path, n, a.batch))
            rows.append(run("fit_stream W2", path, n, a.batch, "float32"))
            rows.append(run("fit in memory", path, n, a.batch, "float32"))
            rows += [run("fit_stream W2", path, n, b) for b in a.other_batches]
            if not a.no_dask:
                rows.append(run("Dask", path, n, a.batch))
            if not a.no_processes:
                rows.append(run("two processes", path, n, a.batch))
    agreement(rows)
    for r in rows:
        for k in ("theta", "vcov", "se"):
            r.pop(k, None)
    meta["load_average_end"] = os.getloadavg()
    meta["bound"] = bound(rows)
    notes = ("Every row is a fresh process started by a parent that holds no data (ru_maxrss counts the forking "
             "parent's RSS); peak RSS = ru_maxrss (interpreter, JAX and the compiled program included; VmHWM in the "
             "JSON agrees); 'above imports' = peak RSS − RSS after importing the libraries; a Dask row's peak RSS "
             "is the client's, its workers' are given beside it; a two-process row's time runs from launch to both "
             "results (start-up included), its peak RSS is the larger rank's. rows/s = rows × passes ÷ wall time "
             "(a fit's time includes tracing and compiling). Agreement: against `mestim.fit` on all rows in memory "
             "(float64). "
             + (f"Peak RSS of the float64 streamed fits at n = {smallest:,} ≈ "
                f"{meta['bound']['rss_intercept_mb']:.0f} MB + {meta['bound']['rss_bytes_per_batch_row']:.0f} bytes "
                "× batch_rows." if meta["bound"] else ""))
    out = harness.write_results("bench_stream", rows, meta, table(rows), notes)
    print(f"results in {out}/bench_stream.md")


if __name__ == "__main__":
    main()
