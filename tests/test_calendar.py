"""The clinic calendar: candidate times only on treatment days, at the site's hours, never on a holiday or
before the vial can be used, in the site's own time zone across daylight-saving changes; the fixed-date
mode (which vial and which calibration week); the tie rule (preferred days first)."""

from __future__ import annotations

import datetime as _dt
import zoneinfo

import numpy as np
import pytest

import y90opt
from y90opt import physics

# (zone, calibration, the DST change between calibration and the candidates)
ZONES = [
    ("America/New_York", "2026-10-25T12:00:00-04:00", _dt.date(2026, 11, 1)),   # EDT → EST
    ("Europe/Paris", "2026-10-18T18:00:00+02:00", _dt.date(2026, 10, 25)),     # CEST → CET
]


def _case(case_text: str, zone: str, calibration: str, plan_extra: str = "", vials_extra: str = ""):
    text = case_text.replace('calibration = "2026-12-06T12:00:00-05:00"', f'calibration = "{calibration}"{vials_extra}')
    cal = _dt.datetime.fromisoformat(calibration)
    treat = (cal + _dt.timedelta(hours=72)).isoformat()
    text = text.replace('treatment = "2026-12-09T12:00:00-05:00"',
                        f'treatment = "{treat}"\nsite_timezone = "{zone}"\nprocedure_time = "10:00"{plan_extra}')
    return y90opt.parse_case(text, "calendar.toml")


def _times(res):
    ds = res.dataset
    return [_dt.datetime.fromisoformat(str(t)) for t in ds["time_local"].values]


@pytest.mark.parametrize("zone, calibration, change", ZONES)
def test_default_times_are_treatment_days_at_the_procedure_time_across_dst(case_text, zone, calibration, change):
    case = _case(case_text, zone, calibration)
    res = y90opt.plan(case, samples=1000, optuna_trials=0)
    tz = zoneinfo.ZoneInfo(zone)
    times = _times(res)
    assert any(t.date() > change for t in times) and any(t.date() < change for t in times)  # spans the change
    for t, h in zip(times, res.dataset["hours_after_calibration"].values, strict=True):
        local = t.astimezone(tz)
        assert local.weekday() < 5 and (local.hour, local.minute) == (10, 0)
        # the hours after calibration are real elapsed hours (the DST hour counted once)
        assert h == pytest.approx((t - case.calibration).total_seconds() / 3600, abs=1e-9)


@pytest.mark.parametrize("zone, calibration, change", ZONES)
def test_a_range_keeps_only_clinic_hours_and_never_a_holiday(case_text, zone, calibration, change):
    holiday = change + _dt.timedelta(days=1)  # the Monday after the change
    case = _case(case_text, zone, calibration,
                 plan_extra=f'\nclinic_hours = ["08:00", "16:00"]\nholidays = ["{holiday.isoformat()}"]')
    res = y90opt.plan(case, samples=1000, optuna_trials=0, hours_range=(0, 400, 1))
    tz = zoneinfo.ZoneInfo(zone)
    times = [t.astimezone(tz) for t in _times(res)]
    assert len(times) > 20
    for t in times:
        assert t.weekday() < 5 and t.date() != holiday
        assert _dt.time(8, 0) <= t.time() <= _dt.time(16, 0)
    # every admissible hour of the range is there: 9 clinic hours (08:00 to 16:00) on each treatment day (the
    # range may end inside its last day)
    days = sorted({t.date() for t in times})
    assert all(sum(t.date() == d for t in times) == 9 for d in days[:-1])
    assert holiday.weekday() == 0 and not any(t.date() == holiday for t in times)
    excluded = res.summary["excluded_times"]
    assert any("holiday" in x["reason"] for x in excluded) and any("not a treatment day" in x["reason"] for x in excluded)
    # literal times on request: the same range with --any-time keeps the weekend hours too
    literal = y90opt.plan(case, samples=1000, optuna_trials=0, hours_range=(0, 400, 1), any_time=True)
    assert literal.dataset.sizes["time"] == 361  # every hour up to the vial's usable life (360 h)


def test_a_range_starting_at_calibration_never_recommends_the_calibration_moment(case_text):
    res = y90opt.plan(y90opt.parse_case(case_text, "c.toml"), samples=2000, optuna_trials=0, hours_range=(0, 2000, 1))
    assert res.summary["recommended"]["hours_after_calibration"] > 0
    local = _dt.datetime.fromisoformat(res.summary["recommended"]["treatment_local"])
    assert local.weekday() < 5


def test_nothing_before_the_vial_arrives(case_text):
    case = y90opt.parse_case(case_text.replace(
        'calibration = "2026-12-06T12:00:00-05:00"',
        'calibration = "2026-12-06T12:00:00-05:00"\ndelivered = "2026-12-10T08:00:00-05:00"'), "d.toml")
    res = y90opt.plan(case, samples=1000, optuna_trials=0)
    assert min(res.dataset["hours_after_calibration"].values) >= 92  # Thu 10 Dec 12:00 is the first
    with pytest.raises(y90opt.InputError) as e:
        y90opt.plan(case, samples=1000, optuna_trials=0, hours_range=(0, 80, 1), any_time=True)
    assert "--hours-range" in str(e.value) and "before the vial can be used" in str(e.value)


def test_fixed_date_chooses_the_vial_and_its_calibration_week(case_text):
    """The treatment is fixed (Wed 9 Dec 12:00); this week's vial is 72 h old, last week's 240 h. Each
    candidate's activity at treatment is A·2^(−h/T½) with its own h, and its probabilities equal those of
    the ordinary plan at the same hours on the same samples."""
    case = y90opt.parse_case(case_text, "fixed.toml")
    fixed = y90opt.plan(case, samples=4000, seed=3, optuna_trials=0, fixed_date=True)
    ds = fixed.dataset
    assert list(ds["hours_after_calibration"].values) == pytest.approx([72.0, 240.0])
    cals = [_dt.datetime.fromisoformat(str(c)) for c in ds["time_calibration"].values]
    assert cals[0] - cals[1] == _dt.timedelta(days=7)
    assert len(set(str(t) for t in ds["time_local"].values)) == 1  # one treatment
    vials = ds["vial"].values
    expected = vials[:, None] * np.exp2(-np.array([72.0, 240.0])[None, :] / physics.HALF_LIFE_H)
    assert ds["vial_at_treatment"].values == pytest.approx(expected, rel=1e-12)
    ordinary = y90opt.plan(case, samples=4000, seed=3, optuna_trials=0, hours_range=(72, 240, 168), any_time=True)
    assert np.array_equal(ordinary.dataset["p_success"].values, ds["p_success"].values)
    rec = fixed.summary["recommended"]
    j = list(ds["hours_after_calibration"].values).index(rec["hours_after_calibration"])
    assert rec["calibration"] == str(ds["time_calibration"].values[j])
    # the recommended case treats at the fixed date with the chosen week's vial
    again = fixed.recommended_case(case)
    assert again.plan.treatment == case.plan.treatment and again.calibration == cals[j]
    assert "vial calibrated" in fixed.text()


def test_ties_go_to_the_preferred_day_then_the_smaller_vial(case_text):
    """Every candidate meets the target for sure (T:N 8, small tumour) and keeps the limits: all tie. The
    preferred day (72 h, week 1 Wednesday) wins over an earlier day with a smaller vial."""
    text = case_text.replace("tn_ratio = { value = 3.2, cv = 0.35 }", "tn_ratio = 8").replace(
        "volume_ml = { value = 180, cv = 0.17 }", "volume_ml = 20").replace(
        "vial_gbq = 7", 'vial_gbq = 7\nhours_after_calibration = [48, 72]').replace(
        "[vials]\n", "[vials]\nactivities_gbq = [5, 7]\n")
    res = y90opt.plan(y90opt.parse_case(text, "ties.toml"), samples=2000, optuna_trials=0)
    ps = res.dataset["p_success"].values
    assert np.ptp(ps[res.dataset["feasible"].values.astype(bool)]) <= 0.005  # all tied
    rec = res.summary["recommended"]
    assert (rec["hours_after_calibration"], rec["vial_gbq"]) == (72.0, 5.0)
    assert "preferred days first" in res.summary["tie_rule"]


def test_custom_catalogue_and_calendar_fields_are_checked(case_text):
    c = y90opt.parse_case(case_text.replace("[vials]\n", '[vials]\ncatalogue = "custom"\n'), "c.toml")
    assert c.vials_gbq.values[:3] == (3.0, 3.5, 4.0) and c.vials_gbq.values[-1] == 20.0 and len(c.vials_gbq.values) == 35
    for extra, field in [('treatment_days = ["Mon", "Caturday"]', "plan.treatment_days[1]"),
                         ('clinic_hours = ["17:00", "08:00"]', "plan.clinic_hours"),
                         ('holidays = ["2026-13-01"]', "plan.holidays[0]"),
                         ("min_lead_time_h = -1", "plan.min_lead_time_h")]:
        with pytest.raises(y90opt.InputError) as e:
            y90opt.parse_case(case_text.replace("vial_gbq = 7", f"vial_gbq = 7\n{extra}"), "c.toml")
        assert e.value.field == field


def test_fixed_date_last_weeks_vial_arrived_a_week_earlier(case_text):
    """This week's vial arrives Thursday, after a Wednesday treatment; last week's (delivered a week earlier)
    is on site: a fixed-date plan still offers it."""
    text = case_text.replace('calibration = "2026-12-06T12:00:00-05:00"',
                             'calibration = "2026-12-06T12:00:00-05:00"\ndelivered = "2026-12-10T08:00:00-05:00"')
    fixed = y90opt.plan(y90opt.parse_case(text, "d.toml"), samples=2000, optuna_trials=0, fixed_date=True)
    assert list(fixed.dataset["hours_after_calibration"].values) == pytest.approx([240.0])
    assert fixed.summary["excluded_times"] and "before the vial" in fixed.summary["excluded_times"][0]["reason"]
