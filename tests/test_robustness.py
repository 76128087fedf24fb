"""The reproducers of the robustness review, each on top of the shipped segmentectomy case: exit 0 with
finite numbers, or exit 2 with one line naming the file and the field; never an internal error, a library
warning on the terminal, or a silently absurd answer."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import pytest

from y90opt.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEGMENT = (ROOT / "configs" / "examples" / "radiation-segmentectomy.toml").read_text(encoding="utf-8")
SHUNT = 'shunt_fraction = { dist = "normal", mean = 0.03, sd = 0.036, min = 0.0, max = 0.5 }'


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _case(write_case, old: str | None = None, new: str = "", extra: str = "") -> str:
    text = SEGMENT
    if old is not None:
        assert old in text, old
        text = text.replace(old, new, 1)
    return write_case(text + extra)


def _refused(argv, *words):
    code, out, err = run_cli(argv)
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("y90opt: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("old, new, field, words", [
    ("[plan]", "[rules]\nx = " + "[" * 600 + "]" * 600 + "\n\n[plan]", "", ("nested too deeply",)),
    (SHUNT, 'shunt_fraction = { dist = [], mean = 0.03, sd = 0.01 }', "lung.shunt_fraction.dist", ("a string",)),
    (SHUNT, 'shunt_fraction = { dist = "normal", mean = 0.03, sd = 1e-320 }', "lung.shunt_fraction.sd", ("exact",)),
    (SHUNT, 'shunt_fraction = { dist = "normal", mean = 0.03, sd = 1e39, min = 0.0, max = 0.5 }',
     "lung.shunt_fraction.sd", ("beyond any measurement",)),
    (SHUNT, 'shunt_fraction = { dist = "normal", mean = 0.03, sd = 1e300, min = 0.0, max = 0.5 }',
     "lung.shunt_fraction.sd", ()),
    ("vial_gbq = 3", "vial_gbq = 1e300", "plan.vial_gbq", ("beyond any vial",)),
    ("vial_gbq = 3", "vial_gbq = 1e39", "plan.vial_gbq", ()),
    ('treatment = "2026-12-10T12:00:00-05:00"', 'treatment = "2126-12-10T12:00:00-05:00"', "plan.treatment",
     ("usable life", "usable_life_h")),
    ('calibration = "2026-12-06T12:00:00-05:00"', 'calibration = "0001-01-01T00:00:00+00:00"', "plan.treatment",
     ("usable life",)),
    ("[liver]", "[conventions]\nhalf_life_h = 1e-300\n\n[liver]", "conventions.half_life_h", ()),
    ("[liver]", "[conventions]\ndose_constant_gy_kg_per_gbq = 1e6\n\n[liver]", "conventions.dose_constant_gy_kg_per_gbq", ()),
    ("[liver]", "[conventions]\ndose_constant_gy_kg_per_gbq = 45\n\n[liver]", "conventions.dose_constant_gy_kg_per_gbq",
     ("custom = true",)),
])
def test_reproducers_are_refused_naming_the_field(write_case, old, new, field, words):
    path = _case(write_case, old, new)
    for command in (["dose", path], ["simulate", path, "--samples", "500"], ["plan", path, "--samples", "500"]):
        err = _refused(command, path, field, *words)
        assert "RuntimeWarning" not in err and "overflow" not in err


def test_a_custom_convention_is_allowed_and_flagged(write_case):
    path = _case(write_case, "[liver]", "[conventions]\ndose_constant_gy_kg_per_gbq = 45\ncustom = true\n\n[liver]")
    for command in (["dose", path, "--json"], ["simulate", path, "--json", "--samples", "500"],
                    ["plan", path, "--json", "--samples", "500", "--optuna-trials", "0"]):
        code, out, err = run_cli(command)
        assert code == 0, err
        adv = {a["code"]: a["message"] for a in json.loads(out)["advisories"]}
        assert "dose_constant_gy_kg_per_gbq = 45" in adv["custom-conventions"]


def test_the_real_cause_of_unphysical_samples_is_named(write_case):
    """A whole liver of 115 mL around a perfused territory of 110 mL (CV 15 %): the whole liver is smaller
    than the territory in about 39 % of the samples, which is the cause to name (not the tumours)."""
    text = SEGMENT.replace("[liver]\n", "[liver]\nwhole_liver_volume_ml = 115\n", 1)
    text = text.replace(text[text.index("perfused_volume_ml"):text.index("\n", text.index("perfused_volume_ml"))],
                        "perfused_volume_ml = { value = 110, cv = 0.15 }", 1)
    cut = text.index("[[tumors]]")
    text = text[:cut] + text[text.index("[lung]"):]  # no tumours
    path = write_case(text)
    err = _refused(["simulate", path, "--samples", "4000"], "liver.whole_liver_volume_ml",
                   "whole liver is smaller than the perfused territory")
    share = float(err.split("smaller than the perfused territory and the untreated tumours in ")[1].split(" %")[0])
    # P(W < P) for a lognormal P with median 110 and CV 15 %: Φ(ln(115/110)/σ), σ = sqrt(ln(1 + 0.15²))
    import math

    from scipy.stats import norm

    expected = 100 * (1 - norm.cdf(math.log(115 / 110) / math.sqrt(math.log(1 + 0.15**2))))
    assert abs(share - expected) < 4 * 100 * math.sqrt(expected / 100 * (1 - expected / 100) / 2**15) + 0.01


def test_huge_and_endless_inputs_are_refused(write_case, tmp_path):
    big = tmp_path / "big.toml"
    big.write_text(SEGMENT + "\n# " + "x" * (2 << 20) + "\n")
    _refused(["dose", str(big)], "not a case file")
    _refused(["dose", "/dev/zero"], "/dev/zero", "not a case file")


def test_a_long_offending_value_is_shortened(write_case):
    path = _case(write_case, "scenario = \"radiation-segmentectomy\"", "scenario = \"" + "y" * 10_000 + "\"")
    err = _refused(["dose", path], "scenario")
    assert len(err) < 1000


def test_sensitivity_refuses_an_impossible_sample_count_at_once(write_case):
    """1e10 base samples: the streamed analysis would fit in memory but take days; the correlated one (held in
    memory) cannot fit. Both are refused at once."""
    path = _case(write_case)
    _refused(["sensitivity", path, "--samples", "10000000000"], "--samples", "at most")
    corr = _case(write_case, extra='\n[[correlations]]\ninputs = ["tumors.T1.volume_ml", "liver.perfused_volume_ml"]\nrho = 0.3\n')
    _refused(["sensitivity", corr, "--samples", "10000000000"], "--samples", "at most")


def test_a_junk_storage_is_refused_before_any_work(write_case, tmp_path):
    path = _case(write_case)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    _refused(["plan", path, "--samples", "500", "--storage", str(junk)], "--storage", "not an SQLite database")
    _refused(["plan", path, "--samples", "500", "--storage", str(tmp_path)], "--storage", "is a directory")
    _refused(["plan", path, "--samples", "500", "--storage", str(tmp_path / "no" / "x.db")], "--storage")
    assert junk.read_text() == "not a database"


def test_a_study_used_by_another_plan_is_refused(write_case, tmp_path):
    db = str(tmp_path / "s.db")
    a = _case(write_case)
    assert run_cli(["plan", a, "--samples", "500", "--storage", db, "--study-name", "s"])[0] == 0
    other = write_case(SEGMENT.replace("prior_dose_gy = 3.5", "prior_dose_gy = 4.5", 1), "other.toml")
    _refused(["plan", other, "--samples", "500", "--storage", db, "--study-name", "s"], "--study-name", "another plan")


def test_two_processes_on_one_study_database(write_case, tmp_path):
    """While one process holds the database, a second is refused at once with a clear line (two writers
    would double the trials or fail); once the first is done the study resumes."""
    from y90opt.optimise import reserved_storage

    db = str(tmp_path / "s.db")
    path = _case(write_case)
    with reserved_storage(db):
        _refused(["plan", path, "--samples", "500", "--storage", db], "--storage", "another y90opt process")
        _refused(["plan", path, "--samples", "500", "--storage", "sqlite:///" + db], "--storage", "another y90opt process")
    assert run_cli(["plan", path, "--samples", "500", "--storage", db])[0] == 0
