r"""Clinical rules evaluated: margins of doses against a scenario's targets and limits, and advisories.

The scenarios themselves (files, validation, a case's overrides) are :mod:`y90opt.scenarios`. Evaluation is
pure array arithmetic that works on NumPy and JAX arrays alike (and inside ``jit``); it never reads files.

Margins follow one convention everywhere (the grid search, Optuna's constraints, the report):

.. math::

    m_{target} = D_{min} - D, \qquad m_{limit} = D - D_{max}, \qquad m \le 0 \iff \text{the rule is met.}

A rule on the quantity ``tumors`` is evaluated per counted tumour and labelled ``"<rule id>:<tumour>"``.

Reference: TheraSphere Global Dosimetry Steering Committee, updated 2022 recommendations for HCC
(Salem et al., EJNMMI 2023;50:328-343), "DSC" below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .scenarios import DAY_TOLERANCE_H, MODELS, SUCCESS_MODES, Rule, Scenario

# --- advisory thresholds (general, not scenario-specific; each is returned as advice, never applied) -----

#: Below this MAA tumour-to-normal ratio the tumour shows little preferential uptake: the partition model
#: gains little over the single-compartment model and the tumour dose estimate is least reliable. A common
#: rule of thumb in partition-model planning, not a DSC number.
TN_RATIO_MIN: float = 1.5

#: A lung shunt fraction above 20 % is a common contraindication threshold for resin microspheres and a
#: warning sign for glass; for TheraSphere the binding rules are the lung dose and lung activity.
SHUNT_FRACTION_MAX: float = 0.20

#: TheraSphere IFU contraindication: more than 16.5 mCi (0.61 GBq) delivered to the lungs.
LUNG_ACTIVITY_MAX_GBQ: float = 0.61

# --- evaluation ---------------------------------------------------------------------------------------


def _is_missing(x: Any) -> bool:
    """True when a dose is absent, or all NaN (e.g. whole-liver doses without a whole-liver volume)."""
    if x is None:
        return True
    if not hasattr(x, "any"):
        x = np.asarray(x, dtype=float)
    try:
        return not bool((x == x).any())  # NaN != NaN; works on NumPy and JAX arrays
    except TypeError:  # an abstract (jit-traced) array has no values yet: it counts as present
        return False


def rule_labels(
    rules: Sequence[Rule], tumor_names: Sequence[str], counted_tumors: Sequence[str] | None = None
) -> dict[str, Rule]:
    """Label → rule, in rule order: the rule id, or ``"<id>:<tumour>"`` for each counted tumour of a
    rule on ``tumors``."""
    names = list(tumor_names)
    counted = names if counted_tumors is None else list(counted_tumors)
    for name in counted:
        if name not in names:
            raise ValueError(f"counted tumour {name!r} is not one of {names}")
    out: dict[str, Rule] = {}
    for rule in rules:
        if rule.quantity == "tumors":
            for name in counted:
                out[f"{rule.id}:{name}"] = rule
        else:
            out[rule.id] = rule
    return out


def margins(
    rules: Sequence[Rule],
    doses: Mapping[str, Any],
    tumor_names: Sequence[str],
    counted_tumors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Margin of every rule on ``doses`` (≤ 0 means met).

    Args:
        rules: targets and/or limits.
        doses: quantity → dose array [Gy], any shape with the same leading shape; ``doses["tumors"]`` has
            shape ``(..., T)`` in ``tumor_names`` order.
        tumor_names: names of the tumour axis.
        counted_tumors: the tumours a ``tumors`` rule applies to (default: all of ``tumor_names``); the
            case's choice (treated tumours, or only the index tumour).

    Returns:
        label → margin array (the dose's shape; tumour rules give one label per counted tumour,
        ``"<rule id>:<tumour>"``): ``threshold - dose`` for a target, ``dose - threshold`` for a limit.
        Rules whose dose is absent or all NaN are skipped (see :func:`missing_quantities`).
    """
    names = list(tumor_names)
    out: dict[str, Any] = {}
    tumor_columns: dict[str, Any] = {}
    for label, rule in rule_labels(rules, names, counted_tumors).items():
        if rule.quantity == "tumors":
            name = label.split(":", 1)[1]
            if name not in tumor_columns:
                all_tumors = doses.get("tumors")
                tumor_columns[name] = None if _is_missing(all_tumors) else all_tumors[..., names.index(name)]
            dose = tumor_columns[name]
        else:
            dose = doses.get(rule.quantity)
        if _is_missing(dose):
            continue
        out[label] = rule.margin(dose)
    return out


def missing_quantities(rules: Sequence[Rule], doses: Mapping[str, Any]) -> list[str]:
    """Quantities the rules need whose dose is absent or all NaN (their rules are skipped by :func:`margins`)."""
    out: list[str] = []
    for rule in rules:
        if rule.quantity not in out and _is_missing(doses.get(rule.quantity)):
            out.append(rule.quantity)
    return out


def success_rules(rules: Sequence[Rule], success: str) -> tuple[Rule, ...]:
    """The rules as a case's ``[plan] success`` reads them: for ``"mass-weighted"`` a target on ``tumors``
    applies to the mass-weighted mean tumour dose (``tumor_total``); otherwise unchanged (for
    ``"index-tumor"`` pass only the index tumour as ``counted_tumors``)."""
    if success not in SUCCESS_MODES:
        raise ValueError(f"success must be one of {SUCCESS_MODES}, got {success!r}")
    if success != "mass-weighted":
        return tuple(rules)
    return tuple(
        dataclasses.replace(r, quantity="tumor_total") if r.kind == "target" and r.quantity == "tumors" else r
        for r in rules
    )


def hepatic_reserve_fraction(perfused_volume_ml: float, whole_liver_volume_ml: float) -> float:
    """Share of the whole liver outside the treated (perfused) territory: 1 − V_perfused / V_whole."""
    if whole_liver_volume_ml <= 0:
        raise ValueError("whole_liver_volume_ml must be > 0")
    return 1.0 - perfused_volume_ml / whole_liver_volume_ml


# --- advisories ---------------------------------------------------------------------------------------

#: Codes :func:`advisories` may return.
ADVISORY_CODES: tuple[str, ...] = (
    "low-tn",
    "high-lsf",
    "lung-activity",
    "outside-window",
    "not-preferred-time",
    "default-window",
    "model",
    "hepatic-reserve",
    "hepatic-reserve-unknown",
    "sphere-activity",
    "rule-not-evaluated",
    "session-interval",
    "session-order",
    "treated-share",
)


def advisories(
    scenario: Scenario,
    *,
    tn_ratios: Mapping[str, float] | None = None,
    shunt_fraction: float | None = None,
    lung_activity_gbq: float | None = None,
    hours_after_calibration: float | None = None,
    model: str | None = None,
    hepatic_reserve: float | None = None,
    activity_per_sphere_bq: float | None = None,
    missing: Sequence[str] = (),
    window_tolerance_h: float = DAY_TOLERANCE_H,
) -> list[tuple[str, str]]:
    """Advice on a plan's nominal inputs: returned as ``(code, message)`` pairs, never applied.

    Args:
        scenario: the scenario (after overrides).
        tn_ratios: tumour name → nominal MAA T:N of the treated tumours.
        shunt_fraction: nominal lung shunt fraction (0-1).
        lung_activity_gbq: nominal activity reaching the lungs [GBq].
        hours_after_calibration: the treatment time.
        model: the dosimetry model the plan uses (one of :data:`MODELS`).
        hepatic_reserve: share of the whole liver outside the treated territory, or None when unknown
            (see :func:`hepatic_reserve_fraction`).
        activity_per_sphere_bq: activity of one sphere at treatment [Bq].
        missing: quantities without a dose (from :func:`missing_quantities`).
        window_tolerance_h: slack at the window edges (default: the same calendar day, :data:`DAY_TOLERANCE_H`).

    Inputs left as None are not checked. Codes are listed in :data:`ADVISORY_CODES`.
    """
    out: list[tuple[str, str]] = []
    for name, tn in (tn_ratios or {}).items():
        if tn < TN_RATIO_MIN:
            out.append(
                (
                    "low-tn",
                    f"tumour {name}: T:N {tn:.3g} < {TN_RATIO_MIN:g}: little preferential uptake on MAA; the tumour dose "
                    "estimate is least reliable and the partition model gains little",
                )
            )
    if shunt_fraction is not None and shunt_fraction > SHUNT_FRACTION_MAX:
        out.append(
            (
                "high-lsf",
                f"lung shunt fraction {100 * shunt_fraction:.3g} % > {100 * SHUNT_FRACTION_MAX:g} %: check the lung dose "
                "and the shunt measurement (planar imaging overestimates)",
            )
        )
    if lung_activity_gbq is not None and lung_activity_gbq > LUNG_ACTIVITY_MAX_GBQ:
        out.append(
            (
                "lung-activity",
                f"lung activity {lung_activity_gbq:.3g} GBq ({lung_activity_gbq / 0.037:.3g} mCi) > "
                f"{LUNG_ACTIVITY_MAX_GBQ:g} GBq (16.5 mCi): TheraSphere IFU contraindication",
            )
        )
    w = scenario.window
    span = f"{w.start_h:g}-{w.end_h:g} h after calibration" + (
        f" ({w.days[0]} to {w.days[-1]})" if w.days else ""
    )
    if w.default:
        out.append(
            (
                "default-window",
                f"the DSC sets no treatment window for scenario {scenario.id}; {span} is a default",
            )
        )
    if hours_after_calibration is not None:
        h = hours_after_calibration
        if not w.contains(h, window_tolerance_h):
            out.append(
                (
                    "outside-window",
                    f"treatment at {h:.4g} h is outside the scenario window {span} ({w.source})",
                )
            )
        elif not any(abs(h - p) <= window_tolerance_h for p in w.preferred_h):
            pref = ", ".join(f"{p:g}" for p in w.preferred_h)
            out.append(
                (
                    "not-preferred-time",
                    f"treatment at {h:.4g} h is inside the window but not at a preferred time ({pref} h); the DSC thresholds "
                    "were validated mostly at week 1 Wednesday",
                )
            )
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if model == "single-compartment" and scenario.preferred_model == "partition":
            out.append(
                (
                    "model",
                    f"single-compartment dosimetry used where the DSC prefers the partition (multicompartment) model "
                    f"for scenario {scenario.id}",
                )
            )
    reserve_min = scenario.checks.get("hepatic_reserve_min")
    if reserve_min is not None:
        if hepatic_reserve is None:
            out.append(
                (
                    "hepatic-reserve-unknown",
                    f"scenario {scenario.id} selects patients with hepatic reserve ≥ {100 * reserve_min:g} %; "
                    "give the whole-liver volume to check it",
                )
            )
        elif hepatic_reserve < reserve_min:
            out.append(
                (
                    "hepatic-reserve",
                    f"hepatic reserve {100 * hepatic_reserve:.3g} % < {100 * reserve_min:g} % "
                    f"({scenario.checks.get('source', scenario.source)})",
                )
            )
    sphere_min = scenario.checks.get("sphere_activity_min_bq")
    if sphere_min is not None and activity_per_sphere_bq is not None and activity_per_sphere_bq < sphere_min:
        out.append(
            (
                "sphere-activity",
                f"activity per sphere {activity_per_sphere_bq:.4g} Bq < {sphere_min:g} Bq (preliminary; "
                f"{scenario.checks.get('source', scenario.source)}); it depends on the activity per sphere at calibration",
            )
        )
    for quantity in missing:
        ids = [r.id for r in scenario.rules if r.quantity == quantity]
        if not ids:
            continue
        hint = (
            " (give [liver] whole_liver_volume_ml)"
            if quantity in ("whole_normal_liver", "whole_liver")
            else ""
        )
        out.append(
            (
                "rule-not-evaluated",
                f"no {quantity} dose{hint}: rule{'s' if len(ids) > 1 else ''} {', '.join(ids)} not evaluated",
            )
        )
    return out
