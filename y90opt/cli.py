"""The ``y90opt`` command line: a thin layer over :mod:`y90opt.api`. It parses arguments, calls the API and
prints; it computes no physics, and no library module imports it.

Exit status: 0 success (an infeasible plan is an answer), 2 bad input (one line naming the file and the
field, no traceback), 1 internal error (one line).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence

from ._version import __version__
from .errors import (
    InputError,
    _one_line,  # the messages' one-line form, shortened as every error's is
)

EXAMPLE = "configs/examples/multifocal-unilobar.toml"

#: A user error detected by the command line itself (an argument, an output path): the library's one type.
BadInput = InputError

#: Largest sample count accepted on the command line (the API's limit).
MAX_SAMPLES = 10**12


def _int_arg(s: str, minimum: int, what: str) -> int:
    """An integer (``1e6`` notation allowed when it is a whole number) ≥ ``minimum``."""
    try:
        x = float(s)
        v = int(x)
        if x != v:
            raise ValueError
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if not minimum <= v <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"expected {what} between {minimum} and {MAX_SAMPLES:.0e}, got {s!r}")
    return v


def _positive_int(s: str) -> int:
    return _int_arg(s, 1, "a positive integer")


def _nonnegative_int(s: str) -> int:
    return _int_arg(s, 0, "an integer ≥ 0")


def _sobol_samples(s: str) -> int:
    return _int_arg(s, 64, "at least 64 base samples")


def _seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {s!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError("seed must be in [0, 2**32)")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="y90opt",
        description="Y-90 glass microsphere planning under measurement uncertainty. Research software: "
        "check every plan independently before clinical use.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  y90opt plan {EXAMPLE} --samples 100000 --seed 1 --out results/",
    )
    p.add_argument("--version", action="version", version=f"y90opt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sp

    def mc_flags(sp, samples: int, sample_type=_positive_int) -> None:
        sp.add_argument("--samples", type=sample_type, default=samples, metavar="N", help=f"Monte Carlo samples (default {samples})")
        sp.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed (default 0)")
        sp.add_argument("--chunk", type=_positive_int, default=None, metavar="C", help="samples per JAX call (results do not depend on it)")
        sp.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="floating-point precision (default float32)")

    sp = add("dose", "nominal doses for the case's [plan] vial and treatment time", f"y90opt dose {EXAMPLE} --json\n  y90opt dose {EXAMPLE} --prescribe normal_perfused=120")
    sp.add_argument("case")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--prescribe", metavar="QUANTITY=GY", action="append", default=[],
                    help="also report the vial activity (at treatment and calibration) that gives GY to QUANTITY "
                    "(e.g. normal_perfused=120, tumors.T1=205) at the [plan] treatment time; repeatable")

    sp = add("simulate", "Monte Carlo doses for the case's [plan] decision", f"y90opt simulate {EXAMPLE} --samples 1000000 --seed 1 -o sim.nc")
    sp.add_argument("case")
    mc_flags(sp, 100_000)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("-o", "--output", metavar="OUT.nc", help="write the results Dataset (NetCDF)")
    sp.add_argument("--keep-samples", action="store_true", help="store the raw samples in the Dataset (small runs)")

    sp = add("plan", "choose the vial and the treatment time", f"y90opt plan {EXAMPLE} --samples 100000 --seed 1 --out results/")
    sp.add_argument("case")
    mc_flags(sp, 100_000)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--out", metavar="DIR", help="write plan.nc, figures and report.html to DIR")
    sp.add_argument("--risk", type=float, default=None, help="override [plan].risk: each limit kept with P >= 1 - risk")
    sp.add_argument("--acceptable-success", type=float, default=None, metavar="P",
                    help="override [plan].acceptable_success (default 0.5): below it a feasible plan has status low-success")
    sp.add_argument("--optuna-trials", type=_nonnegative_int, default=None, metavar="T", help="Optuna trials for the cross-check (default: half the candidates, at most 200; 0 to skip)")
    sp.add_argument("--storage", default=None, help="Optuna storage: a path (SQLite) or an RDB URL; lets a study resume")
    sp.add_argument("--study-name", default=None, help="Optuna study name (with --storage)")
    sp.add_argument("--vial-range", default=None, metavar="MIN:MAX:STEP", help="candidate vials as a range in GBq, e.g. 3:20:0.5")
    sp.add_argument("--hours-range", default=None, metavar="MIN:MAX:STEP", help="candidate times in hours after calibration, e.g. 72:216:1 (kept only where the clinic calendar admits them)")
    sp.add_argument("--any-time", action="store_true", help="keep candidate times outside the clinic calendar (treatment days, holidays, clinic hours)")
    sp.add_argument("--fixed-date", action="store_true", help="the treatment is fixed at [plan].treatment: choose the vial and its calibration week")
    sp.add_argument("--calibration-weeks", type=_positive_int, default=2, metavar="W",
                    help="with --fixed-date: vials of this many calibration weeks (default 2: this week's and last week's)")
    sp.add_argument("--top", type=_positive_int, default=8, metavar="K", help="rows of each table in the text output (default 8; all in --json and the report)")
    sp.add_argument("--sensitivity-samples", type=_sobol_samples, default=None, metavar="N",
                    help="also run the Sobol sensitivity analysis (N base samples) at the recommendation and add "
                    "its tornado figures to the report (with --out)")

    sp = add("sensitivity", "Sobol sensitivity indices of every dose and of plan success", f"y90opt sensitivity {EXAMPLE} --samples 20000 --json")
    sp.add_argument("case")
    mc_flags(sp, 8192, _sobol_samples)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("-o", "--output", metavar="OUT.nc", help="write the indices Dataset (NetCDF)")
    sp.add_argument("--bootstrap", type=_nonnegative_int, default=200, metavar="B", help="bootstrap resamples for confidence intervals")

    sp = add("cohort", "plan every patient of a table from a template case (local processes or Dask)",
             "y90opt cohort template.toml patients.csv --out cohort/ --workers 2")
    sp.add_argument("template")
    sp.add_argument("patients", metavar="PATIENTS.csv")
    sp.add_argument("--out", metavar="DIR", required=True, help="cohort.csv, cohort.nc and one result per patient")
    sp.add_argument("--samples", type=_positive_int, default=100_000, metavar="N", help="Monte Carlo samples per patient")
    sp.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed (each patient: the same as plan --seed)")
    sp.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    sp.add_argument("--optuna-trials", type=_nonnegative_int, default=None, metavar="T", help="Optuna trials per patient (plan's default; 0 skips)")
    sp.add_argument("--executor", choices=("local", "dask"), default="local", help="local processes (default) or a Dask cluster")
    sp.add_argument("--address", default=None, help="Dask scheduler address (default: a LocalCluster for the run)")
    sp.add_argument("--workers", type=_positive_int, default=1, metavar="W", help="worker processes (default 1)")
    sp.add_argument("--write-cases", metavar="DIR", default=None, help="also write each patient's case file")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("trial", "a virtual trial: deterministic dosing policies against y90opt's plan, judged on realised doses",
             "y90opt trial configs/examples/multifocal-unilobar.toml --virtual 1000 --out trial/")
    sp.add_argument("template")
    sp.add_argument("patients", metavar="PATIENTS.csv", nargs="?", default=None, help="a cohort table (or --virtual N)")
    sp.add_argument("--virtual", type=_positive_int, default=None, metavar="N", help="N virtual patients from --population")
    sp.add_argument("--population", default="hcc", help="population file or packaged name (configs/populations/)")
    sp.add_argument("--out", metavar="DIR", default=None, help="trial.json and trial.csv")
    sp.add_argument("--samples", type=_positive_int, default=20_000, metavar="N", help="planning samples per patient")
    sp.add_argument("--truth-samples", type=_positive_int, default=400, metavar="M", help="realised draws per patient")
    sp.add_argument("--seed", type=_seed, default=0, metavar="S")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("measure", "volumes, T:N, lung shunt and lung mass from the case's [images]: the completed case",
             "y90opt measure case.toml -o measured.toml")
    sp.add_argument("case")
    sp.add_argument("-o", "--output", metavar="OUT.toml", default=None, help="write the completed case (never the input)")
    sp.add_argument("--json", action="store_true", help="print the measurements as JSON")

    sp = add("voxel", "the absorbed-dose map at [plan] from the case's [images] (local deposition or a dose-voxel kernel), "
             "VOI metrics and DVH",
             "y90opt voxel measured.toml --out voxel/")
    sp.add_argument("case")
    sp.add_argument("--method", choices=("ldm", "kernel"), default="ldm",
                    help="ldm: local deposition; kernel: dose-voxel kernel convolution")
    sp.add_argument("--kernel", metavar="TABLE", default=None,
                    help="for --method kernel: a radial Y-90 kernel table (r_mm,fraction with '# source:', or a "
                         "Graves et al. 2019 radial dose file), a Lanconelli et al. 2012 voxel S table, or 'loevinger' "
                         "(Loevinger's approximation); default: the built-in kernel fitted to Lanconelli et al.'s 3 mm table")
    sp.add_argument("--out", metavar="DIR", default=None, help="dose.nii.gz, dvh.csv and dvh.png")
    sp.add_argument("--case-out", metavar="OUT.toml", default=None, help="the case with each tumour's d70_ratio")
    sp.add_argument("--uncertainty", metavar="N", type=int, default=0,
                    help="N replicas of the voxel-level uncertainty (counts, mask margins, MAA-to-Y-90 mismatch)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the --uncertainty replicas")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("scenarios", "the DSC 2022 scenario rules with their sources", "y90opt scenarios --json")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("report", "rebuild the HTML report from saved plan results", "y90opt report results/plan.nc")
    sp.add_argument("results")
    sp.add_argument("--out", metavar="DIR", default=None, help="directory for report.html and figures (default: beside RESULTS)")
    sp.add_argument("--sensitivity", metavar="SENS.nc", default=None,
                    help="add the tornado figures and Sobol' table of this Dataset (from `sensitivity -o` or "
                    "`plan --sensitivity-samples`); default: sensitivity.nc beside RESULTS when it is there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0)
    if args.command in ("simulate", "plan", "sensitivity"):
        _compile_cache()
    try:
        with warnings.catch_warnings():
            # numerical warnings of the libraries never reach the user: a non-finite sample is counted and
            # reported by the engine itself (and stops the run above its threshold)
            warnings.simplefilter("ignore", RuntimeWarning)
            return int(COMMANDS[args.command](args) or 0)
    except InputError as e:
        print(f"y90opt: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("y90opt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one place internal errors become a message
        print(f"y90opt: internal error: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
        return 1


def _compile_cache() -> None:
    """JAX's persistent compilation cache, so repeated runs skip most compile time. Directory:
    ``$Y90OPT_CACHE_DIR`` or ``~/.cache/y90opt/jax``; ``Y90OPT_CACHE_DIR=""`` turns it off. Best effort: a
    directory that cannot be made leaves the cache off and changes no result."""
    path = os.environ.get("Y90OPT_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "y90opt", "jax"))
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        # every program, however fast it compiles (JAX's default keeps only those over 1 s; here the many
        # sub-second compiles of one plan add up to about 0.6 s of each run)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except (OSError, AttributeError, ValueError):
        return




# -- commands -------------------------------------------------------------------------------------------


def _emit(res, out_path: str | None, as_json: bool) -> int:
    """Write a result's Dataset to ``out_path`` (if given), then print its JSON summary or its text."""
    from .textout import dumps

    if out_path:
        from .results import write_netcdf

        write_netcdf(res.dataset, out_path)
    print(dumps(res.summary) if as_json else res.text())
    return 0


def _prescriptions(items: Sequence[str]) -> list[tuple[str, float]]:
    out = []
    for item in items:
        q, sep, gy = item.partition("=")
        try:
            dose_gy = float(gy)
        except ValueError:
            dose_gy = float("nan")
        if not sep or not 0 < dose_gy < math.inf:
            raise BadInput(f"--prescribe: expected QUANTITY=GY with GY > 0, got {item!r}")
        out.append((q, dose_gy))
    return out


def cmd_dose(args) -> int:
    from . import api

    res = api.dose(api.load_case(args.case), prescribe=_prescriptions(args.prescribe))
    return _emit(res, None, args.json)


def cmd_simulate(args) -> int:
    from . import api

    case = api.load_case(args.case)
    out_path = _output_path(args.output, ".nc", [args.case])
    res = api.simulate(case, samples=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype,
                       keep_samples=args.keep_samples, progress=not args.json)
    return _emit(res, out_path, args.json)


def cmd_plan(args) -> int:
    from . import api
    from .case import MAX_HOURS
    from .textout import dumps

    case = api.load_case(args.case)
    out_dir = _output_dir(args.out, [args.case] + ([args.storage] if args.storage and os.path.exists(args.storage) else []))
    res = api.plan(
        case, samples=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype, risk=args.risk,
        optuna_trials=args.optuna_trials, storage=args.storage, study_name=args.study_name,
        vial_range=_range_arg(args.vial_range, "--vial-range", positive=True),
        hours_range=_range_arg(args.hours_range, "--hours-range", maximum=MAX_HOURS),
        sensitivity_samples=args.sensitivity_samples, acceptable_success=args.acceptable_success,
        any_time=args.any_time, fixed_date=args.fixed_date, calibration_weeks=args.calibration_weeks,
        progress=not args.json,
    )
    if out_dir:
        res.write_report(out_dir)
    if args.json:
        print(dumps(res.summary))
    else:
        print(res.text(top=args.top))
        if out_dir:
            print(f"\nresults written to {out_dir}")
    return 0


def cmd_sensitivity(args) -> int:
    from . import api

    case = api.load_case(args.case)
    out_path = _output_path(args.output, ".nc", [args.case])
    res = api.sensitivity(case, samples=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype,
                          bootstrap=args.bootstrap, progress=not args.json)
    return _emit(res, out_path, args.json)


def cmd_cohort(args) -> int:
    from . import api
    from .textout import dumps

    out_dir = _output_dir(args.out, [args.template, args.patients], ("cohort.csv", "cohort.nc", "cohort.html", "cohort.png"))
    res = api.cohort(args.template, args.patients, out_dir, samples=args.samples, seed=args.seed, dtype=args.dtype,
                     optuna_trials=args.optuna_trials, executor=args.executor, address=args.address,
                     workers=args.workers, write_cases=args.write_cases, progress=not args.json)
    for r in res.rows:
        if r["status"] == "not-run":
            print(f"y90opt: {r['reason']}", file=sys.stderr)
    print(dumps(res.summary) if args.json else res.text())
    return 0


def cmd_measure(args) -> int:
    from . import api
    from .textout import dumps

    if args.output is not None:
        if not args.output.strip():
            raise BadInput("-o: an empty path")
        if os.path.exists(args.output) and _same_file(args.output, args.case):
            raise BadInput(f"-o: {args.output} is the input case; measure never overwrites its input")
    res = api.measure(args.case)
    for d in res["disagreements"]:
        print(f"y90opt: {args.case}: {d['field']}: the images measure {d['measured']:.4g}, the case gives {d['given']:.4g} "
              f"(uncertainty {d['uncertainty']:.3g}): the case's value is kept", file=sys.stderr)
    if args.output is not None:
        tmp = args.output + ".part"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(res["text"])
        os.replace(tmp, args.output)
    if args.json:
        print(dumps(res["measurements"]))
    elif args.output is None:
        print(res["text"], end="")
    else:
        print(f"completed case written to {args.output}")
    return 0


def cmd_voxel(args) -> int:
    from . import api
    from .textout import dumps, table

    out_dir = _output_dir(args.out, [args.case], ("dose.nii.gz", "dose_rtdose.dcm", "dvh.csv", "dvh.png", "voxel.html")
                          ) if args.out else None
    res = api.voxel(args.case, method=args.method, out=out_dir, case_out=args.case_out, kernel=args.kernel,
                    uncertainty=args.uncertainty, seed=args.seed)
    summary = {k: res[k] for k in ("case", "method", "hours_after_calibration", "vial_at_treatment_gbq", "activity_gbq",
                                   "density", "voxel_ml", "vois", "thresholds_gy", "kernel")}
    if res["injections"] is not None:
        summary["injections"] = res["injections"]
    if res["uncertainty"] is not None:
        summary["uncertainty"] = res["uncertainty"]
    if args.json:
        print(dumps(summary))
        return 0
    rows = [(k, v["mean_gy"], v["d50_gy"], v["d70_gy"], v["d90_gy"], v["d95_gy"]) for k, v in res["vois"].items()
            if k not in ("tumors", "injections")]
    for group in ("injections", "tumors"):
        rows += [(f"{group}.{n}", v["mean_gy"], v["d50_gy"], v["d70_gy"], v["d90_gy"], v["d95_gy"])
                 for n, v in res["vois"].get(group, {}).items()]
    when = (f"at {res['hours_after_calibration']:.1f} h" if res["injections"] is None else
            "of every injection (" + ", ".join(f"{n} at {v['hours_after_calibration']:.1f} h"
                                               for n, v in res["injections"].items()) + ")")
    print(f"case {res['case']!r}: {res['method']} dose {when}, density from {res['density']}")
    if res["kernel"] is not None:
        k = res["kernel"]
        print(f"kernel: {k['source']}; {k['shape'][0]}x{k['shape'][1]}x{k['shape'][2]} voxels, self-voxel share "
              f"{k['self_voxel_share']:.4f}; {100 * k['absorbed_share']:.2f} % of the emitted energy absorbed on the grid")
    print(table(rows, header=("VOI", "mean Gy", "D50", "D70", "D90", "D95")))
    if res["uncertainty"] is not None:
        u = res["uncertainty"]
        rows = [(k.rsplit(".", 1)[0], k.rsplit(".", 1)[1], v["mean"], v["sd"], v["p05"], v["p95"])
                for k, v in u["metrics"].items() if k.endswith((".mean_gy", ".d70_gy", ".d70_ratio"))]
        print(f"\nvoxel-level uncertainty over {u['replicas']} replicas (seed {u['seed']}):")
        print(table(rows, header=("VOI", "metric", "mean", "SD", "5 %", "95 %")))
    if out_dir:
        print(f"\ndose map, DVH table and figure, voxel.html written to {out_dir}")
    return 0


def cmd_trial(args) -> int:
    from . import api
    from .textout import dumps

    inputs = [args.template] + ([args.patients] if args.patients else [])
    out_dir = _output_dir(args.out, inputs, ("trial.json", "trial.csv")) if args.out else None
    res = api.trial(args.template, virtual=args.virtual, patients=args.patients, population=args.population,
                    samples=args.samples, truth_samples=args.truth_samples, seed=args.seed, progress=not args.json)
    if out_dir:
        res.write(out_dir)
    print(dumps(res.summary) if args.json else res.text())
    return 0


def cmd_scenarios(args) -> int:
    from . import api
    from .textout import dumps

    if args.json:
        print(dumps(api.list_scenarios()))
        return 0
    print(scenarios_text(api.list_scenarios()), end="")
    return 0


def scenarios_text(scenarios: list[dict]) -> str:
    """Each scenario's rules (id, kind, quantity, threshold, level, source), window and alternatives: the
    names a case's ``[rules]`` table uses."""
    from .textout import table

    lines = []
    for s in scenarios:
        lines.append(f"{s['id']}: {s['title']} (DSC scenario {s['dsc_scenario']}, {s['intent']}; "
                     f"{s['preferred_model']} preferred)")
        rows = [(r["id"], "target", r["quantity"], f">= {r['threshold_gy']:g}", r["level"], r["source"]) for r in s["targets"]]
        rows += [(r["id"], "limit", r["quantity"], f"<= {r['threshold_gy']:g}", r["level"], r["source"]) for r in s["limits"]]
        lines.append(table(rows, header=("rule", "kind", "quantity", "Gy", "level", "source"), align="llllll"))
        w = s["window"]
        lines.append(f"window: {w['start_h']:g}-{w['end_h']:g} h after calibration ({', '.join(w['days'])})"
                     f"{' [default: not set by the DSC]' if w['default'] else ''}; source: {w['source']}")
        for alt in s["alternatives"]:
            rules = ", ".join(f"{r['id']} {r['quantity']} {'>=' if k == 'targets' else '<='} {r['threshold_gy']:g} Gy"
                              for k in ("targets", "limits") for r in alt[k])
            how = f'[rules] alternatives = ["{alt["id"]}"]'
            if alt.get("replaces"):
                how += ", remove = [" + ", ".join(f'"{x}"' for x in alt["replaces"]) + "]"
            note = f"; {alt['vials']} vials, not planned by the single-vial planner" if alt["vials"] != 1 else f"; use: {how}"
            lines.append(f"  alternative {alt['id']} ({alt['model']}): {rules}{note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def cmd_report(args) -> int:
    from .report import (
        default_report_dir,
        read_plan_results,
        read_sensitivity_results,
        sensitivity_beside,
        write_report,
    )

    ds = read_plan_results(args.results)
    if "plan_summary_json" in ds.attrs:  # a plan of several injections
        import json

        from .report import write_joint_report

        out_dir = _output_dir(default_report_dir(args.results, args.out), [args.results], PLAN_OUTPUTS[2:])
        path = write_joint_report(ds, json.loads(ds.attrs["plan_summary_json"]), out_dir)
        print(f"report written to {path}")
        return 0
    if args.sensitivity is not None:
        sens, used = read_sensitivity_results(args.sensitivity), args.sensitivity
    else:
        sens, used, why = sensitivity_beside(ds, args.results)
        if why:
            print(f"note: {used} left out of the report: {why} (name one with --sensitivity)", file=sys.stderr)
            used = None
    inputs = [args.results] + ([args.sensitivity] if args.sensitivity else [])
    out_dir = _output_dir(default_report_dir(args.results, args.out), inputs, PLAN_OUTPUTS[2:])
    path = write_report(ds, out_dir, sensitivity=sens)
    print(f"report written to {path}" + (f" (sensitivity from {used})" if used else ""))
    return 0


COMMANDS = {
    "dose": cmd_dose,
    "simulate": cmd_simulate,
    "plan": cmd_plan,
    "sensitivity": cmd_sensitivity,
    "scenarios": cmd_scenarios,
    "cohort": cmd_cohort,
    "trial": cmd_trial,
    "measure": cmd_measure,
    "voxel": cmd_voxel,
    "report": cmd_report,
}


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _output_path(path: str | None, suffix: str, inputs: Sequence[str] = (), flag: str = "-o") -> str | None:
    """A file the command will write: its folder exists, its suffix matches the format, it is no input."""
    if path is None:
        return None
    if not path.strip():
        raise BadInput(f"{flag}: an empty path")
    if not path.lower().endswith(suffix):
        raise BadInput(f"{flag}: {path}: the results are written as NetCDF: give a name ending in {suffix}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BadInput(f"{path}: output directory {parent} does not exist")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory (expected a file name ending in {suffix})")
    for src in inputs:
        if os.path.exists(path) and _same_file(path, src):
            raise BadInput(f"{flag}: {path}: is an input of this command; an output never replaces an input")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise BadInput(f"{flag}: {path}: exists and cannot be written")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"{flag}: {path}: the folder {parent} cannot be written")
    return path


#: The files ``plan --out DIR`` writes.
PLAN_OUTPUTS = ("plan.nc", "sensitivity.nc", "report.html", "report_heatmap.png", "report_doses.png",
                "report_curves.png")


def _output_dir(path: str | None, inputs: Sequence[str] = (), outputs: Sequence[str] = PLAN_OUTPUTS) -> str | None:
    """A folder the command will write into (made if missing): none of the files it writes is an input."""
    if path is None:
        return None
    if not path.strip():
        raise BadInput("--out: an empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"{path}: exists and is not a directory")
    for src in inputs:
        for name in outputs:
            target = os.path.join(path, name)
            if os.path.exists(target) and _same_file(target, src):
                raise BadInput(f"--out: {target} is an input of this command; an output never replaces an input")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out: {path}: cannot be made ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"--out: {path}: cannot be written")
    return path


def _range_arg(text: str | None, flag: str, positive: bool = False, maximum: float = math.inf) -> tuple[float, float, float] | None:
    """MIN:MAX:STEP, finite, MIN ≥ 0 (> 0 for activities), expanding to at most MAX_CANDIDATES values."""
    from .case import MAX_CANDIDATES

    if text is None:
        return None
    try:
        lo, hi, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise BadInput(f"{flag}: expected MIN:MAX:STEP, got {text!r}") from None
    if not all(math.isfinite(x) for x in (lo, hi, step)):
        raise BadInput(f"{flag}: values must be finite, got {text!r}")
    if not ((lo > 0 if positive else lo >= 0) and lo <= hi and step > 0):
        rel = ">" if positive else ">="
        raise BadInput(f"{flag}: expected MIN {rel} 0, MIN <= MAX and STEP > 0, got {text!r}")
    if hi > maximum:
        raise BadInput(f"{flag}: MAX must be at most {maximum:g}, got {text!r}")
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > MAX_CANDIDATES:
        raise BadInput(f"{flag}: {count} values (at most {MAX_CANDIDATES})")
    return lo, hi, step


if __name__ == "__main__":  # pragma: no cover
    # `python -m y90opt.cli` runs this file as __main__, a second copy of the module: the package's own copy
    # must run, so that the library's BadInput (imported from y90opt.cli) is the class main() catches
    from y90opt.cli import main as _main

    sys.exit(_main())
