"""Nominal (deterministic) doses for the case's ``[plan]`` decision: what ``y90opt dose`` reports."""

from __future__ import annotations

from typing import Any

from . import physics
from .case import Case, CaseError
from .engine import Model


def nominal_doses(case: Case, model: Model | None = None) -> dict[str, Any]:
    """Activities [GBq] and doses [Gy] at the nominal inputs, as the pinned ``dose --json`` keys.

    Raises :class:`CaseError` when ``[plan].vial_gbq`` or ``[plan].treatment`` is missing.
    """
    delay_h, s = case.decision("`dose` and `simulate`")
    model = model or Model.from_case(case)
    conv = case.conventions
    f = model.nominal_factors()
    values = dict(zip(model.quantities, s * f + model.offsets, strict=True))
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


def flatten_doses(dose_gy: dict[str, Any]) -> dict[str, float]:
    """``{"tumors": {"T1": x}}`` → ``{"tumors.T1": x}``, other keys unchanged."""
    out = {}
    for k, v in dose_gy.items():
        if k == "tumors":
            out.update({f"{k}.{n}": x for n, x in v.items()})
        else:
            out[k] = v
    return out


def required_activity(case: Case, quantity: str, dose_gy: float, hours_after_calibration: float | None = None,
                      model: Model | None = None) -> dict[str, Any]:
    """The activities that give ``dose_gy`` to ``quantity`` at the nominal inputs: the inverse of the model.

    ``quantity`` is a dose name (``normal_perfused``, ``perfused_mean``, ``lung``, ``lung_cumulative``,
    ``whole_normal_liver``, ``whole_liver``, ``tumor_total``) or ``tumors.<name>``. The time defaults to the
    case's ``[plan].treatment``. Returns the vial activity at treatment and at calibration and the injected
    activity [GBq].
    """
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
    return {
        "quantity": quantity,
        "dose_gy": dose_gy,
        "hours_after_calibration": hours_after_calibration,
        "vial_at_treatment_gbq": s,
        "vial_at_calibration_gbq": s / decay,
        "injected_gbq": s * f["injected"],
    }
