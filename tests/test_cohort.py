"""Cohorts: each row equals `y90opt plan` of that patient's case; 1 worker, 2 local workers and a Dask
LocalCluster give identical tables; bad rows are reported and the rest run; an interrupted run resumes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib

import pytest

import y90opt
from y90opt.cli import main
from y90opt.cohorts import read_patients

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE = str(ROOT / "configs" / "examples" / "multifocal-unilobar.toml")
TABLE = """patient_id,liver.perfused_volume_ml,tumors.T1.tn_ratio,tumors.T1.tn_ratio.cv,lung.shunt_fraction
P1,1100,3.0,0.3,0.05
P2,950,2.2,,0.08
P3,1200,4.1,0.4,
"""
SAMPLES = 3000


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def table(tmp_path):
    p = tmp_path / "patients.csv"
    p.write_text(TABLE)
    return str(p)


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_each_row_equals_the_plan_of_its_case(table, tmp_path):
    res = y90opt.cohort(TEMPLATE, table, tmp_path / "out", samples=SAMPLES, seed=3, optuna_trials=0,
                        write_cases=tmp_path / "cases")
    assert [r["patient_id"] for r in res.rows] == ["P1", "P2", "P3"]
    for row in res.rows:
        case_file = tmp_path / "cases" / f"{row['patient_id']}.toml"
        single = y90opt.plan(str(case_file), samples=SAMPLES, seed=3, optuna_trials=0).summary
        assert row["status"] == single["status"]
        if single["feasible"]:
            rec = single["recommended"]
            assert (row["vial_gbq"], row["hours_after_calibration"], row["p_success"]) == \
                (rec["vial_gbq"], rec["hours_after_calibration"], rec["p_success"])
    # the override replaced the measured values and kept the forms
    import tomllib

    p2 = tomllib.loads((tmp_path / "cases" / "P2.toml").read_text())
    template = tomllib.loads(pathlib.Path(TEMPLATE).read_text())
    assert p2["liver"]["perfused_volume_ml"] == {**template["liver"]["perfused_volume_ml"], "value": 950.0}
    t1 = next(t for t in p2["tumors"] if t["name"] == "T1")
    assert t1["tn_ratio"] == {"value": 2.2, "cv": template["tumors"][0]["tn_ratio"]["cv"]}  # empty .cv: kept
    assert p2["lung"]["shunt_fraction"]["mean"] == 0.08 and p2["lung"]["shunt_fraction"]["sd"] == \
        template["lung"]["shunt_fraction"]["sd"]
    ds = res.dataset
    assert list(ds["patient"].values) == ["P1", "P2", "P3"] and ds.attrs["command"] == "cohort"
    assert (tmp_path / "out" / "cohort.nc").is_file()
    # the cohort page: one embedded figure of the distributions, a row per patient with the plan's numbers
    html = pathlib.Path(res.report).read_text(encoding="utf-8")
    assert res.report == str(tmp_path / "out" / "cohort.html")
    assert html.count("data:image/png;base64,") == 1
    for row in res.rows:
        assert f"<td>{row['patient_id']}</td>" in html or row["patient_id"] in html
        if row["p_success"] is not None:
            assert f"{row['p_success']:.3f}" in html


def test_one_worker_two_workers_and_dask_give_identical_tables(table, tmp_path):
    pytest.importorskip("dask.distributed")
    outs = {}
    for name, kw in {"one": {"workers": 1}, "two": {"workers": 2},
                     "dask": {"executor": "dask", "workers": 2}}.items():
        y90opt.cohort(TEMPLATE, table, tmp_path / name, samples=SAMPLES, seed=1, optuna_trials=4, **kw)
        outs[name] = (tmp_path / name / "cohort.csv").read_bytes()
    assert outs["one"] == outs["two"] == outs["dask"]


def test_bad_rows_are_reported_and_the_rest_run(tmp_path):
    p = tmp_path / "patients.csv"
    p.write_text(
        "patient_id,liver.perfused_volume_ml,tumors.T1.tn_ratio,tumors.T1.tn_ratio.cv,lung.shunt_fraction,lung.mass_kg.sd\n"
        "P1,1100,3.0,0.3,0.05,\nP2,950,2.2,,0.08,\nP3,1200,4.1,0.4,,\n"
        "B1,abc,3,,0.05,\n"      # row 5: not a number
        "B2,1000,3,,0.05,0.1\n"  # row 6: an SD for a quantity the template gives as a plain number
        "B3,1000,3,,2.5,\n"      # row 7: a shunt written in percent
    )
    code, out, err = run_cli(["cohort", TEMPLATE, str(p), "--out", str(tmp_path / "o"), "--samples", str(SAMPLES),
                              "--optuna-trials", "0"])
    assert code == 0, err
    rows = {r["patient_id"]: r for r in _rows(tmp_path / "o" / "cohort.csv")}
    assert rows["B1"]["status"] == "not-run" and "row 5: liver.perfused_volume_ml: not a number" in rows["B1"]["reason"]
    assert rows["B2"]["status"] == "not-run" and "row 6: lung.mass_kg.sd" in rows["B2"]["reason"]
    assert rows["B3"]["status"] == "not-run" and "lung.shunt_fraction" in rows["B3"]["reason"]
    assert {rows[k]["status"] for k in ("P1", "P2", "P3")} <= {"ok", "low-success", "infeasible"}
    assert err.count("\n") == 3 and "row 5" in err and "Traceback" not in err  # one line per bad row


def test_a_column_for_a_quantity_the_template_lacks(tmp_path):
    p = tmp_path / "patients.csv"
    p.write_text("patient_id,tumors.T9.volume_ml\nX,10\n")
    _, patients = read_patients(TEMPLATE, str(p))
    assert patients[0].text is None and "tumors.T9.volume_ml: the template has no quantity" in patients[0].error
    p.write_text("colour,x\n1,2\n")
    code, _, err = run_cli(["cohort", TEMPLATE, str(p), "--out", str(tmp_path / "o")])
    assert code == 2 and "patient_id" in err and err.count("\n") == 1


def test_an_interrupted_run_resumes_without_redoing_finished_patients(table, tmp_path):
    out = tmp_path / "out"
    first = y90opt.cohort(TEMPLATE, table, out, samples=SAMPLES, seed=2, optuna_trials=0)
    before = (out / "cohort.csv").read_bytes()
    stamps = {p: os.stat(out / "patients" / f"{p}.json").st_mtime_ns for p in ("P1", "P3")}
    (out / "patients" / "P2.json").unlink()  # P2 never finished
    (out / "cohort.csv").unlink()
    again = y90opt.cohort(TEMPLATE, table, out, samples=SAMPLES, seed=2, optuna_trials=0)
    assert again.summary["resumed"] == 2 and again.summary["ran"] == 1
    assert {p: os.stat(out / "patients" / f"{p}.json").st_mtime_ns for p in ("P1", "P3")} == stamps
    assert (out / "cohort.csv").read_bytes() == before
    assert json.loads((out / "patients" / "P2.json").read_text())["status"] == first.rows[1]["status"]
    # another seed is another plan: nothing is reused
    other = y90opt.cohort(TEMPLATE, table, out, samples=SAMPLES, seed=9, optuna_trials=0)
    assert other.summary["resumed"] == 0


def test_write_cases_never_replaces_an_input_and_counts_stay_honest(tmp_path):
    """--write-cases into the template's own folder, with a patient named like the template, is refused;
    --write-cases onto a file is exit 2; resumed not-run patients are not counted as run."""
    folder = tmp_path / "cases"
    folder.mkdir()
    template = folder / "P1.toml"
    template.write_text(pathlib.Path(TEMPLATE).read_text())
    table = tmp_path / "p.csv"
    table.write_text("patient_id,liver.perfused_volume_ml\nP1,1000\n")
    before = template.read_text()
    code, _, err = run_cli(["cohort", str(template), str(table), "--out", str(tmp_path / "o"), "--samples", "500",
                            "--optuna-trials", "0", "--write-cases", str(folder)])
    assert code == 2 and "never replaces an input" in err and template.read_text() == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run_cli(["cohort", TEMPLATE, str(table), "--out", str(tmp_path / "o"), "--samples", "500",
                            "--optuna-trials", "0", "--write-cases", str(afile)])
    assert code == 2 and "--write-cases" in err and afile.read_text() == "x"
    # a patient whose plan refuses at run time (too many unphysical samples: a perfused territory barely larger
    # than its tumours) is not-run on the first run and resumed as not-run, never counted as run
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,liver.perfused_volume_ml\nQ1,260\n")
    counts = []
    for _ in range(2):
        res = y90opt.cohort(TEMPLATE, bad, tmp_path / "o2", samples=2000, optuna_trials=0)
        assert res.rows[0]["status"] == "not-run", res.rows[0]
        counts.append((res.summary["ran"], res.summary["not_run"]))
    assert counts == [(0, 1), (0, 1)]


def test_a_bad_dask_address_is_bad_input(table, tmp_path):
    pytest.importorskip("dask.distributed")
    code, _, err = run_cli(["cohort", TEMPLATE, table, "--out", str(tmp_path / "o"), "--executor", "dask",
                            "--address", "bogus://x:1"])
    assert code == 2 and "--address" in err and err.count("\n") == 1


def test_a_table_saved_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffpatient_id,liver.perfused_volume_ml\nP1,1000\n".encode("utf-8"))
    _, patients = read_patients(TEMPLATE, str(p))
    assert patients[0].patient_id == "P1" and patients[0].text is not None
