"""Shared fixtures. JAX's x64 mode is on so that float64 paths can be tested; float32 paths pass their dtype
explicitly and are tested as well. Dtype promotion is strict, so no implicit widening goes unnoticed."""

import os
import textwrap

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# strict dtype promotion: a float32 path that would silently widen to float64 (x64 is on here) fails instead;
# the environment variable carries it to the CLI processes that tests start
jax.config.update("jax_numpy_dtype_promotion", "strict")
os.environ["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"
os.environ["Y90OPT_CACHE_DIR"] = ""  # tests compile afresh: no persistent cache shared with other runs

BASE_CASE = textwrap.dedent(
    """\
    name = "test"
    scenario = "multifocal-unilobar"

    [liver]
    perfused_volume_ml = { value = 1100, cv = 0.12 }
    whole_liver_volume_ml = 1800

    [[tumors]]
    name = "T1"
    volume_ml = { value = 180, cv = 0.17 }
    tn_ratio = { value = 3.2, cv = 0.35 }

    [lung]
    shunt_fraction = { value = 0.06, cv = 0.3 }

    [delivery]
    residual_fraction = 0.01

    [vials]
    calibration = "2026-12-06T12:00:00-05:00"

    [plan]
    vial_gbq = 7
    treatment = "2026-12-09T12:00:00-05:00"
    """
)


@pytest.fixture
def case_text() -> str:
    return BASE_CASE


@pytest.fixture
def write_case(tmp_path):
    """Write TOML text to a file and return its path."""

    def _write(text: str, name: str = "case.toml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    return _write
