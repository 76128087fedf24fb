"""What a plan says, derived from its Dataset: the ``plan --json`` summary, the status and its cause, and the
text a physicist reads first.

Nothing here computes a dose: every number comes from the Dataset that :func:`y90opt.planner.plan_case`
gives (and that ``plan.nc`` stores), or from the :class:`y90opt.results.Fields` it is built from (a plan reads
its summary before building the Dataset), so a summary rebuilt from a saved file is the same summary.

The text leads with the status (ok, low chance of success, infeasible) and its cause, then the order
(vial, calibration, treatment in the site's local time), then each target and limit at the recommendation
(nominal, p05 / p50 / p95, P) in Gy, then the alternatives (feasible first). Tables are cut to ``top`` rows;
the JSON and the report hold everything.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import numpy as np

from . import physics
from .chance import limit_margins

#: The plan statuses of ``plan --json`` (design document, "Plan status").
STATUSES = ("ok", "low-success", "infeasible")

#: Rows of each table in the text output by default (``--top``).
TOP = 8


def plan_status(feasible: bool, p_success: float, acceptable_success: float) -> str:
    """``"infeasible"`` when no candidate keeps every limit; ``"ok"`` when the recommendation's P(all primary
    targets met) reaches ``acceptable_success``; ``"low-success"`` otherwise (feasible, but the targets are
    unlikely to be met: never to be shown as a success)."""
    if not feasible:
        return "infeasible"
    return "ok" if p_success >= acceptable_success else "low-success"


def pareto_front(p_success: np.ndarray, p_limits: np.ndarray) -> list[tuple[int, int]]:
    """Candidates not dominated in (P(targets met), P(worst limit kept)): the trade-off a vial size buys.

    One sweep in order of decreasing P(targets) (ties: larger worst-limit probability first) keeps each
    candidate whose worst-limit probability beats every one before it; equal points are kept once (the first:
    the smaller vial, the earlier time)."""
    worst = p_limits.min(axis=-1) if p_limits.shape[-1] else np.ones_like(p_success)
    a, b = p_success.ravel(), worst.ravel()
    order = np.lexsort((np.arange(a.size), -b, -a))
    front, best_b = [], -np.inf
    for k in order:
        if b[k] > best_b:
            front.append(np.unravel_index(k, p_success.shape))
            best_b = b[k]
    return [(int(i), int(j)) for i, j in front]


def gy(x: float | None) -> str:
    """A dose for reading: no scientific notation (``2650``, ``118.4``, ``3.27``, ``0.042``)."""
    if x is None or not np.isfinite(x):
        return "n/a"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _local(iso: str) -> str:
    """``2026-12-10T10:00:00+01:00`` → ``Thu 2026-12-10 10:00 (UTC+01:00)``."""
    when = _dt.datetime.fromisoformat(iso)
    return when.strftime("%a %Y-%m-%d %H:%M") + f" (UTC{when.strftime('%z')[:3]}:{when.strftime('%z')[3:]})"


def summarize_plan(ds) -> dict[str, Any]:
    """The pinned ``plan --json`` structure (``feasible``, ``recommended``, ``status``, ``rules``), derived
    from the Dataset."""
    a = ds.attrs
    feasible = bool(a["feasible"])
    i, j = int(a["recommended_index_vial"]), int(a["recommended_index_time"])
    vials = ds["vial"].values
    limits = [str(x) for x in ds["limit"].values]
    risk = float(a["risk"])
    # pull every array once: building candidates must not index the Dataset per value
    hours = ds["hours_after_calibration"].values
    local = ds["time_local"].values
    cals = ds["time_calibration"].values if "time_calibration" in ds else np.full(len(hours), a["calibration"], object)
    s_arr = ds["vial_at_treatment"].values
    ps = ds["p_success"].values
    pj = ds["p_joint"].values
    pl = ds["p_limit"].values
    feas = ds["feasible"].values.astype(bool)
    quantities = [str(q) for q in ds["quantity"].values]
    units = [str(u) for u in ds["unit"].values]
    dose_cols = [(k, q) for k, q in enumerate(quantities) if units[k] == "Gy"]
    dq = {p: ds[f"dose_{p}"].values for p in ("p05", "p50", "p95")} if "dose_p50" in ds else None
    nominal_f, offsets = ds["nominal_factor"].values, ds["quantity_offset"].values

    def cand(ii, jj) -> dict[str, Any]:
        d = {
            "vial_gbq": float(vials[ii]),
            "hours_after_calibration": float(hours[jj]),
            "treatment_local": str(local[jj]),
            "calibration": str(cals[jj]),
            "vial_at_treatment_gbq": float(s_arr[ii, jj]),
            "p_success": float(ps[ii, jj]),
            "p_joint": float(pj[ii, jj]),
            "p_limits": {lab: float(pl[ii, jj, k]) for k, lab in enumerate(limits)},
            "feasible": bool(feas[ii, jj]),
        }
        if dq is not None:
            d["dose_gy"] = {q: {p: float(dq[p][ii, jj, k]) for p in ("p05", "p50", "p95")} for k, q in dose_cols}
        return d

    def ruled_out(ii, jj) -> list[str]:
        return [lab for lab, m in zip(limits, limit_margins(pl[ii, jj], risk), strict=True) if m > 0]

    rec = cand(i, j)
    conv = json.loads(a["conventions"])
    vial_cal = float(vials[i])
    h = rec["hours_after_calibration"]
    s_rec = float(s_arr[i, j])
    nominal = {q: float(s_rec * nominal_f[k] + offsets[k]) for k, q in enumerate(quantities)}
    rec_out = {
        "vial_gbq": vial_cal,
        "hours_after_calibration": h,
        "vial_mci": physics.gbq_to_mci(vial_cal),
        "calibration": rec["calibration"],
        "treatment_local": rec["treatment_local"],
        "vial_at_treatment_gbq": rec["vial_at_treatment_gbq"],
        "spheres": vial_cal * 1e9 / conv["bq_per_sphere_at_calibration"],
        "activity_per_sphere_bq": conv["bq_per_sphere_at_calibration"] * physics.decay_factor(h, conv["half_life_h"]),
        "p_success": rec["p_success"],
        "p_limits": rec["p_limits"],
        "dose_gy": {q: {"nominal": nominal[q], **(rec.get("dose_gy", {}).get(q, {}))} for _, q in dose_cols},
        "rules": _rules_at(ds, i, j, nominal, rec.get("dose_gy")),
    }
    order = np.dstack(np.unravel_index(np.argsort(-ps, axis=None, kind="stable"), ps.shape))[0]
    ranked = [cand(int(a_), int(b_)) for a_, b_ in order[:10]]
    best_feasible_p = rec["p_success"] if feasible else -1.0
    better = [(int(a_), int(b_)) for a_, b_ in order if ps[a_, b_] > best_feasible_p and not feas[a_, b_]][:10]
    rejected = []
    for a_, b_ in better:
        c = cand(a_, b_)
        c["ruled_out_by"] = ruled_out(a_, b_)
        rejected.append(c)
    # every other candidate, feasible first, each group by P(targets): what the physicist compares against
    alternatives = []
    for flag in (True, False):
        for a_, b_ in order:
            a_, b_ = int(a_), int(b_)
            if bool(feas[a_, b_]) == flag and (a_, b_) != (i, j):
                c = {k: v for k, v in cand(a_, b_).items() if k != "dose_gy"}
                if not flag:
                    c["ruled_out_by"] = ruled_out(a_, b_)
                alternatives.append(c)
    acceptable = float(a.get("acceptable_success", 0.5))
    status = plan_status(feasible, rec["p_success"], acceptable)
    out: dict[str, Any] = {
        "case": a["case_name"],
        "scenario": a["scenario"],
        "status": status,
        "acceptable_success": acceptable,
        "feasible": feasible,
        "recommended": rec_out if feasible else None,
        "risk": risk,
        "tie_tolerance": float(a["tie_tolerance"]),
        "tie_rule": str(a.get("tie_rule", "")),
        "success_definition": a["success_definition"],
        "samples": int(a["sample_count"]),
        "seed": int(a["seed"]),
        "dtype": a["dtype"],
        "backend": a["backend"],
        "candidates": int(ps.size),
        "decision_mode": str(a.get("decision_mode", "time")),
        "vials_gbq": [float(v) for v in vials],
        "hours_after_calibration": [float(x) for x in hours],
        "clinic_calendar": str(a.get("clinic_calendar", "")),
        "excluded_times": [{"time": t, "reason": r} for t, r in json.loads(a.get("excluded_times", "[]"))],
        "ranked": ranked,
        "rejected_better": rejected,
        "alternatives": alternatives,
        "conventions": conv,
        "case_sha256": a["case_sha256"],
    }
    out["tradeoff"] = [
        {k: c[k] for k in ("vial_gbq", "hours_after_calibration", "p_success", "p_limits", "feasible")}
        for c in (cand(a_, b_) for a_, b_ in pareto_front(ps, pl))
    ]
    out["rules"] = json.loads(a.get("rules_judged", "[]"))
    out["advisories"] = json.loads(a.get("advisories", "[]"))
    out["rules_not_evaluated"] = [x for x in str(a.get("rules_not_evaluated", "")).split(", ") if x]
    if not feasible:
        worst_limit = min(rec["p_limits"], key=lambda k: rec["p_limits"][k])
        out["least_risky"] = rec_out
        out["binding_limit"] = worst_limit
        out["relax"] = _relax_text(ds, worst_limit, rec, risk)
    out["status_reason"] = _status_reason(out, ps, feas, vials, hours, i, j, ruled_out)
    if "optuna" in a:
        out["optuna"] = json.loads(a["optuna"])
        out["optuna"]["sentence"] = optuna_sentence(out["optuna"], out["tie_tolerance"], out["decision_mode"])
    return out


def _rules_at(ds, i: int, j: int, nominal: dict[str, float], doses: dict | None) -> list[dict[str, Any]]:
    """Each judged rule at the recommendation: threshold, the dose (nominal, p05, p50, p95) and P(satisfied)."""
    rows = []
    p_rule = ds["p_rule"].values[i, j] if "p_rule" in ds else None
    for k, label in enumerate(str(x) for x in ds["rule"].values):
        q = str(ds["rule_quantity"].values[k])
        d = (doses or {}).get(q, {})
        rows.append({
            "label": label,
            "kind": str(ds["rule_kind"].values[k]),
            "quantity": q,
            "threshold_gy": float(ds["rule_threshold"].values[k]),
            "nominal_gy": nominal.get(q),
            "p05_gy": d.get("p05"), "p50_gy": d.get("p50"), "p95_gy": d.get("p95"),
            "probability": None if p_rule is None else float(p_rule[k]),
        })
    return rows


def _status_reason(out: dict, ps, feas, vials, hours, i: int, j: int, ruled_out) -> str:
    """Why the status is what it is, and what would change it (the limit that binds a larger vial and an
    earlier day, or the targets out of reach at every candidate)."""
    status = out["status"]
    if status == "ok":
        return (f"P(all primary targets met) = {ps[i, j]:.3f} ≥ {out['acceptable_success']:g} with every limit kept "
                f"with P ≥ {1 - out['risk']:.3g}")
    if status == "infeasible":
        return f"no candidate keeps every limit with P ≥ {1 - out['risk']:.3g}: {out['relax']}"
    parts = [f"P(all primary targets met) = {ps[i, j]:.3f} at the best candidate that keeps every limit "
             f"(acceptable: {out['acceptable_success']:g})"]
    larger = [ii for ii in range(len(vials)) if vials[ii] > vials[i] and not feas[ii, j]]
    if larger:
        ii = min(larger, key=lambda k: vials[k])
        parts.append(f"a larger vial is ruled out by {', '.join(ruled_out(ii, j))} ({vials[ii]:g} GBq: "
                     f"P(targets) {ps[ii, j]:.3f})")
    earlier = [jj for jj in range(len(hours)) if hours[jj] < hours[j] and not feas[i, jj]]
    if earlier:
        jj = max(earlier, key=lambda k: hours[k])
        what = "a newer vial (fewer hours of decay)" if out.get("decision_mode") == "calibration" else "an earlier day"
        parts.append(f"{what} is ruled out by {', '.join(ruled_out(i, jj))} ({hours[jj]:.0f} h: "
                     f"P(targets) {ps[i, jj]:.3f})")
    best_any = float(ps.max())
    if best_any < out["acceptable_success"]:
        parts.append(f"the targets are out of reach at every candidate, limits aside (best P(targets) "
                     f"{best_any:.3f}): revisit the inputs (T:N, volumes) or the plan (another approach)")
    return "; ".join(parts)


def _relax_text(ds, limit: str, rec: dict, risk: float) -> str:
    curve = ds["curve_p_limit"].sel(limit=limit).values
    grid = ds["activity"].values
    ok = grid[curve >= 1 - risk]
    p = rec["p_limits"][limit]
    msg = (f"limit {limit!r} is kept with P = {p:.3f} < {1 - risk:.3f} even at the least risky candidate "
           f"({rec['vial_gbq']:g} GBq, {rec['hours_after_calibration']:.0f} h)")
    if ok.size:
        msg += f"; it would need at most {ok.max():.3g} GBq at treatment (a smaller vial, a later day)"
        if 1 - p < 0.5:
            msg += f", or a larger risk (--risk {min(1 - p + 1e-3, 0.5):.3f})"
    else:
        msg += "; no activity keeps it: revisit the inputs (e.g. the lung shunt or a prior lung dose)"
    return msg


def optuna_sentence(o: dict[str, Any], tie_tolerance: float, mode: str = "time") -> str:
    """The Optuna cross-check as a sentence: the trials, what it found, and whether that is the exact optimum
    or tied with it."""
    b = o["best"]
    when = (f"{b['hours_after_calibration']:.1f} h after its calibration" if mode == "calibration"
            else f"{b['hours_after_calibration']:.1f} h after calibration")
    found = f"{b['vial_gbq']:g} GBq at {when} (P(targets) = {b['p_success']:.3f}"
    found += ")" if b.get("feasible") else ", keeping every limit: no)"
    head = f"Optuna cross-check: {o['trials']} trials ({o['unique_candidates']} distinct candidates) found {found}"
    ex = o.get("exact")
    if ex is None or o.get("matches_exact") is None:
        return head + "."
    same = (ex["vial_gbq"], ex["hours_after_calibration"]) == (b["vial_gbq"], b["hours_after_calibration"])
    if not ex["feasible"]:
        return head + ("; like the exact search, it found no candidate that keeps every limit." if o["matches_exact"]
                       else "; the exact search found no feasible candidate either way.")
    if same:
        return head + ": the exact optimum."
    exact = f"{ex['vial_gbq']:g} GBq at {ex['hours_after_calibration']:.1f} h (P = {o['exact_p_success']:.3f})"
    if o["matches_exact"]:
        return head + f": tied with the exact optimum {exact}, within the tie tolerance {tie_tolerance:g}."
    gap = o.get("gap")
    return head + (f": NOT the exact optimum {exact}; it falls short by {gap:.3f}." if gap is not None
                   else f": NOT the exact optimum {exact}.")


def plan_text(summary: dict[str, Any], top: int = TOP) -> str:
    """The readable answer of ``y90opt plan``: status, order, doses at the recommendation, alternatives."""
    from .textout import table

    status = summary["status"]
    lines = [f"case {summary['case']!r}  scenario {summary['scenario']}", ""]
    head = {"ok": "STATUS: ok", "low-success": "STATUS: LOW CHANCE OF SUCCESS (warning)",
            "infeasible": "STATUS: INFEASIBLE: no candidate keeps every limit"}[status]
    lines += [head, f"  {summary['status_reason']}", ""]
    r = summary["recommended"] if summary["feasible"] else summary["least_risky"]
    title = {"ok": "ORDER", "low-success": "BEST FEASIBLE CANDIDATE (not a success: see the status)",
             "infeasible": "LEAST RISKY CANDIDATE (keeps no plan's limits: do not treat as planned)"}[status]
    lines += [
        title,
        f"  vial       {r['vial_gbq']:g} GBq ({r['vial_mci']:.0f} mCi), calibrated {_local(r['calibration'])}",
        f"  treatment  {_local(r['treatment_local'])}, {r['hours_after_calibration']:.1f} h after calibration "
        f"({r['vial_at_treatment_gbq']:.3g} GBq in the vial)",
        f"  spheres    {r['spheres'] / 1e6:.2f} million, {r['activity_per_sphere_bq']:.0f} Bq per sphere at treatment",
        "",
        "AT THIS CHOICE (Gy; nominal at the measured inputs, percentiles over the input uncertainty)",
    ]
    rows = []
    for x in r["rules"]:
        op = "≥" if x["kind"] != "limit" else "≤"
        kind = {"target": "target", "secondary": "target (where possible)", "limit": "limit"}.get(x["kind"], x["kind"])
        rows.append((x["label"], kind, f"{op} {x['threshold_gy']:g}", gy(x["nominal_gy"]), gy(x["p05_gy"]),
                     gy(x["p50_gy"]), gy(x["p95_gy"]), "n/a" if x["probability"] is None else f"{x['probability']:.3f}"))
    lines.append(table(rows, header=("rule", "kind", "threshold", "nominal", "p05", "p50", "p95", "P(satisfied)"),
                       align="lllrrrrr"))
    lines.append(f"P(all primary targets met) = {r['p_success']:.3f}; each limit must hold with P ≥ {1 - summary['risk']:.3g}")
    alts = summary["alternatives"]
    if alts:
        lines += ["", f"ALTERNATIVES (feasible first; {min(top, len(alts))} of {len(alts)}, all in --json and the report)"]
        limits = list(alts[0]["p_limits"])
        when = "vial calibrated" if summary["decision_mode"] == "calibration" else "treatment (local)"
        arows = []
        for c in alts[:top]:
            stamp = c["calibration"] if summary["decision_mode"] == "calibration" else c["treatment_local"]
            arows.append((f"{c['vial_gbq']:g}", stamp[:16].replace("T", " "), f"{c['hours_after_calibration']:.1f}",
                          f"{c['p_success']:.3f}", *[f"{c['p_limits'][k]:.3f}" for k in limits],
                          "yes" if c["feasible"] else "no: " + ", ".join(c.get("ruled_out_by", []))))
        lines.append(table(arows, header=("vial GBq", when, "h", "P(targets)", *[f"P({k})" for k in limits], "feasible"),
                           align="rlr" + "r" * (1 + len(limits)) + "l"))
    for c in summary["rejected_better"][:3]:
        lines.append(f"ruled out: {c['vial_gbq']:g} GBq at {c['hours_after_calibration']:.0f} h (P(targets) "
                     f"{c['p_success']:.3f}) by {', '.join(c['ruled_out_by'])}")
    for adv in summary.get("advisories", []):
        lines.append(f"advisory [{adv['code']}]: {adv['message']}")
    if summary.get("excluded_times"):
        ex = summary["excluded_times"]
        lines.append(f"clinic calendar ({summary['clinic_calendar']}): {len(ex)} candidate time(s) left out, e.g. "
                     f"{ex[0]['time']} ({ex[0]['reason']}); --any-time keeps them")
    if "optuna" in summary:
        lines += ["", summary["optuna"]["sentence"]]
    lines += [
        "",
        f"{summary['samples']} samples, seed {summary['seed']}, {summary['dtype']} on {summary['backend']}; "
        f"{summary['candidates']} candidates; success = {summary['success_definition']}",
        f"ties: {summary['tie_rule']} (tolerance {summary['tie_tolerance']:g})" if summary.get("tie_rule") else "",
        "conventions: K = {dose_constant_gy_kg_per_gbq:g} Gy·kg/GBq, T½ = {half_life_h:g} h, density "
        "{tissue_density_g_per_ml:g} g/mL, {bq_per_sphere_at_calibration:g} Bq per sphere at calibration".format(**summary["conventions"]),
    ]
    return "\n".join(x for x in lines).rstrip() + "\n"
