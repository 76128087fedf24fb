"""Plain-numpy reference implementation of the dose models, written independently of the JAX models.

It follows the domain reference's formulas literally, activity first and then dose, one tumour at a time,
in float64. Tests compare the JAX models with it; benchmarks use it as the numpy baseline.
"""

from __future__ import annotations

import numpy as np


def reference_doses(
    vial_at_treatment_gbq: float | np.ndarray,
    perfused_volume_ml,
    tumor_volume_ml,
    tn_ratio,
    tumor_treated,
    shunt_fraction,
    lung_mass_kg,
    residual_fraction,
    whole_liver_volume_ml=np.nan,
    prior_lung_dose_gy=0.0,
    dose_constant_gy_kg_per_gbq: float = 50.0,
    tissue_density_g_per_ml: float = 1.03,
) -> dict[str, np.ndarray]:
    """Doses [Gy] and activities [GBq]; tumour arrays have the tumour axis last."""
    K = dose_constant_gy_kg_per_gbq
    rho = tissue_density_g_per_ml / 1000.0  # kg per mL
    s = np.asarray(vial_at_treatment_gbq, dtype=np.float64)
    a_injected = s * (1.0 - np.asarray(residual_fraction, dtype=np.float64))
    a_lung = a_injected * shunt_fraction
    a_liver = a_injected - a_lung

    tv = np.atleast_1d(np.asarray(tumor_volume_ml, dtype=np.float64))
    tn = np.atleast_1d(np.asarray(tn_ratio, dtype=np.float64))
    treated = np.atleast_1d(np.asarray(tumor_treated, dtype=bool))
    n_tumors = treated.shape[-1] if treated.ndim else 0

    m_perfused = np.asarray(perfused_volume_ml, dtype=np.float64) * rho
    m_normal = m_perfused.copy()
    uptake_weighted_mass = np.zeros(np.broadcast(m_perfused, a_liver).shape)
    m_all_tumors = np.zeros_like(uptake_weighted_mass)
    m_treated_tumors = np.zeros_like(uptake_weighted_mass)
    for i in range(n_tumors):
        m_ti = tv[..., i] * rho
        m_all_tumors = m_all_tumors + m_ti
        if treated[i]:
            m_normal = m_normal - m_ti
            m_treated_tumors = m_treated_tumors + m_ti
            uptake_weighted_mass = uptake_weighted_mass + tn[..., i] * m_ti
    uptake_weighted_mass = uptake_weighted_mass + m_normal

    d_normal = K * a_liver / uptake_weighted_mass
    tumors = []
    energy_in_tumors = np.zeros_like(d_normal)
    for i in range(n_tumors):
        d_ti = tn[..., i] * d_normal if treated[i] else np.zeros_like(d_normal)
        tumors.append(d_ti)
        if treated[i]:
            energy_in_tumors = energy_in_tumors + d_ti * tv[..., i] * rho
    tumors_arr = np.stack(tumors, axis=-1) if tumors else np.zeros(d_normal.shape + (0,))
    with np.errstate(invalid="ignore", divide="ignore"):
        tumor_total = energy_in_tumors / m_treated_tumors

    m_whole = np.asarray(whole_liver_volume_ml, dtype=np.float64) * rho
    a_normal = d_normal * m_normal / K
    d_lung = K * a_lung / lung_mass_kg
    return {
        "injected": a_injected,
        "liver": a_liver,
        "lung_activity": a_lung,
        "perfused_mean": K * a_liver / m_perfused,
        "normal_perfused": d_normal,
        "whole_normal_liver": K * a_normal / (m_whole - m_all_tumors),
        "whole_liver": K * a_liver / m_whole,
        "lung": d_lung,
        "lung_cumulative": prior_lung_dose_gy + d_lung,
        "tumor_total": tumor_total,
        "tumors": tumors_arr,
    }
