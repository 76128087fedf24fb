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
    if case.plan.vial_gbq is None:
        raise CaseError(case.path, "plan.vial_gbq", "missing (required by `dose` and `simulate`)")
    if case.plan.treatment is None:
        raise CaseError(case.path, "plan.treatment", "missing (required by `dose` and `simulate`)")
    model = model or Model.from_case(case)
    conv = case.conventions
    delay_h = case.treatment_hours()
    s = case.plan.vial_gbq * physics.decay_factor(delay_h, conv.half_life_h)
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
