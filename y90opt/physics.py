"""Physical constants, dosimetry conventions and Y-90 decay.

Every constant here is a *convention with a source* (see the project's domain reference, §1). They are
collected in :class:`Conventions`, an immutable record that every result carries, so that a dose is never
reported without the dose constant, half-life and density it was computed with.

Units are in the names: ``_gbq``, ``_h``, ``_kg``, ``_gy``, ``_bq``, ``_ml``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math

# --- cited defaults -----------------------------------------------------------------------------------

#: Y-90 half-life [h]. TheraSphere package insert (64.1 h, 2.67 d). Alternatives: 64.05 h (ENSDF),
#: 64.2 h (older insert).
HALF_LIFE_H: float = 64.1

#: Dose constant K [Gy·kg/GBq]: the absorbed dose per unit mass from the full decay of 1 GBq, as used by the
#: DSC 2022 MIRD formula and the TheraSphere IFU. Alternatives: 49.67 (EANM, MIRD-based tools),
#: 49.38 (AAPM MPPG).
DOSE_CONSTANT_GY_KG_PER_GBQ: float = 50.0

#: Soft-tissue density [g/mL], common TheraSphere practice. Alternative: 1.05 g/mL.
TISSUE_DENSITY_G_PER_ML: float = 1.03

#: Lung mass [kg] assumed by the IFU's lung-dose formula. CT-measured mean 0.82 ± 0.10 kg
#: (Kao et al., EJNMMI Res 2014, doi:10.1186/s13550-014-0033-7).
LUNG_MASS_KG: float = 1.0

#: Mean beta energy of Y-90 [MeV], TheraSphere package insert.
MEAN_BETA_ENERGY_MEV: float = 0.9367

#: Activity per glass microsphere at calibration [Bq] (Hepatic Oncology 2014 Table 3; 1250-2500 Bq quoted).
BQ_PER_SPHERE_AT_CALIBRATION: float = 2500.0

#: 1 mCi in GBq (exact: 1 Ci = 3.7e10 Bq).
GBQ_PER_MCI: float = 0.037

#: Standard TheraSphere vial activities at calibration [GBq] (package insert).
STANDARD_VIALS_GBQ: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0, 15.0, 20.0)

#: Joules per MeV.
J_PER_MEV: float = 1.602176634e-13


@dataclasses.dataclass(frozen=True)
class Conventions:
    """Named, overridable dosimetry conventions. Defaults from the domain reference §1.

    Attributes:
        dose_constant_gy_kg_per_gbq: K in D = K · A / M.
        half_life_h: Y-90 physical half-life.
        tissue_density_g_per_ml: converts segmented volumes to masses.
        bq_per_sphere_at_calibration: activity per sphere at the vial's calibration time.
    """

    dose_constant_gy_kg_per_gbq: float = DOSE_CONSTANT_GY_KG_PER_GBQ
    half_life_h: float = HALF_LIFE_H
    tissue_density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML
    bq_per_sphere_at_calibration: float = BQ_PER_SPHERE_AT_CALIBRATION

    @property
    def kg_per_ml(self) -> float:
        return self.tissue_density_g_per_ml / 1000.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


#: The field names a case's ``[conventions]`` table may set.
CONVENTION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Conventions))

#: The range of each convention around its cited values (the alternatives quoted above, with a margin): a
#: value outside is a typo or a unit error unless the case says ``custom = true`` in ``[conventions]``, and
#: then every output flags it.
CONVENTION_RANGES: dict[str, tuple[float, float]] = {
    "dose_constant_gy_kg_per_gbq": (48.0, 52.0),     # 49.38 (AAPM), 49.67 (EANM), 50 (DSC, IFU)
    "half_life_h": (63.5, 64.7),                     # 64.05 (ENSDF), 64.1 (insert), 64.2 (older insert)
    "tissue_density_g_per_ml": (0.95, 1.10),          # 1.03, 1.05
    "bq_per_sphere_at_calibration": (1000.0, 5000.0),  # 1250-2500 quoted
}

#: Hard bounds even a custom convention must respect (beyond them the arithmetic itself breaks down).
CONVENTION_HARD_RANGES: dict[str, tuple[float, float]] = {
    "dose_constant_gy_kg_per_gbq": (1.0, 1000.0),
    "half_life_h": (1.0, 10000.0),
    "tissue_density_g_per_ml": (0.1, 10.0),
    "bq_per_sphere_at_calibration": (1.0, 1e6),
}

#: Largest vial activity [GBq] a case may name: ten times the largest standard vial (20 GBq). A larger number
#: is not a product (a unit error: MBq for GBq, say).
MAX_VIAL_GBQ: float = 200.0

#: A vial's usable life after calibration [h], used to refuse treatments that no vial could serve. The
#: package insert we cite states no expiry; 15 days covers every scenario window (at most 216 h, 9 days)
#: and the fixed-date plans of the previous week's vial with margin. Unconfirmed: a case may set its own with
#: ``[vials] usable_life_h``.
USABLE_LIFE_H: float = 360.0


def energy_per_gbq_j(half_life_h: float = HALF_LIFE_H, mean_beta_mev: float = MEAN_BETA_ENERGY_MEV) -> float:
    """Energy [J] released by the complete decay of 1 GBq of Y-90: A · τ · Ē, τ = T½ / ln 2.

    With the insert's 64.1 h and 0.9367 MeV this is 49.96 J, which is why K = 50 Gy·kg/GBq.
    """
    mean_life_s = half_life_h * 3600.0 / math.log(2.0)
    return 1e9 * mean_life_s * mean_beta_mev * J_PER_MEV


def decay_factor(delay_h, half_life_h: float = HALF_LIFE_H):
    """Fraction of activity left after ``delay_h`` hours: 2^(−Δt/T½). Works on floats and arrays."""
    return 2.0 ** (-(delay_h / half_life_h))


def require_aware(when: _dt.datetime, what: str = "datetime") -> _dt.datetime:
    """Return ``when`` if it carries a UTC offset, else raise ``ValueError``."""
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise ValueError(f"{what} has no UTC offset")
    return when


def hours_between(start: _dt.datetime, end: _dt.datetime) -> float:
    """Elapsed hours from ``start`` to ``end``; both must be time-zone aware (no naive datetimes)."""
    require_aware(start, "start")
    require_aware(end, "end")
    return (end - start).total_seconds() / 3600.0


def vial_activity_at_gbq(
    activity_at_calibration_gbq: float,
    calibration: _dt.datetime,
    when: _dt.datetime,
    half_life_h: float = HALF_LIFE_H,
) -> float:
    """Activity of a vial at ``when`` given its activity at ``calibration`` (both time-zone aware)."""
    return activity_at_calibration_gbq * decay_factor(hours_between(calibration, when), half_life_h)


def gbq_to_mci(activity_gbq):
    return activity_gbq / GBQ_PER_MCI


def mci_to_gbq(activity_mci):
    return activity_mci * GBQ_PER_MCI


def spheres_per_vial(activity_at_calibration_gbq: float, conventions: Conventions = Conventions()) -> float:
    """Number of microspheres in a vial: A_cal / (activity per sphere at calibration)."""
    return activity_at_calibration_gbq * 1e9 / conventions.bq_per_sphere_at_calibration


def activity_per_sphere_bq(delay_h: float, conventions: Conventions = Conventions()) -> float:
    """Activity of one sphere ``delay_h`` hours after calibration [Bq]."""
    return conventions.bq_per_sphere_at_calibration * decay_factor(delay_h, conventions.half_life_h)


def hours_until_sphere_activity(threshold_bq: float, conventions: Conventions = Conventions()) -> float:
    """Hours after calibration at which the activity per sphere falls to ``threshold_bq``."""
    return conventions.half_life_h * math.log2(conventions.bq_per_sphere_at_calibration / threshold_bq)
