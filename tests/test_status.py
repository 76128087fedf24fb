"""Plan status: a plan that cannot succeed never looks like one (design document, "Plan status")."""

from __future__ import annotations

import pathlib

import pytest

import y90opt

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _case(case_text: str, old: str, new: str):
    assert old in case_text
    return y90opt.parse_case(case_text.replace(old, new), "status.toml")


def test_targets_out_of_reach_give_low_success(case_text):
    """With T:N = 1.5 exactly, D_tumour = 1.5 · NTAD, so NTAD ≤ 120 Gy caps the tumour at 180 Gy < 205 Gy:
    the limits can be kept, the target cannot be met (P = 0 at every feasible candidate)."""
    case = _case(case_text, "tn_ratio = { value = 3.2, cv = 0.35 }", "tn_ratio = 1.5")
    s = y90opt.plan(case, samples=4000, seed=1, optuna_trials=0).summary
    assert s["feasible"] is True and s["status"] == "low-success"
    assert s["recommended"]["p_success"] < s["acceptable_success"]
    text = y90opt.plan(case, samples=4000, seed=1, optuna_trials=0).text()
    first = next(line for line in text.splitlines() if line.startswith("STATUS"))
    assert first.startswith("STATUS: LOW CHANCE OF SUCCESS")  # the status leads, before any order
    assert text.index("STATUS") < text.index("BEST FEASIBLE CANDIDATE (not a success")
    assert "ruled out by ntad" in text  # the cause: a larger vial breaks the NTAD limit


def test_no_candidate_keeps_the_limits_gives_infeasible(case_text):
    """A prior lung dose of 50 Gy leaves no cumulative lung budget: every candidate breaks the 50 Gy limit."""
    case = _case(case_text, "shunt_fraction = { value = 0.06, cv = 0.3 }",
                 "shunt_fraction = { value = 0.06, cv = 0.3 }\nprior_dose_gy = 50")
    s = y90opt.plan(case, samples=4000, seed=1, optuna_trials=0).summary
    assert s["feasible"] is False and s["status"] == "infeasible" and s["recommended"] is None


def test_ok_and_the_threshold_is_settable(case_text):
    case = y90opt.parse_case(case_text, "status.toml")
    s = y90opt.plan(case, samples=4000, seed=1, optuna_trials=0).summary
    p = s["recommended"]["p_success"]
    assert s["status"] == ("ok" if p >= 0.5 else "low-success")
    stricter = y90opt.plan(case, samples=4000, seed=1, optuna_trials=0, acceptable_success=min(1.0, p + 0.01)).summary
    assert stricter["status"] == "low-success" and stricter["recommended"] == s["recommended"]
    looser = _case(case_text, "vial_gbq = 7", f"vial_gbq = 7\nacceptable_success = {max(p - 0.01, 0.01)}")
    assert y90opt.plan(looser, samples=4000, seed=1, optuna_trials=0).summary["status"] == "ok"


def test_shipped_mvi_pvt_example_is_not_shown_as_a_success():
    s = y90opt.plan(str(ROOT / "configs" / "examples" / "mvi-pvt.toml"), samples=20000, seed=1, optuna_trials=0).summary
    assert s["recommended"]["p_success"] < 0.5 and s["status"] == "low-success"


@pytest.mark.parametrize("bad", [0, 1.5, -0.1])
def test_acceptable_success_is_checked(case_text, bad):
    with pytest.raises(y90opt.InputError) as e:
        _case(case_text, "vial_gbq = 7", f"vial_gbq = 7\nacceptable_success = {bad}")
    assert e.value.field == "plan.acceptable_success"
