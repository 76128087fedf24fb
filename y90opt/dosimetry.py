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


# -- several injections ---------------------------------------------------------------------------------------


class TreatmentInputs(NamedTuple):
    """Patient inputs of a treatment of several injections (samples on the leading axis).

    Injection j deposits its liver activity over its whole territory by the partition model; a region is a
    territory less the territories nested in it. ``whole_liver_volume_ml`` may be NaN when unknown."""

    territory_volume_ml: Array  # (..., J) all that lies inside each territory included
    tumor_volume_ml: Array  # (..., T)
    tn_ratio: Array  # (..., J, T) the T:N of tumour i for injection j
    shunt_fraction: Array  # (..., J)
    residual_fraction: Array  # (..., J)
    activity_factor: Array  # (..., J) the dose calibrator's factor of each vial
    lung_mass_kg: Array  # (...,)
    whole_liver_volume_ml: Array  # (...,) NaN if not given


def treatment_factors(x: TreatmentInputs, within: tuple[int, ...], tumor_region: tuple[int, ...],
                      conv: Conventions = Conventions()) -> dict[str, Array]:
    r"""Per-GBq dose factors of a treatment of several injections: every dose is linear in the vector of vial
    activities at treatment, D = Σ_j s_j u_j, and this returns the u_j.

    ``within[j]``: the injection whose territory holds j's (−1: none); ``tumor_region[i]``: the region that
    holds tumour i (−1: none, untreated). With C_{jr} = 1 when region r lies in territory j, for injection j:

    .. math::

        A_j &= f_j (1 - R_j)(1 - F_j), \quad W_j = \textstyle\sum_i C_{j r_i} \mathrm{TN}_{ji} M_{T_i}
              + M_j - \sum_i C_{j r_i} M_{T_i}, \quad D_{N,j} = K A_j / W_j \\
        D_{T_i} &= \textstyle\sum_j C_{j r_i} \mathrm{TN}_{ji} D_{N,j}, \quad
        D_{N}(r) = \sum_j C_{jr} D_{N,j}, \quad
        \bar D(r) = \sum_j C_{jr} D_{N,j} \big(M_{N,r} + \sum_{i \in r} \mathrm{TN}_{ji} M_{T_i}\big) / M_r

    Returns arrays with the injection axis before the last: ``injected``, ``liver_activity``,
    ``lung_activity``, ``perfused_mean``, ``normal_perfused``, ``lung``, ``whole_normal_liver``,
    ``whole_liver``, ``tumor_total`` (..., J); ``tumors`` (..., J, T); ``region_mean``, ``region_normal``
    (..., J, R) (R = J regions); and ``region_normal_mass`` (..., R), ≤ 0 marking an unphysical sample.
    """
    k = conv.dose_constant_gy_kg_per_gbq
    kg = conv.kg_per_ml
    n_j = len(within)
    n_t = len(tumor_region)

    def inside(r: int, j: int) -> bool:
        while r != -1:
            if r == j:
                return True
            r = within[r]
        return False

    c = [[inside(r, j) for r in range(n_j)] for j in range(n_j)]  # static C[j][r]
    m_terr = x.territory_volume_ml * kg
    m_t = x.tumor_volume_ml * kg
    injected = x.activity_factor * (1.0 - x.residual_fraction)
    liver = injected * (1.0 - x.shunt_fraction)
    lung_act = injected * x.shunt_fraction

    def add(terms, like):
        acc = None
        for t in terms:  # term by term in a fixed order (chunk-size independent)
            acc = t if acc is None else acc + t
        return jnp.zeros_like(like) if acc is None else acc

    zero = m_terr[..., 0] * 0.0
    m_region = [m_terr[..., r] - add([m_terr[..., q] for q in range(n_j) if within[q] == r], zero) for r in range(n_j)]
    m_region_n = [m_region[r] - add([m_t[..., i] for i in range(n_t) if tumor_region[i] == r], zero) for r in range(n_j)]
    d_n, rows = [], {"tumors": [], "region_mean": [], "region_normal": [], "tumor_total": [], "whole_normal_liver": []}
    treated = [i for i in range(n_t) if tumor_region[i] != -1]
    m_treated = add([m_t[..., i] for i in treated], zero)
    m_wl = x.whole_liver_volume_ml * kg
    m_wn = m_wl - add([m_t[..., i] for i in range(n_t)], zero)
    for j in range(n_j):
        ins = [i for i in treated if c[j][tumor_region[i]]]
        tn = x.tn_ratio[..., j, :]
        m_normal_terr = m_terr[..., j] - add([m_t[..., i] for i in ins], zero)
        w = add([tn[..., i] * m_t[..., i] for i in ins], zero) + m_normal_terr
        dn = k * liver[..., j] / w
        d_n.append(dn)
        d_t = [tn[..., i] * dn if i in ins else zero for i in range(n_t)]
        rows["tumors"].append(jnp.stack(d_t, axis=-1) if n_t else jnp.zeros(zero.shape + (0,), zero.dtype))
        rows["tumor_total"].append(add([d_t[i] * m_t[..., i] for i in ins], zero) / m_treated)
        rows["region_normal"].append(jnp.stack([dn if c[j][r] else zero for r in range(n_j)], axis=-1))
        means = []
        for r in range(n_j):
            if not c[j][r]:
                means.append(zero)
                continue
            e = dn * (m_region_n[r] + add([tn[..., i] * m_t[..., i] for i in range(n_t) if tumor_region[i] == r], zero))
            means.append(e / m_region[r])
        rows["region_mean"].append(jnp.stack(means, axis=-1))
        rows["whole_normal_liver"].append(dn * m_normal_terr / m_wn)
    stack = lambda v: jnp.stack(v, axis=-1)  # noqa: E731
    stack2 = lambda v: jnp.stack(v, axis=-2)  # noqa: E731
    return {
        "injected": injected,
        "liver_activity": liver,
        "lung_activity": lung_act,
        "perfused_mean": k * liver / m_terr,
        "normal_perfused": stack(d_n),
        "lung": k * lung_act / x.lung_mass_kg[..., None],
        "whole_normal_liver": stack(rows["whole_normal_liver"]),
        "whole_liver": k * liver / m_wl[..., None],
        "tumor_total": stack(rows["tumor_total"]),
        "tumors": stack2(rows["tumors"]),
        "region_mean": stack2(rows["region_mean"]),
        "region_normal": stack2(rows["region_normal"]),
        "region_normal_mass": stack(m_region_n),
    }
