"""Decay, conventions and product facts against published values (domain reference §1, §3, §6)."""

import datetime as dt
import math

import pytest

from y90opt import physics


def test_energy_per_gbq_gives_dose_constant():
    # domain reference §1: 1 GBq decaying fully deposits 49.96 J with T½ 64.1 h and Ē 0.9367 MeV
    assert physics.energy_per_gbq_j() == pytest.approx(49.96, abs=0.01)


@pytest.mark.parametrize(
    "days, fraction",
    # domain reference §2, decay fractions at T½ = 64.1 h
    [(1, 0.7714), (2, 0.5951), (3, 0.4591), (4, 0.3541), (5, 0.2732), (8, 0.1254), (9, 0.0967)],
)
def test_published_decay_fractions(days, fraction):
    assert physics.decay_factor(24.0 * days) == pytest.approx(fraction, abs=6e-5)


def test_one_half_life_halves_and_decay_composes():
    assert physics.decay_factor(64.1) == pytest.approx(0.5, rel=1e-15)
    assert physics.decay_factor(30.0) * physics.decay_factor(50.0) == pytest.approx(physics.decay_factor(80.0), rel=1e-14)


def test_hoang_premeasurement_decay_loss():
    # Hoang et al.: 2.20 h at T½ 64.1 h is a 2.35 % decay loss
    assert 1 - physics.decay_factor(2.20) == pytest.approx(0.0235, abs=5e-5)


def test_package_insert_vials_in_mci():
    # package insert: 3, 5, 7, 10, 15, 20 GBq = 81, 135, 189, 270, 405, 540 mCi
    mci = [physics.gbq_to_mci(a) for a in physics.STANDARD_VIALS_GBQ]
    assert mci == pytest.approx([81, 135, 189, 270, 405, 540], abs=0.6)
    assert physics.mci_to_gbq(16.5) == pytest.approx(0.61, abs=0.001)  # IFU lung limit 16.5 mCi ↔ 0.61 GBq


def test_spheres_per_vial_published():
    # Hepatic Oncology 2014: a 3 GBq vial at ≈ 2500 Bq per sphere holds 1.2 million spheres
    assert physics.spheres_per_vial(3.0) == pytest.approx(1.2e6)


def test_sphere_activity_threshold_times():
    # domain reference §3: ≥ 297 Bq per sphere holds until ≈ 197 h at 2500 Bq, 133 h at 1250 Bq per sphere
    assert physics.hours_until_sphere_activity(297) == pytest.approx(197, abs=0.5)
    half = physics.Conventions(bq_per_sphere_at_calibration=1250.0)
    assert physics.hours_until_sphere_activity(297, half) == pytest.approx(133, abs=0.5)


def test_hours_between_uses_offsets():
    cal = dt.datetime.fromisoformat("2026-12-06T12:00:00-05:00")  # Sunday noon US Eastern
    paris = dt.datetime.fromisoformat("2026-12-09T18:00:00+01:00")  # Wednesday 18:00 Paris = 12:00 Eastern
    assert physics.hours_between(cal, paris) == pytest.approx(72.0)
    with pytest.raises(ValueError):
        physics.hours_between(cal, dt.datetime(2026, 12, 9, 12))


def test_vial_activity_between_datetimes():
    cal = dt.datetime.fromisoformat("2026-12-06T12:00:00-05:00")
    t = cal + dt.timedelta(hours=64.1)
    assert physics.vial_activity_at_gbq(10.0, cal, t) == pytest.approx(5.0)
    assert math.isclose(physics.decay_factor(0.0), 1.0)
