"""Dose models: published values, closed forms, the numpy reference in eager/jit/vmap, mutation checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from y90opt import dosimetry
from y90opt.physics import Conventions
from y90opt.reference import reference_doses

UNIT_DENSITY = Conventions(tissue_density_g_per_ml=1.0)


def inputs(perfused=1000.0, tv=(100.0,), tn=(4.0,), treated=(True,), lsf=0.0, lung_kg=1.0, r=0.0, whole=np.nan, prior=0.0):
    return dosimetry.DoseInputs(
        perfused_volume_ml=jnp.asarray(perfused),
        tumor_volume_ml=jnp.asarray(tv, dtype=float),
        tn_ratio=jnp.asarray(tn, dtype=float),
        tumor_treated=jnp.asarray(treated, dtype=float),
        shunt_fraction=jnp.asarray(lsf),
        lung_mass_kg=jnp.asarray(lung_kg),
        residual_fraction=jnp.asarray(r),
        whole_liver_volume_ml=jnp.asarray(whole),
        prior_lung_dose_gy=jnp.asarray(prior),
    )


def test_dsc_worked_example_liver_activity():
    # DSC 2022, MIRD schema: 2.2 GBq infused, residual 1 %, lung shunt 5 % → 2.07 GBq implanted in the liver
    d = dosimetry.doses(2.2, inputs(lsf=0.05, r=0.01))
    assert float(d["liver"]) == pytest.approx(2.07, abs=0.005)
    assert float(d["liver"]) == pytest.approx(2.2 * 0.99 * 0.95, rel=1e-12)


def test_ifu_lung_limit():
    # TheraSphere IFU: 0.61 GBq (16.5 mCi) to the lungs ↔ ≈ 30 Gy with a 1 kg lung at K = 50
    d = dosimetry.doses(0.61 / 0.1, inputs(lsf=0.1))
    assert float(d["lung_activity"]) == pytest.approx(0.61)
    assert float(d["lung"]) == pytest.approx(30.5, abs=0.01)


def test_partition_hand_computed():
    # Hand computation: M_P = 1 kg, M_T = 0.1 kg, M_N = 0.9 kg, T:N = 4, A_liver = 1 GBq, K = 50:
    # D_N = 50 / (4·0.1 + 0.9) = 38.4615 Gy, D_T = 153.846 Gy, D_P = 50 Gy
    d = dosimetry.doses(1.0, inputs(), UNIT_DENSITY)
    assert float(d["normal_perfused"]) == pytest.approx(50 / 1.3, rel=1e-12)
    assert float(d["tumors"][0]) == pytest.approx(200 / 1.3, rel=1e-12)
    assert float(d["perfused_mean"]) == pytest.approx(50.0, rel=1e-12)


def test_single_compartment_closed_form():
    # D = K · A (1 − R)(1 − F) / M: 3 GBq, R = 2 %, F = 10 %, 500 mL at 1.03 g/mL
    d = dosimetry.doses(3.0, inputs(perfused=500.0, tv=(), tn=(), treated=(), lsf=0.1, r=0.02))
    assert float(d["perfused_mean"]) == pytest.approx(50 * 3 * 0.98 * 0.9 / 0.515, rel=1e-12)


def test_whole_normal_liver_hand_computed():
    # 1 GBq to the liver; perfused 1000 mL with a 100 mL T:N 4 tumour; whole liver 2000 mL with an untreated
    # 50 mL tumour: A_N = D_N·M_N/K = 0.9/1.3 GBq over M_WN = 2 − 0.15 = 1.85 kg
    d = dosimetry.doses(1.0, inputs(tv=(100.0, 50.0), tn=(4.0, 2.0), treated=(True, False), whole=2000.0), UNIT_DENSITY)
    assert float(d["whole_normal_liver"]) == pytest.approx(50 * (0.9 / 1.3) / 1.85, rel=1e-12)
    assert float(d["tumors"][1]) == 0.0
    assert float(d["whole_liver"]) == pytest.approx(25.0, rel=1e-12)


def test_energy_balance():
    x = inputs(tv=(120.0, 40.0), tn=(3.0, 1.5), treated=(True, True), lsf=0.07, r=0.01)
    conv = Conventions()
    d = dosimetry.doses(4.0, x, conv)
    kg = conv.kg_per_ml
    m_t = np.array([120.0, 40.0]) * kg
    m_n = 1000 * kg - m_t.sum()
    energy = float(jnp.sum(d["tumors"] * m_t)) + float(d["normal_perfused"]) * m_n
    assert energy == pytest.approx(conv.dose_constant_gy_kg_per_gbq * float(d["liver"]), rel=1e-12)


def test_mutation_shunt_applied_once():
    # applying (1 − F) twice would give 50·0.9·0.9 = 40.5 Gy per kg·GBq, not 45
    d = dosimetry.doses(1.0, inputs(perfused=1000.0, tv=(), tn=(), treated=(), lsf=0.1), UNIT_DENSITY)
    assert float(d["perfused_mean"]) == pytest.approx(45.0, rel=1e-12)


def test_mutation_partition_weighting():
    # weighting by M_N·(T:N + 1) = 4.5 kg would give D_N = 11.1 Gy instead of 38.46 Gy
    d = dosimetry.doses(1.0, inputs(), UNIT_DENSITY)
    assert float(d["normal_perfused"]) != pytest.approx(50 / 4.5, rel=1e-3)
    assert float(d["normal_perfused"]) == pytest.approx(38.4615, abs=1e-4)


def test_linear_in_activity_and_lung_cumulative_affine():
    x = inputs(lsf=0.08, prior=12.0)
    d1, d3 = dosimetry.doses(1.0, x), dosimetry.doses(3.0, x)
    for k in ("perfused_mean", "normal_perfused", "lung", "tumor_total"):
        assert float(d3[k]) == pytest.approx(3 * float(d1[k]), rel=1e-12)
    assert float(d3["lung_cumulative"]) == pytest.approx(12.0 + 3 * float(d1["lung"]), rel=1e-12)


def test_inverse_helper_round_trip():
    x = inputs(lsf=0.05, r=0.01, prior=10.0)
    s = dosimetry.required_vial_activity_at_treatment_gbq(205.0, "tumor", x, tumor_index=0)
    assert float(dosimetry.doses(s, x)["tumors"][0]) == pytest.approx(205.0, rel=1e-12)
    s = dosimetry.required_vial_activity_at_treatment_gbq(50.0, "lung_cumulative", x)
    assert float(dosimetry.doses(s, x)["lung_cumulative"]) == pytest.approx(50.0, rel=1e-12)
    with pytest.raises(ValueError):
        dosimetry.required_vial_activity_at_treatment_gbq(1.0, "spleen", x)


positive = st.floats(0.5, 5.0)
_jitted_doses = jax.jit(dosimetry.doses)


@settings(max_examples=40, deadline=None)
@given(
    s=st.floats(0.1, 20.0), perfused=st.floats(300.0, 3000.0), f1=st.floats(0.01, 0.3), f2=st.floats(0.01, 0.3),
    tn1=positive, tn2=positive, lsf=st.floats(0.0, 0.3), r=st.floats(0.0, 0.1), lung=st.floats(0.5, 1.5),
    extra=st.floats(1.0, 2.0), prior=st.floats(0.0, 30.0), treated2=st.booleans(),
)
def test_jax_matches_numpy_reference(s, perfused, f1, f2, tn1, tn2, lsf, r, lung, extra, prior, treated2):
    tv = (perfused * f1, perfused * f2)
    whole = perfused * extra + tv[1]
    x = inputs(perfused, tv, (tn1, tn2), (True, treated2), lsf, lung, r, whole, prior)
    ref = reference_doses(s, perfused, np.array(tv), np.array([tn1, tn2]), np.array([True, treated2]), lsf, lung, r, whole, prior)
    eager = dosimetry.doses(s, x)
    jitted = _jitted_doses(s, x)
    for k in ref:
        np.testing.assert_allclose(np.asarray(eager[k]), ref[k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jitted[k]), ref[k], rtol=1e-12, atol=1e-12)


def test_vmap_matches_reference_batch():
    rng = np.random.default_rng(1)
    n = 64
    perfused = rng.uniform(500, 2000, n)
    tv = rng.uniform(10, 200, (n, 2))
    tn = rng.uniform(1, 6, (n, 2))
    lsf = rng.uniform(0, 0.2, n)
    r = rng.uniform(0, 0.05, n)
    lung = rng.uniform(0.7, 1.2, n)
    whole = perfused * 1.6
    s = rng.uniform(1, 10, n)
    treated = jnp.asarray([1.0, 1.0])

    def one(s_, p_, tv_, tn_, f_, r_, l_, w_):
        return dosimetry.doses(s_, dosimetry.DoseInputs(p_, tv_, tn_, treated, f_, l_, r_, w_, jnp.asarray(5.0)))

    out = jax.vmap(one)(s, perfused, tv, tn, lsf, r, lung, whole)
    ref = reference_doses(s, perfused, tv, tn, np.array([True, True]), lsf, lung, r, whole, 5.0)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-12)


def test_float32_close_to_float64():
    x32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), inputs(lsf=0.05, r=0.01, whole=1800.0))
    d32 = dosimetry.doses(jnp.float32(3.0), x32)
    d64 = dosimetry.doses(3.0, inputs(lsf=0.05, r=0.01, whole=1800.0))
    assert d32["normal_perfused"].dtype == jnp.float32
    for k in ("normal_perfused", "perfused_mean", "whole_normal_liver", "lung"):
        assert float(d32[k]) == pytest.approx(float(d64[k]), rel=1e-6)


def test_jit_does_not_recompile_across_decisions():
    f = jax.jit(dosimetry.doses)
    x = inputs()
    f(1.0, x)
    before = f._cache_size()
    for s in (2.0, 3.5, 7.0):
        f(s, x)
    assert f._cache_size() == before
