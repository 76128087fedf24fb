"""Nominal (deterministic) doses for the case's ``[plan]`` decision: what ``y90opt dose`` reports.

:func:`dose_case` is the whole command: the doses at the nominal inputs, each rule's outcome (or why it is
not evaluable), the advisories, and optionally prescriptions (the activity that gives a dose, and every dose
at that activity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from . import physics
from .case import Case, CaseError
from .engine import Model
from .outcomes import flatten_doses, flatten_nested, nominal_outcome, treatment_dose_mapping


@dataclasses.dataclass
class DoseResult:
    """Result of :func:`dose_case`: ``summary`` is the ``dose --json`` mapping, ``text()`` its table."""

    case: Case
    summary: dict[str, Any]
    dataset: Any = None  # `dose` writes no Dataset

    def text(self) -> str:
        return dose_text(self.case, self.summary)


def dose_case(case: Case, prescribe: Iterable[tuple[str, float]] = ()) -> DoseResult:
    """Nominal doses at the case's ``[plan]`` decision, the rules' outcome and the advisories.

    Args:
        case: a parsed case with ``[plan].vial_gbq`` and ``[plan].treatment``.
        prescribe: ``(quantity, dose_gy)`` pairs; for each, :func:`required_activity` at the ``[plan]`` time
            and the doses at that activity are added under ``prescriptions``.

    Every valid case gives a result: rules the case cannot evaluate are listed with status
    ``not evaluable`` and the reason. Raises :class:`~y90opt.case.CaseError` for a missing decision or a
    prescription that no activity can meet.
    """
    if case.multi:
        if list(prescribe):
            raise CaseError(case.path, "--prescribe", "not available for a case with [[injections]] (prescribe per "
                            "injection with the single-injection case of each territory)")
        out, values = treatment_nominal_doses(case)
        out.update(nominal_outcome(case, out, values))
        return DoseResult(case, out)
    model = Model.from_case(case)
    values = nominal_values(case, model)
    out = nominal_doses(case, model, values)
    out.update(nominal_outcome(case, out, values))
    items = list(prescribe)
    if items:
        out["prescriptions"] = [required_activity(case, q, gy, model=model, doses=True) for q, gy in items]
    return DoseResult(case, out)


def nominal_values(case: Case, model: Model | None = None) -> dict[str, float]:
    """Every model column (dose [Gy], activity [GBq]) at the nominal inputs and the ``[plan]`` decision."""
    _, s = case.decision("`dose` and `simulate`")
    model = model or Model.from_case(case)
    return dict(zip(model.quantities, s * model.nominal_factors() + model.offsets, strict=True))


def nominal_doses(case: Case, model: Model | None = None, values: dict[str, float] | None = None) -> dict[str, Any]:
    """Activities [GBq] and doses [Gy] at the nominal inputs, as the pinned ``dose --json`` keys (``values``: the
    columns of :func:`nominal_values`, when the caller has them).

    Raises :class:`CaseError` when ``[plan].vial_gbq`` or ``[plan].treatment`` is missing.
    """
    delay_h, s = case.decision("`dose` and `simulate`")
    conv = case.conventions
    values = values if values is not None else nominal_values(case, model)
    dose_gy = _dose_names(case, values)
    return {
        "case": case.name,
        "scenario": case.scenario,
        "hours_after_calibration": delay_h,
        "calibration": case.calibration.isoformat(),
        "treatment": case.plan.treatment.isoformat(),
        "activity_gbq": {
            "vial_at_calibration": case.plan.vial_gbq,
            "vial_at_treatment": s,
            "injected": values["injected"],
            "liver": values["liver"],
            "lung": values["lung_activity"],
        },
        "activity_mci": {"vial_at_calibration": physics.gbq_to_mci(case.plan.vial_gbq)},
        "spheres": physics.spheres_per_vial(case.plan.vial_gbq, conv),
        "activity_per_sphere_bq": physics.activity_per_sphere_bq(delay_h, conv),
        "dose_gy": dose_gy,
        "conventions": conv.as_dict(),
    }


def treatment_nominal_doses(case: Case) -> tuple[dict[str, Any], dict[str, float]]:
    """The ``dose --json`` mapping of a case with ``[[injections]]`` (design: "Several injections, sessions
    and vials"), and the doses by model column for the rules."""
    from .engine import TreatmentModel

    decisions = case.injection_decisions("`dose` and `simulate`")
    model = TreatmentModel.from_case(case).decided([s for _, _, s in decisions])
    values = dict(zip(model.quantities, model.nominal_factors() + model.offsets, strict=True))
    return treatment_dose_mapping(case, values, decisions), values


def required_activity(case: Case, quantity: str, dose_gy: float, hours_after_calibration: float | None = None,
                      model: Model | None = None, doses: bool = False) -> dict[str, Any]:
    """The activities that give ``dose_gy`` to ``quantity`` at the nominal inputs: the inverse of the model.

    ``quantity`` is a dose name (``normal_perfused``, ``perfused_mean``, ``lung``, ``lung_cumulative``,
    ``whole_normal_liver``, ``whole_liver``, ``tumor_total``) or ``tumors.<name>``. The time defaults to the
    case's ``[plan].treatment``. Returns the vial activity at treatment and at calibration and the injected
    activity [GBq]; with ``doses``, also ``dose_gy``: every dose at that activity (the names of
    :func:`nominal_doses`), as other calculators show beside a prescription.
    """
    if not (isinstance(dose_gy, int | float) and dose_gy > 0 and dose_gy < float("inf")):
        raise CaseError(case.path, "--prescribe", f"the dose must be a finite number > 0 Gy, got {dose_gy!r}")
    model = model or Model.from_case(case)
    dose_names = model.dose_quantities()
    if quantity not in dose_names:
        raise CaseError(case.path, "--prescribe", f"unknown quantity {quantity!r} (one of: {', '.join(dose_names)})")
    if hours_after_calibration is None:
        hours_after_calibration = case.treatment_hours()
        if hours_after_calibration is None:
            raise CaseError(case.path, "plan.treatment", "missing (needed to convert to the vial's calibration)")
    f = dict(zip(model.quantities, model.nominal_factors(), strict=True))
    b = dict(zip(model.quantities, model.offsets, strict=True))
    if f[quantity] <= 0:
        raise CaseError(case.path, "--prescribe", f"{quantity} receives no activity in this case")
    s = (dose_gy - b[quantity]) / f[quantity]
    if s <= 0:
        raise CaseError(case.path, "--prescribe", f"{quantity} already exceeds {dose_gy:g} Gy before this session")
    decay = physics.decay_factor(hours_after_calibration, case.conventions.half_life_h)
    out = {
        "quantity": quantity,
        "dose_gy": dose_gy,
        "hours_after_calibration": hours_after_calibration,
        "vial_at_treatment_gbq": s,
        "vial_at_calibration_gbq": s / decay,
        "injected_gbq": s * f["injected"],
    }
    if doses:
        out["activity_gbq"] = {"injected": s * f["injected"], "liver": s * f["liver"], "lung": s * f["lung_activity"]}
        out["doses_gy"] = _dose_names(case, {q: s * f[q] + b[q] for q in model.quantities})
    return out


def _dose_names(case: Case, values: dict[str, float]) -> dict[str, Any]:
    """Model values by quantity → the ``dose_gy`` mapping of ``dose --json`` (the pinned names)."""
    dose_gy: dict[str, Any] = {
        "perfused_mean": values["perfused_mean"],
        "normal_perfused": values["normal_perfused"],
    }
    if case.has_whole_liver:
        dose_gy["whole_normal_liver"] = values["whole_normal_liver"]
        dose_gy["whole_liver"] = values["whole_liver"]
    dose_gy["lung"] = values["lung"]
    dose_gy["lung_cumulative"] = values["lung_cumulative"]
    if "tumor_total" in values:
        dose_gy["tumor_total"] = values["tumor_total"]
    dose_gy["tumors"] = {n: values[f"tumors.{n}"] for n in case.tumor_names}
    d70 = {q.split(".", 1)[1]: v for q, v in values.items() if q.startswith("tumors_d70.")}
    if d70:
        dose_gy["tumors_d70"] = d70
    return dose_gy


def dose_text(case: Case, out: dict[str, Any]) -> str:
    """The readable table of ``y90opt dose``: activities, doses, rules (with their status), advisories,
    prescriptions."""
    from .textout import table

    if case.multi:
        return _treatment_dose_text(case, out)

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
                ("spheres", f"{out['spheres'] / 1e6:.2f} million", ""),
                (f"activity per sphere ({conv.bq_per_sphere_at_calibration:g} Bq at calibration)", out["activity_per_sphere_bq"], "Bq"),
            ],
            header=("activity", "value", "unit"),
        ),
        "",
    ]
    untreated = {f"tumors.{t.name}" for t in case.tumors if not t.treated}
    rows = [(k, "not treated" if k in untreated else v, "" if k in untreated else "Gy")
            for k, v in flatten_doses(out["dose_gy"]).items()]
    lines.append(table(rows, header=("dose", "value", "unit"), align="lrl"))
    lines += _rules_text(out)
    for p in out.get("prescriptions", []):
        lines.append("")
        lines.append(f"prescription: {p['dose_gy']:g} Gy to {p['quantity']} at {p['hours_after_calibration']:.1f} h needs "
                     f"{p['vial_at_calibration_gbq']:.3g} GBq at calibration ({p['vial_at_treatment_gbq']:.3g} GBq at treatment, "
                     f"{p['injected_gbq']:.3g} GBq injected); the doses at that activity:")
        lines.append(table([(k, "not treated" if k in untreated else v, "" if k in untreated else "Gy")
                            for k, v in flatten_doses(p["doses_gy"]).items()],
                           header=("dose", "value", "unit"), align="lrl"))
    return "\n".join(lines)


def _treatment_dose_text(case: Case, out: dict[str, Any]) -> str:
    from .textout import table

    conv = case.conventions
    lines = [f"case {case.name!r}  scenario {case.scenario}",
             f"conventions: K = {conv.dose_constant_gy_kg_per_gbq:g} Gy·kg/GBq, T½ = {conv.half_life_h:g} h, "
             f"density = {conv.tissue_density_g_per_ml:g} g/mL", ""]
    rows = []
    for name, j in out["injections"].items():
        a = j["activity_gbq"]
        rows.append((name, j["session"], j["role"] or "", f"{j['hours_after_calibration']:.1f}", a["vial_at_calibration"],
                     a["vial_at_treatment"], a["injected"], a["liver"], a["lung"]))
    lines.append(table(rows, header=("injection", "session", "role", "h after cal.", "vial GBq", "at treatment",
                                     "injected", "to liver", "to lungs"), align="llllrrrrr"))
    lines.append("")
    flat = flatten_nested(out["dose_gy"])
    flat = {**{f"injections.{n}.{k}": v for n, j in out["injections"].items() for k, v in j["dose_gy"].items()}, **flat}
    untreated = {f"tumors.{t.name}" for t in case.tumors if not t.treated}
    lines.append(table([(k, "not treated" if k in untreated else v, "" if k in untreated else "Gy") for k, v in flat.items()],
                       header=("dose", "value", "unit"), align="lrl"))
    lines += _rules_text(out)
    return "\n".join(lines)


def _rules_text(out) -> list[str]:
    from .textout import table

    lines = []
    if out.get("rules"):
        lines += ["", table(
            [(r["label"], r["kind"], r["quantity"], r["threshold_gy"],
              "" if r.get("value") is None else r["value"], r["status"] + (f" ({r['reason']})" if r.get("reason") else ""))
             for r in out["rules"]],
            header=("rule", "kind", "quantity", "threshold Gy", "value", "status"),
            align="lllrrl",
        )]
    for a in out.get("advisories", []):
        lines.append(f"advisory [{a['code']}]: {a['message']}")
    return lines
