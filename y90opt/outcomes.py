"""The bridge between a case and its scenario's rules: which rules apply, which tumours count, and the
rule outcome and advisories at the nominal doses.

One evaluation (:func:`y90opt.rules.margins`, margins ≤ 0 satisfied) drives ``dose``, ``simulate``, ``plan``
and the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import physics
from . import rules as _rules
from .case import Case, CaseError
from .scenarios import apply_overrides, load_scenario


@dataclasses.dataclass(frozen=True)
class NotEvaluable:
    """A rule the case cannot evaluate: which rule, why, and the case field that would make it evaluable."""

    id: str
    kind: str  # "target" | "limit"
    level: str
    quantity: str
    reason: str
    field: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "level": self.level, "quantity": self.quantity,
                "status": "not evaluable", "reason": self.reason, "field": self.field}


@dataclasses.dataclass(frozen=True)
class ActiveRules:
    """The rules a plan is judged by, after the case's overrides and its choice of success.

    ``targets``, ``secondary`` and ``limits`` hold only rules the case can evaluate; the others are in
    ``not_evaluable`` with the reason (``dose`` and ``simulate`` list them; ``plan`` refuses a primary one).
    """

    scenario: Any  # scenarios.Scenario
    targets: tuple  # primary targets: success = all met
    secondary: tuple  # "where possible" targets: reported only
    limits: tuple
    counted_tumors: tuple[str, ...]
    success: str
    not_evaluable: tuple[NotEvaluable, ...] = ()
    case: Any = None  # the case the rules were bound to (which columns each rule constrains)


def active_rules(case: Case, strict: bool = False) -> ActiveRules:
    """The scenario's rules with the case's ``[rules]`` overrides, split into those the case can evaluate and
    those it cannot.

    Args:
        case: a parsed case.
        strict: the judgement of ``plan``: raise :class:`~y90opt.case.CaseError` when a primary target or a
            limit cannot be evaluated, or no primary target is left, with a message naming the field and a fix
            that works (the committee's alternative for the case, where the scenario has one). Without it
            (``dose``, ``simulate``, ``sensitivity``) such rules are listed as not evaluable and nothing is
            refused: a nominal dose needs no rule.
    """
    scen = load_scenario(case.scenario)
    scen = apply_overrides(scen, dict(case.rules), case.path, require_primary=False)
    treated = tuple(t.name for t in case.tumors if t.treated)
    mode = case.plan.success
    counted = (case.plan.index_tumor,) if mode == "index-tumor" else treated

    def rewrite(r):
        if mode == "mass-weighted" and r.quantity == "tumors":
            return dataclasses.replace(r, quantity="tumor_total")
        return r

    groups = {
        "target": [rewrite(r) for r in scen.targets if r.level == "primary"],
        "secondary": [rewrite(r) for r in scen.targets if r.level != "primary"],
        "limit": [rewrite(r) for r in scen.limits],
    }
    kept: dict[str, list] = {k: [] for k in groups}
    lost: list[NotEvaluable] = []
    for group, rules in groups.items():
        for r in rules:
            why = _why_not_evaluable(case, r.quantity, counted)
            if why is None:
                kept[group].append(r)
            else:
                lost.append(NotEvaluable(r.id, r.kind, r.level, r.quantity, why[1], why[0]))
    ar = ActiveRules(scen, tuple(kept["target"]), tuple(kept["secondary"]), tuple(kept["limit"]), counted, mode,
                     tuple(lost), case)
    if strict:
        _require_evaluable(case, ar)
    return ar


_TREATMENT_HEADS = ("injections.", "regions.", "lung_sessions", "whole_normal_liver_sessions")


def rule_items(case: Case, quantity: str, counted: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """The dose columns a rule on ``quantity`` constrains, as ``(label suffix, column)`` pairs: one per counted
    tumour for ``tumors``; with ``[[injections]]``, one per session for ``lung`` and the ``*_sessions``
    quantities (a limit holds for each session), one per injection for ``perfused_mean`` (each injection's own
    territory), one per region for ``normal_perfused`` (each region's normal tissue, all injections added),
    the named or each (``*``) injection or region for ``injections.<key>.*`` and ``regions.<key>.*``. The
    suffix is None when there is one column. Empty when the case gives no such dose (see
    :func:`_why_not_evaluable`)."""
    if quantity == "tumors":
        return [(n, f"tumors.{n}") for n in counted]
    if quantity == "tumors_d70":
        ratio = {t.name: t.d70_ratio for t in case.tumors}
        return [(n, f"tumors_d70.{n}") for n in counted if ratio.get(n) is not None]
    if not case.multi:
        return [] if quantity.startswith(_TREATMENT_HEADS) else [(None, quantity)]
    sessions = [x.name for x in case.sessions]
    injections = case.injections
    if quantity in ("lung", "lung_sessions"):
        return _one_or_each([(x, f"lung_sessions.{x}") for x in sessions])
    if quantity == "whole_normal_liver_sessions":
        return _one_or_each([(x, f"whole_normal_liver_sessions.{x}") for x in sessions]) if case.has_whole_liver else []
    if quantity == "perfused_mean":
        return _one_or_each([(j.key, f"injections.{j.name}.perfused_mean") for j in injections])
    if quantity == "normal_perfused":
        return _one_or_each([(j.key, f"regions.{j.name}.normal") for j in injections])
    head, _, rest = quantity.partition(".")
    if head in ("injections", "regions"):
        key, _, what = rest.partition(".")
        chosen = injections if key == "*" else [j for j in injections if j.key == key or j.name == key]
        items = [(j.key, f"{head}.{j.name}.{what}") for j in chosen]
        return items if key == "*" else [(None, c) for _, c in items]
    if quantity in ("whole_normal_liver", "whole_liver") and not case.has_whole_liver:
        return []
    return [(None, quantity)]


def _one_or_each(items: list[tuple[str, str]]) -> list[tuple[str | None, str]]:
    return [(None, items[0][1])] if len(items) == 1 else list(items)


def _why_not_evaluable(case: Case, quantity: str, counted: tuple[str, ...]) -> tuple[str, str] | None:
    """(field, reason) when the case gives no dose for ``quantity``, else None."""
    if quantity.startswith(_TREATMENT_HEADS) and not case.multi:
        return "injections", "the case describes one injection (no [[injections]])"
    if case.multi and quantity.startswith(("injections.", "regions.")) and not rule_items(case, quantity, counted):
        key = quantity.split(".")[1]
        return "injections", f"no injection has the role or name {key!r}"
    if quantity in ("whole_normal_liver", "whole_liver", "whole_normal_liver_sessions") and not case.has_whole_liver:
        return "liver.whole_liver_volume_ml", "the case gives no whole-liver volume"
    if quantity == "tumors" and not counted:
        return "tumors", "the case lists no treated tumour"
    if quantity == "tumors_d70" and not rule_items(case, quantity, counted):
        return "tumors", "no counted tumour gives its d70_ratio (y90opt voxel --case-out writes it)"
    if quantity == "tumor_total" and not any(t.treated for t in case.tumors):
        return "tumors", "the case lists no treated tumour"
    return None


def single_compartment_fix(scen, overrides) -> str | None:
    """The ``[rules]`` change that switches ``scen`` (after the case's ``overrides``) to the committee's
    single-vial, single-compartment alternative with a primary target, as one phrase; None if it has none."""
    applied = set(scen.applied)
    active = {r.id for r in scen.rules}
    for alt in scen.alternatives:
        if alt.model != "single-compartment" or alt.vials != 1 or not alt.has_primary_target:
            continue
        parts = []
        if f"alternative:{alt.id}" not in applied:
            parts.append(f"alternatives = [\"{alt.id}\"]")
        remove = [rid for rid in alt.replaces if rid in active]
        if remove:
            parts.append("remove = [" + ", ".join(f"\"{x}\"" for x in remove) + "]")
        if not parts:
            continue
        return (f"plan with the committee's single-compartment alternative {alt.id!r} ({alt.source}): add to [rules] "
                + " and ".join(parts))
    return None


def _require_evaluable(case: Case, ar: ActiveRules) -> None:
    """A primary target or a limit that the case cannot evaluate is bad input for a plan, never silently
    dropped: a plan judged without it would look safer or more successful than it is."""
    scen = ar.scenario
    for ne in ar.not_evaluable:
        if ne.kind == "target" and ne.level != "primary":
            continue
        if ne.field == "injections":
            roles = sorted({r.quantity.split(".")[1] for r in scen.rules if r.quantity.startswith(("injections.", "regions."))})
            advice = ("describe the treatment by [[sessions]] and [[injections]]"
                      + (f" with the roles {', '.join(roles)}" if roles else "")
                      + " (example: configs/examples/modified-radiation-lobectomy.toml)")
        elif ne.field == "tumors":
            fix = single_compartment_fix(scen, case.rules)
            advice = "list the treated tumours in [[tumors]]" + (f", or {fix}" if fix else
                     ", or give a target of your own under [rules] targets")
        else:
            advice = (f"give {ne.field}, or drop the rule with [rules] remove = [\"{ne.id}\"] if it does not apply "
                      "to this patient")
        raise CaseError(
            case.path, ne.field,
            f"{ne.reason}: needed by the {ne.kind} {ne.id!r} ({ne.quantity}) of scenario {scen.id}; {advice}",
        )
    if not ar.targets:
        fix = single_compartment_fix(scen, case.rules)
        raise CaseError(
            case.path, "rules",
            "no primary target left: a plan needs at least one; "
            + (fix if fix else "add one under [rules] targets, or keep one of the scenario's"),
        )


def rule_rows(ar: ActiveRules) -> list[dict[str, Any]]:
    """The rules a judgement used, one row per label (a tumour rule per counted tumour), with the dose name
    each constrains: the ``rules`` list of ``plan --json``."""
    rows = []
    for rule in ar.targets + ar.secondary + ar.limits:
        items = _labels(ar, rule)
        for label, quantity in items:
            row = {"id": rule.id, "label": label, "kind": rule.kind, "level": rule.level, "quantity": quantity,
                   ("min_gy" if rule.kind == "target" else "max_gy"): rule.threshold_gy, "source": rule.source}
            rows.append(row)
    return rows


def _labels(ar: ActiveRules, rule) -> list[tuple[str, str]]:
    """(label, column) of each dose a rule constrains: ``<id>`` or ``<id>:<tumour, session, injection>``."""
    if ar.case is None:  # pragma: no cover - every ActiveRules is built by active_rules
        raise ValueError("rules not bound to a case")
    return [(rule.id if sfx is None else f"{rule.id}:{sfx}", col)
            for sfx, col in rule_items(ar.case, rule.quantity, ar.counted_tumors)]


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


def nominal_outcome(case: Case, nominal: dict[str, Any], values: dict[str, float] | None = None) -> dict[str, Any]:
    """Rule outcome at the nominal doses and the advisories, for ``dose``. With ``[[injections]]``,
    ``values`` holds the doses by model column (``regions.lobe.normal`` …)."""
    ar = active_rules(case)
    if case.multi or any(r.quantity == "tumors_d70" for r in ar.targets + ar.secondary + ar.limits):
        return _treatment_outcome(case, nominal, ar, values or {})
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
                rows.append(_rule_row(r, label, kind, r.quantity, value, float(margin)))
    return _outcome(rows, ar, nominal_advisories(case, nominal, ar))


def _rule_row(r, label: str, kind: str, quantity: str, value: float, margin: float) -> dict[str, Any]:
    """One judged rule of ``dose``: its dose, margin (≤ 0 satisfied) and status."""
    ok = margin <= 0
    return {
        "label": label, "kind": kind, "quantity": quantity, "threshold_gy": r.threshold_gy, "value": value,
        "margin_gy": margin,
        "status": ("met" if ok else "not met") if r.kind == "target" else ("kept" if ok else "EXCEEDED"),
        "source": r.source,
    }


def _outcome(rows: list[dict[str, Any]], ar: ActiveRules, advisories: list[dict[str, str]]) -> dict[str, Any]:
    """The rule outcome of ``dose`` from its judged rows, with the rules it cannot evaluate and the advisories."""
    rows = rows + _not_evaluable_rows(ar)
    judged = [r for r in rows if r["status"] != "not evaluable"]
    primary = [r for r in judged if r["kind"] == "target"]
    return {
        "rules": rows,
        "rules_not_evaluated": [ne.id for ne in ar.not_evaluable],
        "rules_not_evaluable": [ne.to_dict() for ne in ar.not_evaluable],
        # no primary target to meet: undefined (null), never a vacuous true
        "targets_met": all(r["status"] == "met" for r in primary) if primary else None,
        "limits_kept": all(r["status"] == "kept" for r in judged if r["kind"] == "limit"),
        "advisories": advisories,
    }


def _treatment_outcome(case: Case, nominal: dict[str, Any], ar: ActiveRules, values: dict[str, float]) -> dict[str, Any]:
    """The rule outcome judged by model column (``values``): every rule of a case of several injections, and the
    voxel D70 rules of one (whose columns :func:`rules.margins` does not know)."""
    rows = []
    for kind, group in (("target", ar.targets), ("secondary target", ar.secondary), ("limit", ar.limits)):
        for r in group:
            for label, col in _labels(ar, r):
                value = float(values[col])
                margin = r.threshold_gy - value if r.kind == "target" else value - r.threshold_gy
                rows.append(_rule_row(r, label, kind, col, value, margin))
    advisories = treatment_advisories(case, nominal, ar) if case.multi else nominal_advisories(case, nominal, ar)
    return _outcome(rows, ar, advisories)


def _not_evaluable_rows(ar: ActiveRules) -> list[dict[str, Any]]:
    return [{
        "label": ne.id,
        "kind": {"target": "target" if ne.level == "primary" else "secondary target"}.get(ne.kind, ne.kind),
        "quantity": ne.quantity,
        "threshold_gy": _threshold(ar.scenario, ne.id),
        "value": None,
        "margin_gy": None,
        "status": "not evaluable",
        "reason": ne.reason,
        "source": _source(ar.scenario, ne.id),
    } for ne in ar.not_evaluable]


#: The committee's interval between staged lobar sessions (DSC 2022 Scenario 4, Treatment delivery): 4-8 weeks.
STAGED_INTERVAL_WEEKS = (4.0, 8.0)


def session_hepatic_reserve(case: Case, session: str) -> float | None:
    """Share of the whole liver outside the territories treated in ``session`` (nominal), or None without a
    whole-liver volume: the reserve is judged per session."""
    if case.whole_liver_volume_ml is None:
        return None
    names = {j.name for j in case.injections if j.session == session}
    # a territory nested in another of the same session is already counted in it
    outer = [j for j in case.injections if j.name in names and j.within not in names]
    return 1.0 - sum(j.perfused_volume_ml.nominal for j in outer) / case.whole_liver_volume_ml.nominal


def treatment_advisories(case: Case, nominal: dict[str, Any], ar: ActiveRules | None = None) -> list[dict[str, str]]:
    """Advisories of a treatment of several injections: each injection's (its T:N, shunt, lung activity, time,
    its session's hepatic reserve), named by injection, and the interval between sessions."""
    import datetime as _dt

    ar = ar or active_rules(case)
    out: list[dict[str, str]] = []
    by_message: dict[tuple[str, str], list[str]] = {}
    # the lung activity is judged per session (the IFU's 0.61 GBq holds for one treatment, all its vials)
    session_lung = {}
    for j in case.injections:
        session_lung[j.session] = session_lung.get(j.session, 0.0) + nominal["injections"][j.name]["activity_gbq"]["lung"]
    for j in case.injections:
        inj = nominal["injections"][j.name]
        tn = {t.name: t.tn_ratio.nominal for t in case.tumors if t.injection == j.name}
        tn.update({n: spec.nominal for n, spec in j.tn_ratios})
        shunt = (j.shunt_fraction or case.shunt_fraction).nominal
        adv = _rules.advisories(
            ar.scenario, tn_ratios=tn, shunt_fraction=shunt, lung_activity_gbq=session_lung[j.session],
            hours_after_calibration=inj["hours_after_calibration"],
            model="partition" if any(t.treated for t in case.tumors) else "single-compartment",
            hepatic_reserve=session_hepatic_reserve(case, j.session),
            activity_per_sphere_bq=inj["activity_per_sphere_bq"],
        )
        for code, msg in adv:
            by_message.setdefault((code, msg), []).append(j.name)
    for (code, msg), names in by_message.items():
        who = ("injection " if len(names) == 1 else "injections ") + ", ".join(names)
        out.append({"code": code, "message": f"{who}: {msg}"})
    times = sorted((x.treatment, x.name) for x in case.sessions if x.treatment is not None)
    lo, hi = STAGED_INTERVAL_WEEKS
    for (t0, a), (t1, b) in zip(times, times[1:], strict=False):
        weeks = (t1 - t0) / _dt.timedelta(weeks=1)
        if not lo <= weeks <= hi:
            out.append({"code": "session-interval", "message": (
                f"session {b} is {weeks:.1f} weeks after session {a}: the committee recommends a staged second "
                f"treatment at {lo:g}-{hi:g} weeks, once liver function tests are assessed (DSC 2022 Scenario 4, "
                "Treatment delivery)")})
    if len(times) > 1:
        burden = {x.name: sum(t.volume_ml.nominal for t in case.tumors
                              if t.injection is not None and case.injection(t.injection).session == x.name)
                  for x in case.sessions}
        first = times[0][1]
        heavier = max(burden, key=lambda k: burden[k])
        if burden[heavier] > burden[first]:
            out.append({"code": "session-order", "message": (
                f"session {first} (first) treats {burden[first]:g} mL of tumour, session {heavier} {burden[heavier]:g} mL: "
                "the committee treats the lobe with more extensive disease first (DSC 2022 Scenario 4, Treatment delivery)")})
    share_max = ar.scenario.checks.get("treated_liver_share_max")
    if share_max is not None and case.whole_liver_volume_ml is not None:
        caution = ar.scenario.checks.get("treated_liver_share_caution")
        for x in case.sessions:
            share = 1.0 - session_hepatic_reserve(case, x.name)
            if share > share_max or (caution is not None and share > caution):
                out.append({"code": "treated-share", "message": (
                    f"session {x.name} treats {100 * share:.3g} % of the whole liver: the committee reports up to "
                    f"{100 * share_max:g} % in ALBI-1 with excellent tolerability"
                    + (f" and more liver toxicity above {100 * caution:g} % in ALBI-2 and Child-Pugh B" if caution else "")
                    + " (DSC 2022 Scenario 1, Patient selection, item 4)")})
    for ne in ar.not_evaluable:
        out.append({"code": "rule-not-evaluated",
                    "message": f"{ne.kind} {ne.id!r} ({ne.quantity}) not evaluable: {ne.reason} (give {ne.field})"})
    if case.custom_conventions:
        out.append({"code": "custom-conventions", "message": "conventions outside their cited ranges (custom = "
                    "true): " + "; ".join(case.custom_conventions)})
    if case.biased_inputs:
        out.append({"code": "bias", "message": "bias options used on " + ", ".join(case.biased_inputs)
                    + ": Monte Carlo doses are centred on an estimate of the delivered dose (research), not the planned dose"})
    return out


def _rule_by_id(scen, rule_id: str):
    return next(r for r in scen.rules if r.id == rule_id)


def _threshold(scen, rule_id: str) -> float:
    return _rule_by_id(scen, rule_id).threshold_gy


def _source(scen, rule_id: str) -> str:
    return _rule_by_id(scen, rule_id).source


def flatten_doses(dose_gy: dict[str, Any]) -> dict[str, float]:
    """``{"tumors": {"T1": x}}`` → ``{"tumors.T1": x}``, other keys unchanged."""
    out = {}
    for k, v in dose_gy.items():
        if k == "tumors":
            out.update({f"{k}.{n}": x for n, x in v.items()})
        else:
            out[k] = v
    return out


def hepatic_reserve(case: Case) -> float | None:
    """Untreated share of the whole liver (nominal), or None without a whole-liver volume."""
    if case.whole_liver_volume_ml is None:
        return None
    return 1.0 - case.perfused_volume_ml.nominal / case.whole_liver_volume_ml.nominal


def nominal_advisories(case: Case, nominal: dict[str, Any], ar: ActiveRules | None = None) -> list[dict[str, str]]:
    """Advisories at the nominal inputs (printed, never applied); rules the case cannot evaluate come from
    ``ar.not_evaluable``."""
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
    )
    out = [{"code": c, "message": m} for c, m in adv]
    for ne in ar.not_evaluable:
        out.append({
            "code": "rule-not-evaluated",
            "message": f"{ne.kind} {ne.id!r} ({ne.quantity}) not evaluable: {ne.reason} (give {ne.field})",
        })
    if case.custom_conventions:
        out.append({
            "code": "custom-conventions",
            "message": "conventions outside their cited ranges (custom = true): " + "; ".join(case.custom_conventions),
        })
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

    not_evaluable: tuple[dict, ...] = ()  # rows of the rules the case cannot evaluate, with the reason

    def margins(self, doses):
        """Margins (..., R) from doses (..., Q) (numpy or JAX arrays)."""
        return self.signs * (doses[..., self.cols] - self.thresholds)


def compile_rules(ar: ActiveRules, quantities: tuple[str, ...]) -> RuleTable:
    labels, kinds, qs, srcs, cols, thr, signs = [], [], [], [], [], [], []
    missing = [ne.id for ne in ar.not_evaluable]
    missing_q = [ne.quantity for ne in ar.not_evaluable]
    for kind, group in (("target", ar.targets), ("secondary", ar.secondary), ("limit", ar.limits)):
        for r in group:
            for label, q in _labels(ar, r):
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
        tuple(ne.to_dict() for ne in ar.not_evaluable),
    )


def treatment_dose_mapping(case: Case, values: dict[str, Any], decisions) -> dict[str, Any]:
    """Model columns → the nested ``dose --json`` keys of a treatment of several injections. ``values`` may hold
    numbers or per-quantity statistics (``simulate``)."""
    conv = case.conventions
    injections = {}
    for j, (hours, vial, s) in zip(case.injections, decisions, strict=True):
        injections[j.name] = {
            "session": j.session,
            "role": j.role,
            "within": j.within,
            "hours_after_calibration": hours,
            "calibration": case.injection_calibration(j).isoformat(),
            "activity_gbq": {
                "vial_at_calibration": vial,
                "vial_at_treatment": s,
                "injected": values[f"injections.{j.name}.injected"],
                "liver": values[f"injections.{j.name}.liver"],
                "lung": values[f"injections.{j.name}.lung_activity"],
            },
            "activity_per_sphere_bq": physics.activity_per_sphere_bq(hours, conv),
            "spheres": physics.spheres_per_vial(vial, conv),
            "dose_gy": {
                "perfused_mean": values[f"injections.{j.name}.perfused_mean"],
                "normal_perfused": values[f"injections.{j.name}.normal_perfused"],
            },
        }
    dose_gy: dict[str, Any] = {
        "regions": {j.name: {"mean": values[f"regions.{j.name}.mean"], "normal": values[f"regions.{j.name}.normal"]}
                    for j in case.injections},
        "tumors": {n: values[f"tumors.{n}"] for n in case.tumor_names},
    }
    if "tumor_total" in values:
        dose_gy["tumor_total"] = values["tumor_total"]
    d70 = {q.split(".", 1)[1]: v for q, v in values.items() if q.startswith("tumors_d70.")}
    if d70:
        dose_gy["tumors_d70"] = d70
    dose_gy["lung_sessions"] = {x.name: values[f"lung_sessions.{x.name}"] for x in case.sessions}
    dose_gy["lung_cumulative"] = values["lung_cumulative"]
    if case.has_whole_liver:
        dose_gy["whole_normal_liver_sessions"] = {x.name: values[f"whole_normal_liver_sessions.{x.name}"]
                                                  for x in case.sessions}
        dose_gy["whole_normal_liver"] = values["whole_normal_liver"]
        dose_gy["whole_liver"] = values["whole_liver"]
    return {
        "case": case.name,
        "scenario": case.scenario,
        "sessions": {x.name: {"calibration": x.calibration.isoformat(),
                              "treatment": None if x.treatment is None else x.treatment.isoformat(),
                              "delivered": x.delivered} for x in case.sessions},
        "injections": injections,
        "dose_gy": dose_gy,
        "prior_lung_dose_gy": case.prior_lung_dose_gy,
        "conventions": conv.as_dict(),
    }


def flatten_nested(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"regions": {"lobe": {"mean": x}}}`` → ``{"regions.lobe.mean": x}`` (a leaf is a non-mapping, or a
    mapping of statistics with a ``mean`` number)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not ("mean" in v and "p05" in v):
            out.update(flatten_nested(v, key + "."))
        else:
            out[key] = v
    return out
