"""The plain-numpy baseline: the same forward Monte Carlo as the JAX engine, written with numpy only.

``np.random.default_rng`` draws every uncertain input directly (lognormal and normal; no JAX, no copula),
:func:`y90opt.reference.reference_doses` (the independent float64 reference model) gives every dose and
activity, and each chunk is reduced to the same statistics as the JAX benchmark pipeline: the count of valid
samples, the sum of each quantity (→ mean) and the number of samples above a threshold (an exceedance count).
The random streams differ from JAX's, so the two pipelines agree statistically (within standard errors), not
sample by sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from y90opt.case import Case
from y90opt.reference import reference_doses
from y90opt.uncertainty import Fixed, LogNormal, Normal

#: Samples per numpy chunk: memory stays bounded, and on the 2-core benchmark machine 2¹⁶ ran faster than
#: 2¹⁴ or 2¹⁸ (cache), so the baseline gets its best chunk.
DEFAULT_CHUNK = 1 << 16

#: The benchmark case: two tumours (partition model), lung, whole liver; eight uncertain inputs, all
#: lognormal or normal so that the numpy baseline can draw them directly. Both pipelines run this case.
BENCH_CASE = """\
name = "benchmark-two-tumours"
scenario = "multifocal-unilobar"

[liver]
perfused_volume_ml = { value = 1100, cv = 0.12 }
whole_liver_volume_ml = { value = 1800, cv = 0.04 }

[[tumors]]
name = "T1"
volume_ml = { value = 180, cv = 0.17 }
tn_ratio = { value = 3.2, cv = 0.35 }

[[tumors]]
name = "T2"
volume_ml = { value = 40, cv = 0.25 }
tn_ratio = { value = 2.8, cv = 0.35 }

[lung]
shunt_fraction = { value = 0.06, cv = 0.3 }
mass_kg = 1.0

[delivery]
residual_fraction = 0.01
activity_factor = { dist = "normal", mean = 1.0, sd = 0.05 }

[vials]
calibration = "2026-12-06T12:00:00-05:00"
activities_gbq = [3, 5, 7, 10, 15, 20]

[plan]
vial_gbq = 7
treatment = "2026-12-09T12:00:00-05:00"
hours_after_calibration = [72, 96, 120, 192, 216]
"""


@dataclasses.dataclass(frozen=True)
class NumpyModel:
    """A case reduced to what the numpy pipeline needs: one sampler per input and the quantity order."""

    case: Case
    quantities: tuple[str, ...]

    @classmethod
    def from_case(cls, case: Case, quantities: tuple[str, ...]) -> NumpyModel:
        if case.correlations:
            raise NotImplementedError("the numpy baseline draws independent inputs only (no [[correlations]])")
        for path, spec in case.inputs.items():
            if not isinstance(spec, Fixed | LogNormal) and not (isinstance(spec, Normal) and not spec.truncated):
                raise NotImplementedError(f"{path}: the numpy baseline samples fixed, lognormal and normal inputs only")
        return cls(case, tuple(quantities))


def sample_inputs(model: NumpyModel, rng: np.random.Generator, n: int) -> dict[str, np.ndarray | float]:
    """Case path → per-sample values (float64), drawn with ``rng`` (exact inputs stay scalars)."""
    out: dict[str, np.ndarray | float] = {}
    for path, spec in model.case.inputs.items():
        if isinstance(spec, Fixed):
            out[path] = spec.value
        elif isinstance(spec, LogNormal):
            out[path] = rng.lognormal(np.log(spec.median), spec.sigma_ln, n)
        else:
            out[path] = rng.normal(spec.mean, spec.sd, n)
    return out


def doses(model: NumpyModel, x: dict, s_gbq: float) -> tuple[np.ndarray, np.ndarray]:
    """Doses and activities (n, Q) in the order of ``model.quantities`` and the validity mask (n,)."""
    case = model.case
    names = case.tumor_names
    n = next(np.size(v) for v in x.values() if np.ndim(v))
    treated = np.array([t.treated for t in case.tumors], dtype=bool)
    tv = np.stack([np.broadcast_to(x[f"tumors.{t}.volume_ml"], (n,)) for t in names], axis=-1)
    tn = np.stack([np.broadcast_to(x[f"tumors.{t}.tn_ratio"], (n,)) for t in names], axis=-1)
    conv = case.conventions
    d = reference_doses(
        s_gbq * x["delivery.activity_factor"],
        x["liver.perfused_volume_ml"],
        tv,
        tn,
        treated,
        x["lung.shunt_fraction"],
        x["lung.mass_kg"],
        x["delivery.residual_fraction"],
        x.get("liver.whole_liver_volume_ml", np.nan),
        case.prior_lung_dose_gy,
        conv.dose_constant_gy_kg_per_gbq,
        conv.tissue_density_g_per_ml,
    )
    cols = []
    for q in model.quantities:
        v = d["tumors"][:, names.index(q.split(".", 1)[1])] if q.startswith("tumors.") else d[q]
        cols.append(np.broadcast_to(v, (n,)))
    out = np.stack(cols, axis=-1)
    # validity, as in the engine: positive normal liver mass; the whole liver holds the territory
    valid = x["liver.perfused_volume_ml"] - tv[:, treated].sum(axis=-1) > 0
    if case.has_whole_liver:
        outside = tv[:, ~treated].sum(axis=-1)
        valid &= x["liver.whole_liver_volume_ml"] >= x["liver.perfused_volume_ml"] + outside
    return out, valid


def run(model: NumpyModel, n: int, seed: int, s_gbq: float, threshold: np.ndarray, chunk: int = DEFAULT_CHUNK) -> dict:
    """The whole baseline: sample, model, reduce. Returns ``count``, ``sum`` (Q,), ``sumsq`` (Q,), ``exceed`` (Q,)."""
    rng = np.random.default_rng(seed)
    q = len(model.quantities)
    count = 0
    total = np.zeros(q)
    total_sq = np.zeros(q)
    exceed = np.zeros(q, dtype=np.int64)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        d, valid = doses(model, sample_inputs(model, rng, size), s_gbq)
        dv = d[valid]
        count += dv.shape[0]
        total += dv.sum(axis=0)
        total_sq += np.einsum("ij,ij->j", dv, dv)
        exceed += (dv > threshold).sum(axis=0)
    return {"count": count, "sum": total, "sumsq": total_sq, "exceed": exceed}


def model_only(model: NumpyModel, x: dict, s_gbq: float) -> np.ndarray:
    """The model alone on pre-drawn inputs (for the model-only figure)."""
    return doses(model, x, s_gbq)[0]
