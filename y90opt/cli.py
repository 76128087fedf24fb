"""The ``y90opt`` command line. It parses arguments, calls the library and prints; it computes no physics.

Exit status: 0 success (an infeasible plan is an answer), 2 bad input (one line naming the file and the
field, no traceback), 1 internal error (one line).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from . import __version__

EXAMPLE = "configs/examples/multifocal-unilobar.toml"
#: Largest run whose raw samples `simulate --keep-samples` stores in the Dataset.
MAX_KEPT_SAMPLES = 10_000_000


class BadInput(Exception):
    """A user error detected by the CLI itself (an argument, an output path)."""


#: Largest sample count accepted on the command line.
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
    sp.add_argument("--optuna-trials", type=_nonnegative_int, default=None, metavar="T", help="Optuna trials for the cross-check (default: half the candidates, at most 200; 0 to skip)")
    sp.add_argument("--storage", default=None, help="Optuna storage: a path (SQLite) or an RDB URL; lets a study resume")
    sp.add_argument("--study-name", default=None, help="Optuna study name (with --storage)")
    sp.add_argument("--vial-range", default=None, metavar="MIN:MAX:STEP", help="candidate vials as a range in GBq, e.g. 3:20:0.5")
    sp.add_argument("--hours-range", default=None, metavar="MIN:MAX:STEP", help="candidate times in hours after calibration, e.g. 72:216:1")
    sp.add_argument("--sensitivity-samples", type=_sobol_samples, default=None, metavar="N",
                    help="also run the Sobol sensitivity analysis (N base samples) at the recommendation and add "
                    "its tornado figures to the report (with --out)")

    sp = add("sensitivity", "Sobol sensitivity indices of every dose and of plan success", f"y90opt sensitivity {EXAMPLE} --samples 20000 --json")
    sp.add_argument("case")
    mc_flags(sp, 8192, _sobol_samples)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("-o", "--output", metavar="OUT.nc", help="write the indices Dataset (NetCDF)")
    sp.add_argument("--bootstrap", type=_nonnegative_int, default=200, metavar="B", help="bootstrap resamples for confidence intervals")

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
    from .case import CaseError

    bad: tuple[type[BaseException], ...] = (CaseError, BadInput)
    try:
        from .rules import ScenarioError

        bad += (ScenarioError,)
    except ImportError:  # pragma: no cover
        pass
    from .engine import UnphysicalSamplesError

    bad += (UnphysicalSamplesError,)
    if args.command in ("simulate", "plan", "sensitivity"):
        _compile_cache()
    try:
        return int(COMMANDS[args.command](args) or 0)
    except bad as e:
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
    except (OSError, AttributeError, ValueError):
        return


def _one_line(s: str) -> str:
    return " ".join(s.split())


# -- commands -------------------------------------------------------------------------------------------


def cmd_dose(args) -> int:
    from .case import load_case
    from .nominal import nominal_doses
    from .textout import dumps

    case = load_case(args.case)
    out = nominal_doses(case)
    out.update(_rule_outcome_nominal(case, out))
    if args.prescribe:
        from .nominal import required_activity

        out["prescriptions"] = []
        for item in args.prescribe:
            q, sep, gy = item.partition("=")
            try:
                dose_gy = float(gy)
            except ValueError:
                dose_gy = float("nan")
            if not sep or not dose_gy > 0:
                raise BadInput(f"--prescribe: expected QUANTITY=GY with GY > 0, got {item!r}")
            out["prescriptions"].append(required_activity(case, q, dose_gy))
    if args.json:
        print(dumps(out))
        return 0
    print(_dose_text(case, out))
    for p in out.get("prescriptions", []):
        print(f"prescription: {p['dose_gy']:g} Gy to {p['quantity']} at {p['hours_after_calibration']:.1f} h needs "
              f"{p['vial_at_calibration_gbq']:.3g} GBq at calibration ({p['vial_at_treatment_gbq']:.3g} GBq at treatment, "
              f"{p['injected_gbq']:.3g} GBq injected)")
    return 0


def _rule_outcome_nominal(case, out) -> dict:
    """Rule margins and advisories at the nominal doses (filled by the rules module)."""
    from . import outcomes

    return outcomes.nominal_outcome(case, out)


def _dose_text(case, out) -> str:
    from .textout import table

    conv = case.conventions
    act = out["activity_gbq"]
    lines = [
        f"case {case.name!r}  scenario {case.scenario}",
        f"vial {act['vial_at_calibration']:g} GBq at calibration {out['calibration']}, "
        f"treatment {out['treatment']} ({out['hours_after_calibration']:.1f} h after calibration)",
        f"conventions: K = {conv.dose_constant_gy_kg_per_gbq:g} Gy·kg/GBq, T½ = {conv.half_life_h:g} h, "
        f"density = {conv.tissue_density_g_per_ml:g} g/mL",
        "",
        table(
            [
                ("vial at treatment", act["vial_at_treatment"], "GBq"),
                ("injected (after residual)", act["injected"], "GBq"),
                ("to the liver", act["liver"], "GBq"),
                ("to the lungs", act["lung"], "GBq"),
                ("spheres", out["spheres"], ""),
                (f"activity per sphere ({conv.bq_per_sphere_at_calibration:g} Bq at calibration)", out["activity_per_sphere_bq"], "Bq"),
            ],
            header=("activity", "value", "unit"),
        ),
        "",
    ]
    from .nominal import flatten_doses

    untreated = {f"tumors.{t.name}" for t in case.tumors if not t.treated}
    rows = [(k, "not treated" if k in untreated else v, "" if k in untreated else "Gy")
            for k, v in flatten_doses(out["dose_gy"]).items()]
    lines.append(table(rows, header=("dose", "value", "unit"), align="lrl"))
    lines += _rules_text(out)
    return "\n".join(lines)


def _rules_text(out) -> list[str]:
    from .textout import table

    lines = []
    if out.get("rules"):
        lines += ["", table(
            [(r["label"], r["kind"], r["quantity"], r["threshold_gy"], r.get("value"), r["status"]) for r in out["rules"]],
            header=("rule", "kind", "quantity", "threshold Gy", "value", "status"),
            align="lllrrl",
        )]
    for a in out.get("advisories", []):
        lines.append(f"advisory [{a['code']}]: {a['message']}")
    return lines


def _emit(res, out_path: str | None, as_json: bool) -> int:
    """Write a result's Dataset to ``out_path`` (if given), then print its JSON summary or its text."""
    from .textout import dumps

    if out_path:
        from .results import write_netcdf

        write_netcdf(res.dataset, out_path)
    print(dumps(res.summary) if as_json else res.text())
    return 0


def cmd_simulate(args) -> int:
    from .case import load_case
    from .simulate import simulate_case

    case = load_case(args.case)
    out_path = _output_path(args.output, ".nc")
    if args.keep_samples and args.samples > MAX_KEPT_SAMPLES:
        raise BadInput(f"--keep-samples: at most {MAX_KEPT_SAMPLES} samples can be stored (asked {args.samples})")
    res = simulate_case(
        case, n=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype,
        keep_samples=args.keep_samples, progress=not args.json,
    )
    return _emit(res, out_path, args.json)


def cmd_plan(args) -> int:
    from .case import MAX_HOURS, load_case
    from .planner import plan_case
    from .textout import dumps

    case = load_case(args.case)
    out_dir = _output_dir(args.out)
    res = plan_case(
        case, n=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype, risk=args.risk,
        optuna_trials=args.optuna_trials, storage=args.storage, study_name=args.study_name,
        vial_range=_range_arg(args.vial_range, "--vial-range", positive=True), hours_range=_range_arg(args.hours_range, "--hours-range", maximum=MAX_HOURS),
        progress=not args.json,
    )
    sens = None
    if args.sensitivity_samples:
        from .sensitivity import sensitivity_case

        sens = sensitivity_case(res.recommended_case(case), n=args.sensitivity_samples, seed=args.seed,
                                chunk=args.chunk, dtype=args.dtype, progress=not args.json)
        res.summary["sensitivity"] = sens.summary
    if out_dir:
        res.write(out_dir, sensitivity=sens)
    if args.json:
        print(dumps(res.summary))
    else:
        print(res.text())
        if out_dir:
            print(f"\nresults written to {out_dir}")
    return 0


def cmd_sensitivity(args) -> int:
    from .case import load_case
    from .sensitivity import sensitivity_case

    case = load_case(args.case)
    out_path = _output_path(args.output, ".nc")
    res = sensitivity_case(
        case, n=args.samples, seed=args.seed, chunk=args.chunk, dtype=args.dtype,
        bootstrap=args.bootstrap, progress=not args.json,
    )
    return _emit(res, out_path, args.json)


def cmd_scenarios(args) -> int:
    from . import rules
    from .textout import dumps, table

    scenarios = rules.load_scenarios()  # in DSC order, scenario 1 to 5
    if args.json:
        print(dumps([s.to_dict() for s in scenarios]))
        return 0
    for s in scenarios:
        print(f"{s.id}: {s.title} (DSC scenario {s.dsc_scenario}, {s.intent}; {s.preferred_model} preferred)")
        rows = [("target", r.quantity, f">= {r.threshold_gy:g}", r.level, r.source) for r in s.targets]
        rows += [("limit", r.quantity, f"<= {r.threshold_gy:g}", r.level, r.source) for r in s.limits]
        print(table(rows, header=("kind", "quantity", "Gy", "level", "source"), align="lllll"))
        w = s.window
        print(f"window: {w.start_h:g}-{w.end_h:g} h after calibration ({', '.join(w.days)})"
              f"{' [default: not set by the DSC]' if w.default else ''}; source: {w.source}\n")
    return 0


def cmd_report(args) -> int:
    from .report import (
        default_report_dir,
        read_plan_results,
        read_sensitivity_results,
        sensitivity_beside,
        write_report,
    )

    ds = read_plan_results(args.results)
    if args.sensitivity is not None:
        sens, used = read_sensitivity_results(args.sensitivity), args.sensitivity
    else:
        sens, used, why = sensitivity_beside(ds, args.results)
        if why:
            print(f"note: {used} left out of the report: {why} (name one with --sensitivity)", file=sys.stderr)
            used = None
    path = write_report(ds, default_report_dir(args.results, args.out), sensitivity=sens)
    print(f"report written to {path}" + (f" (sensitivity from {used})" if used else ""))
    return 0


COMMANDS = {
    "dose": cmd_dose,
    "simulate": cmd_simulate,
    "plan": cmd_plan,
    "sensitivity": cmd_sensitivity,
    "scenarios": cmd_scenarios,
    "report": cmd_report,
}


def _output_path(path: str | None, suffix: str) -> str | None:
    if path is None:
        return None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BadInput(f"{path}: output directory {parent} does not exist")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory (expected a file name ending in {suffix})")
    return path


def _output_dir(path: str | None) -> str | None:
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"{path}: exists and is not a directory")
    os.makedirs(path, exist_ok=True)
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
