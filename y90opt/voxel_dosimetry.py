"""Voxel dosimetry (``y90opt voxel``): the absorbed-dose map at the case's decision, its VOI metrics and DVH.

Activity map: the case's decision gives the activity injected, A = s (1 − R) (s the vial at treatment, R the
residual, each once), to the liver A (1 − F) and to the lungs A F (F the lung shunt fraction of the case).
The liver activity is spread over the perfused mask in proportion to the 99mTc-MAA SPECT counts, the lung
activity over the lung mask in proportion to its counts (uniformly where it has none).

Dose: each voxel emits the energy of its decays, E = K · A_voxel (K the case's dose constant, Gy·kg/GBq = J
per GBq fully decayed), and D = E_absorbed / m_voxel with m_voxel = ρ · V_voxel, ρ from the CT (1 + HU/1000
g/mL) when the case names one, else the case's tissue density. Two models of where the energy is absorbed:

* **local deposition (LDM)**: in the voxel that emits it. With a uniform density, the LDM mean over the normal
  perfused tissue and over each tumour equals the partition model for the same counts exactly
  (``tests/test_voxel.py``);
* **dose-voxel kernel** (``method="kernel"``): E convolved with the dose-voxel kernel of the image's own voxel
  size (:func:`y90opt.kernels.voxel_kernel`, from a radial kernel: the built-in one fitted to a published voxel S
  table, a published table given by the user, or Loevinger's approximation by name), by FFT (``jnp.fft``; zero
  padding, no wrap-around). The kernel is the soft-tissue
  kernel with its ranges scaled to the case's tissue density; where the CT's density differs from it, the
  energy is redistributed as in soft tissue and divided by the voxel's own mass (local mass scaling): the
  lungs' mean dose is then the energy they absorb over their CT mass, as the lung-dose formula assumes, but
  the longer beta range in lung (about 1/ρ) is not modelled. Voxels of air (ρ < 0.05 g/mL, outside every
  mask) are given no dose.

Both are pure JAX (jit), the same code on CPU and GPU. Outputs: the dose map as NIfTI and as a DICOM RT Dose
(for the clinic's viewers).

Several injections (``[[injections]]``, a territory mask each in ``[images.masks.injections]``): one activity
map per injection, A_j = s_j (1 − R_j) with its own shunt, over its territory by its own MAA SPECT
(``[images.spect_by_injection]``, resampled trilinearly onto the dose grid) or the case's, added: the map is
the treatment's cumulative dose over every session (``vois.injections.<name>`` per territory; ``perfused`` is
their union).

Plans on a tumour's D70 (``--case-out``): each tumour's ``d70_ratio``, its D70 over the compartment mean of
its counts, so that the planner's ratio × mean is the map's D70 at any activity; with several injections, a
curve over the share of its mean dose each of the two injections reaching it gives (:func:`_d70_ratios`).

Voxel-level uncertainty (``replicas``; one or several injections): see :func:`voxel_case`; ``--case-out`` writes each
tumour's ``d70_ratio`` with the CV of its replicas, an input the Monte Carlo draws.

Metrics per VOI: mean, Dx (the dose at least x % of the VOI receives: D50, D70, D90, D95) and Vx (the share
of the VOI receiving at least x Gy, x from the scenario's rule thresholds), and the cumulative DVH.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .errors import InputError

#: The Dx of every VOI (percent of its volume).
D_LEVELS = (50, 70, 90, 95)
#: The VOI metrics each replica of the voxel-level uncertainty reports.
REPLICA_METRICS = ("mean_gy", "d50_gy", "d70_gy", "d90_gy", "d95_gy")
#: DVH bins [Gy] of the table and figure.
DVH_BINS = 400


def ldm_dose(activity_gbq, density_g_per_ml, voxel_ml: float, k_gy_kg_per_gbq: float):
    """Local deposition: dose [Gy] per voxel = K · A / (ρ V). Pure JAX (jit-compatible)."""
    import jax.numpy as jnp

    mass_kg = jnp.maximum(density_g_per_ml, 1e-6) * voxel_ml / 1000.0
    return k_gy_kg_per_gbq * activity_gbq / mass_kg


def fft_convolve(x, kernel):
    """``x`` convolved with an odd-sized ``kernel`` centred on its middle, on ``x``'s grid ('same', zero padding,
    as ``scipy.signal.fftconvolve(x, kernel, mode="same")``). Pure JAX (jit with static shapes)."""
    import jax.numpy as jnp
    from scipy.fft import next_fast_len

    full = [int(n + k - 1) for n, k in zip(x.shape, kernel.shape, strict=True)]
    size = [next_fast_len(n, real=True) for n in full]
    spectrum = jnp.fft.rfftn(x, s=size) * jnp.fft.rfftn(kernel, s=size)
    y = jnp.fft.irfftn(spectrum, s=size)
    start = [(k - 1) // 2 for k in kernel.shape]
    return y[start[0]:start[0] + x.shape[0], start[1]:start[1] + x.shape[1], start[2]:start[2] + x.shape[2]]


def kernel_dose(energy_j, kernel, density_g_per_ml, voxel_ml: float):
    """Dose [Gy] per voxel from the energy each voxel emits [J] convolved with the dose-voxel kernel, divided by
    the voxel's mass; no dose in air (ρ < 0.05 g/mL). Pure JAX (jit-compatible)."""
    import jax.numpy as jnp

    absorbed = jnp.maximum(fft_convolve(energy_j, kernel), 0.0)  # float32 FFT round-off leaves ±1e-7 of the peak
    mass_kg = jnp.maximum(density_g_per_ml, 1e-6) * voxel_ml / 1000.0
    return jnp.where(density_g_per_ml >= AIR_DENSITY, absorbed / mass_kg, 0.0)


#: Density [g/mL] below which a voxel is air (no mass to give a dose to).
AIR_DENSITY = 0.05


def _summary(d: np.ndarray, thresholds: tuple[float, ...], edges: np.ndarray | None = None):
    """Metrics (and with ``edges`` the cumulative DVH) of a VOI's doses from one sort: the Dx is the
    ceil(x n / 100)-th hottest dose, Vx and the DVH at each edge the share of doses >= it (counted by binary
    search in the sorted doses, compared in float64)."""
    s = np.sort(d).astype(np.float64, copy=False)  # numpy's vectorised sort; float32 doses sort fastest
    n = len(s)
    out = {"mean_gy": float(s.mean()), "voxels": n}
    for x in D_LEVELS:
        out[f"d{x}_gy"] = float(s[n - max(int(np.ceil(x * n / 100.0)), 1)])
    for t in thresholds:
        out[f"v{t:g}"] = float(n - np.searchsorted(s, t, side="left")) / n
    if edges is None:
        return out
    curve = (n - np.searchsorted(s, np.asarray(edges, dtype=np.float64), side="left")) / max(n, 1)
    return out, curve


def voi_index(vois: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each VOI's voxels as flat indices into the dose map: prepared once, they serve every dose map of the same
    grid (a kernel and an LDM map, many plans) without reading the masks again."""
    return {name: np.flatnonzero(np.asarray(m, dtype=bool).ravel()) for name, m in vois.items()}


def _values(dose: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The dose in a VOI's voxels (in the dose's own dtype): by its flat indices (:func:`voi_index`), or read
    from a mask's bounding box only."""
    dose = np.asarray(dose)
    if np.asarray(mask).ndim == 1 and np.issubdtype(np.asarray(mask).dtype, np.integer):
        return np.take(dose.ravel(), mask)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 3 and mask.any():
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in (np.flatnonzero(mask.any(axis=(1, 2))),
                                                                       np.flatnonzero(mask.any(axis=(0, 2))),
                                                                       np.flatnonzero(mask.any(axis=(0, 1)))))
        return dose[box][mask[box]]
    return dose[mask]


def voi_metrics(dose: np.ndarray, mask: np.ndarray, thresholds: tuple[float, ...] = ()) -> dict[str, float]:
    """Mean, D50/D70/D90/D95 and V<threshold> (shares) of the dose over a VOI."""
    return _summary(_values(dose, mask), thresholds)


def dvh(dose: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Cumulative DVH: the share of the VOI's voxels receiving at least each edge's dose."""
    return _summary(_values(dose, mask), (), edges)[1]


def voi_summaries(dose: np.ndarray, vois: dict[str, np.ndarray], thresholds: tuple[float, ...],
                  edges: np.ndarray) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Every VOI's metrics and cumulative DVH, each VOI's doses read once; ``vois`` holds masks or the flat
    indices of :func:`voi_index`."""
    metrics, curves = {}, {}
    for name, mask in vois.items():
        metrics[name], curves[name] = _summary(_values(dose, mask), thresholds, edges)
    return metrics, curves


#: The voxel-level uncertainty's draws (``voxel --uncertainty``): a mask is eroded or dilated by one voxel with
#: this chance each (kept otherwise), so that the SD of its volume is half the one-voxel change, the convention
#: of ``measure``'s segmentation CV.
MASK_CHANGE_CHANCE = 0.125


def _perturbed(mask: np.ndarray, rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """The mask eroded, dilated (into ``tissue`` only: never into air) or kept, by one uniform draw."""
    from scipy.ndimage import binary_dilation, binary_erosion

    u = rng.random()
    if u < MASK_CHANGE_CHANCE:
        eroded = binary_erosion(mask)
        return eroded if eroded.any() else mask
    if u < 2 * MASK_CHANGE_CHANCE:
        return binary_dilation(mask) & tissue | mask
    return mask


def _spread(counts, territory, lungs, injected: float, f: float) -> np.ndarray:
    """The activity map [GBq]: the liver share over the territory by the counts, the lung share over the lungs."""
    activity = np.zeros(counts.shape)
    activity[territory] = injected * (1.0 - f) * counts[territory] / float(counts[territory].sum())
    if lungs is not None:
        c_lung = float(counts[lungs].sum())
        activity[lungs] += injected * f * (counts[lungs] / c_lung if c_lung > 0 else 1.0 / lungs.sum())
    return activity


def _spread_summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "p05": float(np.quantile(v, 0.05)), "p95": float(np.quantile(v, 0.95))}


def voxel_case(path: str, method: str = "ldm", kernel_file: str | None = None, replicas: int = 0,
               seed: int = 0, d70_ratios: bool = False) -> dict[str, Any]:
    """The dose map and VOI metrics of a case with ``[images]`` at its ``[plan]`` decision, by local deposition
    (``ldm``) or the dose-voxel kernel (``kernel``: from ``kernel_file``, a radial kernel or voxel S table, or
    ``"loevinger"`` for Loevinger's approximation; else the built-in :func:`y90opt.kernels.default_kernel`).

    With ``replicas`` > 0, the voxel-level uncertainty: so many recomputations of the dose map,
    each from the SPECT's counts drawn again (Poisson, the stored values taken as counts), the perfused and
    tumour masks eroded or dilated by one voxel (:data:`MASK_CHANGE_CHANCE` each) and each tumour's uptake
    scaled by the MAA-to-Y-90 mismatch (lognormal, σ_ln 0.3, Kafrouni et al. 2019, as ``measure``'s T:N);
    replica k draws from ``default_rng([seed, k])``. ``res["uncertainty"]`` has each VOI metric's mean, SD
    and 5-95 % range over the replicas and each tumour's D70 ratio's. With several injections each replica
    draws every MAA study's counts again and applies the mismatch per study and tumour, and perturbs the
    tumour masks; the territories' masks are kept (perturbed one by one, nested or adjoining territories would
    no longer nest or adjoin).

    With ``d70_ratios`` (what ``--case-out`` writes), ``res["tumor_d70"]``: each treated, imaged tumour's D70
    ratio, and its curve where two injections reach it (:func:`_d70_ratios`)."""
    import tomllib

    import jax
    import jax.numpy as jnp

    from .case import load_case
    from .image_io import mask_ref, on_grid, read_image, read_mask, read_spect
    from .imaging import TN_MISMATCH_SIGMA_LN
    from .kernels import default_kernel, loevinger_kernel, read_radial_kernel, voxel_kernel
    from .outcomes import active_rules

    if method not in ("ldm", "kernel"):
        raise InputError(f"--method: {method!r}: expected ldm or kernel")
    if kernel_file is not None and method != "kernel":
        raise InputError(f"--kernel: {kernel_file}: a kernel table is used by --method kernel only")
    radial = None
    if method == "kernel":  # read the table first: a bad one is refused before the images are read
        if kernel_file is None:
            radial = default_kernel()
        elif os.fspath(kernel_file).lower() == "loevinger":  # the approximation, by name (a file: ./loevinger)
            radial = loevinger_kernel()
        else:
            radial = read_radial_kernel(os.fspath(kernel_file))
    case = load_case(path)
    images = tomllib.loads(case.text).get("images")  # the text load_case read (the file is read once)
    if not isinstance(images, dict) or "spect" not in images:
        raise InputError(f"{path}: images.spect: missing (voxel dosimetry spreads the activity by the MAA counts)")
    base = os.path.dirname(os.path.abspath(path))

    def where(rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(base, rel)

    spect_path = where(images["spect"])
    counts, affine = read_spect(spect_path, "images.spect")
    grid = (spect_path, (counts, affine))
    masks_raw = images.get("masks", {})
    if not case.multi and "perfused" not in masks_raw:
        raise InputError(f"{path}: images.masks.perfused: missing (the territory the liver activity spreads over)")
    for j in case.injections:
        if j.name not in masks_raw.get("injections", {}):
            raise InputError(f"{path}: images.masks.injections.{j.name}: missing (the territory injection {j.name!r}'s "
                             "activity spreads over)")
    ct_path = where(images["ct"]) if "ct" in images else None

    def mask(raw, what: str) -> np.ndarray:
        return read_mask(mask_ref(raw, base, what), what, grid, None, ct_path)

    masks = {k: mask(masks_raw[k], f"images.masks.{k}") for k in ("liver", "perfused", "lungs") if k in masks_raw}
    territories = {j.name: mask(masks_raw["injections"][j.name], f"images.masks.injections.{j.name}")
                   for j in case.injections}
    if territories:
        masks["perfused"] = np.logical_or.reduce(list(territories.values()))  # every territory treated
    tumors = {n: mask(p, f"images.masks.tumors.{n}") for n, p in masks_raw.get("tumors", {}).items()}
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    conv = case.conventions
    density = np.full(counts.shape, conv.tissue_density_g_per_ml)
    density_source = f"the case's tissue density {conv.tissue_density_g_per_ml:g} g/mL"
    if ct_path is not None:
        ct = read_image(ct_path, "images.ct", np.float32)
        hu = np.asarray(on_grid(spect_path, (counts, affine), ct_path, ct, "images.ct", order=1, fill=np.nan),
                        dtype=np.float64)
        density = np.clip(1.0 + hu / 1000.0, 0.0, None)
        density_source = "the CT, 1 + HU/1000 g/mL"
        inside = np.logical_or.reduce(list(masks.values()))
        if not np.all(np.isfinite(density[inside])):
            raise InputError(f"{ct_path}: images.ct: the CT does not cover every mask (resampled onto {spect_path})")
        if (density[inside] < AIR_DENSITY).any():
            raise InputError(f"{ct_path}: images.ct: air (density < 0.05 g/mL) inside a mask: a voxel's dose would "
                             "have no mass to deposit in; check the masks against the CT")
    nominal = case.nominal()
    perf = masks["perfused"]
    lungs = masks["lungs"] & ~perf if "lungs" in masks else None
    activity = np.zeros(counts.shape)

    def deliver(injected: float, f: float, territory: np.ndarray, spread, where: str) -> np.ndarray:
        """One injection's activity map (:func:`_spread`), added to the treatment's."""
        if not float(spread[territory].sum()) > 0:
            raise InputError(f"{where}: no counts in the territory's mask")
        one = _spread(spread, territory, lungs, injected, f)
        activity[...] += one
        return one

    by_injection: dict[str, Any] = {}
    maps: dict[str, np.ndarray] = {}  # with several injections, each one's activity map (its dose map later)
    studies: dict[str, np.ndarray] = {}  # and the MAA counts each one is spread by, by the study's field
    deliveries: list[tuple[str, float, float, str]] = []  # (injection, injected GBq, shunt, study)
    if not case.multi:
        hours, s = case.decision("`voxel`")
        injected = s * nominal["delivery.activity_factor"] * (1.0 - nominal["delivery.residual_fraction"])
        f = nominal["lung.shunt_fraction"]
        deliver(injected, f, perf, counts, f"{spect_path}: images.spect")
        activities = {"injected": injected, "liver": injected * (1 - f), "lung": injected * f}
    else:  # one map per injection, added (every session: the dose map is the treatment's cumulative dose)
        hours, s = None, None
        spects = images.get("spect_by_injection", {})
        totals = {"injected": 0.0, "liver": 0.0, "lung": 0.0}
        for (h, _, at_treatment), j in zip(case.injection_decisions("`voxel`"), case.injections, strict=True):
            key = f"injections.{j.name}."
            injected = at_treatment * nominal[key + "activity_factor"] * (
                1.0 - nominal.get(key + "residual_fraction", nominal.get("delivery.residual_fraction", 0.0)))
            f = nominal.get(key + "shunt_fraction", nominal.get("lung.shunt_fraction"))
            spread, what, study = counts, f"{spect_path}: images.spect", "images.spect"
            if j.name in spects:  # the injection's own MAA study, resampled onto the dose grid (trilinear)
                own = where(spects[j.name])
                img = read_spect(own, f"images.spect_by_injection.{j.name}")
                spread = on_grid(spect_path, (counts, affine), own, img, f"images.spect_by_injection.{j.name}",
                                 order=1, fill=np.nan)
                if not np.all(np.isfinite(spread[territories[j.name]])):
                    raise InputError(f"{own}: images.spect_by_injection.{j.name}: the SPECT does not cover the "
                                     f"territory's mask (resampled onto {spect_path})")
                spread = np.clip(np.nan_to_num(spread, nan=0.0), 0.0, None)
                what, study = f"{own}: images.spect_by_injection.{j.name}", f"images.spect_by_injection.{j.name}"
            maps[j.name] = deliver(injected, f, territories[j.name], spread, what)
            studies[study] = spread
            deliveries.append((j.name, injected, f, study))
            by_injection[j.name] = {"hours_after_calibration": h, "vial_at_treatment_gbq": at_treatment,
                                    "activity_gbq": {"injected": injected, "liver": injected * (1 - f),
                                                     "lung": injected * f}}
            for k in totals:
                totals[k] += by_injection[j.name]["activity_gbq"][k]
        activities = totals
    kernel_info: dict[str, Any] | None = None
    rho = jnp.asarray(density)
    if radial is None:
        ldm_fn = jax.jit(ldm_dose, static_argnums=(2, 3))

        def dose_of(act):
            return np.asarray(ldm_fn(jnp.asarray(act), rho, voxel_ml, conv.dose_constant_gy_kg_per_gbq))

        dose = dose_of(activity)
    else:
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        radial = radial.scaled_to(conv.tissue_density_g_per_ml)
        kern = voxel_kernel(radial, spacing)
        energy = conv.dose_constant_gy_kg_per_gbq * activity  # J emitted per voxel (GBq fully decayed)
        kernel_fn, kern_j = jax.jit(kernel_dose, static_argnums=(3,)), jnp.asarray(kern)

        def dose_of(act):
            return np.asarray(kernel_fn(jnp.asarray(conv.dose_constant_gy_kg_per_gbq * act), kern_j, rho, voxel_ml))

        dose = dose_of(activity)
        absorbed = float(np.sum(dose.astype(np.float64) * density * voxel_ml / 1000.0))
        centre = tuple(k // 2 for k in kern.shape)
        kernel_info = {"source": radial.source, "voxel_mm": [float(v) for v in spacing],
                       "shape": list(kern.shape), "self_voxel_share": float(kern[centre]),
                       "kernel_share": radial.total, "absorbed_share": absorbed / max(float(energy.sum()), 1e-300)}
    def mean_of(act, m):
        return _compartment_mean(act, m, conv.dose_constant_gy_kg_per_gbq, conv.tissue_density_g_per_ml, voxel_ml)

    tumor_d70 = None
    if d70_ratios:
        tumor_d70 = _d70_ratios(case, tumors, maps or {None: activity}, dose_of, mean_of, None if maps else {None: dose})
    scen = active_rules(case).scenario
    thresholds = tuple(sorted({r.threshold_gy for r in scen.rules}))
    normal = perf.copy()
    for m in tumors.values():
        normal &= ~m
    top = max(float(dose.max()), 1.0)
    edges = np.linspace(0.0, top, DVH_BINS)
    by_name = {**masks, "normal_perfused": normal, **{f"tumors.{n}": m for n, m in tumors.items()},
               **{f"injections.{n}": m for n, m in territories.items()}}
    metrics, curves = voi_summaries(dose, by_name, thresholds, edges)
    vois: dict[str, Any] = {k: metrics[k] for k in (*masks, "normal_perfused")}
    vois["tumors"] = {n: metrics[f"tumors.{n}"] for n in tumors}
    if territories:
        vois["injections"] = {n: metrics[f"injections.{n}"] for n in territories}
    uncertainty = None
    if replicas:
        tissue = density >= AIR_DENSITY
        draws: dict[str, list[float]] = {}
        for k in range(int(replicas)):
            rng = np.random.default_rng([int(seed), k])
            if case.multi:
                for key, v in _injections_replica(case, rng, tissue, studies, deliveries, territories, tumors, perf,
                                                  lungs, dose_of, mean_of).items():
                    draws.setdefault(key, []).append(v)
                continue
            c_k = rng.poisson(counts).astype(np.float64)
            perf_k = _perturbed(perf, rng, tissue)
            tum_k = {n: _perturbed(m, rng, tissue) & perf_k for n, m in tumors.items()}
            for m in tum_k.values():
                c_k[m] *= math.exp(TN_MISMATCH_SIGMA_LN * rng.standard_normal() - 0.5 * TN_MISMATCH_SIGMA_LN ** 2)
            if not float(c_k[perf_k].sum()) > 0:
                raise InputError(f"{spect_path}: images.spect: a replica drew no counts in the perfused mask")
            lungs_k = masks["lungs"] & ~perf_k if "lungs" in masks else None
            act_k = _spread(c_k, perf_k, lungs_k, injected, f)
            d_k = dose_of(act_k)
            normal_k = perf_k & ~np.logical_or.reduce([np.zeros_like(perf_k), *tum_k.values()])
            vois_k = {"perfused": perf_k, "normal_perfused": normal_k, **{f"tumors.{n}": m for n, m in tum_k.items()}}
            for name, m in vois_k.items():
                if not m.any():
                    continue
                got = voi_metrics(d_k, m)
                for key in REPLICA_METRICS:
                    draws.setdefault(f"{name}.{key}", []).append(got[key])
                if name.startswith("tumors.") and (m_c := mean_of(act_k, m)) > 0:  # as _d70_ratios
                    draws.setdefault(f"{name}.d70_ratio", []).append(got["d70_gy"] / m_c)
        uncertainty = {"replicas": int(replicas), "seed": int(seed),
                       "metrics": {k: _spread_summary(v) for k, v in draws.items()}}
    return {
        "case": case.name, "method": method, "hours_after_calibration": hours, "vial_at_treatment_gbq": s,
        "activity_gbq": activities, "injections": by_injection or None,
        "density": density_source, "voxel_ml": voxel_ml, "vois": vois, "thresholds_gy": list(thresholds),
        "kernel": kernel_info, "uncertainty": uncertainty, "tumor_d70": tumor_d70,
        "dose": dose, "affine": affine, "dvh_edges_gy": edges, "dvh": curves,
    }


def _injections_replica(case, rng, tissue, studies, deliveries, territories, tumors, perf, lungs, dose_of,
                        mean_of) -> dict[str, float]:
    """One replica of the voxel-level uncertainty of several injections (:func:`voxel_case`): each study's counts
    drawn again (Poisson), the MAA-to-Y-90 mismatch per study and tumour, the tumour masks eroded or dilated
    within the treated territories, one activity map per injection; the VOI metrics of the summed dose and each
    tumour's D70 ratio as :func:`_d70_ratios` measures it."""
    from .imaging import TN_MISMATCH_SIGMA_LN

    drawn = {key: rng.poisson(c).astype(np.float64) for key, c in studies.items()}
    tum_k = {n: _perturbed(m, rng, tissue) & perf for n, m in tumors.items()}
    for key in studies:
        for m in tum_k.values():
            drawn[key][m] *= math.exp(TN_MISMATCH_SIGMA_LN * rng.standard_normal() - 0.5 * TN_MISMATCH_SIGMA_LN ** 2)
    maps_k = {}
    for name, injected, f, key in deliveries:
        if not float(drawn[key][territories[name]].sum()) > 0:
            raise InputError(f"{key}: a replica drew no counts in injection {name}'s territory")
        maps_k[name] = _spread(drawn[key], territories[name], lungs, injected, f)
    doses = {name: dose_of(a) for name, a in maps_k.items()}
    total = sum(doses.values())
    normal = perf & ~np.logical_or.reduce([np.zeros_like(perf), *tum_k.values()])
    out: dict[str, float] = {}
    vois = {"perfused": perf, "normal_perfused": normal, **{f"tumors.{n}": m for n, m in tum_k.items()},
            **{f"injections.{n}": m for n, m in territories.items()}}
    for name, m in vois.items():
        if m.any():
            got = voi_metrics(total, m)
            for key in REPLICA_METRICS:
                out[f"{name}.{key}"] = got[key]
    for name, rec in _d70_ratios(case, tum_k, maps_k, dose_of, mean_of, doses).items():
        if rec.get("ratio") is not None:
            out[f"tumors.{name}.d70_ratio"] = rec["ratio"]
    return out


#: Nodes of a tumour's D70 curve over the share of its mean dose its own injection gives (0 to 1).
SHARE_NODES = 41


def _compartment_mean(act: np.ndarray, mask, k_gy_kg_per_gbq: float, density_g_per_ml: float,
                      voxel_ml: float) -> float:
    """The compartment model's mean dose to a VOI for the same counts: the energy its activity emits over its
    mass at the case's tissue density (what ``dose`` gives the tumour of a measured case)."""
    values = _values(act, mask)
    return k_gy_kg_per_gbq * float(values.sum()) / (density_g_per_ml * len(values) * voxel_ml / 1000.0)


def _d70_ratios(case, tumors: dict[str, np.ndarray], maps: dict[str | None, np.ndarray], dose_of,
                mean_of, doses: dict[str | None, np.ndarray] | None = None) -> dict[str, Any]:
    """Each treated, imaged tumour's D70 as the planner models it, from the activity maps of the injections that
    reach it in the compartment model (``maps``: by injection, or ``{None: map}`` with one injection), each
    map's dose by itself (``dose_of``), over the compartment mean of its counts (``mean_of``), so that
    ratio × the planner's mean is the voxel D70 at any activity.

    Reached by one injection: ``ratio`` = its D70 over that mean. Reached by two (its own and the one whose
    territory holds its own): their doses on the tumour, each over its compartment mean, φ_own and φ_outer,
    mixed as t φ_own + (1 − t) φ_outer, give the curve h(t) = D70 of the mix at :data:`SHARE_NODES` shares
    t; the D70 of s_own d_own + s_outer d_outer is m · h(t) for any activities, m the compartment mean and t
    the own vial's share of it (exact at the nodes, piecewise linear between); ``ratio`` = h at the decision's
    share. Dose another injection spills into the tumour across a territory's edge (the kernel's; not in the
    compartment model) is left out: the D70 of a sum of non-negative maps is at least that of its part, so
    the planner's D70 errs low there. ``doses``: the maps' doses where already computed."""
    doses = dict(doses or {})

    def dose(name: str | None) -> np.ndarray:
        if name not in doses:
            doses[name] = dose_of(maps[name])
        return doses[name]

    out: dict[str, Any] = {}
    for t in case.tumors:
        if not t.treated or t.name not in tumors or not tumors[t.name].any():
            continue
        if case.multi:
            reach = [t.injection]
            while case.injection(reach[-1]).within is not None:
                reach.append(case.injection(reach[-1]).within)
        else:
            reach = [None]
        rec: dict[str, Any] = {"injections": reach, "ratio": None}
        out[t.name] = rec
        if len(reach) > 2:
            rec["why"] = f"injections {', '.join(reach)} all reach it (a D70 of three or more is not available)"
            continue
        means = [mean_of(maps[n], tumors[t.name]) for n in reach]
        rec["mean_gy"] = means
        empty = [n for n, m in zip(reach, means, strict=True) if not m > 0]
        if empty:
            rec["why"] = (f"its mask receives no activity from injection {empty[0]}"
                          + ("" if reach == [None] else f" (check that it lies in {empty[0]}'s territory mask)"))
            continue
        phi = [_values(dose(n), tumors[t.name]).astype(np.float64) / m for n, m in zip(reach, means, strict=True)]
        if len(reach) == 1:
            rec["ratio"] = _summary(phi[0], ())["d70_gy"]
        else:
            shares = np.linspace(0.0, 1.0, SHARE_NODES)
            t0 = means[0] / (means[0] + means[1])
            rec.update({"share": [float(x) for x in shares],
                        "ratios": [_summary(x * phi[0] + (1.0 - x) * phi[1], ())["d70_gy"] for x in shares],
                        "share_at_decision": t0, "ratio": _summary(t0 * phi[0] + (1 - t0) * phi[1], ())["d70_gy"]})
        if not rec["ratio"] > 0:
            rec["why"] = "its D70 is 0 (at least 30 % of its voxels receive no dose)"
            rec["ratio"] = None
    return out


def case_with_d70(path: str, res: dict[str, Any]) -> str:
    """The case's text with each imaged, treated tumour's ``d70_ratio`` set (its D70 by the voxel method over the
    compartment mean of its counts; with two injections reaching it, also its ``d70_ratio_by_share`` curve:
    :func:`_d70_ratios`), so that rules may name ``tumors_d70`` (tomlkit: the rest of the text kept)."""
    import tomlkit

    with open(path, encoding="utf-8") as fh:
        doc = tomlkit.parse(fh.read())
    spread = (res.get("uncertainty") or {}).get("metrics", {})
    for t in doc.get("tumors", []):
        name = str(t.get("name"))
        rec = res["tumor_d70"].get(name)
        if rec is None:  # not treated, or not imaged: voxel measures nothing for it
            continue
        if rec["ratio"] is None:
            raise InputError(f"--case-out: tumour {name}: no D70 ratio: {rec['why']}")
        ratio = round(rec["ratio"], 6)
        how = f"voxel ({res['method']}): D70 over the compartment mean of its counts"
        if rec["injections"] != [None]:
            how += f", from injection {rec['injections'][0]}'s dose"
        drawn = spread.get(f"tumors.{name}.d70_ratio")
        if drawn is not None and drawn["mean"] > 0:
            item = tomlkit.inline_table()
            item.update({"value": ratio, "cv": round(drawn["sd"] / drawn["mean"], 4)})
            t["d70_ratio"] = item
            how += (f"; CV from {res['uncertainty']['replicas']} replicas (counts, one-voxel mask margins, "
                    "MAA-to-Y-90 mismatch)")
        else:
            t["d70_ratio"] = ratio
        if "share" in rec:
            curve = tomlkit.inline_table()
            curve.update({"share": [round(x, 6) for x in rec["share"]], "ratio": [round(y, 6) for y in rec["ratios"]]})
            t["d70_ratio_by_share"] = curve
            how += (f" and {rec['injections'][1]}'s, mixed as at the decision ({rec['share_at_decision']:.3f} of the "
                    "mean from the first); d70_ratio_by_share: at any share")
        elif "d70_ratio_by_share" in t:
            del t["d70_ratio_by_share"]
        t["d70_ratio"].comment(how)
    return tomlkit.dumps(doc)


def write_rtdose(dose: np.ndarray, affine: np.ndarray, path: str, method: str = "ldm") -> str:
    """The dose map as a DICOM RT Dose (pydicom; multi-frame, 32-bit with DoseGridScaling, Gy, PHYSICAL, PLAN),
    on the SPECT's grid: the NIfTI (RAS) affine turned into DICOM's LPS patient coordinates. The grid's in-plane
    axes must be orthogonal (as every SPECT/CT grid is)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTDoseStorage, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]  # along i (columns), j (rows), k
    dc, dr, dz = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    if abs(float(np.dot(col_step, row_step))) > 1e-6 * dc * dr:
        raise InputError(f"{path}: the dose grid's in-plane axes are not orthogonal: no RT Dose written")
    normal = np.cross(col_step / dc, row_step / dr)
    along = float(np.dot(slice_step, normal))  # frames lie along the in-plane axes' normal (it may point back)
    if abs(abs(along) - dz) > 1e-6 * dz:
        raise InputError(f"{path}: the dose grid's slices are not along the normal of its planes: no RT Dose written")
    scale = max(float(dose.max()), 1e-12) / (2**32 - 1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDoseStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTDoseStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "RTDOSE", "", ""
    ds.SeriesDescription = ("y90opt dose-voxel kernel dose (research)" if method == "kernel"
                            else "y90opt local deposition dose (research)")
    ds.ImagePositionPatient = [float(x) for x in lps[:3, 3]]
    ds.ImageOrientationPatient = [*(col_step / dc).tolist(), *(row_step / dr).tolist()]
    ds.PixelSpacing = [dr, dc]
    ds.SliceThickness = dz
    ds.NumberOfFrames = dose.shape[2]
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [float(k * along) for k in range(dose.shape[2])]
    ds.Rows, ds.Columns = dose.shape[1], dose.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = format(scale, ".10g")
    stored = np.rint(dose / float(ds.DoseGridScaling)).clip(0, 2**32 - 1).astype(np.uint32)
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).tobytes()  # frames × rows × columns
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_voxel_outputs(res: dict[str, Any], out_dir: str) -> dict[str, str]:
    """``dose.nii.gz`` (Gy on the SPECT grid), ``dose_rtdose.dcm`` (DICOM RT Dose), ``dvh.csv`` and ``dvh.png``
    into ``out_dir`` (the self-contained ``voxel.html`` is :func:`y90opt.report.write_voxel_report`'s)."""
    import csv

    import nibabel as nib

    from .figures import dvh_figure

    os.makedirs(out_dir, exist_ok=True)
    paths = {"dose": os.path.join(out_dir, "dose.nii.gz"), "dvh_csv": os.path.join(out_dir, "dvh.csv"),
             "dvh_png": os.path.join(out_dir, "dvh.png")}
    img = nib.Nifti1Image(res["dose"].astype(np.float32), res["affine"])
    img.header.set_xyzt_units("mm")
    nib.save(img, paths["dose"])
    with open(paths["dvh_csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        names = list(res["dvh"])
        w.writerow(["dose_gy", *names])
        for i, e in enumerate(res["dvh_edges_gy"]):
            w.writerow([f"{e:.6g}", *[f"{res['dvh'][n][i]:.6g}" for n in names]])
    dvh_figure(res["dvh_edges_gy"], res["dvh"], res["thresholds_gy"], paths["dvh_png"],
               "dose-voxel kernel" if res["method"] == "kernel" else "local deposition")
    paths["rtdose"] = write_rtdose(res["dose"], res["affine"], os.path.join(out_dir, "dose_rtdose.dcm"), res["method"])
    return paths
