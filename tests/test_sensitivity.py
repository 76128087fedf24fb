"""Sobol' sensitivity analysis: the estimator against closed forms, the case pipeline against SALib, and the
reproducibility contracts (seed, chunk size) and the ``sensitivity --json`` keys.

Statistical tolerances are |estimate − exact| ≤ 4·SE with SE the bootstrap standard error of the estimate
(conservative over quasi-random points), never a fixed ``atol``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special

from y90opt.case import load_case
from y90opt.cli import main
from y90opt.figures import tornado_figure
from y90opt.sensitivity_analysis import output_function, sensitivity_case
from y90opt.sobol import sobol_indices, sobol_indices_dependent

Z = 4.0  # tolerance in standard errors

CASE = """\
name = "sens"
scenario = "multifocal-unilobar"

[liver]
perfused_volume_ml = {{ value = 1100, cv = 0.12 }}

[[tumors]]
name = "T1"
volume_ml = {{ value = 180, cv = 0.17 }}
tn_ratio = {{ value = 3.2, cv = 0.35 }}

[lung]
shunt_fraction = {{ value = 0.06, cv = {lsf_cv} }}
mass_kg = {{ value = 1.0, cv = {mass_cv} }}

[delivery]
residual_fraction = 0.01

[vials]
calibration = "2026-12-06T12:00:00-05:00"

[plan]
vial_gbq = 7
treatment = "2026-12-09T12:00:00-05:00"
{extra}"""

LSF_CV, MASS_CV = 0.3, 0.15


def write_case(path, extra: str = "", lsf_cv: float = LSF_CV, mass_cv: float = MASS_CV) -> str:
    path.write_text(CASE.format(extra=extra, lsf_cv=lsf_cv, mass_cv=mass_cv), encoding="utf-8")
    return str(path)


def sigma_ln(cv: float) -> float:
    return math.sqrt(math.log1p(cv * cv))


def within(est, se, exact, z: float = Z):
    est, se, exact = (np.asarray(x, float) for x in (est, se, exact))
    assert np.all(np.abs(est - exact) <= z * se), f"estimate {est}, exact {exact}, SE {se}"


@pytest.fixture(scope="module")
def case_path(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("sens") / "case.toml")


@pytest.fixture(scope="module")
def result(case_path):
    return sensitivity_case(load_case(case_path), n=1024, seed=7, bootstrap=100)


# -- the estimator core on closed forms ------------------------------------------------------------------


def test_ishigami_closed_form():
    """Ishigami & Homma (1990), X_i ~ U(−π, π): V = a²/8 + bπ⁴/5 + b²π⁸/18 + 1/2, V1 = bπ⁴/5 + b²π⁸/50 + 1/2,
    V2 = a²/8, V3 = 0, V13 = b²π⁸(1/18 − 1/50); ST1 = (V1 + V13)/V, ST2 = V2/V, ST3 = V13/V."""
    a, b, pi = 7.0, 0.1, math.pi

    def ishigami(z):
        x = -pi + 2 * pi * special.ndtr(z)
        return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])

    v1 = b * pi**4 / 5 + b**2 * pi**8 / 50 + 0.5
    v2 = a**2 / 8
    v13 = b**2 * pi**8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    est = sobol_indices(ishigami, 3, 2048, seed=1, bootstrap=200)
    within(est.S1[0], est.S1_se[0], [v1 / v, v2 / v, 0.0])
    within(est.ST[0], est.ST_se[0], [(v1 + v13) / v, v2 / v, v13 / v])
    # the intervals separate what matters: x3 acts only through its interaction with x1
    assert est.S1_lo[0, 2] <= 0.0 <= est.S1_hi[0, 2]
    assert est.ST_lo[0, 2] > 0.0
    assert np.all(est.S1_lo[0, :2] > 0.0)


def lognormal_product_indices(sigma):
    """Y = Π X_i, ln X_i ~ N(μ_i, σ_i²) independent; s_i = σ_i², S = Σ s_i.

    E[Y] = Π e^{μ_i + s_i/2}, E[Y²] = Π e^{2μ_i + 2s_i}, so V(Y) = E[Y]²(e^S − 1).
    E[Y | X_i] = X_i Π_{j≠i} E[X_j] ⇒ V(E[Y|X_i]) = V(X_i) Π_{j≠i} E[X_j]² = E[Y]²(e^{s_i} − 1).
    V(Y | X_{~i}) = V(X_i) Π_{j≠i} X_j² ⇒ E[V(Y|X_{~i})] = E[Y]² (e^{s_i} − 1) e^{S − s_i}.
    Hence S1_i = (e^{s_i} − 1)/(e^S − 1) and ST_i = (e^S − e^{S − s_i})/(e^S − 1), independent of μ.
    """
    s = np.asarray(sigma, float) ** 2
    big = s.sum()
    return np.expm1(s) / np.expm1(big), (np.exp(big) - np.exp(big - s)) / np.expm1(big)


def test_lognormal_product_closed_form():
    mu = np.array([0.1, -0.3, 0.5])
    sigma = np.array([0.2, 0.4, 0.6])
    est = sobol_indices(lambda z: np.exp(mu + sigma * z).prod(axis=1), 3, 4096, seed=2, bootstrap=200)
    s1, st = lognormal_product_indices(sigma)
    within(est.S1[0], est.S1_se[0], s1)
    within(est.ST[0], est.ST_se[0], st)
    assert np.all(est.ST[0] - est.S1[0] > -Z * np.hypot(est.ST_se[0], est.S1_se[0]))


def test_dependent_linear_gaussian_closed_form():
    """Y = aᵀz, z ~ N(0, C): V = aᵀCa, V[E(Y|z_i)] = (Ca)_i², E[V(Y|z_~i)] = a_i² / (C⁻¹)_ii
    (conditional normal law; Kucherenko, Tarantola & Annoni 2012)."""
    a = np.array([1.0, 2.0, 0.5, 0.0])
    c = np.array([[1, 0.6, 0, 0], [0.6, 1, -0.3, 0.5], [0, -0.3, 1, 0], [0, 0.5, 0, 1.0]])
    v = a @ c @ a
    est = sobol_indices_dependent(lambda z: z @ a, c, 2048, seed=3, bootstrap=200)
    within(est.S1[0], est.full.S1_se[0], (c @ a) ** 2 / v)
    within(est.ST[0], est.independent.ST_se[0], a**2 / np.diag(np.linalg.inv(c)) / v)
    # the fourth input does not enter Y but is correlated with the second: S1 > 0, ST = 0
    assert est.full.S1_lo[0, 3] > 0.0
    assert est.ST[0, 3] == 0.0
    # without correlation the dependent estimator gives the classical indices
    ind = sobol_indices_dependent(lambda z: z @ a, np.eye(4), 2048, seed=3, bootstrap=200)
    within(ind.S1[0], ind.full.S1_se[0], a**2 / (a @ a))
    within(ind.ST[0], ind.independent.ST_se[0], a**2 / (a @ a))


def test_rows_with_a_non_finite_output_are_dropped():
    """A NaN marks an unusable evaluation: its design row is dropped, the rest still estimates the indices."""
    sigma = np.array([0.3, 0.5])

    def model(z):
        y = np.exp(sigma * z).prod(axis=1)
        return np.where(z[:, 0] > 3.0, np.nan, y)  # about 0.1 % of the evaluations

    est = sobol_indices(model, 2, 2048, seed=4, bootstrap=100)
    assert 0 < est.n_invalid and est.n_used < est.n_base == 2048
    s1, st = lognormal_product_indices(sigma)
    within(est.S1[0], est.S1_se[0], s1)
    within(est.ST[0], est.ST_se[0], st)


# -- a case ---------------------------------------------------------------------------------------------


def test_case_lung_dose_is_a_lognormal_product(result):
    """D_lung = K·s·(1 − R)·LSF / M_lung with LSF and M_lung lognormal: a product of lognormals (1/M has
    σ_ln of M), so its indices follow from the closed form above; no other input enters it."""
    ds = result.dataset.sel(output="dose_gy.lung")
    s1, st = lognormal_product_indices([sigma_ln(LSF_CV), sigma_ln(MASS_CV)])
    pair = ["lung.shunt_fraction", "lung.mass_kg"]
    within(ds["S1"].sel(input=pair), ds["S1_se"].sel(input=pair), s1)
    within(ds["ST"].sel(input=pair), ds["ST_se"].sel(input=pair), st)
    others = [i for i in ds["input"].values if i not in pair]
    assert others
    assert np.all(ds["S1"].sel(input=others) == 0.0) and np.all(ds["ST"].sel(input=others) == 0.0)


def test_input_that_does_not_enter_has_zero_indices(result):
    ds = result.dataset.sel(output="dose_gy.tumors.T1", input="lung.mass_kg")
    for k in ("S1", "ST"):
        assert float(ds[f"{k}_lo"]) <= float(ds[k]) <= float(ds[f"{k}_hi"])
        assert float(ds[f"{k}_lo"]) <= 0.0 <= float(ds[f"{k}_hi"])
        assert abs(float(ds[k])) <= Z * float(ds[f"{k}_se"])
    # while the tumour's own inputs matter
    assert float(result.dataset["ST_lo"].sel(output="dose_gy.tumors.T1", input="tumors.T1.tn_ratio")) > 0.0


def test_outputs_and_inputs_named_by_case_paths(result):
    ds = result.dataset
    outputs = set(ds["output"].values)
    assert {"dose_gy.tumors.T1", "dose_gy.normal_perfused", "dose_gy.perfused_mean", "dose_gy.lung",
            "dose_gy.lung_cumulative", "success"} <= outputs
    assert list(ds["input"].values) == [
        "liver.perfused_volume_ml", "tumors.T1.volume_ml", "tumors.T1.tn_ratio", "lung.shunt_fraction", "lung.mass_kg",
    ]  # the residual fraction is exact: no index
    for k in ("S1", "ST", "S1_lo", "S1_hi", "ST_lo", "ST_hi"):
        assert ds[k].dims == ("output", "input") and ds[k].attrs["units"] == "1"
    for k in ("y90opt_version", "seed", "case_sha256", "samples", "dtype", "jax_backend", "method"):
        assert k in ds.attrs
    assert ds.attrs["case_sha256"] == load_case(ds.attrs["case_path"]).sha256
    assert ds.attrs["samples"] == 1024 and ds.attrs["model_evaluations"] == 1024 * 7
    assert "independent" in ds.attrs["input_dependence"]
    # success varies in this case (P(T1 >= 205 Gy) is neither 0 nor 1) and the T:N ratio drives it
    assert 0.0 < float(ds["output_mean"].sel(output="success")) < 1.0
    assert float(ds["ST_lo"].sel(output="success", input="tumors.T1.tn_ratio")) > 0.0


def test_agrees_with_salib(case_path, result):
    """SALib's Saltelli design and estimators on the same y90opt model (fed through numpy)."""
    from SALib.analyze import sobol as salib_analyze
    from SALib.sample import sobol as salib_sample

    fn = output_function(load_case(case_path))
    d = len(fn.inputs)
    problem = {"num_vars": d, "names": list(fn.inputs), "bounds": [[0.0, 1.0]] * d}
    u = salib_sample.sample(problem, 1024, calc_second_order=False, seed=11)
    eps = np.finfo(float).eps
    y = fn(special.ndtri(np.clip(u, eps, 1 - eps)))
    ds = result.dataset
    z975 = special.ndtri(0.975)
    for k, out in enumerate(fn.outputs):
        if not float(ds["output_variance"].sel(output=out)) > 0:
            continue
        ref = salib_analyze.analyze(problem, y[:, k], calc_second_order=False, num_resamples=200, seed=11)
        for idx in ("S1", "ST"):
            mine = ds[idx].sel(output=out).values
            se = np.hypot(ds[f"{idx}_se"].sel(output=out).values, ref[f"{idx}_conf"] / z975)
            assert np.all(np.abs(mine - ref[idx]) <= Z * se), (out, idx, mine, ref[idx], se)


def test_same_seed_same_indices_and_chunk_invariance(case_path, result):
    import xarray as xr

    case = load_case(case_path)
    again = sensitivity_case(case, n=1024, seed=7, bootstrap=100, chunk=1000)  # 7 × 1024 rows in 8 chunks
    xr.testing.assert_identical(result.dataset, again.dataset)
    other = sensitivity_case(case, n=1024, seed=8, bootstrap=100)
    assert not np.array_equal(result.dataset["S1"].values, other.dataset["S1"].values)


def test_one_at_a_time(case_path, result, tmp_path):
    from y90opt.nominal import nominal_doses

    case = load_case(case_path)
    ds = result.dataset
    nominal = nominal_doses(case)
    np.testing.assert_allclose(float(ds["oat_nominal"].sel(output="dose_gy.lung")), nominal["dose_gy"]["lung"], rtol=1e-5)
    np.testing.assert_allclose(
        float(ds["oat_nominal"].sel(output="dose_gy.tumors.T1")), nominal["dose_gy"]["tumors"]["T1"], rtol=1e-5
    )
    spec = case.inputs["lung.shunt_fraction"].scipy()
    lo, hi = spec.ppf([0.05, 0.95])
    np.testing.assert_allclose(float(ds["input_low"].sel(input="lung.shunt_fraction")), lo, rtol=1e-5)
    np.testing.assert_allclose(float(ds["input_high"].sel(input="lung.shunt_fraction")), hi, rtol=1e-5)
    lung = ds.sel(output="dose_gy.lung", input="lung.shunt_fraction")
    assert float(lung["oat_low"]) < float(lung["oat_nominal"]) < float(lung["oat_high"])
    # the lung dose is linear in the shunt fraction: the p95 dose is the nominal dose scaled by LSF_p95 / LSF
    np.testing.assert_allclose(float(lung["oat_high"]), nominal["dose_gy"]["lung"] * hi / 0.06, rtol=1e-5)
    flat = ds.sel(output="dose_gy.tumors.T1", input="lung.mass_kg")
    assert float(flat["oat_low"]) == float(flat["oat_high"]) == float(flat["oat_nominal"])
    path = tornado_figure(result, "dose_gy.tumors.T1", str(tmp_path / "tornado.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):
        tornado_figure(result, "dose_gy.nothing", str(tmp_path / "x.png"))


def test_text_and_netcdf(result, tmp_path):
    from y90opt.results import read_netcdf, write_netcdf

    text = result.text()
    assert "dose_gy.tumors.T1" in text and "success" in text and "lung.shunt_fraction" in text
    write_netcdf(result.dataset, tmp_path / "sens.nc")
    back = read_netcdf(tmp_path / "sens.nc")
    np.testing.assert_array_equal(back["ST"].values, result.dataset["ST"].values)
    assert back.attrs["case_sha256"] == result.dataset.attrs["case_sha256"]


def test_correlated_inputs(tmp_path):
    """LSF and lung mass correlated (ρ) through the copula: ln D_lung = c + aᵀz with a = (σ_L, −σ_M),
    z ~ N(0, [[1, ρ], [ρ, 1]]), v = aᵀΣa. With β_i = (Σa)_i and s_i² = a_i²(1 − ρ²) (the conditional variance
    of aᵀz given the other variate): V[E(D|z_i)] ∝ e^v(e^{β_i²} − 1), E[V(D|z_~i)] ∝ e^{2v − s_i²}(e^{s_i²} − 1),
    V(D) ∝ e^v(e^v − 1), so S1_i = (e^{β_i²} − 1)/(e^v − 1) and ST_i = (e^v − e^{v − s_i²})/(e^v − 1)."""
    rho = 0.6
    extra = '\n[[correlations]]\ninputs = ["lung.shunt_fraction", "lung.mass_kg"]\nrho = 0.6\n'
    case = load_case(write_case(tmp_path / "corr.toml", extra))
    res = sensitivity_case(case, n=1024, seed=5, bootstrap=100)
    ds = res.dataset.sel(output="dose_gy.lung", input=["lung.shunt_fraction", "lung.mass_kg"])
    a = np.array([sigma_ln(LSF_CV), -sigma_ln(MASS_CV)])
    cov = np.array([[1.0, rho], [rho, 1.0]])
    v = a @ cov @ a
    beta = cov @ a
    s2 = a**2 * (1 - rho**2)
    within(ds["S1"], ds["S1_se"], np.expm1(beta**2) / np.expm1(v))
    within(ds["ST"], ds["ST_se"], (np.exp(v) - np.exp(v - s2)) / np.expm1(v))
    assert "copula" in res.dataset.attrs["input_dependence"]
    assert res.summary["input_dependence"] == res.dataset.attrs["input_dependence"]
    assert {"ST_full", "S1_independent"} <= set(res.summary["indices"][0])
    # the tumour's T:N ratio neither enters the lung dose nor is correlated with an input that does
    t = res.dataset.sel(output="dose_gy.lung", input="tumors.T1.tn_ratio")
    assert float(t["S1"]) == float(t["ST"]) == 0.0
    # the lung mass does not enter the tumour dose (ST = 0), but it is correlated with the shunt fraction,
    # which does: V[E(D_T1 | M_lung)] need not vanish
    t = res.dataset.sel(output="dose_gy.tumors.T1", input="lung.mass_kg")
    assert float(t["ST"]) == 0.0
    assert float(t["S1_lo"]) <= float(t["S1"]) <= float(t["S1_hi"])


# -- command line ---------------------------------------------------------------------------------------


def test_cli_json_pinned_keys(case_path, capsys):
    assert main(["sensitivity", case_path, "--json", "--samples", "256", "--seed", "3", "--bootstrap", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 256 and out["seed"] == 3 and "method" in out and "oat" in out
    rows = {(r["output"], r["input"]): r for r in out["indices"]}
    for key in [("dose_gy.lung", "lung.shunt_fraction"), ("dose_gy.tumors.T1", "tumors.T1.volume_ml"),
                ("success", "tumors.T1.tn_ratio"), ("dose_gy.normal_perfused", "liver.perfused_volume_ml")]:
        assert key in rows
        assert isinstance(rows[key]["S1"], float) and isinstance(rows[key]["ST"], float)
    assert not any(r["input"] == "delivery.residual_fraction" for r in out["indices"])


def test_cli_missing_plan_is_one_line_error(tmp_path, capsys):
    text = CASE.format(extra="", lsf_cv=LSF_CV, mass_cv=MASS_CV).replace("vial_gbq = 7\n", "")
    path = tmp_path / "noplan.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["sensitivity", str(path), "--json", "--samples", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "plan.vial_gbq" in err


def _lognormal_product(z, s1=0.4, s2=0.7):
    """Y = exp(s1 Z1 + s2 Z2) (Z3 inert): S1_i = (e^{si²} − 1)/(e^{s1²+s2²} − 1), ST_1 = 1 − S1_2."""
    return np.exp(s1 * z[:, 0] + s2 * z[:, 1])[:, None]


def test_streaming_sobol_equals_the_in_memory_estimators():
    from y90opt.sobol import sobol_streaming

    a = sobol_indices(_lognormal_product, 3, 3000, seed=11, chunk=4000, bootstrap=0)
    b = sobol_streaming(_lognormal_product, 3, 3000, seed=11, chunk=4000, bootstrap=0)
    assert np.allclose(a.S1, b.S1, rtol=0, atol=1e-12) and np.allclose(a.ST, b.ST, rtol=0, atol=1e-12)
    assert b.n_used == a.n_used == 3000


def test_streaming_sobol_intervals_cover_the_closed_form():
    """The batch-bootstrap 95 % intervals cover the exact indices of the lognormal product in about 95 % of
    seeds: over 60 seeds at least 51 (the binomial(60, 0.95) lower 0.1 % quantile is 51)."""
    from y90opt.sobol import sobol_streaming

    s1, s2 = 0.4, 0.7
    total = np.exp(s1**2 + s2**2) - 1
    exact_s1 = np.array([(np.exp(s1**2) - 1) / total, (np.exp(s2**2) - 1) / total, 0.0])
    exact_st = np.array([1 - exact_s1[1], 1 - exact_s1[0], 0.0])
    hits_s1 = hits_st = 0
    for seed in range(60):
        e = sobol_streaming(_lognormal_product, 3, 4096, seed=seed, chunk=8192, bootstrap=200, batches=64)
        hits_s1 += int(e.S1_lo[0, 0] <= exact_s1[0] <= e.S1_hi[0, 0])
        hits_st += int(e.ST_lo[0, 1] <= exact_st[1] <= e.ST_hi[0, 1])
    assert hits_s1 >= 51 and hits_st >= 51, (hits_s1, hits_st)


def test_sensitivity_streams_above_the_limit_with_the_same_indices(monkeypatch):
    from y90opt import sobol
    from y90opt.case import parse_case

    case = parse_case(CASE.format(lsf_cv=LSF_CV, mass_cv=MASS_CV, extra=""), "s.toml")
    exact = sensitivity_case(case, n=1024, seed=5, bootstrap=0).dataset
    monkeypatch.setattr(sobol, "STREAM_ABOVE", 512)
    import y90opt.sensitivity_analysis as sa

    monkeypatch.setattr(sa, "STREAM_ABOVE", 512)
    streamed = sensitivity_case(case, n=1024, seed=5, bootstrap=20).dataset
    assert "streamed" in streamed.attrs["method"]
    assert np.allclose(exact["S1"].values, streamed["S1"].values, atol=1e-9, equal_nan=True)
    assert np.allclose(exact["ST"].values, streamed["ST"].values, atol=1e-9, equal_nan=True)


def test_streaming_sobol_does_not_depend_on_the_chunk():
    from y90opt.sobol import sobol_streaming

    a = sobol_streaming(_lognormal_product, 3, 10_000, seed=2, chunk=3000, bootstrap=20)
    b = sobol_streaming(_lognormal_product, 3, 10_000, seed=2, chunk=65_536, bootstrap=20)
    for field in ("S1", "ST", "S1_lo", "S1_hi", "ST_lo", "ST_hi"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
