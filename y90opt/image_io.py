"""Reading images: NIfTI files, DICOM series, NRRD, DICOM SEG and RTSTRUCT masks, each as an array and its
voxel-to-patient affine (NIfTI's RAS, millimetres), and resampling one image onto another's grid.

* NIfTI (nibabel): the image's affine is its geometry; stored values through the header's scaling.
* A DICOM series (a folder of single-frame slices, pydicom): slices ordered along the slice normal, values
  rescaled (slope, intercept), the affine from ImageOrientationPatient, PixelSpacing and ImagePositionPatient
  (DICOM's LPS turned into RAS).
* NRRD (pynrrd, the format 3D Slicer writes its label maps and ``.seg.nrrd`` segmentations in): the affine
  from ``space directions`` and ``space origin`` in the file's ``space`` (LPS or RAS); a Slicer segmentation's
  segments found by name (``SegmentN_Name``) with their label value and layer.
* DICOM SEG (highdicom): the segment's volume and its affine (``Segmentation.get_volume``), by segment number
  or label.
* DICOM RTSTRUCT (pydicom for the file, matplotlib's ``Path.contains_points`` for the polygons): an ROI's
  closed planar contours rasterised on the grid of the case's CT (the image they were drawn on): a voxel is in
  the ROI when its centre lies inside an odd number of the ROI's contours in its slice (inner contours are
  holes); a contour must lie in one of the CT's axial slices.

A mask is named by a path, or by ``{ file = "…", label = … }``: for a label map (NIfTI, NRRD) the voxels equal to
the integer label; for a SEG the segment number or label; for an RTSTRUCT the ROI name; for a Slicer
segmentation the segment's name. Without a label a mask is every voxel > 0.5.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from .errors import InputError

#: Largest difference between two images' affines [mm] still taken as one grid.
GRID_TOLERANCE_MM = 1e-3
#: Largest distance [voxels] between an RTSTRUCT contour's plane and the CT slice it is drawn on.
CONTOUR_PLANE_TOLERANCE = 0.1
#: Matrix turning DICOM's LPS patient coordinates into NIfTI's RAS (and back).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class MaskRef:
    """A mask as the case names it: the file and, for a label map or a file of several segments, the label."""

    path: str
    label: int | str | None = None
    field: str = ""

    @property
    def key(self) -> str:
        return self.path if self.label is None else f"{self.path}#{self.label}"

    @property
    def name(self) -> str:
        base = os.path.basename(self.path.rstrip(os.sep))
        return base if self.label is None else f"{base} ({self.label})"


def mask_ref(raw: Any, base_dir: str, field: str) -> MaskRef:
    """The :class:`MaskRef` of a case's mask entry (a path, or a table with ``file`` and ``label``)."""
    def path_of(rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(base_dir, rel)

    if isinstance(raw, str):
        return MaskRef(path_of(raw), None, field)
    return MaskRef(path_of(str(raw["file"])), raw.get("label"), field)


def read_series(folder: str, what: str):
    """A DICOM series (a folder of single-frame slices, one series) as (array[i, j, k], RAS affine), read with
    pydicom: slices ordered along the slice normal, stored values rescaled (slope, intercept), the affine from
    ImageOrientationPatient, PixelSpacing and ImagePositionPatient (LPS turned into NIfTI's RAS)."""
    import pydicom

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # noqa: BLE001 - a file that is not DICOM in the folder: not a slice
            continue
        if "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise InputError(f"{folder}: {what}: no DICOM image slices in the folder")
    if len({str(ds.SeriesInstanceUID) for ds in slices}) > 1:
        raise InputError(f"{folder}: {what}: the folder holds more than one series")
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if any(tag not in ds for ds in slices):
            raise InputError(f"{folder}: {what}: a slice has no {tag}: the series has no voxel geometry")
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))))
    pos = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in slices])
    dr, dc = (float(x) for x in slices[0].PixelSpacing)  # between rows, between columns
    if len(slices) > 1:
        steps = np.diff(pos, axis=0)
        step = steps.mean(axis=0)
        if np.max(np.abs(steps - step)) > GRID_TOLERANCE_MM:
            raise InputError(f"{folder}: {what}: the slices are not evenly spaced")
    else:
        step = normal * float(getattr(slices[0], "SliceThickness", 1.0))
    vol = np.stack([ds.pixel_array.astype(np.float64).T * float(getattr(ds, "RescaleSlope", 1.0))
                    + float(getattr(ds, "RescaleIntercept", 0.0)) for ds in slices], axis=2)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, step, pos[0]
    return vol, LPS_TO_RAS @ lps


def read_image(path: str, what: str, dtype=np.float64):
    """An image (NIfTI file or DICOM series folder) as (array of ``dtype``, RAS affine); a CT may be read as
    float32 (HU are integers, exact in float32) to hold half the memory."""
    import nibabel as nib

    if os.path.isdir(path):
        data, affine = read_series(path, what)
        return data.astype(dtype, copy=False), affine
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what}: no such image file")
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=dtype))
    except Exception as e:  # noqa: BLE001 - any unreadable file is this file's error, one line
        raise InputError(f"{path}: {what}: not a readable NIfTI image ({type(e).__name__}: {e})") from None
    if data.ndim != 3:
        raise InputError(f"{path}: {what}: expected a 3-D image, got {data.ndim} dimensions {data.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise InputError(f"{path}: {what}: the image's affine is singular or not finite (no voxel geometry)")
    return data, affine


def _is_nrrd(path: str) -> bool:
    return path.lower().endswith((".nrrd", ".nhdr"))


def _is_nibabel(path: str) -> bool:
    """A file nibabel reads (NIfTI, Analyze, …), by its name, case aside: the other files are DICOM."""
    low = path.lower()
    for ext in (".gz", ".bz2", ".zst"):
        low = low.removesuffix(ext)
    return low.endswith((".nii", ".hdr", ".img", ".mgh", ".mgz", ".mnc"))


def has_transform(path: str) -> bool:
    """The image places its voxels in patient space: a DICOM series or file and an NRRD always (their readers
    insist on their geometry); a NIfTI when its sform or qform is set (code > 0); any other format nibabel reads
    (Analyze) never: its affine is only the voxel size and nothing ties it to another image."""
    if os.path.isdir(path) or _is_nrrd(path) or not _is_nibabel(path):
        return True
    import nibabel as nib

    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        return False
    return int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0


def on_grid(ref_path: str, ref, path: str, img, what: str, order: int, fill: float) -> np.ndarray:
    """``img`` (data, affine) on the grid of ``ref``: as it is when the grids agree (shape, and affines within
    :data:`GRID_TOLERANCE_MM`), else resampled through both affines (each reference voxel centre mapped into the
    image, ``scipy.ndimage.map_coordinates`` of ``order``: 0 nearest neighbour for masks, 1 trilinear for CT;
    ``fill`` where a reference voxel's centre falls outside the image's voxels, i.e. beyond half a voxel past
    its outermost centres; between the outermost centres and that edge the nearest values are used). An image
    on another grid with no spatial transform is an error naming both."""
    (dr, ar), (di, ai) = ref, img
    if dr.shape == di.shape and np.max(np.abs(ar - ai)) <= GRID_TOLERANCE_MM:
        return di
    if not has_transform(path):
        raise InputError(f"{path}: {what}: not on the grid of {ref_path} (shape {di.shape} vs {dr.shape}) and has no "
                         "spatial transform (sform/qform) to resample it by")
    if not has_transform(ref_path):
        raise InputError(f"{ref_path}: {what}: {path} lies on another grid and {ref_path} has no spatial transform "
                         "(sform/qform) to resample it onto")
    from scipy.ndimage import map_coordinates

    try:
        to_img = np.linalg.inv(ai) @ ar  # reference voxel index -> image voxel index
    except np.linalg.LinAlgError:
        raise InputError(f"{path}: {what}: the image's affine is singular (no voxel geometry)") from None
    idx = np.indices(dr.shape, dtype=np.float64).reshape(3, -1)
    coords = to_img[:3, :3] @ idx + to_img[:3, 3:4]
    out = map_coordinates(np.asarray(di, dtype=np.float64), coords, order=order, mode="nearest", prefilter=False)
    shape = np.asarray(di.shape, dtype=np.float64)[:, None]
    outside = np.any((coords < -0.5 - 1e-9) | (coords > shape - 0.5 + 1e-9), axis=0)
    out[outside] = fill
    return out.reshape(dr.shape)


def _nrrd(path: str, label: int | str | None, what: str):
    """An NRRD image or label map (pynrrd) as (array, RAS affine); with a string label, the 3D Slicer
    segmentation's segment of that name (its label value, in its layer)."""
    import nrrd

    try:
        data, hdr = nrrd.read(path)
    except Exception as e:  # noqa: BLE001 - an unreadable file is this file's error
        raise InputError(f"{path}: {what}: not a readable NRRD file ({type(e).__name__}: {e})") from None
    dirs = np.asarray(hdr.get("space directions", []), dtype=object)
    spatial = [k for k, d in enumerate(dirs) if d is not None and np.all(np.isfinite(np.asarray(d, dtype=float)))]
    if len(spatial) != 3 or "space origin" not in hdr:
        raise InputError(f"{path}: {what}: the NRRD has no 3-D 'space directions' and 'space origin' (no voxel geometry)")
    space = str(hdr.get("space", "")).lower()
    if space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras"):
        raise InputError(f"{path}: {what}: NRRD space {hdr.get('space')!r}: expected LPS or RAS patient space")
    affine = np.eye(4)
    affine[:3, :3] = np.array([np.asarray(dirs[k], dtype=float) for k in spatial]).T
    affine[:3, 3] = np.asarray(hdr["space origin"], dtype=float)
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    layer = 0
    if isinstance(label, str):
        names = {str(v): k[: -len("_Name")] for k, v in hdr.items() if k.startswith("Segment") and k.endswith("_Name")}
        if label not in names:
            raise InputError(f"{path}: {what}: no segment named {label!r} (segments: {', '.join(sorted(names)) or 'none'})")
        seg = names[label]
        try:
            label, layer = int(hdr.get(f"{seg}_LabelValue", 1)), int(hdr.get(f"{seg}_Layer", 0))
        except ValueError:
            raise InputError(f"{path}: {what}: {seg}_LabelValue or {seg}_Layer is not an integer") from None
    elif data.ndim == 4 and label is not None:
        raise InputError(f"{path}: {what}.label: a segmentation of several layers names its segment (a string), "
                         "not a label value (each layer may reuse the same values)")
    if data.ndim == 4 and len(spatial) == 3:  # a Slicer segmentation of several layers: the list axis
        axis = next(k for k in range(4) if k not in spatial)
        if label is None:  # no segment named: every voxel of any layer > 0.5, as for a plain mask
            return np.max(np.asarray(data, dtype=np.float64), axis=axis), affine, None
        if not 0 <= layer < data.shape[axis]:
            raise InputError(f"{path}: {what}: segment {seg!r} is in layer {layer}, but the file has "
                             f"{data.shape[axis]} layers")
        data = np.take(data, layer, axis=axis)
    return np.asarray(data, dtype=np.float64), affine, label


def _seg(path: str, label: int | str | None, what: str):
    """One segment of a DICOM SEG (highdicom) as (array, RAS affine)."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
        if label is None:
            numbers = list(seg.segment_numbers)
            if len(numbers) != 1:
                raise InputError(f"{path}: {what}: the SEG holds {len(numbers)} segments: name one with "
                                 "{ file = ..., label = <number or label> }")
            number = numbers[0]
        elif isinstance(label, str):
            found = seg.get_segment_numbers(segment_label=label)
            if not found:
                raise InputError(f"{path}: {what}: no segment labelled {label!r} in the SEG")
            number = found[0]
        else:
            number = int(label)
            if number not in seg.segment_numbers:
                raise InputError(f"{path}: {what}: no segment number {number} in the SEG")
        img = seg.get_volume(segment_numbers=[number], combine_segments=True).to_nibabel()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a SEG highdicom cannot turn into a volume is this file's error
        raise InputError(f"{path}: {what}: not a readable DICOM SEG volume ({type(e).__name__}: {e})") from None
    return np.asarray(img.dataobj, dtype=np.float64), np.asarray(img.affine, dtype=np.float64)


def _rtstruct(ds, path: str, label: int | str | None, what: str, ct_path: str | None):
    """An RTSTRUCT ROI rasterised on the CT's grid: (array, RAS affine of the CT)."""
    from matplotlib.path import Path

    rois = {str(r.ROIName): int(r.ROINumber) for r in getattr(ds, "StructureSetROISequence", [])}
    if label is None and len(rois) == 1:
        label = next(iter(rois))
    if not isinstance(label, str) or label not in rois:
        raise InputError(f"{path}: {what}: name the ROI with {{ file = ..., label = \"<ROI name>\" }} "
                         f"(ROIs: {', '.join(sorted(rois)) or 'none'})")
    if ct_path is None:
        raise InputError(f"{path}: {what}: an RTSTRUCT mask is rasterised on the CT it was drawn on: give images.ct")
    shape, affine = _geometry(ct_path)
    _same_frame(ds, rois[label], path, what, ct_path)
    axes = affine[:3, :3]
    if np.any(np.abs(axes[2, :2]) > 1e-6) or np.any(np.abs(axes[:2, 2]) > 1e-6):
        raise InputError(f"{ct_path}: images.ct: an RTSTRUCT needs a CT of axial slices (rows and columns in the "
                         "transverse plane) to rasterise its contours on")
    to_index = np.linalg.inv(affine)
    mask = np.zeros(shape, dtype=bool)
    number = rois[label]
    items = [c for c in getattr(ds, "ROIContourSequence", []) if int(c.ReferencedROINumber) == number]
    contours = [c for item in items for c in getattr(item, "ContourSequence", [])]
    if not contours:
        raise InputError(f"{path}: {what}: ROI {label!r} has no contours")
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.float64)
    for c in contours:
        if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            raise InputError(f"{path}: {what}: ROI {label!r} has a {c.ContourGeometricType} contour (only CLOSED_PLANAR "
                             "contours enclose a volume)")
        try:
            lps = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
        except (ValueError, TypeError):
            raise InputError(f"{path}: {what}: a contour of ROI {label!r} has ContourData that is not x, y, z "
                             "triplets") from None
        if len(lps) < 3 or not np.all(np.isfinite(lps)):
            raise InputError(f"{path}: {what}: a contour of ROI {label!r} has fewer than 3 points or a non-finite one")
        ras = (LPS_TO_RAS[:3, :3] @ lps.T).T
        idx = (to_index[:3, :3] @ ras.T + to_index[:3, 3:4]).T
        k = float(np.mean(idx[:, 2]))
        kk = int(round(k))
        if np.max(np.abs(idx[:, 2] - kk)) > CONTOUR_PLANE_TOLERANCE or not 0 <= kk < shape[2]:
            raise InputError(f"{path}: {what}: a contour of ROI {label!r} does not lie in a slice of the CT ({ct_path})")
        ring = np.vstack([idx[:, :2], idx[:1, :2]])  # a closed path's last vertex only closes it: repeat the first
        inside = Path(ring, closed=True).contains_points(centres).reshape(shape[:2])
        mask[:, :, kk] ^= inside  # an inner contour is a hole
    return mask.astype(np.float64), affine


def _geometry(ct_path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The CT's shape and affine, read once per file version however many RTSTRUCT masks are drawn on it."""
    st = os.stat(ct_path)
    return _geometry_of(ct_path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _geometry_of(ct_path: str, mtime_ns: int, size: int) -> tuple[tuple[int, ...], np.ndarray]:
    data, affine = read_image(ct_path, "images.ct", np.float32)
    affine.setflags(write=False)
    return data.shape, affine


def _same_frame(ds, number: int, path: str, what: str, ct_path: str) -> None:
    """An RTSTRUCT ROI drawn on another frame of reference than the CT series' is refused (a DICOM CT only: a
    NIfTI carries no frame of reference)."""
    if not os.path.isdir(ct_path):
        return
    import pydicom

    roi = next((r for r in getattr(ds, "StructureSetROISequence", []) if int(r.ROINumber) == number), None)
    frame = str(getattr(roi, "ReferencedFrameOfReferenceUID", "")) if roi is not None else ""
    if not frame:
        return
    frames = set()
    for f in sorted(os.listdir(ct_path)):  # the slices read_series reads: images with a position
        try:
            ct = pydicom.dcmread(os.path.join(ct_path, f), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: not a slice
            continue
        if "ImagePositionPatient" in ct and "FrameOfReferenceUID" in ct:
            frames.add(str(ct.FrameOfReferenceUID))
    if frames and frame not in frames:
        raise InputError(f"{path}: {what}: the ROI's frame of reference {frame} is not the CT's ({ct_path}: "
                         f"{', '.join(sorted(frames))}): its contours were drawn on another image")


def read_mask_image(ref: MaskRef, what: str, ct_path: str | None = None):
    """The mask's image on its own grid as (array of 0/1, RAS affine)."""
    path, label = ref.path, ref.label
    if label is not None and not isinstance(label, str | int) or isinstance(label, bool):
        raise InputError(f"{path}: {what}.label: expected an integer label or a name")
    if _is_nrrd(path):
        if not os.path.isfile(path):
            raise InputError(f"{path}: {what}: no such image file")
        data, affine, label = _nrrd(path, label, what)
    elif not os.path.isdir(path) and not _is_nibabel(path):
        import pydicom

        if not os.path.isfile(path):
            raise InputError(f"{path}: {what}: no such image file")
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # noqa: BLE001 - not DICOM: this file's error
            raise InputError(f"{path}: {what}: not a NIfTI, NRRD or DICOM file ({type(e).__name__})") from None
        modality = str(getattr(ds, "Modality", ""))
        if modality == "SEG":
            return _finish(*_seg(path, label, what), None, path, what)
        if modality == "RTSTRUCT":
            return _finish(*_rtstruct(ds, path, label, what, ct_path), None, path, what)
        raise InputError(f"{path}: {what}: a DICOM {modality or 'file'} is not a mask (a SEG, an RTSTRUCT, or a "
                         "folder holding a series)")
    else:
        if isinstance(label, str):
            raise InputError(f"{path}: {what}.label: a NIfTI label map's label is an integer")
        data, affine = read_image(path, what)
    return _finish(data, affine, label, path, what)


def _finish(data, affine, label, path, what):
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: {what}: the mask has non-finite values")
    m = (np.rint(data) == int(label)) if isinstance(label, int) else data > 0.5
    if not m.any():
        raise InputError(f"{path}: {what}: the mask is empty" + (f" (no voxel of label {label})" if label is not None else ""))
    return m, affine


def read_mask(ref: MaskRef, what: str, grid, native: dict | None = None, ct_path: str | None = None,
              cache: dict | None = None) -> np.ndarray:
    """The mask on the grid ``grid`` = (path, (data, affine)), resampled by nearest neighbour when it lies on
    another. With ``native``, the mask on its own grid and its voxel volume [mL] are kept there by the mask's
    key, so that volumes are measured at its own resolution; with ``cache``, a mask read once is put on another
    grid without reading its file again."""
    if cache is not None and ref.key in cache:
        mask_native, aff = cache[ref.key]
    else:
        mask_native, aff = read_mask_image(ref, what, ct_path)
        if cache is not None:
            cache[ref.key] = (mask_native, aff)
    if native is not None:
        native[ref.key] = (mask_native, abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0)
    m = on_grid(grid[0], grid[1], ref.path, (mask_native, aff), what, order=0, fill=0.0) > 0.5
    if not m.any():
        raise InputError(f"{ref.path}: {what}: the mask does not overlap the SPECT's field ({grid[0]})")
    return m




def read_spect(path: str, what: str):
    """A SPECT (data, affine) whose counts are finite and non-negative."""
    img = read_image(path, what)
    if not np.all(np.isfinite(img[0])) or (img[0] < 0).any():
        raise InputError(f"{path}: {what}: counts must be finite and >= 0")
    return img


def read_planar(path: str, what: str) -> np.ndarray:
    import nibabel as nib

    if not os.path.isfile(path):
        raise InputError(f"{path}: {what}: no such image file")
    try:
        data = np.squeeze(np.asarray(nib.load(path).get_fdata(dtype=np.float64)))
    except Exception as e:  # noqa: BLE001 - an unreadable file is this file's error
        raise InputError(f"{path}: {what}: not a readable NIfTI image ({type(e).__name__}: {e})") from None
    if data.ndim != 2:
        raise InputError(f"{path}: {what}: expected a 2-D planar image, got shape {data.shape}")
    return data


