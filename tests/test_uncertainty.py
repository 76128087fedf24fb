"""Distributions against scipy.stats: quantile transform, moments, support (table-driven)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from y90opt.uncertainty import (
    Biased,
    LogNormal,
    Normal,
    SpecError,
    Triangular,
    Uniform,
    check_support,
    parse_spec,
)

SPECS = [
    ({"value": 180, "cv": 0.17}, stats.lognorm(s=math.sqrt(math.log(1 + 0.17**2)), scale=180)),
    ({"dist": "lognormal", "median": 3.2, "sigma_ln": 0.3}, stats.lognorm(s=0.3, scale=3.2)),
    ({"dist": "normal", "mean": 1.0, "sd": 0.05}, stats.norm(1.0, 0.05)),
    ({"dist": "normal", "mean": 0.02, "sd": 0.02, "min": 0, "max": 0.5}, stats.truncnorm(-1, 24, loc=0.02, scale=0.02)),
    ({"dist": "uniform", "min": 0.9, "max": 1.1}, stats.uniform(0.9, 0.2)),
    ({"dist": "triangular", "min": 0.8, "mode": 1.0, "max": 1.3}, stats.triang(c=0.4, loc=0.8, scale=0.5)),
]


@pytest.mark.parametrize("raw, ref", SPECS)
def test_quantile_transform_matches_scipy(raw, ref):
    spec = parse_spec(raw)
    p = np.array([0.001, 0.05, 0.25, 0.5, 0.75, 0.95, 0.999])
    z = stats.norm.ppf(p)
    x = np.asarray(spec.from_z(jnp.asarray(z)))
    np.testing.assert_allclose(x, ref.ppf(p), rtol=1e-9)


@pytest.mark.parametrize("raw, ref", SPECS)
def test_sample_moments_within_standard_error(raw, ref):
    spec = parse_spec(raw)
    n = 200_000
    z = np.random.default_rng(5).standard_normal(n)
    x = np.asarray(spec.from_z(jnp.asarray(z)))
    se = ref.std() / math.sqrt(n)
    assert abs(x.mean() - ref.mean()) < 4 * se
    lo, hi = ref.support()
    assert x.min() >= lo and x.max() <= hi


def test_pinned_cv_form_is_lognormal_with_median_value():
    s = parse_spec({"value": 1100, "cv": 0.12})
    assert isinstance(s, LogNormal)
    assert s.median == 1100 and s.sigma_ln == pytest.approx(math.sqrt(math.log(1.0144)))


def test_bias_shift_and_factor():
    s = parse_spec({"dist": "normal", "mean": 0.12, "sd": 0.01, "bias_shift": -0.085})
    assert isinstance(s, Biased) and s.nominal == 0.12
    assert float(s.from_z(jnp.asarray(0.0))) == pytest.approx(0.035)
    f = parse_spec({"value": 3.0, "cv": 0.3, "bias_factor": 0.74})
    assert float(f.from_z(jnp.asarray(0.0))) == pytest.approx(3.0 * 0.74)


def test_support_rejects_mass_outside_and_accepts_truncation():
    with pytest.raises(SpecError):
        check_support(parse_spec({"dist": "normal", "mean": 0.02, "sd": 0.02}), "fraction")
    check_support(parse_spec({"dist": "normal", "mean": 0.02, "sd": 0.02, "min": 0, "max": 0.9}), "fraction")
    check_support(parse_spec({"value": 0.06, "cv": 0.3}), "fraction")
    with pytest.raises(SpecError):
        check_support(parse_spec({"value": 0.6, "cv": 1.0}), "fraction")


@pytest.mark.parametrize("raw, key", [
    ({"dist": "uniform", "min": 2, "max": 1}, "min"),
    ({"dist": "triangular", "min": 0, "mode": 2, "max": 1}, "mode"),
    ({"dist": "normal", "mean": 1, "sd": -1}, "sd"),
    ({"dist": "lognormal", "median": 1, "cv": 0.1, "sigma_ln": 0.1}, "cv"),
    ({"value": 1, "cv": 0.1, "bias_factor": 0}, "bias_factor"),
])
def test_bad_specs_name_the_key(raw, key):
    with pytest.raises(SpecError, match=f"^{key}:"):
        parse_spec(raw)


def test_truncated_normal_float32_stays_in_support():
    s = Normal(0.02, 0.02, 0.0, 0.5)
    z = jnp.linspace(-8, 8, 1001, dtype=jnp.float32)
    x = s.from_z(z)
    assert x.dtype == jnp.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 0.5
    assert Uniform(0, 1).from_z(z).dtype == jnp.float32
    assert Triangular(0, 0.5, 1).from_z(z).dtype == jnp.float32


@pytest.mark.parametrize("raw", [
    {"value": 0.06, "cv": 0.3},
    {"value": 0.06, "cv": 1.5},
    {"dist": "normal", "mean": 0.03, "sd": 0.036, "min": 0.0, "max": 0.5},
    {"dist": "normal", "mean": 0.05, "sd": 0.03},
    {"dist": "normal", "mean": 0.9, "sd": 0.2, "min": 0.5, "max": 1.5},
    {"dist": "uniform", "min": -0.1, "max": 0.4},
    {"dist": "triangular", "min": -0.05, "mode": 0.1, "max": 1.2},
    {"dist": "triangular", "min": 0.0, "mode": 0.0, "max": 0.9},
    {"dist": "normal", "mean": 0.1, "sd": 0.05, "bias_factor": 0.8, "bias_shift": -0.02},
])
@pytest.mark.parametrize("support", [(0.0, 1.0), (0.0, math.inf)])
def test_closed_form_outside_mass_equals_scipy(raw, support):
    """The mass outside a support is computed in closed form (parsing imports no scipy.stats): it equals
    scipy's cdf + sf of the same law."""
    spec = parse_spec(raw)
    d = spec.scipy()
    low, high = support
    expected = float(d.cdf(low) + (d.sf(high) if math.isfinite(high) else 0.0))
    assert spec.outside(low, high) == pytest.approx(expected, rel=1e-9, abs=1e-15)
