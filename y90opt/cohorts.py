"""Cohorts: one plan per patient of a table, on a local process pool or a Dask cluster (``y90opt cohort``).

A template case and a patients table (CSV: ``patient_id`` and columns named by case paths, e.g.
``liver.perfused_volume_ml``, ``tumors.T1.tn_ratio``, ``lung.shunt_fraction``) give one case per row: a number
replaces the template quantity's measured value (its median, mean or plain value) and keeps its uncertainty
form; a ``<path>.cv`` column sets the CV of a form that has one, ``<path>.sd`` the SD of a normal form. Rows are
checked before any work starts; a bad row is reported (file, row, column) and does not stop the others.

Each patient is one task (its candidates are batched inside the task, as ``plan`` does), and its result is
exactly ``y90opt plan`` of that patient's case with the same ``samples`` and ``seed``, whatever the executor and
the number of workers: a task depends only on its case and its arguments. Results are written per patient as
they finish (``DIR/patients/<id>.nc`` and ``.json``), so an interrupted run resumes without redoing them; the
table ``DIR/cohort.csv`` and the Dataset ``DIR/cohort.nc`` (dim ``patient``) are gathered at the end.

Executors: ``local`` (``concurrent.futures`` processes started with *spawn*, never *fork*, since JAX holds
threads; one worker runs in this process) and ``dask`` (``dask.distributed``: a scheduler at ``address``, or a
``LocalCluster`` of ``workers`` processes started for the run; ``pip install "y90opt[dask]"``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InputError

#: The columns every cohort table has (design document, "Cohorts"), before the doses at the recommendation.
COLUMNS = ("patient_id", "status", "feasible", "vial_gbq", "hours_after_calibration", "p_success")
EXECUTORS = ("local", "dask")
#: Most patients one table may hold.
MAX_PATIENTS = 1_000_000
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Patient:
    """One row: its id, its case as TOML text (None when the row is bad) and why it is bad."""

    row: int
    patient_id: str
    text: str | None
    error: str | None = None


# --- the table ------------------------------------------------------------------------------------------


def _locate(doc: dict, path: str) -> tuple[dict, str] | None:
    """The table holding the quantity at ``path`` in a case document and its key, or None."""
    parts = path.split(".")
    if parts[0] == "tumors" and len(parts) == 3:
        for t in doc.get("tumors", []):
            if isinstance(t, dict) and t.get("name") == parts[1]:
                return (t, parts[2]) if parts[2] in ("volume_ml", "tn_ratio") and parts[2] in t else None
        return None
    if len(parts) == 2 and parts[0] in ("liver", "lung", "delivery") and isinstance(doc.get(parts[0]), dict):
        table = doc[parts[0]]
        return (table, parts[1]) if parts[1] in table else None
    return None


def _set_value(raw: Any, value: float) -> Any:
    """``raw`` (a number or an uncertainty table) with its measured value replaced by ``value``."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return value
    if isinstance(raw, dict):
        for key in ("value", "median", "mean"):
            if key in raw:
                return {**raw, key: value}
    raise ValueError("the template's form of this quantity has no single measured value (give it as a number, "
                     "{ value, cv }, a lognormal median or a normal mean)")


def _set_spread(raw: Any, kind: str, value: float) -> Any:
    if kind == "cv" and isinstance(raw, dict) and ("cv" in raw) and raw.get("dist") in (None, "lognormal"):
        return {**raw, "cv": value}
    if kind == "sd" and isinstance(raw, dict) and raw.get("dist") == "normal":
        return {**raw, "sd": value}
    form = "a plain number" if not isinstance(raw, dict) else (raw.get("dist") or "{ value, cv }")
    raise ValueError(f"the template gives this quantity as {form}, which has no {kind}")


def read_patients(template_path: str, patients_path: str) -> tuple[str, list[Patient]]:
    """The template's text and one :class:`Patient` per row of the table, each checked (its case parsed).

    Raises :class:`InputError` for a template or a table that cannot be used at all (missing, unreadable,
    no ``patient_id`` column, duplicate ids); a bad row is returned with its ``error``, never raised."""
    from .case import CaseError, load_case, parse_case

    template = load_case(template_path)
    if template.multi:
        raise CaseError(template.path, "injections", "a cohort's template is a case of one injection (cohorts of "
                        "treatments of several injections are not available yet)")
    doc = tomllib.loads(template.text)
    try:
        with open(patients_path, newline="", encoding="utf-8-sig") as fh:  # a BOM (spreadsheets write one) is no column
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(patients_path, "", "no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(patients_path, "", f"not a readable CSV table ({e})") from None
    if "patient_id" not in header:
        raise InputError(patients_path, "patient_id", "missing column (the first column names each patient)")
    if len(rows) > MAX_PATIENTS:
        raise InputError(patients_path, "", f"{len(rows)} patients (at most {MAX_PATIENTS})")
    seen: dict[str, int] = {}
    out = []
    for k, row in enumerate(rows, start=2):  # row 1 is the header
        pid = (row.get("patient_id") or "").strip()
        where = f"row {k}"
        if not _ID_RE.match(pid):
            out.append(Patient(k, pid or f"row-{k}", None, f"{patients_path}: {where}: patient_id: {pid!r}: letters, "
                               "digits, '.', '-' and '_' only"))
            continue
        if pid.lower() in seen:  # ids name files: two that differ only in case collide on some file systems
            raise InputError(patients_path, f"{where}: patient_id", f"{pid!r} repeats row {seen[pid.lower()]}")
        seen[pid.lower()] = k
        try:
            text = _patient_text(doc, row, header, pid)
            parse_case(text, f"{patients_path}: {where}")
        except _RowError as e:
            out.append(Patient(k, pid, None, f"{patients_path}: {where}: {e}"))
            continue
        except CaseError as e:
            out.append(Patient(k, pid, None, str(e)))
            continue
        out.append(Patient(k, pid, text))
    return template.text, out


class _RowError(ValueError):
    pass


def _patient_text(doc: dict, row: Mapping[str, str], header: list[str], pid: str) -> str:
    import tomli_w

    case = copy.deepcopy(doc)
    case["name"] = f"{doc.get('name', 'case')}-{pid}"
    for column in header:
        if column == "patient_id":
            continue
        cell = (row.get(column) or "").strip()
        if cell == "":
            continue  # an empty cell keeps the template's value
        path, kind = column, "value"
        for suffix in (".cv", ".sd"):
            if column.endswith(suffix):
                path, kind = column[: -len(suffix)], suffix[1:]
        where = _locate(case, path)
        if where is None:
            raise _RowError(f"{column}: the template has no quantity {path!r}")
        try:
            value = float(cell)
        except ValueError:
            raise _RowError(f"{column}: not a number: {cell[:40]!r}") from None
        if not math.isfinite(value):
            raise _RowError(f"{column}: must be finite")
        table, key = where
        try:
            table[key] = _set_value(table[key], value) if kind == "value" else _set_spread(table[key], kind, value)
        except ValueError as e:
            raise _RowError(f"{column}: {e}") from None
    return tomli_w.dumps(case)


# --- one patient ------------------------------------------------------------------------------------------


def _fingerprint(text: str, options: Mapping[str, Any]) -> str:
    blob = json.dumps({"case": text, "options": dict(options)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_patient(pid: str, text: str, file: str, options: dict, out_dir: str) -> dict[str, Any]:
    """Plan one patient and write ``out_dir/patients/<pid>.nc`` and ``.json`` (atomically); returns its row.

    A top-level function (executors pickle it). Bad input or an internal error of this patient becomes its
    row's ``status`` (``not-run`` or ``failed``) with the reason, never an exception."""
    from .case import parse_case
    from .results import write_netcdf

    fp = _fingerprint(text, options)
    base = os.path.join(out_dir, "patients", pid)
    try:
        case = parse_case(text, file)
        from .planner import plan_case

        res = plan_case(case, **options)
        write_netcdf(res.dataset, base + ".nc")
        row = _row(pid, res.summary)
    except InputError as e:
        row = {"patient_id": pid, "status": "not-run", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - one patient's failure is reported, the cohort goes on
        row = {"patient_id": pid, "status": "failed", "reason": f"{type(e).__name__}: {' '.join(str(e).split())}"}
    row["fingerprint"] = fp
    tmp = base + ".json.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(row, fh, sort_keys=True)
    os.replace(tmp, base + ".json")
    return row


def _row(pid: str, s: dict[str, Any]) -> dict[str, Any]:
    rec = s["recommended"] if s["feasible"] else s["least_risky"]
    row: dict[str, Any] = {
        "patient_id": pid,
        "status": s["status"],
        "feasible": s["feasible"],
        "vial_gbq": rec["vial_gbq"] if s["feasible"] else None,
        "hours_after_calibration": rec["hours_after_calibration"] if s["feasible"] else None,
        "p_success": rec["p_success"] if s["feasible"] else None,
        "binding_limit": s.get("binding_limit") or _binding(rec),
    }
    for r in rec.get("rules", []):  # the expected (median) dose of each judged rule at the choice
        row[f"p50_gy.{r['label']}"] = r["p50_gy"]
    return row


def _binding(rec: dict) -> str:
    """The limit closest to failing at the choice (the smallest P(kept))."""
    limits = rec.get("p_limits") or {}
    return min(limits, key=limits.get) if limits else ""


# --- the run ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CohortResult:
    rows: list[dict[str, Any]]
    dataset: Any
    summary: dict[str, Any]
    report: str | None = None  # cohort.html, when the API wrote it

    def text(self) -> str:
        from .textout import table

        s = self.summary
        head = (f"cohort of {s['patients']} patients ({s['ran']} planned, {s['resumed']} resumed, "
                f"{s['not_run']} not run, {s['failed']} failed); executor {s['executor']} with {s['workers']} worker(s)")
        rows = [(r["patient_id"], r["status"], "" if r.get("vial_gbq") is None else f"{r['vial_gbq']:g}",
                 "" if r.get("hours_after_calibration") is None else f"{r['hours_after_calibration']:.1f}",
                 "" if r.get("p_success") is None else f"{r['p_success']:.3f}", r.get("reason", "")[:60])
                for r in self.rows[:20]]
        more = f"\n... {len(self.rows) - 20} more in cohort.csv" if len(self.rows) > 20 else ""
        return head + "\n\n" + table(rows, header=("patient", "status", "vial GBq", "h", "P(targets)", "reason"),
                                     align="llrrrl") + more


def run_cohort(template_path: str, patients_path: str, out_dir: str, *, samples: int = 100_000, seed: int = 0,
               optuna_trials: int | None = None, dtype: str = "float32", executor: str = "local",
               address: str | None = None, workers: int = 1, write_cases: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> CohortResult:
    """Plan every patient of ``patients_path`` (see the module docstring) and gather the cohort's results."""
    if executor not in EXECUTORS:
        raise InputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise InputError(f"--workers: expected at least 1, got {workers}")
    template_text, patients = read_patients(template_path, patients_path)
    os.makedirs(os.path.join(out_dir, "patients"), exist_ok=True)
    if write_cases:
        _write_cases(write_cases, patients, [template_path, patients_path])
    options = {"n": samples, "seed": seed, "optuna_trials": optuna_trials, "dtype": dtype}
    rows: dict[str, dict] = {}
    todo = []
    resumed = 0
    for p in patients:
        if p.text is None:
            rows[p.patient_id] = {"patient_id": p.patient_id, "status": "not-run", "reason": p.error}
            continue
        done = _finished(out_dir, p, options)
        if done is not None:
            rows[p.patient_id] = done
            resumed += 1
        else:
            todo.append(p)
    total = len(todo)
    ran = 0
    for k, row in enumerate(_execute(todo, patients_path, options, out_dir, executor, address, workers), start=1):
        rows[row["patient_id"]] = row
        ran += row["status"] in ("ok", "low-success", "infeasible")
        if progress is not None:
            progress(k, total)
    ordered = [rows[p.patient_id] for p in patients]
    for r in ordered:
        r.pop("fingerprint", None)
    _write_table(ordered, os.path.join(out_dir, "cohort.csv"))
    ds = _dataset(ordered, template_text, options, executor, workers)
    from .results import write_netcdf

    write_netcdf(ds, os.path.join(out_dir, "cohort.nc"))
    summary = {
        "patients": len(ordered),
        "ran": ran,
        "resumed": resumed,
        "not_run": sum(r["status"] == "not-run" for r in ordered),
        "failed": sum(r["status"] == "failed" for r in ordered),
        "executor": executor,
        "workers": workers,
        "samples": samples,
        "seed": seed,
        "rows": ordered,
    }
    return CohortResult(ordered, ds, summary)


def _write_cases(folder: str, patients: list[Patient], inputs: list[str]) -> None:
    """Each patient's case as ``folder/<id>.toml``; never over an input, never into a file."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"--write-cases: {folder}: exists and is not a directory")
    try:
        os.makedirs(folder, exist_ok=True)
        for p in patients:
            if p.text is None:
                continue
            target = os.path.join(folder, f"{p.patient_id}.toml")
            if any(os.path.exists(target) and os.path.samefile(target, src) for src in inputs):
                raise InputError(f"--write-cases: {target} is an input of this command; an output never replaces an input")
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(p.text)
    except OSError as e:
        raise InputError(f"--write-cases: {folder}: cannot be written ({e.strerror})") from None


def _finished(out_dir: str, p: Patient, options: dict) -> dict | None:
    """A patient's saved row when it was planned with the same case and options (resume), else None."""
    path = os.path.join(out_dir, "patients", f"{p.patient_id}.json")
    try:
        with open(path, encoding="utf-8") as fh:
            row = json.load(fh)
    except (OSError, ValueError):
        return None
    return row if row.get("fingerprint") == _fingerprint(p.text, options) and row.get("status") != "failed" else None


def _execute(todo: list[Patient], file: str, options: dict, out_dir: str, executor: str, address: str | None,
             workers: int):
    """Yield each patient's row as it finishes."""
    args = [(p.patient_id, p.text, f"{file}: row {p.row}", options, out_dir) for p in todo]
    if not args:
        return
    if executor == "local" and workers == 1:
        for a in args:
            yield run_patient(*a)
        return
    if executor == "local":
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # JAX holds threads: a forked child could deadlock
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_patient, *a) for a in args]
            for f in concurrent.futures.as_completed(futures):
                yield f.result()
        return
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError('--executor dask: dask.distributed is not installed (pip install "y90opt[dask]")') from None
    cluster = None
    try:
        if address:
            client = Client(address, timeout="20s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
    except (OSError, ValueError, TypeError) as e:
        if cluster is not None:
            cluster.close()
        raise InputError(f"--address: {address}: cannot reach the Dask scheduler ({' '.join(str(e).split())})") from None
    try:
        futures = [client.submit(run_patient, *a, pure=False, key=f"y90opt-patient-{a[0]}-{_fingerprint(a[1], options)[:12]}")
                   for a in args]
        for f in as_completed(futures):
            yield f.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _columns(rows: list[dict]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - {"binding_limit", "reason"})
    return list(COLUMNS) + ["binding_limit"] + extra + ["reason"]


def _write_table(rows: list[dict], path: str) -> None:
    cols = _columns(rows)
    tmp = path + ".part"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k])) for k in cols})
    os.replace(tmp, path)


def _dataset(rows: list[dict], template_text: str, options: dict, executor: str, workers: int):
    import numpy as np

    from ._version import __version__
    from .results import build_dataset

    def num(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    dv = {
        "status": ("patient", np.array([r["status"] for r in rows], dtype=object)),
        "feasible": ("patient", np.array([int(bool(r.get("feasible"))) for r in rows], dtype=np.int8)),
        "vial_gbq": ("patient", num("vial_gbq")),
        "hours_after_calibration": ("patient", num("hours_after_calibration")),
        "p_success": ("patient", num("p_success")),
        "binding_limit": ("patient", np.array([r.get("binding_limit") or "" for r in rows], dtype=object)),
        "reason": ("patient", np.array([r.get("reason") or "" for r in rows], dtype=object)),
    }
    attrs = {
        "command": "cohort",
        "y90opt_version": __version__,
        "template_toml": template_text,
        "template_sha256": hashlib.sha256(template_text.encode()).hexdigest(),
        "sample_count": int(options["n"]),
        "seed": int(options["seed"]),
        "dtype": options["dtype"],
        "executor": executor,
        "workers": workers,
    }
    return build_dataset(dv, {"patient": [r["patient_id"] for r in rows]}, attrs,
                         units={"vial_gbq": "GBq", "hours_after_calibration": "h", "p_success": "1"})
