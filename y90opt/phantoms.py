"""Synthetic phantoms with exact answers: a CT, a 99mTc-MAA SPECT and masks, written as NIfTI.

The geometry (on one voxel grid): a liver ellipsoid; its perfused part (the half-liver on the +x side, a
lobar territory); spherical tumours inside the perfused part; two lung ellipsoids above the liver. CT numbers:
soft tissue 40 HU, lungs −750 HU (0.25 g/mL by ρ = 1 + HU/1000), air −1000 HU elsewhere. SPECT counts per
voxel: ``c`` in the normal perfused liver, ``tn · c`` in each tumour, 0 in the liver outside the territory,
and in the lungs a uniform density whose total is LSF/(1 − LSF) times the liver's counts (so that
lung / (lung + liver) = LSF exactly). Every measurement of :mod:`y90opt.imaging` has an exact expected value
on it: :class:`Phantom` carries them (volumes from the voxel counts, not from the ellipsoids' formulas).

Optionally the SPECT is blurred with a Gaussian of a given FWHM and given Poisson noise (seeded): the
partial-volume and spill-over effects real SPECT shows (a 99mTc SPECT's resolution is about 12-15 mm FWHM).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

#: A case naming the files :meth:`Phantom.write_nifti` writes (with the default tumours T1 and T2), its measured
#: values left for ``y90opt measure`` to fill in.
PHANTOM_CASE = """
name = "phantom"
scenario = "multifocal-unilobar"

[images]
ct = "ct.nii.gz"
spect = "spect.nii.gz"

[images.masks]
liver = "mask_liver.nii.gz"
perfused = "mask_perfused.nii.gz"
lungs = "mask_lungs.nii.gz"

[images.masks.tumors]
T1 = "mask_tumors_T1.nii.gz"
T2 = "mask_tumors_T2.nii.gz"

[[tumors]]
name = "T1"

[[tumors]]
name = "T2"

[lung]

[vials]
calibration = "2026-12-06T12:00:00-05:00"

[plan]
vial_gbq = 5
treatment = "2026-12-09T12:00:00-05:00"
"""

#: CT numbers of the phantom's tissues [HU].
HU_SOFT, HU_LUNG, HU_AIR = 40.0, -750.0, -1000.0


@dataclasses.dataclass
class Phantom:
    """The phantom's arrays and its exact answers."""

    ct: np.ndarray
    spect: np.ndarray
    masks: dict[str, np.ndarray]  # liver, perfused, lungs, tumors.<name>
    voxel_mm: tuple[float, float, float]
    truth: dict[str, Any]
    #: further MAA SPECTs by injection name (:func:`make_two_injection_phantom`), written as ``spect_<name>``
    spects: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        return np.diag([*self.voxel_mm, 1.0])

    def write_nifti(self, folder: str) -> dict[str, str]:
        """Write ``ct.nii.gz``, ``spect.nii.gz`` and one mask per structure into ``folder``; returns name → path."""
        import nibabel as nib

        os.makedirs(folder, exist_ok=True)
        out = {}
        for name, arr, dtype in [("ct", self.ct, np.int16), ("spect", self.spect, np.float32)] + \
                [(f"spect_{k}", v, np.float32) for k, v in self.spects.items()] + \
                [(f"mask_{k.replace('.', '_')}", v, np.uint8) for k, v in self.masks.items()]:
            img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), self.affine)
            if name == "ct":
                img.header.set_slope_inter(1.0, 0.0)
            path = os.path.join(folder, f"{name}.nii.gz")
            nib.save(img, path)
            out[name] = path
        return out


    def write_planar(self, folder: str, axis: int = 1) -> dict[str, str]:
        """Planar anterior and posterior views (the SPECT's counts summed along ``axis``, no attenuation; the
        posterior mirrored left-right as a camera behind the patient sees it) and the lung and liver ROIs (the
        masks' projections), as 2-D NIfTI: ``planar_anterior``, ``planar_posterior``, ``planar_lungs``,
        ``planar_liver``. Without attenuation both views hold the same counts: the planar LSF is exact."""
        import nibabel as nib

        os.makedirs(folder, exist_ok=True)
        ant = self.spect.sum(axis=axis)
        images = {"planar_anterior": ant, "planar_posterior": ant[::-1, :],
                  "planar_lungs": self.masks["lungs"].any(axis=axis).astype(np.uint8),
                  "planar_liver": self.masks["liver"].any(axis=axis).astype(np.uint8)}
        out = {}
        for name, arr in images.items():
            path = os.path.join(folder, f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32 if "planar_a" in name or "posterior" in name
                                                else np.uint8), np.eye(4)), path)
            out[name] = path
        return out

    def write_dicom(self, folder: str) -> dict[str, str]:
        """Write the CT, the SPECT and the masks as DICOM series (one folder each, single-frame CT-image
        slices, axial, LPS patient coordinates; pydicom) and their NIfTI twins of the same stored values (the
        SPECT quantised to 16 bits through its rescale slope). Returns name → folder (and ``<name>_nifti``)."""
        import nibabel as nib

        os.makedirs(folder, exist_ok=True)
        out = {}
        arrays = {"ct": (self.ct, 1.0, -1024.0), "spect": (self.spect, None, 0.0)}
        arrays.update({f"mask_{k.replace('.', '_')}": (v.astype(np.float64), 1.0, 0.0) for k, v in self.masks.items()})
        for k, (name, (arr, slope, intercept)) in enumerate(arrays.items()):
            if slope is None:  # the SPECT: the largest count fits 16 bits; a slope DICOM's 16-character DS holds
                slope = float(format(max(float(arr.max()), 1.0) / 60000.0, ".8g"))
            stored = np.rint((arr - intercept) / slope).astype(np.uint16)
            values = stored.astype(np.float64) * slope + intercept
            series = os.path.join(folder, name)
            _write_series(series, stored, slope, intercept, self.voxel_mm, series_number=k + 1)
            out[name] = series
            twin = os.path.join(folder, f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(values.astype(np.float64), _lps_to_ras(self.voxel_mm)), twin)
            out[f"{name}_nifti"] = twin
        return out


    def write_seg(self, path: str, ct_series: str) -> str:
        """Every mask as one segment of a DICOM SEG (highdicom; BINARY, overlapping segments allowed) on the
        CT series that :meth:`write_dicom` wrote in ``ct_series``; segment labels are the mask names
        (``liver``, ``tumors.T1``, …), numbered in that order from 1."""
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes

        source = [pydicom.dcmread(os.path.join(ct_series, f)) for f in sorted(os.listdir(ct_series))]
        source.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
        names = list(self.masks)
        pixels = np.stack([np.transpose(self.masks[k], (2, 1, 0)) for k in names], axis=-1).astype(np.uint8)
        descriptions = [hd.seg.SegmentDescription(
            segment_number=n + 1, segment_label=k, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
            for n, k in enumerate(names)]
        seg = hd.seg.Segmentation(
            source_images=source, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=90,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="y90opt", manufacturer_model_name="phantom",
            software_versions="phantom", device_serial_number="0")
        seg.save_as(path)
        return path

    def write_rtstruct(self, path: str, ct_series: str, names: list[str] | None = None) -> str:
        """The masks ``names`` (default: all) as ROIs of a DICOM RTSTRUCT referencing the CT series of
        :meth:`write_dicom`: in each axial slice, each row of the mask one run of voxels (true of the phantom's
        ellipsoids), the contour traced along the voxels' outer edges, so that a voxel's centre lies inside
        the contour exactly when the voxel is in the mask."""
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
        from scipy.ndimage import label

        ct = pydicom.dcmread(os.path.join(ct_series, sorted(os.listdir(ct_series))[0]))
        dx, dy, dz = self.voxel_mm
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = RTStructureSetStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["y90opt-phantom-rtstruct"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "RTSTRUCT", ct.PatientName, ct.PatientID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.StudyInstanceUID, generate_uid(entropy_srcs=["y90opt-rs"])
        ds.FrameOfReferenceUID = ct.FrameOfReferenceUID
        ds.StructureSetLabel = "phantom"
        rois, contours = [], []
        for number, name in enumerate(names or list(self.masks), start=1):
            roi = Dataset()
            roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, ct.FrameOfReferenceUID
            roi.ROIGenerationAlgorithm = "MANUAL"
            rois.append(roi)
            item = Dataset()
            item.ReferencedROINumber = number
            seq = []
            m = self.masks[name]
            for k in range(m.shape[2]):
                parts, n_parts = label(m[:, :, k])  # each connected part of the slice its own contour
                for part in range(1, n_parts + 1):
                    blob = parts == part
                    rows = [j for j in range(m.shape[1]) if blob[:, j].any()]
                    right, left = [], []
                    for j in rows:
                        i = np.flatnonzero(blob[:, j])
                        if i[-1] - i[0] + 1 != len(i) or rows[-1] - rows[0] + 1 != len(rows):
                            raise ValueError(f"mask {name}: slice {k} is not one run per row: no outline traced")
                        right += [(i[-1] + 0.5, j - 0.5), (i[-1] + 0.5, j + 0.5)]
                        left += [(i[0] - 0.5, j - 0.5), (i[0] - 0.5, j + 0.5)]
                    pts = right + left[::-1]
                    c = Dataset()
                    c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(pts)
                    c.ContourData = [format(v, ".6g") for a, b in pts for v in (a * dx, b * dy, k * dz)]  # LPS mm
                    seq.append(c)
            item.ContourSequence = Sequence(seq)
            contours.append(item)
        ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(rois), Sequence(contours)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return path

    def write_nrrd(self, folder: str) -> dict[str, str]:
        """``segmentation.seg.nrrd``, the masks as a 3D Slicer segmentation (one layer per segment, each
        segment's name, label value 1 and layer in the header; LPS space), and ``tumors.nrrd``, a label map of
        the tumours (label k + 1 for the k-th), both with pynrrd. Returns name → path."""
        import nrrd

        os.makedirs(folder, exist_ok=True)
        dx, dy, dz = self.voxel_mm
        lps = np.diag([dx, dy, dz])  # voxel (i, j, k) at LPS (i dx, j dy, k dz), as the DICOM series
        names = list(self.masks)
        header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
                  "space directions": np.vstack([np.full(3, np.nan), lps]), "space origin": np.zeros(3)}
        for n, k in enumerate(names):
            header.update({f"Segment{n}_Name": k, f"Segment{n}_LabelValue": "1", f"Segment{n}_Layer": str(n)})
        seg = os.path.join(folder, "segmentation.seg.nrrd")
        nrrd.write(seg, np.stack([self.masks[k] for k in names]).astype(np.uint8), header)
        labels = np.zeros(self.spect.shape, np.uint8)
        for n, k in enumerate(k for k in names if k.startswith("tumors.")):
            labels[self.masks[k]] = n + 1
        tumours = os.path.join(folder, "tumors.nrrd")
        nrrd.write(tumours, labels, {"space": "left-posterior-superior", "space directions": lps,
                                     "space origin": np.zeros(3), "kinds": ["domain"] * 3})
        return {"segmentation": seg, "tumors": tumours}


def _lps_to_ras(voxel_mm) -> np.ndarray:
    """The NIfTI (RAS) affine of the DICOM series :func:`_write_series` writes (origin 0, axes along LPS)."""
    return np.diag([-voxel_mm[0], -voxel_mm[1], voxel_mm[2], 1.0])


def _write_series(folder: str, stored: np.ndarray, slope: float, intercept: float, voxel_mm, series_number: int) -> None:
    """One axial slice per k of ``stored[i, j, k]`` (i along the rows' direction +x, j along +y, LPS)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    study, series, frame = generate_uid(entropy_srcs=["y90opt-phantom-study"]), \
        generate_uid(entropy_srcs=[f"y90opt-phantom-series-{series_number}"]), \
        generate_uid(entropy_srcs=["y90opt-phantom-frame"])
    for k in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"y90opt-phantom-{series_number}-{k}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^y90opt", "PHANTOM"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""  # patient and study modules
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261201", "120000", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * voxel_mm[2])]
        ds.PixelSpacing = [float(voxel_mm[1]), float(voxel_mm[0])]  # between rows (y), between columns (x)
        ds.SliceThickness = float(voxel_mm[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = format(float(slope), ".8g"), format(float(intercept), ".8g")
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows (y) × columns (x)
        pydicom.dcmwrite(os.path.join(folder, f"slice{k:04d}.dcm"), ds, enforce_file_format=True)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float64)
    r = sum(((idx[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return r <= 1.0


def make_phantom(n: int = 64, voxel_mm: float = 4.0, tumors: dict[str, tuple[float, float]] | None = None,
                 lsf: float = 0.06, counts_per_voxel: float = 100.0, fwhm_mm: float | None = None,
                 noise_seed: int | None = None, shape: tuple[int, int, int] | None = None,
                 lung_height: float = 0.75) -> Phantom:
    """A phantom on an ``n``³ grid (or ``shape``) of ``voxel_mm`` voxels.

    Args:
        tumors: name → (radius in voxels, T:N); placed along the perfused half's axis.
        lsf: the lung shunt fraction the counts encode.
        counts_per_voxel: counts in a normal perfused voxel (before blur and noise).
        fwhm_mm, noise_seed: blur the SPECT (Gaussian, FWHM in mm) and add Poisson noise (seeded).
        lung_height: the lungs' centres along z as a fraction of n: 0.75 leaves a gap of about two voxels above
            the liver's dome, 0.70 sets the lung bases on the dome (where liver counts spill into the lungs).
    """
    tumors = {"T1": (3.0, 4.0), "T2": (2.0, 2.5)} if tumors is None else tumors
    shape = (n, n, n) if shape is None else tuple(shape)
    n = min(shape)
    c = n / 2
    liver = _ellipsoid(shape, (c, c, c * 0.8), (0.38 * n, 0.28 * n, 0.2 * n))
    perfused = liver & (np.indices(shape)[0] >= c)
    lungs = _ellipsoid(shape, (c - 0.18 * n, c, lung_height * n), (0.14 * n, 0.18 * n, 0.12 * n)) | \
        _ellipsoid(shape, (c + 0.18 * n, c, lung_height * n), (0.14 * n, 0.18 * n, 0.12 * n))
    lungs &= ~liver
    masks: dict[str, np.ndarray] = {"liver": liver, "perfused": perfused, "lungs": lungs}
    spect = np.zeros(shape)
    spect[perfused] = counts_per_voxel
    for k, (name, (radius, tn)) in enumerate(tumors.items()):
        centre = (c + 0.12 * n + k * 0.12 * n, c, c * 0.8)
        m = _ellipsoid(shape, centre, (radius, radius, radius)) & perfused
        if not m.any():
            raise ValueError(f"tumour {name} does not fit in the perfused part of a {n}³ phantom")
        masks[f"tumors.{name}"] = m
        spect[m] = tn * counts_per_voxel
    liver_counts = float(spect[liver].sum())
    lung_total = lsf / (1.0 - lsf) * liver_counts
    spect[lungs] = lung_total / lungs.sum()
    ct = np.full(shape, HU_AIR)
    ct[liver] = HU_SOFT
    ct[lungs] = HU_LUNG
    v_ml = float(np.prod([voxel_mm] * 3)) / 1000.0
    truth: dict[str, Any] = {
        "volumes_ml": {"liver": float(liver.sum()) * v_ml, "perfused": float(perfused.sum()) * v_ml,
                       "lungs": float(lungs.sum()) * v_ml,
                       "tumors": {t: float(masks[f"tumors.{t}"].sum()) * v_ml for t in tumors}},
        "tn_ratio": {t: tumors[t][1] for t in tumors},
        "shunt_fraction": lsf,
        "lung_mass_kg": float(lungs.sum()) * v_ml * (1.0 + HU_LUNG / 1000.0) / 1000.0,
    }
    if fwhm_mm is not None:
        from scipy.ndimage import gaussian_filter

        spect = gaussian_filter(spect, sigma=fwhm_mm / voxel_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))), mode="constant")
    if noise_seed is not None:
        spect = np.random.default_rng(noise_seed).poisson(spect).astype(np.float64)
    return Phantom(ct, spect, masks, (voxel_mm,) * 3, truth)


#: A case of two injections (a modified radiation lobectomy) naming the files
#: :func:`make_two_injection_phantom`'s :meth:`Phantom.write_nifti` writes, its measured values left out.
TWO_INJECTION_CASE = """
name = "phantom-two-injections"
scenario = "modified-radiation-lobectomy"

[images]
ct = "ct.nii.gz"
spect = "spect.nii.gz"

[images.spect_by_injection]
segment = "spect_segment.nii.gz"

[images.masks]
liver = "mask_liver.nii.gz"
lungs = "mask_lungs.nii.gz"

[images.masks.injections]
segment = "mask_injections_segment.nii.gz"
lobe = "mask_injections_lobe.nii.gz"

[images.masks.tumors]
T1 = "mask_tumors_T1.nii.gz"
T2 = "mask_tumors_T2.nii.gz"

[[sessions]]
name = "S1"
calibration = "2026-12-06T12:00:00-05:00"
treatment = "2026-12-09T12:00:00-05:00"

[[injections]]
name = "segment"
session = "S1"
role = "segmental"
within = "lobe"
vial_gbq = 3

[[injections]]
name = "lobe"
session = "S1"
role = "lobar"
vial_gbq = 5

[[correlations]]   # both territories segmented on one cone-beam CT: their errors go together
inputs = ["injections.segment.perfused_volume_ml", "injections.lobe.perfused_volume_ml"]
rho = 0.8

[[tumors]]
name = "T1"
injection = "segment"

[[tumors]]
name = "T2"
injection = "lobe"

[lung]
"""


def make_two_injection_phantom(n: int = 64, voxel_mm: float = 4.0, tn_segment: float = 6.0,
                               lsf_segment: float = 0.03, **kwargs) -> Phantom:
    """The phantom of :func:`make_phantom` treated by two injections: the lobe (its perfused part, mask
    ``injections.lobe``) and a segment inside it holding tumour T1 (``injections.segment``: the slab of the
    lobe between x = c + 0.06 n and c + 0.19 n); T2 lies in the lobe outside the segment. ``spect`` is the lobar
    MAA study (as :func:`make_phantom`'s), ``spects["segment"]`` the segmental one: counts only in the segment,
    T1 at ``tn_segment`` times its normal tissue, lungs at ``lsf_segment``. ``truth`` gains
    ``injections.<name>.{perfused_volume_ml, shunt_fraction, tn_ratios}``."""
    ph = make_phantom(n=n, voxel_mm=voxel_mm, **{k: v for k, v in kwargs.items() if k not in ("fwhm_mm", "noise_seed")})
    shape = ph.spect.shape
    c = min(shape) / 2
    x = np.indices(shape)[0]
    lobe = ph.masks["perfused"]
    segment = lobe & (x >= c + 0.06 * min(shape)) & (x < c + 0.19 * min(shape))
    t1 = ph.masks["tumors.T1"]
    if (t1 & ~segment).any() or (ph.masks["tumors.T2"] & segment).any():
        raise ValueError("T1 must lie inside the segment and T2 outside it: use the default tumours")
    cpv = float(kwargs.get("counts_per_voxel", 100.0))
    seg_spect = np.zeros(shape)
    seg_spect[segment] = cpv
    seg_spect[t1] = tn_segment * cpv
    liver_counts = float(seg_spect[ph.masks["liver"]].sum())
    seg_spect[ph.masks["lungs"]] = lsf_segment / (1.0 - lsf_segment) * liver_counts / ph.masks["lungs"].sum()
    masks = {k: v for k, v in ph.masks.items() if k != "perfused"}
    masks["injections.segment"], masks["injections.lobe"] = segment, lobe
    v_ml = float(voxel_mm) ** 3 / 1000.0
    truth = dict(ph.truth)
    truth["injections"] = {
        "segment": {"perfused_volume_ml": float(segment.sum()) * v_ml, "shunt_fraction": lsf_segment,
                    "tn_ratios": {"T1": tn_segment}},
        "lobe": {"perfused_volume_ml": float(lobe.sum()) * v_ml, "tn_ratios": {"T1": truth["tn_ratio"]["T1"]}},  # lobar SPECT
    }
    truth["tn_ratio"] = {"T1": tn_segment, "T2": truth["tn_ratio"]["T2"]}
    return Phantom(ph.ct, ph.spect, masks, ph.voxel_mm, truth, spects={"segment": seg_spect})
