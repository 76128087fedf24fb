"""From images to a case: measurements on the tests' own phantoms (exact answers), bad images, and measure
then plan end to end."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import numpy as np
import pytest

import y90opt
from y90opt.cli import main
from y90opt.phantoms import PHANTOM_CASE, make_phantom

CASE = PHANTOM_CASE  # the case naming the files Phantom.write_nifti writes (its values left to measure)


@pytest.fixture
def phantom_case(tmp_path):
    ph = make_phantom(n=48, voxel_mm=4.0, lsf=0.07)
    ph.write_nifti(str(tmp_path))
    path = tmp_path / "case.toml"
    path.write_text(CASE, encoding="utf-8")
    return path, ph


def test_measurements_are_exact_on_the_phantom(phantom_case):
    path, ph = phantom_case
    m = y90opt.measure(path)["measurements"]
    t = ph.truth
    for key in ("liver", "perfused", "lungs"):
        assert m["volumes_ml"][key] == pytest.approx(t["volumes_ml"][key], rel=1e-12)  # exact to the voxel
    for name in ("T1", "T2"):
        assert m["volumes_ml"]["tumors"][name] == pytest.approx(t["volumes_ml"]["tumors"][name], rel=1e-12)
        assert m["tn_ratio"][name] == pytest.approx(t["tn_ratio"][name], rel=1e-6)  # float32 counts in the file
    assert m["shunt_fraction"] == pytest.approx(0.07, rel=1e-6)
    # Kao et al. 2014: lung mass from CT density, 1 + HU/1000 g/mL; the phantom's lungs are -750 HU
    assert m["lung_mass_kg"] == pytest.approx(t["lung_mass_kg"], rel=1e-9)
    assert m["hepatic_reserve"] == pytest.approx(1 - t["volumes_ml"]["perfused"] / t["volumes_ml"]["liver"], rel=1e-12)


def test_measure_then_plan_end_to_end(phantom_case, tmp_path):
    path, ph = phantom_case
    out = tmp_path / "measured.toml"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["measure", str(path), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "# measured:" in text and path.read_text(encoding="utf-8") == CASE  # the input untouched
    case = y90opt.load_case(out)
    assert case.perfused_volume_ml.nominal == pytest.approx(ph.truth["volumes_ml"]["perfused"], rel=1e-5)
    assert case.tumors[0].tn_ratio.nominal == pytest.approx(4.0, rel=1e-5)
    assert case.shunt_fraction.nominal == pytest.approx(0.07, rel=1e-5)
    s = y90opt.plan(case, samples=4000, optuna_trials=0).summary
    assert s["status"] in ("ok", "low-success", "infeasible")
    # measure refuses to write over its input
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["measure", str(path), "-o", str(path)]) == 2
    assert "never overwrites its input" in err.getvalue()


def test_a_value_the_user_gave_is_kept_and_a_disagreement_reported(phantom_case):
    path, ph = phantom_case
    text = CASE.replace("[lung]\n", "[lung]\nshunt_fraction = 0.20\n")
    path.write_text(text, encoding="utf-8")
    res = y90opt.measure(path)
    assert "shunt_fraction = 0.20" in res["text"]
    assert [d["field"] for d in res["disagreements"]] == ["lung.shunt_fraction"]


def test_json_keys(phantom_case):
    path, _ = phantom_case
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["measure", str(path), "--json"]) == 0
    d = json.loads(buf.getvalue())
    assert set(d["volumes_ml"]) >= {"liver", "perfused", "lungs", "tumors"}
    assert set(d["tn_ratio"]) == {"T1", "T2"} and "shunt_fraction" in d and "lung_mass_kg" in d


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_bad_images_exit_2_with_one_line_naming_the_file(phantom_case, tmp_path):
    import nibabel as nib

    path, ph = phantom_case
    folder = path.parent
    # a missing file
    (folder / "mask_lungs.nii.gz").unlink()
    code, err = _run(["measure", str(path)])
    assert code == 2 and "mask_lungs.nii.gz" in err and err.count("\n") == 1
    # an empty mask
    nib.save(nib.Nifti1Image(np.zeros_like(ph.masks["lungs"], dtype=np.uint8), ph.affine), str(folder / "mask_lungs.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "empty" in err
    # a mask on another grid, with no spatial transform to resample it by
    img = nib.Nifti1Image(ph.masks["lungs"][:-1].astype(np.uint8), None)
    img.header["sform_code"], img.header["qform_code"] = 0, 0
    nib.save(img, str(folder / "mask_lungs.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "not on the grid" in err and "spect.nii.gz" in err and "no spatial transform" in err
    nib.save(nib.Nifti1Image(ph.masks["lungs"].astype(np.uint8), ph.affine), str(folder / "mask_lungs.nii.gz"))
    # a tumour mask outside the perfused mask
    outside = np.zeros_like(ph.masks["liver"])
    outside[2:4, 2:4, 2:4] = True
    nib.save(nib.Nifti1Image(outside.astype(np.uint8), ph.affine), str(folder / "mask_tumors_T2.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "outside the perfused mask" in err
    nib.save(nib.Nifti1Image(ph.masks["tumors.T2"].astype(np.uint8), ph.affine), str(folder / "mask_tumors_T2.nii.gz"))
    # negative or NaN counts
    bad = ph.spect.astype(np.float32).copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, ph.affine), str(folder / "spect.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "spect.nii.gz" in err and "finite" in err
    # a 4-D image
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), ph.affine), str(folder / "spect.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "3-D" in err


def test_blurred_noisy_spect_biases_small_tumour_tn_downward():
    """A SPECT of 14 mm FWHM (99mTc SPECT resolution, 12-15 mm) with Poisson noise: the partial-volume effect
    lowers the measured T:N of a small tumour below its true value (reported, not corrected here)."""
    import tempfile

    ph = make_phantom(n=48, voxel_mm=4.0, lsf=0.07, fwhm_mm=14.0, noise_seed=3, counts_per_voxel=400.0)
    with tempfile.TemporaryDirectory() as d:
        ph.write_nifti(d)
        p = pathlib.Path(d) / "case.toml"
        p.write_text(CASE, encoding="utf-8")
        m = y90opt.measure(p)["measurements"]
    assert m["tn_ratio"]["T2"] < 0.8 * ph.truth["tn_ratio"]["T2"]
    assert m["tn_ratio"]["T1"] < ph.truth["tn_ratio"]["T1"]


def test_a_dicom_phantom_gives_the_numbers_of_its_nifti_twin(tmp_path):
    """The phantom written as DICOM series (pydicom) and as NIfTI of the same stored values: measure gives the
    same numbers from either."""
    ph = make_phantom(n=32, voxel_mm=5.0, tumors={"T1": (2.5, 4.0), "T2": (1.6, 2.5)}, lsf=0.07)
    paths = ph.write_dicom(str(tmp_path / "img"))
    dicom_case = CASE.replace(".nii.gz", "")
    (tmp_path / "img" / "dicom.toml").write_text(dicom_case, encoding="utf-8")
    (tmp_path / "img" / "nifti.toml").write_text(CASE, encoding="utf-8")
    assert (tmp_path / "img" / "ct").is_dir() and paths["spect"].endswith("spect")
    a = y90opt.measure(tmp_path / "img" / "dicom.toml")["measurements"]
    b = y90opt.measure(tmp_path / "img" / "nifti.toml")["measurements"]
    for k in ("liver", "perfused", "lungs"):
        assert a["volumes_ml"][k] == pytest.approx(b["volumes_ml"][k], rel=1e-12)
    assert a["volumes_ml"]["tumors"] == pytest.approx(b["volumes_ml"]["tumors"], rel=1e-12)
    for k in ("shunt_fraction", "lung_mass_kg", "hepatic_reserve"):
        assert a[k] == pytest.approx(b[k], rel=1e-12)
    assert a["tn_ratio"] == pytest.approx(b["tn_ratio"], rel=1e-12)
    assert a["volumes_ml"]["perfused"] == pytest.approx(ph.truth["volumes_ml"]["perfused"], rel=1e-12)
    assert a["shunt_fraction"] == pytest.approx(0.07, rel=1e-3)  # 16-bit quantisation of the counts


def test_a_mask_on_another_grid_is_resampled(phantom_case):
    """The lung and perfused masks cropped to their bounding boxes (another shape and origin, the same voxels in
    space) and the CT at half the resolution: resampled through the affines onto the SPECT's grid, the masks
    give the same voxels (nearest neighbour is exact on a grid shifted by whole voxels)."""
    import nibabel as nib

    path, ph = phantom_case
    folder = path.parent
    before = y90opt.measure(path)["measurements"]
    for name in ("lungs", "perfused"):
        m = ph.masks[name]
        lo = np.argwhere(m).min(axis=0) - 1
        hi = np.argwhere(m).max(axis=0) + 2
        crop = m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        aff = ph.affine.copy()
        aff[:3, 3] = ph.affine[:3, :3] @ lo
        nib.save(nib.Nifti1Image(crop.astype(np.uint8), aff), str(folder / f"mask_{name}.nii.gz"))
    after = y90opt.measure(path)["measurements"]
    for k in ("lungs", "perfused", "liver"):
        assert after["volumes_ml"][k] == before["volumes_ml"][k]
    assert after["shunt_fraction"] == before["shunt_fraction"] and after["tn_ratio"] == before["tn_ratio"]


def test_the_dicom_affine_equals_the_nifti_twins(tmp_path):
    """Anisotropic voxels: the DICOM series' affine (LPS to RAS) equals the NIfTI twin's."""
    from y90opt.image_io import read_image

    ph = make_phantom(n=24, voxel_mm=4.0)
    ph.voxel_mm = (3.0, 2.0, 4.0)
    paths = ph.write_dicom(str(tmp_path))
    data, affine = read_image(paths["ct"], "ct")
    import nibabel as nib

    twin = nib.load(paths["ct_nifti"])
    np.testing.assert_allclose(affine, twin.affine, atol=1e-9)
    np.testing.assert_allclose(data, twin.get_fdata(), atol=1e-9)


@pytest.mark.parametrize("images", ['spect = 3', 'spect = "spect.nii.gz"\n[images.masks]\ntumors = "x"'])
def test_a_malformed_images_table_is_one_line(tmp_path, images):
    p = tmp_path / "c.toml"
    p.write_text(CASE.split("[images]")[0] + "[images]\n" + images + "\n", encoding="utf-8")
    code, err = _run(["measure", str(p)])
    assert code == 2 and err.count("\n") == 1 and "images" in err


def test_planar_lsf_from_anterior_and_posterior_views(tmp_path):
    """Planar views without attenuation (the phantom's counts projected): the geometric-mean LSF is exact; with
    SPECT lungs as well the SPECT/CT value is used and the planar one reported beside it."""
    ph = make_phantom(n=40, voxel_mm=4.0, lsf=0.09)
    ph.write_nifti(str(tmp_path))
    ph.write_planar(str(tmp_path))
    planar = ('planar_anterior = "planar_anterior.nii.gz"\nplanar_posterior = "planar_posterior.nii.gz"\n')
    rois = 'planar_lungs = "planar_lungs.nii.gz"\nplanar_liver = "planar_liver.nii.gz"\n'
    text = CASE.replace('spect = "spect.nii.gz"\n', 'spect = "spect.nii.gz"\n' + planar)
    text = text.replace('lungs = "mask_lungs.nii.gz"\n', rois)  # no SPECT lung mask: the planar LSF is the one
    p = tmp_path / "planar.toml"
    p.write_text(text, encoding="utf-8")
    res = y90opt.measure(p)
    assert res["measurements"]["shunt_fraction"] == pytest.approx(0.09, rel=1e-6)
    assert "planar geometric mean" in res["text"]
    both = text.replace(rois, rois + 'lungs = "mask_lungs.nii.gz"\n')
    p.write_text(both, encoding="utf-8")
    m = y90opt.measure(p)["measurements"]
    assert m["shunt_fraction_planar"] == pytest.approx(0.09, rel=1e-6)
    assert m["shunt_fraction"] == pytest.approx(0.09, rel=1e-6)  # SPECT and planar agree without blur
    p.write_text(text.replace(rois, 'planar_lungs = "planar_lungs.nii.gz"\n'), encoding="utf-8")
    code, err = _run(["measure", str(p)])
    assert code == 2 and "planar_liver" in err


@pytest.fixture
def two_injection_case(tmp_path):
    from y90opt.phantoms import TWO_INJECTION_CASE, make_two_injection_phantom

    ph = make_two_injection_phantom(n=48, voxel_mm=4.0, lsf=0.07, tn_segment=6.0, lsf_segment=0.03)
    ph.write_nifti(str(tmp_path))
    path = tmp_path / "case.toml"
    path.write_text(TWO_INJECTION_CASE, encoding="utf-8")
    return path, ph


def test_several_injections_each_territory_its_own_volume_tn_and_shunt(two_injection_case):
    """One territory mask per injection and the segment's own MAA SPECT: each injection's volume exact to the
    voxel; T1's T:N on the segmental study (its own injection), and the lobe's own T:N of T1 on the lobar study;
    T2's on the lobar; the segment's shunt on its study, the lobar study's as the case's shunt."""
    path, ph = two_injection_case
    r = y90opt.measure(path)
    m, t = r["measurements"], ph.truth
    for name in ("segment", "lobe"):
        assert m["injections"][name]["perfused_volume_ml"] == pytest.approx(
            t["injections"][name]["perfused_volume_ml"], rel=1e-12)
    assert m["tn_ratio"]["T1"] == pytest.approx(6.0, rel=1e-6)
    assert m["tn_ratio"]["T2"] == pytest.approx(2.5, rel=1e-6)
    assert m["injections"]["lobe"]["tn_ratios"]["T1"] == pytest.approx(4.0, rel=1e-6)
    assert "T1" not in m["injections"]["segment"]["tn_ratios"]  # the segment's T:N is T1's own
    assert m["injections"]["segment"]["shunt_fraction"] == pytest.approx(0.03, rel=1e-6)
    assert m["shunt_fraction"] == pytest.approx(0.07, rel=1e-6)
    union = ph.masks["injections.lobe"]  # the segment lies inside the lobe
    assert m["hepatic_reserve"] == pytest.approx(1 - union.sum() / ph.masks["liver"].sum(), rel=1e-12)
    case = y90opt.parse_case(r["text"], str(path))
    seg, lobe = case.injection("segment"), case.injection("lobe")
    assert seg.perfused_volume_ml.nominal == pytest.approx(t["injections"]["segment"]["perfused_volume_ml"], rel=1e-5)
    assert dict(lobe.tn_ratios)["T1"].nominal == pytest.approx(4.0, rel=1e-5)
    assert r["text"].count("# measured:") >= 8  # every measured value says how it was obtained


def test_several_injections_measure_then_plan(two_injection_case, tmp_path):
    path, _ = two_injection_case
    out = tmp_path / "measured.toml"
    assert _run(["measure", str(path), "-o", str(out)])[0] == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main(["plan", str(out), "--samples", "2000", "--optuna-trials", "0", "--json"]) == 0
    s = json.loads(buf.getvalue())
    assert s["status"] in ("ok", "low-success", "infeasible")
    shown = s["recommended"] if s["recommended"] is not None else s["least_risky"]
    assert set(shown["injections"]) == {"segment", "lobe"}


def test_several_injections_bad_masks_are_one_line(two_injection_case):
    import nibabel as nib

    path, ph = two_injection_case
    folder, text = path.parent, path.read_text(encoding="utf-8")
    # a territory partly outside the territory it lies within
    seg = ph.masks["injections.segment"].copy()
    seg[0:2, 0:2, 0:2] = True
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), ph.affine), str(folder / "mask_injections_segment.nii.gz"))
    code, err = _run(["measure", str(path)])
    assert code == 2 and "mask_injections_segment.nii.gz" in err and "outside that of 'lobe'" in err
    assert err.count("\n") == 1
    # a tumour outside its injection's territory (T2 lies in the lobe, not in the segment)
    nib.save(nib.Nifti1Image(ph.masks["injections.segment"].astype(np.uint8), ph.affine),
             str(folder / "mask_injections_segment.nii.gz"))
    path.write_text(text.replace('name = "T2"\ninjection = "lobe"', 'name = "T2"\ninjection = "segment"'), encoding="utf-8")
    code, err = _run(["measure", str(path)])
    assert code == 2 and "mask_tumors_T2.nii.gz" in err and "territory of injection 'segment'" in err
    # a mask for an injection the case does not have; one perfused mask beside [[injections]]
    for bad, words in ((text.replace("lobe = \"mask_injections_lobe", "lobar = \"mask_injections_lobe"),
                        "images.masks.injections.lobar"),
                       (text.replace("lungs = \"mask_lungs.nii.gz\"", "lungs = \"mask_lungs.nii.gz\"\nperfused = \"m.nii\""),
                        "images.masks.perfused")):
        path.write_text(bad, encoding="utf-8")
        code, err = _run(["measure", str(path)])
        assert code == 2 and words in err and err.count("\n") == 1


def test_lung_base_margin_keeps_a_uniform_lung_exact_and_removes_the_spill(tmp_path):
    """The lung-base band: on the unblurred phantom (uniform lung concentration) the kept lung's concentration
    scaled to the whole mask gives the exact LSF; on a 12 mm FWHM SPECT whose lung bases sit on the liver's dome
    the band removes the liver counts spilled into the lung base (the LSF falls toward that of the same phantom
    with a gap between lungs and liver)."""
    def lsf(ph, margin, folder):
        ph.write_nifti(str(folder))
        p = folder / "case.toml"
        p.write_text(CASE.replace('spect = "spect.nii.gz"', f'spect = "spect.nii.gz"\nlung_base_margin_mm = {margin}'),
                     encoding="utf-8")
        return y90opt.measure(p)["measurements"]["shunt_fraction"]

    exact = make_phantom(n=48, voxel_mm=4.0, lsf=0.07, lung_height=0.68)
    assert lsf(exact, 20, tmp_path) == pytest.approx(0.07, rel=1e-6)
    kw = dict(n=48, voxel_mm=4.0, lsf=0.07, fwhm_mm=12.0, counts_per_voxel=400.0)
    on_dome = make_phantom(lung_height=0.68, **kw)
    clear = make_phantom(lung_height=0.75, **kw)
    with_spill, banded, reference = lsf(on_dome, 0, tmp_path), lsf(on_dome, 10, tmp_path), lsf(clear, 0, tmp_path)
    assert with_spill > banded  # the spill raised the LSF; the band takes it out
    assert abs(banded - reference) < 0.5 * (with_spill - reference)
    bad = CASE.replace('spect = "spect.nii.gz"', 'spect = "spect.nii.gz"\nlung_base_margin_mm = -5')
    (tmp_path / "bad.toml").write_text(bad, encoding="utf-8")
    code, err = _run(["measure", str(tmp_path / "bad.toml")])
    assert code == 2 and "images.lung_base_margin_mm" in err


def _mask_case(masks: dict[str, str], tumours: dict[str, str]) -> str:
    """The phantom's DICOM case with its [images.masks] replaced by the given entries (TOML values)."""
    head = CASE.replace(".nii.gz", "").split("[images.masks]")[0]
    tail = CASE.split("[[tumors]]", 1)[1]
    lines = ["[images.masks]"] + [f"{k} = {v}" for k, v in masks.items()] + ["", "[images.masks.tumors]"] + \
        [f"{k} = {v}" for k, v in tumours.items()]
    return head + "\n".join(lines) + "\n\n[[tumors]]" + tail


@pytest.fixture
def dicom_phantom(tmp_path):
    ph = make_phantom(n=32, voxel_mm=5.0, tumors={"T1": (2.5, 4.0), "T2": (1.6, 2.5)}, lsf=0.07)
    folder = tmp_path / "img"
    paths = ph.write_dicom(str(folder))
    ph.write_seg(str(folder / "seg.dcm"), paths["ct"])
    ph.write_rtstruct(str(folder / "rs.dcm"), paths["ct"])
    ph.write_nrrd(str(folder))
    (folder / "dicom.toml").write_text(CASE.replace(".nii.gz", ""), encoding="utf-8")
    return folder, ph, paths


@pytest.mark.parametrize("kind", ["seg", "rtstruct", "nrrd"])
def test_seg_rtstruct_and_nrrd_masks_give_the_numbers_of_the_series_masks(dicom_phantom, kind):
    """The same masks as a DICOM SEG (highdicom), an RTSTRUCT (contours traced on the voxels' edges, rasterised on
    the CT's grid) and a 3D Slicer segmentation in NRRD (tumours as a label map with integer labels): measure
    gives exactly the numbers of the DICOM mask series."""
    folder, ph, _ = dicom_phantom
    file = {"seg": "seg.dcm", "rtstruct": "rs.dcm", "nrrd": "segmentation.seg.nrrd"}[kind]
    masks = {k: f'{{ file = "{file}", label = "{k}" }}' for k in ("liver", "perfused", "lungs")}
    tumours = {t: f'{{ file = "{file}", label = "tumors.{t}" }}' for t in ("T1", "T2")}
    if kind == "nrrd":
        tumours = {"T1": '{ file = "tumors.nrrd", label = 1 }', "T2": '{ file = "tumors.nrrd", label = 2 }'}
    (folder / f"{kind}.toml").write_text(_mask_case(masks, tumours), encoding="utf-8")
    a = y90opt.measure(folder / f"{kind}.toml")["measurements"]
    b = y90opt.measure(folder / "dicom.toml")["measurements"]
    for k in ("liver", "perfused", "lungs"):
        assert a["volumes_ml"][k] == pytest.approx(b["volumes_ml"][k], rel=1e-12)
        assert a["volumes_ml"][k] == pytest.approx(ph.truth["volumes_ml"][k], rel=1e-12)
    assert a["volumes_ml"]["tumors"] == pytest.approx(b["volumes_ml"]["tumors"], rel=1e-12)
    for k in ("shunt_fraction", "lung_mass_kg", "hepatic_reserve"):
        assert a[k] == pytest.approx(b[k], rel=1e-12)
    assert a["tn_ratio"] == pytest.approx(b["tn_ratio"], rel=1e-12)


def test_an_rtstruct_inner_contour_is_a_hole(dicom_phantom):
    """A contour inside another in the same slice removes its voxels (even-odd rule)."""
    import pydicom

    from y90opt.image_io import MaskRef, read_mask_image

    folder, ph, paths = dicom_phantom
    ds = pydicom.dcmread(folder / "rs.dcm")
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "liver")
    item = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)
    k = int(np.argmax(ph.masks["liver"].sum(axis=(0, 1))))  # the liver's widest slice
    ci, cj = (int(v) for v in np.argwhere(ph.masks["liver"][:, :, k]).mean(axis=0))
    hole = pydicom.Dataset()
    hole.ContourGeometricType, hole.NumberOfContourPoints = "CLOSED_PLANAR", 4
    corners = [(ci - 1.5, cj - 1.5), (ci + 1.5, cj - 1.5), (ci + 1.5, cj + 1.5), (ci - 1.5, cj + 1.5)]
    hole.ContourData = [v for a, b in corners for v in (a * 5.0, b * 5.0, k * 5.0)]
    item.ContourSequence.append(hole)
    ds.save_as(folder / "rs_hole.dcm")
    m, _ = read_mask_image(MaskRef(str(folder / "rs_hole.dcm"), "liver"), "x", ct_path=paths["ct"])
    expected = ph.masks["liver"].copy()
    expected[ci - 1:ci + 2, cj - 1:cj + 2, k] = False
    assert expected.sum() == ph.masks["liver"].sum() - 9  # the hole lies inside the liver's slice
    np.testing.assert_array_equal(m, expected)  # the CT series' voxel (i, j, k) is the phantom's


def test_bad_mask_files_are_one_line(dicom_phantom):
    folder, _, _ = dicom_phantom
    cases = [
        ({"liver": '{ file = "seg.dcm", label = "spleen" }'}, "no segment labelled 'spleen'"),
        ({"liver": '{ file = "seg.dcm" }'}, "segments: name one"),
        ({"liver": '{ file = "rs.dcm", label = "spleen" }'}, "ROIs:"),
        ({"liver": '{ file = "segmentation.seg.nrrd", label = "spleen" }'}, "no segment named 'spleen'"),
        ({"liver": '{ file = "tumors.nrrd", label = 7 }'}, "no voxel of label 7"),
        ({"liver": '"ct/slice0000.dcm"'}, "is not a mask"),
        ({"liver": '{ file = "seg.dcm", label = true }'}, "images.masks.liver.label"),
        ({"liver": '{ path = "seg.dcm" }'}, "images.masks.liver"),
    ]
    base = {"perfused": '"mask_perfused"', "lungs": '"mask_lungs"'}
    tumours = {"T1": '"mask_tumors_T1"', "T2": '"mask_tumors_T2"'}
    for masks, words in cases:
        (folder / "bad.toml").write_text(_mask_case({**masks, **base}, tumours), encoding="utf-8")
        code, err = _run(["measure", str(folder / "bad.toml")])
        assert code == 2 and words in err and err.count("\n") == 1, (masks, err)
    # an RTSTRUCT needs the CT it was drawn on
    text = _mask_case({"liver": '{ file = "rs.dcm", label = "liver" }', **base}, tumours).replace('ct = "ct"\n', "")
    (folder / "bad.toml").write_text(text, encoding="utf-8")
    code, err = _run(["measure", str(folder / "bad.toml")])
    assert code == 2 and "give images.ct" in err


@pytest.mark.parametrize("radius_mm,fwhm_mm", [(4.0, 12.0), (10.0, 12.0), (6.0, 14.0), (20.0, 12.0)])
def test_sphere_recovery_closed_form_equals_a_numerical_convolution(radius_mm, fwhm_mm):
    """The recovery coefficient's closed form against scipy's Gaussian filter of a sphere voxelised at 0.5 mm."""
    from scipy.ndimage import gaussian_filter

    from y90opt.imaging import sphere_recovery

    h = 0.5
    n = int(2 * (radius_mm + 3 * fwhm_mm) / h) | 1
    idx = (np.indices((n, n, n)) - n // 2) * h
    sphere = (idx ** 2).sum(axis=0) <= radius_mm ** 2
    blurred = gaussian_filter(sphere.astype(float), sigma=fwhm_mm / h / (2 * np.sqrt(2 * np.log(2))), mode="constant",
                              truncate=5.0)
    assert sphere_recovery(float(sphere.sum()) * h ** 3 / 1000.0, fwhm_mm) == pytest.approx(blurred[sphere].mean(),
                                                                                             abs=2e-4)


def test_partial_volume_correction_recovers_the_small_tumours_tn(tmp_path):
    """A 12 mm FWHM SPECT (no noise) reads the 7.2 and 2.2 mL tumours' T:N 28-32 % low; with spect_fwhm_mm the
    sphere recovery coefficient and the interior normal tissue bring them within 2 % of the truth."""
    ph = make_phantom(n=64, voxel_mm=4.0, lsf=0.07, counts_per_voxel=400.0, fwhm_mm=12.0)
    ph.write_nifti(str(tmp_path))
    plain, corrected = tmp_path / "plain.toml", tmp_path / "pvc.toml"
    plain.write_text(CASE, encoding="utf-8")
    corrected.write_text(CASE.replace('spect = "spect.nii.gz"', 'spect = "spect.nii.gz"\nspect_fwhm_mm = 12'),
                         encoding="utf-8")
    a = y90opt.measure(plain)
    b = y90opt.measure(corrected)
    for name, true in ph.truth["tn_ratio"].items():
        assert a["measurements"]["tn_ratio"][name] < 0.75 * true
        assert b["measurements"]["tn_ratio"][name] == pytest.approx(true, rel=0.02)
    assert "corrected for partial volume" in b["text"] and "recovery coefficient" in b["text"]
    for bad in ("0", "-3", '"12"'):
        (tmp_path / "bad.toml").write_text(CASE.replace('spect = "spect.nii.gz"',
                                                        f'spect = "spect.nii.gz"\nspect_fwhm_mm = {bad}'), encoding="utf-8")
        code, err = _run(["measure", str(tmp_path / "bad.toml")])
        assert code == 2 and "images.spect_fwhm_mm" in err


def test_nrrd_and_rtstruct_edge_cases_are_refused_or_read_as_documented(dicom_phantom):
    """A Slicer segmentation without a label is the union of its layers; an integer label on several layers, a
    segment in a layer the file lacks, a non-integer label value, an RTSTRUCT drawn on another frame of
    reference and a contour that is not x, y, z triplets are refused with one line naming the file."""
    import nrrd
    import pydicom

    from y90opt.errors import InputError
    from y90opt.image_io import MaskRef, read_mask_image

    folder, ph, paths = dicom_phantom
    seg = str(folder / "segmentation.seg.nrrd")
    union, _ = read_mask_image(MaskRef(seg), "x")
    assert union.sum() == np.logical_or.reduce(list(ph.masks.values())).sum()
    with pytest.raises(InputError, match="names its segment"):
        read_mask_image(MaskRef(seg, 1), "x")
    data, hdr = nrrd.read(seg)
    for key, value, words in (("Segment0_Layer", "9", "layers"), ("Segment0_LabelValue", "one", "not an integer")):
        bad = dict(hdr, **{key: value})
        nrrd.write(str(folder / "bad.seg.nrrd"), data, bad)
        with pytest.raises(InputError, match=words):
            read_mask_image(MaskRef(str(folder / "bad.seg.nrrd"), "liver"), "x")
    ds = pydicom.dcmread(folder / "rs.dcm")
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(folder / "rs_other.dcm")
    with pytest.raises(InputError, match="frame of reference"):
        read_mask_image(MaskRef(str(folder / "rs_other.dcm"), ds.StructureSetROISequence[0].ROIName), "x",
                        ct_path=paths["ct"])
    ds = pydicom.dcmread(folder / "rs.dcm")
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [1.0, 2.0]
    ds.save_as(folder / "rs_bad.dcm")
    with pytest.raises(InputError, match="triplets|fewer than 3"):
        read_mask_image(MaskRef(str(folder / "rs_bad.dcm"), ds.StructureSetROISequence[0].ROIName), "x",
                        ct_path=paths["ct"])
