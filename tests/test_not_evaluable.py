"""Rules a case cannot evaluate: `dose` and `simulate` never refuse a valid case because of its scenario;
`plan` refuses with a message naming the field and a fix, and the fix, followed, gives a working plan."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tomllib

import pytest
import tomli_w

import y90opt
from y90opt.cli import main
from y90opt.scenarios import scenario_ids

#: Scenarios of one injection (the modified radiation lobectomy's rules name two injections: tests/test_treatment.py).
SCENARIOS = [s for s in scenario_ids() if s != "modified-radiation-lobectomy"]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def no_tumour_case(scenario: str) -> dict:
    """A single-compartment lobar case as the package insert's worked examples give it: no tumour listed."""
    return {
        "name": f"no-tumour-{scenario}",
        "scenario": scenario,
        "liver": {"perfused_volume_ml": {"value": 1000, "cv": 0.1}, "whole_liver_volume_ml": 1800},
        "lung": {"shunt_fraction": {"value": 0.05, "cv": 0.2}},
        "delivery": {"residual_fraction": 0.01},
        "vials": {"calibration": "2026-12-06T12:00:00-05:00", "activities_gbq": [3, 5, 7, 10, 15, 20]},
        "plan": {"vial_gbq": 3, "treatment": "2026-12-09T12:00:00-05:00"},
    }


def follow_advice(doc: dict, message: str) -> dict:
    """Apply the "[rules] ... alternatives = [...] and remove = [...]" advice of a refusal to the case."""
    fix = message.split("add to [rules]", 1)[1]
    rules = doc.setdefault("rules", {})
    for key in ("alternatives", "remove"):
        m = re.search(key + r" = (\[[^\]]*\])", fix)
        if m:
            rules[key] = list(rules.get(key, [])) + json.loads(m.group(1))
    return doc


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dose_and_simulate_work_without_a_tumour_under_every_scenario(scenario, write_case):
    path = write_case(tomli_w.dumps(no_tumour_case(scenario)))
    code, out, err = run_cli(["dose", path, "--json"])
    assert code == 0, err
    d = json.loads(out)
    # the single-compartment dose needs no rule: D = K·A_liver/M (K 50 Gy·kg/GBq, 1000 mL at 1.03 g/mL)
    a_liver = d["activity_gbq"]["liver"]
    assert d["dose_gy"]["perfused_mean"] == pytest.approx(50.0 * a_liver / 1.03, rel=1e-9)
    statuses = {r["label"]: r["status"] for r in d["rules"]}
    tumour_rules = {r["id"] for s in y90opt.list_scenarios() if s["id"] == scenario
                    for r in s["targets"] + s["limits"] if r["quantity"] == "tumors"}
    assert {ne["id"] for ne in d["rules_not_evaluable"]} == tumour_rules
    for ne in d["rules_not_evaluable"]:
        assert statuses[ne["id"]] == "not evaluable" and ne["reason"] and ne["field"] == "tumors"
    if not any(r["kind"] == "target" and r["status"] != "not evaluable" for r in d["rules"]):
        assert d["targets_met"] is None  # nothing to meet: undefined, never a vacuous true
    code, out, err = run_cli(["simulate", path, "--json", "--samples", "2000"])
    assert code == 0, err
    s = json.loads(out)
    listed = {r["label"] for r in s["rules"] if r.get("status") == "not evaluable"}
    assert listed == {ne["id"] for ne in d["rules_not_evaluable"]}
    if not any(r["kind"] == "target" for r in s["rules"] if r.get("status") != "not evaluable"):
        assert s["p_success"] is None  # no primary target: success is undefined, never a vacuous 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_plan_refuses_then_its_advice_gives_a_working_plan(scenario, write_case):
    doc = no_tumour_case(scenario)
    for _ in range(3):  # each refusal names one field; following its advice must end in a plan
        path = write_case(tomli_w.dumps(doc))
        code, out, err = run_cli(["plan", path, "--json", "--samples", "4000", "--optuna-trials", "0"])
        if code == 0:
            break
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert path in err and "add to [rules]" in err, err
        doc = follow_advice(doc, err)
    else:
        pytest.fail(f"the advice did not lead to a plan: {err}")
    summary = json.loads(out)
    assert summary["status"] in ("ok", "low-success", "infeasible")
    judged = {r["quantity"] for r in summary["rules"] if r["kind"] == "target" and r["level"] == "primary"}
    assert judged == {"perfused_mean"}  # the single-compartment alternative's target, nothing about tumours


def test_a_whole_liver_limit_without_the_volume(case_text, write_case):
    text = case_text.replace('scenario = "multifocal-unilobar"', 'scenario = "multifocal-bilobar"')
    text = text.replace("whole_liver_volume_ml = 1800\n", "")
    path = write_case(text)
    code, out, _ = run_cli(["dose", path, "--json"])
    assert code == 0
    row = next(r for r in json.loads(out)["rules"] if r["label"] == "whole-normal-liver")
    assert row["status"] == "not evaluable" and "whole-liver volume" in row["reason"]
    code, out, err = run_cli(["plan", path, "--samples", "2000"])
    assert code == 2 and "liver.whole_liver_volume_ml" in err and err.count("\n") == 1
    # the same refusal through the API: one documented exception with the same line
    with pytest.raises(y90opt.InputError) as e:
        y90opt.plan(y90opt.load_case(path), samples=2000)
    assert f"y90opt: {e.value}\n" == err and e.value.field == "liver.whole_liver_volume_ml"


def test_an_untreated_tumour_only(case_text, write_case):
    path = write_case(case_text.replace('name = "T1"', 'name = "T1"\ntreated = false'))
    code, out, _ = run_cli(["dose", path, "--json"])
    assert code == 0
    rows = {r["label"]: r for r in json.loads(out)["rules"]}
    assert rows["tumor"]["status"] == "not evaluable" and rows["ntad"]["status"] in ("kept", "EXCEEDED")
    code, _, err = run_cli(["plan", path, "--samples", "2000"])
    assert code == 2 and "tumors" in err and 'alternatives = ["single-compartment-lobar"]' in err


def test_no_primary_target_left_is_not_evaluable_for_dose_but_refused_by_plan(case_text, write_case):
    path = write_case(case_text + '\n[rules]\nremove = ["tumor"]\n')
    assert run_cli(["dose", path])[0] == 0
    code, _, err = run_cli(["plan", path, "--samples", "2000"])
    assert code == 2 and "no primary target left" in err and "add to [rules]" in err


def test_the_lobectomy_single_compartment_recipe_of_its_scenario_file_plans():
    """The recipe in the header of radiation-lobectomy.toml works as written (it was refused before)."""
    from y90opt.scenarios import scenario_dir

    text = (scenario_dir() / "radiation-lobectomy.toml").read_text()
    recipe = re.search(r"#   \[rules\]\n#   alternatives = (\[.*?\])\n#   remove = (\[.*?\])", text)
    doc = no_tumour_case("radiation-lobectomy")
    doc["rules"] = {"alternatives": json.loads(recipe.group(1)), "remove": json.loads(recipe.group(2))}
    res = y90opt.plan(y90opt.parse_case(doc, "lobectomy.toml"), samples=4000, optuna_trials=0)
    rules = {r["id"]: r for r in res.summary["rules"]}
    # a prescription with a ceiling: 140 Gy to reach, 150 Gy not to pass (DSC 2022 Scenario 2, item 2)
    assert rules["lobar-140"]["min_gy"] == 140 and rules["lobar-max"]["max_gy"] == 150
    assert res.summary["status"] in ("ok", "low-success")
    assert tomllib.loads(res.dataset.attrs["case_toml"])["rules"] == doc["rules"]
