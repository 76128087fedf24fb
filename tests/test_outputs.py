"""Outputs never replace inputs, say what they are, and refusals come before the work."""

from __future__ import annotations

import contextlib
import io
import os

import pytest

from y90opt import engine
from y90opt.cli import main


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _refused(code, err, *words):
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("command", ["simulate", "sensitivity"])
def test_an_output_never_replaces_the_case(case_text, write_case, command):
    path = write_case(case_text, "case.nc")  # a case file that happens to end in .nc
    before = open(path, "rb").read()
    code, _, err = run_cli([command, path, "-o", path, "--samples", "128"])
    _refused(code, err, "an output never replaces an input")
    assert open(path, "rb").read() == before


def test_plan_out_never_replaces_the_case(case_text, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    case = out / "plan.nc"  # the case sits where plan.nc would be written
    case.write_text(case_text)
    code, _, err = run_cli(["plan", str(case), "--out", str(out), "--samples", "1000"])
    _refused(code, err, "an output never replaces an input")
    assert case.read_text() == case_text


@pytest.mark.parametrize("name", ["out.txt", "out.json", "out"])
def test_an_output_whose_suffix_contradicts_the_format_is_refused(case_text, write_case, tmp_path, name):
    path = write_case(case_text)
    code, _, err = run_cli(["simulate", path, "-o", str(tmp_path / name), "--samples", "100"])
    _refused(code, err, "NetCDF", ".nc")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("flag", [["--out", ""], ["--out", "FILE"]])
def test_plan_out_must_be_a_folder(case_text, write_case, tmp_path, flag):
    path = write_case(case_text)
    f = tmp_path / "a-file"
    f.write_text("keep me")
    argv = ["plan", path, "--samples", "1000"] + [flag[0], str(f) if flag[1] == "FILE" else flag[1]]
    code, _, err = run_cli(argv)
    _refused(code, err)
    assert f.read_text() == "keep me"


def test_report_out_that_is_a_file_is_refused(case_text, write_case, tmp_path):
    path = write_case(case_text)
    out = tmp_path / "res"
    assert run_cli(["plan", path, "--samples", "1000", "--optuna-trials", "0", "--out", str(out)])[0] == 0
    f = tmp_path / "a-file"
    f.write_text("x")
    code, _, err = run_cli(["report", str(out / "plan.nc"), "--out", str(f)])
    _refused(code, err, "not a directory")
    assert run_cli(["report", str(out / "plan.nc")])[0] == 0  # beside plan.nc: plan.nc is read, never written


@pytest.mark.parametrize("spec, meant", [
    ("4", "0.04"),
    ("{ value = 4, cv = 0.3 }", "0.04"),
    ('{ dist = "normal", mean = 6, sd = 1 }', "0.06"),
])
def test_a_shunt_in_percent_gets_the_hint(case_text, write_case, spec, meant):
    path = write_case(case_text.replace("shunt_fraction = { value = 0.06, cv = 0.3 }", f"shunt_fraction = {spec}"))
    code, _, err = run_cli(["dose", path])
    _refused(code, err, "lung.shunt_fraction", f"did you mean {meant}")


def test_sensitivity_refuses_a_design_that_cannot_fit(case_text, write_case, monkeypatch):
    """Correlated inputs hold the whole design in memory (independent ones stream and never need this)."""
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device=None: 64 * 2**20)  # 64 MiB free
    path = write_case(case_text + '\n[[correlations]]\ninputs = ["tumors.T1.volume_ml", "liver.perfused_volume_ml"]\n'
                      "rho = 0.3\n")
    code, _, err = run_cli(["sensitivity", path, "--samples", "10000000", "--json"])
    _refused(code, err, "--samples", "use at most")
    fit = int(err.rsplit("use at most ", 1)[1].split()[0])
    assert 0 < fit < 10_000_000
    # the count it offers does fit
    code, _, err = run_cli(["sensitivity", path, "--samples", str(max(64, min(fit, 2000))), "--json", "--bootstrap", "0"])
    assert code == 0, err


def test_outputs_are_written_only_where_asked(case_text, tmp_path, monkeypatch):
    """A plan with --out writes in that folder only (the compile cache is off in the tests)."""
    work = tmp_path / "work"
    work.mkdir()
    case = work / "case.toml"
    case.write_text(case_text)
    monkeypatch.chdir(work)
    before = set(os.listdir(work))
    assert run_cli(["plan", str(case), "--samples", "1000", "--optuna-trials", "0", "--out", "res"])[0] == 0
    assert set(os.listdir(work)) - before == {"res"}
    assert case.read_text() == case_text
