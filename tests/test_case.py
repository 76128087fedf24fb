"""Case-file validation: every bad input is one line naming the file and the field, exit status 2."""

import contextlib
import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from y90opt.case import CaseError, parse_case
from y90opt.cli import main
from y90opt.uncertainty import LogNormal, Normal


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_parses_pinned_example(case_text):
    c = parse_case(case_text, "x.toml")
    assert c.tumor_names == ("T1",)
    assert isinstance(c.perfused_volume_ml, LogNormal)
    assert c.perfused_volume_ml.cv == pytest.approx(0.12)
    assert c.treatment_hours() == pytest.approx(72.0)
    assert c.text == case_text  # nothing the user gave is lost or altered


BAD = [
    ("scenario = \"multifocal-unilobar\"", "scenario = \"nope\"", "scenario"),
    ("[liver]\n", "[liver]\ncolour = 1\n", "liver.colour"),
    ("perfused_volume_ml = { value = 1100, cv = 0.12 }", "perfused_volume_ml = -5", "liver.perfused_volume_ml"),
    ("perfused_volume_ml = { value = 1100, cv = 0.12 }", "perfused_volume_ml = { value = 1100, cv = 0.12, sd = 2 }", "liver.perfused_volume_ml.sd"),
    ("shunt_fraction = { value = 0.06, cv = 0.3 }", "shunt_fraction = 1.2", "lung.shunt_fraction"),
    ("shunt_fraction = { value = 0.06, cv = 0.3 }", "shunt_fraction = { dist = \"normal\", mean = 0.02, sd = 0.02 }", "lung.shunt_fraction"),
    ("residual_fraction = 0.01", "residual_fraction = 1.0", "delivery.residual_fraction"),
    ("volume_ml = { value = 180, cv = 0.17 }", "volume_ml = 1200", "tumors"),
    ("whole_liver_volume_ml = 1800", "whole_liver_volume_ml = 900", "liver.whole_liver_volume_ml"),
    ("treatment = \"2026-12-09T12:00:00-05:00\"", "treatment = \"2026-12-01T12:00:00-05:00\"", "plan.treatment"),
    ("calibration = \"2026-12-06T12:00:00-05:00\"", "calibration = \"2026-12-06T12:00:00\"", "vials.calibration"),
    ("calibration = \"2026-12-06T12:00:00-05:00\"", "calibration = 2026-12-06T12:00:00", "vials.calibration"),
    ("vial_gbq = 7", "vial_gbq = 0", "plan.vial_gbq"),
    ("vial_gbq = 7", "vial_gbq = 7\nrisk = 1.5", "plan.risk"),
    ("vial_gbq = 7", "vial_gbq = 7\nsite_timezone = \"Mars/Base\"", "plan.site_timezone"),
    ("name = \"T1\"", "name = \"T 1\"", "tumors[0].name"),
    ("tn_ratio = { value = 3.2, cv = 0.35 }", "tn_ratio = { dist = \"weibull\", k = 2 }", "tumors[0].tn_ratio.dist"),
    ("[vials]\n", "[vials]\nactivities_gbq = { min = 3, max = 20, step = 0 }\n", "vials.activities_gbq.step"),
    ("[plan]\n", "[[correlations]]\ninputs = [\"lung.shunt_fraction\", \"lung.mass_kg\"]\nrho = 0.5\n\n[plan]\n", "correlations[0].inputs[1]"),
    # a rule the case cannot evaluate is not bad input for the case (tests/test_not_evaluable.py: plan refuses)
    ("whole_liver_volume_ml = 1800\n", "", None),  # fine for scenario 3: no rule needs it
    ("vial_gbq = 7", "vial_gbq = 7\nsuccess = \"index-tumor\"\nindex_tumor = \"T9\"", "plan.index_tumor"),
    ("vial_gbq = 7", "vial_gbq = 7\nprocedure_time = \"10:00+05:00\"", "plan.procedure_time"),
    ("vial_gbq = 7", "vial_gbq = 7\nhours_after_calibration = [72, 1e6]", "plan.hours_after_calibration"),
]


@pytest.mark.parametrize("old, new, field", BAD)
def test_bad_input_names_file_and_field(case_text, write_case, old, new, field):
    assert old in case_text
    path = write_case(case_text.replace(old, new, 1))
    if field is None:  # a control: the change is valid
        assert run_cli(["dose", path])[0] == 0
        return
    with pytest.raises(CaseError) as e:
        from y90opt.case import load_case

        load_case(path)
    assert e.value.field == field
    code, out, err = run_cli(["dose", path])
    assert code == 2
    assert err.count("\n") == 1 and path in err and field in err
    assert "Traceback" not in err


def test_missing_required_keys(case_text, write_case):
    path = write_case(case_text.replace("[lung]\nshunt_fraction = { value = 0.06, cv = 0.3 }\n", ""))
    code, _, err = run_cli(["dose", path])
    assert code == 2 and "lung" in err


def test_dose_requires_plan_decision(case_text, write_case):
    path = write_case(case_text.replace("vial_gbq = 7\n", ""))
    code, _, err = run_cli(["dose", path])
    assert code == 2 and "plan.vial_gbq" in err


def test_missing_file_and_directory(tmp_path):
    assert run_cli(["dose", str(tmp_path / "nope.toml")])[0] == 2
    assert run_cli(["dose", str(tmp_path)])[0] == 2


def test_truncated_normal_fraction_accepted(case_text):
    t = case_text.replace(
        "shunt_fraction = { value = 0.06, cv = 0.3 }",
        "shunt_fraction = { dist = \"normal\", mean = 0.02, sd = 0.02, min = 0, max = 0.5 }",
    )
    c = parse_case(t)
    assert isinstance(c.shunt_fraction, Normal) and c.shunt_fraction.truncated


def test_correlation_matrix_must_be_positive_definite(case_text):
    t = case_text + (
        "\n[[correlations]]\ninputs = [\"lung.shunt_fraction\", \"tumors.T1.tn_ratio\"]\nrho = 0.9\n"
        "[[correlations]]\ninputs = [\"lung.shunt_fraction\", \"tumors.T1.volume_ml\"]\nrho = 0.9\n"
        "[[correlations]]\ninputs = [\"tumors.T1.tn_ratio\", \"tumors.T1.volume_ml\"]\nrho = -0.9\n"
    )
    with pytest.raises(CaseError, match="positive definite"):
        parse_case(t)


# -- property-based: malformed and extreme case files never crash -----------------------------------------

_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.booleans(), st.lists(st.integers(-5, 50), max_size=4),
    st.fixed_dictionaries({"value": st.floats(-10, 5000), "cv": st.floats(-1, 5)}),
)
_lines = re.compile(r"^(\s*)([A-Za-z_]+) = (.*)$", re.M)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_case_files_exit_2_or_0_never_traceback(case_text, tmp_path, data):
    lines = case_text.splitlines()
    idx = [i for i, line in enumerate(lines) if _lines.match(line)]
    i = data.draw(st.sampled_from(idx))
    mode = data.draw(st.sampled_from(["replace", "delete", "garbage", "truncate"]))
    m = _lines.match(lines[i])
    if mode == "replace":
        v = data.draw(_values)
        lines[i] = f"{m.group(2)} = {_toml(v)}"
    elif mode == "delete":
        del lines[i]
    elif mode == "garbage":
        lines.insert(i, data.draw(st.text(max_size=20)))
    else:
        lines = lines[:i]
    path = tmp_path / "fuzz.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    code, out, err = run_cli(["dose", str(path)])
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and str(path) in err


def _toml(v):
    import json
    import math

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def test_index_tumor_must_be_treated(case_text):
    t = case_text.replace('tn_ratio = { value = 3.2, cv = 0.35 }\n',
                          'tn_ratio = { value = 3.2, cv = 0.35 }\n\n[[tumors]]\nname = "T2"\nvolume_ml = 20\n'
                          'tn_ratio = 2.0\ntreated = false\n', 1)
    t = t.replace("vial_gbq = 7", 'vial_gbq = 7\nsuccess = "index-tumor"\nindex_tumor = "T2"')
    with pytest.raises(CaseError) as e:
        parse_case(t)
    assert e.value.field == "plan.index_tumor" and "not treated" in e.value.message


@pytest.mark.parametrize("argv", [
    ["simulate", "{case}", "--samples", "1e400"],
    ["simulate", "{case}", "--samples", "1.9"],
    ["simulate", "{case}", "--chunk", "0"],
    ["plan", "{case}", "--vial-range", "0:3:1"],
    ["plan", "{case}", "--vial-range", "1:inf:1"],
    ["plan", "{case}", "--vial-range", "1:1e9:0.0001"],
    ["plan", "{case}", "--hours-range", "1e308:1e308:1"],
    ["plan", "{case}", "--optuna-trials", "-5"],
    ["plan", "{case}", "--risk", "1.5"],
    ["sensitivity", "{case}", "--samples", "1"],
    ["sensitivity", "{case}", "--bootstrap", "-3"],
    ["simulate", "{case}", "--samples", "20000000", "--keep-samples"],
])
def test_bad_command_line_values_exit_2(case_text, write_case, argv):
    path = write_case(case_text)
    code, out, err = run_cli([a.format(case=path) for a in argv])
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
