"""Rule evaluation: margins (≤ 0 means met), tumour expansion, overrides and advisories."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from y90opt import rules
from y90opt.rules import margins, missing_quantities
from y90opt.scenarios import Rule, ScenarioError, apply_overrides, load_scenario
from y90opt.scenarios import scenario_ids as scenarios_ids

TUMORS = ["T1", "T2", "T3"]


def _target(rid="t", quantity="tumors", gy=205.0, level="primary"):
    return Rule(id=rid, kind="target", quantity=quantity, threshold_gy=gy, level=level, source="test")


def _limit(rid="l", quantity="normal_perfused", gy=120.0, level="primary"):
    return Rule(id=rid, kind="limit", quantity=quantity, threshold_gy=gy, level=level, source="test")


# --- margins ----------------------------------------------------------------------------------------------


def test_target_and_limit_margin_signs():
    doses = {
        "perfused_mean": np.array([300.0, 400.0, 500.0]),
        "normal_perfused": np.array([100.0, 120.0, 130.0]),
    }
    m = margins([_target("seg", "perfused_mean", 400.0), _limit("ntad")], doses, [])
    # target: threshold - dose; limit: dose - threshold; exactly at the threshold is met (0)
    np.testing.assert_array_equal(m["seg"], [100.0, 0.0, -100.0])
    np.testing.assert_array_equal(m["ntad"], [-20.0, 0.0, 10.0])
    assert list(m) == ["seg", "ntad"]


def test_tumor_rule_expands_to_one_label_per_tumor():
    tumors = np.array([[210.0, 150.0, 400.0], [200.0, 260.0, 205.0]])  # (sample, tumour)
    m = margins([_target("tumor")], {"tumors": tumors}, TUMORS)
    assert list(m) == ["tumor:T1", "tumor:T2", "tumor:T3"]
    np.testing.assert_array_equal(m["tumor:T1"], [-5.0, 5.0])
    np.testing.assert_array_equal(m["tumor:T2"], [55.0, -55.0])
    np.testing.assert_array_equal(m["tumor:T3"], [-195.0, 0.0])


def test_counted_tumors_selects_a_subset_in_the_given_order():
    tumors = np.array([[210.0, 150.0, 400.0]])
    m = margins([_target("tumor")], {"tumors": tumors}, TUMORS, counted_tumors=["T3", "T1"])
    assert list(m) == ["tumor:T3", "tumor:T1"]
    np.testing.assert_array_equal(m["tumor:T3"], [-195.0])
    assert margins([_target("tumor")], {"tumors": tumors}, TUMORS, counted_tumors=[]) == {}
    with pytest.raises(ValueError, match="T9"):
        margins([_target("tumor")], {"tumors": tumors}, TUMORS, counted_tumors=["T9"])


def test_margins_keep_the_leading_shape_and_dtype():
    rng = np.random.default_rng(0)
    doses = {
        "normal_perfused": rng.uniform(50, 150, (4, 6, 5)).astype(np.float32),  # (sample, vial, time)
        "tumors": rng.uniform(100, 400, (4, 6, 5, 3)).astype(np.float32),
    }
    m = margins([_target("tumor"), _limit("ntad")], doses, TUMORS)
    for v in m.values():
        assert v.shape == (4, 6, 5) and v.dtype == np.float32
    np.testing.assert_allclose(m["tumor:T2"], 205.0 - doses["tumors"][..., 1])


def test_absent_or_nan_quantities_are_skipped_and_listed():
    r = [
        _target("tumor"),
        _limit("wnl", "whole_normal_liver", 70.0),
        _limit("wl", "whole_liver", 150.0),
        _limit("ntad"),
    ]
    doses = {
        "tumors": np.array([[300.0, 300.0, 300.0]]),
        "whole_normal_liver": np.array([np.nan]),  # no whole-liver volume
        "normal_perfused": np.array([100.0]),
    }
    m = margins(r, doses, TUMORS)
    assert "wnl" not in m and "wl" not in m and "ntad" in m
    assert missing_quantities(r, doses) == ["whole_normal_liver", "whole_liver"]
    assert missing_quantities(r, {**doses, "whole_normal_liver": np.array([60.0]), "whole_liver": 80.0}) == []


def test_a_partly_nan_dose_is_kept():
    m = margins([_limit("ntad")], {"normal_perfused": np.array([100.0, np.nan])}, [])
    assert np.isnan(m["ntad"][1]) and m["ntad"][0] == -20.0


def test_margins_on_jax_arrays_eager_and_jitted():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    r = [_target("tumor"), _limit("ntad"), _limit("wnl", "whole_normal_liver", 70.0)]
    doses = {
        "tumors": jnp.asarray([[210.0, 150.0, 400.0]], dtype=jnp.float32),
        "normal_perfused": jnp.asarray([130.0], dtype=jnp.float32),
        "whole_normal_liver": jnp.full((1,), jnp.nan, dtype=jnp.float32),
    }
    eager = margins(r, doses, TUMORS)
    assert set(eager) == {"tumor:T1", "tumor:T2", "tumor:T3", "ntad"}
    assert eager["ntad"].dtype == jnp.float32

    @jax.jit
    def f(d):
        return margins(r, d, TUMORS)

    jitted = f(doses)  # traced arrays cannot be checked for NaN: they count as present
    assert set(jitted) == set(eager) | {"wnl"}
    for k in eager:
        np.testing.assert_allclose(np.asarray(jitted[k]), np.asarray(eager[k]))


@given(
    dose=st.floats(0, 2000, allow_nan=False),
    threshold=st.floats(1, 1000, allow_nan=False),
    kind=st.sampled_from(["target", "limit"]),
)
def test_margin_nonpositive_iff_rule_met(dose, threshold, kind):
    rule = Rule("r", kind, "perfused_mean", threshold, source="test")
    m = margins([rule], {"perfused_mean": np.float64(dose)}, [])["r"]
    met = dose >= threshold if kind == "target" else dose <= threshold
    assert (m <= 0) == met


def test_success_rules_mass_weighted_moves_tumor_targets_to_the_total():
    r = [_target("tumor"), _target("tumor-250", gy=250.0, level="secondary"), _limit("ntad")]
    mw = rules.success_rules(r, "mass-weighted")
    assert [x.quantity for x in mw] == ["tumor_total", "tumor_total", "normal_perfused"]
    assert [x.threshold_gy for x in mw] == [205.0, 250.0, 120.0]
    assert rules.success_rules(r, "all-tumors") == tuple(r) == rules.success_rules(r, "index-tumor")
    with pytest.raises(ValueError):
        rules.success_rules(r, "best-tumor")


# --- overrides ----------------------------------------------------------------------------------------------

CASE = "case.toml"


def _ids(s):
    return [r.id for r in s.targets], [r.id for r in s.limits]


def test_no_overrides_returns_the_scenario():
    s = load_scenario("multifocal-unilobar")
    assert apply_overrides(s, {}, CASE) is s


def test_replace_a_threshold_keeps_source_and_notes_the_change():
    s = load_scenario("multifocal-unilobar")
    t = apply_overrides(s, {"limits": [{"id": "ntad", "max_gy": 100}]}, CASE)
    ntad = next(r for r in t.limits if r.id == "ntad")
    assert ntad.threshold_gy == 100.0 and ntad.quantity == "normal_perfused"
    assert ntad.source == next(r for r in s.limits if r.id == "ntad").source
    assert CASE in ntad.note and "120" in ntad.note
    assert t.applied == ("replace:ntad",)
    # the scenario itself is unchanged (frozen, replaced not mutated)
    assert next(r for r in s.limits if r.id == "ntad").threshold_gy == 120.0
    assert _ids(t) == _ids(s)


def test_replace_level_and_source():
    s = load_scenario("multifocal-unilobar")
    t = apply_overrides(
        s, {"targets": [{"id": "tumor-250", "level": "primary", "source": "tumour board 2026-12-01"}]}, CASE
    )
    r = next(r for r in t.targets if r.id == "tumor-250")
    assert (r.level, r.source, r.threshold_gy) == ("primary", "tumour board 2026-12-01", 250.0)


def test_add_a_patient_specific_rule():
    s = load_scenario("multifocal-unilobar")
    t = apply_overrides(
        s,
        {
            "limits": [
                {
                    "id": "lung-cumulative-strict",
                    "quantity": "lung_cumulative",
                    "max_gy": 40,
                    "source": "patient-specific",
                }
            ]
        },
        CASE,
    )
    new = t.limits[-1]
    assert (new.id, new.kind, new.quantity, new.threshold_gy, new.level, new.source) == (
        "lung-cumulative-strict",
        "limit",
        "lung_cumulative",
        40.0,
        "primary",
        "patient-specific",
    )
    assert t.applied == ("add:lung-cumulative-strict",)


def test_remove_rules():
    s = load_scenario("multifocal-unilobar")
    t = apply_overrides(s, {"remove": ["tumor-250", "lung-cumulative"]}, CASE)
    assert _ids(t) == (["tumor"], ["ntad", "lung-session"])


def test_alternative_adds_its_rules_with_its_condition():
    s = load_scenario("radiation-lobectomy")
    t = apply_overrides(s, {"alternatives": ["whole-liver-bilirubin-high"]}, CASE)
    wnl = t.limits[-1]
    assert (wnl.id, wnl.quantity, wnl.threshold_gy) == ("whole-normal-liver-50", "whole_normal_liver", 50.0)
    assert "bilirubin >= 1.1 mg/dL" in wnl.condition
    assert "ntad" in _ids(t)[1]  # added, not replacing
    assert t.applied == ("alternative:whole-liver-bilirubin-high",)


def test_switch_to_the_single_compartment_alternative():
    s = load_scenario("multifocal-unilobar")
    t = apply_overrides(
        s, {"alternatives": ["single-compartment-lobar"], "remove": ["tumor", "tumor-250", "ntad"]}, CASE
    )
    assert _ids(t) == (["lobar-120"], ["lung-session", "lung-cumulative", "lobar-150"])


def test_override_an_alternative_rule_after_turning_it_on():
    s = load_scenario("radiation-lobectomy")
    t = apply_overrides(
        s,
        {
            "alternatives": ["single-compartment-lobar"],
            "remove": ["tumor", "hypertrophy", "ntad"],
            "targets": [
                {"id": "lobar-min", "quantity": "perfused_mean", "min_gy": 120, "source": "site protocol"}
            ],
            "limits": [{"id": "lobar-max", "max_gy": 140}],
        },
        CASE,
    )
    assert next(r for r in t.limits if r.id == "lobar-max").threshold_gy == 140.0
    assert [r.id for r in t.primary_targets] == ["lobar-140", "lobar-min"]


BAD_OVERRIDES = [
    # (overrides, field, words)
    ({"limit": []}, "rules.limit", "unknown key"),
    ({"limits": [{"id": "ntad", "max_gy": -5}]}, "rules.limits[0].max_gy", "> 0"),
    (
        {"limits": [{"id": "lung-session"}, {"id": "ntad", "max_gy": "100"}]},
        "rules.limits[0]",
        "nothing to change",
    ),
    (
        {"limits": [{"id": "lung-session", "max_gy": 25}, {"id": "ntad", "max_gy": "100"}]},
        "rules.limits[1].max_gy",
        "expected a number",
    ),
    ({"limits": [{"id": "ntad", "min_gy": 100}]}, "rules.limits[0].min_gy", "max_gy"),
    ({"targets": [{"id": "tumor", "max_gy": 300}]}, "rules.targets[0].max_gy", "min_gy"),
    ({"limits": [{"id": "ntad", "maxgy": 100}]}, "rules.limits[0].maxgy", "unknown key"),
    ({"limits": [{"max_gy": 100}]}, "rules.limits[0].id", "missing"),
    ({"limits": [{"id": "new", "max_gy": 100, "source": "x"}]}, "rules.limits[0].quantity", "missing"),
    ({"limits": [{"id": "new", "quantity": "lung", "source": "x"}]}, "rules.limits[0].max_gy", "missing"),
    ({"limits": [{"id": "new", "quantity": "lung", "max_gy": 20}]}, "rules.limits[0].source", "missing"),
    (
        {"limits": [{"id": "new", "quantity": "ntad", "max_gy": 20, "source": "x"}]},
        "rules.limits[0].quantity",
        "unknown quantity 'ntad'",
    ),
    ({"limits": [{"id": "ntad", "quantity": "whole_liver"}]}, "rules.limits[0].quantity", "remove it"),
    ({"targets": [{"id": "ntad", "min_gy": 100}]}, "rules.targets[0].id", "is a limit"),
    ({"remove": ["ntda"]}, "rules.remove[0]", "no active rule 'ntda'"),
    ({"remove": "ntad"}, "rules.remove", "expected an array"),
    ({"remove": ["tumor"]}, "rules", "no primary target"),
    ({"alternatives": ["dosisphere-01"]}, "rules.alternatives[0]", "unknown alternative"),
    (
        {
            "targets": [{"id": "tumor", "min_gy": 130}],
            "limits": [{"id": "x", "quantity": "tumors", "max_gy": 120, "source": "x"}],
        },
        "rules",
        "can never be met",
    ),
]


@pytest.mark.parametrize(
    "overrides, field, words", BAD_OVERRIDES, ids=[b[1] + ":" + b[2] for b in BAD_OVERRIDES]
)
def test_bad_override_names_the_case_file_and_field(overrides, field, words):
    s = load_scenario("multifocal-unilobar")
    with pytest.raises(ScenarioError) as info:
        apply_overrides(s, overrides, CASE)
    e = info.value
    assert (e.file, e.field) == (CASE, field)
    assert words in str(e)
    assert str(e).startswith(f"{CASE}: {field}: ") and "\n" not in str(e)


def test_the_two_vial_treatment_is_its_own_scenario():
    """The modified radiation lobectomy is no longer an alternative of the single-vial scenario: asking for it
    there names the alternatives that exist."""
    s = load_scenario("radiation-lobectomy")
    with pytest.raises(ScenarioError, match="unknown alternative") as info:
        apply_overrides(s, {"alternatives": ["modified-radiation-lobectomy"]}, CASE)
    assert info.value.field == "rules.alternatives[0]"
    assert "modified-radiation-lobectomy" in scenarios_ids()


def test_alternative_given_twice_is_refused():
    s = load_scenario("radiation-lobectomy")
    with pytest.raises(ScenarioError, match="twice"):
        apply_overrides(s, {"alternatives": ["whole-liver-bilirubin-low", "whole-liver-bilirubin-low"]}, CASE)


def test_overridden_scenario_round_trips_to_json():
    import json

    s = apply_overrides(load_scenario("multifocal-bilobar"), {"alternatives": ["single-compartment"]}, CASE)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["applied"] == ["alternative:single-compartment"]
    assert [r["id"] for r in d["targets"]] == ["tumor", "tumor-250", "perfused-80", "perfused-120"]


# --- advisories -------------------------------------------------------------------------------------------


def _codes(scenario_id, **kw):
    return [c for c, _ in rules.advisories(load_scenario(scenario_id), **kw)]


# (scenario, keyword arguments that trigger the code, arguments that do not, code)
ADVICE = [
    (
        "multifocal-unilobar",
        {"tn_ratios": {"T1": 3.2, "T2": 1.2}},
        {"tn_ratios": {"T1": 3.2, "T2": 1.5}},
        "low-tn",
    ),
    ("multifocal-unilobar", {"shunt_fraction": 0.22}, {"shunt_fraction": 0.20}, "high-lsf"),
    ("multifocal-unilobar", {"lung_activity_gbq": 0.62}, {"lung_activity_gbq": 0.61}, "lung-activity"),
    (
        "multifocal-unilobar",
        {"hours_after_calibration": 240.0},
        {"hours_after_calibration": 216.0},
        "outside-window",
    ),
    (
        "multifocal-unilobar",
        {"hours_after_calibration": 48.0},
        {"hours_after_calibration": 64.0},
        "outside-window",
    ),
    (
        "radiation-lobectomy",
        {"hours_after_calibration": 120.0},
        {"hours_after_calibration": 80.0},
        "not-preferred-time",
    ),
    (
        "radiation-segmentectomy",
        {"hours_after_calibration": 144.0},
        {"hours_after_calibration": 192.0},
        "not-preferred-time",
    ),
    ("multifocal-unilobar", {"model": "single-compartment"}, {"model": "partition"}, "model"),
    ("multifocal-unilobar", {"hepatic_reserve": 0.25}, {"hepatic_reserve": 0.30}, "hepatic-reserve"),
    ("mvi-pvt", {"hepatic_reserve": 0.29}, {"hepatic_reserve": 0.45}, "hepatic-reserve"),
    ("mvi-pvt", {}, {"hepatic_reserve": 0.45}, "hepatic-reserve-unknown"),
    (
        "radiation-segmentectomy",
        {"activity_per_sphere_bq": 250.0},
        {"activity_per_sphere_bq": 297.0},
        "sphere-activity",
    ),
    ("multifocal-bilobar", {"missing": ["whole_normal_liver"]}, {"missing": []}, "rule-not-evaluated"),
]


@pytest.mark.parametrize(
    "sid, on, off, code", ADVICE, ids=[f"{a[3]}-{a[0]}-{i}" for i, a in enumerate(ADVICE)]
)
def test_each_advisory_is_triggered_and_not_triggered(sid, on, off, code):
    assert code in _codes(sid, **on)
    assert code not in _codes(sid, **off)


def test_advisories_that_do_not_apply_to_a_scenario():
    # segmentectomy prefers the single-compartment model and asks for no hepatic reserve
    assert _codes("radiation-segmentectomy", model="single-compartment", hepatic_reserve=0.1) == []
    # the sphere-activity check is segmentectomy only
    assert "sphere-activity" not in _codes("multifocal-unilobar", activity_per_sphere_bq=100.0)
    # a missing quantity no active rule uses is not reported
    assert "rule-not-evaluated" not in _codes(
        "multifocal-unilobar", missing=["whole_normal_liver"], hepatic_reserve=0.4
    )


def test_default_window_is_always_flagged_for_scenario_4():
    assert "default-window" in _codes("multifocal-bilobar", hepatic_reserve=0.4)
    assert "default-window" not in _codes("multifocal-unilobar", hepatic_reserve=0.4)


def test_nominal_plan_without_problems_has_no_advice():
    out = rules.advisories(
        load_scenario("multifocal-unilobar"),
        tn_ratios={"T1": 3.2},
        shunt_fraction=0.06,
        lung_activity_gbq=0.2,
        hours_after_calibration=72.0,
        model="partition",
        hepatic_reserve=0.4,
        missing=[],
    )
    assert out == []


def test_advisory_messages_are_one_line_and_codes_are_listed():
    out = rules.advisories(
        load_scenario("multifocal-bilobar"),
        tn_ratios={"T1": 1.1},
        shunt_fraction=0.3,
        lung_activity_gbq=1.0,
        hours_after_calibration=300.0,
        model="single-compartment",
        hepatic_reserve=0.1,
        missing=["whole_normal_liver"],
    )
    codes = [c for c, _ in out]
    assert set(codes) <= set(rules.ADVISORY_CODES)
    assert {
        "low-tn",
        "high-lsf",
        "lung-activity",
        "outside-window",
        "model",
        "hepatic-reserve",
        "rule-not-evaluated",
    } <= set(codes)
    assert all("\n" not in m for _, m in out)
    assert any("whole_liver_volume_ml" in m for c, m in out if c == "rule-not-evaluated")


def test_window_tolerance_is_the_calendar_day():
    # Wednesday 10:00 in Paris is 04:00 US Eastern, 64 h after a Sunday-noon calibration: still week 1 Wednesday.
    assert "outside-window" not in _codes("multifocal-unilobar", hours_after_calibration=64.0)
    assert "outside-window" in _codes(
        "multifocal-unilobar", hours_after_calibration=64.0, window_tolerance_h=0.0
    )
    w = load_scenario("multifocal-unilobar").window
    assert w.contains(72.0) and not w.contains(71.0) and w.contains(71.0, tolerance_h=1.0)


def test_unknown_model_is_a_programming_error():
    with pytest.raises(ValueError):
        rules.advisories(load_scenario("mvi-pvt"), model="voxel")


def test_hepatic_reserve_fraction():
    assert rules.hepatic_reserve_fraction(1100.0, 1800.0) == pytest.approx(700.0 / 1800.0)
    with pytest.raises(ValueError):
        rules.hepatic_reserve_fraction(1100.0, 0.0)


def test_rule_is_frozen():
    r = _target()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.threshold_gy = 100.0  # type: ignore[misc]
