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
    code = None
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["voxel", str(path), "--method", "kernel"])
    assert code == 2 and "not available yet" in err.getvalue()
