"""Before/after timing of two checkouts of y90opt, interleaved in fresh processes on the same machine.

    git worktree add /tmp/before <commit>
    python benchmarks/compare_commits.py /tmp/before . --rounds 2

Each round runs one process per checkout (alternating), each timing ``plan_case`` (6 × 5 candidates) and
``simulate_case`` at ``--n`` samples on ``numpy_pipeline.BENCH_CASE``: one warm-up call, then ``--repeats``
warm calls. Prints one JSON line per process and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
root, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [root, root + "/benchmarks"]
import numpy_pipeline as npp
import y90opt
from y90opt import planner

try:  # the module was simulate.py before it was named for its stage
    from y90opt import simulation as simulate
except ImportError:
    from y90opt import simulate
from y90opt.case import parse_case
assert y90opt.__file__.startswith(root), y90opt.__file__
case = parse_case(npp.BENCH_CASE, "bench.toml")
calls = {"plan_case": lambda: planner.plan_case(case, n=n, seed=0, optuna_trials=0).dataset,  # built lazily since 0.4.0
         "simulate": lambda: simulate.simulate_case(case, n=n, seed=0).summary}
out = {"root": root}
for name, fn in calls.items():
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    out[name] = sorted(ts)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--n", type=int, default=10**6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    roots = [os.path.abspath(a.before), os.path.abspath(a.after)]
    results: dict[str, dict[str, list[float]]] = {r: {} for r in roots}
    for _ in range(a.rounds):
        for root in roots:
            line = subprocess.run([sys.executable, "-c", CHILD, root, str(a.n), str(a.repeats)], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(line, flush=True)
            for k, v in json.loads(line).items():
                if k != "root":
                    results[root].setdefault(k, []).append(statistics.median(v))
    for k in results[roots[0]]:
        b, f = statistics.median(results[roots[0]][k]), statistics.median(results[roots[1]][k])
        print(f"{k}: before {b:.3g} s, after {f:.3g} s, ×{b / f:.2f} (medians of the rounds' medians)")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
