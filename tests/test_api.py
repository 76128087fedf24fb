"""The public API: docs/api.md runs as written, summaries equal the CLI's JSON for the same arguments, and
bad input raises the one documented exception with the CLI's line."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re

import pytest

import y90opt
from y90opt.cli import main
from y90opt.textout import dumps

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.toml"))


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_docs_api_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documentation's own code
    out = capsys.readouterr().out
    assert "GBq at calibration" in out and "the perfused dose depends most on" in out
    assert "bad.toml: liver.perfused_volume_ml:" in out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_dose_summary_equals_the_cli_json(path):
    case = y90opt.load_case(path)
    # a prescription inverts one vial's dose: a case of several injections has none to invert
    prescribe = {} if case.multi else {"normal_perfused": 100}
    code, out, _ = run_cli(["dose", str(path), "--json", *(["--prescribe", "normal_perfused=100"] if prescribe else [])])
    assert code == 0
    assert json.loads(out) == json.loads(dumps(y90opt.dose(case, prescribe=prescribe).summary))


@pytest.mark.parametrize("path", EXAMPLES[:2], ids=[p.stem for p in EXAMPLES[:2]])
def test_simulate_plan_sensitivity_summaries_equal_the_cli_json(path):
    code, out, _ = run_cli(["simulate", str(path), "--json", "--samples", "3000", "--seed", "7"])
    assert code == 0
    assert json.loads(out) == json.loads(dumps(y90opt.simulate(str(path), samples=3000, seed=7).summary))
    code, out, _ = run_cli(["plan", str(path), "--json", "--samples", "3000", "--seed", "7", "--optuna-trials", "4"])
    assert code == 0
    assert json.loads(out) == json.loads(dumps(y90opt.plan(str(path), samples=3000, seed=7, optuna_trials=4).summary))
    code, out, _ = run_cli(["sensitivity", str(path), "--json", "--samples", "128", "--seed", "7", "--bootstrap", "10"])
    assert code == 0
    res = y90opt.sensitivity(str(path), samples=128, seed=7, bootstrap=10)
    assert json.loads(out) == json.loads(dumps(res.summary))


def test_scenarios_equal_the_cli_json():
    code, out, _ = run_cli(["scenarios", "--json"])
    assert code == 0 and json.loads(out) == json.loads(dumps(y90opt.list_scenarios()))


def test_parse_case_from_a_mapping_equals_the_file(case_text):
    """A case built as a mapping is the same case as its file: same checks, same doses."""
    import tomllib

    from_text = y90opt.parse_case(case_text, "a.toml")
    from_map = y90opt.parse_case(tomllib.loads(case_text), "a.toml")
    assert y90opt.dose(from_text).summary == y90opt.dose(from_map).summary
    assert tomllib.loads(from_map.text) == tomllib.loads(case_text)


@pytest.mark.parametrize("bad, field", [
    ({"liver": {"perfused_volume_ml": "big"}}, "liver.perfused_volume_ml"),
    ({"lung": {"shunt_fraction": 1.5}}, "lung.shunt_fraction"),
    ({"plan": {"vial_gbq": -1}}, "plan.vial_gbq"),
    ({"colour": "red"}, "colour"),
])
def test_bad_input_raises_the_documented_exception_with_the_cli_line(case_text, write_case, bad, field):
    import tomllib

    import tomli_w

    doc = tomllib.loads(case_text)
    for k, v in bad.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) and k in doc else v
    path = write_case(tomli_w.dumps(doc))
    with pytest.raises(y90opt.InputError) as e:
        y90opt.load_case(path)
    assert e.value.field == field
    code, _, err = run_cli(["dose", path])
    assert code == 2 and err == f"y90opt: {e.value}\n"
    with pytest.raises(y90opt.InputError):
        y90opt.parse_case(doc, path)


@pytest.mark.parametrize("call, flag", [
    (lambda c: y90opt.simulate(c, samples=0), "--samples"),
    (lambda c: y90opt.simulate(c, samples=2.5), "--samples"),
    (lambda c: y90opt.simulate(c, seed=-1), "--seed"),
    (lambda c: y90opt.simulate(c, dtype="float16"), "--dtype"),
    (lambda c: y90opt.sensitivity(c, samples=10), "--samples"),
    (lambda c: y90opt.plan(c, samples=1000, risk=2.0), "--risk"),
    (lambda c: y90opt.dose(c, prescribe={"lung": -3}), "--prescribe"),
    (lambda c: y90opt.dose(c, prescribe={"spleen": 3}), "--prescribe"),
])
def test_bad_arguments_raise_the_documented_exception(case_text, call, flag):
    with pytest.raises(y90opt.InputError) as e:
        call(y90opt.parse_case(case_text, "a.toml"))
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_prescription_reports_the_doses_at_the_prescribed_activity(case_text):
    """At the activity that gives 120 Gy to the NTAD every dose scales by the same factor (dose ∝ activity,
    the prior lung dose apart): an independent check of the inverse and of the doses beside it."""
    case = y90opt.parse_case(case_text, "a.toml")
    res = y90opt.dose(case, prescribe={"normal_perfused": 120})
    base, p = res.summary, res.summary["prescriptions"][0]
    ratio = p["vial_at_treatment_gbq"] / base["activity_gbq"]["vial_at_treatment"]
    assert p["doses_gy"]["normal_perfused"] == pytest.approx(120, rel=1e-12)
    for q in ("perfused_mean", "lung", "whole_normal_liver"):
        assert p["doses_gy"][q] == pytest.approx(base["dose_gy"][q] * ratio, rel=1e-12)
    assert p["doses_gy"]["tumors"]["T1"] == pytest.approx(base["dose_gy"]["tumors"]["T1"] * ratio, rel=1e-12)
    assert "the doses at that activity" in res.text()


def test_write_report_refuses_a_file(tmp_path, case_text):
    res = y90opt.plan(y90opt.parse_case(case_text, "a.toml"), samples=2000, optuna_trials=0)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(y90opt.InputError):
        res.write_report(f)
    page = res.write_report(tmp_path / "out")
    assert pathlib.Path(page).name == "report.html" and (tmp_path / "out" / "plan.nc").is_file()
