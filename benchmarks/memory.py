"""Peak memory of ``simulate`` versus the sample count: one fresh subprocess per N, its own ``ru_maxrss``.

    python benchmarks/memory.py                       # N = 1e3 … 1e7, float32
    python benchmarks/memory.py --n 1e3 1e8 1e9       # chosen sizes
    python benchmarks/memory.py --child 1e6           # one measurement (what the parent runs)

Each child imports y90opt, runs ``simulate_case`` on the benchmark case and reports its peak resident set
with the wall time: ``VmHWM`` of /proc/self/status (the high-water mark of this process's own memory; Linux)
and ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` beside it. On Linux ru_maxrss survives fork + exec: a child
started by a large parent (run.py after the planning section) reports at least the parent's size, so the
high-water mark is the figure; ru_maxrss is kept for the record and is the fallback elsewhere. ``simulate`` keeps every
sample up to ``EXACT_QUANTILE_LIMIT`` (exact quantiles: memory O(N) by design), then streams (histogram
quantiles): above that limit the peak must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mib() -> tuple[float, float]:
    """(own high-water mark from /proc/self/status VmHWM, or ru_maxrss when unavailable; ru_maxrss), MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, maxrss
    except OSError:
        pass
    return maxrss, maxrss


def child(n: int, dtype: str, chunk: int | None) -> dict:
    """Run in the child process: simulate n samples, return peak RSS and wall time."""
    from numpy_pipeline import BENCH_CASE

    from y90opt.case import parse_case
    from y90opt.simulation import EXACT_QUANTILE_LIMIT, simulate_case

    case = parse_case(BENCH_CASE, "bench.toml")
    rss0, _ = peak_rss_mib()
    t0 = time.perf_counter()
    res = simulate_case(case, n=n, seed=0, chunk=chunk, dtype=dtype)
    wall = time.perf_counter() - t0
    rss, maxrss = peak_rss_mib()
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    return {
        "n": n,
        "dtype": dtype,
        "chunk": chunk,
        "backend": jax.default_backend(),
        "peak_rss_mib": rss,
        "peak_rss_before_run_mib": rss0,
        "ru_maxrss_mib": maxrss,
        "wall_s": wall,
        "samples_per_s": n / wall,
        "quantiles": "exact (samples kept)" if n <= EXACT_QUANTILE_LIMIT else "streaming (histogram)",
        "p_success": res.summary["p_success"],
        "device_peak_mib": stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None,
    }


def measure(ns: list[int], dtype: str = "float32", chunk: int | None = None, timeout_s: float | None = None,
            log=None) -> list[dict]:
    """One subprocess per N (fresh interpreter, so one peak does not hide another)."""
    out = []
    for n in ns:
        cmd = [sys.executable, os.path.join(HERE, "memory.py"), "--child", str(n), "--dtype", dtype]
        if chunk:
            cmd += ["--chunk", str(chunk)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            out.append({"n": n, "dtype": dtype, "skipped": f"over {timeout_s:.0f} s"})
            if log:
                log(out[-1])
            continue
        if p.returncode:
            out.append({"n": n, "dtype": dtype, "error": p.stderr.strip().splitlines()[-1:]})
            if log:
                log(out[-1])
            continue
        row = json.loads(p.stdout.strip().splitlines()[-1])
        out.append(row)
        if log:
            log(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", type=float, help="measure one N in this process (used by the parent)")
    ap.add_argument("--n", type=float, nargs="*", default=[1e3, 1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(int(a.child), a.dtype, a.chunk)))
        return 0
    # one line per N as it finishes (a run cut short keeps what it measured); --json: one JSON object per line
    measure([int(x) for x in a.n], a.dtype, a.chunk, log=lambda r: print(json.dumps(r) if a.json else describe(r), flush=True))
    return 0


def describe(r: dict) -> str:
    if "peak_rss_mib" not in r:
        return f"N = {r['n']:>13,}  {r.get('skipped') or r.get('error')}"
    dev = f", device peak {r['device_peak_mib']:.0f} MiB" if r.get("device_peak_mib") is not None else ""
    return (f"N = {r['n']:>13,}  peak RSS {r['peak_rss_mib']:8.1f} MiB{dev}  {r['wall_s']:8.2f} s  "
            f"({r['quantiles']}, {r['dtype']} on {r['backend']})")

if __name__ == "__main__":
    sys.exit(main())
