"""``plan`` for a treatment of several injections: a vial per injection and a time per session, chosen jointly.

Decision
    Each injection of a session not yet delivered chooses its vial (the case's catalogue, or the injection's
    own ``activities_gbq``); each such session chooses its time (its ``hours_after_calibration``, else the
    clinic's treatment days in the scenario window after that session's calibration). A delivered session
    (``delivered = true``) is fixed at what was given: the plan of the later sessions *given* it, whose doses
    (the same patient: one draw of every shared input) add to theirs.

Evaluation
    Every dose is linear in the vector s of vial activities at treatment (:class:`~y90opt.engine.TreatmentModel`):
    per sample, dose_r(s) = Σ_j s_j G_{j r} + b_r for each rule column r, but a tumour's D70 reached by two
    vials (a segment's tumour in a modified lobectomy), which is m · h(t): m = Σ_j s_j G_{j r} its mean, t the
    own vial's share of m, h its ``d70_ratio_by_share`` curve, evaluated so at each candidate and sample
    (Dx is not linear in several vials' activities). One sample set serves every joint
    candidate (common random numbers): the rule columns of the valid samples are kept, (n, J, R), and each
    batch of candidates is counted in one ``jit`` call, its batch sized so that n × batch × R stays bounded
    (memory flat in the number of candidates). Probabilities are counts over the valid samples, exactly as a
    numpy brute force over the same samples gives them.

Planning rule
    As for one injection: maximise P(all primary targets) subject to P(limit kept) ≥ 1 − risk for every limit;
    candidates within the tie tolerance of the best are tied and go to the scenario's preferred day in every
    session first, then the smaller total activity at calibration, then the earlier times.

Search
    Up to :data:`ENUMERATE_LIMIT` joint candidates are enumerated exactly, and an Optuna study (multivariate
    TPE over the per-injection vial and per-session time indices, drawn without replacement inside the
    monotone bracket of :class:`_Bracket`, never given the exact answer) searches the same space as a
    cross-check: ``optuna.matches_exact`` says whether it reached
    the exact optimum. Larger spaces (fine time grids × 0.5 GBq steps) are searched by Optuna, and the exact
    optimum of the coarsest sub-grid it contains is computed as the check.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np

from . import engine, physics
from .case import Case, CaseError
from .chance import limit_margins
from .errors import InputError
from .outcomes import active_rules, compile_rules, rule_rows, treatment_advisories, treatment_dose_mapping
from .plan_summary import plan_status
from .planner import CandidateTime, decision_space

#: Joint candidates enumerated exactly; beyond, Optuna is the search (with an exact sub-grid as its check).
ENUMERATE_LIMIT = 20_000
#: Booleans per counting call (samples × candidates × rule columns): bounds the evaluator's memory.
CELLS_PER_CALL = 1 << 24
#: Default Optuna trials: half the joint candidates, at most this many.
DEFAULT_TRIALS = 400
#: Random trials before TPE models the space.
STARTUP_TRIALS = 10
#: TPE redraws of an already evaluated candidate before the nearest unseen one is taken.
REDRAWS = 8


@dataclasses.dataclass(frozen=True)
class JointSpace:
    """The joint candidates: per injection its vials, per session its times; a delivered one has one value.

    ``dims`` are the free decisions, in order: ``("vial", injection index)`` then ``("time", session index)``.
    """

    injections: tuple[str, ...]
    sessions: tuple[str, ...]
    vials: tuple[tuple[float, ...], ...]
    times: tuple[tuple[CandidateTime, ...], ...]
    session_of: tuple[int, ...]  # per injection
    calibration_shift_h: tuple[float, ...]  # per injection: its vial's calibration before its session's [h]
    dims: tuple[tuple[str, int], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.vials[i]) if kind == "vial" else len(self.times[i]) for kind, i in self.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.dims else 1

    def full_index(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Free-dimension indices (C, D) → per-injection vial indices (C, J) and per-session time indices (C, K)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1, len(self.dims))
        vi = np.zeros((idx.shape[0], len(self.injections)), np.int64)
        ti = np.zeros((idx.shape[0], len(self.sessions)), np.int64)
        for d, (kind, i) in enumerate(self.dims):
            (vi if kind == "vial" else ti)[:, i] = idx[:, d]
        return vi, ti

    def decode(self, idx: np.ndarray, half_life_h: float) -> dict[str, np.ndarray]:
        """Vials at calibration, hours after calibration and activities at treatment (C, J) of candidates."""
        vi, ti = self.full_index(idx)
        vial = np.stack([np.asarray(self.vials[j])[vi[:, j]] for j in range(len(self.injections))], axis=1)
        hours = np.stack([np.array([t.hours for t in self.times[self.session_of[j]]])[ti[:, self.session_of[j]]]
                          + self.calibration_shift_h[j] for j in range(len(self.injections))], axis=1)
        return {"vial": vial, "hours": hours, "s": vial * physics.decay_factor(hours, half_life_h),
                "vial_index": vi, "time_index": ti}

    def all_indices(self) -> np.ndarray:
        if not self.dims:
            return np.zeros((1, 0), np.int64)
        grids = np.meshgrid(*[np.arange(k) for k in self.shape], indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1)


def joint_space(case: Case, window, *, any_time: bool = False) -> JointSpace:
    """The joint decision space of a case with ``[[injections]]`` (module docstring)."""
    vials, times, dims = [], [], []
    for i, j in enumerate(case.injections):
        sess = case.session(j.session)
        if sess.delivered:
            vials.append((float(j.vial_gbq),))
        else:
            vials.append(tuple(case.injection_vials(j).values))
            if len(vials[-1]) > 0:
                dims.append(("vial", i))
    for k, sess in enumerate(case.sessions):
        view = dataclasses.replace(
            case, calibration=sess.calibration, injections=(), sessions=(),
            plan=dataclasses.replace(case.plan, treatment=sess.treatment,
                                     hours_after_calibration=sess.hours_after_calibration))
        if sess.delivered:
            from .planner import candidate_time

            times.append((candidate_time(view, physics.hours_between(sess.calibration, sess.treatment), window),))
            continue
        try:
            cands = decision_space(view, window, any_time=any_time).times
        except CaseError as e:
            raise CaseError(case.path, f"sessions[{k}].hours_after_calibration", f"session {sess.name}: {e.message}") from None
        # a time must be usable for every vial of the session (an injection may have its own calibration)
        shifts = [physics.hours_between(case.injection_calibration(j), sess.calibration)
                  for j in case.injections if j.session == sess.name]
        kept = tuple(t for t in cands if all(0 <= t.hours + d <= case.usable_life_h for d in shifts))
        if not kept:
            raise CaseError(case.path, f"sessions[{k}].hours_after_calibration", f"session {sess.name}: no candidate "
                            "time is after the calibration of every vial of the session and within its usable life")
        times.append(kept)
        dims.append(("time", k))
    sessions = [x.name for x in case.sessions]
    shift = tuple(physics.hours_between(case.injection_calibration(j), case.session(j.session).calibration)
                  for j in case.injections)
    return JointSpace(tuple(j.name for j in case.injections), tuple(sessions), tuple(vials), tuple(times),
                      tuple(sessions.index(j.session) for j in case.injections), shift, tuple(dims))


# -- exact evaluation ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _count_fn(n_vials: int, curves: tuple = ()):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def count(g, s, b, thr, signs, primary, limit):
        # dose (n, B, R) = Σ_j s_j G_j + b, term by term in the injections' order
        d = g[:, None, 0, :] * s[None, :, 0, None]
        for j in range(1, n_vials):
            d = d + g[:, None, j, :] * s[None, :, j, None]
        for r, own, xs, ys in curves:  # a D70 reached by two vials: m · h(t), as engine.curve_dose gives it
            d = d.at[:, :, r].set(engine.curve_dose(d[:, :, r], g[:, None, own, r] * s[None, :, own], xs, ys))
        d = d + b
        sat = signs * (d - thr) <= 0
        succ = jnp.all(sat | ~primary, axis=-1)
        kept = jnp.all(sat | ~limit, axis=-1)
        return (jnp.sum(succ, axis=0), jnp.sum(sat, axis=0), jnp.sum(succ & kept, axis=0), jnp.sum(kept, axis=0))

    return count


@dataclasses.dataclass
class JointEvaluator:
    """Exact probabilities at any vector of vial activities at treatment, from one set of samples.

    ``g``: (n, J, R) the rule columns' per-GBq factors of the valid samples; ``b`` (R,) the offsets; ``curve``
    the columns whose dose is m · h(t) rather than linear (module docstring)."""

    g: Any
    b: np.ndarray
    thresholds: np.ndarray
    signs: np.ndarray
    primary: np.ndarray
    limit: np.ndarray
    labels: tuple[str, ...]
    n: int
    dtype: str
    evaluations: int = 0
    #: the columns not linear in the vials (``engine.TreatmentModel.curves``): (rule column, own vial, shares,
    #: ratios) for each
    curves: tuple = ()

    @property
    def limit_labels(self) -> tuple[str, ...]:
        return tuple(lab for lab, m in zip(self.labels, self.limit, strict=True) if m)

    def evaluate(self, s: np.ndarray) -> dict[str, np.ndarray]:
        """P(success), P(each rule), P(each limit), P(success and every limit) at activities ``s`` (C, J)."""
        import jax.numpy as jnp

        s = np.asarray(s, dtype=np.float64).reshape(-1, self.g.shape[1])
        c, r = s.shape[0], len(self.labels)
        batch = int(max(1, min(c, CELLS_PER_CALL // max(1, self.n * max(r, 1)))))
        fn = _count_fn(int(self.g.shape[1]), self.curves)
        dt = jnp.dtype(self.dtype)
        args = [jnp.asarray(x, dt) for x in (self.b, self.thresholds, self.signs)]
        masks = [jnp.asarray(self.primary), jnp.asarray(self.limit)]
        out = {k: [] for k in ("success", "rules", "joint", "kept")}
        for a in range(0, c, batch):
            part = s[a:a + batch]
            pad = np.zeros((batch, s.shape[1])) if part.shape[0] < batch else None
            if pad is not None:
                pad[:part.shape[0]] = part
            su, ru, jo, ke = fn(self.g, jnp.asarray(part if pad is None else pad, dt), *args, *masks)
            m = part.shape[0]
            out["success"].append(np.asarray(su)[:m])
            out["rules"].append(np.asarray(ru)[:m])
            out["joint"].append(np.asarray(jo)[:m])
            out["kept"].append(np.asarray(ke)[:m])
        self.evaluations += c
        n = max(self.n, 1)
        rules = np.concatenate(out["rules"]).astype(np.float64) / n
        p_success = np.concatenate(out["success"]).astype(np.float64) / n
        if not self.primary.any():
            p_success = np.full(c, np.nan)
        return {"p_success": p_success, "p_rules": rules, "p_limits": rules[:, self.limit],
                "p_joint": np.concatenate(out["joint"]).astype(np.float64) / n,
                "p_all_limits": np.concatenate(out["kept"]).astype(np.float64) / n}


def build_joint_evaluator(model: engine.TreatmentModel, rt, n: int, seed: int, chunk: int | None, dtype: str):
    """Sample once: the rule columns of every valid sample (n, J, R), and the count of unphysical ones."""
    import jax.numpy as jnp

    q = len(model.quantities)
    cols = np.asarray(rt.cols, dtype=np.int64)
    flat = (np.arange(model.n_vials)[:, None] * q + cols[None, :]).ravel()

    def reducer(f, valid, in_range):
        return f[:, flat], valid & in_range, in_range & ~valid

    parts, bad = [], 0
    for g, ok, b in engine.run_chunks(model, n, seed, reducer, (), chunk, dtype):
        m = np.asarray(ok)
        parts.append(np.asarray(g)[m])
        bad += int(np.sum(b))
    g = np.concatenate(parts).reshape(-1, model.n_vials, len(cols))
    ev = JointEvaluator(jnp.asarray(g), np.asarray(model.offsets)[cols], rt.thresholds, rt.signs, rt.is_primary,
                        rt.is_limit, rt.labels, g.shape[0], dtype,
                        curves=tuple((r, *model.curves[int(c)]) for r, c in enumerate(cols) if int(c) in model.curves))
    return ev, g, bad


def choose_joint(p_success, p_limits, total_vial, hours_sum, not_preferred, risk: float, tol: float) -> dict[str, Any]:
    """The planning rule over joint candidates (module docstring): the index chosen and why."""
    margins = limit_margins(p_limits, risk)
    feasible = np.all(margins <= 0, axis=-1) if margins.shape[-1] else np.ones(len(p_success), bool)
    ps = np.nan_to_num(p_success, nan=0.0)
    if feasible.any():
        best = ps[feasible].max()
        tied = np.nonzero(feasible & (ps >= best - tol))[0]
        k = min(tied, key=lambda i: (not_preferred[i], total_vial[i], hours_sum[i], i))
        return {"feasible": True, "index": int(k), "best_p": float(best), "feasible_mask": feasible}
    worst = p_limits.min(axis=-1) if p_limits.shape[-1] else np.ones(len(ps))
    top = worst.max()
    k = min(np.nonzero(worst >= top - 1e-12)[0], key=lambda i: (total_vial[i], hours_sum[i], i))
    return {"feasible": False, "index": int(k), "best_p": float("nan"), "feasible_mask": feasible}


# -- Optuna ---------------------------------------------------------------------------------------------------


class _Bracket:
    """What monotonicity leaves to search, from the candidates evaluated (never from values not evaluated).

    Every dose is non-decreasing in each vial's activity at treatment, which rises with the vial index and falls
    with the time index. So a candidate *above* an infeasible one (every vial index ≥, every time index ≤) is
    infeasible for the same limit, and a candidate *below* a feasible one x (every vial ≤, every time ≥) has
    P(success) ≤ P(x): when P(x) is more than the tie tolerance under the best feasible P seen, nothing below x
    can be chosen. ``alive`` marks the unseen candidates neither rule excludes."""

    def __init__(self, shape: tuple[int, ...], is_vial: np.ndarray, tol: float):
        self.shape = shape
        self.size = int(np.prod(shape))
        self.grid = np.stack(np.unravel_index(np.arange(self.size), shape), axis=1) if self.size <= 1 << 21 else None
        self.sign = np.where(is_vial, 1, -1)  # "above" in activity: vial index up, time index down
        self.alive = np.ones(self.size, bool) if self.grid is not None else None
        self.tol = tol
        self.best = -np.inf
        self.feasible: list[tuple[np.ndarray, float]] = []
        self.seen: set[int] = set()

    def flat(self, c) -> int:
        return int(np.ravel_multi_index(tuple(int(x) for x in c), self.shape))

    def record(self, c, p: float, feasible: bool) -> None:
        k = self.flat(c)
        self.seen.add(k)
        if self.alive is None:
            return
        self.alive[k] = False
        c = np.asarray(c) * self.sign
        g = self.grid * self.sign
        if not feasible:
            self.alive &= ~np.all(g >= c, axis=1)
            return
        self.feasible.append((c, p))
        self.best = max(self.best, p)
        keep = []
        for x, px in self.feasible:
            if px < self.best - self.tol:
                self.alive &= ~np.all(g <= x, axis=1)
            else:
                keep.append((x, px))
        self.feasible = keep

    def acceptable(self, c) -> bool:
        k = self.flat(c)
        return k not in self.seen and (self.alive is None or bool(self.alive[k]))

    def any_left(self) -> bool:
        return bool(self.alive.any()) if self.alive is not None else len(self.seen) < self.size

    def draw(self, rng) -> tuple[int, ...]:
        if self.alive is not None and self.alive.any():
            k = int(rng.choice(np.flatnonzero(self.alive)))
            return tuple(int(x) for x in self.grid[k])
        while True:  # no bracket (a very large space): any unseen candidate
            c = tuple(int(rng.integers(m)) for m in self.shape)
            if self.flat(c) not in self.seen or len(self.seen) >= self.size:
                return c


def _joint_sampler(seed: int, dims: tuple[str, ...], bracket: _Bracket):
    """Multivariate TPE over the free indices; a proposal already evaluated or outside the monotone bracket is
    redrawn (:data:`REDRAWS` times), then replaced by a candidate drawn uniformly inside the bracket."""
    from optuna.distributions import IntDistribution
    from optuna.samplers import BaseSampler, TPESampler
    from optuna.trial import TrialState

    space = {d: IntDistribution(0, k - 1) for d, k in zip(dims, bracket.shape, strict=True)}

    class JointBracketSampler(BaseSampler):
        def __init__(self):
            self._tpe = TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP_TRIALS)
            self._rng = np.random.default_rng(seed)

        def infer_relative_search_space(self, study, trial):
            return dict(space)

        def sample_relative(self, study, trial, search_space):
            n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            c = None
            if n_done >= STARTUP_TRIALS:
                for _ in range(REDRAWS):
                    p = self._tpe.sample_relative(study, trial, dict(space))
                    c = tuple(int(p[d]) for d in dims)
                    if bracket.acceptable(c):
                        break
                    c = None
            if c is None:
                c = bracket.draw(self._rng)
            return dict(zip(dims, c, strict=True))

        def sample_independent(self, study, trial, name, dist):  # every parameter is relative
            return int(self._rng.integers(dist.low, dist.high + 1))

        def before_trial(self, study, trial):
            self._tpe.before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._tpe.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self._tpe.reseed_rng()
            self._rng = np.random.default_rng()

    return JointBracketSampler()


def joint_optuna_search(space: JointSpace, evaluate, risk: float, tol: float, trials: int, seed: int,
                        half_life_h: float, labels: tuple[str, ...], preferred_key, storage=None,
                        study_name: str | None = None) -> dict[str, Any]:
    """An Optuna study over the free indices; each trial evaluated exactly by ``evaluate(idx) → (p, limits)``.

    Stops after ``trials`` trials, or earlier when the monotone bracket (:class:`_Bracket`) holds no candidate
    left. Returns the best trial by the planning rule over the trials evaluated (written here apart from
    :func:`choose_joint`, so that the cross-check is independent of it)."""
    import optuna

    from .optimise import _open_storage, _quiet_optuna, set_limit_constraints

    dims = tuple(f"{kind}_{(space.injections if kind == 'vial' else space.sessions)[i]}" for kind, i in space.dims)
    bracket = _Bracket(space.shape, np.array([kind == "vial" for kind, _ in space.dims]), tol)
    sampler = _joint_sampler(seed, dims, bracket)
    exhausted = False
    with _quiet_optuna():
        st = _open_storage(storage)[0] if storage is not None else None
        study = optuna.create_study(direction="maximize", sampler=sampler, storage=st,
                                    study_name=study_name, load_if_exists=True)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            c = tuple(t.params[d] for d in dims)
            bracket.record(c, t.value, max(t.constraints.values(), default=0.0) <= 0)
        while len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < trials:
            if not bracket.any_left():
                exhausted = True
                break
            t = study.ask()
            c = tuple(t.suggest_int(d, 0, k - 1) for d, k in zip(dims, space.shape, strict=True))
            p, pl = evaluate(np.asarray([c]))
            m = limit_margins(pl, risk)
            set_limit_constraints(t, labels, m)
            value = float(np.nan_to_num(p, nan=0.0))
            study.tell(t, value)
            bracket.record(c, value, bool(np.all(m <= 0)))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    idx = np.array([[t.params[d] for d in dims] for t in done], dtype=np.int64)
    dec = space.decode(idx, half_life_h)
    p = np.array([t.value for t in done])
    worst = np.array([max(t.constraints.values(), default=0.0) for t in done])
    feas = [k for k in range(len(done)) if worst[k] <= 0]
    if feas:
        pmax = max(p[k] for k in feas)
        tied = [k for k in feas if p[k] >= pmax - tol]
        k = min(tied, key=lambda k: (preferred_key(dec["time_index"][k]), float(dec["vial"][k].sum()),
                                     float(dec["hours"][k].sum()), k))
    else:
        pmax = None
        k = min(range(len(done)), key=lambda k: (worst[k], float(dec["vial"][k].sum())))
    return {"index": idx[k], "p_success": None if pmax is None else float(p[k]), "feasible": bool(feas),
            "trials": len(done), "distinct": len({tuple(r) for r in idx.tolist()}), "study_name": study.study_name,
            "bracket_exhausted": exhausted}


# -- the plan -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JointPlanResult:
    dataset: Any
    summary: dict[str, Any]

    def text(self, top: int = 10) -> str:
        return joint_plan_text(self.summary, top)


def plan_joint_case(case: Case, n: int = 100_000, seed: int = 0, chunk: int | None = None, dtype: str = "float32",
                    risk: float | None = None, optuna_trials: int | None = None, storage=None,
                    study_name: str | None = None, any_time: bool = False,
                    enumerate_limit: int | None = None, optuna_seed: int | None = None) -> JointPlanResult:
    """Choose a vial per injection and a time per session for a case with ``[[injections]]`` (module docstring).

    ``optuna_seed`` seeds the Optuna search (default: ``seed``); ``enumerate_limit`` overrides
    :data:`ENUMERATE_LIMIT`."""
    engine.enable_x64_if(dtype)
    if not case.multi:
        raise InputError(f"{case.path}: injections: plan_joint_case plans a case with [[injections]]")
    if risk is not None and not 0 < risk < 1:
        raise InputError(f"--risk: must be in (0, 1), got {risk}")
    risk = case.plan.risk if risk is None else risk
    limit = ENUMERATE_LIMIT if enumerate_limit is None else enumerate_limit
    ar = active_rules(case, strict=True)
    model = engine.TreatmentModel.from_case(case)
    rt = _given_limits_reported(case, compile_rules(ar, model.quantities))
    space = joint_space(case, ar.scenario.window, any_time=any_time)
    if not space.dims:
        raise CaseError(case.path, "sessions", "every session is delivered: nothing is left to plan (use simulate)")
    ev, _, n_invalid = build_joint_evaluator(model, rt, n, seed, chunk, dtype)
    engine.check_invalid(n_invalid, n, case.path, model=model, seed=seed)
    half = case.conventions.half_life_h
    window = ar.scenario.window
    pref = [np.array([t.preferred for t in times]) for times in space.times]
    free_sessions = [i for kind, i in space.dims if kind == "time"]

    def not_preferred(ti_row) -> int:
        return int(sum(not pref[k][ti_row[k]] for k in free_sessions))

    def evaluate(idx):
        d = space.decode(idx, half)
        r = ev.evaluate(d["s"])
        return r["p_success"][0], r["p_limits"][0]

    enumerated = space.size <= limit
    if enumerated:
        idx = space.all_indices()
        grid_note = "every joint candidate (exact)"
    else:
        idx = _coarse_grid(space, limit)
        grid_note = f"a sub-grid of {len(idx)} of the {space.size} joint candidates (exact), the check of the Optuna search"
    dec = space.decode(idx, half)
    res = ev.evaluate(dec["s"])
    np_key = np.array([not_preferred(row) for row in dec["time_index"]])
    exact = choose_joint(res["p_success"], res["p_limits"], dec["vial"].sum(axis=1), dec["hours"].sum(axis=1), np_key,
                         risk, case.plan.tie_tolerance)
    trials = optuna_trials if optuna_trials is not None else min(DEFAULT_TRIALS, max(1, space.size // 2))
    opt = None
    chosen_idx = idx[exact["index"]]
    if trials > 0:
        o_seed = seed if optuna_seed is None else optuna_seed
        # a name fixed by the plan (the case, samples, seeds, risk), so that a stored study resumes only its plan
        name = study_name or f"y90opt-joint-{case.sha256[:16]}-n{n}-s{seed}-o{o_seed}-r{risk:g}-{dtype}"
        opt = joint_optuna_search(space, evaluate, risk, case.plan.tie_tolerance, trials, o_seed, half,
                                  ev.limit_labels, not_preferred, storage, name)
        same = bool(np.array_equal(opt["index"], idx[exact["index"]]))
        if opt["p_success"] is not None and exact["feasible"]:
            matches = same or abs(opt["p_success"] - exact["best_p"]) <= case.plan.tie_tolerance
        else:
            matches = same or (opt["p_success"] is None and not exact["feasible"])
        opt["same_candidate"] = same
        opt["matches_exact"] = bool(matches) if enumerated else None
        if not enumerated:
            # the search is the answer; the sub-grid's exact optimum is its check (Optuna must reach at least it)
            opt["reaches_subgrid_optimum"] = bool(
                opt["p_success"] is not None and exact["feasible"] and opt["p_success"] >= exact["best_p"] - case.plan.tie_tolerance)
            # the planning rule over the sub-grid and Optuna's best together (ties as everywhere)
            both = np.vstack([idx, np.asarray(opt["index"])[None, :]])
            d2 = space.decode(both, half)
            r2 = ev.evaluate(d2["s"])
            k2 = np.array([not_preferred(row) for row in d2["time_index"]])
            pick = choose_joint(r2["p_success"], r2["p_limits"], d2["vial"].sum(axis=1), d2["hours"].sum(axis=1), k2,
                                risk, case.plan.tie_tolerance)
            chosen_idx = both[pick["index"]]
    ds = _dataset(case, model, rt, space, idx, dec, res, exact, n, seed, dtype, n_invalid, risk)
    summary = _summary(case, ar, rt, space, ev, idx, dec, res, exact, chosen_idx, opt, risk, grid_note, enumerated,
                       window, n, seed, dtype, n_invalid)
    # the summary travels with plan.nc (so that `y90opt report plan.nc` rebuilds the page from the file alone)
    ds.attrs["plan_summary_json"] = json.dumps(summary, allow_nan=False, default=float)
    return JointPlanResult(ds, summary)


def _given_limits_reported(case: Case, rt):
    """The rules with each per-session limit of a delivered session made a reported row (kind ``given``):
    no choice of the sessions planned can change it, so it is no constraint of theirs (its probability is
    still computed and shown)."""
    delivered = {x.name for x in case.sessions if x.delivered}
    given = {f"{q}.{d}" for d in delivered for q in ("lung_sessions", "whole_normal_liver_sessions")}
    kinds = tuple("given" if k == "limit" and q in given else k for k, q in zip(rt.kinds, rt.quantities, strict=True))
    return dataclasses.replace(rt, kinds=kinds)


def _coarse_grid(space: JointSpace, limit: int) -> np.ndarray:
    """Every k-th index of each free dimension (the same k for all, the first and last kept), the smallest k whose
    grid holds at most ``limit`` candidates."""
    for k in range(2, max(space.shape) + 1):
        axes = [sorted(set(range(0, m, k)) | {m - 1}) for m in space.shape]
        if int(np.prod([len(a) for a in axes])) <= limit:
            grids = np.meshgrid(*axes, indexing="ij")
            return np.stack([g.ravel() for g in grids], axis=1)
    return np.zeros((1, len(space.dims)), np.int64)


def _dataset(case, model, rt, space, idx, dec, res, exact, n, seed, dtype, n_invalid, risk):
    from .results import build_dataset, provenance

    dv = {
        "candidate_vial_gbq": (("candidate", "injection"), dec["vial"]),
        "candidate_hours_after_calibration": (("candidate", "injection"), dec["hours"]),
        "candidate_activity_at_treatment_gbq": (("candidate", "injection"), dec["s"]),
        "candidate_vial_index": (("candidate", "injection"), dec["vial_index"]),
        "candidate_time_index": (("candidate", "session"), dec["time_index"]),
        "p_success": (("candidate",), res["p_success"]),
        "p_limit": (("candidate", "limit"), res["p_limits"]),
        "p_success_and_limits": (("candidate",), res["p_joint"]),
        "feasible": (("candidate",), exact["feasible_mask"]),
        "threshold": (("rule",), rt.thresholds),
    }
    coords = {"injection": list(space.injections), "session": list(space.sessions), "limit": list(rt.labels[i] for i in np.nonzero(rt.is_limit)[0]),
              "rule": list(rt.labels), "candidate": np.arange(len(idx)),
              "injection_session": ("injection", [space.sessions[k] for k in space.session_of])}
    attrs = provenance(case, seed=seed, n=n, dtype=dtype, command="plan", extra={
        "risk": risk,
        "valid_sample_count": int(n - n_invalid),
        "unphysical_sample_count": int(n_invalid),
        "recommended_candidate": int(exact["index"]),
        "feasible": int(bool(exact["feasible"])),
        "joint_space_shape": json.dumps(list(space.shape)),
        "joint_space_dims": json.dumps([f"{k}:{(space.injections if k == 'vial' else space.sessions)[i]}"
                                        for k, i in space.dims]),
    })
    return build_dataset(dv, coords, attrs)


def _summary(case, ar, rt, space, ev, idx, dec, res, exact, chosen_idx, opt, risk, grid_note, enumerated, window,
             n, seed, dtype, n_invalid) -> dict[str, Any]:
    half = case.conventions.half_life_h
    cd = space.decode(np.asarray([chosen_idx]), half)
    cres = ev.evaluate(cd["s"])
    k = 0
    p_succ = float(cres["p_success"][k]) if np.isfinite(cres["p_success"][k]) else None
    margins = limit_margins(cres["p_limits"], risk)[k]
    feasible = bool(np.all(margins <= 0))
    ti = cd["time_index"][k]
    rec_inj = {name: {"vial_gbq": float(cd["vial"][k, j]), "hours_after_calibration": float(cd["hours"][k, j]),
                      "activity_at_treatment_gbq": float(cd["s"][k, j]), "session": space.sessions[space.session_of[j]],
                      "delivered": case.session(space.sessions[space.session_of[j]]).delivered}
               for j, name in enumerate(space.injections)}
    rec_sess = {}
    for s_i, name in enumerate(space.sessions):
        t = space.times[s_i][ti[s_i]]
        rec_sess[name] = {"hours_after_calibration": t.hours, "treatment": t.local, "label": t.label,
                          "preferred": t.preferred, "delivered": case.session(name).delivered}
    status = plan_status(feasible, p_succ if p_succ is not None else 0.0, case.plan.acceptable_success)
    limit_labels = ev.limit_labels
    binding = [{"label": lab, "p_kept": float(p), "required": 1 - risk}
               for lab, p in zip(limit_labels, cres["p_limits"][k], strict=True) if p < 1 - risk + 0.02]
    # nominal doses at the choice (the reference model), and the lung budget left to the sessions planned
    nominal_model = engine.TreatmentModel.from_case(case).decided(cd["s"][k])
    values = dict(zip(nominal_model.quantities, nominal_model.nominal_factors() + nominal_model.offsets, strict=True))
    decisions = [(float(cd["hours"][k, j]), float(cd["vial"][k, j]), float(cd["s"][k, j])) for j in range(len(space.injections))]
    doses = treatment_dose_mapping(case, values, decisions)
    delivered = [x.name for x in case.sessions if x.delivered]
    lung_delivered = sum(values[f"lung_sessions.{x}"] for x in delivered)
    budgets = {}
    for r in ar.limits:
        if r.quantity == "lung_cumulative":
            budgets["lung_cumulative_gy"] = {
                "limit_gy": r.threshold_gy, "prior_gy": case.prior_lung_dose_gy, "delivered_sessions_gy": lung_delivered,
                "left_for_planned_sessions_gy": r.threshold_gy - case.prior_lung_dose_gy - lung_delivered}
    if status == "infeasible":
        worst = limit_labels[int(np.argmax(margins))] if len(limit_labels) else ""
        reason = (f"no joint candidate keeps every limit with P >= {1 - risk:g}; the least risky one is shown; "
                  f"{worst} binds (its P kept {float(cres['p_limits'][k].min()):.3f})")
    elif status == "low-success":
        reason = (f"the best feasible joint candidate meets every primary target with P = {p_succ:.3f}, below the "
                  f"acceptable {case.plan.acceptable_success:g}")
    else:
        reason = f"every limit kept with P >= {1 - risk:g} and every primary target met with P = {p_succ:.3f}"
    # better candidates the limits rule out
    better = []
    ps = np.nan_to_num(res["p_success"], nan=0.0)
    order = np.argsort(-ps, kind="stable")
    for c in order[:50]:
        if exact["feasible_mask"][c] or (p_succ is not None and ps[c] <= p_succ + case.plan.tie_tolerance):
            continue
        m = limit_margins(res["p_limits"][c], risk)
        better.append({"injections": {nm: float(dec["vial"][c, j]) for j, nm in enumerate(space.injections)},
                       "hours_after_calibration": {nm: float(dec["hours"][c, j]) for j, nm in enumerate(space.injections)},
                       "p_success": float(ps[c]),
                       "ruled_out_by": [lab for lab, v in zip(limit_labels, m, strict=True) if v > 0]})
        if len(better) >= 5:
            break
    out = {
        "case": case.name,
        "scenario": case.scenario,
        "feasible": feasible,
        "status": status,
        "status_reason": reason,
        "recommended": None if not feasible else {
            "injections": rec_inj, "sessions": rec_sess, "p_success": p_succ,
            "p_limits": {lab: float(p) for lab, p in zip(limit_labels, cres["p_limits"][k], strict=True)},
        },
        "least_risky": None if feasible else {"injections": rec_inj, "sessions": rec_sess, "p_success": p_succ},
        "doses_at_choice": doses,
        "rules": rule_rows(ar),
        "rules_not_evaluated": list(rt.not_evaluated),
        "binding_limits": binding,
        "rejected_better": better,
        "budgets": budgets,
        "given_sessions": delivered,
        "given_limits": [{"label": lab, "p_kept": float(p)} for lab, kind, p in
                         zip(rt.labels, rt.kinds, cres["p_rules"][k], strict=True) if kind == "given"],
        "decision_space": {
            "dims": [f"{kind}:{(space.injections if kind == 'vial' else space.sessions)[i]}" for kind, i in space.dims],
            "shape": list(space.shape), "size": space.size, "evaluated_exactly": int(len(idx)),
            "exact": grid_note, "enumerated": enumerated,
        },
        "risk": risk,
        "tie_tolerance": case.plan.tie_tolerance,
        "samples": n, "seed": seed, "dtype": dtype,
        "valid_samples": int(n - n_invalid), "unphysical_samples": int(n_invalid),
        "advisories": treatment_advisories(case, doses, ar),
        "case_sha256": case.sha256,
    }
    if opt is not None:
        od = space.decode(np.asarray([opt["index"]]), half)
        out["optuna"] = {
            "trials": opt["trials"], "distinct_candidates": opt["distinct"], "study_name": opt["study_name"],
            "bracket_exhausted": opt["bracket_exhausted"],
            "best": {"injections": {nm: float(od["vial"][0, j]) for j, nm in enumerate(space.injections)},
                     "sessions": {nm: space.times[s][od["time_index"][0, s]].hours for s, nm in enumerate(space.sessions)},
                     "p_success": opt["p_success"]},
            "matches_exact": opt["matches_exact"] if enumerated else opt["reaches_subgrid_optimum"],
            "same_candidate": opt["same_candidate"],
            "sentence": (f"Optuna ({opt['trials']} trials, {opt['distinct']} distinct joint candidates of {space.size}) "
                         + ("reached the exact optimum" if (opt["matches_exact"] if enumerated else opt["reaches_subgrid_optimum"])
                            else "did NOT reach the exact optimum")
                         + ("" if enumerated else " of the exact sub-grid")
                         + ("; it stopped when monotonicity left no candidate that could do better" if opt["bracket_exhausted"] else "")),
        }
        if not enumerated:
            out["optuna"]["reaches_subgrid_optimum"] = opt["reaches_subgrid_optimum"]
    return out


def joint_plan_text(summary: dict[str, Any], top: int = 10) -> str:
    """The readable answer of ``y90opt plan`` for several injections."""
    from .textout import table

    status = summary["status"]
    head = {"ok": "STATUS: OK", "low-success": "STATUS: LOW CHANCE OF SUCCESS",
            "infeasible": "STATUS: INFEASIBLE: no joint candidate keeps every limit"}[status]
    lines = [f"case {summary['case']!r}  scenario {summary['scenario']}", head, f"  {summary['status_reason']}", ""]
    rec = summary["recommended"] or summary["least_risky"]
    title = {"ok": "ORDER", "low-success": "BEST FEASIBLE JOINT CANDIDATE (not a success: see the status)",
             "infeasible": "LEAST RISKY JOINT CANDIDATE (keeps no plan's limits: do not treat as planned)"}[status]
    lines.append(title)
    lines.append(table([(n, j["session"], j["vial_gbq"], f"{j['hours_after_calibration']:.1f}", j["activity_at_treatment_gbq"],
                         "delivered" if j["delivered"] else "")
                        for n, j in rec["injections"].items()],
                       header=("injection", "session", "vial GBq", "h after cal.", "at treatment GBq", ""), align="llrrrl"))
    lines.append(table([(n, s["label"], "yes" if s["preferred"] else "", "delivered" if s["delivered"] else "")
                        for n, s in rec["sessions"].items()], header=("session", "treatment", "preferred day", ""), align="llll"))
    p = rec["p_success"]
    lines.append(f"P(all primary targets met) = {'n/a' if p is None else f'{p:.4f}'}")
    if summary.get("recommended"):
        lines.append(table([(lab, f"{v:.4f}") for lab, v in summary["recommended"]["p_limits"].items()],
                           header=("limit", "P(kept)"), align="lr"))
    for b in summary["binding_limits"]:
        lines.append(f"binding limit: {b['label']} (P kept {b['p_kept']:.4f}, required {b['required']:g})")
    for r in summary["rejected_better"][:top]:
        what = ", ".join(f"{n} {v:g} GBq at {r['hours_after_calibration'][n]:g} h" for n, v in r["injections"].items())
        lines.append(f"ruled out: {what}: P = {r['p_success']:.4f}, by {', '.join(r['ruled_out_by'])}")
    for g in summary.get("given_limits", []):
        lines.append(f"given by a delivered session (no constraint of this plan): {g['label']} kept with P {g['p_kept']:.4f}")
    for name, b in summary["budgets"].items():
        lines.append(f"budget {name}: limit {b['limit_gy']:g} Gy - prior {b['prior_gy']:.3g} - delivered "
                     f"{b['delivered_sessions_gy']:.3g} = {b['left_for_planned_sessions_gy']:.3g} Gy left for the sessions planned")
    dsp = summary["decision_space"]
    lines.append(f"decision space: {' x '.join(dsp['dims'])} = {dsp['size']} joint candidates; {dsp['exact']}")
    if "optuna" in summary:
        lines.append(summary["optuna"]["sentence"])
    for a in summary["advisories"]:
        lines.append(f"advisory [{a['code']}]: {a['message']}")
    return "\n".join(lines)
