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
from .simulation import sort_rows, sorted_quantiles

#: Points of the P-versus-activity curve stored with every plan.
CURVE_POINTS = 241

@dataclasses.dataclass(frozen=True)
class CandidateTime:
    hours: float
    local: str  # ISO datetime at the site
    label: str  # e.g. "Wed 2026-12-09 12:00"


@dataclasses.dataclass(frozen=True)
class DecisionSpace:
    vials_gbq: tuple[float, ...]
    times: tuple[CandidateTime, ...]
    vial_source: str
    time_source: str

    @property
    def hours(self) -> np.ndarray:
        return np.array([t.hours for t in self.times])

    @property
    def size(self) -> int:
        return len(self.vials_gbq) * len(self.times)


def _label(when: _dt.datetime) -> str:
    return when.strftime("%a %Y-%m-%d %H:%M %Z").strip()


def candidate_time(case: Case, hours: float) -> CandidateTime:
    when = (case.calibration + _dt.timedelta(hours=float(hours))).astimezone(case.site_zone())
    return CandidateTime(float(hours), when.isoformat(), _label(when))


def default_times(case: Case, window) -> tuple[CandidateTime, ...]:
    """Each weekday in the site's time zone whose date lies in the scenario window, at the site's procedure
    time (or the calibration's clock time), kept only where it lies within the window's day tolerance
    (:data:`y90opt.rules.DAY_TOLERANCE_H`: the window's edges name days, not clock times).

    Without ``site_timezone`` the calibration's UTC offset is the site's clock: give the IANA zone for
    daylight-saving changes between calibration and treatment."""
    from .scenarios import DAY_TOLERANCE_H

    zone = case.site_zone()
    cal_local = case.calibration.astimezone(zone)
    first = (case.calibration + _dt.timedelta(hours=window.start_h)).astimezone(zone).date()
    last = (case.calibration + _dt.timedelta(hours=window.end_h)).astimezone(zone).date()
    clock = case.plan.procedure_time or cal_local.timetz().replace(tzinfo=None)
    out = []
    day = first
    while day <= last:
        if day.weekday() < 5:
            when = _dt.datetime.combine(day, clock).replace(tzinfo=zone)
            h = physics.hours_between(case.calibration, when)
            if h >= 0 and window.contains(h, DAY_TOLERANCE_H):
                out.append(CandidateTime(h, when.isoformat(), _label(when)))
        day += _dt.timedelta(days=1)
    return tuple(out)


def _expand(r: tuple[float, float, float]) -> tuple[float, ...]:
    lo, hi, step = r
    k = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return tuple(float(x) for x in np.round(lo + step * np.arange(k), 10))


def decision_space(case: Case, window, vial_range=None, hours_range=None) -> DecisionSpace:
    if vial_range is not None:
        vials, vsrc = _expand(vial_range), "range (command line)"
    else:
        vials, vsrc = case.vials_gbq.values, {"default": "standard catalogue", "list": "case list", "range": "case range"}[case.vials_gbq.spec]
    if hours_range is not None:
        times, tsrc = tuple(candidate_time(case, h) for h in _expand(hours_range)), "range (command line)"
    elif case.plan.hours_after_calibration is not None:
        times = tuple(candidate_time(case, h) for h in case.plan.hours_after_calibration.values)
        tsrc = f"case {case.plan.hours_after_calibration.spec}"
    else:
        times, tsrc = default_times(case, window), "weekdays in the scenario window"
    if not times:
        raise CaseError(case.path, "plan.hours_after_calibration", "no candidate treatment time (the window holds no weekday)")
    return DecisionSpace(tuple(vials), times, vsrc, tsrc)


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

        engine.check_invalid(n_invalid, n, model.case.path)
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
        engine.check_invalid(n_invalid, n, model.case.path)
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


def choose(p_success: np.ndarray, p_limits: np.ndarray, vials, hours, risk: float, tol: float) -> dict[str, Any]:
    """The planning rule on a (V, T) grid. Returns indices of the recommendation and the reasons."""
    feasible = np.all(limit_margins(p_limits, risk) <= 0, axis=-1) if p_limits.shape[-1] else np.ones(p_success.shape, bool)
    if feasible.any():
        best = p_success[feasible].max()
        tied = feasible & (p_success >= best - tol)
        # ties: the smaller vial, then the earlier time
        order = sorted(zip(*np.nonzero(tied), strict=True), key=lambda ij: (vials[ij[0]], hours[ij[1]]))
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
    dataset: Any
    summary: dict[str, Any]

    def text(self) -> str:
        return plan_text(self.summary)

    def recommended_case(self, case: Case) -> Case:
        """The case with its ``[plan]`` decision set to the recommendation (or the least risky candidate)."""
        a = self.dataset.attrs
        h = float(a["recommended_hours_after_calibration"])
        treatment = case.calibration + _dt.timedelta(hours=h)
        plan = dataclasses.replace(case.plan, vial_gbq=float(a["recommended_vial_gbq"]), treatment=treatment)
        return dataclasses.replace(case, plan=plan)


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
) -> PlanResult:
    """Choose vial and treatment time for ``case`` (exact enumeration, cross-checked by Optuna)."""
    engine.enable_x64_if(dtype)
    if risk is not None and not 0 < risk < 1:
            raise InputError(f"--risk: must be in (0, 1), got {risk}")
    risk = case.plan.risk if risk is None else risk
    ar = active_rules(case, strict=True)
    model = engine.Model.from_case(case)
    rt = compile_rules(ar, model.quantities)
    space = decision_space(case, ar.scenario.window, vial_range, hours_range)
    from .simulation import EXACT_QUANTILE_LIMIT

    chunk = chunk or engine.default_chunk()
    keep = n <= EXACT_QUANTILE_LIMIT
    on_device = engine.on_accelerator()
    check_memory(case, n, 3 + len(rt.labels), dtype, on_device=on_device, factor_rows=len(model.quantities),
                 factor_limit=EXACT_QUANTILE_LIMIT)
    ev, factors, n_invalid = build_evaluator(model, rt, n, seed, chunk, dtype, keep_factors=keep, on_device=on_device)
    factor_q = _factor_quantiles(model, rt, factors, ev.n, n, seed, chunk, dtype)
    result = evaluate_space(case, space, ev, risk)
    optuna_info = None
    trials = optuna_trials if optuna_trials is not None else min(200, max(1, space.size // 2))
    if trials > 0:
        from .optimise import optuna_search

        optuna_info = optuna_search(
            ev, space, risk, case.plan.tie_tolerance, trials=trials, seed=seed, storage=storage,
            study_name=study_name, exact=result["choice"], progress=progress,
            half_life_h=case.conventions.half_life_h,
        )
    ds = plan_dataset(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid, optuna_info)
    ds.attrs["rules_judged"] = json.dumps(rule_rows(ar))
    ds.attrs["acceptable_success"] = case.plan.acceptable_success
    ds.attrs["advisories"] = json.dumps(_advisories_at(case, model, rt, space, result))
    return PlanResult(ds, summarize_plan(ds))


def _factor_quantiles(model, rt, factors, n_valid, n, seed, chunk, dtype) -> dict[str, Any]:
    """p05/p50/p95 of the dose factors: exact from the kept factors, else from streaming histograms (a second
    pass over the same samples; memory independent of n). Doses at s are s·q + b (s > 0)."""
    if factors is not None:
        q = sorted_quantiles(factors, (0.05, 0.5, 0.95), n=n_valid) if n_valid else None
        return {"q": q, "method": "exact (all samples)", "rel_error": 0.0}
    from .simulation import _streaming_stats

    stats, _ = _streaming_stats(model, n, seed, 1.0, np.zeros(len(model.quantities)), rt, chunk, dtype, None)
    return {"q": stats["quantiles"], "method": stats["quantile_method"], "rel_error": stats["quantile_rel_error"]}


def _advisories_at(case, model, rt, space, result) -> list[dict[str, str]]:
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
    return nominal_advisories(case, nominal, active_rules(case, strict=True))


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


def evaluate_space(case, space: DecisionSpace, ev: Evaluator, risk: float) -> dict[str, Any]:
    """Exact P(targets), P(each limit), P(joint) and the planning rule's choice on every candidate."""
    vials = np.asarray(space.vials_gbq)
    hours = space.hours
    s = vials[:, None] * physics.decay_factor(hours[None, :], case.conventions.half_life_h)
    ps = ev.p_success(s)
    pl = ev.p_limits(s)
    pj = ev.p_joint(s)
    ch = choose(ps, pl, vials, hours, risk, case.plan.tie_tolerance)
    return {"s": s, "p_success": ps, "p_limits": pl, "p_joint": pj, "choice": ch}


def plan_dataset(case, model, rt, space, ev, factor_q, result, risk, n, seed, dtype, n_invalid, optuna_info):
    from .results import build_dataset, provenance

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
        "valid_sample_count": ev.n,
        "unphysical_sample_count": n_invalid,
        "rules_not_evaluated": ", ".join(rt.not_evaluated),
        "quantile_method": factor_q["method"],
        "quantile_rel_error": factor_q["rel_error"],
    }
    if optuna_info is not None:
        extra["optuna"] = __import__("json").dumps(optuna_info)
    attrs = provenance(case, seed=seed, n=n, dtype=dtype, command="plan", extra=extra)
    return build_dataset(dv, coords, attrs)


def summarize_plan(ds) -> dict[str, Any]:
    """The pinned ``plan --json`` structure (``feasible``, ``recommended``), derived from the Dataset."""
    import json

    a = ds.attrs
    feasible = bool(a["feasible"])
    i, j = int(a["recommended_index_vial"]), int(a["recommended_index_time"])
    vials = ds["vial"].values
    limits = [str(x) for x in ds["limit"].values]
    risk = float(a["risk"])
    # pull every array once: building candidates must not index the Dataset per value
    hours = ds["hours_after_calibration"].values
    local = ds["time_local"].values
    s_arr = ds["vial_at_treatment"].values
    ps = ds["p_success"].values
    pj = ds["p_joint"].values
    pl = ds["p_limit"].values
    feas = ds["feasible"].values.astype(bool)
    dose_cols = [(k, str(q)) for k, q in enumerate(ds["quantity"].values) if str(ds["unit"].values[k]) == "Gy"]
    dq = {p: ds[f"dose_{p}"].values for p in ("p05", "p50", "p95")} if "dose_p50" in ds else None

    def cand(ii, jj) -> dict[str, Any]:
        d = {
            "vial_gbq": float(vials[ii]),
            "hours_after_calibration": float(hours[jj]),
            "treatment_local": str(local[jj]),
            "vial_at_treatment_gbq": float(s_arr[ii, jj]),
            "p_success": float(ps[ii, jj]),
            "p_joint": float(pj[ii, jj]),
            "p_limits": {lab: float(pl[ii, jj, k]) for k, lab in enumerate(limits)},
            "feasible": bool(feas[ii, jj]),
        }
        if dq is not None:
            d["dose_gy"] = {q: {p: float(dq[p][ii, jj, k]) for p in ("p05", "p50", "p95")} for k, q in dose_cols}
        return d

    rec = cand(i, j)
    conv = json.loads(a["conventions"])
    vial_cal = float(vials[i])
    h = rec["hours_after_calibration"]
    rec_out = {
        "vial_gbq": vial_cal,
        "hours_after_calibration": h,
        "vial_mci": physics.gbq_to_mci(vial_cal),
        "calibration": a["calibration"],
        "treatment_local": rec["treatment_local"],
        "vial_at_treatment_gbq": rec["vial_at_treatment_gbq"],
        "spheres": vial_cal * 1e9 / conv["bq_per_sphere_at_calibration"],
        "activity_per_sphere_bq": conv["bq_per_sphere_at_calibration"] * physics.decay_factor(h, conv["half_life_h"]),
        "p_success": rec["p_success"],
        "p_limits": rec["p_limits"],
    }
    order = np.dstack(np.unravel_index(np.argsort(-ps, axis=None, kind="stable"), ps.shape))[0]
    ranked = [cand(int(a_), int(b_)) for a_, b_ in order[:10]]
    best_feasible_p = rec["p_success"] if feasible else -1.0
    better = [(int(a_), int(b_)) for a_, b_ in order if ps[a_, b_] > best_feasible_p and not feas[a_, b_]][:10]
    rejected = []
    for a_, b_ in better:
        c = cand(a_, b_)
        margins = limit_margins(pl[a_, b_], risk)
        c["ruled_out_by"] = [lab for lab, m in zip(limits, margins, strict=True) if m > 0]
        rejected.append(c)
    acceptable = float(a.get("acceptable_success", 0.5))
    out: dict[str, Any] = {
        "case": a["case_name"],
        "scenario": a["scenario"],
        "status": plan_status(feasible, rec["p_success"], acceptable),
        "acceptable_success": acceptable,
        "feasible": feasible,
        "recommended": rec_out if feasible else None,
        "risk": risk,
        "tie_tolerance": float(a["tie_tolerance"]),
        "success_definition": a["success_definition"],
        "samples": int(a["sample_count"]),
        "seed": int(a["seed"]),
        "dtype": a["dtype"],
        "backend": a["backend"],
        "candidates": int(ps.size),
        "vials_gbq": [float(v) for v in vials],
        "hours_after_calibration": [float(x) for x in ds["hours_after_calibration"].values],
        "ranked": ranked,
        "rejected_better": rejected,
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
    if "optuna" in a:
        out["optuna"] = json.loads(a["optuna"])
    return out


#: The plan statuses of ``plan --json`` (design document, "Plan status").
STATUSES = ("ok", "low-success", "infeasible")


def plan_status(feasible: bool, p_success: float, acceptable_success: float) -> str:
    """``"infeasible"`` when no candidate keeps every limit; ``"ok"`` when the recommendation's P(all primary
    targets met) reaches ``acceptable_success``; ``"low-success"`` otherwise (feasible, but the targets are
    unlikely to be met: never to be shown as a success)."""
    if not feasible:
        return "infeasible"
    return "ok" if p_success >= acceptable_success else "low-success"


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


def plan_text(summary: dict[str, Any]) -> str:
    from .textout import table

    lines = [
        f"case {summary['case']!r}  scenario {summary['scenario']}",
        f"{summary['samples']} samples, seed {summary['seed']}, {summary['dtype']} on {summary['backend']}; "
        f"{summary['candidates']} candidates; each limit kept with P ≥ {1 - summary['risk']:.3g}; "
        f"success = {summary['success_definition']}",
        "conventions: K = {dose_constant_gy_kg_per_gbq:g} Gy·kg/GBq, T½ = {half_life_h:g} h, density "
        "{tissue_density_g_per_ml:g} g/mL, {bq_per_sphere_at_calibration:g} Bq per sphere at calibration".format(**summary["conventions"]),
        "",
    ]
    status = summary.get("status")
    if status == "low-success":
        r = summary["recommended"]
        lines += [f"STATUS: LOW CHANCE OF SUCCESS: P(all primary targets met) = {r['p_success']:.3f} at the best "
                  f"candidate that keeps every limit, below the acceptable {summary['acceptable_success']:g}; "
                  "the targets are unlikely to be reached with these inputs", ""]
    elif status == "infeasible":
        lines += ["STATUS: INFEASIBLE: no candidate keeps every limit", ""]
    elif status == "ok":
        lines += [f"STATUS: ok (P(all primary targets met) ≥ {summary['acceptable_success']:g})", ""]
    if summary["feasible"]:
        r = summary["recommended"]
        lines += [
            "RECOMMENDATION" if status != "low-success" else "BEST FEASIBLE CANDIDATE (low chance of success)",
            f"  order   {r['vial_gbq']:g} GBq vial ({r['vial_mci']:.0f} mCi) calibrated {r['calibration']}",
            f"  treat   {r['treatment_local']}  ({r['hours_after_calibration']:.1f} h after calibration, "
            f"{r['vial_at_treatment_gbq']:.3g} GBq in the vial)",
            f"  spheres {r['spheres']:.3g}, {r['activity_per_sphere_bq']:.0f} Bq per sphere at treatment",
            f"  P(all targets met) = {r['p_success']:.3f}; " + ", ".join(f"P({k}) = {v:.3f}" for k, v in r["p_limits"].items()),
        ]
    else:
        lines += ["NO FEASIBLE CANDIDATE", f"  binding limit: {summary['binding_limit']}", f"  {summary['relax']}"]
    lines.append("")
    limits = list(summary["ranked"][0]["p_limits"]) if summary["ranked"] else []
    rows = [
        (c["vial_gbq"], round(c["hours_after_calibration"], 1), c["treatment_local"][:16], f"{c['p_success']:.3f}",
         *[f"{c['p_limits'][k]:.3f}" for k in limits],
         "yes" if c["feasible"] else "no")
        for c in summary["ranked"]
    ]
    lines.append("best candidates by P(targets):")
    lines.append(table(rows, header=("vial GBq", "h", "local time", "P(targets)", *[f"P({k})" for k in limits], "feasible"),
                       align="rrl" + "r" * (1 + len(limits)) + "l"))
    if summary["rejected_better"]:
        lines.append("")
        for c in summary["rejected_better"][:5]:
            lines.append(f"ruled out: {c['vial_gbq']:g} GBq at {c['hours_after_calibration']:.0f} h "
                         f"(P(targets) {c['p_success']:.3f}) by {', '.join(c['ruled_out_by'])}")
    if summary.get("tradeoff"):
        lines.append("")
        lines.append("trade-off (no other candidate is better on both P(targets) and the worst P(limit kept)):")
        lines.append(table(
            [(c["vial_gbq"], round(c["hours_after_calibration"], 1), f"{c['p_success']:.3f}",
              f"{min(c['p_limits'].values()) if c['p_limits'] else 1.0:.3f}", "yes" if c["feasible"] else "no")
             for c in summary["tradeoff"]],
            header=("vial GBq", "h", "P(targets)", "worst P(limit)", "feasible"), align="rrrrl"))
    if summary.get("rules_not_evaluated"):
        lines.append("not evaluated (quantity not available for this case): " + ", ".join(summary["rules_not_evaluated"]))
    for adv in summary.get("advisories", []):
        lines.append(f"advisory [{adv['code']}]: {adv['message']}")
    if "optuna" in summary:
        o = summary["optuna"]
        lines.append("")
        lines.append(f"Optuna cross-check: {o['trials']} trials, best {o['best']}; "
                     f"{'matches' if o.get('matches_exact') else 'DOES NOT match'} the exact optimum")
    return "\n".join(lines)
