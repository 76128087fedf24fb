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


def reference_treatment_doses(
    vial_at_treatment_gbq,
    within,
    session,
    territory_volume_ml,
    tumor_region,
    tumor_volume_ml,
    tn_ratio,
    shunt_fraction,
    lung_mass_kg,
    residual_fraction,
    whole_liver_volume_ml=np.nan,
    prior_lung_dose_gy=0.0,
    activity_factor=None,
    dose_constant_gy_kg_per_gbq: float = 50.0,
    tissue_density_g_per_ml: float = 1.03,
) -> dict:
    """Doses [Gy] of a treatment of several injections, written literally from the formulas, injection by
    injection and region by region (float64; inputs may be arrays of samples on a leading axis).

    Args:
        vial_at_treatment_gbq: per injection j, its vial's activity at its session's treatment.
        within: per injection, the index of the injection whose territory holds its own, or -1.
        session: per injection, the index of its session.
        territory_volume_ml: per injection, its whole territory (all nested in it included).
        tumor_region: per tumour, the injection whose region holds it (-1: in no territory, untreated).
        tn_ratio: [j][i] the T:N of tumour i for injection j.
        shunt_fraction, residual_fraction, activity_factor: per injection.

    Returns a dict: ``injections`` (per injection: injected, liver, lung activity, perfused_mean and
    normal_perfused, from that injection alone), ``regions`` (per region: mean and normal, all injections),
    ``tumors`` (per tumour), ``tumors_by_injection`` ([j][i]: tumour i's dose from injection j alone),
    ``tumor_total``, ``lung_sessions``, ``lung_cumulative``, and with the whole liver
    ``whole_normal_liver_sessions``, ``whole_normal_liver``, ``whole_liver``; ``energy`` the energy
    deposited in each region [Gy·kg] and ``energy_injected`` the energy of the liver activity [Gy·kg].
    """
    K = dose_constant_gy_kg_per_gbq
    rho = tissue_density_g_per_ml / 1000.0
    n_j = len(within)
    n_t = len(tumor_region)
    n_s = max(session) + 1 if n_j else 0
    f64 = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    af = [1.0] * n_j if activity_factor is None else activity_factor

    def inside(r, j):  # region r lies in injection j's territory
        while r != -1:
            if r == j:
                return True
            r = within[r]
        return False

    m_terr = [f64(territory_volume_ml[j]) * rho for j in range(n_j)]
    m_tum = [f64(tumor_volume_ml[i]) * rho for i in range(n_t)]
    # a region's mass: its territory less the territories directly inside it; its normal tissue: less its tumours
    m_region, m_region_normal = [], []
    for r in range(n_j):
        m = m_terr[r]
        for c in range(n_j):
            if within[c] == r:
                m = m - m_terr[c]
        m_region.append(m)
        mn = m
        for i in range(n_t):
            if tumor_region[i] == r:
                mn = mn - m_tum[i]
        m_region_normal.append(mn)

    inj = {}
    d_normal = []
    energy = [0.0] * n_j
    tumors = [0.0] * n_t
    by_injection = [[0.0] * n_t for _ in range(n_j)]
    energy_injected = 0.0
    lung = [0.0] * n_s
    normal_energy_by_session = [0.0] * n_s
    liver_by_session = [0.0] * n_s
    for j in range(n_j):
        a_injected = f64(vial_at_treatment_gbq[j]) * f64(af[j]) * (1.0 - f64(residual_fraction[j]))
        a_lung = a_injected * f64(shunt_fraction[j])
        a_liver = a_injected - a_lung
        energy_injected = energy_injected + K * a_liver
        # the partition over the whole territory: every tumour in it weighted by its T:N, normal tissue by 1
        m_normal_terr = m_terr[j]
        weighted = 0.0
        for i in range(n_t):
            if tumor_region[i] != -1 and inside(tumor_region[i], j):
                m_normal_terr = m_normal_terr - m_tum[i]
                weighted = weighted + f64(tn_ratio[j][i]) * m_tum[i]
        weighted = weighted + m_normal_terr
        dn = K * a_liver / weighted
        d_normal.append(dn)
        for i in range(n_t):
            if tumor_region[i] != -1 and inside(tumor_region[i], j):
                tumors[i] = tumors[i] + f64(tn_ratio[j][i]) * dn
                by_injection[j][i] = f64(tn_ratio[j][i]) * dn
        for r in range(n_j):
            if inside(r, j):
                e = dn * m_region_normal[r]
                for i in range(n_t):
                    if tumor_region[i] == r:
                        e = e + f64(tn_ratio[j][i]) * dn * m_tum[i]
                energy[r] = energy[r] + e
        lung[session[j]] = lung[session[j]] + K * a_lung / f64(lung_mass_kg)
        normal_energy_by_session[session[j]] = normal_energy_by_session[session[j]] + dn * m_normal_terr
        liver_by_session[session[j]] = liver_by_session[session[j]] + K * a_liver
        inj[j] = {"injected": a_injected, "liver": a_liver, "lung": a_lung,
                  "perfused_mean": K * a_liver / m_terr[j], "normal_perfused": dn}
    regions = {}
    for r in range(n_j):
        normal = 0.0
        for j in range(n_j):
            if inside(r, j):
                normal = normal + d_normal[j]
        regions[r] = {"mean": energy[r] / m_region[r], "normal": normal}
    m_treated = f64(sum((m_tum[i] for i in range(n_t) if tumor_region[i] != -1), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        tumor_total = f64(sum((tumors[i] * m_tum[i] for i in range(n_t) if tumor_region[i] != -1), 0.0)) / m_treated
    out = {
        "injections": inj,
        "regions": regions,
        "tumors": tumors,
        "tumors_by_injection": by_injection,
        "tumor_total": tumor_total,
        "lung_sessions": lung,
        "lung_cumulative": prior_lung_dose_gy + sum(lung, 0.0),
        "energy": energy,
        "energy_injected": energy_injected,
    }
    m_whole = f64(whole_liver_volume_ml) * rho
    m_whole_normal = m_whole - sum(m_tum, 0.0)
    out["whole_normal_liver_sessions"] = [e / m_whole_normal for e in normal_energy_by_session]
    out["whole_normal_liver"] = sum(normal_energy_by_session, 0.0) / m_whole_normal
    out["whole_liver"] = sum(liver_by_session, 0.0) / m_whole
    return out
