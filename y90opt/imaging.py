"""From images to a case (``y90opt measure``): volumes, T:N, lung shunt and lung mass, with the uncertainty the
images imply.

Images and masks are read by :mod:`y90opt.image_io` (NIfTI, DICOM series, NRRD, DICOM SEG, RTSTRUCT). Every
measurement but the volumes is made on the SPECT's grid: a mask or a CT on another grid is resampled onto it
through both affines (nearest neighbour for masks, trilinear for CT numbers, :func:`image_io.on_grid`); an
image on another grid without a spatial transform is an error naming both files. With several injections
each territory has its mask and may have its own MAA SPECT. Measurements, on the case's ``[images]``:

* volumes: voxel count × voxel volume of each mask (a voxel is in or out: no partial voxels);
* T:N: mean SPECT count concentration in the tumour over that in the normal perfused tissue (perfused mask, or
  the injection's territory, less every tumour mask); with ``spect_fwhm_mm``, corrected for partial volume
  (:func:`sphere_recovery`, :func:`_tn_ratios`);
* lung shunt fraction: lung counts / (lung + liver counts) on the SPECT (the lungs must be in its field), else
  from planar anterior and posterior views: the geometric mean of the two views' counts in each ROI (the planar
  method overestimates the delivered shunt, domain reference §5: its SD is used, its bias is not applied);
  with ``lung_base_margin_mm``, the lung within that distance of the liver left out (:func:`_lsf`);
* lung mass: Σ voxel volume × density over the lung mask, density ρ = 1 + HU/1000 g/mL from the CT (Kao et
  al., "Lung shunt fraction ... and lung mass", 2014: mass from CT densities rather than the 1 kg
  assumption); HU from the NIfTI's scaling (slope and intercept);
* hepatic reserve: 1 − perfused (all territories) / whole liver.

Uncertainty (each written as a comment in the completed case):

* a volume: the mask eroded and dilated by one voxel (6-connected, scipy.ndimage) changes it by −Δ₋/+Δ₊;
  the CV written is (Δ₋ + Δ₊) / (4 V), half the half-range taken as one standard deviation (our convention);
* T:N: Poisson statistics of the counts (CV² = 1/N_tumour + 1/N_normal, N the counts in each region)
  combined with the MAA-to-Y-90 mismatch of the domain reference (σ_ln 0.3, Kafrouni et al. 2019);
* LSF: the binomial SD of the counts combined with the SPECT/CT LSF's SD of 3.6 percentage points against
  the delivered shunt (Young et al., domain reference §5), a normal truncated to [0, 0.99];
* lung mass: the one-voxel erosion/dilation of the lung mask, as for the volumes.

``measure`` fills only the values the case leaves out; a value the user gave is never replaced: when the
image's measurement disagrees with it by more than its uncertainty, the disagreement is reported.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .errors import InputError
from .image_io import mask_ref, on_grid, read_image, read_mask, read_planar, read_spect
from .virtual import measured_value

#: σ_ln of the MAA-to-Y-90 T:N mismatch (Kafrouni et al. 2019; domain reference §5).
TN_MISMATCH_SIGMA_LN = 0.3
#: SD of the SPECT/CT lung shunt fraction against the delivered one (Young et al.; domain reference §5).
LSF_SPECT_SD = 0.036


def _segmentation_cv(mask: np.ndarray) -> tuple[float, float, float]:
    """(CV, volume change eroded, volume change dilated) in voxels, for the one-voxel convention."""
    from scipy.ndimage import binary_dilation, binary_erosion

    v = float(mask.sum())
    lo = v - float(binary_erosion(mask).sum())
    hi = float(binary_dilation(mask).sum()) - v
    return (lo + hi) / (4.0 * v), lo, hi


#: SD of the planar LSF against the delivered one (domain reference §5: Young et al.; Bastiaannet; CVIR 2020):
#: 5.3 percentage points at and above 7.5 %, about 4 below. Its bias (planar overestimates) is not applied.
LSF_PLANAR_SD = ((0.075, 0.053), (0.0, 0.04))


def _planar_lsf(images, masks_raw, path_of, file: str):
    """The lung shunt fraction from planar anterior and posterior views: in each ROI the geometric mean of the
    two views' counts, LSF = GM(lungs) / (GM(lungs) + GM(liver)) (the posterior view mirrored left-right onto the
    anterior's ROIs). Returns (LSF, SD, how) or None when the case gives no planar views."""
    keys = ("planar_anterior", "planar_posterior")
    if not any(k in images for k in keys):
        return None
    for k in keys + ("planar_lungs", "planar_liver"):
        src = images if k in keys else masks_raw
        if k not in src:
            where = f"images.{k}" if k in keys else f"images.masks.{k}"
            raise InputError(f"{file}: {where}: missing (the planar LSF needs both views and both ROIs)")
    ant = read_planar(path_of(images["planar_anterior"]), "images.planar_anterior")
    post = read_planar(path_of(images["planar_posterior"]), "images.planar_posterior")[::-1, :]
    rois = {k: read_planar(path_of(masks_raw[f"planar_{k}"]), f"images.masks.planar_{k}") > 0.5 for k in ("lungs", "liver")}
    for name, img in (("planar_anterior", ant), ("planar_posterior", post)):
        if img.shape != ant.shape or not np.all(np.isfinite(img)) or (img < 0).any():
            raise InputError(f"{path_of(images[name])}: images.{name}: counts must be finite, >= 0, on the anterior's grid")
    for k, roi in rois.items():
        if roi.shape != ant.shape or not roi.any():
            raise InputError(f"{path_of(masks_raw[f'planar_{k}'])}: images.masks.planar_{k}: empty or not on the "
                             "planar views' grid")
    gm = {k: math.sqrt(float(ant[roi].sum()) * float(post[roi].sum())) for k, roi in rois.items()}
    total = gm["lungs"] + gm["liver"]
    if total <= 0:
        raise InputError(f"{path_of(images['planar_anterior'])}: images.planar_anterior: no counts in the ROIs")
    f = gm["lungs"] / total
    sd_method = LSF_PLANAR_SD[0][1] if f >= LSF_PLANAR_SD[0][0] else LSF_PLANAR_SD[1][1]
    counts = float(ant[rois["lungs"] | rois["liver"]].sum())
    sd = math.sqrt(f * (1 - f) / max(counts, 1.0) + sd_method ** 2)
    how = (f"planar geometric mean of anterior and posterior counts, lungs / (lungs + liver); SD {sd:.4f}: binomial "
           f"counts with the planar LSF's {100 * sd_method:g} pp (Young et al.; the planar method overestimates the "
           "delivered shunt: that bias is not applied)")
    return f, sd, how


def _volume(out: dict, key: str, rel: str, native_mask: np.ndarray, voxel_ml: float) -> float:
    """A mask's volume on its own grid with its one-voxel segmentation CV, recorded under ``key``."""
    cv, lo, hi = _segmentation_cv(native_mask)
    v = float(native_mask.sum()) * voxel_ml
    out["cv"][key] = cv
    out["how"][key] = (f"{int(native_mask.sum())} voxels of {voxel_ml * 1000:.4g} uL in {rel}; CV {cv:.3f} from "
                       f"one-voxel erosion/dilation (-{lo:.0f}/+{hi:.0f} voxels)")
    return v


def sphere_recovery(volume_ml: float, fwhm_mm: float) -> float:
    """The recovery coefficient of a uniform sphere of ``volume_ml`` imaged with an isotropic Gaussian of
    ``fwhm_mm``: the mean of the blurred sphere over the sphere, for a unit concentration and no background.

    The blurred sphere at radius r (R its radius, σ = FWHM / (2 √(2 ln 2))) is
    f(r) = ½[erf((R − r)/(√2 σ)) + erf((R + r)/(√2 σ))] − σ/(r √(2π)) [e^{−(R−r)²/2σ²} − e^{−(R+r)²/2σ²}]
    (the convolution of the sphere's indicator with the Gaussian, in closed form; at r = 0 it is the chance that
    a 3-D Gaussian vector lies within R), and RC = 3/R³ ∫₀^R f(r) r² dr (Gauss–Legendre, 64 nodes)."""
    from scipy.special import erf

    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    x, w = np.polynomial.legendre.leggauss(64)
    r = 0.5 * radius * (x + 1.0)
    a, b = (radius - r) / (math.sqrt(2.0) * sigma), (radius + r) / (math.sqrt(2.0) * sigma)
    f = 0.5 * (erf(a) + erf(b)) - sigma / (r * math.sqrt(2.0 * math.pi)) * (np.exp(-a * a) - np.exp(-b * b))
    return float(3.0 / radius ** 3 * 0.5 * radius * np.sum(w * f * r * r))


def _tn_ratios(counts, affine, spect_path: str, what: str, normal: np.ndarray, tumours: dict[str, np.ndarray],
               where: str, fwhm_mm: float | None = None) -> dict[str, tuple[float, float, str]]:
    """T:N of each tumour on one SPECT: its mean count concentration over that of ``normal`` (the territory less
    every tumour), with its CV (Poisson counts and the MAA-to-Y-90 mismatch) and how it was obtained.

    With ``fwhm_mm`` (the SPECT's resolution) the ratio is corrected for partial volume by the recovery
    coefficient RC of a sphere of the tumour's volume (:func:`sphere_recovery`), the tumour taken as
    surrounded by normal tissue: measured = RC · T:N + (1 − RC), so T:N = (measured − (1 − RC)) / RC; the
    Poisson part of the CV grows by measured / (measured − (1 − RC)). The normal concentration is then taken
    in the normal tissue farther than one FWHM from the territory's edge and from every tumour (blur lowers it
    near the edge and raises it near a tumour)."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    if fwhm_mm is not None:
        from scipy.ndimage import distance_transform_edt

        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        tumour_any = np.logical_or.reduce(list(tumours.values()))
        far_edge = distance_transform_edt(normal | tumour_any, sampling=spacing) > fwhm_mm
        far_tumour = distance_transform_edt(~tumour_any, sampling=spacing) > fwhm_mm
        interior = normal & far_edge & far_tumour
        if not interior.any():
            raise InputError(f"{spect_path}: images.spect_fwhm_mm: no normal tissue of {where} lies farther than "
                             f"{fwhm_mm:g} mm from its edge and from the tumours: no partial-volume correction")
        normal = interior
    n_normal = float(counts[normal].sum())
    if n_normal <= 0:
        raise InputError(f"{spect_path}: {what}: no counts in the normal tissue of {where}")
    c_normal = n_normal / normal.sum()
    out = {}
    for name, m in tumours.items():
        n_t = float(counts[m].sum())
        if n_t <= 0:
            raise InputError(f"{spect_path}: {what}: no counts in tumour {name}'s mask: its T:N cannot be measured")
        tn = (n_t / m.sum()) / c_normal
        poisson = math.sqrt(1.0 / n_t + 1.0 / n_normal)
        pvc = ""
        if fwhm_mm is not None:
            rc = sphere_recovery(float(m.sum()) * voxel_ml, fwhm_mm)
            corrected = (tn - (1.0 - rc)) / rc
            if corrected <= 0.0:
                raise InputError(f"{spect_path}: images.spect_fwhm_mm: tumour {name}'s measured T:N {tn:.3g} is below "
                                 f"what a {fwhm_mm:g} mm SPECT shows of a tumour without uptake (RC {rc:.2f}): no "
                                 "partial-volume correction exists for it")
            poisson *= tn / (tn - (1.0 - rc))
            pvc = (f", corrected for partial volume from {tn:.3f} by the recovery coefficient {rc:.3f} of a sphere of "
                   f"its volume at {fwhm_mm:g} mm FWHM in normal tissue (the normal concentration taken over "
                   f"{int(normal.sum())} voxels farther than {fwhm_mm:g} mm from the edge and the tumours)")
            tn = corrected
        cv = math.sqrt(math.expm1(TN_MISMATCH_SIGMA_LN ** 2) + poisson ** 2)
        out[name] = (tn, cv, f"mean counts in the tumour / in the normal tissue of {where} on {os.path.basename(spect_path)}"
                             f"{pvc}; CV {cv:.3f}: Poisson {poisson:.4f} with the MAA-to-Y-90 mismatch (sigma_ln "
                             f"{TN_MISMATCH_SIGMA_LN:g}, Kafrouni et al. 2019)")
    return out


def _lsf(counts, affine, spect_path: str, what: str, lungs: np.ndarray, liver: np.ndarray,
         margin_mm: float) -> tuple[float, float, str]:
    """The SPECT lung shunt fraction lungs / (lungs + liver), with its SD and how it was obtained.

    With ``margin_mm`` > 0 the lung voxels within that distance of the liver mask (the lung base, where liver
    counts spill into the lungs at SPECT resolution) are left out, and the lung counts are the kept lung's mean
    concentration times the whole lung mask's voxels."""
    n_liver = float(counts[liver].sum())
    kept, band = lungs, ""
    if margin_mm > 0:
        from scipy.ndimage import distance_transform_edt

        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        kept = lungs & (distance_transform_edt(~liver, sampling=spacing) > margin_mm)
        if not kept.any():
            raise InputError(f"{spect_path}: {what}: no lung voxel lies farther than lung_base_margin_mm = "
                             f"{margin_mm:g} mm from the liver mask")
        band = (f"; the {int(lungs.sum() - kept.sum())} lung voxels within {margin_mm:g} mm of the liver left out "
                "and the lung counts scaled from the kept lung's mean concentration to the whole lung mask")
    n_kept = float(counts[kept].sum())
    n_lung = n_kept * float(lungs.sum()) / float(kept.sum())
    if n_lung + n_liver <= 0:
        raise InputError(f"{spect_path}: {what}: no counts in the lungs or the liver")
    f = n_lung / (n_lung + n_liver)
    sd = math.sqrt(f * (1 - f) / (n_kept + n_liver) + LSF_SPECT_SD ** 2)
    how = (f"lung counts / (lung + liver counts) on {os.path.basename(spect_path)}{band}; SD {sd:.4f}: binomial "
           f"counts with the SPECT/CT LSF's {100 * LSF_SPECT_SD:g} pp (Young et al.)")
    return f, sd, how


def measure_images(case_dir: str, images: dict[str, Any], tumor_names: list[str], file: str = "",
                   injections: dict[str, str | None] | None = None,
                   tumor_injection: dict[str, str] | None = None) -> dict[str, Any]:
    """Every measurement the ``[images]`` table allows, with its uncertainty and how it was obtained.

    ``injections`` (name → the territory it lies ``within``, or None) and ``tumor_injection`` (tumour → its
    injection) describe a case of several injections; ``[images.masks.injections]`` then gives each
    territory's mask, ``[images.spect_by_injection]`` each injection's own MAA SPECT (else ``spect``).

    Returns a dict: ``volumes_ml`` (liver, perfused, lungs, tumors.<name>), ``tn_ratio.<name>``,
    ``shunt_fraction``, ``lung_mass_kg``, ``hepatic_reserve`` (those the images allow), with several injections
    ``injections.<name>.{perfused_volume_ml, shunt_fraction, tn_ratios.<tumour>}``, and ``how`` (key → a
    sentence), ``cv`` (key → CV or SD)."""
    def path_of(rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(case_dir, rel)

    ct_path = path_of(images["ct"]) if "ct" in images else None

    read: dict = {}  # each mask file read once, whichever SPECT grids it is put on

    def mask(raw, what: str, on, keep: dict | None = None) -> np.ndarray:
        return read_mask(mask_ref(raw, case_dir, what), what, on, keep, ct_path, read)

    def ref(raw, what: str = ""):
        return mask_ref(raw, case_dir, what)

    injections = injections or {}
    tumor_injection = tumor_injection or {}
    masks_raw = images.get("masks", {})
    by_injection = images.get("spect_by_injection", {})
    for name in list(by_injection) + list(masks_raw.get("injections", {})):
        if name not in injections:
            where = "spect_by_injection" if name in by_injection else "masks.injections"
            raise InputError(f"{file}: images.{where}.{name}: no injection named {name!r} in the case")
    if injections and "perfused" in masks_raw:
        raise InputError(f"{file}: images.masks.perfused: ambiguous with [[injections]]: give each territory's mask "
                         "in [images.masks.injections]")
    if "spect" in images:
        ref_what, ref_path = "images.spect", path_of(images["spect"])
    elif by_injection:
        first = next(iter(by_injection))
        ref_what, ref_path = f"images.spect_by_injection.{first}", path_of(by_injection[first])
    else:
        raise InputError(f"{file}: images.spect: missing (the masks lie on the SPECT's grid)")
    spects = {ref_path: read_spect(ref_path, ref_what)}
    grid = (ref_path, spects[ref_path])
    affine = grid[1][1]
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    native: dict[str, tuple[np.ndarray, float]] = {}
    masks: dict[str, np.ndarray] = {}
    for key in ("liver", "perfused", "lungs"):
        if key in masks_raw:
            masks[key] = mask(masks_raw[key], f"images.masks.{key}", grid, native)
    territories = {name: mask(rel, f"images.masks.injections.{name}", grid, native)
                   for name, rel in masks_raw.get("injections", {}).items()}
    for name, m in territories.items():
        outer = injections.get(name)
        if outer in territories and (m & ~territories[outer]).any():
            raise InputError(f"{ref(masks_raw['injections'][name]).path}: images.masks.injections.{name}: the "
                             f"territory lies partly outside that of {outer!r}, which it lies within")
    tumor_masks = {}
    for name, rel in masks_raw.get("tumors", {}).items():
        if name not in tumor_names:
            raise InputError(f"{file}: images.masks.tumors.{name}: no tumour named {name!r} in the case")
        m = tumor_masks[name] = mask(rel, f"images.masks.tumors.{name}", grid, native)
        home, label = ("perfused", "the perfused mask") if not injections else \
            (tumor_injection.get(name), f"the territory of injection {tumor_injection.get(name)!r}")
        container = masks.get("perfused") if not injections else territories.get(home)
        if container is not None and (m & ~container).any():
            raise InputError(f"{ref(rel).path}: images.masks.tumors.{name}: the tumour mask lies partly outside {label}")
    out: dict[str, Any] = {"volumes_ml": {"tumors": {}}, "tn_ratio": {}, "how": {}, "cv": {}}
    for key in masks:  # volumes on each mask's own grid (its own resolution)
        r = ref(masks_raw[key])
        out["volumes_ml"][key] = _volume(out, f"volumes_ml.{key}", r.name, *native[r.key])
    for name in tumor_masks:
        r = ref(masks_raw["tumors"][name])
        out["volumes_ml"]["tumors"][name] = _volume(out, f"volumes_ml.tumors.{name}", r.name, *native[r.key])
    counts = spects[ref_path][0]
    fwhm = float(images["spect_fwhm_mm"]) if "spect_fwhm_mm" in images else None
    if "perfused" in masks and tumor_masks:
        normal = masks["perfused"] & ~np.logical_or.reduce(list(tumor_masks.values()))
        for name, (tn, cv, how) in _tn_ratios(counts, affine, ref_path, ref_what, normal, tumor_masks,
                                                "the perfused territory", fwhm).items():
            out["tn_ratio"][name], out["cv"][f"tn_ratio.{name}"], out["how"][f"tn_ratio.{name}"] = tn, cv, how
    margin = float(images.get("lung_base_margin_mm", 0.0))
    if "lungs" in masks and "liver" in masks and "spect" in images:
        f, sd, how = _lsf(counts, affine, ref_path, ref_what, masks["lungs"], masks["liver"], margin)
        out["shunt_fraction"], out["cv"]["shunt_fraction"], out["how"]["shunt_fraction"] = f, sd, how
    if injections:
        out["injections"] = {}

    def spect_of(injection: str | None) -> str:
        return path_of(by_injection[injection]) if injection in by_injection else ref_path

    for name in injections:
        rec: dict[str, Any] = {"tn_ratios": {}}
        what, sp = (f"images.spect_by_injection.{name}", path_of(by_injection[name])) if name in by_injection \
            else (ref_what, ref_path)
        if name in territories:
            r = ref(masks_raw["injections"][name])
            rec["perfused_volume_ml"] = _volume(out, f"injections.{name}.perfused_volume_ml", r.name, *native[r.key])
        if sp not in spects and (name in territories or "lungs" in masks):
            spects[sp] = read_spect(sp, what)
        there = (lambda raw, w, sp=sp: mask(raw, w, (sp, spects[sp]))) if sp != ref_path else None
        if name in territories and tumor_masks:
            terr = territories[name] if there is None else there(masks_raw["injections"][name],
                                                                 f"images.masks.injections.{name}")
            inside = {t: (m if there is None else there(masks_raw["tumors"][t], f"images.masks.tumors.{t}"))
                      for t, m in tumor_masks.items() if (m & territories[name]).any()}
            if inside:
                normal = terr & ~np.logical_or.reduce(list(inside.values()))
                for t, (tn, cv, how) in _tn_ratios(spects[sp][0], spects[sp][1], sp, what, normal, inside,
                                                    f"injection {name!r}'s territory", fwhm).items():
                    if tumor_injection.get(t) == name:  # the tumour's own injection: its T:N
                        out["tn_ratio"][t], out["cv"][f"tn_ratio.{t}"], out["how"][f"tn_ratio.{t}"] = tn, cv, how
                    elif spect_of(tumor_injection.get(t)) != sp:  # another MAA study: this injection's own T:N
                        rec["tn_ratios"][t] = tn
                        out["cv"][f"injections.{name}.tn_ratios.{t}"] = cv
                        out["how"][f"injections.{name}.tn_ratios.{t}"] = how
        if name in by_injection and "lungs" in masks and "liver" in masks:
            lungs, liver = (masks["lungs"], masks["liver"]) if there is None else \
                (there(masks_raw["lungs"], "images.masks.lungs"), there(masks_raw["liver"], "images.masks.liver"))
            f, sd, how = _lsf(spects[sp][0], spects[sp][1], sp, what, lungs, liver, margin)
            rec["shunt_fraction"] = f
            out["cv"][f"injections.{name}.shunt_fraction"], out["how"][f"injections.{name}.shunt_fraction"] = sd, how
        out["injections"][name] = rec
    planar = _planar_lsf(images, masks_raw, path_of, file)
    if planar is not None:
        f, sd, how = planar
        out["shunt_fraction_planar"] = f
        if "shunt_fraction" not in out:  # SPECT/CT first (the planar method overestimates), planar when alone
            out["shunt_fraction"] = f
            out["cv"]["shunt_fraction"] = sd
            out["how"]["shunt_fraction"] = how
    if "lungs" in masks and ct_path is not None:
        ct = read_image(ct_path, "images.ct", np.float32)
        hu = on_grid(ref_path, grid[1], ct_path, ct, "images.ct", order=1, fill=-1000.0)[masks["lungs"]].astype(np.float64)
        rho = np.clip(1.0 + hu / 1000.0, 0.0, None)  # g/mL
        mass = float(rho.sum()) * voxel_ml / 1000.0
        cv, lo, hi = _segmentation_cv(masks["lungs"])
        out["lung_mass_kg"] = mass
        out["cv"]["lung_mass_kg"] = cv
        out["how"]["lung_mass_kg"] = (f"CT density 1 + HU/1000 g/mL summed over the lung mask (Kao et al. 2014); "
                                      f"CV {cv:.3f} from one-voxel erosion/dilation of the mask")
    if "liver" in masks:
        treated = masks.get("perfused")
        if territories:
            treated = np.logical_or.reduce(list(territories.values()))
        if treated is not None:
            out["hepatic_reserve"] = 1.0 - float((treated & masks["liver"]).sum()) / float(masks["liver"].sum()) \
                if territories else 1.0 - out["volumes_ml"]["perfused"] / out["volumes_ml"]["liver"]
    return out


# -- the case ------------------------------------------------------------------------------------------------

_TARGETS = {
    # measurement key → (case table path, key, form)
    "volumes_ml.perfused": (("liver",), "perfused_volume_ml", "cv"),
    "volumes_ml.liver": (("liver",), "whole_liver_volume_ml", "cv"),
    "shunt_fraction": (("lung",), "shunt_fraction", "sd"),
    "lung_mass_kg": (("lung",), "mass_kg", "cv"),
}


def measure_case(path: str, text: str | None = None) -> dict[str, Any]:
    """Measure a case's ``[images]`` and complete the case: returns ``text`` (the completed case TOML, the
    user's text kept and the measured values added with a comment on each), ``measurements`` (the ``--json``
    keys) and ``disagreements`` (values the user gave that the images contradict)."""
    import tomlkit

    if text is None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        doc = tomlkit.parse(text)
    except Exception as e:  # noqa: BLE001 - the TOML library's error is this file's error
        raise InputError(f"{path}: not valid TOML: {e}") from None
    images = doc.get("images")
    if not isinstance(images, dict):
        raise InputError(f"{path}: images: missing ([images] names the CT, the SPECT and the masks)")
    images = images.unwrap() if hasattr(images, "unwrap") else dict(images)
    from .case import _check_images, _Reader

    _check_images(_Reader(path), images)  # the [images] table's own form: strings and tables, one-line errors
    tumors = doc.get("tumors", [])
    names = [str(t["name"]) for t in tumors if "name" in t]
    injection_tables = [j for j in doc.get("injections", []) if isinstance(j, dict) and "name" in j]
    injections = {str(j["name"]): (str(j["within"]) if "within" in j else None) for j in injection_tables}
    tumor_injection = {str(t["name"]): str(t["injection"]) for t in tumors if "name" in t and "injection" in t}
    m = measure_images(os.path.dirname(os.path.abspath(path)), images, names, path, injections, tumor_injection)
    disagreements = []

    def place(table, key, value, spread, form, how, label):
        given = table.get(key)
        if given is not None:
            v = measured_value(given.unwrap() if hasattr(given, "unwrap") else given)
            if v is not None:
                width = spread * (v if form == "cv" else 1.0)
                if abs(v - value) > max(width, 1e-12):
                    disagreements.append({"field": label, "given": v, "measured": value, "uncertainty": width})
            return
        if form == "cv":
            item = tomlkit.inline_table()
            item.update({"value": round(value, 6), "cv": round(spread, 4)})
        else:
            item = tomlkit.inline_table()
            item.update({"dist": "normal", "mean": round(value, 6), "sd": round(spread, 5), "min": 0.0, "max": 0.99})
        table[key] = item
        if not isinstance(table, tomlkit.items.InlineTable):  # an inline table holds no comments
            table[key].comment(f"measured: {how}")

    for mkey, (tpath, key, form) in _TARGETS.items():
        head, _, rest = mkey.partition(".")
        value = m.get(head) if not rest else m.get(head, {}).get(rest)
        if value is None:
            continue
        table = doc.setdefault(tpath[0], tomlkit.table())
        place(table, key, value, m["cv"][mkey], form, m["how"][mkey], f"{tpath[0]}.{key}")
    for k, t in enumerate(tumors):
        name = str(t.get("name"))
        if name in m["volumes_ml"]["tumors"]:
            place(t, "volume_ml", m["volumes_ml"]["tumors"][name], m["cv"][f"volumes_ml.tumors.{name}"], "cv",
                  m["how"][f"volumes_ml.tumors.{name}"], f"tumors[{k}].volume_ml")
        if name in m["tn_ratio"]:
            place(t, "tn_ratio", m["tn_ratio"][name], m["cv"][f"tn_ratio.{name}"], "cv",
                  m["how"][f"tn_ratio.{name}"], f"tumors[{k}].tn_ratio")
    for k, j in enumerate(injection_tables):
        rec = m.get("injections", {}).get(str(j["name"]), {})
        for key, form in (("perfused_volume_ml", "cv"), ("shunt_fraction", "sd")):
            if key in rec:
                mkey = f"injections.{j['name']}.{key}"
                place(j, key, rec[key], m["cv"][mkey], form, m["how"][mkey], f"injections[{k}].{key}")
        if rec.get("tn_ratios"):
            if "tn_ratios" not in j:
                j["tn_ratios"] = tomlkit.table()
            for t, tn in rec["tn_ratios"].items():
                mkey = f"injections.{j['name']}.tn_ratios.{t}"
                place(j["tn_ratios"], t, tn, m["cv"][mkey], "cv", m["how"][mkey], f"injections[{k}].tn_ratios.{t}")
    out_text = tomlkit.dumps(doc)
    from .case import parse_case

    parse_case(out_text, path)  # the completed case must be a case
    measurements = {k: v for k, v in m.items() if k not in ("how", "cv")}
    return {"text": out_text, "measurements": measurements, "disagreements": disagreements, "how": m["how"]}
