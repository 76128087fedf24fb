"""The planner: chance-constraint semantics, tie-break, infeasible answers, prior lung dose, and agreement
with a brute-force re-evaluation of every candidate on the same samples."""

import contextlib
import io
import json

import numpy as np
import pytest

from y90opt import engine
from y90opt.case import parse_case
from y90opt.cli import main
from y90opt.planner import choose, plan_case
from y90opt.reference import reference_doses

# Exact inputs: probabilities are 0 or 1 and the answer follows by hand.
# D_P = 50 · s · 0.95 / 0.103 kg ≥ 400 Gy  ⇔  s ≥ 0.8674 GBq;  lung = 50 · s · 0.05 / 1 kg = 2.5 s.
EXACT = """\
name = "exact"
scenario = "radiation-segmentectomy"
[liver]
perfused_volume_ml = 100
[lung]
shunt_fraction = 0.05
prior_dose_gy = {prior}
[vials]
calibration = "2026-12-06T12:00:00-05:00"
activities_gbq = [3, 5]
[plan]
hours_after_calibration = [72, 96, 120, 192, 216]
"""


def _plan(text, **kw):
    kw.setdefault("optuna_trials", 0)
    return plan_case(parse_case(text), n=kw.pop("n", 2_000), seed=kw.pop("seed", 0), **kw).summary


def test_ties_go_to_smaller_vial_then_earlier_time():
    s = _plan(EXACT.format(prior=0))
    # every candidate with s ≥ 0.8674 reaches 400 Gy with P = 1: 3 GBq at 72 h (1.38 GBq) is the first
    assert s["feasible"] is True
    assert s["recommended"]["vial_gbq"] == 3 and s["recommended"]["hours_after_calibration"] == 72
    assert s["recommended"]["p_success"] == 1.0


def test_prior_lung_dose_constrains_the_choice():
    # prior 48 Gy: cumulative ≤ 50 ⇔ 2.5 s ≤ 2 ⇔ s ≤ 0.8 GBq: only 3 GBq at ≥ 192 h (0.38 GBq) qualifies,
    # and it cannot reach 400 Gy (needs 0.867 GBq): feasible, P(targets) = 0
    s = _plan(EXACT.format(prior=48))
    assert s["feasible"] is True
    assert (s["recommended"]["vial_gbq"], s["recommended"]["hours_after_calibration"]) == (3, 192)
    assert s["recommended"]["p_success"] == 0.0
    assert s["rejected_better"] and "lung-cumulative" in s["rejected_better"][0]["ruled_out_by"]


def test_infeasible_is_an_answer_with_the_binding_limit(write_case, tmp_path):
    path = write_case(EXACT.format(prior=51))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", path, "--samples", "1000", "--json", "--out", str(tmp_path / "res")])
    assert code == 0, err.getvalue()
    s = json.loads(out.getvalue())
    assert s["feasible"] is False and s["recommended"] is None
    assert s["binding_limit"] == "lung-cumulative"
    assert "no activity keeps it" in s["relax"]
    assert s["optuna"]["matches_exact"] is True  # nothing feasible either way
    assert (tmp_path / "res" / "report.html").is_file()


def test_choose_rule_on_hand_arrays():
    vials = np.array([3.0, 5.0, 7.0])
    hours = np.array([72.0, 96.0])
    p_s = np.array([[0.50, 0.40], [0.899, 0.80], [0.90, 0.95]])
    p_l = np.array([[[1.0], [1.0]], [[0.96], [0.99]], [[0.97], [0.90]]])
    c = choose(p_s, p_l, vials, hours, risk=0.05, tol=0.005)
    # 7 GBq at 96 h is infeasible; the best feasible is 0.90 (7 GBq, 72 h); 0.899 (5 GBq, 72 h) is tied
    # within 0.005 and goes first as the smaller vial
    assert c["feasible"] and c["index"] == (1, 0)
    c = choose(p_s, p_l, vials, hours, risk=0.05, tol=0.0)
    assert c["index"] == (2, 0)
    c = choose(p_s, p_l * 0.5, vials, hours, risk=0.05, tol=0.005)
    assert not c["feasible"] and c["index"] == (0, 0)  # least risky: smallest worst-limit risk, smaller vial


def test_risk_semantics_change_the_answer(case_text):
    strict = _plan(case_text, n=20_000, risk=0.01)
    loose = _plan(case_text, n=20_000, risk=0.20)
    assert loose["recommended"]["p_success"] >= strict["recommended"]["p_success"]
    assert min(strict["recommended"]["p_limits"].values()) >= 0.99
    assert min(loose["recommended"]["p_limits"].values()) >= 0.80


def test_default_times_are_weekdays_in_the_window(case_text):
    s = _plan(case_text)
    # calibration Sunday 12:00 US Eastern; scenario 3 window week 1 Wednesday – week 2 Tuesday
    assert s["hours_after_calibration"] == [72.0, 96.0, 120.0, 192.0, 216.0]
    assert s["vials_gbq"] == [3.0, 5.0, 7.0, 10.0, 15.0, 20.0]


@pytest.mark.parametrize("tumour", ["{ value = 180, cv = 0.17 }", "{ value = 300, cv = 0.4 }"])
def test_exact_solver_equals_brute_force_on_same_samples(case_text, tumour):
    # the second tumour volume makes a few samples unphysical (larger than the perfused volume): they must drop
    # out of numerators and denominators alike
    case = parse_case(case_text.replace("volume_ml = { value = 180, cv = 0.17 }", f"volume_ml = {tumour}"))
    n = 20_000
    # chunks of 4096: the last one is padded (480 samples), and the padding must count nowhere
    res = plan_case(case, n=n, seed=3, dtype="float64", optuna_trials=0, chunk=4096)
    ds = res.dataset
    assert (ds.attrs["unphysical_sample_count"] > 0) == ("300" in tumour)
    x = engine.sample_inputs(engine.Model.from_case(case), n, seed=3, dtype="float64")
    for i, vial in enumerate(ds["vial"].values):
        for j, h in enumerate(ds["hours_after_calibration"].values):
            s = vial * 2 ** (-h / 64.1)
            d = reference_doses(
                s * x["delivery.activity_factor"], x["liver.perfused_volume_ml"], x["tumors.T1.volume_ml"][:, None],
                x["tumors.T1.tn_ratio"][:, None], np.array([True]), x["lung.shunt_fraction"], x["lung.mass_kg"],
                x["delivery.residual_fraction"], x["liver.whole_liver_volume_ml"], 0.0,
            )
            ok = (x["liver.perfused_volume_ml"] > x["tumors.T1.volume_ml"]) & (x["liver.perfused_volume_ml"] <= x["liver.whole_liver_volume_ml"])
            assert float(ds["p_success"][i, j]) == pytest.approx(np.mean(d["tumors"][ok, 0] >= 205), abs=1e-12)
            p_ntad = np.mean(d["normal_perfused"][ok] <= 120)
            assert float(ds["p_limit"].sel(limit="ntad")[i, j]) == pytest.approx(p_ntad, abs=1e-12)
            p_lung = np.mean(d["lung"][ok] <= 30)
            assert float(ds["p_limit"].sel(limit="lung-session")[i, j]) == pytest.approx(p_lung, abs=1e-12)
            both = (d["tumors"][ok, 0] >= 205) & (d["normal_perfused"][ok] <= 120) & (d["lung"][ok] <= 30)
            assert float(ds["p_joint"][i, j]) == pytest.approx(np.mean(both), abs=1e-12)
            # dose quantiles: s · (quantile of the factor) equals the quantile of the doses (s > 0)
            for name, p in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
                for q, key in (("tumors.T1", "tumors"), ("normal_perfused", "normal_perfused"), ("lung", "lung")):
                    vals = d[key][ok, 0] if key == "tumors" else d[key][ok]
                    got = float(ds[f"dose_{name}"].sel(quantity=q)[i, j])
                    assert got == pytest.approx(np.quantile(vals, p), rel=1e-12)


def test_float32_rows_answer_float64_activities_exactly():
    # the evaluator keeps float32 rows and rounds each float64 query outward or inward: the counts must equal
    # those of the rows widened to float64, also for queries on a row value and one float64 ulp either side
    from y90opt.planner import _count

    rng = np.random.default_rng(0)
    row = np.sort(np.concatenate([rng.lognormal(size=5000), rng.lognormal(size=50).repeat(3), [np.inf] * 4]))
    row = row.astype(np.float32)
    wide = row.astype(np.float64)
    on = wide[rng.integers(0, row.size - 4, 300)]
    q = np.concatenate([on, np.nextafter(on, 0), np.nextafter(on, np.inf), rng.lognormal(size=300) * 1.0001,
                        [-1.0, 0.0, 1e-300, 3.5e38, 1e300, np.inf]])
    for side in ("left", "right"):
        np.testing.assert_array_equal(_count(row, q, side),
                                      np.searchsorted(wide, q, side=side) - ((side == "right") & (q == np.inf)) * 4)
    # +inf in a row means "never" (and pads samples that do not count): even s = inf does not reach it
    for r in (row, wide):
        assert _count(r, np.inf, "right") == row.size - 4
        assert _count(r, np.inf, "left") == row.size - 4


def test_rule_on_its_threshold_at_zero_factor_holds_everywhere():
    # F = 0 and the fixed dose b exactly on the threshold: 0/0; the rule holds at every s (target and limit alike)
    import jax.numpy as jnp

    from y90opt.planner import _critical_core

    f = jnp.array([[0.0, 0.0, 2.0]])
    valid = in_range = jnp.array([True])
    b, cols = jnp.array([5.0, 5.0, 0.0]), jnp.array([0, 1, 2])
    thr, signs = jnp.array([5.0, 5.0, 4.0]), jnp.array([-1.0, 1.0, -1.0])
    rows, n_ok, n_bad = _critical_core(f, valid, in_range, b, cols, thr, signs, jnp.array([True, False, True]),
                                       jnp.array([False, True, False]))
    crit = np.asarray(rows)[3:, 0]
    assert crit[0] == -np.inf and crit[1] == np.inf and crit[2] == 2.0
    assert int(n_ok) == 1 and int(n_bad) == 0


def test_device_sorted_evaluator_equals_host(case_text):
    # the GPU path (sort and count with JAX, rows left on the device) run here on the CPU device
    from y90opt.outcomes import active_rules, compile_rules
    from y90opt.planner import build_evaluator
    from y90opt.simulation import sorted_quantiles

    case = parse_case(case_text.replace("volume_ml = { value = 180, cv = 0.17 }", "volume_ml = { value = 300, cv = 0.4 }"))
    model = engine.Model.from_case(case)
    rt = compile_rules(active_rules(case), model.quantities)
    host, fh, bad_h = build_evaluator(model, rt, 30_000, 1, 4096, "float32", on_device=False)
    dev, fd, bad_d = build_evaluator(model, rt, 30_000, 1, 4096, "float32", on_device=True)
    assert isinstance(host.s_lo, np.ndarray) and not isinstance(dev.s_lo, np.ndarray)
    assert host.n == dev.n < 30_000 and bad_h == bad_d > 0
    s = np.geomspace(0.5, 30.0, 97)
    for name in ("p_success", "p_limits", "p_joint", "p_rules"):
        np.testing.assert_array_equal(getattr(dev, name)(s), getattr(host, name)(s))
    probs = (0.05, 0.5, 0.95)
    np.testing.assert_array_equal(sorted_quantiles(fd, probs, n=dev.n), sorted_quantiles(fh, probs, n=host.n))
    np.testing.assert_array_equal(np.asarray(fd), fh)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 2**17 + 3])
def test_sorted_quantiles_equal_numpy_quantile(dtype, n):
    # the planner's quantiles from rows it has sorted anyway: numpy's 'linear' method, bit for bit
    from y90opt.simulation import sort_rows, sorted_quantiles

    x = np.random.default_rng(n).lognormal(size=(3, n)).astype(dtype)
    rows = sort_rows(x.copy())
    np.testing.assert_array_equal(rows, np.sort(x, axis=1))
    probs = (0.0, 0.05, 0.123456, 0.5, 0.77, 0.95, 1.0)
    np.testing.assert_array_equal(sorted_quantiles(rows, probs), np.quantile(x, probs, axis=1))


def test_plan_json_pinned_keys_and_reproducible(case_text, write_case):
    path = write_case(case_text)
    outs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["plan", path, "--samples", "5000", "--seed", "4", "--optuna-trials", "0", "--json"]) == 0
        outs.append(json.loads(out.getvalue()))
    s = outs[0]
    assert isinstance(s["feasible"], bool)
    assert set(s["recommended"]) >= {"vial_gbq", "hours_after_calibration"}
    assert outs[0]["recommended"] == outs[1]["recommended"]


def test_plan_writes_netcdf(case_text, write_case, tmp_path):
    from y90opt.results import read_netcdf

    path = write_case(case_text)
    out_dir = tmp_path / "res"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["plan", path, "--samples", "3000", "--optuna-trials", "0", "--out", str(out_dir)]) == 0
    ds = read_netcdf(out_dir / "plan.nc")
    assert ds["p_success"].dims == ("vial", "time")
    assert ds.attrs["case_toml"] == case_text


def test_plan_with_sensitivity_adds_tornado_and_dataset(case_text, write_case, tmp_path):
    from y90opt.results import read_netcdf

    path = write_case(case_text)
    out_dir = tmp_path / "res"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", path, "--samples", "3000", "--optuna-trials", "0", "--sensitivity-samples", "256",
                     "--out", str(out_dir), "--json"]) == 0
    s = json.loads(buf.getvalue())
    sens = read_netcdf(out_dir / "sensitivity.nc")
    # the sensitivity analysis ran at the recommended decision
    assert float(sens.attrs["vial_gbq"]) == s["recommended"]["vial_gbq"]
    assert float(sens.attrs["hours_after_calibration"]) == pytest.approx(s["recommended"]["hours_after_calibration"])
    assert {r["output"] for r in s["sensitivity"]["indices"]} >= {"dose_gy.tumors.T1", "success"}
    assert list(out_dir.glob("report_tornado_*.png"))
    assert "alt=\"tornado of " in (out_dir / "report.html").read_text()  # the figures are embedded


@pytest.mark.parametrize("zone, clock, expected", [
    # Wednesday 10:00 in Paris is 04:00 US Eastern: 64 h after a Sunday-noon Eastern calibration
    ("Europe/Paris", "10:00", [64.0, 88.0, 112.0, 184.0, 208.0]),
    # calibration = Monday 02:00 in Tokyo; the window spans Tokyo dates Thursday to next Wednesday (weekdays only)
    ("Asia/Tokyo", "10:00", [80.0, 104.0, 176.0, 200.0, 224.0]),
    # Kiritimati (UTC+14) 23:00: the last weekday would be 232 h, beyond the window's day tolerance: dropped
    ("Pacific/Kiritimati", "23:00", [88.0, 112.0, 184.0, 208.0]),
])
def test_default_times_at_the_site(case_text, zone, clock, expected):
    text = case_text.replace("vial_gbq = 7", f'vial_gbq = 7\nsite_timezone = "{zone}"\nprocedure_time = "{clock}"')
    s = _plan(text, n=1000)
    assert s["hours_after_calibration"] == pytest.approx(expected)
    assert all(72 - 12 <= h <= 216 + 12 for h in s["hours_after_calibration"])


def test_large_runs_stream_dose_quantiles(case_text, monkeypatch):
    # above the exact-quantile limit the plan keeps no factor matrix: quantiles come from streaming histograms
    # and agree with the exact ones within the stated relative error; probabilities are unchanged (exact)
    import y90opt.simulation as sim

    case = parse_case(case_text)
    exact = plan_case(case, n=40_000, seed=2, optuna_trials=0).dataset
    monkeypatch.setattr(sim, "EXACT_QUANTILE_LIMIT", 1000)
    stream = plan_case(case, n=40_000, seed=2, optuna_trials=0).dataset
    assert stream.attrs["quantile_method"].startswith("log-spaced")
    rel = stream.attrs["quantile_rel_error"]
    np.testing.assert_allclose(stream["dose_p50"].values, exact["dose_p50"].values, rtol=2 * rel + 1e-6)
    np.testing.assert_array_equal(stream["p_success"].values, exact["p_success"].values)
    np.testing.assert_array_equal(stream["p_rule"].values, exact["p_rule"].values)


def test_pareto_front_against_brute_force():
    from y90opt.plan_summary import pareto_front

    rng = np.random.default_rng(0)
    ps = np.round(rng.uniform(size=(7, 9)), 2)
    pl = np.round(rng.uniform(size=(7, 9, 2)), 2)
    worst = pl.min(-1)
    pts = [(ps[i, j], worst[i, j]) for i in range(7) for j in range(9)]
    brute = {(a, b) for a, b in pts if not any(c >= a and d >= b and (c > a or d > b) for c, d in pts)}
    got = pareto_front(ps, pl)
    assert {(ps[i, j], worst[i, j]) for i, j in got} == brute
    assert len(got) == len(brute)  # equal points kept once



def test_a_plan_that_cannot_fit_in_memory_is_refused_before_sampling(case_text, write_case, monkeypatch, tmp_path):
    """The exact planner keeps (3 + rules [+ quantities]) values per sample: a sample count whose peak exceeds
    the free memory is exit 2 naming the file and --samples, with the largest count that fits; nothing is
    sampled or written. With the memory it needs, the same command runs (control)."""
    from y90opt import planner

    path = write_case(case_text)
    case = parse_case(case_text, path)
    rows = 3 + len(planner.compile_rules(planner.active_rules(case), engine.Model.from_case(case).quantities).labels)
    n = 5_000_000  # above the exact-quantile limit: the factors are not kept
    need = planner.PEAK_COPIES["host"] * rows * 4 * n
    sampled = []
    monkeypatch.setattr(engine, "run_chunks", lambda *a, **k: sampled.append(a) or iter(()))
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device=None: int(need) - 1)
    out, err = io.StringIO(), io.StringIO()
    out_dir = tmp_path / "res"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", path, "--samples", str(n), "--out", str(out_dir)])
    assert code == 2
    msg = err.getvalue().strip()
    assert "\n" not in msg and path in msg and "--samples" in msg
    assert f"use at most {n - 1} samples" in msg
    assert not sampled and not (out_dir / "plan.nc").exists()
    # control: exactly the memory it needs passes the check
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device=None: int(need))
    planner.check_memory(case, n, rows, "float32")


@pytest.mark.parametrize("free_samples", [2_000_000, 1_500_000, 300_000])
def test_the_suggested_sample_count_fits_and_one_more_does_not(case_text, monkeypatch, free_samples):
    """At or below the exact-quantile limit the planner also keeps the factors: the suggestion accounts for
    them (the free memory here is what `free_samples` need without factors)."""
    import re

    from y90opt import planner
    from y90opt.cli import BadInput

    case = parse_case(case_text, "case.toml")
    rows, q, limit = 9, 12, 2_000_000
    per_big = planner.PEAK_COPIES["host"] * rows * 4
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device=None: int(per_big * free_samples))

    def check(m):
        planner.check_memory(case, m, rows, "float32", factor_rows=q, factor_limit=limit)

    with pytest.raises(BadInput) as info:
        check(10**8)
    fit = int(re.search(r"use at most (\d+) samples", str(info.value)).group(1))
    check(fit)
    with pytest.raises(BadInput):
        check(fit + 1)
    assert fit < free_samples  # the factors take their share


def test_available_memory_is_known_here():
    free = engine.available_memory_bytes()
    assert free is None or free > 0


def test_library_bad_input_is_exit_2_under_python_dash_m(case_text, write_case):
    """`python -m y90opt.cli` runs the module as __main__; bad input raised in the library (here --risk, checked
    by the planner) must still be exit 2 with one line, not an internal error."""
    import subprocess
    import sys

    path = write_case(case_text)
    res = subprocess.run([sys.executable, "-m", "y90opt.cli", "plan", path, "--samples", "1000", "--risk", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "y90opt: --risk: must be in (0, 1), got 2.0"
