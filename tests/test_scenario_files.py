"""The packaged scenario files against a table written by hand from the DSC 2022 text, and the
rejection of malformed scenario files.

DSC = TheraSphere Global Dosimetry Steering Committee, updated 2022 recommendations for HCC (Salem et al.,
EJNMMI 2023;50:328-343). Each number below is typed from the sentence quoted beside it, not copied from the
scenario files, so a typo in a file fails here.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from y90opt import rules, scenarios
from y90opt.scenarios import ScenarioError, load_scenario

# Lung limits are not in the DSC text. TheraSphere IFU: radiation pneumonitis above 30 Gy in a single
# treatment; 50 Gy cumulative is the common multi-session practice (van Roekel thesis; Salem et al.).
LUNG = {"lung-session": ("lung", 30.0, "primary"), "lung-cumulative": ("lung_cumulative", 50.0, "primary")}

# Sunday 12:00 calibration convention: week 1 Wednesday 12:00 = 72 h, Thursday 96 h, Friday 120 h,
# week 2 Monday 192 h, week 2 Tuesday 216 h.
WED1, THU1, FRI1, MON2, TUE2 = 72.0, 96.0, 120.0, 192.0, 216.0

EXPECTED: dict[str, dict] = {
    "radiation-segmentectomy": {
        "dsc": 1,
        "intent": "curative",
        # Scenario 1, Dose calculation item 1: "Single-compartment model dosimetry is adequate and preferred"
        "model": "single-compartment",
        "targets": {
            # item 2: "Target-absorbed dose to the perfused treatment volume of at least 400 Gy to the
            # angiosome with no established upper limit."
            "angiosome": ("perfused_mean", 400.0, "primary"),
            # item 2: "Similar results using > 500 Gy to the perfused volume were reported."
            "angiosome-500": ("perfused_mean", 500.0, "secondary"),
        },
        "limits": dict(LUNG),  # item 2: "... with no established upper limit."
        # item 4: "Recommend week 1 (Wednesday/Thursday/Friday) or early week 2 dosing (Monday/Tuesday)"
        "window": (WED1, TUE2, (WED1, THU1, FRI1, MON2, TUE2), False),
        # item 4: "microsphere-specific activity (estimated >= 297 Bq)"
        # Patient selection item 4: "TARE infusion in up to 25% in ALBI-1 with excellent tolerability and noted
        # additional liver toxicities above 14% in ALBI-2 and Child-Pugh B patients" (several segments, one session)
        "checks": {"sphere_activity_min_bq": 297.0, "treated_liver_share_max": 0.25, "treated_liver_share_caution": 0.14},
        "alternatives": {},
    },
    "radiation-lobectomy": {
        "dsc": 2,
        "intent": "curative",
        # Scenario 2, Dose calculation item 1: "Using a multicompartment model with 99mTc-MAA ..."
        "model": "partition",
        "targets": {
            # item 1: "the minimum planned tumor-absorbed dose is >= 205 Gy (with a mean of 331 Gy)"
            "tumor": ("tumors", 205.0, "primary"),
            # item 1: "A minimum threshold absorbed dose of normal injected liver > 88 Gy with week 1
            # (Wednesday) dosing in Child-Pugh A patients ensures a minimum 10% hypertrophy."
            "hypertrophy": ("normal_perfused", 88.0, "primary"),
        },
        "limits": {
            # item 1: "normal tissue-absorbed dose (NTAD) is <= 120 Gy attained by treating on week 1 (Wednesday)"
            "ntad": ("normal_perfused", 120.0, "primary"),
            **LUNG,
        },
        # item 3: "Existing literature supports treatment on week 1 (Wednesday) to week 2 (Tuesday)."
        "window": (WED1, TUE2, (WED1,), False),
        # item 1: "tumor response in patients with >= 30% hepatic reserve is optimized"
        "checks": {"hepatic_reserve_min": 0.30},
        "alternatives": {
            # item 1: "the maximum tolerable dose for Child A patients at 50 Gy or 90 Gy whole non-tumoral liver
            # (including perfused and non-perfused normal liver) with a bilirubin level >= 1.1 mg/dL or
            # < 1.1 mg/dL, respectively, using 4-day decay"
            "whole-liver-bilirubin-high": {
                "model": "partition",
                "targets": {},
                "limits": {"whole-normal-liver-50": ("whole_normal_liver", 50.0, "primary")},
                "condition_has": ">= 1.1 mg/dL",
            },
            "whole-liver-bilirubin-low": {
                "model": "partition",
                "targets": {},
                "limits": {"whole-normal-liver-90": ("whole_normal_liver", 90.0, "primary")},
                "condition_has": "< 1.1 mg/dL",
            },
            # item 2: "If using a single-compartment model, a 140-150 Gy lobar absorbed dose limit is recommended":
            # a prescription band, planned into with its lower end as the target and its upper end the ceiling
            "single-compartment-lobar": {
                "model": "single-compartment",
                "targets": {"lobar-140": ("perfused_mean", 140.0, "primary")},
                "limits": {"lobar-max": ("perfused_mean", 150.0, "primary")},
            },
            # item 2: "(Child-Pugh A and hepatic reserve > 30%), targeting a lobar absorbed dose > 150 Gy (with a
            # mean of 178 Gy) with a whole liver dose < 150 Gy, by treating on week 1 (Wednesday)"
            "dosisphere-01-lobar": {
                "model": "single-compartment",
                "targets": {"lobar-150": ("perfused_mean", 150.0, "primary")},
                "limits": {"whole-liver-150": ("whole_liver", 150.0, "primary")},
                "condition_has": "30 %",
            },
        },
    },
    # Scenario 2, Treatment delivery item 2: "one can consider 'modified' radiation lobectomy, where a
    # single-session segmental tumor infusion (single-compartment dose to segment >= 400 Gy ...) is followed by
    # lobar infusion, with the second vial delivering single-compartment 100 Gy to the lobe for hypertrophy"
    "modified-radiation-lobectomy": {
        "dsc": 2,
        "intent": "curative",
        "model": "single-compartment",
        "targets": {
            "segment-400": ("injections.segmental.perfused_mean", 400.0, "primary"),
            "lobe-100": ("injections.lobar.perfused_mean", 100.0, "primary"),
            # Dose calculation item 1: "> 88 Gy ... ensures a minimum 10% hypertrophy", on the lobe outside the segment
            "hypertrophy": ("regions.lobar.normal", 88.0, "primary"),
        },
        "limits": {
            # Dose calculation item 2: "a 140-150 Gy lobar absorbed dose limit" (single compartment), its upper end
            "lobe-max": ("injections.lobar.perfused_mean", 150.0, "primary"),
            # Dose calculation item 1: "NTAD is <= 120 Gy", on the lobe outside the segment
            "ntad": ("regions.lobar.normal", 120.0, "primary"),
            **LUNG,
        },
        "window": (WED1, TUE2, (WED1,), False),
        "checks": {"hepatic_reserve_min": 0.30},
        "alternatives": {},
    },
    "multifocal-unilobar": {
        "dsc": 3,
        "intent": "palliative",
        # Scenario 3, item 1: "multicompartment dosimetry model is preferred over a single-compartment model"
        "model": "partition",
        "targets": {
            # item 2: "the minimum tumor-absorbed dose is >= 205 Gy, with > 250 Gy where possible"
            "tumor": ("tumors", 205.0, "primary"),
            "tumor-250": ("tumors", 250.0, "secondary"),
        },
        "limits": {
            # item 2: "and NTAD is <= 120 Gy attained by treating on week 1 (Wednesday)"
            "ntad": ("normal_perfused", 120.0, "primary"),
            **LUNG,
        },
        # Treatment delivery item 2: "Treatment between week 1 (Wednesday) and week 2 (Tuesday) is acceptable"
        "window": (WED1, TUE2, (WED1,), False),
        # item 2: "tumor response in patients with >= 30% hepatic reserve is optimized"
        "checks": {"hepatic_reserve_min": 0.30},
        "alternatives": {
            # Treatment delivery item 1: "Single-compartment dosimetry supports 120-150 Gy to the perfused lobe"
            "single-compartment-lobar": {
                "model": "single-compartment",
                "targets": {"lobar-120": ("perfused_mean", 120.0, "primary")},
                "limits": {"lobar-150": ("perfused_mean", 150.0, "primary")},
            },
            # item 2: "(examples, 50 Gy or 90 Gy whole liver with a bilirubin level >= 1.1 mg/dL or < 1.1 mg/dL,
            # respectively, using 4-day decay), this continues to be investigational"
            "whole-liver-bilirubin-high": {
                "model": "partition",
                "targets": {},
                "limits": {"whole-normal-liver-50": ("whole_normal_liver", 50.0, "primary")},
                "condition_has": ">= 1.1 mg/dL",
            },
            "whole-liver-bilirubin-low": {
                "model": "partition",
                "targets": {},
                "limits": {"whole-normal-liver-90": ("whole_normal_liver", 90.0, "primary")},
                "condition_has": "< 1.1 mg/dL",
            },
        },
    },
    "multifocal-bilobar": {
        "dsc": 4,
        "intent": "palliative",
        # Scenario 4, item 1: "A multicompartment dosimetry model is preferred over single compartment"
        "model": "partition",
        "targets": {
            # item 3: "Optimal tumor-absorbed dose ... is >= 205 Gy, with > 250 Gy where possible"
            "tumor": ("tumors", 205.0, "primary"),
            "tumor-250": ("tumors", 250.0, "secondary"),
        },
        "limits": {
            # item 2: "Targeting from 40 to 70 Gy absorbed dose to the entire normal liver tissue may be
            # performed safely in a Child-Pugh A patient"
            "whole-normal-liver": ("whole_normal_liver", 70.0, "primary"),
            **LUNG,
        },
        # item 2: "Additional data is needed to identify the appropriate post-calibration day of treatment"
        # -> the window is a marked default.
        "window": (WED1, TUE2, (WED1,), True),
        # Patient selection: "At least 30% hepatic reserve is ideal"
        "checks": {"hepatic_reserve_min": 0.30},
        "alternatives": {
            # item 4: "Single-compartment dosimetry supports 120 Gy (range 80-150 Gy) to the perfused tissue"
            "single-compartment": {
                "model": "single-compartment",
                "targets": {
                    "perfused-80": ("perfused_mean", 80.0, "primary"),
                    "perfused-120": ("perfused_mean", 120.0, "secondary"),
                },
                "limits": {"perfused-150": ("perfused_mean", 150.0, "primary")},
            },
        },
    },
    "mvi-pvt": {
        "dsc": 5,
        "intent": "palliative",
        # Scenario 5, item 1: "Multicompartment dosimetry is preferred to maximize sparing of normal parenchyma"
        "model": "partition",
        "targets": {
            # item 2: "the minimum tumor-absorbed dose is >= 205 Gy, with > 250 Gy where possible (with a mean of
            # 331 Gy), and NTAD is <= 120 Gy, attained by treating on week 1 (Wednesday)"
            "tumor": ("tumors", 205.0, "primary"),
            "tumor-250": ("tumors", 250.0, "secondary"),
        },
        "limits": {
            "ntad": ("normal_perfused", 120.0, "primary"),
            **LUNG,
        },
        # item 2: "attained by treating on week 1 (Wednesday)"; the end (week 2 Tuesday) as in Scenarios 2-3.
        "window": (WED1, TUE2, (WED1,), False),
        # item 2: "in patients with >= 30% hepatic reserve"
        "checks": {"hepatic_reserve_min": 0.30},
        "alternatives": {
            # Treatment delivery 1: "An aggressive dosing approach (similar to radiation lobectomy) can be used
            # for unilobar disease and Child-Pugh A liver function": Scenario 2's 140-150 Gy lobar band
            "single-compartment-lobar": {
                "model": "single-compartment",
                "targets": {"lobar-140": ("perfused_mean", 140.0, "primary")},
                "limits": {"lobar-150": ("perfused_mean", 150.0, "primary")},
            },
        },
    },
}


def _table(rule_list) -> dict[str, tuple[str, float, str]]:
    return {r.id: (r.quantity, r.threshold_gy, r.level) for r in rule_list}


def test_every_packaged_scenario_is_in_the_table():
    assert sorted(scenarios.scenario_ids()) == sorted(EXPECTED)


@pytest.mark.parametrize("sid", sorted(EXPECTED))
def test_scenario_matches_the_dsc_text(sid):
    s = load_scenario(sid)
    e = EXPECTED[sid]
    assert s.id == sid
    assert s.dsc_scenario == e["dsc"]
    assert s.intent == e["intent"]
    assert s.preferred_model == e["model"]
    assert f"Scenario {e['dsc']}" in s.source and "DSC 2022" in s.source
    assert _table(s.targets) == e["targets"]
    assert _table(s.limits) == e["limits"]
    assert all(r.kind == "target" for r in s.targets) and all(r.kind == "limit" for r in s.limits)
    start, end, preferred, default = e["window"]
    assert (s.window.start_h, s.window.end_h, s.window.preferred_h, s.window.default) == (
        start,
        end,
        preferred,
        default,
    )
    checks = {k: v for k, v in s.checks.items() if k != "source"}
    assert checks == e["checks"]
    assert {a.id for a in s.alternatives} == set(e["alternatives"])
    for alt in s.alternatives:
        ea = e["alternatives"][alt.id]
        assert alt.model == ea["model"]
        assert _table(alt.targets) == ea["targets"]
        assert _table(alt.limits) == ea["limits"]
        assert alt.vials == ea.get("vials", 1)
        if "condition_has" in ea:
            assert ea["condition_has"] in alt.condition
            assert all(r.condition == alt.condition for r in alt.rules)


@pytest.mark.parametrize("sid", sorted(EXPECTED))
def test_every_number_cites_its_source(sid):
    s = load_scenario(sid)
    n = EXPECTED[sid]["dsc"]
    everything = list(s.rules) + [r for a in s.alternatives for r in a.rules]
    for r in everything:
        if r.quantity in ("lung", "lung_cumulative"):
            assert "the DSC 2022 sets no lung limit" in r.source
            assert ("TheraSphere IFU" in r.source) if r.quantity == "lung" else ("van Roekel" in r.source)
        else:
            assert f"DSC 2022 Scenario {n}," in r.source, (r.id, r.source)
            assert "item" in r.source or "Patient selection" in r.source
    assert s.window.source
    assert s.checks.get("source")
    for a in s.alternatives:
        assert f"DSC 2022 Scenario {n}," in a.source


def test_window_hours_follow_the_sunday_noon_convention():
    """72 h and 216 h are week 1 Wednesday and week 2 Tuesday noon after a Sunday-noon calibration."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    cal = dt.datetime(2026, 12, 6, 12, tzinfo=ZoneInfo("America/New_York"))
    assert cal.weekday() == 6  # Sunday
    for sid in EXPECTED:
        w = load_scenario(sid).window
        for h in (w.start_h, w.end_h, *w.preferred_h):
            when = cal + dt.timedelta(hours=h)
            assert when.hour == 12
        assert (cal + dt.timedelta(hours=w.start_h)).strftime("%A") == "Wednesday"
        assert (cal + dt.timedelta(hours=w.end_h)).strftime("%A") == "Tuesday"
        assert w.days[0] == "week 1 Wednesday" and w.days[-1] == "week 2 Tuesday"


def test_to_dict_is_json_ready_with_the_pinned_keys():
    out = [s.to_dict() for s in scenarios.load_scenarios()]
    assert [d["dsc_scenario"] for d in out] == [1, 2, 2, 3, 4, 5]
    text = json.dumps(out)
    back = json.loads(text)
    for d in back:
        for key in ("id", "targets", "limits", "window", "source"):
            assert key in d
        assert d["window"]["start_h"] <= d["window"]["end_h"]
        assert all(
            {"id", "quantity", "threshold_gy", "kind", "source"} <= set(r) for r in d["targets"] + d["limits"]
        )


def test_load_by_path_equals_load_by_id():
    d = scenarios.scenario_dir()
    assert (d / "multifocal-unilobar.toml").is_file()
    by_path = load_scenario(d / "multifocal-unilobar.toml")
    by_id = load_scenario("multifocal-unilobar")
    assert by_path.rules == by_id.rules and by_path.window == by_id.window


def test_unknown_scenario_id():
    with pytest.raises(ScenarioError) as info:
        load_scenario("radiation-segmentomy")
    assert info.value.field == "scenario"
    assert "radiation-segmentectomy" in str(info.value)  # lists the known ids


# --- malformed files ------------------------------------------------------------------------------------

VALID = """
id = "site-test"
title = "A test scenario"
dsc_scenario = 3
intent = "palliative"
preferred_model = "partition"
source = "DSC 2022 Scenario 3"

[[targets]]
id = "tumor"
quantity = "tumors"
min_gy = 205
level = "primary"
source = "DSC 2022 Scenario 3, item 2"

[[limits]]
id = "ntad"
quantity = "normal_perfused"
max_gy = 120
source = "DSC 2022 Scenario 3, item 2"

[[limits]]
id = "lung-session"
quantity = "lung"
max_gy = 30
source = "TheraSphere IFU"

[window]
start_h = 72
end_h = 216
preferred_h = [72]
days = ["week 1 Wednesday", "week 2 Tuesday"]
default = false
source = "DSC 2022 Scenario 3, Treatment delivery, item 2"

[checks]
hepatic_reserve_min = 0.30
source = "DSC 2022 Scenario 3, item 2"

[[alternatives]]
id = "single-compartment-lobar"
description = "120-150 Gy to the lobe"
model = "single-compartment"
source = "DSC 2022 Scenario 3, Treatment delivery, item 1"

[[alternatives.limits]]
id = "lobar-150"
quantity = "perfused_mean"
max_gy = 150
source = "DSC 2022 Scenario 3, Treatment delivery, item 1"
"""


def _write(tmp_path: pathlib.Path, text: str, name: str = "site-test.toml") -> pathlib.Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_the_valid_template_loads(tmp_path):
    s = load_scenario(_write(tmp_path, VALID))
    assert s.id == "site-test" and len(s.rules) == 3


MALFORMED = [
    # (description, old, new, field, words in the message)
    (
        "unknown quantity",
        'quantity = "normal_perfused"',
        'quantity = "ntad"',
        "limits[0].quantity",
        "unknown quantity 'ntad'",
    ),
    (
        "unknown top-level key",
        'intent = "palliative"',
        'intent = "palliative"\ntreshold = 3',
        "treshold",
        "unknown key",
    ),
    ("unknown rule key", "max_gy = 120", "max_gy = 120\nmax_gray = 110", "limits[0].max_gray", "unknown key"),
    ("unknown window key", "start_h = 72", "start_h = 72\nstart_day = 3", "window.start_day", "unknown key"),
    (
        "unknown checks key",
        "hepatic_reserve_min = 0.30",
        "hepatic_reserve = 0.30",
        "checks.hepatic_reserve",
        "unknown key",
    ),
    ("target given a max", "min_gy = 205", "max_gy = 205", "targets[0].max_gy", "min_gy"),
    ("zero threshold", "min_gy = 205", "min_gy = 0", "targets[0].min_gy", "> 0"),
    ("negative threshold", "max_gy = 120", "max_gy = -120", "limits[0].max_gy", "> 0"),
    ("threshold as text", "max_gy = 120", 'max_gy = "120"', "limits[0].max_gy", "expected a number"),
    (
        "missing rule source",
        'max_gy = 120\nsource = "DSC 2022 Scenario 3, item 2"',
        "max_gy = 120",
        "limits[0].source",
        "missing",
    ),
    ("empty rule source", 'source = "TheraSphere IFU"', 'source = ""', "limits[1].source", "empty"),
    (
        "missing window source",
        'default = false\nsource = "DSC 2022 Scenario 3, Treatment delivery, item 2"',
        "default = false",
        "window.source",
        "missing",
    ),
    (
        "missing checks source",
        'hepatic_reserve_min = 0.30\nsource = "DSC 2022 Scenario 3, item 2"',
        "hepatic_reserve_min = 0.30",
        "checks.source",
        "missing",
    ),
    (
        "missing alternative rule source",
        'max_gy = 150\nsource = "DSC 2022 Scenario 3, Treatment delivery, item 1"',
        "max_gy = 150",
        "alternatives[0].limits[0].source",
        "missing",
    ),
    ("window starts after it ends", "start_h = 72", "start_h = 240", "window.start_h", "after"),
    (
        "preferred outside the window",
        "preferred_h = [72]",
        "preferred_h = [48]",
        "window.preferred_h[0]",
        "outside",
    ),
    # a target above a limit on the same quantity can never be met
    (
        "target above a limit",
        'quantity = "normal_perfused"\nmax_gy = 120',
        'quantity = "tumors"\nmax_gy = 120',
        "targets",
        "can never be met",
    ),
    (
        "reserve given in percent",
        "hepatic_reserve_min = 0.30",
        "hepatic_reserve_min = 30",
        "checks.hepatic_reserve_min",
        "(0, 1)",
    ),
    ("unknown level", 'level = "primary"', 'level = "tertiary"', "targets[0].level", "tertiary"),
    ("unknown model", 'model = "single-compartment"', 'model = "voxel"', "alternatives[0].model", "voxel"),
    ("unknown intent", 'intent = "palliative"', 'intent = "ablative"', "intent", "ablative"),
    ("dsc scenario out of range", "dsc_scenario = 3", "dsc_scenario = 6", "dsc_scenario", "1 to 5"),
    ("duplicate rule id", 'id = "lung-session"', 'id = "ntad"', "limits", "duplicate"),
    ("id with a colon", 'id = "tumor"', 'id = "tumor:1"', "targets[0].id", "letters"),
    ("misspelled table", "[window]", "[window_]", "window_", "unknown key"),
    ("no primary target", 'level = "primary"', 'level = "secondary"', "targets", "primary target"),
]


@pytest.mark.parametrize("desc, old, new, field, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_rejected_with_one_line(tmp_path, desc, old, new, field, words):
    assert old in VALID, desc
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    e = info.value
    assert e.file == str(path)
    assert e.field == field
    assert words in str(e)
    assert "\n" not in str(e)
    assert str(e).startswith(f"{path}: {field}: ")


def test_the_documented_message_format(tmp_path):
    """The example of the rules contract: "<file>: limits[0].quantity: unknown quantity 'ntad'"."""
    text = (scenarios.scenario_dir() / "multifocal-unilobar.toml").read_text(encoding="utf-8")
    text = text.replace('quantity = "normal_perfused"', 'quantity = "ntad"', 1)
    path = _write(tmp_path, text, "multifocal-unilobar.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: limits[0].quantity: unknown quantity 'ntad'")


def test_id_must_match_file_name(tmp_path):
    path = _write(tmp_path, VALID, "other-name.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == "id"


def test_toml_syntax_error_is_one_line(tmp_path):
    path = _write(tmp_path, VALID.replace("max_gy = 120", "max_gy = = 120"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == "toml" and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.toml")
    assert info.value.field == "file"


def test_scenario_error_is_a_value_error():
    e = ScenarioError("a.toml", "limits[0].max_gy", "must be > 0,\n got -1")
    assert isinstance(e, ValueError)
    assert str(e) == "a.toml: limits[0].max_gy: must be > 0, got -1"
    assert (e.file, e.field) == ("a.toml", "limits[0].max_gy")


def test_missing_window(tmp_path):
    head, rest = VALID.split("[window]")
    text = head + "[checks]" + rest.split("[checks]")[1]
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, text))
    assert info.value.field == "window" and "missing" in str(info.value)


# --- example cases ----------------------------------------------------------------------------------------

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "configs" / "examples"


#: Examples of treatments of several injections ([[injections]]): example → its scenario.
TREATMENT_EXAMPLES = {"modified-radiation-lobectomy": "modified-radiation-lobectomy",
                      "staged-bilobar": "multifocal-bilobar", "two-segments": "radiation-segmentectomy"}
#: Scenarios whose rules need several injections.
TREATMENT_SCENARIOS = {"modified-radiation-lobectomy"}


def test_one_example_per_scenario():
    stems = sorted(p.stem for p in EXAMPLES.glob("*.toml"))
    single = [p for p in stems if p not in TREATMENT_EXAMPLES or p in TREATMENT_SCENARIOS]
    assert sorted(set(single) - TREATMENT_SCENARIOS) == sorted(set(EXPECTED) - TREATMENT_SCENARIOS)
    assert set(stems) == set(EXPECTED) | set(TREATMENT_EXAMPLES)
    for stem, sid in TREATMENT_EXAMPLES.items():
        assert load_case_file(EXAMPLES / f"{stem}.toml").scenario == sid


def load_case_file(path):
    from y90opt.case import load_case

    return load_case(path)


@pytest.mark.parametrize("sid", sorted(set(EXPECTED) - TREATMENT_SCENARIOS))
def test_example_nominal_plan_meets_its_primary_rules(sid):
    """Each example's nominal plan (its [plan] vial and time) meets every primary target and limit, by the
    independent numpy reference model, and its [rules] overrides apply."""
    import numpy as np

    from y90opt import physics
    from y90opt.case import load_case
    from y90opt.reference import reference_doses

    path = EXAMPLES / f"{sid}.toml"
    c = load_case(path)
    assert c.scenario == sid
    s = scenarios.apply_overrides(load_scenario(sid), c.rules, str(path))
    hours = physics.hours_between(c.calibration, c.plan.treatment)
    assert s.window.contains(hours, scenarios.DAY_TOLERANCE_H)
    vial_now = c.plan.vial_gbq * physics.decay_factor(hours)
    whole = c.whole_liver_volume_ml.nominal if c.whole_liver_volume_ml is not None else np.nan
    d = reference_doses(
        vial_now,
        c.perfused_volume_ml.nominal,
        [t.volume_ml.nominal for t in c.tumors],
        [t.tn_ratio.nominal for t in c.tumors],
        [t.treated for t in c.tumors],
        c.shunt_fraction.nominal,
        c.lung_mass_kg.nominal,
        c.residual_fraction.nominal,
        whole,
        c.prior_lung_dose_gy,
    )
    counted = (
        [c.plan.index_tumor] if c.plan.success == "index-tumor" else [t.name for t in c.tumors if t.treated]
    )
    active = [r for r in rules.success_rules(s.rules, c.plan.success) if r.level == "primary"]
    assert rules.missing_quantities(active, d) == []
    m = rules.margins(active, d, [t.name for t in c.tumors], counted)
    assert m and all(float(v) <= 0 for v in m.values()), m


def test_a_scenario_file_is_read_once_per_version(tmp_path):
    """Loading is cached per file version: the same file gives the same (frozen) object, and an edited file is
    read again, never served stale."""
    assert load_scenario("multifocal-unilobar") is load_scenario("multifocal-unilobar")
    src = scenarios.scenario_dir() / "multifocal-unilobar.toml"
    path = tmp_path / "multifocal-unilobar.toml"
    text = src.read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    first = load_scenario(path)
    assert load_scenario(path) is first
    old_title = first.title
    path.write_text(text.replace(f'title = "{old_title}"', f'title = "{old_title} (edited)"', 1), encoding="utf-8")
    edited = load_scenario(path)
    assert edited.title == f"{old_title} (edited)"
    assert first.title == old_title
    # a same-size edit whose modification time is put back (cp -p, rsync -t, a restored backup) is read again
    import os

    st = path.stat()
    same_size = f'title = "{old_title} (EDITED)"'
    path.write_text(text.replace(f'title = "{old_title}"', same_size, 1), encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_scenario(path).title == f"{old_title} (EDITED)"
