"""Optuna cross-check of the exact enumeration: how often the Optuna search finds the exact optimum.

    python benchmarks/optuna_crosscheck.py                      # the two checks below, 10 seeds each
    python benchmarks/optuna_crosscheck.py --seeds 50 --json out.json
    python benchmarks/optuna_crosscheck.py --all-examples       # both checks on every case in configs/examples

(a) The default decision space of a case (its vial catalogue × the weekdays of the scenario window) with a
    budget of half the candidates: over ``--seeds`` Optuna seeds, how often the search matches the exact
    optimum (``matches_exact``: the same candidate, or a P(targets) within the tie tolerance of the exact best).
    Goal: at least 9 of 10.
(b) A large space: vials 3–20 GBq by 0.5 × treatment every hour from 72 to 216 h after calibration (5075
    candidates) with 200 trials: the gap between the exact best P(targets) and Optuna's best, per seed.
    Goal: every gap ≤ 0.01.

Each check runs every search of :mod:`y90opt.optimise` (``bracket``, the default; ``activity``; ``decision``,
plain TPE over (vial, time)), so the default is compared with plain TPE on the same evaluator (the same
10^5 samples, common to every candidate). The exact answer is :func:`y90opt.planner.choose` on the full grid.
Times are wall-clock seconds per search on this machine's CPU (SQLite is not used: in-memory studies).
Exit status 1 when the default search misses a goal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np
import timing

from y90opt import engine, planner
from y90opt.case import load_case
from y90opt.optimise import SEARCHES, optuna_search
from y90opt.outcomes import active_rules, compile_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "configs", "examples", "multifocal-unilobar.toml")
LARGE_VIALS = (3.0, 20.0, 0.5)  # GBq: min, max, step
LARGE_HOURS = (72.0, 216.0, 1.0)  # h after calibration
LARGE_TRIALS = 200
GOAL_MATCHES = 9  # of 10 seeds, scaled to --seeds
GOAL_GAP = 0.01

def case_path(arg: str | None) -> str:
    return arg or EXAMPLE  # the example ships with the repository


class Plan:
    """One case sampled once: the evaluator shared by every space and search."""

    def __init__(self, path: str, n: int, seed: int) -> None:
        self.path = path
        self.case = load_case(path)
        self.ar = active_rules(self.case)
        self.model = engine.Model.from_case(self.case)
        self.rt = compile_rules(self.ar, self.model.quantities)
        t0 = time.perf_counter()
        self.ev, _, _ = planner.build_evaluator(self.model, self.rt, n, seed, engine.DEFAULT_CHUNK, "float32",
                                                keep_factors=False)
        self.sample_s = time.perf_counter() - t0
        self.risk = self.case.plan.risk
        self.tol = self.case.plan.tie_tolerance
        self.half_life_h = self.case.conventions.half_life_h

    def space(self, vial_range=None, hours_range=None):
        space = planner.decision_space(self.case, self.ar.scenario.window, vial_range, hours_range)
        t0 = time.perf_counter()
        res = planner.evaluate_space(self.case, space, self.ev, self.risk)
        return space, res["choice"], time.perf_counter() - t0

    def run(self, space, exact, trials: int, seeds: int, search: str) -> dict[str, Any]:
        rows = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            out = optuna_search(self.ev, space, self.risk, self.tol, trials=trials, seed=seed, exact=exact,
                                half_life_h=self.half_life_h, search=search)
            rows.append({"seed": seed, "wall_s": time.perf_counter() - t0, "matches_exact": out["matches_exact"],
                         "gap": out["gap"], "best": out["best"], "evaluations": out["evaluations"]})
        gaps = [r["gap"] for r in rows]
        return {
            "search": search,
            "trials": trials,
            "batch": out["batch"],
            "sampler": out["sampler"],  # the last seed's
            "matches": sum(bool(r["matches_exact"]) for r in rows),
            "seeds": seeds,
            "max_gap": None if None in gaps else max(gaps),
            "gaps": gaps,
            "median_wall_s": statistics.median(r["wall_s"] for r in rows),
            "runs": rows,
        }


def describe_exact(space, exact) -> dict[str, Any]:
    i, j = exact["index"]
    return {"candidates": space.size, "vials": len(space.vials_gbq), "times": len(space.times),
            "feasible": bool(exact["feasible"]), "vial_gbq": space.vials_gbq[i],
            "hours_after_calibration": float(space.hours[j]), "best_p": float(exact["best_p"]),
            "feasible_candidates": int(exact["feasible_mask"].sum())}


def fmt_gaps(gaps) -> str:
    return " ".join("–" if g is None else f"{g:.4f}" for g in gaps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help="case file (default: configs/examples/multifocal-unilobar.toml)")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--sample-seed", type=int, default=0, help="seed of the Monte Carlo samples")
    ap.add_argument("--seeds", type=int, default=10, help="Optuna seeds 0..S-1")
    ap.add_argument("--searches", default=",".join(SEARCHES), help="comma list of searches")
    ap.add_argument("--skip-large", action="store_true", help="only check (a)")
    ap.add_argument("--all-examples", action="store_true", help="also check every case in configs/examples")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    searches = a.searches.split(",")
    env = timing.environment()
    print(f"date {env['date']}  machine {env['cpu_cores']}-core {env['cpu_model']}  {env['platform']}")
    print("versions " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"  commit {env['git_commit']}")
    print(f"backend {engine_backend()}  samples {a.samples} (seed {a.sample_seed}), float32, Optuna seeds 0..{a.seeds - 1}")
    res: dict[str, Any] = {"environment": env, "samples": a.samples, "sample_seed": a.sample_seed, "seeds": a.seeds}
    ok = True
    goal_matches = int(np.ceil(GOAL_MATCHES / 10 * a.seeds))

    paths = [case_path(a.case)]
    if a.all_examples:
        ex = os.path.join(ROOT, "configs", "examples")
        paths += sorted(os.path.join(ex, f) for f in os.listdir(ex) if f.endswith(".toml") and os.path.join(ex, f) not in paths)
    res["default_space"] = []
    plans = {}
    for k, path in enumerate(paths):
        plan = plans[path] = Plan(path, a.samples, a.sample_seed)
        space, exact, exact_s = plan.space()
        trials = max(1, space.size // 2)
        d = describe_exact(space, exact)
        print(f"\n(a) {os.path.relpath(path, ROOT)}: {d['vials']} vials × {d['times']} times = {d['candidates']} "
              f"candidates, {trials} trials (half); risk {plan.risk}, tie tolerance {plan.tol}")
        print(f"    exact: {d['vial_gbq']:g} GBq at {d['hours_after_calibration']:.1f} h, best P(targets) "
              f"{d['best_p']:.4f}, {d['feasible_candidates']} feasible; enumeration {exact_s * 1e3:.2f} ms, "
              f"sampling {plan.sample_s:.1f} s")
        entry = {"case": os.path.relpath(path, ROOT), "exact": d, "exact_s": exact_s, "results": []}
        for search in searches:
            r = plan.run(space, exact, trials, a.seeds, search)
            entry["results"].append(r)
            verdict = "met" if r["matches"] >= goal_matches else "MISSED"
            goal = "" if k else f"  goal ≥ {goal_matches}: {verdict}"
            print(f"    {search:9s} matches {r['matches']:2d}/{r['seeds']}  gaps {fmt_gaps(r['gaps'])}  "
                  f"{r['median_wall_s']:.2f} s/search{goal}")
            if k == 0 and search == "bracket" and r["matches"] < goal_matches:
                ok = False
        res["default_space"].append(entry)

    res["large_space"] = []
    for k, path in enumerate([] if a.skip_large else paths):
        plan = plans[path]
        space, exact, exact_s = plan.space(LARGE_VIALS, LARGE_HOURS)
        d = describe_exact(space, exact)
        print(f"\n(b) {os.path.relpath(path, ROOT)}: vials {LARGE_VIALS[0]:g}–{LARGE_VIALS[1]:g} GBq by "
              f"{LARGE_VIALS[2]:g} × hours {LARGE_HOURS[0]:g}–{LARGE_HOURS[1]:g} by {LARGE_HOURS[2]:g} = "
              f"{d['candidates']} candidates, {LARGE_TRIALS} trials")
        print(f"    exact: {d['vial_gbq']:g} GBq at {d['hours_after_calibration']:.1f} h, best P(targets) "
              f"{d['best_p']:.4f}, {d['feasible_candidates']} feasible; enumeration {exact_s * 1e3:.2f} ms")
        entry = {"case": os.path.relpath(path, ROOT), "exact": d, "exact_s": exact_s, "results": []}
        for search in searches:
            r = plan.run(space, exact, LARGE_TRIALS, a.seeds, search)
            entry["results"].append(r)
            met = r["max_gap"] is not None and r["max_gap"] <= GOAL_GAP
            goal = "" if k else f"  goal ≤ {GOAL_GAP}: {'met' if met else 'MISSED'}"
            print(f"    {search:9s} max gap {r['max_gap']:.4f}  matches {r['matches']:2d}/{r['seeds']}  "
                  f"{r['median_wall_s']:.2f} s/search{goal}")
            print(f"              gaps per seed {fmt_gaps(r['gaps'])}")
            if k == 0 and search == "bracket" and not met:
                ok = False
        res["large_space"].append(entry)

    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1, default=float)
        print(f"\nwrote {a.json}")
    print("\n" + ("default search: every goal met" if ok else "default search: a goal was MISSED"))
    return 0 if ok else 1


def engine_backend() -> str:
    import jax

    return f"jax {jax.default_backend()}"


if __name__ == "__main__":
    sys.exit(main())
