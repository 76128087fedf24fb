"""The public Python API: the same five jobs as the command line, returning result objects.

Each function takes a :class:`~y90opt.case.Case` (from :func:`load_case` or :func:`parse_case`) or the path
of a case file, and returns a result with

* ``.summary``: the mapping that ``y90opt <command> --json`` prints for the same arguments (equal to it);
* ``.dataset``: the :class:`xarray.Dataset` the command writes (``None`` for :func:`dose`);
* ``.text()``: the readable table the command prints without ``--json``.

Bad input raises :class:`~y90opt.errors.InputError` (a subclass of :class:`ValueError`) whose message is
the one line the command line prints before exiting with status 2: ``<file>: <field>: <message>``.

The command line is a thin layer over these functions; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .case import Case
from .case import load_case as _load_case
from .case import parse_case as _parse_case
from .errors import InputError
from .nominal import DoseResult, dose_case
from .planner import PlanResult as _PlanResult

if TYPE_CHECKING:  # loaded by the functions that return them (scipy.special and the rest on first use)
    from .sensitivity_analysis import SensitivityResult
    from .simulation import SimulationResult

__all__ = [
    "DoseResult",
    "InputError",
    "PlanResult",
    "SensitivityResult",
    "SimulationResult",
    "dose",
    "load_case",
    "parse_case",
    "plan",
    "list_scenarios",
    "cohort",
    "sensitivity",
    "simulate",
]

#: Largest sample count a run accepts (the command line's limit too).
MAX_SAMPLES = 10**12
#: Largest run whose raw samples ``simulate(keep_samples=True)`` stores in the Dataset.
MAX_KEPT_SAMPLES = 10_000_000
#: Most bootstrap resamples of a Sobol' analysis (each is a weighted pass over the design's terms).
MAX_BOOTSTRAP = 10_000
#: Fewest base samples of a Sobol' analysis.
MIN_SOBOL_SAMPLES = 64

CaseLike = Case | str | os.PathLike


def __getattr__(name: str):
    """The result classes of simulate and sensitivity, loaded on first use."""
    if name == "SimulationResult":
        from .simulation import SimulationResult

        return SimulationResult
    if name == "SensitivityResult":
        from .sensitivity_analysis import SensitivityResult

        return SensitivityResult
    raise AttributeError(f"module 'y90opt.api' has no attribute {name!r}")


def load_case(path: str | os.PathLike) -> Case:
    """Read and validate a case file (TOML).

    >>> case = load_case("configs/examples/radiation-segmentectomy.toml")
    >>> case.scenario
    'radiation-segmentectomy'

    Raises :class:`InputError` naming the file and the field.
    """
    return _load_case(path)


def parse_case(source: str | Mapping[str, Any], path: str | None = None) -> Case:
    """Validate a case given as TOML text or as a mapping with the keys of a case file.

    A script can build cases without files: volumes in mL, activities in GBq, datetimes as ISO 8601 strings
    or ``datetime`` objects with a UTC offset. ``path`` names the case in messages and results (default
    ``"<case>"``). Raises :class:`InputError` naming the field.
    """
    return _parse_case(source, path)


def _case(case: CaseLike) -> Case:
    if isinstance(case, Case):
        return case
    if isinstance(case, str | os.PathLike):
        return _load_case(case)
    raise TypeError(f"expected a Case or the path of a case file, got {type(case).__name__}")


def _count(value: Any, flag: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise InputError(f"{flag}: expected a whole number, got {value!r}")
    v = int(value)
    if not minimum <= v <= MAX_SAMPLES:
        raise InputError(f"{flag}: expected a number between {minimum} and {MAX_SAMPLES:.0e}, got {value!r}")
    return v


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InputError(f"--seed: expected an integer in [0, 2**32), got {value!r}")
    return int(value)


def _dtype(value: Any) -> str:
    if value not in ("float32", "float64"):
        raise InputError(f"--dtype: expected float32 or float64, got {value!r}")
    return value


def _chunk(value: Any) -> int | None:
    return None if value is None else _count(value, "--chunk")


def dose(case: CaseLike, *, prescribe: Mapping[str, float] | Iterable[tuple[str, float]] = ()) -> DoseResult:
    """Nominal doses [Gy] and activities [GBq] at the case's ``[plan]`` vial and treatment time.

    Args:
        case: a case or the path of a case file; it needs ``[plan].vial_gbq`` and ``[plan].treatment``.
        prescribe: dose name → dose [Gy] (``{"normal_perfused": 120}``, ``{"tumors.T1": 205}``): for each, the
            vial activity at calibration and at treatment that gives that dose at the ``[plan]`` time, and
            every dose at that activity (``summary["prescriptions"]``).

    Every valid case gives a result: a scenario rule the case cannot evaluate (a tumour target without a
    treated tumour) is listed with status ``not evaluable`` and the reason.
    """
    items = list(prescribe.items()) if isinstance(prescribe, Mapping) else list(prescribe)
    return dose_case(_case(case), items)


def simulate(case: CaseLike, *, samples: int = 100_000, seed: int = 0, chunk: int | None = None,
             dtype: str = "float32", keep_samples: bool = False, progress: bool = False) -> SimulationResult:
    """Monte Carlo doses at the case's ``[plan]`` decision: mean, p05/p50/p95 [Gy], P(each rule) ± SE.

    Args:
        samples: Monte Carlo samples (memory does not grow with it: the run streams).
        seed: the same seed and dtype give the same numbers for any ``chunk``.
        chunk: samples per JAX call (results do not depend on it).
        dtype: ``"float32"`` or ``"float64"``.
        keep_samples: store the raw samples in the Dataset (at most :data:`MAX_KEPT_SAMPLES`).
        progress: show a progress bar on a terminal.
    """
    from .simulation import simulate_case

    c = _case(case)
    n = _count(samples, "--samples")
    if keep_samples and n > MAX_KEPT_SAMPLES:
        raise InputError(f"--keep-samples: at most {MAX_KEPT_SAMPLES} samples can be stored (asked {n})")
    return simulate_case(c, n=n, seed=_seed(seed), chunk=_chunk(chunk), dtype=_dtype(dtype),
                         keep_samples=keep_samples, progress=progress)


def sensitivity(case: CaseLike, *, samples: int = 8192, seed: int = 0, chunk: int | None = None,
                dtype: str = "float32", bootstrap: int = 200, progress: bool = False) -> SensitivityResult:
    """Sobol' indices (S1, ST with bootstrap intervals) of every dose and of plan success at ``[plan]``.

    Args:
        samples: base samples N (at least 64); the model runs N·(d + 2) times for d uncertain inputs.
        bootstrap: resamples for the confidence intervals (0: none).
    """
    from .sensitivity_analysis import sensitivity_case

    c = _case(case)
    n = _count(samples, "--samples", MIN_SOBOL_SAMPLES)
    b = _count(bootstrap, "--bootstrap", 0)
    if b > MAX_BOOTSTRAP:
        raise InputError(f"--bootstrap: at most {MAX_BOOTSTRAP} resamples (asked {b}); 200 give 95 % intervals")
    return sensitivity_case(c, n=n, seed=_seed(seed), chunk=_chunk(chunk), dtype=_dtype(dtype), bootstrap=b,
                            progress=progress)


def _plan_dir(out_dir: str | os.PathLike) -> str:
    """The folder a plan writes into, made if missing; :class:`InputError` for an empty path or a file."""
    out = os.fspath(out_dir)
    if not out:
        raise InputError("--out: an empty path")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{out}: exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    return out


@dataclasses.dataclass
class PlanResult(_PlanResult):
    """Result of :func:`plan`: ``summary`` (``plan --json``), ``dataset`` (``plan.nc``), ``text()``, and
    :meth:`write_report`. ``sensitivity`` holds the Sobol' analysis at the recommendation when one was asked."""

    sensitivity: SensitivityResult | None = None

    def write_report(self, out_dir: str | os.PathLike) -> str:
        """Write ``plan.nc`` (and ``sensitivity.nc``), the figures and ``report.html`` into ``out_dir`` (made
        if missing); return the path of ``report.html``. Raises :class:`InputError` when ``out_dir`` exists
        and is not a directory."""
        from .report import write_report
        from .results import write_netcdf

        out = _plan_dir(out_dir)
        write_netcdf(self.dataset, os.path.join(out, "plan.nc"))
        if self.sensitivity is not None:
            write_netcdf(self.sensitivity.dataset, os.path.join(out, "sensitivity.nc"))
        return write_report(self.dataset, out, sensitivity=self.sensitivity)


def plan(case: CaseLike, *, samples: int = 100_000, seed: int = 0, chunk: int | None = None,
         dtype: str = "float32", risk: float | None = None, optuna_trials: int | None = None,
         storage: str | None = None, study_name: str | None = None,
         vial_range: tuple[float, float, float] | None = None, hours_range: tuple[float, float, float] | None = None,
         sensitivity_samples: int | None = None, acceptable_success: float | None = None,
         any_time: bool = False, fixed_date: bool = False, calibration_weeks: int = 2,
         progress: bool = False) -> PlanResult:
    """Choose the vial (activity at calibration, GBq) and the treatment time (hours after calibration).

    Maximises P(all primary targets met) subject to P(limit kept) ≥ 1 − risk for every limit, exactly over
    every candidate on one sample set, cross-checked by an Optuna search (``optuna_trials``; 0 skips it).

    Args:
        risk: override ``[plan].risk``.
        storage, study_name: an Optuna storage (a path: SQLite, or an RDB URL) so the study can resume.
        vial_range, hours_range: ``(min, max, step)`` candidate grids instead of the case's.
        sensitivity_samples: also run :func:`sensitivity` at the recommendation (in ``summary`` and the report).
        acceptable_success: override ``[plan].acceptable_success``: the P(all primary targets) below which a
            feasible plan has status ``"low-success"`` instead of ``"ok"``.
        any_time: keep candidate times outside the clinic calendar (treatment days, holidays, clinic hours),
            as literal hours after calibration (never before the vial can be used).
        fixed_date: the treatment date is fixed at ``[plan].treatment``: choose the vial and its calibration
            week among ``calibration_weeks`` (this week's vial, last week's at higher activity, ...).

    An infeasible plan is an answer (``summary["feasible"]`` is false), not an error. A primary rule the
    case cannot evaluate raises :class:`InputError` naming the field and a fix that works.
    """
    from .planner import plan_case

    c = _case(case)
    if c.multi:
        return _plan_joint(c, samples=samples, seed=seed, chunk=chunk, dtype=dtype, risk=risk,
                           optuna_trials=optuna_trials, storage=storage, study_name=study_name, vial_range=vial_range,
                           hours_range=hours_range, sensitivity_samples=sensitivity_samples,
                           acceptable_success=acceptable_success, any_time=any_time, fixed_date=fixed_date)
    if acceptable_success is not None:
        if isinstance(acceptable_success, bool) or not isinstance(acceptable_success, int | float) \
                or not 0 < acceptable_success <= 1:
            raise InputError(f"--acceptable-success: must be in (0, 1], got {acceptable_success!r}")
        c = dataclasses.replace(c, plan=dataclasses.replace(c.plan, acceptable_success=float(acceptable_success)))
    n = _count(samples, "--samples")
    trials = None if optuna_trials is None else _count(optuna_trials, "--optuna-trials", 0)
    res = plan_case(c, n=n, seed=_seed(seed), chunk=_chunk(chunk), dtype=_dtype(dtype), risk=risk,
                    optuna_trials=trials, storage=storage, study_name=study_name, vial_range=vial_range,
                    hours_range=hours_range, progress=progress, any_time=any_time, fixed_treatment=fixed_date,
                    calibration_weeks=_count(calibration_weeks, "--calibration-weeks"))
    out = PlanResult(res.data, res.summary)
    if sensitivity_samples:
        from .sensitivity_analysis import sensitivity_case

        sens = sensitivity_case(res.recommended_case(c), n=_count(sensitivity_samples, "--sensitivity-samples",
                                                                   MIN_SOBOL_SAMPLES),
                                seed=seed, chunk=_chunk(chunk), dtype=dtype, progress=progress)
        out.sensitivity = sens
        out.summary["sensitivity"] = sens.summary
    return out


@dataclasses.dataclass
class JointPlanResult(PlanResult):
    """Result of :func:`plan` for a case with ``[[injections]]``: a vial per injection, a time per session."""

    def text(self, top: int = 10) -> str:
        from .joint_planner import joint_plan_text

        return joint_plan_text(self.summary, top)

    def write_report(self, out_dir: str | os.PathLike) -> str:
        """Write ``plan.nc``, the joint figure and ``report.html`` into ``out_dir``; return the report's path."""
        from .report import write_joint_report
        from .results import write_netcdf

        out = _plan_dir(out_dir)
        write_netcdf(self.dataset, os.path.join(out, "plan.nc"))
        return write_joint_report(self.dataset, self.summary, out)


def _plan_joint(c, *, samples, seed, chunk, dtype, risk, optuna_trials, storage, study_name, vial_range, hours_range,
                sensitivity_samples, acceptable_success, any_time, fixed_date) -> JointPlanResult:
    from .joint_planner import plan_joint_case

    for flag, given in (("--vial-range", vial_range), ("--hours-range", hours_range), ("--fixed-date", fixed_date),
                        ("--sensitivity-samples", sensitivity_samples)):
        if given:
            raise InputError(f"{c.path}: {flag}: not available for a case with [[injections]] (give each injection's "
                             "activities_gbq and each session's hours_after_calibration in the case)")
    if acceptable_success is not None:
        if isinstance(acceptable_success, bool) or not isinstance(acceptable_success, int | float) \
                or not 0 < acceptable_success <= 1:
            raise InputError(f"--acceptable-success: must be in (0, 1], got {acceptable_success!r}")
        c = dataclasses.replace(c, plan=dataclasses.replace(c.plan, acceptable_success=float(acceptable_success)))
    trials = None if optuna_trials is None else _count(optuna_trials, "--optuna-trials", 0)
    res = plan_joint_case(c, n=_count(samples, "--samples"), seed=_seed(seed), chunk=_chunk(chunk), dtype=_dtype(dtype),
                          risk=risk, optuna_trials=trials, storage=storage, study_name=study_name, any_time=any_time)
    return JointPlanResult(res.dataset, res.summary)


def cohort(template: str | os.PathLike, patients: str | os.PathLike, out: str | os.PathLike, *,
           samples: int = 100_000, seed: int = 0, optuna_trials: int | None = None, dtype: str = "float32",
           executor: str = "local", address: str | None = None, workers: int = 1,
           write_cases: str | os.PathLike | None = None, progress: bool = False):
    """Plan every patient of a table (CSV: ``patient_id`` and case-path columns) from a template case.

    Each patient's result equals :func:`plan` of its case with the same ``samples`` and ``seed``, whatever the
    ``executor`` (``"local"`` processes or ``"dask"``: a scheduler at ``address``, else a LocalCluster) and the
    number of ``workers``. ``out`` gets ``cohort.csv``, ``cohort.nc`` and one result per patient (an
    interrupted run resumes). A bad row is reported as not run and never stops the others. Returns a result
    with ``.rows``, ``.summary``, ``.dataset`` and ``.text()``.
    """
    from .cohorts import run_cohort

    bar = None
    if progress:
        import sys

        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            bar = tqdm(desc="patients", unit="patient", leave=False)

    def report(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        res = run_cohort(os.fspath(template), os.fspath(patients), os.fspath(out), samples=_count(samples, "--samples"),
                         seed=_seed(seed), dtype=_dtype(dtype),
                         optuna_trials=None if optuna_trials is None else _count(optuna_trials, "--optuna-trials", 0),
                         executor=executor, address=address, workers=_count(workers, "--workers"),
                         write_cases=None if write_cases is None else os.fspath(write_cases), progress=report)
    finally:
        if bar is not None:
            bar.close()
    from .report import write_cohort_report

    res.report = write_cohort_report(res.dataset, os.fspath(out))
    return res


def virtual_patients(template: CaseLike, n: int, *, seed: int = 0, population: str | os.PathLike = "hcc"
                     ) -> list[dict[str, float]]:
    """``n`` virtual patients for a template case, drawn from a population file (``configs/populations/``,
    each distribution with its source): per patient, case path → measured value (a cohort table's row).
    Patient k depends only on ``seed`` and k (:mod:`y90opt.virtual`)."""
    import tomllib

    from .virtual import load_population
    from .virtual import virtual_patients as draw

    c = _case(template)
    return draw(tomllib.loads(c.text), load_population(population), _count(n, "--virtual"), _seed(seed))


@dataclasses.dataclass
class TrialResult:
    """Result of :func:`trial`: ``summary`` (per truth model and policy: the share of patients meeting every
    target and breaking a limit, with standard errors), ``rows`` (per patient, truth and policy) and ``text()``."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    def text(self) -> str:
        from .virtual_trial import trial_text

        return trial_text(self.summary)

    def write(self, out_dir: str | os.PathLike) -> str:
        """``trial.json`` (the summary) and ``trial.csv`` (the rows) into ``out_dir``; returns the CSV's path."""
        import csv
        import json

        out = os.fspath(out_dir)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "trial.json"), "w", encoding="utf-8") as fh:
            json.dump(self.summary, fh, indent=1, default=float)
        path = os.path.join(out, "trial.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]) if self.rows else ["patient_id"])
            w.writeheader()
            w.writerows(self.rows)
        return path


def trial(template: CaseLike, *, virtual: int | None = None, patients: str | os.PathLike | None = None,
          population: str | os.PathLike = "hcc", samples: int = 20_000, truth_samples: int = 400, seed: int = 0,
          progress: bool = False) -> TrialResult:
    """A virtual trial: every policy of :data:`y90opt.virtual_trial.POLICIES` (deterministic practice and y90opt's
    chance-constrained plan) on every patient, judged on realised doses from every truth model of
    :data:`y90opt.virtual_trial.TRUTHS` (the delivered-versus-planned relations, and the planning model itself).

    Patients: ``virtual`` virtual patients from ``population``, or a cohort table ``patients`` (CSV).
    """
    from .cohorts import read_patients
    from .virtual_trial import run_trial

    c = _case(template)
    if (virtual is None) == (patients is None):
        raise InputError("trial: give either --virtual N or a patients table")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="y90opt-trial-") as tmp:
        if virtual is not None:
            from .virtual import write_patients_csv

            table = write_patients_csv(virtual_patients(c, virtual, seed=seed, population=population),
                                       os.path.join(tmp, "patients.csv"))
        else:
            table = os.fspath(patients)
        template_path = os.path.join(tmp, "template.toml")
        with open(template_path, "w", encoding="utf-8") as fh:
            fh.write(c.text)
        _, rows = read_patients(template_path, table)
        from .case import parse_case

        bad = [p for p in rows if p.text is None]
        if bad:
            raise InputError(bad[0].error)
        cases = [(p.patient_id, parse_case(p.text, f"{p.patient_id}")) for p in rows]
    bar = None
    if progress:
        import sys

        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cases), desc="patients", unit="patient", leave=False)
    try:
        res = run_trial(cases, samples=_count(samples, "--samples"), truth_samples=_count(truth_samples, "--truth-samples"),
                        seed=_seed(seed), progress=None if bar is None else (lambda k: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    summary = {k: v for k, v in res.items() if k != "rows"}
    summary.update({"case": c.name, "scenario": c.scenario, "population": str(population) if virtual is not None else None,
                    "patients": len(cases)})
    return TrialResult(summary, res["rows"])


def measure(case: str | os.PathLike) -> dict[str, Any]:
    """Measure a case file's ``[images]`` (NIfTI, DICOM series, NRRD, DICOM SEG and RTSTRUCT masks, each put on
    the SPECT's grid through its geometry; one territory and MAA study per injection with several): returns ``text`` (the completed case, the
    user's values kept and the measured ones added with their uncertainty and a comment on each),
    ``measurements`` (the ``measure --json`` keys) and ``disagreements``. See :mod:`y90opt.imaging`."""
    from .imaging import measure_case

    return measure_case(os.fspath(case))


def voxel(case: str | os.PathLike, *, method: str = "ldm", out: str | os.PathLike | None = None,
          case_out: str | os.PathLike | None = None, kernel: str | os.PathLike | None = None,
          uncertainty: int = 0, seed: int = 0) -> dict[str, Any]:
    """The absorbed-dose map of a case with ``[images]`` at its ``[plan]`` decision (local deposition, or with
    ``method="kernel"`` the dose-voxel kernel from the radial kernel or voxel S table ``kernel``, or
    ``"loevinger"`` for Loevinger's approximation, else the built-in kernel fitted to the voxel S values of
    Lanconelli et al. 2012; ``res["kernel"]`` says which, its self-voxel share and the energy absorbed; with
    ``uncertainty`` = N, N replicas of the voxel-level uncertainty in ``res["uncertainty"]``, and ``case_out``
    then writes each tumour's ``d70_ratio`` with its CV), its VOI
    metrics (``vois``: mean, D50/D70/D90/D95, V at the scenario's thresholds) and DVH; with ``out``, writes
    ``dose.nii.gz``, ``dvh.csv`` and ``dvh.png`` there; with ``case_out``, writes the case with each tumour's
    ``d70_ratio`` (so that rules may name ``tumors_d70``). See :mod:`y90opt.voxel_dosimetry`."""
    from .voxel_dosimetry import case_with_d70, voxel_case, write_voxel_outputs

    if isinstance(uncertainty, bool) or not isinstance(uncertainty, int) or not 0 <= uncertainty <= 10_000:
        raise InputError(f"--uncertainty: {uncertainty!r}: expected a number of replicas from 0 to 10000")
    res = voxel_case(os.fspath(case), method=method, kernel_file=None if kernel is None else os.fspath(kernel),
                     replicas=uncertainty, seed=_seed(seed), d70_ratios=case_out is not None)
    if out is not None:
        from .report import write_voxel_report

        res["files"] = write_voxel_outputs(res, os.fspath(out))
        res["files"]["report"] = write_voxel_report(res, res["files"]["dvh_png"], os.fspath(out))
    if case_out is not None:
        target = os.fspath(case_out)
        if os.path.exists(target) and os.path.samefile(target, os.fspath(case)):
            raise InputError(f"--case-out: {target} is the input case; voxel never overwrites its input")
        text = case_with_d70(os.fspath(case), res)
        from .case import CaseError, parse_case

        try:
            parse_case(text, target)
        except CaseError as e:
            raise InputError(f"--case-out: {target} not written, its case would not be read back: {e}") from None
        try:
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as e:
            raise InputError(f"--case-out: {target}: cannot be written ({e.strerror or e})") from None
    return res


def list_scenarios() -> list[dict[str, Any]]:
    """The scenario rules (targets, limits, window, alternatives, each with its source), as
    ``y90opt scenarios --json`` prints them, in the committee's order."""
    from .scenarios import load_scenarios

    return [s.to_dict() for s in load_scenarios()]
