r"""Forward dose models: single-compartment MIRD, partition (multicompartment), lung and whole liver.

All functions are pure JAX and broadcast over leading axes; the tumour axis is the last one. Every dose is
proportional to the vial activity at treatment, s = A_cal · 2^(−Δt/T½) (the planner's only lever), so the
models are written as *dose factors* u (Gy per GBq of s) and doses are s · u:

.. math::

    A_{inj} &= s\,(1 - R), \qquad A_{lung} = A_{inj}\,F, \qquad A_{liver} = A_{inj}\,(1 - F) \\
    D_P &= K A_{liver} / M_P \\
    D_N &= K A_{liver} / \big(\textstyle\sum_i \mathrm{TN}_i M_{T_i} + M_N\big), \quad M_N = M_P - \sum_i M_{T_i} \\
    D_{T_i} &= \mathrm{TN}_i\, D_N \\
    D_{lung} &= K A_{lung} / M_{lung}, \qquad D_{lung,cum} = D_{prior} + D_{lung} \\
    D_{WN} &= D_N M_N / (M_{WL} - \textstyle\sum_{all\ i} M_{T_i})

(R residual fraction, F lung shunt fraction, K dose constant; sums over treated tumours unless stated).
The residual and the shunt are each applied exactly once. References: DSC 2022 (MIRD schema and partition
model sections); Ho et al., Eur J Nucl Med 1996 (partition model).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .physics import Conventions

Array = jnp.ndarray

#: Dose outputs of the model, in the order used by the result Datasets. ``tumors`` is per tumour.
DOSE_QUANTITIES: tuple[str, ...] = (
    "perfused_mean",
    "normal_perfused",
    "whole_normal_liver",
    "whole_liver",
    "lung",
    "lung_cumulative",
    "tumor_total",
)


class DoseInputs(NamedTuple):
    """Patient inputs of the forward model (a pytree of arrays; the tumour axis is last).

    ``whole_liver_volume_ml`` may be NaN when unknown: the whole-liver doses are then NaN.
    """

    perfused_volume_ml: Array  # (...,) includes the treated tumours
    tumor_volume_ml: Array  # (..., T)
    tn_ratio: Array  # (..., T) tumour-to-normal uptake concentration ratio
    tumor_treated: Array  # (T,) 1.0 inside the perfused territory, 0.0 outside
    shunt_fraction: Array  # (...,) lung shunt fraction F in [0, 1)
    lung_mass_kg: Array  # (...,)
    residual_fraction: Array  # (...,) R in [0, 1)
    whole_liver_volume_ml: Array  # (...,) includes all tumours; NaN if not given
    prior_lung_dose_gy: Array  # (...,)


class DoseFactors(NamedTuple):
    """Gy (or GBq) per GBq of vial activity at treatment. ``lung_cumulative`` is affine, not linear:
    D = prior + s · lung, so it is not a factor and is built by :func:`doses_from_factors`."""

    injected: Array  # GBq injected per GBq in the vial
    liver_activity: Array
    lung_activity: Array
    perfused_mean: Array
    normal_perfused: Array
    whole_normal_liver: Array
    whole_liver: Array
    lung: Array
    tumor_total: Array
    tumors: Array  # (..., T)
    normal_mass_kg: Array  # M_N; ≤ 0 marks an unphysical sample


def _sum_tumors(a: Array) -> Array:
    """Sum over the (small, static) tumour axis term by term, in a fixed order. A reduction's summation order
    can depend on the batch shape under XLA, which would make results depend on the chunk size."""
    n = a.shape[-1]
    if n == 0:
        return jnp.zeros(a.shape[:-1], a.dtype)
    acc = a[..., 0]
    for i in range(1, n):
        acc = acc + a[..., i]
    return acc


def dose_factors(x: DoseInputs, conv: Conventions = Conventions()) -> DoseFactors:
    """Per-GBq dose factors of the single-compartment, partition, lung and whole-liver models."""
    k = conv.dose_constant_gy_kg_per_gbq
    kg_per_ml = conv.kg_per_ml
    treated = jnp.asarray(x.tumor_treated, dtype=jnp.result_type(x.tumor_volume_ml))

    injected = 1.0 - x.residual_fraction
    liver = injected * (1.0 - x.shunt_fraction)
    lung_act = injected * x.shunt_fraction

    m_p = x.perfused_volume_ml * kg_per_ml
    m_t = x.tumor_volume_ml * kg_per_ml
    m_t_treated = m_t * treated
    m_t_sum = _sum_tumors(m_t_treated)
    m_n = m_p - m_t_sum
    weighted = _sum_tumors(x.tn_ratio * m_t_treated) + m_n

    d_p = k * liver / m_p
    d_n = k * liver / weighted
    d_t = x.tn_ratio * d_n[..., None] * treated
    d_t_total = _sum_tumors(d_t * m_t_treated) / m_t_sum  # mass-weighted mean over treated tumours

    m_wl = x.whole_liver_volume_ml * kg_per_ml
    m_wn = m_wl - _sum_tumors(m_t)
    d_wn = d_n * m_n / m_wn
    d_wl = k * liver / m_wl
    d_lung = k * lung_act / x.lung_mass_kg
    return DoseFactors(
        injected=injected,
        liver_activity=liver,
        lung_activity=lung_act,
        perfused_mean=d_p,
        normal_perfused=d_n,
        whole_normal_liver=d_wn,
        whole_liver=d_wl,
        lung=d_lung,
        tumor_total=d_t_total,
        tumors=d_t,
        normal_mass_kg=m_n,
    )


def doses_from_factors(s_gbq, u: DoseFactors, prior_lung_dose_gy) -> dict[str, Array]:
    """Doses [Gy] and activities [GBq] for vial activity at treatment ``s_gbq`` (broadcasts)."""
    lung = s_gbq * u.lung
    return {
        "injected": s_gbq * u.injected,
        "liver": s_gbq * u.liver_activity,
        "lung_activity": s_gbq * u.lung_activity,
        "perfused_mean": s_gbq * u.perfused_mean,
        "normal_perfused": s_gbq * u.normal_perfused,
        "whole_normal_liver": s_gbq * u.whole_normal_liver,
        "whole_liver": s_gbq * u.whole_liver,
        "lung": lung,
        "lung_cumulative": prior_lung_dose_gy + lung,
        "tumor_total": s_gbq * u.tumor_total,
        "tumors": jnp.asarray(s_gbq)[..., None] * u.tumors,
    }


def doses(s_gbq, x: DoseInputs, conv: Conventions = Conventions()) -> dict[str, Array]:
    """All doses for a vial activity at treatment ``s_gbq`` [GBq] (the whole forward model)."""
    return doses_from_factors(s_gbq, dose_factors(x, conv), x.prior_lung_dose_gy)


#: Quantities a dose can be prescribed to by the inverse helpers.
PRESCRIBABLE = (
    "perfused_mean",
    "normal_perfused",
    "whole_normal_liver",
    "whole_liver",
    "lung",
    "lung_cumulative",
    "tumor_total",
)


def required_vial_activity_at_treatment_gbq(
    dose_gy: float, quantity: str, x: DoseInputs, conv: Conventions = Conventions(), tumor_index: int | None = None
):
    """Vial activity at treatment [GBq] that gives ``dose_gy`` to ``quantity`` (a name of
    :data:`PRESCRIBABLE`, or ``"tumor"`` with ``tumor_index``). Inverts the linear model exactly."""
    u = dose_factors(x, conv)
    if quantity == "tumor":
        if tumor_index is None:
            raise ValueError("tumor_index is required for quantity 'tumor'")
        return dose_gy / u.tumors[..., tumor_index]
    if quantity == "lung_cumulative":
        return (dose_gy - x.prior_lung_dose_gy) / u.lung
    if quantity not in PRESCRIBABLE:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {PRESCRIBABLE + ('tumor',)}")
    return dose_gy / getattr(u, quantity)
