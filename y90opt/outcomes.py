"""The bridge between a case and its scenario's rules: which rules apply, which tumours count, and the
rule outcome and advisories at the nominal doses.

One evaluation (:func:`y90opt.rules.margins`, margins ≤ 0 satisfied) drives ``dose``, ``simulate``, ``plan``
and the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import rules as _rules
from .case import Case


@dataclasses.dataclass(frozen=True)
class ActiveRules:
    """The rules a plan is judged by, after the case's overrides and its choice of success."""

    scenario: Any  # rules.Scenario
    targets: tuple  # primary targets: success = all met
    secondary: tuple  # "where possible" targets: reported only
    limits: tuple
    counted_tumors: tuple[str, ...]
    success: str


def active_rules(case: Case) -> ActiveRules:
    scen = _rules.load_scenario(case.scenario)
    scen = _rules.apply_overrides(scen, dict(case.rules), case.path)
    treated = tuple(t.name for t in case.tumors if t.treated)
    mode = case.plan.success
    if mode == "index-tumor":
        counted = (case.plan.index_tumor,)
    else:
        counted = treated

    def rewrite(r):
        if mode == "mass-weighted" and r.quantity == "tumors":
            return dataclasses.replace(r, quantity="tumor_total")
        return r

    targets = tuple(rewrite(r) for r in scen.targets if r.level == "primary")
    secondary = tuple(rewrite(r) for r in scen.targets if r.level != "primary")
    limits = tuple(rewrite(r) for r in scen.limits)
    _require_evaluable(case, scen, targets, limits, counted)
    return ActiveRules(scen, targets, secondary, limits, counted, mode)


#: The case input each dose quantity needs beyond the always-present ones.
_NEEDS = {
    "whole_normal_liver": "liver.whole_liver_volume_ml",
    "whole_liver": "liver.whole_liver_volume_ml",
    "tumors": "tumors",
    "tumor_total": "tumors",
}


def _require_evaluable(case: Case, scen, targets, limits, counted) -> None:
    """A primary target or limit that the case cannot evaluate is bad input, never silently dropped: a plan
    judged without it would look safer or more successful than it is."""
    from .case import CaseError

    has_treated = any(t.treated for t in case.tumors)
    for kind, group in (("target", targets), ("limit", limits)):
        for r in group:
            q = r.quantity
            missing = (
                (q in ("whole_normal_liver", "whole_liver") and not case.has_whole_liver)
                or (q == "tumors" and not counted)
                or (q == "tumor_total" and not has_treated)
            )
            if missing:
                field = _NEEDS[q]
                what = "no treated tumour" if field == "tumors" else "missing"
                raise CaseError(
                    case.path, field,
                    f"{what}: needed by the {kind} {r.id!r} ({q}) of scenario {scen.id}; give it, or drop the rule "
                    f"with [rules] remove = [\"{r.id}\"] if it does not apply to this patient",
                )


def dose_mapping(quantities, values) -> dict[str, Any]:
    """Quantity-name columns (``tumors.T1`` …) → the mapping :func:`rules.margins` expects."""
    values = np.asarray(values)
    d: dict[str, Any] = {}
    tumor_cols = []
    for i, q in enumerate(quantities):
        if q.startswith("tumors."):
            tumor_cols.append(values[..., i])
        else:
            d[q] = values[..., i]
    if tumor_cols:
        d["tumors"] = np.stack(tumor_cols, axis=-1)
    return d


def nominal_outcome(case: Case, nominal: dict[str, Any]) -> dict[str, Any]:
    """Rule outcome at the nominal doses and the advisories, for ``dose``."""
    from .nominal import flatten_doses

    ar = active_rules(case)
    flat = flatten_doses(nominal["dose_gy"])
    doses = {k: np.asarray(v) for k, v in flat.items() if not k.startswith("tumors.")}
    if case.tumor_names:
        doses["tumors"] = np.asarray([flat[f"tumors.{n}"] for n in case.tumor_names])
    rows = []
    for kind, group in (("target", ar.targets), ("secondary target", ar.secondary), ("limit", ar.limits)):
        m = _rules.margins(group, doses, case.tumor_names, ar.counted_tumors)
        for r in group:
            for label, margin in m.items():
                if label != r.id and not label.startswith(r.id + ":"):
                    continue
                # margin = threshold − dose for a target, dose − threshold for a limit
                value = r.threshold_gy - float(margin) if r.kind == "target" else r.threshold_gy + float(margin)
                ok = float(margin) <= 0
                rows.append({
                    "label": label,
                    "kind": kind,
                    "quantity": r.quantity,
                    "threshold_gy": r.threshold_gy,
                    "value": value,
                    "margin_gy": float(margin),
                    "status": ("met" if ok else "not met") if r.kind == "target" else ("kept" if ok else "EXCEEDED"),
                    "source": r.source,
                })
    missing = _rules.missing_quantities(ar.targets + ar.secondary + ar.limits, doses)
    # rule labels, as `simulate` and `plan` report them (the quantities go to the advisory)
    not_evaluated = [
        r.id for r in ar.targets + ar.secondary + ar.limits if r.quantity in missing
    ]
    return {
        "rules": rows,
        "rules_not_evaluated": not_evaluated,
        "targets_met": all(r["status"] == "met" for r in rows if r["kind"] == "target"),
        "limits_kept": all(r["status"] == "kept" for r in rows if r["kind"] == "limit"),
        "advisories": nominal_advisories(case, nominal, ar, missing),
    }


def hepatic_reserve(case: Case) -> float | None:
    """Untreated share of the whole liver (nominal), or None without a whole-liver volume."""
    if case.whole_liver_volume_ml is None:
        return None
    return 1.0 - case.perfused_volume_ml.nominal / case.whole_liver_volume_ml.nominal


def nominal_advisories(
    case: Case, nominal: dict[str, Any], ar: ActiveRules | None = None, missing: list[str] | tuple = ()
) -> list[dict[str, str]]:
    """Advisories at the nominal inputs (printed, never applied). ``missing`` lists rules not evaluated."""
    ar = ar or active_rules(case)
    model_used = "partition" if any(t.treated for t in case.tumors) else "single-compartment"
    adv = _rules.advisories(
        ar.scenario,
        tn_ratios={t.name: t.tn_ratio.nominal for t in case.tumors if t.treated},
        shunt_fraction=case.shunt_fraction.nominal,
        lung_activity_gbq=nominal["activity_gbq"]["lung"],
        hours_after_calibration=nominal["hours_after_calibration"],
        model=model_used,
        hepatic_reserve=hepatic_reserve(case),
        activity_per_sphere_bq=nominal["activity_per_sphere_bq"],
        missing=list(missing),
    )
    out = [{"code": c, "message": m} for c, m in adv]
    if case.biased_inputs:
        out.append({
            "code": "bias",
            "message": "bias options used on " + ", ".join(case.biased_inputs)
            + ": Monte Carlo doses are centred on an estimate of the delivered dose (research), not the planned dose",
        })
    return out


@dataclasses.dataclass(frozen=True)
class RuleTable:
    """The active rules compiled against a model's factor columns, for vectorised evaluation.

    Row r is one label (a rule, or a rule on one tumour): margin_r = sign_r · (dose[col_r] − threshold_r),
    with sign −1 for targets (margin = threshold − dose) and +1 for limits, so margin ≤ 0 is satisfied,
    exactly as :func:`y90opt.rules.margins` defines it.
    """

    labels: tuple[str, ...]
    kinds: tuple[str, ...]  # "target" (primary), "secondary", "limit"
    quantities: tuple[str, ...]
    sources: tuple[str, ...]
    cols: np.ndarray  # (R,) column of the factor matrix
    thresholds: np.ndarray  # (R,) Gy
    signs: np.ndarray  # (R,) −1 target, +1 limit
    not_evaluated: tuple[str, ...]  # rules whose quantity the case cannot give (e.g. no whole-liver volume)
    missing_quantities: tuple[str, ...] = ()  # those quantities

    @property
    def is_primary(self) -> np.ndarray:
        return np.array([k == "target" for k in self.kinds])

    @property
    def is_limit(self) -> np.ndarray:
        return np.array([k == "limit" for k in self.kinds])

    def margins(self, doses):
        """Margins (..., R) from doses (..., Q) (numpy or JAX arrays)."""
        return self.signs * (doses[..., self.cols] - self.thresholds)


def compile_rules(ar: ActiveRules, quantities: tuple[str, ...]) -> RuleTable:
    labels, kinds, qs, srcs, cols, thr, signs, missing, missing_q = [], [], [], [], [], [], [], [], []
    for kind, group in (("target", ar.targets), ("secondary", ar.secondary), ("limit", ar.limits)):
        for r in group:
            if r.quantity == "tumors":
                targets = [(f"{r.id}:{n}", f"tumors.{n}") for n in ar.counted_tumors]
            else:
                targets = [(r.id, r.quantity)]
            for label, q in targets:
                if q not in quantities:
                    missing.append(label)
                    missing_q.append(r.quantity)
                    continue
                labels.append(label)
                kinds.append(kind)
                qs.append(q)
                srcs.append(r.source)
                cols.append(quantities.index(q))
                thr.append(r.threshold_gy)
                signs.append(-1.0 if r.kind == "target" else 1.0)
    return RuleTable(
        tuple(labels), tuple(kinds), tuple(qs), tuple(srcs), np.asarray(cols, dtype=int),
        np.asarray(thr, dtype=float), np.asarray(signs), tuple(missing), tuple(dict.fromkeys(missing_q)),
    )
