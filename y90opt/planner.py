"""The planner: choose the vial and the treatment time under chance constraints (``y90opt plan``).

Every dose is affine in the decayed vial activity s = A_cal · 2^(−Δt/T½): dose = s·F + b per sample. So for
each sample, each rule holds on an interval of s:

* a target (dose ≥ t) holds iff s ≥ (t − b)/F; all primary targets hold iff s ≥ s_lo = max over targets;
* a limit (dose ≤ t) holds iff s ≤ (t − b)/F = s_hi.

Sorting s_lo and each s_hi once gives P(success) and P(limit kept) at *any* s by binary search: the exact
probabilities (for the sample set) of every candidate, with the same samples for all (common random
numbers). This :class:`Evaluator` is the ground truth for the exact enumeration and for the Optuna search.

Semantics (design document, "Planning semantics"): maximise P(all primary targets met) subject to
P(limit kept) ≥ 1 − risk for every limit separately; candidates within ``tie_tolerance`` of the best are
tied, and ties go to the smaller vial, then the earlier time. Nothing feasible → ``feasible = false``, the
binding limit and the least risky candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
from typing import Any

import numpy as np

from . import engine, physics
from .case import Case, CaseError
from .chance import limit_margins
from .errors import InputError
from .outcomes import RuleTable, active_rules, compile_rules, rule_rows
from .plan_summary import TOP, plan_text, summarize_plan
from .simulation import sort_rows, sorted_quantiles

#: Points of the P-versus-activity curve stored with every plan.
CURVE_POINTS = 241

@dataclasses.dataclass(frozen=True)
class CandidateTime:
    hours: float  # after the calibration of the vial this candidate uses
    local: str  # ISO datetime of the treatment at the site
    label: str  # e.g. "Wed 2026-12-09 12:00"
    preferred: bool = False  # on one of the scenario's preferred days (ties go to these first)
    calibration: str = ""  # ISO datetime of the vial's calibration ("" = the case's [vials].calibration)


@dataclasses.dataclass(frozen=True)
class DecisionSpace:
    vials_gbq: tuple[float, ...]
    times: tuple[CandidateTime, ...]
    vial_source: str
    time_source: str
    excluded: tuple[tuple[str, str], ...] = ()  # (time label, why the clinic calendar left it out)
    mode: str = "time"  # "time": candidate treatment times; "calibration": a fixed treatment, candidate vial weeks
    calendar: str = ""  # the calendar, in words

    @property
    def hours(self) -> np.ndarray:
        return np.array([t.hours for t in self.times])

    @property
    def size(self) -> int:
        return len(self.vials_gbq) * len(self.times)


def _label(when: _dt.datetime) -> str:
    return when.strftime("%a %Y-%m-%d %H:%M %Z").strip()


def _preferred(window, hours: float) -> bool:
    from .scenarios import DAY_TOLERANCE_H

    return any(abs(hours - p) <= DAY_TOLERANCE_H for p in window.preferred_h)


def candidate_time(case: Case, hours: float, window=None, calibration: _dt.datetime | None = None) -> CandidateTime:
    cal = case.calibration if calibration is None else calibration
    when = (cal + _dt.timedelta(hours=float(hours))).astimezone(case.site_zone())
    label = _label(when)
    if calibration is not None:
        label = f"vial calibrated {_label(cal.astimezone(case.site_zone()))}"
    return CandidateTime(float(hours), when.isoformat(), label,
                         preferred=window is not None and _preferred(window, float(hours)),
                         calibration=cal.isoformat() if calibration is not None else "")


def default_times(case: Case, window) -> tuple[CandidateTime, ...]:
    """Each treatment day of the clinic (default Monday to Friday, in the site's time zone) whose date lies
    in the scenario window, not a holiday, at the site's procedure time (or the calibration's clock time),
    kept only where it lies within the window's day tolerance (:data:`y90opt.scenarios.DAY_TOLERANCE_H`: the
    window's edges name days, not clock times) and not before the vial can be used.

    Without ``site_timezone`` the calibration's UTC offset is the site's clock: give the IANA zone for
    daylight-saving changes between calibration and treatment."""
    from .clinic import Calendar
    from .scenarios import DAY_TOLERANCE_H

    cal = dataclasses.replace(Calendar.from_case(case), clinic_hours=None)  # default times sit at the procedure clock
    zone = cal.zone
    first = (case.calibration + _dt.timedelta(hours=window.start_h)).astimezone(zone).date()
    last = (case.calibration + _dt.timedelta(hours=window.end_h)).astimezone(zone).date()
    out = []
    day = first
    while day <= last:
        when = _dt.datetime.combine(day, cal.clock).replace(tzinfo=zone)
        h = physics.hours_between(case.calibration, when)
        if h >= 0 and window.contains(h, DAY_TOLERANCE_H) and cal.excludes(when) is None:
            out.append(CandidateTime(h, when.isoformat(), _label(when), preferred=_preferred(window, h)))
        day += _dt.timedelta(days=1)
    return tuple(out)


def _expand(r: tuple[float, float, float]) -> tuple[float, ...]:
    lo, hi, step = r
    k = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return tuple(float(x) for x in np.round(lo + step * np.arange(k), 10))


#: Calibration weeks a fixed-date plan considers by default: this week's vial and last week's.
CALIBRATION_WEEKS = 2


def decision_space(case: Case, window, vial_range=None, hours_range=None, *, any_time: bool = False,
                   fixed_treatment: bool = False, calibration_weeks: int = CALIBRATION_WEEKS) -> DecisionSpace:
    """The candidates: vials (the case's catalogue, or a range) × treatment times.

    Times are the clinic's treatment days in the scenario window by default, else the case's list or a
    command-line range, each kept only where the clinic calendar admits it (:mod:`y90opt.clinic`) unless
    ``any_time``. With ``fixed_treatment`` the treatment is ``[plan].treatment`` and the candidates are the
    vials calibrated that week and the ``calibration_weeks - 1`` weeks before (a week older, a week more
    decayed: a larger vial from last week is a candidate as much as this week's)."""
    from .clinic import Calendar

    if vial_range is not None:
        vials, vsrc = _expand(vial_range), "range (command line)"
    else:
        vials, vsrc = case.vials_gbq.values, {"default": "standard catalogue", "list": "case list", "range": "case range",
                                              "custom": "custom activities (0.5 GBq steps; unconfirmed)"}[case.vials_gbq.spec]
    calendar = Calendar.from_case(case)
    if fixed_treatment:
        if case.plan.treatment is None:
            raise CaseError(case.path, "plan.treatment", "missing (the fixed treatment date of --fixed-date)")
        if calibration_weeks < 1 or calibration_weeks > 8:
            raise InputError(f"--calibration-weeks: expected 1 to 8, got {calibration_weeks}")
        times, excluded = [], []
        for k in range(calibration_weeks):
            cal = case.calibration - _dt.timedelta(days=7 * k)
            c = candidate_time(case, physics.hours_between(cal, case.plan.treatment), window, calibration=cal)
            why = Calendar.from_case(case, cal).excludes(case.plan.treatment)
            if why and why.startswith(("before", "after the vial")):
                excluded.append((c.label, why))
            else:
                times.append(c)
        if not times:
            raise CaseError(case.path, "plan.treatment", "the fixed treatment is before any candidate vial can be used")
        return DecisionSpace(tuple(vials), tuple(times), vsrc, f"fixed treatment, vials of {calibration_weeks} calibration weeks",
                             tuple(excluded), "calibration", calendar.describe())
    if hours_range is not None:
        raw, tsrc, field = _expand(hours_range), "range (command line)", "--hours-range"
    elif case.plan.hours_after_calibration is not None:
        raw, tsrc, field = (case.plan.hours_after_calibration.values, f"case {case.plan.hours_after_calibration.spec}",
                            "plan.hours_after_calibration")
    else:
        times = default_times(case, window)
        if not times:
            raise CaseError(case.path, "plan.hours_after_calibration",
                            f"no candidate treatment time: the scenario window holds no treatment day ({calendar.describe()})")
        return DecisionSpace(tuple(vials), times, vsrc, "treatment days in the scenario window", (), "time",
                             calendar.describe())
    times, excluded = [], []
    for h in raw:
        c = candidate_time(case, h, window)
        why = calendar.excludes(_dt.datetime.fromisoformat(c.local))
        if why is not None and (not any_time or why.startswith(("before", "after the vial"))):
            excluded.append((c.label, why))
        else:
            times.append(c)
    if not times:
        reasons = sorted({why for _, why in excluded})
        msg = f"no candidate treatment time is in the clinic calendar ({calendar.describe()}): " + "; ".join(reasons)
        if field.startswith("--"):
            raise InputError(f"{case.path}: {field}: {msg}")
        raise CaseError(case.path, field, msg)
    return DecisionSpace(tuple(vials), tuple(times), vsrc, tsrc + ("" if not any_time else ", any time"),
                         tuple(excluded), "time", calendar.describe())


def _query(s, dtype, side: str) -> np.ndarray:
    """The activities ``s`` in the sorted rows' dtype, rounded so that counts stay exact: for side="right"
    (#row ≤ s) the largest value ≤ s, for side="left" (#row < s) the smallest value ≥ s. A float32 row value r
    satisfies r ≤ s exactly when r ≤ that value, so float32 rows answer float64 questions without widening."""
    s = np.asarray(s, dtype=np.float64)
    dtype = np.dtype(dtype)
    if side == "right":  # +inf in a row means "never" (and pads samples that do not count): no count reaches it
        s = np.minimum(s, np.finfo(dtype).max)
    if dtype == np.float64:
        return s
    with np.errstate(over="ignore"):
        c = s.astype(dtype)
    back = c.astype(np.float64)
    if side == "right":
        return np.where(back > s, np.nextafter(c, dtype.type(-np.inf)), c)
    return np.where(back < s, np.nextafter(c, dtype.type(np.inf)), c)


def _count(row, s, side: str) -> np.ndarray:
    """#{row ≤ s} (side="right") or #{row < s} (side="left") for a sorted numpy or JAX (device) row."""
    q = _query(s, row.dtype, side)
    if isinstance(row, np.ndarray):
        return np.searchsorted(row, q, side=side)
    import jax.numpy as jnp

    return np.asarray(jnp.searchsorted(row, jnp.asarray(q), side=side))


@dataclasses.dataclass
class Evaluator:
    """Exact probabilities at any decayed vial activity s, from one set of samples.

    The rows are sorted numpy arrays, or JAX arrays left on the device that sorted them (a GPU): the
    probabilities are then counted there and only they come back. Samples that do not count (unphysical, or
    the padding of the last chunk) sit at the end of every row as +inf, which no count reaches.

    Attributes:
        s_lo: sorted per-sample activity from which every primary target holds (inf: never).
        s_lo_joint, s_joint: sorted ends of the per-sample interval [s_lo, min over limits of s_hi] where it is
            non-empty (inf where empty), for P(success and safe).
        s_hi: (L, ·) sorted per-sample activity up to which each limit holds.
        n: valid samples (the denominator).
    """

    s_lo: Any
    s_lo_joint: Any
    s_hi: Any
    s_joint: Any
    n: int
    limit_labels: tuple[str, ...]
    rule_crit: Any = None  # (R, ·) sorted critical activity of every rule (targets and limits)
    rule_is_target: np.ndarray | None = None  # (R,)

    def p_rules(self, s) -> np.ndarray:
        """(..., R) probability that each rule (primary, secondary target or limit) is satisfied at s."""
        s = np.asarray(s, dtype=np.float64)
        out = []
        for row, is_target in zip(self.rule_crit, self.rule_is_target, strict=True):
            if is_target:
                out.append(_count(row, s, "right") / self.n)
            else:
                out.append(1.0 - _count(row, s, "left") / self.n)
        return np.stack(out, axis=-1) if out else np.zeros(s.shape + (0,))

    def p_success(self, s) -> np.ndarray:
        return _count(self.s_lo, s, "right") / self.n

    def p_limits(self, s) -> np.ndarray:
        """(..., L) probability that each limit is kept at s."""
        s = np.asarray(s, dtype=np.float64)
        if not len(self.limit_labels):
            return np.ones(s.shape + (0,))
        return np.stack([1.0 - _count(row, s, "left") / self.n for row in self.s_hi], axis=-1)

    def p_joint(self, s) -> np.ndarray:
        """P(all primary targets met and all limits kept) at s: s_lo ≤ s ≤ min s_hi."""
        return (_count(self.s_lo_joint, s, "right") - _count(self.s_joint, s, "left")) / self.n


def _critical_core(f, valid, in_range, b, cols, thr, signs, primary, is_limit):
    """Per sample, from dose = s·F + b: every rule's critical activity (a target holds for s ≥ crit, a limit for
    s ≤ crit; F = 0 gives ±inf), s_lo (all primary targets hold for s ≥ s_lo) and, where the interval
    [s_lo, min over limits] is non-empty, its two ends (else inf), for P(success and safe).

    Returns the rows (3 + R, chunk): s_lo, s_lo_joint, s_joint, then one row per rule, +inf for samples that do
    not count; rows, not columns, so chunks concatenate into contiguous rows that sort without a transpose.
    Then the number of samples that count, and of unphysical ones."""
    import jax.numpy as jnp

    ok = valid & in_range
    crit = (thr - b[cols]) / f[:, cols]
    # 0/0: F = 0 and the dose b sits on the threshold, so the rule holds at every s
    crit = jnp.where(jnp.isnan(crit), jnp.where(signs < 0, -jnp.inf, jnp.inf), crit)
    s_lo = jnp.max(jnp.where(primary, crit, -jnp.inf), axis=1, initial=0.0)
    s_min = jnp.min(jnp.where(is_limit, crit, jnp.inf), axis=1, initial=jnp.inf)
    nonempty = s_lo <= s_min
    joint = jnp.stack([s_lo, jnp.where(nonempty, s_lo, jnp.inf), jnp.where(nonempty, s_min, jnp.inf)])
    rows = jnp.where(ok, jnp.concatenate([joint, crit.T]), jnp.inf)
    return rows, jnp.sum(ok), jnp.sum(in_range & ~valid)


def _critical_reducer_with_factors(f, valid, in_range, b, cols, thr, signs, primary, is_limit):
    import jax.numpy as jnp

    rows = _critical_core(f, valid, in_range, b, cols, thr, signs, primary, is_limit)
    return (*rows, jnp.where(valid & in_range, f.T, jnp.inf))


def build_evaluator(model, rt: RuleTable, n: int, seed: int, chunk: int, dtype: str, keep_factors: bool = True,
                    progress=None, on_device: bool | None = None):
    """Sample once and build the :class:`Evaluator`; with ``keep_factors`` also return every dose factor,
    sorted per quantity, shape (Q, n) with the valid samples first (for exact dose quantiles: see
    :func:`~y90opt.simulation.sorted_quantiles` with ``n=ev.n``). Memory: O(n · (rules + Q)) values of the
    run's dtype.

    ``on_device`` (default: when JAX's backend is not the CPU) sorts on the device and leaves the rows there;
    otherwise they come back to the host and numpy sorts them, one row per core. The counts are the same."""
    if on_device is None:
        on_device = engine.on_accelerator()
    b = model.offsets
    args = (b, rt.cols, rt.thresholds, rt.signs, rt.is_primary, rt.is_limit)
    reducer = _critical_reducer_with_factors if keep_factors else _critical_core
    chunk = max(1, min(chunk or engine.default_chunk(), n))  # as run_chunks chunks the run
    parts = engine.run_chunks(model, n, seed, reducer, args, chunk, dtype, progress)
    if on_device:
        import jax.numpy as jnp

        # every chunk dispatched before any is read back; rows sorted and left on the device
        outs = list(parts)
        n_valid = sum(int(o[1]) for o in outs)
        n_invalid = sum(int(o[2]) for o in outs)

        def gather(k):  # the chunks' padding lies past column n
            return jnp.sort(jnp.concatenate([o[k] for o in outs], axis=1)[:, :n], axis=1)

        engine.check_invalid(n_invalid, n, model.case.path, model=model, seed=seed)
        rows = gather(0)
        factors = gather(3) if keep_factors else None
    else:
        # each chunk copied into place as it arrives (run_chunks keeps the next ones computing), so the peak is
        # one copy of the rows; sorted in place in the run's dtype (float32: faster, half the memory), one row
        # per core; queries are rounded to match
        rows = factors = None
        n_valid = n_invalid = 0
        for (a, size), part in zip(engine.chunks(n, chunk), parts, strict=True):
            r = np.asarray(part[0])
            if rows is None:
                rows = np.empty((r.shape[0], n), r.dtype)
                if keep_factors:
                    factors = np.empty((part[3].shape[0], n), r.dtype)
            rows[:, a : a + size] = r[:, :size]
            if keep_factors:
                factors[:, a : a + size] = np.asarray(part[3])[:, :size]
            n_valid += int(part[1])
            n_invalid += int(part[2])
        engine.check_invalid(n_invalid, n, model.case.path, model=model, seed=seed)
        sort_rows(rows)
        if keep_factors:
            sort_rows(factors)
    crit = rows[3:]
    lim = np.flatnonzero(rt.is_limit)
    contiguous = len(lim) == 0 or lim[-1] - lim[0] + 1 == len(lim)
    ev = Evaluator(
        s_lo=rows[0],
        s_lo_joint=rows[1],
        s_hi=crit[lim[0] : lim[-1] + 1] if len(lim) and contiguous else crit[lim],  # a view when it can be
        s_joint=rows[2],
        n=n_valid,
        limit_labels=tuple(lab for lab, k in zip(rt.labels, rt.kinds, strict=True) if k == "limit"),
        rule_crit=crit,
        rule_is_target=rt.signs < 0,
    )
    return ev, factors, n_invalid


#: The planning rule's order among tied candidates, in words (printed with every plan).
TIE_RULE = ("candidates within the tie tolerance of the best P(all primary targets) are tied; ties go to the "
            "scenario's preferred days first (e.g. week 1 Wednesday), then the smaller vial, then the earlier time")


def choose(p_success: np.ndarray, p_limits: np.ndarray, vials, hours, risk: float, tol: float,
           preferred=None) -> dict[str, Any]:
    """The planning rule on a (V, T) grid. Returns indices of the recommendation and the reasons.

    ``preferred`` (T,) marks the times on the scenario's preferred days; ties go to them first
    (:data:`TIE_RULE`)."""
    pref = np.zeros(len(hours), bool) if preferred is None else np.asarray(preferred, bool)
    feasible = np.all(limit_margins(p_limits, risk) <= 0, axis=-1) if p_limits.shape[-1] else np.ones(p_success.shape, bool)
    if feasible.any():
        best = p_success[feasible].max()
        tied = feasible & (p_success >= best - tol)
        order = sorted(zip(*np.nonzero(tied), strict=True), key=lambda ij: (not pref[ij[1]], vials[ij[0]], hours[ij[1]]))
        i, j = order[0]
        return {"feasible": True, "index": (int(i), int(j)), "feasible_mask": feasible, "best_p": float(best)}
    # least risky: maximise the smallest P(limit kept); ties to the smaller vial, earlier time
    worst = p_limits.min(axis=-1)
    top = worst.max()
    cand = sorted(zip(*np.nonzero(worst >= top - 1e-12), strict=True), key=lambda ij: (vials[ij[0]], hours[ij[1]]))
    i, j = cand[0]
    return {"feasible": False, "index": (int(i), int(j)), "feasible_mask": feasible, "best_p": float("nan")}


@dataclasses.dataclass
class PlanResult:
    """A plan: ``summary`` (``plan --json``) and ``dataset`` (``plan.nc``). ``data`` is the Dataset, or the
    :class:`~y90opt.results.Fields` it is built from the first time ``dataset`` is read (a plan whose summary
    alone is wanted never builds it; two threads reading it first may each build one, equal)."""

    data: Any
    summary: dict[str, Any]

    @property
    def dataset(self):
        from .results import Fields

        if isinstance(self.data, Fields):
            self.data = self.data.dataset()
        return self.data

    @dataset.setter
    def dataset(self, value) -> None:
        self.data = value

    def text(self, top: int = TOP) -> str:
        """The readable answer (status, order, doses at the choice, alternatives), tables cut to ``top`` rows."""
        return plan_text(self.summary, top)

    def recommended_case(self, case: Case) -> Case:
        """The case with its ``[plan]`` decision set to the recommendation (or the least risky candidate):
        the vial, its calibration (another week's in a fixed-date plan) and the treatment time."""
        a = self.data.attrs  # the Dataset or its Fields: either reads the same
        h = float(a["recommended_hours_after_calibration"])
        j = int(a["recommended_index_time"])
        cal = case.calibration
        if "time_calibration" in self.data:
            cal = _dt.datetime.fromisoformat(str(self.data["time_calibration"].values[j]))
        treatment = cal + _dt.timedelta(hours=h)
        plan = dataclasses.replace(case.plan, vial_gbq=float(a["recommended_vial_gbq"]), treatment=treatment)
        return dataclasses.replace(case, plan=plan, calibration=cal)


#: Peak memory of :func:`build_evaluator` per value it keeps, in copies of those values, with a margin. On the
#: host each chunk is copied into place as it arrives and sorted in place: 1.2 copies measured (the slope of
#: the peak between 1.6·10⁷ and 3.2·10⁷ samples on the CPU). On a device the chunks, their concatenation and
#: the sorted copy coexist: about 3.
PEAK_COPIES = {"host": 1.5, "device": 3.5}


def check_memory(case: Case, n: int, rows: int, dtype: str, on_device: bool = False, factor_rows: int = 0,
                 factor_limit: int = 0) -> None:
    """Refuse, before sampling, a run whose kept values cannot fit in the memory left, rather than let the
    system kill the process minutes later. The exact planner keeps ``rows`` values per sample, and
    ``factor_rows`` more in runs of at most ``factor_limit`` samples (the factors of exact quantiles)."""
    copies = PEAK_COPIES["device" if on_device else "host"]
    size = np.dtype(dtype).itemsize

    def per_sample(m: int) -> float:
        return copies * (rows + (factor_rows if m <= factor_limit else 0)) * size

    free = engine.available_memory_bytes()
    if free is None or n * per_sample(n) <= free:
        return
    fit = int(free // per_sample(factor_limit + 1))  # the largest count above the factor limit that fits
    if fit <= factor_limit:  # none does: the largest count at or below it, factors kept
        fit = min(int(free // per_sample(factor_limit)), factor_limit)
    raise InputError(
        f"{case.path}: --samples: the exact planner keeps {rows + (factor_rows if n <= factor_limit else 0)} "
        f"values per sample, about {n * per_sample(n) / 2**30:.3g} GiB at its peak for {n} samples, and "
        f"{free / 2**30:.3g} GiB is free: use at most {fit} samples (simulate streams any number)"
    )


def plan_case(
    case: Case,
    n: int = 100_000,
    seed: int = 0,
    chunk: int | None = None,
    dtype: str = "float32",
    risk: float | None = None,
    optuna_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    vial_range=None,
    hours_range=None,
    progress: bool = False,
    any_time: bool = False,
    fixed_treatment: bool = False,
    calibration_weeks: int = CALIBRATION_WEEKS,
) -> PlanResult:
    """Choose vial and treatment time for ``case`` (exact enumeration, cross-checked by Optuna).

    ``any_time`` keeps candidate times the clinic calendar would leave out; ``fixed_treatment`` keeps the
    treatment at ``[plan].treatment`` and chooses the vial among ``calibration_weeks`` calibration weeks
    (:func:`decision_space`)."""
    engine.enable_x64_if(dtype)
    if case.multi:
        raise InputError(f"{case.path}: injections: a case of several injections is planned jointly "
                         "(y90opt.plan, or y90opt.joint_planner.plan_joint_case)")
    if risk is not None and not 0 < risk < 1:
        raise InputError(f"--risk: must be in (0, 1), got {risk}")
    risk = case.plan.risk if risk is None else risk
    ar = active_rules(case, strict=True)
    model = engine.Model.from_case(case)
    rt = compile_rules(ar, model.quantities)
    space = decision_space(case, ar.scenario.window, vial_range, hours_range, any_time=any_time,
                           fixed_treatment=fixed_treatment, calibration_weeks=calibration_weeks)
    from . import simulation  # read at call time: the limit is a module setting

    chunk = chunk or engine.default_chunk()
    keep = n <= simulation.EXACT_QUANTILE_LIMIT
    trials = optuna_trials if optuna_trials is not None else min(200, max(1, space.size // 2))
    held = contextlib.nullcontext()
    if trials > 0 and storage is not None:
        from .optimise import reserved_storage

        held = reserved_storage(storage)  # checked and held before any sampling
    with held:
        return _plan(case, ar, model, rt, space, n, seed, chunk, dtype, risk, trials, storage, study_name,
                     vial_range, hours_range, progress, any_time, fixed_treatment, calibration_weeks, keep,
                     simulation.EXACT_QUANTILE_LIMIT)


def _preload(*modules: str) -> None:
    """Import ``modules`` in a background thread (a cold import of Optuna takes 0.3-0.5 s that the sampling can
    hide). The import lock makes a later import in the main thread wait for it, never repeat it."""
    import importlib
    import sys
    import threading

    todo = [m for m in modules if m not in sys.modules]
    if todo:
        threading.Thread(target=lambda: [importlib.import_module(m) for m in todo], daemon=True,
                         name="y90opt-preload").start()


def _plan(case, ar, model, rt, space, n, seed, chunk, dtype, risk, trials, storage, study_name, vial_range,
          hours_range, progress, any_time, fixed_treatment, calibration_weeks, keep, factor_limit) -> PlanResult:
    on_device = engine.on_accelerator()
    check_memory(case, n, 3 + len(rt.labels), dtype, on_device=on_device, factor_rows=len(model.quantities),
                 factor_limit=factor_limit)
    if trials > 0:  # Optuna loads while the samples are drawn (JAX releases the interpreter meanwhile)
        _preload("optuna")
    ev, factors, n_invalid = build_evaluator(model, rt, n, seed, chunk, dtype, keep_factors=keep, on_device=on_device)
    factor_q = _factor_quantiles(model, rt, factors, ev.n, n, seed, chunk, dtype)
    result = evaluate_space(case, space, ev, risk)
    optuna_info = None
    if trials > 0:
        from .optimise import optuna_search

        optuna_info = optuna_search(
            ev, space, risk, case.plan.tie_tolerance, trials=trials, seed=seed, storage=storage,
            study_name=study_name, exact=result["choice"], progress=progress,
            half_life_h=case.conventions.half_life_h,
        )
    ds = plan_fields(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid, optuna_info)
    ds.attrs["rules_judged"] = json.dumps(rule_rows(ar))
    ds.attrs["acceptable_success"] = case.plan.acceptable_success
    ds.attrs["advisories"] = json.dumps(_advisories_at(case, model, ar, space, result))
    ds.attrs["reproduce"] = reproduce_command(
        case, n=n, seed=seed, dtype=dtype, risk=risk, optuna_trials=trials, storage=storage, study_name=study_name,
        vial_range=vial_range, hours_range=hours_range, any_time=any_time, fixed_treatment=fixed_treatment,
        calibration_weeks=calibration_weeks)
    return PlanResult(ds, summarize_plan(ds))


def reproduce_command(case: Case, *, n: int, seed: int, dtype: str, risk: float, optuna_trials: int,
                      storage=None, study_name=None, vial_range=None, hours_range=None, any_time=False,
                      fixed_treatment=False, calibration_weeks=CALIBRATION_WEEKS) -> str:
    """The complete ``y90opt plan`` command line that gives these results again (every flag that matters)."""
    import shlex

    def rng(r) -> str:
        return ":".join(f"{x:g}" for x in r)

    parts = ["y90opt", "plan", case.path, "--samples", str(n), "--seed", str(seed), "--dtype", dtype,
             "--risk", f"{risk:g}", "--acceptable-success", f"{case.plan.acceptable_success:g}",
             "--optuna-trials", str(optuna_trials)]
    if vial_range is not None:
        parts += ["--vial-range", rng(vial_range)]
    if hours_range is not None:
        parts += ["--hours-range", rng(hours_range)]
    if any_time:
        parts.append("--any-time")
    if fixed_treatment:
        parts += ["--fixed-date", "--calibration-weeks", str(calibration_weeks)]
    if storage is not None:
        parts += ["--storage", str(storage)]
    if study_name is not None:
        parts += ["--study-name", str(study_name)]
    return " ".join(shlex.quote(p) for p in parts)


def _factor_quantiles(model, rt, factors, n_valid, n, seed, chunk, dtype) -> dict[str, Any]:
    """p05/p50/p95 of the dose factors: exact from the kept factors, else from streaming histograms (a second
    pass over the same samples; memory independent of n). Doses at s are s·q + b (s > 0)."""
    if factors is not None:
        q = sorted_quantiles(factors, (0.05, 0.5, 0.95), n=n_valid) if n_valid else None
        return {"q": q, "method": "exact (all samples)", "rel_error": 0.0}
    from .simulation import _streaming_stats

    stats, _ = _streaming_stats(model, n, seed, 1.0, np.zeros(len(model.quantities)), rt, chunk, dtype, None)
    return {"q": stats["quantiles"], "method": stats["quantile_method"], "rel_error": stats["quantile_rel_error"]}


def _advisories_at(case, model, ar, space, result) -> list[dict[str, str]]:
    """Advisories at the recommended (or least risky) candidate, at the nominal inputs."""
    from .outcomes import nominal_advisories

    i, j = result["choice"]["index"]
    h = space.times[j].hours
    s = result["s"][i, j]
    f = dict(zip(model.quantities, model.nominal_factors(), strict=True))
    nominal = {
        "activity_gbq": {"lung": s * f["lung_activity"]},
        "hours_after_calibration": h,
        "activity_per_sphere_bq": physics.activity_per_sphere_bq(h, case.conventions),
    }
    return nominal_advisories(case, nominal, ar)  # the rules the plan was judged by, not read again


def evaluate_space(case, space: DecisionSpace, ev: Evaluator, risk: float) -> dict[str, Any]:
    """Exact P(targets), P(each limit), P(joint) and the planning rule's choice on every candidate."""
    vials = np.asarray(space.vials_gbq)
    hours = space.hours
    s = vials[:, None] * physics.decay_factor(hours[None, :], case.conventions.half_life_h)
    ps = ev.p_success(s)
    pl = ev.p_limits(s)
    pj = ev.p_joint(s)
    ch = choose(ps, pl, vials, hours, risk, case.plan.tie_tolerance, [t.preferred for t in space.times])
    return {"s": s, "p_success": ps, "p_limits": pl, "p_joint": pj, "choice": ch}


def plan_dataset(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid, optuna_info):
    """The plan's Dataset (:func:`plan_fields`, built)."""
    return plan_fields(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid,
                       optuna_info).dataset()


def plan_fields(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid, optuna_info):
    """The plan's variables, coordinates and attributes (:class:`~y90opt.results.Fields`)."""
    from .results import Fields, provenance

    vials = np.asarray(space.vials_gbq)
    hours = space.hours
    s = result["s"]
    qs = factor_q["q"]
    dose_q = {}
    if qs is not None:
        for k, name in enumerate(("p05", "p50", "p95")):
            dose_q[f"dose_{name}"] = (("vial", "time", "quantity"), s[..., None] * qs[k] + model.offsets)
    p_rules = ev.p_rules(s) if ev.rule_crit is not None else None
    lo = max(min(float(s.min()) * 0.5, 1e-3), 1e-6)
    hi = float(s.max()) * 1.5
    grid = np.geomspace(lo, hi, CURVE_POINTS)
    ch = result["choice"]
    i, j = ch["index"]
    dv: dict[str, tuple] = {
        "vial_at_treatment": (("vial", "time"), s),
        "p_success": (("vial", "time"), result["p_success"]),
        "p_limit": (("vial", "time", "limit"), result["p_limits"]),
        "p_joint": (("vial", "time"), result["p_joint"]),
        "feasible": (("vial", "time"), ch["feasible_mask"].astype(np.int8)),
        "curve_p_success": (("activity",), ev.p_success(grid)),
        "curve_p_limit": (("activity", "limit"), ev.p_limits(grid)),
        "nominal_factor": (("quantity",), model.nominal_factors()),
        "quantity_offset": (("quantity",), model.offsets),
        **dose_q,
    }
    if p_rules is not None:
        dv["p_rule"] = (("vial", "time", "rule"), p_rules)
    coords = {
        "vial": ("vial", vials, {"units": "GBq", "long_name": "vial activity at calibration"}),
        "time": ("time", np.arange(len(hours)), {"long_name": "candidate treatment time index"}),
        "hours_after_calibration": ("time", hours, {"units": "h"}),
        "time_local": ("time", np.array([t.local for t in space.times], dtype=object)),
        "time_label": ("time", np.array([t.label for t in space.times], dtype=object)),
        "time_preferred": ("time", np.array([t.preferred for t in space.times], dtype=np.int8),
                           {"long_name": "on one of the scenario's preferred days"}),
        "time_calibration": ("time", np.array([
            (_dt.datetime.fromisoformat(t.calibration) if t.calibration else case.calibration)
            .astimezone(case.site_zone()).isoformat() for t in space.times], dtype=object),
            {"long_name": "calibration of the candidate's vial (site time)"}),
        "limit": list(ev.limit_labels),
        "rule": list(rt.labels),
        "rule_kind": ("rule", np.array(rt.kinds, dtype=object)),
        "rule_quantity": ("rule", np.array(rt.quantities, dtype=object)),
        "rule_threshold": ("rule", rt.thresholds, {"units": "Gy"}),
        "rule_source": ("rule", np.array(rt.sources, dtype=object)),
        "quantity": list(model.quantities),
        "unit": ("quantity", np.array(model.units, dtype=object)),
        "activity": ("activity", grid, {"units": "GBq", "long_name": "vial activity at treatment"}),
    }
    extra = {
        "risk": risk,
        "tie_tolerance": case.plan.tie_tolerance,
        "success_definition": f"all primary targets met ({case.plan.success})",
        "feasible": int(ch["feasible"]),
        "recommended_vial_gbq": float(vials[i]),
        "recommended_hours_after_calibration": float(hours[j]),
        "recommended_index_vial": i,
        "recommended_index_time": j,
        "calibration": case.calibration.isoformat(),
        "site_timezone": str(case.plan.site_timezone or case.calibration.tzinfo),
        "vial_source": space.vial_source,
        "time_source": space.time_source,
        "decision_mode": space.mode,
        "clinic_calendar": space.calendar,
        "excluded_times": json.dumps([list(x) for x in space.excluded]),
        "tie_rule": TIE_RULE,
        "valid_sample_count": ev.n,
        "unphysical_sample_count": n_invalid,
        "rules_not_evaluated": ", ".join(rt.not_evaluated),
        "quantile_method": factor_q["method"],
        "quantile_rel_error": factor_q["rel_error"],
    }
    if optuna_info is not None:
        extra["optuna"] = __import__("json").dumps(optuna_info)
    attrs = provenance(case, seed=seed, n=n, dtype=dtype, command="plan", extra=extra)
    return Fields(dv, coords, attrs)
