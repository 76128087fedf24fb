"""The plan report: figures exist, every image the page links exists, the numbers on the page are the ones in
plan.nc, the page is rebuilt byte for byte from the saved results, and user text is escaped.

Fast: small sample counts and no Optuna cross-check. Every example case in configs/examples is planned; an
empty folder is a failure, not a skip.
"""

from __future__ import annotations

import html.parser
import json
import math
import os
import pathlib
import textwrap

import numpy as np
import pytest

from y90opt import cli
from y90opt.plan_summary import summarize_plan
from y90opt.results import read_netcdf

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The single-injection examples (the report of several injections: tests/test_treatment.py).
EXAMPLES = sorted(p for p in (ROOT / "configs" / "examples").glob("*.toml") if "[[injections]]" not in p.read_text())
SAMPLES = "4000"


class _Page(html.parser.HTMLParser):
    """Collects image sources and the numbers marked with ``data-key`` (their value, scale and shown text)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.keys: dict[str, dict] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("img", "br", "meta"):
            return
        key = a.get("data-key")
        if key is not None:
            assert key not in self.keys, f"duplicate data-key {key!r}"
            self.keys[key] = {"value": a.get("data-value"), "scale": a.get("data-scale"), "text": ""}
        self._open.append((tag, key))

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, key in self._open:
            if key is not None:
                self.keys[key]["text"] += data


def _parse(path) -> _Page:
    p = _Page()
    p.feed(pathlib.Path(path).read_text(encoding="utf-8"))
    return p


def _plan(case: str, out: pathlib.Path, *extra: str) -> None:
    rc = cli.main(["plan", case, "--samples", SAMPLES, "--optuna-trials", "0", "--out", str(out), *extra])
    assert rc == 0


def _check_shown(entry: dict, expected: float, key: str) -> None:
    """The stored value equals the Dataset's exactly, and the text shown is that value rounded."""
    value = float(entry["value"])
    assert value == pytest.approx(float(expected), rel=1e-12, abs=0.0), key
    text = entry["text"].strip().replace(",", "")
    scale = float(entry["scale"]) if entry["scale"] else 1.0
    shown = float(text)
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert abs(shown - value / scale) <= 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12, (key, text, value)


def test_examples_present():
    assert EXAMPLES, f"no example cases in {ROOT / 'configs' / 'examples'}"


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def planned(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param.stem)
    _plan(str(request.param), out)
    return out


def test_figures_written(planned):
    for name in ("report_heatmap.png", "report_doses.png", "report_curves.png"):
        png = planned / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_is_self_contained(planned):
    """Every figure is inside report.html (a PNG data URI): the page alone, mailed or attached to a chart,
    keeps its plots. Nothing else is fetched (no stylesheet, script or image by reference)."""
    import base64

    text = (planned / "report.html").read_text(encoding="utf-8")
    page = _parse(planned / "report.html")
    assert len(page.images) >= 3
    for src in page.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64", src[:40]
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in text and "<script src" not in text and "url(" not in text


def test_numbers_equal_the_dataset(planned):
    ds = read_netcdf(planned / "plan.nc")
    s = summarize_plan(ds)
    k = _parse(planned / "report.html").keys
    a = ds.attrs
    i, j = int(a["recommended_index_vial"]), int(a["recommended_index_time"])
    rec = s["recommended"] if s["feasible"] else s["least_risky"]
    assert rec is not None

    _check_shown(k["recommended-vial-gbq"], ds["vial"].values[i], "vial")
    if s["feasible"]:
        assert float(k["recommended-vial-gbq"]["value"]) == s["recommended"]["vial_gbq"]
        assert float(k["recommended-hours"]["value"]) == s["recommended"]["hours_after_calibration"]
    _check_shown(k["recommended-hours"], ds["hours_after_calibration"].values[j], "hours")
    _check_shown(k["recommended-vial-mci"], rec["vial_mci"], "mCi")
    _check_shown(k["recommended-vial-at-treatment-gbq"], ds["vial_at_treatment"].values[i, j], "at treatment")
    _check_shown(k["recommended-spheres"], rec["spheres"], "spheres")
    _check_shown(k["recommended-activity-per-sphere-bq"], rec["activity_per_sphere_bq"], "Bq per sphere")
    _check_shown(k["recommended-p-success"], ds["p_success"].values[i, j], "P(targets)")
    _check_shown(k["recommended-p-joint"], ds["p_joint"].values[i, j], "P(joint)")
    for n, lab in enumerate(ds["limit"].values):
        _check_shown(k[f"recommended-p-limit-{lab}"], ds["p_limit"].values[i, j, n], f"P({lab})")
    assert k["recommended-treatment-label"]["text"] == str(ds["time_label"].values[j])
    assert k["recommended-treatment-local"]["value"] == str(ds["time_local"].values[j])

    quantities = [str(q) for q in ds["quantity"].values]
    doses = [key for key in k if key.startswith("dose-")]
    assert doses
    for key in doses:
        q, pct = key[len("dose-"):].rsplit("-", 1)
        _check_shown(k[key], ds[f"dose_{pct}"].values[i, j, quantities.index(q)], key)
    for n, lab in enumerate(ds["rule"].values):
        if f"p-rule-{lab}" in k:
            _check_shown(k[f"p-rule-{lab}"], ds["p_rule"].values[i, j, n], lab)
    # every ranked candidate in the tables
    cands = [key for key in k if key.startswith(("alt-", "cand-")) and key.endswith("-p-success")]
    assert len(cands) >= min(ds["p_success"].size, 6)
    for key in cands:
        _, a_, b_, *_ = key.split("-")
        _check_shown(k[key], ds["p_success"].values[int(a_), int(b_)], key)
        _check_shown(k[key.replace("-p-success", "-vial")], ds["vial"].values[int(a_)], key)

    conv = json.loads(a["conventions"])
    _check_shown(k["conv-k"], conv["dose_constant_gy_kg_per_gbq"], "K")
    _check_shown(k["conv-half-life"], conv["half_life_h"], "half-life")
    _check_shown(k["conv-density"], conv["tissue_density_g_per_ml"], "density")
    _check_shown(k["samples"], a["sample_count"], "samples")
    _check_shown(k["seed"], a["seed"], "seed")
    assert int(float(k["samples"]["value"])) == int(SAMPLES)
    assert k["case-sha256"]["text"] == a["case_sha256"]
    assert k["version"]["text"] == a["y90opt_version"]
    assert k["case-name"]["text"] == a["case_name"]


def test_page_states_the_essentials(planned):
    text = (planned / "report.html").read_text(encoding="utf-8")
    ds = read_netcdf(planned / "plan.nc")
    for needle in ("Research software", "before any clinical use", "Gy·kg/GBq", "half-life", "Optuna cross-check",
                   "Provenance", "Advisories", "why they lost"):
        assert needle in text, needle
    for source in {str(x) for x in ds["rule_source"].values}:
        assert _escaped(source) in text, source
    for adv in summarize_plan(ds).get("advisories", []):  # the planner's advisories at the recommendation
        assert _escaped(adv["message"]) in text, adv
    assert "<script" not in text.lower()


def test_report_command_rebuilds_the_same_page(planned, tmp_path):
    other = tmp_path / "other"
    assert cli.main(["report", str(planned / "plan.nc"), "--out", str(other)]) == 0
    assert (other / "report.html").read_bytes() == (planned / "report.html").read_bytes()
    for png in sorted(planned.glob("report_*.png")):
        assert (other / png.name).read_bytes() == png.read_bytes(), png.name


def _escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


# --- cases built here ---------------------------------------------------------------------------------------

INFEASIBLE = textwrap.dedent(
    """\
    name = "high shunt <script>alert(1)</script> & co"
    scenario = "multifocal-unilobar"

    [liver]
    perfused_volume_ml = { value = 1100, cv = 0.05 }

    [[tumors]]
    name = "T1"
    volume_ml = { value = 180, cv = 0.05 }
    tn_ratio = { value = 3.2, cv = 0.2 }

    [lung]
    shunt_fraction = { value = 0.25, cv = 0.2 }
    prior_dose_gy = 30

    [vials]
    calibration = "2026-12-06T12:00:00-05:00"
    activities_gbq = [10, 15, 20]

    [plan]
    vial_gbq = 10
    treatment = "2026-12-09T12:00:00-05:00"
    hours_after_calibration = [72, 96]
    """
)


@pytest.fixture(scope="module")
def infeasible(tmp_path_factory):
    d = tmp_path_factory.mktemp("infeasible")
    case = d / "case.toml"
    case.write_text(INFEASIBLE)
    _plan(str(case), d / "out")
    return d / "out"


def test_infeasible_plan_shows_the_binding_limit(infeasible):
    ds = read_netcdf(infeasible / "plan.nc")
    s = summarize_plan(ds)
    assert not s["feasible"]
    page = _parse(infeasible / "report.html")
    assert page.keys["binding-limit"]["text"] == s["binding_limit"]
    assert s["relax"] in page.keys["relax"]["text"]
    assert "least risky" in (infeasible / "report.html").read_text(encoding="utf-8")
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)


def test_user_text_is_escaped(infeasible):
    text = (infeasible / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "high shunt &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text


def test_report_from_netcdf_defaults_to_the_results_folder(infeasible, tmp_path):
    import shutil

    from y90opt.report import report_from_netcdf

    shutil.copy(infeasible / "plan.nc", tmp_path / "plan.nc")
    path = report_from_netcdf(str(tmp_path / "plan.nc"))
    assert path == os.path.join(str(tmp_path), "report.html")
    assert pathlib.Path(path).read_bytes() == (infeasible / "report.html").read_bytes()


def test_report_rejects_other_files(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing.nc")]) == 2
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf")
    assert cli.main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2


def test_sensitivity_adds_tornado_figures(infeasible, tmp_path):
    from y90opt.case import parse_case
    from y90opt.report import write_report
    from y90opt.sensitivity_analysis import sensitivity_case

    ds = read_netcdf(infeasible / "plan.nc")
    case = parse_case(INFEASIBLE, "case.toml")
    sens = sensitivity_case(case, n=256, seed=1, bootstrap=0)
    path = write_report(ds, tmp_path, sensitivity=sens)
    page = _parse(path)
    assert {"report_tornado_tumors_T1.png", "report_tornado_normal_perfused.png", "report_tornado_lung.png"} <= \
        {p.name for p in tmp_path.glob("report_tornado_*.png")}
    import base64

    embedded = {base64.b64decode(src.partition(",")[2]) for src in page.images}
    for png in tmp_path.glob("report_tornado_*.png"):  # each figure is in the page itself
        assert png.read_bytes() in embedded and png.stat().st_size > 1000
    assert "Sensitivity" in pathlib.Path(path).read_text(encoding="utf-8")


def test_heatmap_marks_infeasible_cells(infeasible):
    """Every cell is infeasible here: the page's candidate tables flag each one, and the figures still draw."""
    ds = read_netcdf(infeasible / "plan.nc")
    assert not np.any(ds["feasible"].values)
    text = (infeasible / "report.html").read_text(encoding="utf-8")
    assert text.count("ruled out by") >= ds["p_success"].size - 1
    assert math.isfinite(float(ds["p_success"].max()))


def test_every_model_quantity_has_a_readers_name():
    # figures, tables and the sensitivity Dataset name quantities from one table; a new model output must join it
    from y90opt import dosimetry, engine
    from y90opt.results import QUANTITY_NAMES, quantity_description, quantity_label

    for q in (*dosimetry.DOSE_QUANTITIES, *engine.ACTIVITY_QUANTITIES):
        assert q in QUANTITY_NAMES
        assert quantity_label(q) != q and quantity_description(q) != q
    assert quantity_label("tumors.T1") == "tumour T1"
    assert quantity_description("tumors.T1") == "dose to tumour T1"


def test_report_command_rebuilds_a_page_with_sensitivity(tmp_path, capsys):
    # plan --sensitivity-samples writes sensitivity.nc beside plan.nc; `report` picks it up and rebuilds the same
    # page, tornados included; --sensitivity names another file; a file that is not one is exit 2, one line
    case = tmp_path / "case.toml"
    case.write_text(INFEASIBLE)
    out = tmp_path / "out"
    _plan(str(case), out, "--sensitivity-samples", "256")
    assert list(out.glob("report_tornado_*.png"))
    again = tmp_path / "again"
    capsys.readouterr()
    assert cli.main(["report", str(out / "plan.nc"), "--out", str(again)]) == 0
    assert "sensitivity from" in capsys.readouterr().out
    assert (again / "report.html").read_bytes() == (out / "report.html").read_bytes()
    for png in sorted(out.glob("report_*.png")):
        assert (again / png.name).read_bytes() == png.read_bytes(), png.name
    # the same Dataset named explicitly, from elsewhere
    moved = tmp_path / "sens-copy.nc"
    moved.write_bytes((out / "sensitivity.nc").read_bytes())
    (out / "sensitivity.nc").unlink()
    plain = tmp_path / "plain"
    assert cli.main(["report", str(out / "plan.nc"), "--out", str(plain)]) == 0
    assert "report_tornado_" not in (plain / "report.html").read_text(encoding="utf-8")
    named = tmp_path / "named"
    assert cli.main(["report", str(out / "plan.nc"), "--out", str(named), "--sensitivity", str(moved)]) == 0
    assert (named / "report.html").read_bytes() == (out / "report.html").read_bytes()
    capsys.readouterr()
    for bad in (tmp_path / "missing.nc", out / "plan.nc"):  # absent; a plan, not a sensitivity Dataset
        assert cli.main(["report", str(out / "plan.nc"), "--out", str(named), "--sensitivity", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "Traceback" not in err and err.count("\n") == 1


def test_report_leaves_out_a_sensitivity_of_another_decision(tmp_path, capsys):
    # a sensitivity.nc left beside plan.nc by an earlier plan (another decision) is not drawn into the report;
    # a named file lacking what the report reads is exit 2, one line
    from y90opt.results import write_netcdf

    case = tmp_path / "case.toml"
    case.write_text(INFEASIBLE)
    out = tmp_path / "out"
    _plan(str(case), out, "--sensitivity-samples", "256")
    sens = read_netcdf(out / "sensitivity.nc")
    stale = sens.copy()
    stale.attrs["vial_gbq"] = float(sens.attrs["vial_gbq"]) + 5.0
    (out / "sensitivity.nc").unlink()
    write_netcdf(stale, out / "sensitivity.nc")
    capsys.readouterr()
    assert cli.main(["report", str(out / "plan.nc"), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "left out of the report" in captured.err and "another case or decision" in captured.err
    assert "sensitivity from" not in captured.out
    assert "report_tornado_" not in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    broken = tmp_path / "broken.nc"
    write_netcdf(sens.drop_vars(["oat_nominal"]), broken)
    assert cli.main(["report", str(out / "plan.nc"), "--out", str(tmp_path / "r"), "--sensitivity", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "oat_nominal" in err and err.count("\n") == 1 and "Traceback" not in err
