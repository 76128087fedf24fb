"""The Optuna search of the planner: exact optimum on a case solved by hand, the constraint adapter, batching
and caching, seeds in a fresh process, and resuming a SQLite study after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from y90opt import optimise
from y90opt.optimise import (
    SEARCHES,
    compare_with_exact,
    limit_margins,
    monotone_bracket,
    optuna_search,
    planning_rule,
    set_limit_constraints,
    storage_url,
)
from y90opt.planner import CandidateTime, DecisionSpace, Evaluator, choose

HERE = os.path.dirname(os.path.abspath(__file__))
HALF_LIFE_H = 24.0  # a round half-life keeps the hand calculation exact: s = vial · 2^(−h/24)
RISK = 0.1
TOL = 0.005


def synthetic_evaluator() -> Evaluator:
    """Ten samples. Sample k meets every target from s = k + 1 GBq: P(success at s) = #{k : k + 1 ≤ s}/10.

    Limit "ntad" is broken above s = 5.5 by one sample and above 7.5 by a second one; limit "lung" above 4.5 by
    one sample and above 9 by a second. With risk 0.1 (at most one sample may break a limit) a candidate is
    feasible iff s ≤ 7.5.
    """
    s_lo = np.arange(1.0, 11.0)
    s_hi = np.array([[5.5, 7.5] + [100.0] * 8, [4.5, 9.0] + [100.0] * 8])
    return Evaluator(
        s_lo=s_lo,
        s_lo_joint=s_lo,
        s_hi=s_hi,
        s_joint=np.sort(s_hi.min(axis=0)),
        n=10,
        limit_labels=("ntad", "lung"),
    )


def synthetic_space() -> DecisionSpace:
    """Vials 2…10 GBq by 2 at 0, 24 and 48 h (decay factors 1, 1/2, 1/4); listed out of order on purpose.

    Activities s at treatment (GBq):   0 h   24 h  48 h
                               2 GBq   2     1     0.5
                               4       4     2     1
                               6       6     3     1.5
                               8       8     4     2
                              10      10     5     2.5
    Feasible iff s ≤ 7.5: the best is 6 GBq at 0 h (s = 6, P = 0.6), unique; next 10 GBq at 24 h (0.5).
    """
    times = tuple(CandidateTime(h, f"+{h:g} h", f"+{h:g} h") for h in (24.0, 0.0, 48.0))
    return DecisionSpace((8.0, 2.0, 6.0, 10.0, 4.0), times, "test", "test")


def exact_choice(ev, space, risk=RISK):
    vials = np.asarray(space.vials_gbq)
    hours = space.hours
    s = vials[:, None] * 2.0 ** (-hours[None, :] / HALF_LIFE_H)
    return choose(ev.p_success(s), ev.p_limits(s), vials, hours, risk, TOL)


def test_hand_solution_is_the_planner_choice():
    ev, space = synthetic_evaluator(), synthetic_space()
    ch = exact_choice(ev, space)
    i, j = ch["index"]
    assert (space.vials_gbq[i], space.hours[j]) == (6.0, 0.0)
    assert ch["best_p"] == pytest.approx(0.6)


# --- constraints -----------------------------------------------------------------------------------------


def test_limit_margins_agree_with_the_planner_feasibility():
    rng = np.random.default_rng(1)
    n = 200
    p = rng.integers(0, n + 1, size=(40, 7, 3)) / n  # probabilities k/n, as the evaluator returns them
    p[0, 0] = 1 - 0.05  # exactly at the boundary: kept often enough
    ps = rng.random((40, 7))
    for risk in (0.05, 0.1, 0.2):
        m = limit_margins(p, risk)
        ch = choose(ps, p, np.arange(40.0), np.arange(7.0), risk, TOL)
        np.testing.assert_array_equal(np.all(m <= 0, axis=-1), ch["feasible_mask"])
    assert np.all(limit_margins(p[0, 0], 0.05) == 0.0)
    assert limit_margins(0.94, 0.05) > 0 and limit_margins(0.96, 0.05) < 0


def test_constraint_adapter_marks_infeasible_trials():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    good, bad = study.ask(), study.ask()
    set_limit_constraints(good, ("ntad", "lung"), limit_margins([0.95, 1.0], 0.05))
    set_limit_constraints(bad, ("ntad", "lung"), limit_margins([0.90, 1.0], 0.05))
    study.tell(good, 0.5)
    study.tell(bad, 0.9)  # better objective, but breaks "ntad"
    t_good, t_bad = study.trials
    assert t_good.constraints == {"ntad": 0.0, "lung": pytest.approx(-0.05)}
    assert t_bad.constraints["ntad"] == pytest.approx(0.05)
    assert optimise.is_feasible(t_good) and not optimise.is_feasible(t_bad)
    assert study.best_trial.number == t_good.number  # Optuna itself reads the constraints


def test_search_records_infeasible_trials_as_infeasible():
    ev, space = synthetic_evaluator(), synthetic_space()
    storage = optuna.storages.InMemoryStorage()
    out = optuna_search(ev, space, RISK, TOL, trials=15, seed=0, storage=storage, study_name="s",
                        half_life_h=HALF_LIFE_H)
    assert out["storage"] == "InMemoryStorage"
    study = optuna.load_study(study_name="s", storage=storage)
    assert out["trials"] == len(study.trials) == 15
    for t in study.trials:
        d = t.user_attrs["decision"]
        assert set(t.constraints) == {"ntad", "lung"}
        assert optimise.is_feasible(t) == (d["activity_at_treatment_gbq"] <= 7.5)
    assert study.best_trial.user_attrs["decision"]["activity_at_treatment_gbq"] == 6.0


# --- finding the optimum ---------------------------------------------------------------------------------


@pytest.mark.parametrize("search", SEARCHES)
def test_finds_the_exact_optimum(search):
    ev, space = synthetic_evaluator(), synthetic_space()
    ch = exact_choice(ev, space)
    trials = 15 if search != "decision" else 60  # plain TPE repeats candidates; give it more trials
    for seed in range(3):
        out = optuna_search(ev, space, RISK, TOL, trials=trials, seed=seed, exact=ch, half_life_h=HALF_LIFE_H,
                            search=search)
        assert out["best"] == {"vial_gbq": 6.0, "hours_after_calibration": 0.0, "p_success": pytest.approx(0.6),
                               "feasible": True}
        assert out["matches_exact"] is True
        assert out["best_p_success"] == out["exact_p_success"] == pytest.approx(0.6)
        assert out["gap"] == pytest.approx(0.0)
        assert out["trials"] == trials
        json.dumps(out)  # JSON-ready


def test_bracket_finds_the_optimum_with_half_the_candidates():
    ev, space = synthetic_evaluator(), synthetic_space()
    ch = exact_choice(ev, space)
    for seed in range(10):
        out = optuna_search(ev, space, RISK, TOL, trials=8, seed=seed, exact=ch, half_life_h=HALF_LIFE_H)
        assert out["matches_exact"], seed


def test_nothing_feasible():
    ev, space = synthetic_evaluator(), synthetic_space()
    # every sample breaks the lung limit at every candidate
    bad = Evaluator(ev.s_lo, ev.s_lo_joint, np.full((1, 10), 0.1), np.full(10, 0.1), 10, ("lung",))
    ch = exact_choice(bad, space)
    assert not ch["feasible"]
    out = optuna_search(bad, space, RISK, TOL, trials=15, seed=0, exact=ch, half_life_h=HALF_LIFE_H)
    assert out["best"]["feasible"] is False
    assert out["best_p_success"] is None and out["exact_p_success"] is None
    assert out["matches_exact"] is True
    # the least risky candidate; all break the limit equally: the smallest vial, the earliest time
    assert (out["best"]["vial_gbq"], out["best"]["hours_after_calibration"]) == (2.0, 0.0)
    json.dumps(out)


def test_matches_exact_definition():
    vials, hours = np.array([2.0, 4.0]), np.array([0.0, 24.0])
    exact = {"feasible": True, "index": (1, 0), "best_p": 0.80}
    same = {"vial_gbq": 4.0, "hours_after_calibration": 0.0, "p_success": 0.79, "feasible": True}
    other = {"vial_gbq": 2.0, "hours_after_calibration": 0.0, "p_success": 0.797, "feasible": True}
    assert compare_with_exact(same, 0.79, exact, vials, hours, TOL)["matches_exact"]  # same candidate
    assert compare_with_exact(other, 0.797, exact, vials, hours, TOL)["matches_exact"]  # tied within tol
    r = compare_with_exact(other, 0.79, exact, vials, hours, TOL)
    assert not r["matches_exact"] and r["gap"] == pytest.approx(0.01)
    infeasible = {"feasible": False, "index": (0, 1), "best_p": float("nan")}
    assert compare_with_exact(other, None, infeasible, vials, hours, TOL)["matches_exact"]
    assert not compare_with_exact(other, 0.797, infeasible, vials, hours, TOL)["matches_exact"]
    assert not compare_with_exact(other, None, exact, vials, hours, TOL)["matches_exact"]


def test_planning_rule_ties_go_to_smaller_vial_then_earlier_time():
    rows = [(6.0, 0.0, 0.600, -0.1), (4.0, 24.0, 0.598, -0.1), (4.0, 0.0, 0.597, -0.1), (8.0, 0.0, 0.9, 0.1)]
    k, p_max = planning_rule(rows, TOL)
    assert k == 2 and p_max == 0.600
    k, _ = planning_rule(rows, 0.0)
    assert k == 0


def test_monotone_bracket():
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.IntDistribution(0, 20)
    for v, c in ((3, -0.1), (12, 0.2), (7, 0.0), (15, 0.3)):
        study.add_trial(optuna.trial.create_trial(params={"candidate": v}, distributions={"candidate": dist},
                                                  value=v / 20, constraints={"ntad": c}))
    assert monotone_bracket(study.trials, "candidate", 0, 20) == (8, 11)


# --- batches and the cache -------------------------------------------------------------------------------


class CountingEvaluator:
    """Wraps an evaluator and records the size of every p_success call."""

    def __init__(self, ev):
        self._ev = ev
        self.calls: list[int] = []
        self.limit_labels, self.s_lo, self.s_hi, self.n = ev.limit_labels, ev.s_lo, ev.s_hi, ev.n

    def p_success(self, s):
        self.calls.append(np.size(s))
        return self._ev.p_success(s)

    def p_limits(self, s):
        return self._ev.p_limits(s)


def test_batches_are_vectorised_and_repeats_cost_nothing():
    ev = CountingEvaluator(synthetic_evaluator())
    space = synthetic_space()
    out = optuna_search(ev, space, RISK, TOL, trials=40, seed=0, half_life_h=HALF_LIFE_H, search="decision", batch=4)
    assert out["trials"] == out["new_trials"] == 40
    assert len(ev.calls) <= 10  # at most one evaluator call per batch of 4
    assert sum(ev.calls) == out["evaluations"] == out["unique_candidates"] <= 15  # each candidate at most once
    assert max(ev.calls) > 1  # several activities in one call


def test_default_batch():
    assert optimise.default_batch(1) == 1
    assert optimise.default_batch(15) == 2
    assert optimise.default_batch(200) == 7
    assert optimise.default_batch(10_000) == optimise.MAX_BATCH


# --- storage ---------------------------------------------------------------------------------------------


def test_storage_url(tmp_path, monkeypatch):
    assert storage_url(None) is None
    assert storage_url(tmp_path / "s.db") == "sqlite:///" + str(tmp_path / "s.db")
    monkeypatch.chdir(tmp_path)
    assert storage_url("rel.db") == "sqlite:///" + os.path.join(str(tmp_path), "rel.db")
    url = "postgresql+psycopg2://user@host/db"
    assert storage_url(url) == url


def test_resume_counts_complete_trials_and_checks_the_plan():
    ev, space = synthetic_evaluator(), synthetic_space()
    db = optuna.storages.InMemoryStorage()
    kw = dict(seed=0, storage=db, study_name="s", half_life_h=HALF_LIFE_H)
    first = optuna_search(ev, space, RISK, TOL, trials=6, **kw)
    assert (first["trials"], first["resumed_trials"], first["new_trials"]) == (6, 0, 6)
    assert first["study_name"] == "s"
    again = optuna_search(ev, space, RISK, TOL, trials=10, **kw)
    assert (again["trials"], again["resumed_trials"], again["new_trials"]) == (10, 6, 4)
    done = optuna_search(ev, space, RISK, TOL, trials=8, **kw)  # already more than asked: nothing to run
    assert (done["trials"], done["new_trials"]) == (10, 0)
    with pytest.raises(ValueError, match="another plan"):
        optuna_search(ev, space, 0.2, TOL, trials=12, **kw)  # another risk: another plan
    # without a name, the plan's fingerprint names the study: the same plan resumes its own study
    a = optuna_search(ev, space, RISK, TOL, trials=3, seed=0, storage=db, half_life_h=HALF_LIFE_H)
    b = optuna_search(ev, space, RISK, TOL, trials=5, seed=0, storage=db, half_life_h=HALF_LIFE_H)
    assert a["study_name"] == b["study_name"] != "s" and b["resumed_trials"] == 3


def test_orphaned_running_trials_are_failed_and_not_counted():
    ev, space = synthetic_evaluator(), synthetic_space()
    db = optuna.storages.InMemoryStorage()
    kw = dict(seed=0, storage=db, study_name="s", half_life_h=HALF_LIFE_H)
    optuna_search(ev, space, RISK, TOL, trials=5, **kw)
    study = optuna.load_study(study_name="s", storage=db)
    orphan = study.ask()
    orphan.suggest_int("candidate", 0, 14)  # asked and suggested, never told: what a kill leaves behind
    study.ask()
    out = optuna_search(ev, space, RISK, TOL, trials=9, **kw)
    assert out["failed_orphans"] == 2 and out["trials"] == 9 and out["resumed_trials"] == 5
    trials = optuna.load_study(study_name="s", storage=db).trials
    assert [t.number for t in trials] == list(range(11))
    assert [t.state for t in trials[5:7]] == [TrialState.FAIL] * 2
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 9


# --- fresh processes: seeds and SIGKILL ------------------------------------------------------------------

CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import optuna
import test_optimise as t
from y90opt.optimise import optuna_search
args = json.loads(sys.argv[1])
if args.pop("memory", False):
    args["storage"] = optuna.storages.InMemoryStorage()
out = optuna_search(t.synthetic_evaluator(), t.synthetic_space(), t.RISK, t.TOL, half_life_h=t.HALF_LIFE_H, **args)
if isinstance(args["storage"], optuna.storages.BaseStorage):
    out["sequence"] = t.sequence(args["storage"], args["study_name"])
print(json.dumps(out))
"""


def _child(args: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHASHSEED="random")
    return subprocess.Popen([sys.executable, "-c", CHILD.format(here=HERE), json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def sequence(storage, name: str) -> list:
    """The trials of a study as JSON-ready (number, state, params, value, constraints)."""
    study = optuna.load_study(study_name=name, storage=storage)
    return [[t.number, t.state.name, t.params, t.value, t.constraints] for t in study.trials]


@pytest.mark.parametrize("search", SEARCHES)
def test_same_seed_same_trials_in_a_fresh_process(search):
    ev, space = synthetic_evaluator(), synthetic_space()
    args = dict(trials=12, seed=7, search=search, batch=3, study_name="s")
    mine = optuna.storages.InMemoryStorage()
    optuna_search(ev, space, RISK, TOL, storage=mine, half_life_h=HALF_LIFE_H, **args)
    proc = _child(dict(args, memory=True))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    theirs = json.loads(stdout)["sequence"]
    assert json.loads(json.dumps(sequence(mine, "s"))) == theirs
    other = optuna.storages.InMemoryStorage()
    optuna_search(ev, space, RISK, TOL, storage=other, half_life_h=HALF_LIFE_H, **dict(args, seed=8))
    assert [p for _, _, p, _, _ in sequence(other, "s")] != [p for _, _, p, _, _ in sequence(mine, "s")]


def _complete_count(db: str) -> int:
    try:
        with sqlite3.connect(db, timeout=1.0) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return 0


def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path):
    db = str(tmp_path / "killed.db")
    proc = _child(dict(trials=100_000, seed=0, storage=db, study_name="k", batch=4))
    deadline = time.monotonic() + 120
    try:
        # 14 is not a multiple of the batch (4): the kill lands inside a batch, whose asked but untold trials
        # are left RUNNING
        while _complete_count(db) < 14:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the study did not start"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    before = optuna.load_study(study_name="k", storage=storage_url(db)).trials
    committed = {t.number: (t.params, t.value, t.constraints) for t in before if t.state == TrialState.COMPLETE}
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    target = len(committed) + 10

    ev, space = synthetic_evaluator(), synthetic_space()
    out = optuna_search(ev, space, RISK, TOL, trials=target, seed=0, storage=db, study_name="k",
                        half_life_h=HALF_LIFE_H, batch=4, exact=exact_choice(ev, space))
    assert out["resumed_trials"] == len(committed)
    assert out["failed_orphans"] == len(running)
    assert out["trials"] == target

    after = optuna.load_study(study_name="k", storage=storage_url(db)).trials
    numbers = [t.number for t in after]
    assert numbers == list(range(len(after)))  # contiguous, no duplicates
    assert sum(t.state == TrialState.COMPLETE for t in after) == target
    assert not any(t.state == TrialState.RUNNING for t in after)
    assert all(after[k].state == TrialState.FAIL for k in running)
    for k, rec in committed.items():  # nothing committed was lost or rewritten
        assert (after[k].params, after[k].value, after[k].constraints) == rec
    assert len(after) - len(before) == target - len(committed)  # only the missing trials were run


# --- through the planner ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ranges", [(None, None, None), ((3.0, 20.0, 1.0), (72.0, 216.0, 6.0), 60)])
def test_plan_cross_check_matches_the_enumeration(write_case, case_text, ranges):
    from y90opt.case import load_case
    from y90opt.planner import plan_case

    vial_range, hours_range, trials = ranges
    case = load_case(write_case(case_text))
    res = plan_case(case, n=5000, seed=0, dtype="float64", vial_range=vial_range, hours_range=hours_range,
                    optuna_trials=trials)
    o = res.summary["optuna"]
    assert o["matches_exact"] is True
    assert o["trials"] == (trials or min(200, res.summary["candidates"] // 2))
    rec = res.summary["recommended"]
    assert o["exact"]["vial_gbq"] == rec["vial_gbq"]
    assert o["exact"]["hours_after_calibration"] == rec["hours_after_calibration"]
