"""The plan report: figures and one self-contained HTML page, derived from a plan Dataset.

Everything shown comes from the Dataset written by ``y90opt plan`` (:func:`y90opt.planner.plan_dataset`) or
from the summary derived from it (:func:`y90opt.plan_summary.summarize_plan`); nothing here computes a dose.
Three library calls add context that the Dataset does not hold as numbers: the case is re-parsed from the
stored case text (its inputs and their uncertainty), the scenario's rules are reloaded (with the case's
overrides), and the nominal doses and advisories at the recommendation come from
:func:`y90opt.nominal.nominal_doses` and :func:`y90opt.outcomes.nominal_advisories`.

Dose distributions are drawn from the stored percentiles (p05, p50, p95) of each candidate: raw samples are
not stored, and redrawing them would compute the doses a second time.

Figures (PNG, 150 dpi, written next to ``report.html`` and linked by relative paths, so the page opens from
disk in any browser without a server):

* ``report_heatmap.png``: P(all primary targets met) over vial × treatment time, infeasible cells hatched,
  the recommendation outlined;
* ``report_doses.png``: each constrained dose at the recommendation (5th-95th percentile and median), with the
  scenario's targets and limits;
* ``report_curves.png``: P(targets) and P(each limit kept) against the vial activity at treatment, with every
  candidate and the 1 − risk line;
* ``report_tornado_<output>.png``: the one-at-a-time view of each constrained dose when a sensitivity result
  is given.

The page is deterministic: the same Dataset gives the same bytes (no time stamp other than the Dataset's own).
Numbers a check may read carry ``data-key`` and ``data-value`` attributes (``repr`` of the stored float).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import physics
from .errors import InputError
from .figures import (
    _rc,
    _zone,
    constrained_quantities,
    curve_figure,
    dose_figure,
    heatmap_figure,
    tornado_figure,
)
from .results import quantity_label

#: Figure file names (relative to the report's folder).
HEATMAP_PNG = "report_heatmap.png"
DOSES_PNG = "report_doses.png"
CURVES_PNG = "report_curves.png"
TORNADO_PNG = "report_tornado_{}.png"

#: Most candidates the folded table of every candidate lists.
MAX_TABLE_ROWS = 200

#: Candidates ranked above the recommendation that the alternatives table shows, and below it.
ALTERNATIVES_ABOVE = 10
ALTERNATIVES_BELOW = 5

# --- public API --------------------------------------------------------------------------------------------


def _write_page(path: str, page: str) -> str:
    """Write a page through a temporary file and a rename (a reader never sees half a page)."""
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path


def _data_uri(path: str) -> str:
    """A PNG file as a ``data:`` URI, so that the page carries its figures (opens offline, e-mailed alone)."""
    import base64

    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


def write_report(ds, out_dir: str | os.PathLike, sensitivity=None) -> str:
    """Write the figures and ``report.html`` for a plan Dataset into ``out_dir``; return the page's path.

    The page is self-contained: every figure is embedded in it (PNG data URIs), so ``report.html`` alone
    opens anywhere, offline. The PNG files are also written beside it, for slides and documents.

    Args:
        ds: the Dataset of ``y90opt plan`` (:attr:`y90opt.planner.PlanResult.dataset`, or read from plan.nc).
        out_dir: folder for ``report.html`` and its PNG figures (created if missing).
        sensitivity: optional :class:`y90opt.sensitivity_analysis.SensitivityResult` (or its Dataset) of the same case;
            adds tornado figures and the Sobol' indices of plan success.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    ctx = _context(ds)
    figures: dict[str, str] = {
        "heatmap": heatmap_figure(ds, os.path.join(out_dir, HEATMAP_PNG)),
        "doses": dose_figure(ds, os.path.join(out_dir, DOSES_PNG), nominal=ctx["nominal_flat"]),
        "curves": curve_figure(ds, os.path.join(out_dir, CURVES_PNG)),
    }
    sens = None
    if sensitivity is not None:
        sens = _sensitivity_section(ds, sensitivity, out_dir)
    page = render_html(ds, ctx, {k: _data_uri(v) for k, v in figures.items()}, sens)
    path = os.path.join(out_dir, "report.html")
    return _write_page(path, page)


#: The joint plan's figure (several injections).
JOINT_PNG = "report_joint.png"


def write_joint_report(ds, summary: dict[str, Any], out_dir: str | os.PathLike) -> str:
    """``report.html`` of a plan of several injections (:mod:`y90opt.joint_planner`), self-contained like
    :func:`write_report`: the status first, the order (a vial per injection, a day per session), P per limit,
    the doses at the choice, the vial × vial figure, the rules, the advisories, the Optuna check, provenance."""
    import numpy as np

    from .figures import joint_figure
    from .outcomes import flatten_nested

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rec = summary["recommended"] or summary["least_risky"]
    inj = [str(x) for x in ds["injection"].values]
    vials = ds["candidate_vial_gbq"].values
    chosen_vi = []
    for j, name in enumerate(inj):
        col = vials[:, j]
        idx = ds["candidate_vial_index"].values[:, j]
        match = idx[np.isclose(col, rec["injections"][name]["vial_gbq"])]
        chosen_vi.append(int(match[0]) if match.size else 0)
    ti = ds["candidate_time_index"].values
    times = ds["candidate_hours_after_calibration"].values
    chosen_ti = []
    for k, sname in enumerate(str(x) for x in ds["session"].values):
        j = next(i for i, n in enumerate(inj) if rec["injections"][n]["session"] == sname)
        h = rec["injections"][inj[j]]["hours_after_calibration"]
        match = ti[np.isclose(times[:, j], h), k]
        chosen_ti.append(int(match[0]) if match.size else 0)
    fig = joint_figure(ds, {"vial_index": chosen_vi, "time_index": chosen_ti}, os.path.join(out_dir, JOINT_PNG))
    status = summary["status"]
    cls = {"ok": "ok", "low-success": "warn", "infeasible": "bad"}[status]
    head = {"ok": "OK", "low-success": "LOW CHANCE OF SUCCESS", "infeasible": "INFEASIBLE: do not treat as planned"}[status]
    p = rec["p_success"]
    order = _table(["injection", "session", "vial at calibration (GBq)", "hours after calibration",
                    "at treatment (GBq)", ""],
                   [[esc(n), esc(j["session"]), f"{j['vial_gbq']:g}", f"{j['hours_after_calibration']:.1f}",
                     f"{j['activity_at_treatment_gbq']:.3g}", "delivered" if j["delivered"] else ""]
                    for n, j in rec["injections"].items()], numeric=[False, False, True, True, True, False])
    sessions = _table(["session", "treatment", "preferred day"],
                      [[esc(n), esc(x["label"]), "yes" if x["preferred"] else ""] for n, x in rec["sessions"].items()])
    limits = ""
    if summary.get("recommended"):
        limits = _table(["limit", "P(kept)", "required"],
                        [[esc(k), f"{v:.4f}", f"{1 - summary['risk']:g}"] for k, v in summary["recommended"]["p_limits"].items()],
                        numeric=[False, True, True])
    d = summary["doses_at_choice"]
    flat = {f"injections.{n}.{k}": v for n, j in d["injections"].items() for k, v in j["dose_gy"].items()}
    flat.update(flatten_nested(d["dose_gy"]))
    doses = _table(["dose at the choice (nominal inputs)", "Gy"], [[esc(k), f"{v:.4g}"] for k, v in flat.items()],
                   numeric=[False, True])
    rules = _table(["rule", "kind", "quantity", "threshold (Gy)", "source"],
                   [[esc(r["label"]), esc(r["kind"]), esc(r["quantity"]), f"{r.get('min_gy', r.get('max_gy')):g}",
                     esc(r["source"])] for r in summary["rules"]])
    adv = "".join(f"<li><code>{esc(a['code'])}</code> {esc(a['message'])}</li>" for a in summary["advisories"])
    opt = esc(summary["optuna"]["sentence"]) if "optuna" in summary else "no Optuna search"
    budgets = "".join(
        f"<li>{esc(k)}: limit {b['limit_gy']:g} Gy − prior {b['prior_gy']:.3g} Gy − delivered sessions "
        f"{b['delivered_sessions_gy']:.3g} Gy = {b['left_for_planned_sessions_gy']:.3g} Gy left</li>"
        for k, b in summary["budgets"].items())
    dsp = summary["decision_space"]
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>y90opt plan report: {esc(summary['case'])}</title>", f"<style>{_CSS}</style></head><body><main>",
        f'<h1>Y-90 glass microsphere plan of several injections: {esc(summary["case"])}</h1>',
        f'<p class="sub">scenario <code>{esc(summary["scenario"])}</code> · {summary["samples"]:,} Monte Carlo samples · '
        f'{esc(" × ".join(dsp["dims"]))} = {dsp["size"]} joint candidates ({esc(dsp["exact"])})</p>',
        '<div class="banner">Research software. This plan must be checked independently (vendor calculator, '
        "a second physicist) before any clinical use.</div>",
        f'<section class="status {cls}"><h2 data-key="status">STATUS: {head}</h2><p>{esc(summary["status_reason"])}</p>'
        f'<p>P(all primary targets met) = <b data-key="p-success">{"n/a" if p is None else f"{p:.4f}"}</b></p></section>',
        "<section><h2>" + ("Order" if status == "ok" else "The candidate shown (see the status)") + "</h2>",
        order, sessions, limits, "</section>",
        f'<section><h2>The joint choice</h2><img alt="P(targets) over vial × vial" src="{_data_uri(fig)}"></section>',
        f"<section><h2>Doses at the choice</h2>{doses}</section>",
        f"<section><h2>Budgets</h2><ul>{budgets or '<li>none</li>'}</ul></section>",
        f"<section><h2>Rules</h2>{rules}</section>",
        f"<section><h2>Advisories</h2><ul>{adv or '<li>none</li>'}</ul></section>",
        f"<section><h2>Optuna cross-check</h2><p>{opt}</p></section>",
        f"<section><h2>Provenance</h2><p>seed {summary['seed']}, {esc(summary['dtype'])}, case sha256 "
        f"<code>{esc(summary['case_sha256'])}</code>, y90opt {esc(str(ds.attrs.get('y90opt_version', '')))}</p></section>",
        "</main></body></html>",
    ]) + "\n"
    path = os.path.join(out_dir, "report.html")
    return _write_page(path, page)


def write_cohort_report(ds, out_dir: str | os.PathLike) -> str:
    """``cohort.html`` beside ``cohort.nc``: the distributions across the patients (P(targets), status, vials
    and days chosen, the binding limit) as one embedded figure, and the table of every patient."""
    from .figures import cohort_figure

    out_dir = os.fspath(out_dir)
    fig = cohort_figure(ds, os.path.join(out_dir, "cohort.png"))
    def num(v, k, fmt):
        x = float(ds[v].values[k])
        return "" if x != x else format(x, fmt)

    rows = []
    for k, pid in enumerate(ds["patient"].values):
        rows.append([esc(pid), esc(ds["status"].values[k]), num("vial_gbq", k, "g"),
                     num("hours_after_calibration", k, ".0f"), num("p_success", k, ".3f"), esc(ds["binding_limit"].values[k]), esc(ds["reason"].values[k])])
    a = ds.attrs
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>y90opt cohort report</title>", f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Cohort: {len(rows)} patients</h1>",
        f'<p class="sub">{int(a["sample_count"]):,} samples per patient, seed {a["seed"]}, {esc(a["dtype"])}, '
        f'executor {esc(a["executor"])} ({a["workers"]} workers), y90opt {esc(a["y90opt_version"])}; template sha256 '
        f'<code>{esc(a["template_sha256"])}</code></p>',
        '<div class="banner">Research software. Every plan must be checked independently before clinical use.</div>',
        f'<section><h2>Across the patients</h2><img alt="cohort distributions" src="{_data_uri(fig)}"></section>',
        "<section><h2>Every patient</h2>"
        + _table(["patient", "status", "vial (GBq)", "hours after calibration", "P(targets)", "binding limit", "reason"],
                 rows, numeric=[False, False, True, True, True, False, False]) + "</section>",
        "</main></body></html>",
    ]) + "\n"
    path = os.path.join(out_dir, "cohort.html")
    return _write_page(path, page)


#: What the report reads from a sensitivity Dataset (the Sobol' table and the tornado figures).
SENSITIVITY_VARIABLES = (
    "output", "input", "S1", "ST", "oat_nominal", "oat_low", "oat_high", "output_units", "input_units",
    "input_low", "input_high",
)


def sensitivity_matches(plan_ds, sens_ds) -> bool:
    """Whether a sensitivity Dataset was computed for this plan: the same case file (SHA-256) at the plan's
    recommended (or least risky) vial and time."""
    a, b = plan_ds.attrs, sens_ds.attrs
    try:
        return (str(a.get("case_sha256")) == str(b.get("case_sha256"))
                and math.isclose(float(a["recommended_vial_gbq"]), float(b["vial_gbq"]), rel_tol=1e-9)
                and math.isclose(float(a["recommended_hours_after_calibration"]), float(b["hours_after_calibration"]),
                                 rel_tol=1e-9, abs_tol=1e-9))
    except (KeyError, TypeError, ValueError):
        return False


def _read_results(path: str, what: str):
    """A saved Dataset, or exit status 2 with one line naming the file."""
    from .results import read_netcdf

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such {what} file")
    try:
        return read_netcdf(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable NetCDF results file ({e})") from None


def read_plan_results(path: str | os.PathLike):
    """The Dataset of a saved ``plan.nc``; exit status 2 (one line naming the file) for anything else."""
    path = os.fspath(path)
    ds = _read_results(path, "results")
    if ds.attrs.get("command") != "plan" or "p_success" not in ds:
        raise InputError(f"{path}: not the results of `y90opt plan` (command = {ds.attrs.get('command')!r})")
    return ds


def _missing_sensitivity_variables(sds) -> list[str]:
    return sorted(set(SENSITIVITY_VARIABLES) - set(sds.variables))


def read_sensitivity_results(path: str | os.PathLike):
    """The Dataset of a saved sensitivity analysis; exit status 2 naming the file (and what it lacks) otherwise."""
    path = os.fspath(path)
    sds = _read_results(path, "sensitivity results")
    missing = _missing_sensitivity_variables(sds)
    if missing:
        raise InputError(f"{path}: not the results of `y90opt sensitivity` (no {', '.join(missing)})")
    return sds


def sensitivity_beside(plan_ds, results_path: str | os.PathLike):
    """``sensitivity.nc`` beside a plan's results, when it is readable and belongs to that plan (the same case,
    at the recommended decision). Returns (its Dataset or None, its path or None, why it was left out or None)."""
    from .results import read_netcdf

    beside = os.path.join(os.path.dirname(os.path.abspath(results_path)), "sensitivity.nc")
    if not os.path.isfile(beside):
        return None, None, None
    try:
        sds = read_netcdf(beside)
    except (OSError, ValueError):
        return None, beside, "not readable"
    if _missing_sensitivity_variables(sds):
        return None, beside, "not the results of `y90opt sensitivity`"
    if not sensitivity_matches(plan_ds, sds):
        return None, beside, "computed for another case or decision than this plan's"
    return sds, beside, None


def default_report_dir(results_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> str:
    """``out_dir``, or the folder of the results file."""
    return os.fspath(out_dir) if out_dir is not None else os.path.dirname(os.path.abspath(results_path))


def report_from_netcdf(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, sensitivity=None) -> str:
    """Rebuild the report from a saved ``plan.nc``; ``out_dir`` defaults to the file's folder. Returns the
    path of ``report.html``. ``sensitivity`` may be a SensitivityResult, its Dataset or a NetCDF path."""
    ds = read_plan_results(path)
    if "plan_summary_json" in ds.attrs:  # a plan of several injections
        import json

        return write_joint_report(ds, json.loads(ds.attrs["plan_summary_json"]), default_report_dir(path, out_dir))
    if isinstance(sensitivity, str | os.PathLike):
        sensitivity = read_sensitivity_results(sensitivity)
    return write_report(ds, default_report_dir(path, out_dir), sensitivity=sensitivity)


# --- what the page shows, gathered once -------------------------------------------------------------------


def _context(ds) -> dict[str, Any]:
    """Summary, case, rules, nominal doses and advisories at the recommendation (or the least risky
    candidate). The case part degrades to notes when the stored case cannot be re-parsed."""
    from .plan_summary import summarize_plan

    summary = summarize_plan(ds)
    a = ds.attrs
    i, j = int(a["recommended_index_vial"]), int(a["recommended_index_time"])
    ctx: dict[str, Any] = {
        "summary": summary,
        "index": (i, j),
        "case": None,
        "active": None,
        "nominal": None,
        "nominal_flat": {},
        "advisories": [],
        "notes": [],
    }
    try:
        from .case import parse_case
        from .nominal import nominal_doses
        from .outcomes import active_rules, flatten_doses, nominal_advisories

        case = parse_case(str(a["case_toml"]), str(a.get("case_path", "<case>")))
        ctx["case"] = case
        ar = active_rules(case)
        ctx["active"] = ar
        when = _dt.datetime.fromisoformat(str(ds["time_local"].values[j]))
        plan = dataclasses.replace(case.plan, vial_gbq=float(ds["vial"].values[i]), treatment=when)
        at_rec = dataclasses.replace(case, plan=plan)
        nominal = nominal_doses(at_rec)
        ctx["nominal"] = nominal
        ctx["nominal_flat"] = flatten_doses(nominal["dose_gy"])
        if "advisories" not in a:  # results written before the planner stored them
            ctx["advisories"] = nominal_advisories(at_rec, nominal, ar)
    except Exception as e:  # noqa: BLE001 - the page still shows everything the Dataset holds
        ctx["notes"].append(f"the stored case could not be re-read ({type(e).__name__}: {e}); "
                            "inputs and nominal doses are not shown")
    if "advisories" in a:
        ctx["advisories"] = list(summary.get("advisories", []))
    if a.get("rules_not_evaluated") and not any(x.get("code") == "rule-not-evaluated" for x in ctx["advisories"]):
        ctx["advisories"] = list(ctx["advisories"]) + [{
            "code": "rule-not-evaluated",
            "message": f"rules not evaluated (the case gives no dose for them): {a['rules_not_evaluated']}",
        }]
    bad = int(a.get("unphysical_sample_count", 0))
    if bad:
        ctx["advisories"] = list(ctx["advisories"]) + [{
            "code": "unphysical-samples",
            "message": f"{bad} of {int(a['sample_count'])} samples were unphysical (tumours larger than their "
            "territory) and left out of every probability",
        }]
    return ctx


# --- sensitivity ------------------------------------------------------------------------------------------


def _sensitivity_section(ds, sensitivity, out_dir: str) -> dict[str, Any]:
    sds = getattr(sensitivity, "dataset", sensitivity)
    outputs = [str(o) for o in sds["output"].values]
    figs = []
    for q in constrained_quantities(ds):
        name = f"dose_gy.{q}"
        if name in outputs:
            fname = TORNADO_PNG.format(_safe(q))
            with _rc():
                tornado_figure(sds, name, os.path.join(out_dir, fname))
            figs.append((q, _data_uri(os.path.join(out_dir, fname))))
    rows = []
    if "success" in outputs:
        sub = sds.sel(output="success")
        for k, inp in enumerate(sds["input"].values):
            rows.append((str(inp), str(sub["input_distribution"].values[k]) if "input_distribution" in sub else "",
                         float(sub["S1"].values[k]), float(sub["ST"].values[k]),
                         float(sub["ST_lo"].values[k]) if "ST_lo" in sub else float("nan"),
                         float(sub["ST_hi"].values[k]) if "ST_hi" in sub else float("nan")))
        rows.sort(key=lambda r: -np.nan_to_num(r[3]))
    a = sds.attrs
    other = bool(a.get("case_sha256")) and str(a.get("case_sha256")) != str(ds.attrs.get("case_sha256"))
    at_rec = True
    with contextlib.suppress(KeyError, TypeError, ValueError):
        at_rec = (abs(float(a["vial_gbq"]) - float(ds.attrs["recommended_vial_gbq"])) < 1e-9
                  and abs(float(a["hours_after_calibration"]) - float(ds.attrs["recommended_hours_after_calibration"])) < 1e-6)
    return {"figures": figs, "success_rows": rows, "other_case": other, "at_recommendation": at_rec, "attrs": {k: a[k] for k in (
        "method", "input_dependence", "samples", "seed", "vial_gbq", "hours_after_calibration", "case_sha256") if k in a}}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# --- HTML --------------------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1a1a1a; --muted:#5b6470; --line:#d9dde3; --bg:#ffffff; --panel:#f6f8fa; --ok:#0b7a4b;
        --bad:#b3261e; --warn:#8a5a00; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 26px; margin: 4px 0 2px; }
h2 { font-size: 19px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 12px; }
.banner { border: 2px solid var(--bad); background: #fdf0ef; color: #5c1410; padding: 8px 14px; border-radius: 6px;
          font-weight: 600; margin: 10px 0 16px; }
.cards { display: grid; grid-template-columns: 1.25fr 1fr; gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; background: var(--panel); }
.card.ok { border-left: 6px solid var(--ok); }
.card.bad { border-left: 6px solid var(--bad); }
.card.warn { border-left: 6px solid var(--warn); background: #fff8e6; }
.card.warn .prob { color: var(--warn); }
.status { border-radius: 8px; padding: 10px 16px; margin: 8px 0 14px; font-size: 15px; }
.status b { font-size: 17px; letter-spacing: .02em; }
.status.ok { border: 2px solid var(--ok); background: #e9f6ef; }
.status.low-success { border: 2px solid var(--warn); background: #fff3d6; }
.status.infeasible { border: 2px solid var(--bad); background: #fdf0ef; }
.card h3 { margin-top: 0; font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
.big { font-size: 30px; font-weight: 700; line-height: 1.15; }
.big small { font-size: 17px; font-weight: 600; color: var(--muted); }
.kv { display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px; margin-top: 8px; }
.kv dt { color: var(--muted); }
.kv dd { margin: 0; font-variant-numeric: tabular-nums; }
.prob { font-size: 34px; font-weight: 700; color: var(--ok); }
.card.bad .prob { color: var(--bad); }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; overflow-wrap: normal; word-break: normal; hyphens: manual; }
td.verdict { min-width: 15em; }
td.verdict b { white-space: nowrap; }
.scroll { overflow-x: auto; }
.scroll table { font-size: 13px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.rec td { background: #fff4e5; font-weight: 600; }
td.fail { color: var(--bad); font-weight: 600; }
td.pass { color: var(--ok); }
.tag { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.tag.ok { background: #dff3e9; color: var(--ok); }
.tag.bad { background: #fbe3e1; color: var(--bad); }
.tag.muted { background: #eceff3; color: var(--muted); }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figure img.w900 { width: 900px; }
td.nw { white-space: nowrap; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.adv-box { border: 1px solid #e8c97a; background: #fff8e6; border-radius: 8px; padding: 10px 16px; margin: 14px 0; }
.adv-box.ok { border-color: var(--line); background: var(--panel); }
.tag.warn { background: #f6e3b4; color: var(--warn); }
ul.adv { padding-left: 20px; margin: 6px 0 0; }
ul.adv li { margin: 3px 0; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 10px; overflow-x: auto; border-radius: 6px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.muted { color: var(--muted); }
footer { margin-top: 34px; padding-top: 10px; border-top: 2px solid var(--line); color: var(--muted); font-size: 13px; }
@media (max-width: 860px) { .cards, .grid2 { grid-template-columns: 1fr; } }
@media print {
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  figure, table, .card { break-inside: avoid; }
  .card, th, tr.rec td, .banner { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def esc(x: Any) -> str:
    """HTML-escape any value shown on the page (user text included)."""
    return html.escape(str(x), quote=True)


def _num(key: str, value: float, text: str | None = None, fmt: str = ".3f", scale: float = 1.0) -> str:
    """A number a check can read back: the exact value in ``data-value``, the rounded one shown (in units of
    ``data-scale`` when given, e.g. millions of spheres)."""
    v = float(value)
    shown = text if text is not None else format(v / scale, fmt)
    extra = f' data-scale="{scale!r}"' if scale != 1.0 else ""
    return f'<span data-key="{esc(key)}" data-value="{esc(repr(v))}"{extra}>{esc(shown)}</span>'


def _p(p: float) -> str:
    return f"{float(p):.3f}"


def _se(p: float, n: int) -> float:
    """Monte Carlo standard error of a probability estimated from n samples."""
    p = float(p)
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _when(iso: str) -> str:
    w = _dt.datetime.fromisoformat(str(iso))
    zone = w.tzname() or ""
    return f"{w.strftime('%a %Y-%m-%d %H:%M')} {zone}".strip()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = (), row_class=None) -> str:
    """A table from already-escaped cell HTML."""
    numeric = list(numeric) + [False] * (len(header) - len(numeric))
    out = ["<table>"]
    if any(header):
        out.append("<thead><tr>")
        out += [f'<th class="n">{h}</th>' if numeric[k] else f"<th>{h}</th>" for k, h in enumerate(header)]
        out.append("</tr></thead>")
    out.append("<tbody>")
    for r, row in enumerate(rows):
        cls = row_class(r) if row_class else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for k, cell in enumerate(row):
            if isinstance(cell, tuple):  # (html, extra class)
                cell, extra = cell
            else:
                extra = ""
            classes = " ".join(c for c in ("n" if numeric[k] else "", extra) if c)
            out.append(f'<td class="{classes}">{cell}</td>' if classes else f"<td>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(ds, ctx: dict[str, Any], figures: dict[str, str], sens: dict[str, Any] | None = None) -> str:
    """The report page (a string); ``figures`` maps ``heatmap``/``doses``/``curves`` to relative PNG paths."""
    s = ctx["summary"]
    a = ds.attrs
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>y90opt plan report: {esc(s['case'])}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header(ds, ctx),
        _recommendation(ds, ctx, figures),
        _choice_section(ds, ctx, figures),
        _alternatives(ds, ctx),
        _optuna(s),
        _rules_section(ds, ctx),
        _case_section(ds, ctx),
    ]
    if sens is not None:
        parts.append(_sensitivity_html(sens))
    parts += [_provenance(ds), _footer(a), "</main></body></html>"]
    return "\n".join(p for p in parts if p) + "\n"


def _header(ds, ctx) -> str:
    s = ctx["summary"]
    ar = ctx["active"]
    scen = ""
    if ar is not None:
        sc = ar.scenario
        scen = (f"DSC 2022 scenario {sc.dsc_scenario}: {esc(sc.title)} ({esc(sc.intent)} intent; "
                f"{esc(sc.preferred_model)} model preferred)")
    else:
        scen = f"scenario {esc(s['scenario'])}"
    return (
        f'<h1>Y-90 glass microsphere plan: <span data-key="case-name">{esc(s["case"])}</span></h1>'
        f'<p class="sub">{scen} · scenario id <code>{esc(s["scenario"])}</code> · '
        f'{_num("samples", s["samples"], fmt=",.0f")} Monte Carlo samples · '
        f'{s["candidates"]} candidates (vial × treatment time)</p>'
        '<div class="banner">Research software. This plan must be checked independently (vendor calculator, '
        "a second physicist) before any clinical use.</div>"
    )


def _recommendation(ds, ctx, figures: dict[str, str]) -> str:
    s = ctx["summary"]
    a = ds.attrs
    i, j = ctx["index"]
    n = int(a.get("valid_sample_count", s["samples"]))
    risk = float(s["risk"])
    feasible = bool(s["feasible"])
    r = s["recommended"] if feasible else s["least_risky"]
    label = str(ds["time_label"].values[j])
    status = s.get("status", "ok" if feasible else "infeasible")
    words = {"ok": "ok", "low-success": "LOW CHANCE OF SUCCESS", "infeasible": "INFEASIBLE"}[status]
    out = ["<h2>Recommendation</h2>",
           f'<div class="status {status}" data-key="status" data-value="{esc(status)}"><b>Status: {words}.</b> '
           f'{esc(s.get("status_reason", ""))}</div>']
    cls = {"ok": "ok", "low-success": "warn", "infeasible": "bad"}[status]
    head = {"ok": "Order and schedule", "low-success": "Best feasible candidate: a low chance of success",
            "infeasible": "No feasible plan: the least risky candidate"}[status]
    out.append(f'<div class="cards"><div class="card {cls}"><h3>{head}</h3>')
    out.append(
        f'<div class="big">{_num("recommended-vial-gbq", r["vial_gbq"], fmt="g")} GBq vial '
        f'<small>({_num("recommended-vial-mci", r["vial_mci"], fmt=".0f")} mCi at calibration)</small></div>'
        f'<div class="big" style="font-size:24px;margin-top:6px">treat <span data-key="recommended-treatment-label">'
        f"{esc(label)}</span></div>"
    )
    out.append('<dl class="kv">')
    kv = [
        ("vial calibration", f'<span data-key="calibration">{esc(_when(r["calibration"]))}</span>'),
        ("treatment", f'<span data-key="recommended-treatment-local" data-value="{esc(r["treatment_local"])}">'
         f'{esc(_when(r["treatment_local"]))}</span> · '
         f'{_num("recommended-hours", r["hours_after_calibration"], fmt=".1f")} h after calibration'),
        ("vial at treatment", f'{_num("recommended-vial-at-treatment-gbq", r["vial_at_treatment_gbq"], fmt=".3g")} GBq '
         f'({physics.gbq_to_mci(r["vial_at_treatment_gbq"]):.0f} mCi)'),
        ("spheres in the vial", f'{_num("recommended-spheres", r["spheres"], fmt=".2f", scale=1e6)} million'),
        ("activity per sphere", f'{_num("recommended-activity-per-sphere-bq", r["activity_per_sphere_bq"], fmt=".0f")} Bq at treatment'),
    ]
    nom = ctx["nominal"]
    if nom is not None:
        act = nom["activity_gbq"]
        kv.append(("injected (nominal)", f"{act['injected']:.2f} GBq after the residual: "
                   f"{act['liver']:.2f} GBq to the liver, {act['lung']:.2f} GBq to the lungs"))
    out += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv]
    out.append("</dl></div>")
    # probabilities card
    p = r["p_success"]
    ptitle = {"ok": "Chance of success", "low-success": "Chance of success: LOW",
              "infeasible": "Probabilities at this candidate"}[status]
    out.append(f'<div class="card {cls}"><h3>{ptitle}</h3>')
    out.append(f'<div class="prob">{_num("recommended-p-success", p)}</div>'
               f'<div class="muted">P(all primary targets met) ± {_se(p, n):.3f} (Monte Carlo SE); '
               f'{esc(s["success_definition"])}</div>')
    out.append(f'<p class="muted">P(targets met and every limit kept) = '
               f'{_num("recommended-p-joint", float(ds["p_joint"].values[i, j]))}</p>')
    rows = []
    for lab, pl in r["p_limits"].items():
        kept = pl >= 1 - risk - 1e-12
        rows.append((esc(lab), (_num(f"recommended-p-limit-{lab}", pl), "pass" if kept else "fail"),
                     f"≥ {1 - risk:.3g}", '<span class="tag ok">kept</span>' if kept else '<span class="tag bad">not kept</span>'))
    out.append(_table(("limit", "P(kept)", "required", ""), rows, (False, True, True, False)))
    out.append("</div></div>")
    if not feasible:
        out.append(
            f'<div class="card bad" style="margin-top:14px"><h3>Why nothing is feasible</h3>'
            f'<p>Binding limit: <b data-key="binding-limit">{esc(s["binding_limit"])}</b></p>'
            f'<p data-key="relax">What would relax it: {esc(s["relax"])}</p></div>'
        )
    out.append(_advisories(ctx))
    out.append(
        f'<h3>Doses at this candidate</h3><figure><img src="{esc(figures["doses"])}" '
        'alt="dose distributions at the recommendation" class="w900">'
        "<figcaption>Bar: 5th to 95th percentile over the input uncertainty; thick tick: median; diamond: nominal "
        "(every input at its measured value). Green dashed: targets (minimum doses); green dotted: secondary targets; "
        "orange solid: limits (maximum doses).</figcaption></figure>")
    out.append(_dose_table(ds, ctx))
    return "".join(out)


def _dose_table(ds, ctx) -> str:
    if "dose_p50" not in ds:
        return '<p class="muted">Dose percentiles were not stored with these results.</p>'
    i, j = ctx["index"]
    qs_all = [str(q) for q in ds["quantity"].values]
    rules = list(zip([str(x) for x in ds["rule_quantity"].values], [str(x) for x in ds["rule_kind"].values],
                     ds["rule_threshold"].values.astype(float), [str(x) for x in ds["rule"].values], strict=True))
    p_rule = ds["p_rule"].values[i, j] if "p_rule" in ds else None
    nominal = ctx["nominal_flat"]
    rows = []
    for q in constrained_quantities(ds):
        k = qs_all.index(q)
        cells = [f"{esc(quantity_label(q))} <span class='muted'>({esc(q)})</span>"]
        for pct in ("p05", "p50", "p95"):
            v = float(ds[f"dose_{pct}"].values[i, j, k])
            cells.append(_num(f"dose-{q}-{pct}", v, f"{v:.1f}"))
        cells.append(f"{nominal[q]:.1f}" if q in nominal else "–")
        rl = []
        for r, (rq, kind, thr, lab) in enumerate(rules):
            if rq != q:
                continue
            op = "≥" if kind != "limit" else "≤"
            pr = f" (P = {_num(f'p-rule-{lab}', p_rule[r])})" if p_rule is not None else ""
            rl.append(f"{esc(kind)} {op} {thr:g} Gy <span class='muted'>[{esc(lab)}]</span>{pr}")
        cells.append("<br>".join(rl) or "<span class='muted'>no rule</span>")
        rows.append(cells)
    return ("<h3>Expected doses at this candidate</h3>" + _table(
        ("dose", "p05 Gy", "median Gy", "p95 Gy", "nominal Gy", "rules (P satisfied)"), rows,
        (False, True, True, True, True, False))
        + '<p class="muted">Percentiles over the input uncertainty (Monte Carlo); nominal = every input at its '
        "measured value, as a deterministic calculator would give.</p>")


def _same_vial_schedule(ds, ctx) -> str:
    """The recommended vial on every candidate day: what changes if the procedure moves."""
    i, j0 = ctx["index"]
    risk = float(ds.attrs["risk"])
    acceptable = float(ds.attrs.get("acceptable_success", 0.5))
    limits = [str(x) for x in ds["limit"].values]
    rows = []
    for j in range(ds.sizes["time"]):
        pl = ds["p_limit"].values[i, j]
        fails = [lab for k, lab in enumerate(limits) if pl[k] < 1 - risk - 1e-12]
        rows.append(((esc(_short_time(ds, j)), "nw"), f"{float(ds['hours_after_calibration'].values[j]):.1f}",
                     f"{float(ds['vial_at_treatment'].values[i, j]):.3g}", _p(ds["p_success"].values[i, j]),
                     _verdict(fails, float(ds["p_success"].values[i, j]), acceptable)))
    vial = float(ds["vial"].values[i])
    return (f"<h3>If the day changes: the {vial:g} GBq vial on each candidate day</h3>"
            + _table((f"treatment ({esc(_zone(ds))})", "h after calibration", "vial at treatment GBq", "P(targets)", ""), rows,
                     (False, True, True, True, False), row_class=lambda r: "rec" if r == j0 else ""))


def _verdict(fails: list[str], p_success: float, acceptable: float) -> str:
    """A candidate's badge: green only when every limit is kept AND the targets are likely (the status rule)."""
    if fails:
        return f'<span class="tag bad">fails {esc(", ".join(fails))}</span>'
    if p_success < acceptable:
        return f'<span class="tag warn">limits kept; P(targets) below {acceptable:g}</span>'
    return '<span class="tag ok">limits kept; targets likely</span>'


def _choice_section(ds, ctx, figures: dict[str, str]) -> str:
    risk = float(ds.attrs["risk"])
    what = _rec_name(ctx)
    return (
        "<h2>Choosing the vial and the day</h2>"
        f'<figure><img src="{esc(figures["heatmap"])}" alt="P(targets met) over vial and treatment time" class="w900">'
        "<figcaption>Probability that every primary target is met, per candidate vial and treatment time. Hatched "
        f"cells keep some limit with probability below {1 - risk:.3g} (not allowed); the outlined cell is the "
        f"{what}.</figcaption></figure>"
        + _same_vial_schedule(ds, ctx)
        + f'<figure><img src="{esc(figures["curves"])}" alt="probabilities against activity at treatment" class="w900">'
        "<figcaption>Each probability as a function of the vial activity at treatment: every candidate is one point "
        "on these curves (the same samples serve all). Markers: candidates by vial, hollow when a limit fails; "
        "shaded: activities at which every limit is kept.</figcaption></figure>"
    )


def _rec_name(ctx) -> str:
    return "recommendation" if ctx["summary"]["feasible"] else "least risky candidate"


def _short_time(ds, j: int, year: bool = True) -> str:
    when = _dt.datetime.fromisoformat(str(ds["time_local"].values[j]))
    return when.strftime("%a %Y-%m-%d %H:%M" if year else "%a %d %b %H:%M")


def _candidate_table(ds, ctx, shown: list[tuple[int, int]], rank: dict[tuple[int, int], int], key: str) -> str:
    s = ctx["summary"]
    i0, j0 = ctx["index"]
    risk = float(s["risk"])
    tol = float(s["tie_tolerance"])
    feasible_plan = bool(s["feasible"])
    limits = [str(x) for x in ds["limit"].values]
    ps = ds["p_success"].values.astype(float)
    pl = ds["p_limit"].values.astype(float)
    best = ps[i0, j0]
    rows = []
    for a_, b_ in shown:
        fails = [lab for k, lab in enumerate(limits) if pl[a_, b_, k] < 1 - risk - 1e-12]
        if (a_, b_) == (i0, j0):
            status = s.get("status", "ok")
            why = ('<span class="tag ok">recommended</span>' if status == "ok" else
                   '<span class="tag warn">best feasible: low P(targets)</span>' if status == "low-success" else
                   '<span class="tag bad">least risky</span>')
        elif fails:
            why = "ruled out by " + ", ".join(f"<b>{esc(lab)}</b>" for lab in fails)
        elif feasible_plan and ps[a_, b_] >= best - tol:
            why = f"tied (within {tol:g}): the preferred day, then the smaller vial, then the earlier time wins"
        elif feasible_plan:
            why = f"lower P(targets) ({ps[a_, b_] - best:+.3f})"
        else:
            why = "a limit is less likely kept"
        vial = float(ds["vial"].values[a_])
        cells = [str(rank[(a_, b_)]),
                 _num(f"{key}-{a_}-{b_}-vial", vial, fmt="g"),
                 (f"{esc(_short_time(ds, b_, year=False))} <span class='muted'>"
                  f"{float(ds['hours_after_calibration'].values[b_]):.0f} h</span>", "nw"),
                 f"{float(ds['vial_at_treatment'].values[a_, b_]):.3g}",
                 _num(f"{key}-{a_}-{b_}-p-success", ps[a_, b_])]
        for k in range(len(limits)):
            p = pl[a_, b_, k]
            cells.append((f"{p:.3f}", "fail" if p < 1 - risk - 1e-12 else ""))
        cells.append((why, "verdict"))
        rows.append(cells)
    return '<div class="scroll">' + _table(
        ("#", "vial GBq", f"treatment ({esc(_zone(ds))})", "GBq at treatment", "P(targets)",
         *[f"P({esc(lab)})" for lab in limits], "verdict"), rows,
        (True, True, False, True, True, *[True] * len(limits), False),
        row_class=lambda r: "rec" if shown[r] == (i0, j0) else "") + "</div>"


def _alternatives(ds, ctx) -> str:
    """The candidates ranked by P(targets): those that beat the recommendation and why they lost, the
    recommendation, the next few; every candidate in a folded table."""
    s = ctx["summary"]
    i0, j0 = ctx["index"]
    risk = float(s["risk"])
    tol = float(s["tie_tolerance"])
    ps = ds["p_success"].values.astype(float)
    order = [(int(a_), int(b_)) for a_, b_ in np.dstack(np.unravel_index(
        np.argsort(-ps, axis=None, kind="stable"), ps.shape))[0]]
    rank = {ij: r + 1 for r, ij in enumerate(order)}
    pos = order.index((i0, j0))
    shown = order[:min(pos, ALTERNATIVES_ABOVE)] + order[pos:pos + 1 + ALTERNATIVES_BELOW]
    if pos > ALTERNATIVES_ABOVE:
        shown = order[:ALTERNATIVES_ABOVE] + [(i0, j0)] + order[pos + 1:pos + 1 + ALTERNATIVES_BELOW]
    out = [
        "<h2>Alternatives and why they lost</h2>",
        f"<p>Candidates ranked by P(all primary targets met). A candidate is feasible when each limit is kept with "
        f"probability ≥ {1 - risk:.3g}; among feasible candidates the highest P(targets) wins, and those within "
        f"{tol:g} of it are tied. Shown: the candidates ranked above the {_rec_name(ctx)}"
        f"{f' (the best {ALTERNATIVES_ABOVE})' if pos > ALTERNATIVES_ABOVE else ''}, the {_rec_name(ctx)} and the next "
        f"{ALTERNATIVES_BELOW}. P(limit) is the probability that the limit is kept; red: below {1 - risk:.3g}.</p>",
        _candidate_table(ds, ctx, shown, rank, "alt"),
    ]
    front = s.get("tradeoff") or []
    if front:
        keys = {(float(c["vial_gbq"]), float(c["hours_after_calibration"])) for c in front}
        vials = ds["vial"].values.astype(float)
        hours = ds["hours_after_calibration"].values.astype(float)
        pts = [ij for ij in order if (float(vials[ij[0]]), float(hours[ij[1]])) in keys]
        out.append(f"<details><summary>Trade-off front ({len(pts)} candidates)</summary><p>Candidates that no other "
                   "candidate beats on both P(targets) and the least likely kept limit: what a larger vial or an "
                   "earlier day buys, and what it risks.</p>" + _candidate_table(ds, ctx, pts, rank, "front")
                   + "</details>")
    every = order[:MAX_TABLE_ROWS]
    more = f" (the best {MAX_TABLE_ROWS})" if len(order) > MAX_TABLE_ROWS else ""
    out.append(f"<details><summary>All {len(order)} candidates{more}</summary>"
               + _candidate_table(ds, ctx, every, rank, "cand") + "</details>")
    return "".join(out)


def _rules_section(ds, ctx) -> str:
    a = ds.attrs
    risk = float(a["risk"])
    rows = []
    labels = [str(x) for x in ds["rule"].values]
    for r, lab in enumerate(labels):
        kind = str(ds["rule_kind"].values[r])
        op = "≤" if kind == "limit" else "≥"
        role = {"target": "primary target: defines success", "secondary": "secondary target: reported only",
                "limit": f"limit: kept with P ≥ {1 - risk:.3g}"}.get(kind, kind)
        rows.append((f"<code>{esc(lab)}</code>", esc(quantity_label(str(ds["rule_quantity"].values[r]))),
                     f"{op} {float(ds['rule_threshold'].values[r]):g} Gy", esc(role), esc(ds["rule_source"].values[r])))
    out = ["<h2>Scenario rules</h2>",
           _table(("rule", "dose", "threshold", "role", "source"), rows)]
    ar = ctx["active"]
    if ar is not None:
        sc = ar.scenario
        w = sc.window
        days = f" ({esc(w.days[0])} to {esc(w.days[-1])})" if w.days else ""
        out.append(f"<p><b>Treatment window</b>: {w.start_h:g} to {w.end_h:g} h after calibration{days}; preferred "
                   f"{', '.join(f'{p:g}' for p in w.preferred_h)} h{' (a default: the DSC sets none)' if w.default else ''}. "
                   f"<span class='muted'>Source: {esc(w.source)}</span></p>")
        out.append(f"<p><b>Scenario source</b>: {esc(sc.source)}</p>")
        if sc.applied:
            out.append("<p><b>Case overrides</b>: " + "; ".join(esc(x) for x in sc.applied) + "</p>")
        if ar.counted_tumors:
            out.append(f"<p><b>Tumours counted for success</b> ({esc(ar.success)}): {esc(', '.join(ar.counted_tumors))}</p>")
    if a.get("rules_not_evaluated"):
        out.append(f"<p class='muted'>Not evaluated (no dose for them): {esc(a['rules_not_evaluated'])}</p>")
    return "".join(out)


def _case_section(ds, ctx) -> str:
    s = ctx["summary"]
    a = ds.attrs
    conv = s["conventions"]
    out = ["<h2>Case and conventions</h2>", '<div class="grid2"><div>', "<h3>Inputs and their uncertainty</h3>"]
    case = ctx["case"]
    if case is not None:
        rows = [(f"<code>{esc(k)}</code>", esc(v.describe())) for k, v in case.inputs.items()]
        if case.prior_lung_dose_gy:
            rows.append(("<code>lung.prior_dose_gy</code>", f"{case.prior_lung_dose_gy:g} Gy"))
        untreated = [t.name for t in case.tumors if not t.treated]
        out.append(_table(("input", "value and uncertainty"), rows))
        if untreated:
            out.append(f"<p class='muted'>Untreated tumours (no activity; subtracted from the whole-liver normal "
                       f"mass): {esc(', '.join(untreated))}</p>")
        if case.correlations:
            out.append("<p><b>Correlations</b> (Gaussian copula): " + "; ".join(
                f"<code>{esc(x)}</code> ↔ <code>{esc(y)}</code> ρ = {rho:g}" for x, y, rho in case.correlations) + "</p>")
        out.append("<p class='muted'>{value, cv} means lognormal with that median; the medians are the measured "
                   "values, so the probabilities answer “how sure is the planned dose”.</p>")
    for note in ctx["notes"]:
        out.append(f"<p class='muted'>{esc(note)}</p>")
    if a.get("bias_used"):
        out.append(f"<p><span class='tag bad'>research</span> {esc(a['bias_used'])}</p>")
    out.append("</div><div><h3>Conventions</h3>")
    rows = [
        ("dose constant K", _num("conv-k", conv["dose_constant_gy_kg_per_gbq"], f"{conv['dose_constant_gy_kg_per_gbq']:g}") + " Gy·kg/GBq"),
        ("Y-90 half-life", _num("conv-half-life", conv["half_life_h"], f"{conv['half_life_h']:g}") + " h"),
        ("tissue density", _num("conv-density", conv["tissue_density_g_per_ml"], f"{conv['tissue_density_g_per_ml']:g}") + " g/mL"),
        ("activity per sphere at calibration", f"{conv['bq_per_sphere_at_calibration']:g} Bq"),
    ]
    out.append(_table(("convention", "value"), rows))
    out.append("<h3>Decision space</h3>")
    out.append(_table(("", ""), [
        ("vials (GBq at calibration)", esc(", ".join(f"{v:g}" for v in s["vials_gbq"])) + f" <span class='muted'>({esc(a.get('vial_source', ''))})</span>"),
        ("treatment times", f"{len(s['hours_after_calibration'])} <span class='muted'>({esc(a.get('time_source', ''))})</span>"),
        ("calibration", esc(_when(a["calibration"]))),
        ("site time zone", esc(a.get("site_timezone", ""))),
        ("risk per limit", f"{float(a['risk']):g} (each limit kept with P ≥ {1 - float(a['risk']):.3g})"),
        ("tie tolerance", f"{float(a['tie_tolerance']):g}"),
    ]))
    out.append("</div></div>")
    return "".join(out)


def _advisories(ctx) -> str:
    adv = ctx["advisories"]
    if not adv:
        return ('<div class="adv-box ok" data-key="advisories" data-value="0"><b>Advisories:</b> none at the '
                "recommendation's nominal inputs.</div>")
    items = "".join(f'<li><span class="tag warn">{esc(x["code"])}</span> {esc(x["message"])}</li>' for x in adv)
    return (f'<div class="adv-box" data-key="advisories" data-value="{len(adv)}"><b>Advisories</b> '
            "<span class='muted'>(advice on the nominal inputs at this candidate; never applied by the planner)</span>"
            f"<ul class='adv'>{items}</ul></div>")


def _optuna(s) -> str:
    if "optuna" not in s:
        return ("<h2>Optuna cross-check</h2><p class='muted'>Not run for these results (exact enumeration only; "
                "use <code>--optuna-trials</code>).</p>")
    o = s["optuna"]
    match = o.get("matches_exact")
    tag = ('<span class="tag ok">matches the exact optimum</span>' if match else
           '<span class="tag bad">does not match the exact optimum</span>' if match is not None else "")

    def pick(d) -> str:
        if not isinstance(d, dict) or "vial_gbq" not in d:
            return "–"
        return f"{float(d['vial_gbq']):g} GBq at {float(d.get('hours_after_calibration', float('nan'))):.1f} h"

    lines = [f"<p data-key='optuna-matches' data-value='{esc(repr(match))}'>{tag}</p>",
             f"<p data-key='optuna-sentence'>{esc(o.get('sentence', ''))}</p>", "<dl class='kv'>"]
    kv = [
        ("Optuna's best", pick(o.get("best"))
         + (f", P(targets) = {float(o['best_p_success']):.3f}" if o.get("best_p_success") is not None else "")),
        ("exact enumeration", pick(o.get("exact"))
         + (f", P(targets) = {float(o['exact_p_success']):.3f}" if o.get("exact_p_success") is not None else "")),
        ("trials", str(o.get("trials", "–"))),
        ("sampler", str(o.get("sampler", "–"))),
    ]
    if o.get("gap") is not None:
        kv.append(("gap in P(targets)", f"{float(o['gap']):.3g}"))
    if o.get("storage"):
        kv.append(("storage / study", f"{o['storage']} / {o.get('study_name', '')}"))
    lines += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv]
    lines.append("</dl>")
    rows = [(esc(k), esc(json.dumps(v, sort_keys=True) if not isinstance(v, str) else v)) for k, v in sorted(o.items())]
    lines.append("<details><summary>The full Optuna record</summary>" + _table(("field", "value"), rows) + "</details>")
    return "<h2>Optuna cross-check</h2>" + "".join(lines)


def _sensitivity_html(sens: dict[str, Any]) -> str:
    a = sens["attrs"]
    out = ["<h2>Sensitivity</h2>"]
    where = ""
    if "vial_gbq" in a:
        at_rec = sens.get("at_recommendation", True)
        where = (f" at {'the recommendation' if at_rec else 'the decision of the sensitivity file'} "
                 f"({float(a['vial_gbq']):g} GBq, {float(a.get('hours_after_calibration', float('nan'))):.0f} h after "
                 "calibration)")
    out.append(f"<p>Which measured input drives each dose{esc(where)}: each input at its 5th and 95th percentile, "
               "the others at their measured values.</p>")
    if a.get("method"):
        out.append(f"<p class='muted'>{esc(a['method'])}. {esc(a.get('input_dependence', ''))}</p>")
    if sens.get("other_case"):
        out.append("<p class='adv-box'>These indices were computed for a different case file (another SHA-256) "
                   "than the plan above.</p>")
    rows_in = sens["success_rows"]
    if rows_in and all(math.isfinite(r[3]) for r in rows_in):
        rows = [(f"<code>{esc(inp)}</code>", esc(dist), _fmt(s1), _fmt(st),
                 f"{lo:.3f} to {hi:.3f}" if math.isfinite(lo) and math.isfinite(hi) else "–")
                for inp, dist, s1, st, lo, hi in rows_in]
        out.append("<h3>Sobol' indices of plan success (targets met)</h3>"
                   + _table(("input", "distribution", "S1", "ST", "ST interval"), rows, (False, False, True, True, True)))
    elif rows_in:
        out.append("<p class='muted'>Plan success does not vary at that decision (the targets are met in every sample "
                   "or in none): its Sobol' indices are undefined.</p>")
    figs = "".join(f'<figure><img src="{esc(fname)}" alt="tornado of {esc(q)}"><figcaption>One input at a time: '
                   f"{esc(quantity_label(q))}.</figcaption></figure>" for q, fname in sens["figures"])
    if figs:
        out.append(f'<div class="grid2">{figs}</div>')
    return "".join(out)


def _fmt(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if math.isfinite(x) else "–"


def _provenance(ds) -> str:
    a = ds.attrs
    rows = [
        ("y90opt version", f"<span data-key='version'>{esc(a.get('y90opt_version', ''))}</span>"),
        ("seed", _num("seed", a["seed"], str(int(a["seed"])))),
        ("samples", f"{int(a['sample_count']):,} drawn, {int(a.get('valid_sample_count', a['sample_count'])):,} valid"),
        ("precision and backend", esc(f"{a.get('dtype', '')} on {a.get('backend', '')} ({a.get('device', '')}); "
                                      f"JAX {a.get('jax_version', '?')}, NumPy {a.get('numpy_version', '?')}")),
        ("case file", f"<code>{esc(a.get('case_path', ''))}</code>"),
        ("case SHA-256", f"<code data-key='case-sha256'>{esc(a.get('case_sha256', ''))}</code>"),
        ("results created", esc(a.get("created", ""))),
    ]
    toml = str(a.get("case_toml", ""))
    command = a.get("reproduce") or (f"y90opt plan {a.get('case_path', 'CASE')} --samples {int(a['sample_count'])} "
                                     f"--seed {int(a['seed'])} --dtype {a.get('dtype', 'float32')} --risk {float(a['risk']):g}")
    return ("<h2>Provenance</h2>" + _table(("", ""), rows)
            + f"<details><summary>The case file as planned</summary><pre>{esc(toml)}</pre></details>"
            + "<p class='muted'>Rebuild this page: <code>y90opt report plan.nc</code>. Reproduce the results "
            f"(with the case file above): <code data-key='reproduce'>{esc(command)}</code></p>")


def _footer(a) -> str:
    disclaimer = a.get("disclaimer", "research software: check every plan independently before clinical use")
    return (f"<footer><p><b>{esc(disclaimer[:1].upper() + disclaimer[1:])}.</b> y90opt is research software; it is "
            "not a medical device. Doses use the MIRD/partition model with the conventions above and the scenario "
            "thresholds validated on planned (MAA-based) doses. Probabilities are Monte Carlo estimates over the stated "
            "input uncertainty and are only as good as those inputs.</p></footer>")


def write_voxel_report(res: dict[str, Any], dvh_png: str, out_dir: str | os.PathLike) -> str:
    """``voxel.html``: the voxel dose's model (and kernel), its activity, each VOI's mean, D50-D95 and V at the
    scenario's thresholds, the voxel-level uncertainty when computed, and the cumulative DVH figure embedded."""
    out_dir = os.fspath(out_dir)
    vois = res["vois"]
    keys = ["mean_gy", "d50_gy", "d70_gy", "d90_gy", "d95_gy"]
    vx = [f"v{t:g}" for t in res["thresholds_gy"]]
    rows = []
    for name, v in [(k, v) for k, v in vois.items() if k not in ("tumors", "injections")] + \
            [(f"injections.{k}", v) for k, v in vois.get("injections", {}).items()] + \
            [(f"tumors.{k}", v) for k, v in vois["tumors"].items()]:
        rows.append([esc(name)] + [f"{v[k]:.1f}" for k in keys] + [f"{100 * v[k]:.1f}" for k in vx if k in v])
    model = ("dose-voxel kernel: " + esc(res["kernel"]["source"]) + f"; kernel {res['kernel']['shape'][0]} x "
             f"{res['kernel']['shape'][1]} x {res['kernel']['shape'][2]} voxels, "
             f"{100 * res['kernel']['absorbed_share']:.2f} % of the emitted energy absorbed on the grid"
             if res["kernel"] is not None else "local deposition (each voxel keeps the energy of its decays)")
    when = (f"{res['hours_after_calibration']:.1f} h after calibration, {res['vial_at_treatment_gbq']:.3g} GBq at "
            "treatment" if res["injections"] is None else
            "; ".join(f"{esc(n)}: {v['hours_after_calibration']:.1f} h, {v['vial_at_treatment_gbq']:.3g} GBq at treatment"
                      for n, v in res["injections"].items()))
    a = res["activity_gbq"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>y90opt voxel dosimetry</title>", f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Voxel dosimetry: {esc(res['case'])}</h1>",
        f'<p class="sub">{model}; density from {esc(res["density"])}; {when}; activity injected {a["injected"]:.3g} '
        f'GBq (liver {a["liver"]:.3g}, lungs {a["lung"]:.3g}).</p>',
        '<div class="banner">Research software. Voxel metrics are not the committee\'s mean-dose thresholds; every '
        "plan must be checked independently before clinical use.</div>",
        "<section><h2>Volumes of interest</h2>"
        + _table(["VOI", "mean (Gy)", "D50", "D70", "D90", "D95"] + [f"V{t:g} (%)" for t in res["thresholds_gy"]],
                 rows, numeric=[False] + [True] * (5 + len(vx))) + "</section>",
    ]
    u = res.get("uncertainty")
    if u is not None:
        urows = [[esc(k.rsplit(".", 1)[0]), esc(k.rsplit(".", 1)[1]), f"{v['mean']:.4g}", f"{v['sd']:.3g}",
                  f"{v['p05']:.4g}", f"{v['p95']:.4g}"] for k, v in u["metrics"].items()]
        parts.append(f"<section><h2>Voxel-level uncertainty ({u['replicas']} replicas, seed {u['seed']})</h2>"
                     "<p>Counts drawn again (Poisson), masks eroded or dilated by one voxel, each tumour's uptake "
                     "scaled by the MAA-to-Y-90 mismatch.</p>"
                     + _table(["VOI", "metric", "mean", "SD", "5 %", "95 %"], urows,
                              numeric=[False, False, True, True, True, True]) + "</section>")
    parts += [f'<section><h2>Cumulative DVH</h2><img alt="cumulative DVH" src="{_data_uri(dvh_png)}"></section>',
              "</main></body></html>"]
    return _write_page(os.path.join(out_dir, "voxel.html"), "\n".join(parts) + "\n")
