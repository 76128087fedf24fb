"""Monte Carlo engine and simulate: closed forms within standard errors, invariance, reproducibility."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from y90opt import engine
from y90opt.case import parse_case
from y90opt.simulation import simulate_case

SINGLE = """\
name = "lognormal-volume"
scenario = "radiation-segmentectomy"
[liver]
perfused_volume_ml = { value = 200, cv = 0.15 }
[lung]
shunt_fraction = 0.05
[vials]
calibration = "2026-12-06T12:00:00-05:00"
[plan]
vial_gbq = 3
treatment = "2026-12-10T12:00:00-05:00"
"""


def test_lognormal_volume_gives_lognormal_dose():
    # D_P = c / V with V lognormal(median m, σ) ⇒ D_P lognormal(median c/m, σ): closed-form mean and quantiles
    case = parse_case(SINGLE)
    n = 400_000
    res = simulate_case(case, n=n, seed=3, dtype="float64")
    s = res.summary
    sigma = math.sqrt(math.log(1 + 0.15**2))
    median = s["dose_gy"]["perfused_mean"]["nominal"]
    law = stats.lognorm(s=sigma, scale=median)
    d = s["dose_gy"]["perfused_mean"]
    assert abs(d["mean"] - law.mean()) < 4 * law.std() / math.sqrt(n)
    for key, p in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
        q = law.ppf(p)
        # standard error of a sample quantile: sqrt(p(1-p)/n) / pdf(q)
        se = math.sqrt(p * (1 - p) / n) / law.pdf(q)
        assert abs(d[key] - q) < 4 * se
    # probability of reaching 400 Gy against the closed form, within 4 SE
    p_exact = law.sf(400.0)
    se = math.sqrt(p_exact * (1 - p_exact) / n)
    assert abs(s["p_success"] - p_exact) < 4 * se


def test_standard_error_shrinks_as_inverse_sqrt_n(case_text):
    case = parse_case(case_text)
    ns = [4_000, 16_000, 64_000, 256_000]
    se = [simulate_case(case, n=n, seed=1).summary["dose_gy"]["tumors"]["T1"]["mean_se"] for n in ns]
    slope = np.polyfit(np.log(ns), np.log(se), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.05)


CORRELATED = '\n[[correlations]]\ninputs = ["tumors.T1.volume_ml", "liver.perfused_volume_ml"]\nrho = 0.6\n' \
    '[[correlations]]\ninputs = ["tumors.T1.tn_ratio", "lung.shunt_fraction"]\nrho = -0.3\n'


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("correlated", [False, True])
def test_chunk_size_does_not_change_samples(case_text, dtype, correlated):
    model = engine.Model.from_case(parse_case(case_text + (CORRELATED if correlated else "")))
    n = 20_000
    ref, vref = engine.sample_factors(model, n, seed=7, chunk=n, dtype=dtype)
    for chunk in (n // 4, 4999, 4096, 1000):
        f, v = engine.sample_factors(model, n, seed=7, chunk=chunk, dtype=dtype)
        np.testing.assert_array_equal(f, ref)  # to the last bit
        np.testing.assert_array_equal(v, vref)
    assert ref.dtype == np.dtype(dtype)


def _first_factor_sum(f, valid, in_range):
    import jax.numpy as jnp

    return jnp.sum(jnp.where(in_range, f[:, 0], 0.0)), jnp.sum(in_range)


def test_run_chunks_dispatches_ahead_and_yields_every_chunk_in_order(case_text, monkeypatch):
    """LOOKAHEAD chunks are dispatched beyond the one the caller reads; the chunks come in order with their
    content, and progress(size) follows the caller's taking of each result (the last chunk is the partial one)."""
    model = engine.Model.from_case(parse_case(case_text))
    n, chunk = 10_000, 2048
    f, _ = engine.sample_factors(model, n, seed=5, chunk=chunk, dtype="float64")
    events = []
    compiled = engine._jit_chunk_fn

    def spy(*a, **k):
        fn = compiled(*a, **k)

        def dispatch(key, block0, offset, size, *rest):
            events.append(("dispatch", int(block0) * engine.BLOCK + int(offset)))
            return fn(key, block0, offset, size, *rest)

        return dispatch

    monkeypatch.setattr(engine, "_jit_chunk_fn", spy)
    for total, count in engine.run_chunks(
        model, n, 5, _first_factor_sum, chunk=chunk, dtype="float64", progress=lambda k: events.append(("progress", k))
    ):
        events.append(("result", float(total), int(count)))
    starts = list(range(0, n, chunk))
    sizes = [min(chunk, n - a) for a in starts]
    expected_kinds = ["dispatch"] * (1 + engine.LOOKAHEAD)
    for k in range(len(starts)):
        expected_kinds += ["result", "progress"] + (["dispatch"] if k + 1 + engine.LOOKAHEAD < len(starts) else [])
    assert [e[0] for e in events] == expected_kinds
    assert [e[1] for e in events if e[0] == "dispatch"] == starts
    assert [e[1] for e in events if e[0] == "progress"] == sizes
    results = [e for e in events if e[0] == "result"]
    assert [r[2] for r in results] == sizes
    for (_, total, _), a, size in zip(results, starts, sizes, strict=True):
        assert total == pytest.approx(float(np.sum(f[a : a + size, 0])), rel=1e-12)


def test_chunk_size_does_not_change_results(case_text):
    case = parse_case(case_text)
    a = simulate_case(case, n=30_000, seed=2).summary
    b = simulate_case(case, n=30_000, seed=2, chunk=7_001).summary
    assert a["p_success"] == b["p_success"]
    for k in ("mean", "p05", "p50", "p95"):
        assert a["dose_gy"]["tumors"]["T1"][k] == pytest.approx(b["dose_gy"]["tumors"]["T1"][k], rel=1e-6)


def test_streaming_quantiles_agree_with_exact(case_text):
    case = parse_case(case_text)
    exact = simulate_case(case, n=200_000, seed=4).summary
    stream = simulate_case(case, n=200_000, seed=4, exact_quantile_limit=1000).summary
    assert stream["quantile_method"].startswith("log-spaced")
    rel = stream["quantile_rel_error"]
    for q in ("normal_perfused", "lung"):
        for k in ("p05", "p50", "p95"):
            assert stream["dose_gy"][q][k] == pytest.approx(exact["dose_gy"][q][k], rel=2 * rel + 1e-6)
        assert stream["dose_gy"][q]["mean"] == pytest.approx(exact["dose_gy"][q]["mean"], rel=1e-5)
    assert stream["p_success"] == exact["p_success"]


def test_another_seed_gives_other_numbers(case_text):
    case = parse_case(case_text)
    a = simulate_case(case, n=5_000, seed=1).summary["dose_gy"]["tumors"]["T1"]["mean"]
    b = simulate_case(case, n=5_000, seed=2).summary["dose_gy"]["tumors"]["T1"]["mean"]
    assert a != b


def test_same_seed_same_json_in_fresh_process(case_text, write_case):
    path = write_case(case_text)
    cmd = [sys.executable, "-m", "y90opt.cli", "simulate", path, "--samples", "20000", "--seed", "9", "--json"]
    outs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) for _ in range(2)]
    assert outs[0]["dose_gy"] == outs[1]["dose_gy"]
    assert outs[0]["p_success"] == outs[1]["p_success"]
    assert set(outs[0]["dose_gy"]) >= {"perfused_mean", "normal_perfused", "whole_normal_liver", "lung", "lung_cumulative", "tumors"}
    assert set(outs[0]["dose_gy"]["tumors"]["T1"]) >= {"mean", "p05", "p50", "p95"}


def test_probabilities_match_numpy_reference(case_text):
    # the engine's samples fed to the plain-numpy reference model give the same rule probabilities
    from y90opt.reference import reference_doses

    case = parse_case(case_text)
    model = engine.Model.from_case(case)
    n = 50_000
    x = engine.sample_inputs(model, n, seed=11, dtype="float64")
    s = 7 * 2 ** (-72 / 64.1)
    ref = reference_doses(
        s * x["delivery.activity_factor"], x["liver.perfused_volume_ml"], x["tumors.T1.volume_ml"][:, None],
        x["tumors.T1.tn_ratio"][:, None], np.array([True]), x["lung.shunt_fraction"], x["lung.mass_kg"],
        x["delivery.residual_fraction"], x["liver.whole_liver_volume_ml"], 0.0,
    )
    # valid samples: the tumour fits in its territory, the territory in the whole liver
    ok = (x["liver.perfused_volume_ml"] > x["tumors.T1.volume_ml"]) & (x["liver.perfused_volume_ml"] <= x["liver.whole_liver_volume_ml"])
    res = simulate_case(case, n=n, seed=11, dtype="float64").summary
    p_ntad = np.mean(ref["normal_perfused"][ok] <= 120)
    p_tumor = np.mean(ref["tumors"][ok, 0] >= 205)
    rules = {r["label"]: r["probability"] for r in res["rules"]}
    assert rules["ntad"] == pytest.approx(p_ntad, abs=1e-12)
    assert rules["tumor:T1"] == pytest.approx(p_tumor, abs=1e-12)


def test_unphysical_samples_stop_the_run(case_text):
    from y90opt.engine import UnphysicalSamplesError

    t = case_text.replace("volume_ml = { value = 180, cv = 0.17 }", "volume_ml = { value = 900, cv = 0.5 }")
    with pytest.raises(UnphysicalSamplesError, match="tumors"):
        simulate_case(parse_case(t), n=10_000, seed=0)


def test_copula_rank_correlation(case_text):
    # Gaussian copula with ρ: Spearman rank correlation = (6/π) asin(ρ/2)
    t = case_text + '\n[[correlations]]\ninputs = ["tumors.T1.volume_ml", "liver.perfused_volume_ml"]\nrho = 0.6\n'
    model = engine.Model.from_case(parse_case(t))
    n = 100_000
    x = engine.sample_inputs(model, n, seed=5, dtype="float64")
    r = stats.spearmanr(x["tumors.T1.volume_ml"], x["liver.perfused_volume_ml"]).statistic
    expected = 6 / math.pi * math.asin(0.3)
    # Spearman's rho on the Fisher scale: var(atanh r_s) ≈ (1 + r²/2)/(n − 3) (Bonett & Wright 2000)
    se = math.sqrt((1 + expected**2 / 2) / (n - 3))
    assert abs(math.atanh(r) - math.atanh(expected)) < 4 * se


def test_netcdf_round_trip(case_text, tmp_path):
    import xarray as xr

    from y90opt.results import read_netcdf, write_netcdf

    res = simulate_case(parse_case(case_text), n=2_000, seed=0, keep_samples=True)
    p = tmp_path / "sim.nc"
    write_netcdf(res.dataset, p)
    back = read_netcdf(p)
    xr.testing.assert_allclose(back[["mean", "p05", "p95", "probability"]], res.dataset[["mean", "p05", "p95", "probability"]])
    assert back.attrs["case_toml"] == case_text
    assert back["mean"].attrs["long_name"]
    assert back["samples"].shape == (2_000 - back.attrs["unphysical_sample_count"], len(back["quantity"]))


def test_chunk_invariance_with_the_example_copula():
    # the shipped example (two tumours, five correlated inputs): XLA reductions over the tumour axis changed ~7000
    # of 240000 factors between chunk sizes (summation order); the fixed-order sums must not
    import pathlib

    from y90opt.case import load_case

    path = pathlib.Path(__file__).resolve().parents[1] / "configs/examples/multifocal-unilobar.toml"
    model = engine.Model.from_case(load_case(path))
    a, _ = engine.sample_factors(model, 20_000, seed=7, chunk=20_000, dtype="float32")
    b, _ = engine.sample_factors(model, 20_000, seed=7, chunk=1000, dtype="float32")
    np.testing.assert_array_equal(a, b)


def test_wilson_interval_closed_forms():
    from y90opt.simulation import wilson_interval

    # Wilson 95 % interval, by hand: 0 of 100 gives [0, z²/(n + z²)] = [0, 3.8415/103.8415];
    # 50 of 100 gives 0.5 ± z·sqrt(0.0025 + z²/4n²)/(1 + z²/n) = 0.5 ± 0.09617
    lo, hi = wilson_interval(0.0, 100)
    assert lo == 0.0 and hi == pytest.approx(3.841459 / 103.841459, rel=1e-6)
    lo, hi = wilson_interval(0.5, 100)
    assert (lo, hi) == pytest.approx((0.40383, 0.59617), abs=1e-5)


# --- the float32 random stream: threefry-2×32 words, both used, checked against plain numpy ----------------

_THREEFRY_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def _threefry2x32_numpy(key: tuple[int, int], x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2×32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
    in plain numpy uint32 arithmetic."""
    with np.errstate(over="ignore"):
        k0, k1 = np.uint32(key[0]), np.uint32(key[1])
        ks = (k0, k1, np.uint32(k0 ^ k1 ^ np.uint32(0x1BD11BDA)))
        x0 = x0.astype(np.uint32) + ks[0]
        x1 = x1.astype(np.uint32) + ks[1]
        for group in range(5):
            for r in _THREEFRY_ROTATIONS[4 * (group % 2) : 4 * (group % 2) + 4]:
                x0 = x0 + x1
                x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
                x1 = x1 ^ x0
            x0 = x0 + ks[(group + 1) % 3]
            x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


@pytest.mark.parametrize(
    "key, counter, expected",
    [  # known-answer vectors of Random123 (kat_vectors, threefry2x32_20)
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_numpy_threefry_reference_known_answers(key, counter, expected):
    y0, y1 = _threefry2x32_numpy(key, np.array([counter[0]], np.uint32), np.array([counter[1]], np.uint32))
    assert (int(y0[0]), int(y1[0])) == expected


def test_float32_block_words_are_both_halves_of_each_threefry_hash():
    """A float32 block is BLOCK·D words: hash i of counters (i, i + m) gives words i and i + m. The normals are
    exactly those words through jax.random.normal's conversion."""
    import jax

    n_dims = 3
    block_key = jax.random.fold_in(engine.make_key(20261126), 7)
    kd = np.asarray(jax.random.key_data(block_key), np.uint32)
    m = engine.BLOCK * n_dims // 2
    idx = np.arange(m, dtype=np.uint32)
    y0, y1 = _threefry2x32_numpy((int(kd[0]), int(kd[1])), idx, idx + np.uint32(m))
    words = np.concatenate([y0, y1])
    expected = np.asarray(engine._normal_from_bits32(jax.numpy.asarray(words))).reshape(engine.BLOCK, n_dims)
    got = np.asarray(engine.block_normals(block_key, n_dims, "float32"))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_word_to_normal_conversion_is_jax_random_normal():
    """The same words give the same float32 normals, bit for bit, as jax.random.normal does from them."""
    import jax

    k = jax.random.key(3)
    shape = (1 << 16,)
    ours = engine._normal_from_bits32(jax.random.bits(k, shape, jax.numpy.uint32))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.random.normal(k, shape, jax.numpy.float32)))


def test_float32_variates_are_independent_standard_normals():
    """2¹⁹ float32 variates in 8 columns: each column N(0, 1) (KS), moments within 5 SE, and no correlation
    between the two words of one hash (sample j and sample j + BLOCK/2 of a block) or between columns."""
    import jax.numpy as jnp

    n, d = 1 << 16, 8
    z = np.asarray(engine.variates(engine.make_key(11), jnp.asarray(0, jnp.uint32), n, d, jnp.float32, True))
    z = z.astype(np.float64)
    assert np.isfinite(z).all()
    for j in range(d):
        assert stats.kstest(z[:, j], "norm").pvalue > 1e-4
        assert abs(z[:, j].mean()) < 5 / math.sqrt(n)
        assert abs(z[:, j].var() - 1) < 5 * math.sqrt(2 / n)
    half = engine.BLOCK // 2
    blocks = z.reshape(-1, engine.BLOCK, d)
    pairs_a = blocks[:, :half, :].reshape(-1)
    pairs_b = blocks[:, half:, :].reshape(-1)
    assert abs(np.corrcoef(pairs_a, pairs_b)[0, 1]) < 5 / math.sqrt(pairs_a.size)
    c = np.corrcoef(z, rowvar=False)
    assert np.abs(c[np.triu_indices(d, 1)]).max() < 5 / math.sqrt(n)


@pytest.mark.skipif(not hasattr(__import__("jax"), "threefry_partitionable"), reason="JAX without the flag")
@pytest.mark.parametrize("n_dims", [1, 3, 8])
def test_float32_block_is_jax_non_partitionable_normal_stream(n_dims):
    """A second oracle: the float32 block equals jax.random.normal in JAX's non-partitionable threefry mode."""
    import jax

    block_key = jax.random.fold_in(engine.make_key(42), 3)
    with jax.threefry_partitionable(False):
        expected = np.asarray(jax.random.normal(block_key, (engine.BLOCK, n_dims), jax.numpy.float32))
    np.testing.assert_array_equal(np.asarray(engine.block_normals(block_key, n_dims, "float32")), expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_numbers_do_not_follow_jax_default_prng_setting(case_text, dtype):
    """A seed's numbers are threefry's whatever jax_default_prng_impl says (rbg here)."""
    import jax

    model = engine.Model.from_case(parse_case(case_text))
    ref = engine.sample_inputs(model, 5000, seed=9, dtype=dtype)
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        got = engine.sample_inputs(model, 5000, seed=9, dtype=dtype)
    finally:
        jax.config.update("jax_default_prng_impl", old)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


_FAR_CHUNKS = """
import json, sys
import jax
import numpy as np
from y90opt import engine
from y90opt.case import parse_case

assert not jax.config.jax_enable_x64  # as a float32 CLI run: no 64-bit integers on the device
model = engine.Model.from_case(parse_case(sys.stdin.read()))
key = engine.make_key(3)
fn = engine._jit_chunk_fn(model, 4096, "float32", None, False)
numbers = engine.model_numbers(model, "float32")
out = {}
for start in (3_000_000_123, 5_000_000_123, 10**12 - 5000):  # beyond 2**31, beyond 2**32, the CLI's limit
    f, _, r = fn(key, *engine._position(start, 4000), numbers)
    g, _, _ = fn(key, *engine._position(start - 100, 4096), numbers)  # the same samples, chunked differently
    out[str(start)] = [int(np.sum(r)), bool(np.array_equal(np.asarray(f)[:3996], np.asarray(g)[100:])),
                       bool(np.isfinite(np.asarray(f)).all())]
print(json.dumps(out))
"""


def test_sample_indices_beyond_two_to_the_31_without_x64(case_text):
    """Chunks far into a long run (up to 10¹² samples, the CLI's limit) work in a process without JAX's x64
    mode, mask their padding right and slice the same numbers whatever the chunking."""
    res = subprocess.run([sys.executable, "-c", _FAR_CHUNKS], input=case_text, capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"})
    for start, (in_range, same, finite) in json.loads(res.stdout).items():
        assert in_range == 4000, start
        assert same and finite, start


def test_a_key_addresses_at_most_two_to_the_32_blocks():
    last = (2**32 - 2) * engine.BLOCK  # block 2**32 - 1 tags the D70 ratios' streams (engine.RATIO_STREAM)
    engine._position(last, engine.BLOCK)
    with pytest.raises(ValueError, match="beyond"):
        engine._position((2**32 - 1) * engine.BLOCK, 1)
    with pytest.raises(ValueError, match="beyond"):
        engine._position(2**32 * engine.BLOCK, 1)
    with pytest.raises(ValueError, match="beyond"):  # a chunk whose later samples would wrap to block 0
        engine._position(last, 2 * engine.BLOCK)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cgroup_memory_headroom(tmp_path, version):
    proc = tmp_path / "cgroup"
    if version == "v2":
        proc.write_text("0::/box/job\n")
        d = tmp_path / "box" / "job"
        d.mkdir(parents=True)
        (d / "memory.max").write_text("1000000\n")
        (d / "memory.current").write_text("250000\n")
    else:
        proc.write_text("4:memory:/box\n")
        d = tmp_path / "memory"
        d.mkdir()
        (d / "memory.limit_in_bytes").write_text("1000000\n")
        (d / "memory.usage_in_bytes").write_text("250000\n")
    assert engine._cgroup_headroom(str(tmp_path), str(proc)) == 750_000
    (d / ("memory.max" if version == "v2" else "memory.limit_in_bytes")).write_text(
        "max\n" if version == "v2" else f"{2**63 - 4096}\n")
    assert engine._cgroup_headroom(str(tmp_path), str(proc)) is None  # no limit
    assert engine._cgroup_headroom(str(tmp_path / "nowhere"), str(tmp_path / "none")) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streaming_statistics_are_bit_identical_for_any_chunk(dtype):
    """Above the exact-quantile limit simulate streams; its sums are kept per random block and folded in
    block order, so the JSON is byte-identical for any chunk size (not only within rounding)."""
    import pathlib

    from y90opt.case import load_case
    from y90opt.textout import dumps

    root = pathlib.Path(__file__).resolve().parents[1]
    case = load_case(root / "configs" / "examples" / "multifocal-unilobar.toml")
    outs = {c: dumps(simulate_case(case, n=30_000, seed=4, chunk=c, dtype=dtype, exact_quantile_limit=100).summary)
            for c in (None, 1000, 4096, 9000, 50_000)}
    assert len(set(outs.values())) == 1


def test_cases_of_one_structure_share_one_compile_and_none_leaks_its_numbers(case_text):
    """Two cases differing only in numbers (a cohort's patients) reuse one compiled chunk function; the second
    case's factors through the first case's compile equal those of a fresh compile of the second alone, bit for
    bit (so no number of the first case is baked into the shared computation), and differ from the first's."""
    import tomllib

    import tomli_w

    doc = tomllib.loads(case_text)
    a = engine.Model.from_case(parse_case(tomli_w.dumps(doc)))
    doc["liver"]["perfused_volume_ml"]["value"] = 0.9 * doc["liver"]["perfused_volume_ml"]["value"]
    doc["lung"]["prior_dose_gy"] = 7.0
    b = engine.Model.from_case(parse_case(tomli_w.dumps(doc)))
    assert a.structure() == b.structure() and a.numbers(np.float32) != b.numbers(np.float32)
    engine._compiled_chunk_fn.cache_clear()
    fa, _ = engine.sample_factors(a, 5000, seed=2)
    fb_shared, _ = engine.sample_factors(b, 5000, seed=2)
    info = engine._compiled_chunk_fn.cache_info()
    assert info.misses == 1 and info.hits >= 1
    engine._compiled_chunk_fn.cache_clear()
    fb_alone, _ = engine.sample_factors(b, 5000, seed=2)
    assert np.array_equal(fb_shared, fb_alone)
    assert not np.array_equal(fa, fb_shared)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_uncertain_d70_ratio_moves_no_other_inputs_draws(dtype):
    """The tumours' D70 ratios are drawn from streams of their own: the same case with no ratio, a fixed one or
    an uncertain one gives every other input the same values, sample by sample; a second tumour's uncertain
    ratio moves neither those nor the first ratio's draws; an untreated tumour's ratio is no input at all."""
    import copy
    import pathlib
    import tomllib

    import tomli_w

    root = pathlib.Path(__file__).resolve().parents[1]
    doc = tomllib.loads((root / "configs/examples/multifocal-unilobar.toml").read_text(encoding="utf-8"))
    uncertain = {"value": 0.8, "cv": 0.05}
    variants = {"none": {}, "fixed": {0: 0.8}, "one": {0: uncertain}, "two": {0: uncertain, 1: {"value": 0.9, "cv": 0.1}}}
    draws = {}
    for name, ratios in variants.items():
        d = copy.deepcopy(doc)
        for i, r in ratios.items():
            d["tumors"][i]["d70_ratio"] = r
        case = parse_case(tomli_w.dumps(d), "case.toml")
        draws[name] = engine.sample_inputs(engine.Model.from_case(case), 64, 7, dtype)
    for name in ("fixed", "one", "two"):
        for path, values in draws["none"].items():
            np.testing.assert_array_equal(draws[name][path], values)
    np.testing.assert_array_equal(draws["two"]["tumors.T1.d70_ratio"], draws["one"]["tumors.T1.d70_ratio"])
    assert np.ptp(draws["one"]["tumors.T1.d70_ratio"]) > 0 and "tumors.T1.d70_ratio" not in draws["none"]
    assert not np.allclose(draws["two"]["tumors.T2.d70_ratio"] / 0.9, draws["two"]["tumors.T1.d70_ratio"] / 0.8)
    d = copy.deepcopy(doc)
    d["tumors"][1]["d70_ratio"], d["tumors"][1]["treated"] = uncertain, False
    case = parse_case(tomli_w.dumps(d), "case.toml")
    assert "tumors.T2.d70_ratio" not in case.inputs and case.ratio_inputs == ()
