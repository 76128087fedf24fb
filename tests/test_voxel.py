"""Voxel dosimetry by local deposition on the tests' phantom: the VOI means equal the partition model for the
same counts (exactly, with a uniform density), energy conservation, Dx/Vx by hand, the dose map written."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from test_imaging import CASE

import y90opt
from y90opt.cli import main
from y90opt.phantoms import make_phantom
from y90opt.voxel_dosimetry import voi_metrics


@pytest.fixture
def measured(tmp_path):
    ph = make_phantom(n=40, voxel_mm=4.0, lsf=0.06)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(CASE, encoding="utf-8")
    res = y90opt.measure(tmp_path / "case.toml")
    out = tmp_path / "measured.toml"
    out.write_text(res["text"], encoding="utf-8")
    return out, ph


def _without_ct(path):
    text = path.read_text(encoding="utf-8").replace('ct = "ct.nii.gz"\n', "")
    path.write_text(text, encoding="utf-8")
    return path


def test_ldm_means_equal_the_partition_model(measured):
    path, ph = measured
    _without_ct(path)  # a uniform density: the convention's
    v = y90opt.voxel(path)
    d = y90opt.dose(y90opt.load_case(path)).summary["dose_gy"]
    assert v["vois"]["normal_perfused"]["mean_gy"] == pytest.approx(d["normal_perfused"], rel=1e-6)
    for name in ("T1", "T2"):
        assert v["vois"]["tumors"][name]["mean_gy"] == pytest.approx(d["tumors"][name], rel=1e-6)
    assert v["vois"]["perfused"]["mean_gy"] == pytest.approx(d["perfused_mean"], rel=1e-6)


def test_energy_is_conserved(measured):
    """Local deposition keeps every decay's energy: Σ dose × mass = K × (liver + lung activity)."""
    path, ph = measured
    v = y90opt.voxel(path)
    mass = np.clip(1 + ph.ct / 1000.0, 0, None) * v["voxel_ml"] / 1000.0  # kg, from the CT
    energy = float((v["dose"] * mass).sum())
    assert energy == pytest.approx(50.0 * (v["activity_gbq"]["liver"] + v["activity_gbq"]["lung"]), rel=1e-5)


def test_dx_and_vx_by_hand():
    dose = np.arange(1.0, 11.0)  # ten voxels, 1 to 10 Gy
    m = voi_metrics(dose, np.ones(10, bool), (5.0,))
    assert m["mean_gy"] == 5.5
    assert m["d50_gy"] == 6.0  # at least half the voxels (6..10) receive 6 Gy
    assert m["d90_gy"] == 2.0 and m["d70_gy"] == 4.0 and m["d95_gy"] == 1.0
    assert m["v5"] == 0.6


def test_voxel_cli_writes_the_dose_map(measured, tmp_path):
    import nibabel as nib

    path, ph = measured
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["voxel", str(path), "--json", "--out", str(tmp_path / "v")]) == 0
    d = json.loads(buf.getvalue())
    for voi in ("liver", "perfused", "lungs"):
        assert set(d["vois"][voi]) >= {"mean_gy", "d50_gy", "d70_gy", "d90_gy"}
    assert set(d["vois"]["tumors"]) == {"T1", "T2"}
    img = nib.load(str(tmp_path / "v" / "dose.nii.gz"))
    assert img.shape == ph.spect.shape and (tmp_path / "v" / "dvh.png").exists()
    page = (tmp_path / "v" / "voxel.html").read_text(encoding="utf-8")  # self-contained: the DVH embedded
    assert "data:image/png;base64," in page and "tumors.T1" in page and "local deposition" in page
    # the RT Dose: the same doses (to its 32-bit scaling) at the same place in patient space (LPS = RAS with x, y negated)
    import pydicom

    rt = pydicom.dcmread(str(tmp_path / "v" / "dose_rtdose.dcm"))
    assert rt.Modality == "RTDOSE" and rt.DoseUnits == "GY"
    frames = rt.pixel_array.astype(np.float64) * float(rt.DoseGridScaling)  # (k, j, i)
    dose = np.asarray(img.get_fdata())
    np.testing.assert_allclose(np.transpose(frames, (2, 1, 0)), dose, atol=float(rt.DoseGridScaling) * 0.6 + 1e-4 * dose.max())
    origin_ras = img.affine[:3, 3]
    assert list(map(float, rt.ImagePositionPatient)) == pytest.approx([-origin_ras[0], -origin_ras[1], origin_ras[2]])
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["voxel", str(path), "--method", "kernel", "--out", str(tmp_path / "k")]) == 0
    assert "kernel" in pydicom.dcmread(str(tmp_path / "k" / "dose_rtdose.dcm")).SeriesDescription


def test_voxel_with_a_kernel_fitted_to_a_published_voxel_s_table(measured):
    """`voxel --method kernel --kernel TABLE` with the tests' copy of the 3 mm voxel S table of Lanconelli et al.
    (2012) on the phantom's 4 mm voxels: the kernel says where it comes from, and its source voxel's S is the same
    database's 4 mm value, 0.858 mGy/(MBq s) (file 90Y4mmsoft.txt), within 2 % (the case's tissue density,
    1.03 g/mL, differs from the table's 1.04)."""
    import pathlib

    path, _ = measured
    table = pathlib.Path(__file__).parent / "data" / "lanconelli2012_90Y_3mm_soft.txt"
    k = y90opt.voxel(path, method="kernel", kernel=table)["kernel"]
    assert "fitted to the voxel S values" in k["source"] and k["voxel_mm"] == [4.0, 4.0, 4.0]
    # the case's tissue density (1.03 g/mL here) rescales the kernel's ranges: back to 1.04 for the table's S
    s = 1e6 * 0.9367 * 1.602176634e-13 * k["self_voxel_share"] / (0.4 ** 3 * 1.04 / 1000.0) * 1000.0
    assert s == pytest.approx(0.858, rel=2e-2)


def test_a_plan_with_a_tumour_d70_target(tmp_path):
    """A blurred phantom (14 mm FWHM): voxel writes each tumour's D70/mean ratio into the case; a research
    target on the tumours' D70 then plans, and its probability equals that of the mean-dose target at the
    threshold divided by the ratio (the same samples: D70 = ratio × mean, linear in the activity)."""
    import tomllib

    import tomli_w

    ph = make_phantom(n=40, voxel_mm=4.0, lsf=0.06, fwhm_mm=14.0, noise_seed=1, counts_per_voxel=400.0)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(CASE, encoding="utf-8")
    (tmp_path / "measured.toml").write_text(y90opt.measure(tmp_path / "case.toml")["text"], encoding="utf-8")
    y90opt.voxel(tmp_path / "measured.toml", case_out=tmp_path / "d70.toml")
    doc = tomllib.loads((tmp_path / "d70.toml").read_text(encoding="utf-8"))
    ratio = {t["name"]: t["d70_ratio"] for t in doc["tumors"]}
    assert all(0 < r < 1 for r in ratio.values())  # blur: the tumour's cold edge lowers D70 below the mean
    doc["rules"] = {"targets": [{"id": "tumor-d70", "quantity": "tumors_d70", "min_gy": 150.0, "level": "secondary",
                                 "source": "research: a D70 target for the test"}]}
    case = y90opt.parse_case(tomli_w.dumps(doc), "d70.toml")
    sim = y90opt.simulate(case, samples=8000, seed=2).summary
    by = {r["label"]: r for r in sim["rules"]}
    assert "tumor-d70:T1" in by and "tumors_d70" in sim["dose_gy"]
    # the same samples judged on the mean dose at 150 / ratio
    doc2 = dict(doc)
    doc2["rules"] = {"targets": [{"id": "tumor-mean", "quantity": "tumors", "min_gy": 150.0 / ratio["T1"],
                                  "level": "secondary", "source": "the same threshold on the mean"}]}
    sim2 = y90opt.simulate(y90opt.parse_case(tomli_w.dumps(doc2), "m.toml"), samples=8000, seed=2).summary
    p2 = {r["label"]: r for r in sim2["rules"]}["tumor-mean:T1"]["probability"]
    assert abs(by["tumor-d70:T1"]["probability"] - p2) <= 2 / 8000
    s = y90opt.plan(case, samples=4000, optuna_trials=0).summary
    assert any(r["id"] == "tumor-d70" for r in s["rules"])
    d = y90opt.dose(case).summary
    row = next(r for r in d["rules"] if r["label"] == "tumor-d70:T1")
    assert row["value"] == pytest.approx(d["dose_gy"]["tumors"]["T1"] * ratio["T1"], rel=1e-9)


@pytest.mark.parametrize("diag", [(4.0, 4.0, 4.0), (-4.0, 4.0, 4.0), (4.0, 4.0, -4.0), (3.0, -2.0, -5.0)])
def test_rtdose_places_every_voxel_where_the_nifti_does(tmp_path, diag):
    """On flipped and anisotropic grids: each voxel of the RT Dose sits at the NIfTI voxel's position (LPS =
    RAS with x and y negated), frames along the normal of the planes (GridFrameOffsetVector)."""
    import pydicom

    from y90opt.voxel_dosimetry import write_rtdose

    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 100, (4, 5, 6))
    affine = np.diag([*diag, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    rt = pydicom.dcmread(write_rtdose(dose, affine, str(tmp_path / "d.dcm")))
    iop = np.asarray(rt.ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dr, dc = (float(x) for x in rt.PixelSpacing)
    ipp = np.asarray(rt.ImagePositionPatient, float)
    frames = rt.pixel_array.astype(float) * float(rt.DoseGridScaling)  # (frame, row, column)
    for (i, j, k) in [(0, 0, 0), (3, 1, 2), (2, 4, 5)]:
        ras = affine @ [i, j, k, 1.0]
        lps = np.array([-ras[0], -ras[1], ras[2]])
        pos = ipp + i * dc * row + j * dr * col + float(rt.GridFrameOffsetVector[k]) * normal
        assert pos == pytest.approx(lps, abs=1e-6)
        assert frames[k, j, i] == pytest.approx(dose[i, j, k], abs=float(rt.DoseGridScaling))


def test_a_ct_that_does_not_cover_the_masks_is_refused(measured, tmp_path):
    import nibabel as nib

    path, ph = measured
    ct = ph.ct[: ph.ct.shape[0] // 2]  # the CT stops halfway: the perfused half has no CT
    nib.save(nib.Nifti1Image(ct.astype(np.int16), ph.affine), str(path.parent / "ct.nii.gz"))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["voxel", str(path)]) == 2
    assert "ct.nii.gz" in err.getvalue() and "does not cover" in err.getvalue()


def test_dvh_and_dx_equal_their_definitions_on_ties_and_edges():
    """The DVH's O(n) binning and the partial-sort Dx against their definitions (share of voxels >= each edge;
    the ceil(x n / 100)-th hottest voxel), with doses exactly on the edges and ties."""
    from y90opt.voxel_dosimetry import dvh, voi_metrics

    rng = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng.integers(1, 2000))
        d = rng.random(n) * 100
        if trial % 3 == 0:
            d = np.round(d)
        edges = np.linspace(0, 100, int(rng.integers(2, 50)))
        d[: n // 10] = edges[rng.integers(0, len(edges), n // 10)]
        dose, mask = d.reshape(-1, 1, 1), np.ones((n, 1, 1), bool)
        assert np.array_equal(dvh(dose, mask, edges), np.array([(d >= e).mean() for e in edges]))
        hottest = np.sort(d)[::-1]
        m = voi_metrics(dose, mask, (50.0,))
        for x in (50, 70, 90, 95):
            assert m[f"d{x}_gy"] == hottest[max(int(np.ceil(x * n / 100)) - 1, 0)]
        assert m["v50"] == np.mean(d >= 50.0)


def test_several_injections_one_map_each_added_equal_the_compartment_model(tmp_path):
    """A modified lobectomy on the two-injection phantom (no CT: a uniform density): each injection's activity
    spread over its territory by its own MAA study, the maps added; the local-deposition means of the tumours,
    of the segment's territory and of the whole liver equal the compartment model of `dose` for the measured
    case (each injection's partition over its territory, the doses added)."""
    from y90opt.phantoms import TWO_INJECTION_CASE, make_two_injection_phantom

    ph = make_two_injection_phantom(n=48, voxel_mm=4.0, lsf=0.07)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(TWO_INJECTION_CASE.replace('ct = "ct.nii.gz"\n', ""), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["measure", str(tmp_path / "case.toml"), "-o", str(tmp_path / "m.toml")]) == 0
    text = (tmp_path / "m.toml").read_text(encoding="utf-8").replace("[lung]\n", "[lung]\nmass_kg = 1.0\n", 1)
    (tmp_path / "m.toml").write_text(text, encoding="utf-8")
    out = {}
    for cmd in ("voxel", "dose"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([cmd, str(tmp_path / "m.toml"), "--json"]) == 0
        out[cmd] = json.loads(buf.getvalue())
    v, d = out["voxel"]["vois"], out["dose"]["dose_gy"]
    for t in ("T1", "T2"):
        assert v["tumors"][t]["mean_gy"] == pytest.approx(d["tumors"][t], rel=2e-6)
    assert v["injections"]["segment"]["mean_gy"] == pytest.approx(d["regions"]["segment"]["mean"], rel=2e-6)
    assert v["liver"]["mean_gy"] == pytest.approx(d["whole_liver"], rel=2e-6)
    assert set(out["voxel"]["injections"]) == {"segment", "lobe"}


@pytest.mark.parametrize("method", ["ldm", "kernel"])
def test_a_d70_ratio_gives_the_voxel_d70_at_any_vial(measured, method):
    """One injection, the tests' phantom with its CT's densities: the ratio `--case-out` writes is the D70 over the
    compartment mean of the tumour's counts, so the planner's D70 (ratio × its mean) is the D70 `voxel` reads
    from the dose map, by local deposition or the kernel, at any vial (the dose is linear in it)."""
    import tomlkit

    path, _ = measured
    out = path.parent / f"d70-{method}.toml"
    y90opt.voxel(path, method=method, case_out=out)
    doc = tomlkit.parse(out.read_text(encoding="utf-8"))
    for vial in (doc["plan"]["vial_gbq"], 2.5 * doc["plan"]["vial_gbq"]):
        doc["plan"]["vial_gbq"] = vial
        out.write_text(tomlkit.dumps(doc), encoding="utf-8")
        v = y90opt.voxel(out, method=method)["vois"]["tumors"]
        d = y90opt.dose(y90opt.load_case(out)).summary["dose_gy"]["tumors_d70"]
        for name in ("T1", "T2"):
            assert d[name] == pytest.approx(v[name]["d70_gy"], rel=2e-5), (vial, name)


def _vials(text: str, segment: float, lobe: float) -> str:
    import tomlkit

    doc = tomlkit.parse(text)
    for j in doc["injections"]:
        j["vial_gbq"] = {"segment": segment, "lobe": lobe}[str(j["name"])]
    return tomlkit.dumps(doc)


def _blurred_two_injection_case(tmp_path):
    """The two-injection phantom with its two MAA studies blurred differently (14 and 8 mm FWHM), measured."""
    from scipy.ndimage import gaussian_filter

    from y90opt.phantoms import TWO_INJECTION_CASE, make_two_injection_phantom

    ph = make_two_injection_phantom(n=48, voxel_mm=4.0, lsf=0.07)
    sigma = 1.0 / (4.0 * 2.0 * np.sqrt(2.0 * np.log(2.0)))  # per mm of FWHM, 4 mm voxels
    ph.spect[...] = gaussian_filter(ph.spect, 14.0 * sigma)
    ph.spects["segment"][...] = gaussian_filter(ph.spects["segment"], 8.0 * sigma)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(TWO_INJECTION_CASE.replace('ct = "ct.nii.gz"\n', ""), encoding="utf-8")
    text = y90opt.measure(tmp_path / "case.toml")["text"].replace("[lung]\n", "[lung]\nmass_kg = 1.0\n", 1)
    (tmp_path / "m.toml").write_text(text, encoding="utf-8")
    return tmp_path / "m.toml"


def test_voxel_level_uncertainty_of_several_injections(tmp_path):
    """`--uncertainty` with two injections: each replica draws both MAA studies' counts again, the mismatch per
    study and tumour, the tumour masks' margins; the same seed gives the same numbers; `--case-out` writes each
    tumour's ratio with its CV (T1's curve beside it), which the Monte Carlo then draws: with a D70 target at
    T1's nominal D70, P is near one half, not the 0 or 1 of an exact ratio."""
    import tomllib

    import tomli_w

    path = _blurred_two_injection_case(tmp_path)
    a = y90opt.voxel(path, uncertainty=10, seed=2, case_out=tmp_path / "d70.toml")["uncertainty"]
    assert a == y90opt.voxel(path, uncertainty=10, seed=2)["uncertainty"]
    assert a != y90opt.voxel(path, uncertainty=10, seed=3)["uncertainty"]
    m = a["metrics"]
    assert {"injections.segment.mean_gy", "tumors.T1.d70_ratio", "tumors.T2.d70_ratio"} <= set(m)
    assert 0 < m["tumors.T1.d70_ratio"]["sd"] < 0.2 and m["tumors.T1.mean_gy"]["sd"] > 0
    doc = tomllib.loads((tmp_path / "d70.toml").read_text(encoding="utf-8"))
    t1 = next(t for t in doc["tumors"] if t["name"] == "T1")
    assert set(t1["d70_ratio"]) == {"value", "cv"} and t1["d70_ratio"]["cv"] > 0 and "d70_ratio_by_share" in t1
    d70 = y90opt.dose(y90opt.parse_case(tomli_w.dumps(doc), "d70.toml")).summary["dose_gy"]["tumors_d70"]["T1"]
    doc["rules"] = {"targets": [{"id": "tumor-d70", "quantity": "tumors_d70", "min_gy": d70, "level": "secondary",
                                 "source": "research: a D70 target for the test"}]}
    sim = y90opt.simulate(y90opt.parse_case(tomli_w.dumps(doc), "d70.toml"), samples=4000, seed=1).summary
    p = {r["label"]: r["probability"] for r in sim["rules"]}["tumor-d70:T1"]
    assert 0.2 < p < 0.8


def test_voxel_case_out_refuses_a_tumour_it_cannot_measure_and_an_unwritable_path(tmp_path):
    """A tumour assigned to an injection whose territory's mask misses it gets no D70 ratio: `--case-out`
    says so in one line (exit 2) instead of writing a case without it; so does a path that cannot be written."""
    import tomlkit

    path = _blurred_two_injection_case(tmp_path)
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    next(t for t in doc["tumors"] if t["name"] == "T2")["injection"] = "segment"  # T2 lies outside the segment
    bad = tmp_path / "t2-in-segment.toml"
    bad.write_text(tomlkit.dumps(doc), encoding="utf-8")
    for case, out, words in ((bad, tmp_path / "x.toml", "tumour T2: no D70 ratio: its mask receives no activity "
                              "from injection segment"),
                             (path, tmp_path / "missing-dir" / "x.toml", "cannot be written")):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["voxel", str(case), "--case-out", str(out)]) == 2
        line = err.getvalue().strip()
        assert words in line and "\n" not in line and not out.exists()


@pytest.mark.parametrize("method", ["ldm", "kernel"])
def test_a_d70_of_several_injections_equals_the_voxel_d70_at_any_vials(tmp_path, method):
    """A modified lobectomy on the two-injection phantom with its two MAA studies blurred differently (14 and
    8 mm FWHM), so that T1's D70 over its mean depends on how much of its dose each vial gives. `voxel
    --case-out` writes T1's curve (both vials reach it) and T2's ratio (the lobe's only); `dose` at other
    vials then gives, from the compartment model, the D70 that `voxel` reads from the summed dose map at
    those vials: equal for T1 (to the curve's piecewise-linear interpolation) and, by local deposition, for
    T2; with the kernel, T2's (which the segment's dose reaches across the territory's edge, outside the
    compartment model) is a lower bound. A research D70 target then plans jointly."""
    import tomllib

    path = _blurred_two_injection_case(tmp_path)
    y90opt.voxel(path, method=method, case_out=tmp_path / "d70.toml")
    d70_text = (tmp_path / "d70.toml").read_text(encoding="utf-8")
    tumors = {t["name"]: t for t in tomllib.loads(d70_text)["tumors"]}
    curve = tumors["T1"]["d70_ratio_by_share"]
    assert len(curve["share"]) == 41 and "d70_ratio_by_share" not in tumors["T2"]
    assert max(curve["ratio"]) - min(curve["ratio"]) > 0.02  # the two studies' shapes differ in T1
    for segment, lobe in ((1.0, 8.0), (6.0, 2.0), (3.0, 0.2)):
        (tmp_path / "x.toml").write_text(_vials(d70_text, segment, lobe), encoding="utf-8")
        v = y90opt.voxel(tmp_path / "x.toml", method=method)["vois"]["tumors"]
        d = y90opt.dose(y90opt.load_case(tmp_path / "x.toml")).summary["dose_gy"]["tumors_d70"]
        assert d["T1"] == pytest.approx(v["T1"]["d70_gy"], rel=5e-4), (segment, lobe)
        if method == "ldm":
            assert d["T2"] == pytest.approx(v["T2"]["d70_gy"], rel=1e-5)
        else:
            assert 0.85 * v["T2"]["d70_gy"] < d["T2"] <= v["T2"]["d70_gy"] * (1 + 1e-6)
    if method == "kernel":
        return
    # a primary research target on the D70s: the joint plan's P(success) at its choice is simulate's there,
    # from the same samples (the curve applied by the joint evaluator and by the model at decided vials)
    import tomli_w

    doc = tomllib.loads(d70_text)
    doc["rules"] = {"targets": [{"id": "tumor-d70", "quantity": "tumors_d70", "min_gy": 200.0,
                                 "source": "research: a D70 target for the test"}]}
    s = y90opt.plan(y90opt.parse_case(tomli_w.dumps(doc), "d70.toml"), samples=2000, optuna_trials=5).summary
    assert {"tumor-d70:T1", "tumor-d70:T2"} <= {r["label"] for r in s["rules"]}
    rec = s["recommended"]
    assert rec is not None and 0 < rec["p_success"] < 1
    for j in doc["injections"]:
        j["vial_gbq"] = rec["injections"][j["name"]]["vial_gbq"]
    doc["sessions"][0]["treatment"] = rec["sessions"]["S1"]["treatment"]
    sim = y90opt.simulate(y90opt.parse_case(tomli_w.dumps(doc), "at-choice.toml"), samples=2000).summary
    assert sim["p_success"] == pytest.approx(rec["p_success"], abs=1e-12)
    assert s["doses_at_choice"]["dose_gy"]["tumors_d70"]["T1"] == pytest.approx(
        sim["dose_gy"]["tumors_d70"]["T1"]["nominal"], rel=1e-5)


def test_voxel_level_uncertainty_feeds_the_monte_carlo(tmp_path):
    """`voxel --uncertainty N`: replicas from counts, mask margins and the MAA-to-Y-90 mismatch, the same seed
    giving the same numbers; `--case-out` then writes each tumour's d70_ratio with its CV, which the Monte Carlo
    draws: with every other input exact, P(D70 >= threshold) equals the ratio's own distribution at threshold /
    mean dose (closed form), within four standard errors."""
    import tomllib

    import tomli_w

    ph = make_phantom(n=40, voxel_mm=4.0, lsf=0.06, fwhm_mm=14.0, noise_seed=1, counts_per_voxel=400.0)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(CASE, encoding="utf-8")
    (tmp_path / "measured.toml").write_text(y90opt.measure(tmp_path / "case.toml")["text"], encoding="utf-8")
    a = y90opt.voxel(tmp_path / "measured.toml", uncertainty=12, seed=4, case_out=tmp_path / "d70.toml")["uncertainty"]
    b = y90opt.voxel(tmp_path / "measured.toml", uncertainty=12, seed=4)["uncertainty"]
    c = y90opt.voxel(tmp_path / "measured.toml", uncertainty=12, seed=5)["uncertainty"]
    assert a == b and a != c and a["replicas"] == 12
    spread = a["metrics"]["tumors.T1.d70_ratio"]
    assert 0 < spread["sd"] < 0.2 and spread["p05"] <= spread["mean"] <= spread["p95"]
    doc = tomllib.loads((tmp_path / "d70.toml").read_text(encoding="utf-8"))
    t1 = next(t for t in doc["tumors"] if t["name"] == "T1")
    assert set(t1["d70_ratio"]) == {"value", "cv"} and t1["d70_ratio"]["cv"] > 0
    for t in doc["tumors"]:  # every other input exact
        t["volume_ml"], t["tn_ratio"] = t["volume_ml"]["value"], t["tn_ratio"]["value"]
    doc["liver"] = {k: v["value"] for k, v in doc["liver"].items()}
    doc["lung"] = {"shunt_fraction": doc["lung"]["shunt_fraction"]["mean"], "mass_kg": doc["lung"]["mass_kg"]["value"]}
    doc["delivery"] = {"residual_fraction": 0.01, "activity_factor": 1.0}
    case0 = y90opt.parse_case(tomli_w.dumps(doc), "d70.toml")
    mean_t1 = y90opt.dose(case0).summary["dose_gy"]["tumors"]["T1"]
    threshold = mean_t1 * t1["d70_ratio"]["value"]
    doc["rules"] = {"targets": [{"id": "tumor-d70", "quantity": "tumors_d70", "min_gy": threshold,
                                 "level": "secondary", "source": "research: a D70 target for the test"}]}
    case = y90opt.parse_case(tomli_w.dumps(doc), "d70.toml")
    assert list(case.uncertain_inputs) == ["tumors.T1.d70_ratio", "tumors.T2.d70_ratio"]
    n = 20000
    sim = y90opt.simulate(case, samples=n, seed=3).summary
    p = {r["label"]: r for r in sim["rules"]}["tumor-d70:T1"]["probability"]
    exact = float(case.tumors[0].d70_ratio.scipy().sf(threshold / mean_t1))
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / n)


def test_voxel_refuses_a_bad_seed_and_an_injection_spect_that_misses_its_territory(tmp_path):
    import nibabel as nib

    from y90opt.phantoms import TWO_INJECTION_CASE, make_two_injection_phantom

    ph = make_two_injection_phantom(n=48, voxel_mm=4.0, lsf=0.07)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(TWO_INJECTION_CASE, encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["measure", str(tmp_path / "case.toml"), "-o", str(tmp_path / "m.toml")]) == 0
    # the segment's own SPECT cropped so that it covers only part of the territory (its affine keeps it in place)
    crop = ph.spects["segment"][:, :, : int(np.argwhere(ph.masks["injections.segment"])[:, 2].mean())]
    nib.save(nib.Nifti1Image(crop.astype(np.float32), ph.affine), str(tmp_path / "spect_segment.nii.gz"))
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        assert main(["voxel", str(tmp_path / "m.toml")]) == 2
    assert "does not cover the territory" in err.getvalue() and err.getvalue().count("\n") == 1
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        assert main(["voxel", str(tmp_path / "m.toml"), "--uncertainty", "2", "--seed", "-1"]) == 2
    assert "--seed" in err.getvalue()


def test_voi_summaries_from_a_voi_index_equal_those_from_the_masks():
    from y90opt.voxel_dosimetry import voi_index, voi_summaries

    rng = np.random.default_rng(0)
    dose = (rng.random((30, 20, 10)) * 100).astype(np.float32)
    masks = {"a": rng.random(dose.shape) > 0.5, "b": rng.random(dose.shape) > 0.9}
    edges = np.linspace(0, 100, 50)
    by_mask, curves = voi_summaries(dose, masks, (50.0,), edges)
    by_index, curves2 = voi_summaries(dose, voi_index(masks), (50.0,), edges)
    assert by_mask == by_index and all(np.array_equal(curves[k], curves2[k]) for k in curves)


def test_an_injection_spect_whose_field_ends_at_the_territory_edge_is_accepted(tmp_path):
    """The segment's own SPECT cropped to the territory's slices exactly (its field ends at the territory's last
    voxels, half a voxel past their centres), and shifted by far less than a voxel: it covers the territory."""
    import nibabel as nib

    from y90opt.phantoms import TWO_INJECTION_CASE, make_two_injection_phantom

    ph = make_two_injection_phantom(n=48, voxel_mm=4.0, lsf=0.07)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(TWO_INJECTION_CASE, encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["measure", str(tmp_path / "case.toml"), "-o", str(tmp_path / "m.toml")]) == 0
    k = np.argwhere(ph.masks["injections.segment"])[:, 2]
    for shift in (0.0, 1e-4, -0.4):
        aff = ph.affine.copy()
        aff[2, 3] = k.min() * ph.voxel_mm[2] + shift  # the crop starts at the territory's first slice
        crop = ph.spects["segment"][:, :, k.min():k.max() + 1]
        nib.save(nib.Nifti1Image(crop.astype(np.float32), aff), str(tmp_path / "spect_segment.nii.gz"))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["voxel", str(tmp_path / "m.toml")]) == 0, (shift, err.getvalue())


def test_a_reference_without_a_spatial_transform_is_never_resampled_onto(tmp_path):
    """A SPECT whose NIfTI has neither sform nor qform (its name in capitals, so no suffix test decides it) and a
    mask on another grid: refused, naming the SPECT."""
    import nibabel as nib

    from y90opt.image_io import on_grid

    ref = np.zeros((8, 8, 8))
    img = nib.Nifti1Image(ref.astype(np.float32), None)  # no affine: no sform, no qform
    img.header["sform_code"], img.header["qform_code"] = 0, 0
    nib.save(img, str(tmp_path / "SPECT.NII.GZ"))
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "mask.nii.gz"))
    with pytest.raises(y90opt.InputError, match="SPECT.NII.GZ.*no spatial transform"):
        on_grid(str(tmp_path / "SPECT.NII.GZ"), (ref, np.eye(4)), str(tmp_path / "mask.nii.gz"),
                (np.zeros((6, 6, 6)), np.diag([2.0, 2.0, 2.0, 1.0])), "images.masks.liver", order=0, fill=0.0)
