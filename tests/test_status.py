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


@pytest.mark.parametrize("example", ["multifocal-unilobar", "radiation-segmentectomy", "radiation-lobectomy",
                                     "multifocal-bilobar", "mvi-pvt", "infeasible", "fixed-date"])
def test_the_summary_read_before_the_dataset_is_the_datasets(example, case_text):
    """`plan --json` reads its summary from the plan's fields without building the xarray Dataset; the summary
    read from the Dataset built later is the same, for every shipped single-injection example, an infeasible
    plan (whose advice reads a limit's curve) and a fixed-date plan."""
    import json

    from y90opt.plan_summary import summarize_plan

    kwargs = {}
    if example == "infeasible":
        case = _case(case_text, "shunt_fraction = { value = 0.06, cv = 0.3 }",
                     "shunt_fraction = { value = 0.06, cv = 0.3 }\nprior_dose_gy = 50")
    elif example == "fixed-date":
        case, kwargs = y90opt.load_case(ROOT / "configs" / "examples" / "multifocal-unilobar.toml"), {"fixed_date": True}
    else:
        case = y90opt.load_case(ROOT / "configs" / "examples" / f"{example}.toml")
    from y90opt.results import Fields

    res = y90opt.plan(case, samples=3000, seed=2, optuna_trials=5, **kwargs)
    fields = res.data
    assert isinstance(fields, Fields)  # the summary was read before any Dataset was built
    early = json.dumps(res.summary, sort_keys=True, default=str)
    assert json.dumps(summarize_plan(res.dataset), sort_keys=True, default=str) == early
    assert json.dumps(summarize_plan(fields), sort_keys=True, default=str) == early
    assert dict(res.dataset.attrs) == fields.attrs


def test_plan_json_never_imports_xarray(tmp_path):
    """`y90opt plan --json` without --out prints its summary without importing xarray (nor dask through it):
    the import costs about a second of start-up that the answer does not need."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys; from y90opt.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main(['plan', {str(ROOT / 'configs' / 'examples' / 'multifocal-unilobar.toml')!r}, '--samples', "
            "'2000', '--optuna-trials', '3', '--json'])\n"
            "print(rc, 'xarray' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["0", "False", "False"]
