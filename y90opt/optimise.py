"""Optuna search over the planner's decision space, cross-checking the exact enumeration.

The planner (:mod:`y90opt.planner`) enumerates every candidate (vial, treatment time) exactly. This module
runs an Optuna study over the same candidates with the same :class:`~y90opt.planner.Evaluator` (the same
samples, hence the same probabilities) and reports whether it reaches the same answer. On spaces that can be
enumerated the two must agree; on spaces that cannot (fine grids, custom activities) the study is the search.

Objective and constraints
    Each trial is one candidate (vial v at calibration, treatment t hours after calibration). Its decayed
    vial activity is s = v · 2^(−t/T½); the trial's value is P(all primary targets met at s) (maximised)
    and, for every limit ℓ, the constraint value

        c_ℓ = (1 − risk) − P(limit ℓ kept at s),

    feasible when c_ℓ ≤ 0 (Optuna's convention; the design's "margin ≤ 0 means met"). Values within
    :data:`MARGIN_ATOL` of zero count as zero, so a limit kept with P = 1 − risk exactly is feasible here as in
    :func:`y90opt.planner.choose`. The constraints reach Optuna through one adapter,
    :func:`set_limit_constraints`, which uses Optuna 5's ``Trial.set_constraint`` (it replaces the
    samplers' deprecated ``constraints_func``; ``TPESampler`` and ``Study.best_trial`` read the values from the
    trial).

Searches (``search=``)
    ``"bracket"`` (default)
        One ordered integer parameter ``candidate``: the candidates ranked by s (ties: smaller vial, then
        earlier time). Every dose is s times a per-sample factor, so P(success) is non-decreasing along this
        axis and every P(limit kept) non-increasing: the optimum sits at the feasibility boundary of a
        one-dimensional problem. TPE proposes; :class:`WithoutReplacement` accepts a proposal that is new (not
        evaluated, not pending in the same batch) and lies inside the *monotone bracket*: strictly above the
        highest feasible candidate evaluated and below the lowest infeasible one (:func:`monotone_bracket`;
        nothing outside it can do better). Otherwise TPE draws again (:data:`REDRAWS`), then a new candidate is
        drawn uniformly inside the bracket: a randomised bisection of the feasibility boundary. The bracket
        uses only the monotonicity of the evaluator, never its values at unevaluated candidates. Were a rule to break the monotonicity, the bracket could only make the
        search miss (a reported mismatch), never make a wrong exact answer look confirmed: Optuna's answer is
        always a candidate it evaluated.
    ``"activity"``
        The same parameter and TPE, drawn without replacement but without the bracket.
    ``"decision"``
        Two ordered integer parameters ``vial`` and ``time`` (indices of the sorted vials and hours), plain
        multivariate TPE: the baseline the benchmark compares against.

    Every trial also records its candidate in the user attribute ``decision`` (``vial_gbq``,
    ``hours_after_calibration``, ``activity_at_treatment_gbq``), so the study is readable in any Optuna tool.

Batches
    Trials are asked in batches (``batch``); all their activities go through the evaluator in one vectorised
    call, then all are told. A candidate met before is not evaluated again (a cache keyed by its (vial, time)
    indices): the repeated trial still counts, at no cost.

Storage and resuming
    ``storage`` is a path (→ ``sqlite:///<absolute path>``), any Optuna RDB URL (anything containing ``://``)
    or an Optuna storage object, opened with ``load_if_exists=True`` under ``study_name`` (default: a name
    derived from the plan's fingerprint, so the same plan resumes its own study). A study records the
    fingerprint of its plan (candidates, risk, half-life, limits, the samples' hash) and the search; resuming it
    with another plan is an error. The search runs until the study holds ``trials`` COMPLETE trials, so a study
    interrupted (even by SIGKILL) resumes where its storage stands: every trial committed stays as it is and is
    not run again. Trials an interrupted run left RUNNING (asked, never told) are marked FAIL when the search
    starts and are not counted; their numbers stay in the study, so trial numbers remain contiguous. One
    process searches a study at a time (a RUNNING trial met at start is taken to be an orphan). A resumed search
    reseeds its sampler with (seed, trials already in the study), so it does not replay the first run's random
    start; a seed reproduces an uninterrupted search exactly, in any process.

Agreement with the exact answer (``matches_exact``)
    Optuna's answer (``best``) is the planning rule applied to the trials it completed (:func:`planning_rule`,
    written apart from :func:`y90opt.planner.choose`): the best feasible P(success); trials within ``tol`` of
    it are tied and go to the smaller vial, then the earlier time; with nothing feasible, the least risky
    trial. It matches the exact enumeration when both are feasible and it is the same candidate or the best
    feasible P(success) among the trials is within ``tol`` of the exact best (a candidate the planning rule
    would count as tied with the optimum), or when neither is feasible. ``gap`` is the exact best minus
    Optuna's best feasible P(success).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from . import physics
from .chance import MARGIN_ATOL, limit_margins
from .errors import InputError

#: Constraint values within this of zero count as zero (float noise in (1 − risk) − k/n).
#: Inner-sampler redraws before :class:`WithoutReplacement` falls back (see there).
REDRAWS = 1
#: TPE's random start (trials before the Parzen estimators are used).
N_STARTUP_TRIALS = 5
#: Largest batch of trials asked before telling.
MAX_BATCH = 8
SEARCHES = ("bracket", "activity", "decision")

_FINGERPRINT_ATTR = "y90opt_fingerprint"


# ---------------------------------------------------------------------------------------------------------
# constraints: one number for grid, Optuna and report


def set_limit_constraints(trial: optuna.Trial, labels: Sequence[str], margins: Sequence[float]) -> None:
    """The one adapter to Optuna's constraint API: one named constraint per limit (Optuna 5
    ``Trial.set_constraint``; feasible when every value is ≤ 0)."""
    for label, value in zip(labels, margins, strict=True):
        trial.set_constraint(str(label), float(value))


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


# ---------------------------------------------------------------------------------------------------------
# storage


def storage_url(storage: str | os.PathLike | None) -> str | None:
    """``None`` → in memory; a string containing ``://`` → an Optuna RDB URL as is; a path → SQLite."""
    if storage is None:
        return None
    text = os.fspath(storage)
    if "://" in text:
        return text
    return "sqlite:///" + os.path.abspath(text)


@contextlib.contextmanager
def reserved_storage(storage: str | os.PathLike | None, file: str = "--storage"):
    """Check, before any computation, that ``storage`` can hold a study, and hold it for this process.

    A path (SQLite): its folder must exist and be writable, an existing file must be an SQLite database, and a
    lock file beside it (``<db>.lock``, an advisory ``flock``) is held for the duration, so that a second
    process planning with the same database is refused with a clear line instead of corrupting the study
    (two writers would double the trials or fail with ``UpdateFinishedTrialError``). A run killed with
    SIGKILL leaves no lock held (the kernel releases it; the empty lock file stays): the next run resumes.
    ``sqlite:///`` URLs are locked the same way; another RDB URL (a database server) must connect and is not
    locked.
    Raises :class:`~y90opt.errors.InputError` naming the storage."""
    from .errors import InputError

    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        yield
        return
    text = os.fspath(storage)
    if not text.strip():
        raise InputError(f"{file}: an empty path")
    lock = None
    sqlite_path = text[len("sqlite:///"):] if text.startswith("sqlite:///") else (None if "://" in text else text)
    if sqlite_path is not None:
        path = os.path.abspath(sqlite_path)
        folder = os.path.dirname(path)
        if os.path.isdir(path):
            raise InputError(f"{file}: {text}: is a directory (give a database file, e.g. study.db)")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise InputError(f"{file}: {text}: the folder {folder} does not exist or cannot be written")
        import fcntl

        try:
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    head = fh.read(16)
                if head and head != b"SQLite format 3\x00":
                    raise InputError(f"{file}: {text}: exists and is not an SQLite database")
            lock = open(path + ".lock", "a+")  # noqa: SIM115 - held until the study is done
        except OSError as e:
            raise InputError(f"{file}: {text}: cannot be used ({e.strerror})") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise InputError(f"{file}: {text}: another y90opt process is planning with this database now; "
                             "wait for it to finish (then this study resumes) or use another --storage") from None
    try:
        with _quiet_optuna():
            try:
                probe = optuna.storages.RDBStorage(storage_url(text))
            except Exception as e:  # noqa: BLE001 - any driver's failure to open is bad input here
                raise InputError(f"{file}: {text}: cannot be opened as an Optuna storage ({type(e).__name__})") from None
            with contextlib.suppress(Exception):
                probe.engine.dispose()  # the probe's connections; the search opens its own
        yield
    finally:
        if lock is not None:
            lock.close()


def _open_storage(storage) -> tuple[optuna.storages.BaseStorage, str | None]:
    """The storage object and the URL (or class name) reported for it."""
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage, type(storage).__name__
    url = storage_url(storage)
    return (optuna.storages.InMemoryStorage() if url is None else optuna.storages.RDBStorage(url)), url


def _fail_orphans(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Mark FAIL the trials a previous run left RUNNING (asked, never told); returns how many."""
    study_id = storage.get_study_id_from_name(study_name)
    n = 0
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------------
# sampler


def monotone_bracket(trials: Sequence[FrozenTrial], param: str, low: int, high: int) -> tuple[int, int]:
    """The values of ``param`` that may still improve a search along an axis where the objective is
    non-decreasing and feasibility non-increasing (the activity ranking).

    Below the highest feasible value evaluated the objective cannot be larger; above the lowest infeasible value
    evaluated nothing is feasible. Returns the inclusive range strictly between the two (empty when
    ``lo > hi``), from the COMPLETE trials that carry ``param``.
    """
    lo, hi = low, high
    for t in trials:
        if t.state != TrialState.COMPLETE or param not in t.params:
            continue
        v = t.params[param]
        if is_feasible(t):
            lo = max(lo, v + 1)
        else:
            hi = min(hi, v - 1)
    return lo, hi


class WithoutReplacement(BaseSampler):
    """Wrap a sampler so the finite integer parameter ``param`` is not drawn twice while unseen values remain.

    A proposal is acceptable when no other trial of the study (finished or pending) holds it and, with
    ``bracket``, when it lies inside the monotone bracket (:func:`monotone_bracket`). An unacceptable proposal is
    redrawn from the inner sampler (relative or independent, whichever produced it) up to ``redraws`` times;
    then, with ``bracket``, a value is drawn uniformly among the unseen values inside the bracket (a randomised
    bisection, seeded by ``seed``); otherwise, or when the bracket holds none, the nearest unseen value is taken
    (the lower one on a tie); when every value is seen, the proposal stands (a repeat, which costs nothing).
    Other parameters, trial hooks and reseeding are the inner sampler's.
    """

    def __init__(
        self, inner: BaseSampler, param: str, *, bracket: bool = False, redraws: int = REDRAWS, seed: int | None = None
    ) -> None:
        self._inner = inner
        self._rng = np.random.default_rng(seed)
        self._param = param
        self._bracket = bracket
        self._redraws = redraws

    def __str__(self) -> str:
        return f"WithoutReplacement({self._inner.__class__.__name__}, {self._param!r}, bracket={self._bracket})"

    def _choose(self, study, trial, value: int, dist: BaseDistribution, redraw: Callable[[], int]) -> int:
        if not isinstance(dist, IntDistribution) or dist.step != 1 or dist.log:
            return value
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        seen = {t.params[self._param] for t in trials if self._param in t.params and t.number != trial.number}
        lo, hi = dist.low, dist.high
        blo, bhi = monotone_bracket(trials, self._param, lo, hi) if self._bracket else (lo, hi)

        def ok(v: int, a: int, b: int) -> bool:
            return a <= v <= b and v not in seen

        for _ in range(self._redraws):
            if ok(value, blo, bhi):
                return value
            value = redraw()
        if ok(value, blo, bhi):
            return value
        if self._bracket:
            inside = [v for v in range(blo, bhi + 1) if v not in seen]
            if inside:
                return int(inside[self._rng.integers(len(inside))])
        for d in range(1, hi - lo + 1):
            for cand in (value - d, value + d):
                if ok(cand, lo, hi):
                    return cand
        return value  # every value seen: a repeat, which costs nothing

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        params = self._inner.sample_relative(study, trial, search_space)
        if self._param in params:
            def redraw() -> int:
                return self._inner.sample_relative(study, trial, search_space)[self._param]

            params[self._param] = self._choose(study, trial, params[self._param], search_space[self._param], redraw)
        return params

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        value = self._inner.sample_independent(study, trial, param_name, param_distribution)
        if param_name != self._param:
            return value

        def redraw() -> int:
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        return self._choose(study, trial, value, param_distribution, redraw)

    def before_trial(self, study, trial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
        self._rng = np.random.default_rng()


def make_sampler(seed: int, search: str = "bracket") -> BaseSampler:
    """The seeded sampler of a search (see the module docstring)."""
    if search in ("bracket", "activity"):
        tpe = TPESampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS)
        return WithoutReplacement(tpe, "candidate", bracket=search == "bracket", seed=seed)
    if search == "decision":
        return TPESampler(seed=seed, multivariate=True, n_startup_trials=N_STARTUP_TRIALS)
    raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")


def _describe_sampler(seed: int, search: str) -> str:
    tpe = f"TPESampler(seed={seed}, n_startup_trials={N_STARTUP_TRIALS}"
    if search == "decision":
        return tpe + ", multivariate=True) over (vial, time) indices"
    how = " inside the monotone bracket" if search == "bracket" else ""
    return tpe + f") without replacement{how}, over the candidates ranked by activity at treatment"


def default_batch(trials: int) -> int:
    """Trials asked per batch: about √trials / 2, between 1 and :data:`MAX_BATCH` (small budgets stay
    sequential so every trial learns from the previous ones)."""
    return int(np.clip(round(np.sqrt(max(trials, 1)) / 2), 1, MAX_BATCH))


# ---------------------------------------------------------------------------------------------------------
# the search


class _Space:
    """Sorted vials and hours, their activities at treatment and the activity ranking."""

    def __init__(self, vials_gbq, hours, half_life_h: float) -> None:
        self.vials = np.asarray(vials_gbq, dtype=np.float64)
        self.hours = np.asarray(hours, dtype=np.float64)
        self.vial_order = np.argsort(self.vials, kind="stable")
        self.time_order = np.argsort(self.hours, kind="stable")
        # the same expression as the planner's enumeration, so both see bit-identical activities
        self.s = self.vials[:, None] * physics.decay_factor(self.hours[None, :], half_life_h)
        v = np.broadcast_to(self.vials[:, None], self.s.shape).ravel()
        h = np.broadcast_to(self.hours[None, :], self.s.shape).ravel()
        self.rank = np.lexsort((h, v, self.s.ravel()))  # candidate k (by activity) → flat index

    @property
    def size(self) -> int:
        return self.s.size


def _fingerprint(ev, space: _Space, risk: float, half_life_h: float) -> dict[str, Any]:
    """What the trials of a study depend on (the tie tolerance does not: it only reads them)."""
    h = hashlib.sha256()
    for a in (ev.s_lo, ev.s_hi):  # the valid samples (sorted first; the rest is +inf padding)
        h.update(np.ascontiguousarray(np.asarray(a[..., : ev.n]), dtype=np.float64).tobytes())
    return {
        "vials_gbq": [float(x) for x in space.vials],
        "hours_after_calibration": [round(float(x), 9) for x in space.hours],
        "risk": float(risk),
        "half_life_h": float(half_life_h),
        "limits": list(ev.limit_labels),
        "samples": int(ev.n),
        "evaluator_sha256": h.hexdigest(),
    }


def _default_study_name(fp: dict[str, Any], search: str) -> str:
    digest = hashlib.sha256(json.dumps([fp, search], sort_keys=True).encode()).hexdigest()
    return f"y90opt-plan-{digest[:16]}"


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _suggest(trial: optuna.Trial, space: _Space, search: str) -> tuple[int, int]:
    """Ask the trial for a candidate; returns its (vial, time) indices in the caller's order."""
    if search != "decision":
        k = trial.suggest_int("candidate", 0, space.size - 1)
        i, j = np.unravel_index(space.rank[k], space.s.shape)
        return int(i), int(j)
    a = trial.suggest_int("vial", 0, space.vials.size - 1)
    b = trial.suggest_int("time", 0, space.hours.size - 1)
    return int(space.vial_order[a]), int(space.time_order[b])


def _index_of(trial: FrozenTrial, space: _Space, search: str) -> tuple[int, int] | None:
    p = trial.params
    if search != "decision":
        if "candidate" not in p:
            return None
        i, j = np.unravel_index(space.rank[p["candidate"]], space.s.shape)
        return int(i), int(j)
    if "vial" not in p or "time" not in p:
        return None
    return int(space.vial_order[p["vial"]]), int(space.time_order[p["time"]])


def planning_rule(rows: Sequence[tuple[float, float, float, float]], tol: float) -> tuple[int, float | None]:
    """The planning rule over evaluated candidates, written apart from :func:`y90opt.planner.choose` so the
    cross-check is independent of it.

    Args:
        rows: ``(vial_gbq, hours, p_success, worst_margin[, not_preferred])`` per candidate; ``worst_margin``
            is the largest constraint value (≤ 0: feasible); ``not_preferred`` (0 or 1, default 0) is 0 on the
            scenario's preferred days.
        tol: tie tolerance on P(success).

    Returns:
        ``(k, p_max)``: the index of the chosen row (best feasible P; rows within ``tol`` of it are tied and go
        to a preferred day, then the smaller vial, then the earlier time) and the best feasible P. With no feasible row: the least
        risky row (smallest worst margin, same tie order) and ``None``.
    """
    feasible = [k for k, r in enumerate(rows) if r[3] <= 0.0]
    if feasible:
        p_max = max(rows[k][2] for k in feasible)
        tied = [k for k in feasible if rows[k][2] >= p_max - tol]
        return min(tied, key=lambda k: (rows[k][4] if len(rows[k]) > 4 else 0, rows[k][0], rows[k][1])), p_max
    m_min = min(r[3] for r in rows)
    tied = [k for k, r in enumerate(rows) if r[3] <= m_min + MARGIN_ATOL]
    return min(tied, key=lambda k: (rows[k][0], rows[k][1])), None


def optuna_search(
    ev,
    space,
    risk: float,
    tol: float,
    *,
    trials: int,
    seed: int,
    storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    exact: dict[str, Any] | None = None,
    progress: bool = False,
    half_life_h: float = physics.HALF_LIFE_H,
    search: str = "bracket",
    batch: int | None = None,
) -> dict[str, Any]:
    """Search ``space`` with Optuna and compare with the exact answer; returns a JSON-ready dict.

    Args:
        ev: the planner's :class:`~y90opt.planner.Evaluator` (``p_success(s)``, ``p_limits(s)``,
            ``limit_labels``).
        space: a :class:`~y90opt.planner.DecisionSpace` (``vials_gbq``, ``hours``).
        risk: each limit must be kept with P ≥ 1 − risk.
        tol: the tie tolerance on P(success).
        trials: run until the study holds this many COMPLETE trials.
        seed: the sampler's seed.
        storage: ``None`` (in memory), a path (SQLite), an Optuna RDB URL, or an Optuna storage object (used as
            is, e.g. a ``JournalStorage``, or an ``InMemoryStorage`` kept by the caller).
        study_name: the study to create or resume (default: derived from the plan's fingerprint).
        exact: the planner's exact choice ``{"feasible", "index": (i, j), "best_p", ...}``, or ``None``.
        progress: show a progress bar on stderr.
        half_life_h: physical half-life of Y-90 used for the decay (h).
        search: ``"bracket"`` (default), ``"activity"`` or ``"decision"`` (see the module docstring).
        batch: trials asked per batch (default :func:`default_batch`).

    Returns:
        ``trials`` (COMPLETE trials in the study), ``sampler``, ``best`` (``vial_gbq``,
        ``hours_after_calibration``, ``p_success``, ``feasible``), ``best_p_success``, ``exact_p_success``,
        ``matches_exact``, ``study_name``, ``storage``, ``resumed_trials`` (COMPLETE trials found at start),
        and ``failed_orphans``, ``new_trials``, ``evaluations``, ``unique_candidates``, ``search``, ``batch``,
        ``exact``, ``gap``, ``constraint``. ``best`` is the planning rule applied to the COMPLETE trials;
        ``best_p_success`` is the best feasible P(success) among them (``None`` when none is feasible).
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if trials < 1:
        raise ValueError(f"trials must be ≥ 1, got {trials}")
    sp = _Space(space.vials_gbq, space.hours, half_life_h)
    labels = tuple(ev.limit_labels)
    fp = _fingerprint(ev, sp, risk, half_life_h)
    name = study_name or _default_study_name(fp, search)
    batch = default_batch(trials) if batch is None else int(batch)
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")

    with _quiet_optuna():
        st, url = _open_storage(storage)
        probe = optuna.create_study(storage=st, study_name=name, direction="maximize", load_if_exists=True)
        if probe.direction != StudyDirection.MAXIMIZE:
            raise InputError(f"--study-name: study {name!r} in {url} does not maximise P(success); use another --study-name")
        recorded = probe.user_attrs.get(_FINGERPRINT_ATTR)
        key = {"plan": fp, "search": search}
        if recorded is None:
            if probe.trials:
                raise InputError(f"--study-name: study {name!r} in {url} holds trials of unknown origin; use another --study-name")
            probe.set_user_attr(_FINGERPRINT_ATTR, key)
        elif recorded != key:
            raise InputError(f"--study-name: study {name!r} in {url} was run for another plan or search; use another --study-name")
        failed = _fail_orphans(st, name)
        existing = optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False)
        resumed = sum(t.state == TrialState.COMPLETE for t in existing)
        sampler_seed = seed if not existing else int(np.random.SeedSequence([seed, len(existing)]).generate_state(1)[0])
        study = optuna.load_study(study_name=name, storage=st, sampler=make_sampler(sampler_seed, search))

        cache: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
        for t in existing:
            ij = _index_of(t, sp, search)
            if t.state == TrialState.COMPLETE and ij is not None:
                cache[ij] = (float(t.value), np.array([t.constraints[lab] for lab in labels]))

        evaluations = 0
        new = 0
        # a bar only where someone watches a long study (a terminal), never in logs or pipes
        bar = _progress_bar(trials, resumed) if progress and trials >= 100 and sys.stderr.isatty() else None
        done = resumed
        try:
            while done < trials:
                k = min(batch, trials - done)
                asked = [study.ask() for _ in range(k)]
                idx = [_suggest(t, sp, search) for t in asked]
                todo = sorted({ij for ij in idx if ij not in cache})
                if todo:
                    s = np.array([sp.s[ij] for ij in todo])
                    ps = ev.p_success(s)
                    ms = limit_margins(ev.p_limits(s), risk).reshape(len(todo), len(labels))
                    evaluations += len(todo)
                    for n_, ij in enumerate(todo):
                        cache[ij] = (float(ps[n_]), ms[n_])
                for t, ij in zip(asked, idx, strict=True):
                    p, m = cache[ij]
                    set_limit_constraints(t, labels, m)
                    t.set_user_attr("decision", {
                        "vial_gbq": float(sp.vials[ij[0]]),
                        "hours_after_calibration": float(sp.hours[ij[1]]),
                        "activity_at_treatment_gbq": float(sp.s[ij]),
                    })
                    study.tell(t, p)
                new += k
                done += k
                if bar is not None:
                    bar.n = min(done, trials)
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    rows = []
    preferred = [bool(getattr(c, "preferred", False)) for c in getattr(space, "times", ())]
    for t in complete:
        ij = _index_of(t, sp, search)
        if ij is not None:
            rows.append((float(sp.vials[ij[0]]), float(sp.hours[ij[1]]), float(t.value),
                         max(t.constraints.values(), default=0.0),
                         0 if (preferred and preferred[ij[1]]) else 1))
    k, p_max = planning_rule(rows, tol)
    best = {
        "vial_gbq": rows[k][0],
        "hours_after_calibration": rows[k][1],
        "p_success": rows[k][2],
        "feasible": rows[k][3] <= 0.0,
    }
    out: dict[str, Any] = {
        "trials": len(complete),
        "sampler": _describe_sampler(sampler_seed, search),
        "search": search,
        "batch": batch,
        "best": best,
        "best_p_success": p_max,
        "exact_p_success": None,
        "matches_exact": None,
        "exact": None,
        "gap": None,
        "study_name": name,
        "storage": url,
        "resumed_trials": resumed,
        "failed_orphans": failed,
        "new_trials": new,
        "evaluations": evaluations,
        "unique_candidates": len({(r[0], r[1]) for r in rows}),
        "constraint": "(1 - risk) - P(limit kept) <= 0 for every limit",
    }
    if exact is not None:
        out.update(compare_with_exact(best, p_max, exact, sp.vials, sp.hours, tol))
    return out


def compare_with_exact(best: dict[str, Any], best_p: float | None, exact: dict[str, Any], vials, hours,
                       tol: float) -> dict[str, Any]:
    """Compare Optuna's answer with the planner's exact choice.

    Returns ``exact`` (the exact candidate), ``exact_p_success`` (the exact best feasible P, ``None`` when
    nothing is feasible), ``gap`` (exact best − Optuna's best feasible P) and ``matches_exact``: both feasible
    and (the same candidate, or Optuna's best feasible P within ``tol`` of the exact best, i.e. tied under the
    planning rule); or neither feasible.
    """
    i, j = exact["index"]
    cand = {"vial_gbq": float(vials[i]), "hours_after_calibration": float(hours[j]), "feasible": bool(exact["feasible"])}
    if not exact["feasible"]:
        return {"exact": cand, "exact_p_success": None, "gap": None, "matches_exact": best_p is None}
    ep = float(exact["best_p"])
    if best_p is None:
        return {"exact": cand, "exact_p_success": ep, "gap": None, "matches_exact": False}
    same = (cand["vial_gbq"], cand["hours_after_calibration"]) == (best["vial_gbq"], best["hours_after_calibration"])
    gap = ep - best_p
    return {"exact": cand, "exact_p_success": ep, "gap": gap, "matches_exact": bool(same or abs(gap) <= tol + MARGIN_ATOL)}


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=min(initial, total), desc="Optuna trials", unit="trial", leave=False)
