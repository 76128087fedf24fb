"""A virtual trial of planning policies: what uncertainty-aware planning changes against deterministic practice.

For each patient of a cohort (a table, or virtual patients from :mod:`y90opt.virtual`), every **policy** chooses
a vial and a treatment time; every choice is then judged on **realised** doses: the same M draws of the patient
as treated (one truth per patient, shared by the policies: a paired comparison), from a **truth model**.

Policies (plain functions ``policy(case, ctx) -> Decision``; a user adds their own to :data:`POLICIES`):

``limit-prescription``
    Deterministic, as clinics prescribe to the normal tissue: at the scenario's preferred day, the largest
    catalogue vial whose *nominal* doses keep every limit (e.g. NTAD ≤ 120 Gy, lung ≤ 30 Gy).
``tumour-250``
    Deterministic: the smallest vial whose nominal dose to every counted tumour reaches 250 Gy with every
    nominal limit kept, else the largest vial keeping them (a case without tumours: its primary targets).
``nominal-target``
    The vendor-calculator style: the smallest vial whose nominal doses meet every primary target with every
    nominal limit kept, at the preferred day; else the largest vial keeping the limits.
``y90opt``
    :func:`y90opt.planner.plan_case`: maximise P(all primary targets) subject to P(limit kept) ≥ 1 − risk, over
    every vial and day; an infeasible plan is not treated.

A policy that finds no vial keeping its limits does not treat (counted as no target met, no limit broken).

Truth models (plain functions ``truth(case, m, rng) -> {case path: (m,) values}``, :data:`TRUTHS`):

``delivered``
    The delivered-versus-planned relations of the domain reference (§5), each cited, for a case planned as
    clinics plan (planar LSF, 1 kg lungs): the planar lung shunt
    overestimates the delivered one (realised = measured − 8.5 pp, SD 5.3 pp, when the measurement is ≥ 7.5 %;
    else − 2.7 pp, SD 4 pp; Young et al.; CVIR 2020: planar 8.27 % vs SPECT/CT 3.27 %); the MAA T:N
    overestimates the delivered tumour dose (a lognormal factor of median 1/1.26, Riveira-Martin et al.
    EJNMMI Res 2023: "simulation tended to overestimate tumour absorbed doses by 26 %", and σ_ln 0.3, Kafrouni
    et al. 2019); the site's dose calibrator (normal, SD 5 %, a blind Y-90 assay survey); the lung mass
    (0.82 ± 0.10 kg against the 1 kg assumed, Kao 2014; only when the case assumes 1 kg); the residual (lognormal, median 0.6 %, CV 100 %,
    Hoang et al.); the volumes as the case's own segmentation uncertainty.
``planning``
    The planning model itself: the patient drawn from the case's own uncertainty (what y90opt plans with).

Seeds: patient k's draws under truth T come from ``numpy.random.default_rng([seed, 7, k, crc32(T), 1])`` (the
last word non-zero, so no shorter seed list, e.g. a virtual patient's ``[seed, k]``, is the same stream), a
stream independent of the planning samples (JAX's threefry from ``seed``) and of which other truths run.

What the comparison can and cannot show: the committee's thresholds were validated on *planned* doses
(MAA-based, planar LSF, 1 kg lung). Judging realised doses against them measures how often the planned
intent survives the known delivered-versus-planned biases, not clinical response. Under ``planning`` truth
the chance-constrained policy keeps its limits with P ≥ 1 − risk by construction; the deterministic ones
show what ignoring the uncertainty costs. Under ``delivered`` truth no policy knows the biases: the
comparison asks which is more robust to them.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import physics
from .case import Case
from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Decision:
    """A policy's choice: the vial at calibration and the hours after calibration, or no treatment."""

    vial_gbq: float | None
    hours_after_calibration: float | None
    note: str = ""

    @property
    def treated(self) -> bool:
        return self.vial_gbq is not None


@dataclasses.dataclass
class PolicyContext:
    """What a policy may use: the case's nominal per-GBq doses, its rules, the catalogue and the days."""

    case: Case
    quantities: tuple[str, ...]
    nominal_factors: np.ndarray  # per GBq at treatment, at the measured inputs
    offsets: np.ndarray
    rules: Any  # outcomes.RuleTable
    vials: tuple[float, ...]
    hours: tuple[float, ...]
    preferred_hours: float
    samples: int
    seed: int

    def nominal(self, vial: float, hours: float) -> np.ndarray:
        return vial * physics.decay_factor(hours, self.case.conventions.half_life_h) * self.nominal_factors + self.offsets

    def keeps_limits(self, vial: float, hours: float) -> bool:
        m = self.rules.margins(self.nominal(vial, hours))
        return bool(np.all(m[self.rules.is_limit] <= 0))

    def meets(self, vial: float, hours: float, rows: np.ndarray) -> bool:
        m = self.rules.margins(self.nominal(vial, hours))
        return bool(np.all(m[rows] <= 0))


def _largest_keeping(ctx: PolicyContext, h: float, note: str) -> Decision:
    ok = [v for v in ctx.vials if ctx.keeps_limits(v, h)]
    return Decision(max(ok), h, note) if ok else Decision(None, None, "no vial keeps the nominal limits")


def limit_prescription(case: Case, ctx: PolicyContext) -> Decision:
    return _largest_keeping(ctx, ctx.preferred_hours, "largest vial keeping every nominal limit")


def tumour_250(case: Case, ctx: PolicyContext) -> Decision:
    h = ctx.preferred_hours
    counted = [f"tumors.{n}" for n in (case.plan.index_tumor,) if n] if case.plan.success == "index-tumor" else \
        [f"tumors.{t.name}" for t in case.tumors if t.treated]
    if counted:
        cols = [ctx.quantities.index(q) for q in counted]
        for v in sorted(ctx.vials):
            if ctx.keeps_limits(v, h) and np.all(ctx.nominal(v, h)[cols] >= 250.0):
                return Decision(v, h, "smallest vial giving every tumour 250 Gy")
        return _largest_keeping(ctx, h, "250 Gy out of reach: largest vial keeping every nominal limit")
    return nominal_target(case, ctx)


def nominal_target(case: Case, ctx: PolicyContext) -> Decision:
    h = ctx.preferred_hours
    rows = ctx.rules.is_primary
    for v in sorted(ctx.vials):
        if ctx.keeps_limits(v, h) and ctx.meets(v, h, rows):
            return Decision(v, h, "smallest vial meeting every nominal target")
    return _largest_keeping(ctx, h, "targets out of reach: largest vial keeping every nominal limit")


def uncertainty_aware(case: Case, ctx: PolicyContext) -> Decision:
    from .planner import plan_case

    s = plan_case(case, n=ctx.samples, seed=ctx.seed, optuna_trials=0).summary
    rec = s["recommended"]
    if not s["feasible"] or rec is None:
        return Decision(None, None, "infeasible: not treated")
    return Decision(float(rec["vial_gbq"]), float(rec["hours_after_calibration"]), s["status"])


#: The policies compared, by name (add your own: ``policy(case, ctx) -> Decision``).
POLICIES: dict[str, Callable[[Case, PolicyContext], Decision]] = {
    "limit-prescription": limit_prescription,
    "tumour-250": tumour_250,
    "nominal-target": nominal_target,
    "y90opt": uncertainty_aware,
}


# -- truth models --------------------------------------------------------------------------------------------


def truth_planning(case: Case, m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The patient as the planning model describes it: every input from its own form, correlated by the case's
    Gaussian copula (numpy draws: a stream of its own, independent of the planning samples)."""
    from scipy.special import ndtr

    uncertain = [p for p, spec in case.inputs.items() if not _is_fixed(spec)]
    ratios = set(case.ratio_inputs)
    base = [p for p in uncertain if p not in ratios]  # the D70 ratios last, each from a child stream of its
    z = rng.standard_normal((m, len(base)))  # tumour: a ratio's uncertainty moves no other input's truth
    if len(uncertain) > len(base):
        children = rng.spawn(len(case.tumors))
        names = [t.name for t in case.tumors]
        z = np.concatenate([z] + [children[names.index(p.split(".")[1])].standard_normal((m, 1))
                                  for p in uncertain[len(base):]], axis=1)
    if case.correlations:
        c = np.eye(len(uncertain))
        for a, b, rho in case.correlations:
            i, j = uncertain.index(a), uncertain.index(b)
            c[i, j] = c[j, i] = rho
        z = z @ np.linalg.cholesky(c).T
    u = np.clip(ndtr(z), 1e-12, 1 - 1e-12)
    out = {}
    for path, spec in case.inputs.items():
        out[path] = (np.asarray(spec.scipy().ppf(u[:, uncertain.index(path)]), dtype=np.float64) if path in uncertain
                     else np.full(m, float(spec.nominal)))
    return out


def _is_fixed(spec) -> bool:
    return type(spec).__name__ == "Fixed"


#: Delivered-versus-planned relations (domain reference §5), each with its source.
DELIVERED = {
    "lsf_planar_high": (0.075, 0.085, 0.053, "Young et al. (UMN); CVIR 2020: planar overestimates by 8.5 pp (SD 5.3) when >= 7.5 %"),
    "lsf_planar_low": (0.027, 0.04, "Young et al.; Bastiaannet: bias 2.7 pp, SD about 4 pp below 7.5 %"),
    "tn_factor": (1 / 1.26, 0.3, "Riveira-Martin et al. EJNMMI Res 2023 (MAA overestimates tumour dose by 26 %); Kafrouni 2019 (sigma_ln 0.3)"),
    "calibrator_sd": (0.05, "blind Y-90 assay survey: site dose calibrators, SD 5 % (80 % within +-10 %)"),
    "lung_mass": (0.82, 0.10, "Kao et al. 2014: measured lung mass 0.82 +- 0.10 kg against the 1 kg assumed"),
    "residual": (0.006, 1.0, "Hoang et al.: residual lognormal, median 0.6 %, heavy right tail"),
}


def truth_delivered(case: Case, m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The patient as treated, by the delivered-versus-planned relations of :data:`DELIVERED`."""
    x = truth_planning(case, m, rng)  # volumes: the case's own segmentation uncertainty
    lsf = case.shunt_fraction.nominal
    if lsf >= DELIVERED["lsf_planar_high"][0]:
        _, mu, sd, _ = DELIVERED["lsf_planar_high"]
    else:
        mu, sd, _ = DELIVERED["lsf_planar_low"]
    x["lung.shunt_fraction"] = np.clip(lsf - rng.normal(mu, sd, m), 0.0, 0.95)
    median, sigma, _ = DELIVERED["tn_factor"]
    for t in case.tumors:
        x[f"tumors.{t.name}.tn_ratio"] = t.tn_ratio.nominal * median * np.exp(sigma * rng.standard_normal(m))
    x["delivery.activity_factor"] = case.activity_factor.nominal * rng.normal(1.0, DELIVERED["calibrator_sd"][0], m)
    mass, msd, _ = DELIVERED["lung_mass"]
    if abs(case.lung_mass_kg.nominal - 1.0) < 1e-9:  # the 1 kg assumption: the measured lungs are lighter
        x["lung.mass_kg"] = np.clip(rng.normal(mass, msd, m), 0.4, None)
    med, cv, _ = DELIVERED["residual"]
    x["delivery.residual_fraction"] = np.clip(med * np.exp(math.sqrt(math.log1p(cv * cv)) * rng.standard_normal(m)), 0, 0.5)
    return x


#: The truth models, by name (add your own: ``truth(case, m, rng) -> {case path: values}``).
TRUTHS: dict[str, Callable[[Case, int, np.random.Generator], dict[str, np.ndarray]]] = {
    "delivered": truth_delivered,
    "planning": truth_planning,
}


def realised_doses(case: Case, quantities: tuple[str, ...], x: Mapping[str, np.ndarray], vial_at_treatment: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Doses (m, Q) in ``quantities`` order at realised inputs ``x`` (the plain-numpy reference model), and the
    physical samples (m,) (tumours inside the territory, a whole liver holding it)."""
    from .reference import reference_doses

    names = case.tumor_names
    d = reference_doses(
        vial_at_treatment * x["delivery.activity_factor"],
        x["liver.perfused_volume_ml"],
        np.stack([x[f"tumors.{t}.volume_ml"] for t in names], axis=-1) if names else np.zeros((len(x["lung.mass_kg"]), 0)),
        np.stack([x[f"tumors.{t}.tn_ratio"] for t in names], axis=-1) if names else np.zeros((len(x["lung.mass_kg"]), 0)),
        np.array([t.treated for t in case.tumors], dtype=bool),
        x["lung.shunt_fraction"], x["lung.mass_kg"], x["delivery.residual_fraction"],
        x.get("liver.whole_liver_volume_ml", np.nan), case.prior_lung_dose_gy,
        case.conventions.dose_constant_gy_kg_per_gbq, case.conventions.tissue_density_g_per_ml,
    )
    m = len(x["lung.mass_kg"])
    cols = []
    for q in quantities:
        if q.startswith("tumors."):
            cols.append(d["tumors"][..., names.index(q.split(".", 1)[1])])
        elif q.startswith("tumors_d70."):
            name = q.split(".", 1)[1]
            path = f"tumors.{name}.d70_ratio"  # realised when the truth draws it, else the measured ratio
            measured = next(t for t in case.tumors if t.name == name).d70_ratio.nominal
            cols.append(d["tumors"][..., names.index(name)] * np.asarray(x.get(path, measured)))
        else:
            cols.append(np.broadcast_to(d[q], (m,)))
    treated = sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if t.treated), np.zeros(m))
    ok = treated < x["liver.perfused_volume_ml"]
    if "liver.whole_liver_volume_ml" in x:  # the whole liver holds the territory and the untreated tumours
        untreated = sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if not t.treated), np.zeros(m))
        ok &= x["liver.whole_liver_volume_ml"] >= x["liver.perfused_volume_ml"] + untreated
    return np.stack(cols, axis=-1), ok


# -- the trial -----------------------------------------------------------------------------------------------


def policy_context(case: Case, samples: int, seed: int) -> PolicyContext:
    from .engine import Model
    from .outcomes import active_rules, compile_rules
    from .planner import decision_space

    ar = active_rules(case, strict=True)
    model = Model.from_case(case)
    rt = compile_rules(ar, model.quantities)
    space = decision_space(case, ar.scenario.window)
    hours = tuple(float(t.hours) for t in space.times)
    pref = [t.hours for t in space.times if t.preferred]
    return PolicyContext(case, model.quantities, model.nominal_factors(), model.offsets, rt, tuple(space.vials_gbq),
                         hours, float(pref[0] if pref else hours[0]), samples, seed)


def judge(case: Case, ctx: PolicyContext, decision: Decision, x: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(P(every primary target met), P(any limit broken)) of a decision on realised inputs ``x``."""
    if not decision.treated:
        return 0.0, 0.0
    s = decision.vial_gbq * physics.decay_factor(decision.hours_after_calibration, case.conventions.half_life_h)
    d, ok = realised_doses(case, ctx.quantities, x, s)
    d = d[ok]
    if not len(d):
        return float("nan"), float("nan")
    sat = ctx.rules.margins(d) <= 0
    met = np.all(sat[:, ctx.rules.is_primary], axis=1) if ctx.rules.is_primary.any() else np.zeros(len(d), bool)
    broken = ~np.all(sat[:, ctx.rules.is_limit], axis=1) if ctx.rules.is_limit.any() else np.zeros(len(d), bool)
    return float(met.mean()), float(broken.mean())


def run_trial(cases: list[tuple[str, Case]], *, policies: Mapping[str, Callable] | None = None,
              truths: Mapping[str, Callable] | None = None, samples: int = 20_000, truth_samples: int = 400,
              seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Every policy on every patient, judged under every truth model. Returns per-patient rows and, per policy
    and truth, the cohort's mean P(every target met) and P(a limit broken) with their standard errors (the SE
    over patients of the per-patient probabilities, which holds both the patients' spread and the truth
    draws' Monte Carlo error)."""
    policies = dict(POLICIES if policies is None else policies)
    truths = dict(TRUTHS if truths is None else truths)
    rows = []
    excluded = []
    for k, (pid, case) in enumerate(cases):
        if case.multi:
            raise InputError(f"{case.path}: injections: the trial takes cases of one injection")
        try:
            ctx = policy_context(case, samples, seed)
            decisions = {name: p(case, ctx) for name, p in policies.items()}
        except InputError as e:  # a patient no policy can be judged on (e.g. too many unphysical samples)
            excluded.append({"patient_id": pid, "reason": str(e)})
            if progress is not None:
                progress(k + 1)
            continue
        for tname, truth in truths.items():
            x = truth(case, truth_samples, np.random.default_rng([seed, 7, k, zlib.crc32(tname.encode()), 1]))
            for pname, dec in decisions.items():
                met, broken = judge(case, ctx, dec, x)
                rows.append({"patient_id": pid, "truth": tname, "policy": pname, "treated": dec.treated,
                             "vial_gbq": dec.vial_gbq, "hours_after_calibration": dec.hours_after_calibration,
                             "p_targets_met": met, "p_limit_broken": broken, "note": dec.note})
        if progress is not None:
            progress(k + 1)
    summary = {}
    for tname in truths:
        for pname in policies:
            sel = [r for r in rows if r["truth"] == tname and r["policy"] == pname]
            met = np.array([r["p_targets_met"] for r in sel], dtype=float)
            brk = np.array([r["p_limit_broken"] for r in sel], dtype=float)
            met, brk = met[np.isfinite(met)], brk[np.isfinite(brk)]
            n = len(met)
            summary.setdefault(tname, {})[pname] = {
                "patients": n,
                "targets_met": float(met.mean()) if n else None,
                "targets_met_se": float(met.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
                "limit_broken": float(brk.mean()) if n else None,
                "limit_broken_se": float(brk.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
                "treated": float(np.mean([r["treated"] for r in sel])) if sel else None,
            }
    return {"rows": rows, "summary": summary, "samples": samples, "truth_samples": truth_samples, "seed": seed,
            "policies": list(policies), "truths": list(truths), "excluded": excluded}


def trial_text(result: Mapping[str, Any]) -> str:
    from .textout import table

    lines = []
    for tname, per in result["summary"].items():
        lines.append(f"truth model: {tname}")
        def pm(v, key):
            if v[key] is None:
                return "n/a"
            se = v[f"{key}_se"]
            return f"{v[key]:.3f}" + ("" if se is None else f" ± {se:.3f}")

        lines.append(table([(p, "n/a" if v["treated"] is None else f"{v['treated']:.3f}", pm(v, "targets_met"),
                             pm(v, "limit_broken"), v["patients"]) for p, v in per.items()],
                           header=("policy", "treated", "every target met (± SE)", "a limit broken (± SE)", "patients"),
                           align="lrrrr"))
        lines.append("")
    if result.get("excluded"):
        lines.append(f"{len(result['excluded'])} patients excluded from every policy (first: {result['excluded'][0]['reason']})")
    lines.append(f"{result['samples']} planning samples per patient, {result['truth_samples']} truth draws per patient, "
                 f"seed {result['seed']}. Thresholds were validated on planned doses: see the y90opt.virtual_trial module's docstring "
                 "for what this can and cannot show.")
    return "\n".join(lines)
