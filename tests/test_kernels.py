"""Dose kernels: the dose-voxel kernel against an independent quadrature, MIRD Pamphlet 17's voxel S values,
energy conservation, a sphere's absorbed fraction, the FFT convolution against scipy, kernel tables."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import numpy as np
import pytest

from y90opt.errors import InputError
from y90opt.kernels import (
    MEAN_BETA_ENERGY_MEV,
    RadialKernel,
    loevinger_kernel,
    read_radial_kernel,
    sphere_absorbed_fraction,
    voxel_kernel,
)

MEV_J = 1.602176634e-13


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def _direct_share(radial: RadialKernel, a, offset, directions: int = 6000, nodes: int = 12) -> float:
    """The independent reference: S(d) = ∫ F'(r) <g(r ω − d a)>_ω / V dr, g the voxel's covariogram
    Π (a_i − |h_i|)+, by Gauss-Legendre in each shell and a Fibonacci sphere of directions (plain numpy)."""
    a, d = np.asarray(a, float), np.asarray(offset, float) * np.asarray(a, float)
    w_dir = _fibonacci_sphere(directions)
    x, w = np.polynomial.legendre.leggauss(nodes)
    reach = float(np.linalg.norm(np.abs(d) + a))
    total = 0.0
    for lo, hi, share in zip(radial.edges_mm[:-1], radial.edges_mm[1:], radial.fractions, strict=True):
        if lo > reach or share == 0:
            continue
        r = 0.5 * (hi - lo) * (x + 1) + lo
        h = r[:, None, None] * w_dir[None] - d
        g = np.clip(1 - np.abs(h) / a, 0, None).prod(axis=-1).mean(axis=1)
        total += share / (hi - lo) * 0.5 * (hi - lo) * float(np.sum(w * g))
    return total


@pytest.fixture(scope="module")
def coarse_loevinger():
    return loevinger_kernel(shell_mm=0.05, r_max_mm=14.0)  # fewer shells: the reference quadrature's cost


@pytest.mark.parametrize("spacing,offsets", [((3.0, 3.0, 3.0), [(0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 1)]),
                                             ((4.0, 4.0, 2.5), [(0, 0, 0), (0, 0, 1), (1, 0, 1)])])
def test_voxel_kernel_equals_an_independent_quadrature(coarse_loevinger, spacing, offsets):
    kern = voxel_kernel(coarse_loevinger, spacing)
    c = np.array(kern.shape) // 2
    for off in offsets:
        ref = _direct_share(coarse_loevinger, spacing, off)
        got = kern[tuple(c + np.array(off))]
        assert got == pytest.approx(ref, rel=3e-3, abs=2e-5), off


def test_mird17_voxel_s_values_for_y90():
    """MIRD Pamphlet 17 (Bolch et al., J Nucl Med 40 (1999) 11S-36S, Y-90 in soft tissue, 1.04 g/cm³): S of the
    source voxel 1.61 mGy/(MBq s) for 3 mm voxels and 0.346 for 6 mm. Loevinger's approximation gives 6.5 % and
    5.1 % less (its shortfall for Y-90, stated in y90opt.kernels and the README): pinned to it within 0.2
    percentage points (the kernel is deterministic; its Richardson error is about 0.05 %)."""
    radial = loevinger_kernel(density_g_per_ml=1.04)
    for side, mird in ((3.0, 1.61), (6.0, 0.346)):
        kern = voxel_kernel(radial, (side,) * 3)
        share = kern[tuple(np.array(kern.shape) // 2)]
        mass_kg = (side / 10.0) ** 3 * 1.04 / 1000.0
        s = 1e6 * MEAN_BETA_ENERGY_MEV * MEV_J * share / mass_kg * 1000.0  # mGy per MBq s
        assert s / mird - 1.0 == pytest.approx({3.0: -0.0648, 6.0: -0.0509}[side], abs=0.002), (side, s)


LANCONELLI_3MM = pathlib.Path(__file__).parent / "data" / "lanconelli2012_90Y_3mm_soft.txt"
#: Voxel S values of Y-90 in soft tissue [mGy/(MBq s)] from the same database (Lanconelli et al., Phys. Med.
#: Biol. 57 (2012) 517-533; files 90Y<size>mmsoft.txt): the source voxel, a face, an edge and a corner neighbour.
LANCONELLI_S = {2.21: {(0, 0, 0): 3.00, (0, 0, 1): 0.570, (0, 1, 1): 0.226, (1, 1, 1): 0.120},
                4.8: {(0, 0, 0): 0.573, (0, 0, 1): 0.0763, (0, 1, 1): 0.0178, (1, 1, 1): 0.00507},
                6.0: {(0, 0, 0): 0.342, (0, 0, 1): 0.0380, (0, 1, 1): 0.00686, (1, 1, 1): 0.00145}}


def _lanconelli_3mm() -> dict[tuple[int, int, int], float]:
    """The tests' copy of the published 3 mm table, read by plain Python (independent of the reader under
    test): S [mGy/(MBq s)] by octant offset."""
    table = {}
    for line in LANCONELLI_3MM.read_bytes().decode("latin-1").splitlines()[2:]:
        if line.strip():
            i, j, k, v = line.split()
            table[(int(i), int(j), int(k))] = float(v)
    return table


def _s_value(kern: np.ndarray, side: float, offset, density: float = 1.04) -> float:
    """A voxel kernel's share at ``offset`` as S [mGy/(MBq s)] in a medium of ``density``."""
    share = kern[tuple(np.array(kern.shape) // 2 + np.array(offset))]
    return 1e6 * MEAN_BETA_ENERGY_MEV * MEV_J * share / ((side / 10.0) ** 3 * density / 1000.0) * 1000.0


@pytest.fixture(scope="module")
def fitted_to_lanconelli():
    return read_radial_kernel(str(LANCONELLI_3MM))


def test_a_kernel_fitted_to_a_published_voxel_s_table_gives_its_other_voxel_sizes(fitted_to_lanconelli):
    """The radial kernel fitted to the database's 3 mm table (the tests' copy, its own layout): its voxel
    kernels give the same database's 2.21, 4.8 and 6 mm values of the source voxel and its face, edge and
    corner neighbours within 0.6 % (they differ by 0.5 % at most), and MIRD Pamphlet 17's source-voxel S values
    (Bolch et al. 1999, another Monte Carlo: 1.61 and 0.346 mGy/(MBq s) at 3 and 6 mm) within 1.5 % (1.2 and
    0.95 % low, as the database itself is); the 3 mm table itself within 0.5 %."""
    radial = fitted_to_lanconelli
    assert radial.density_g_per_ml == 1.04 and "Lanconelli" in radial.source
    assert 0.99 < radial.total <= 1.0
    table = _lanconelli_3mm()
    kern3 = voxel_kernel(radial, (3.0, 3.0, 3.0))
    for off in ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1), (0, 0, 2)):
        assert _s_value(kern3, 3.0, off) == pytest.approx(table[off], rel=5e-3), off
    for side, values in LANCONELLI_S.items():
        kern = voxel_kernel(radial, (side,) * 3)
        for off, want in values.items():
            assert _s_value(kern, side, off) == pytest.approx(want, rel=6e-3), (side, off)
    for side, mird in ((3.0, 1.61), (6.0, 0.346)):
        assert _s_value(voxel_kernel(radial, (side,) * 3), side, (0, 0, 0)) == pytest.approx(mird, rel=1.5e-2)


def test_a_voxel_s_table_with_a_density_line_and_another_title(tmp_path, fitted_to_lanconelli):
    """A '# density_g_per_ml:' line before the title (the CSV tables' convention) still reads as a voxel S table,
    and a title written '90Y3mm soft tissue' names Y-90: both give the same fit as the database's own file."""
    text = LANCONELLI_3MM.read_bytes().decode("latin-1")
    path = tmp_path / "t.txt"
    path.write_bytes(("# density_g_per_ml: 1.04\n" + text.replace("Y90 - 3mm - Soft tissue", "90Y3mm soft tissue"))
                     .encode("latin-1"))
    got = read_radial_kernel(str(path))
    assert np.allclose(got.fractions, fitted_to_lanconelli.fractions, rtol=1e-9, atol=1e-12)


def test_the_built_in_kernel_is_the_fit_to_the_published_table(fitted_to_lanconelli):
    """The shipped shell shares are what the fit to the tests' copy of the table gives (so the built-in kernel's
    validation above is that of the fit), and `voxel --method kernel` uses them unless told otherwise."""
    from y90opt.kernels import default_kernel

    built_in = default_kernel()
    assert np.allclose(built_in.edges_mm, fitted_to_lanconelli.edges_mm)
    assert np.allclose(built_in.fractions, fitted_to_lanconelli.fractions, rtol=1e-5, atol=1e-9)
    assert built_in.density_g_per_ml == fitted_to_lanconelli.density_g_per_ml


def test_loevingers_approximation_against_the_published_voxel_s_table():
    """Loevinger's function against the database's 3 mm table: the source voxel 5.3 % low, the face, edge and
    corner neighbours 2.4, 3.2 and 3.8 % low, the next face neighbour 2.2 % low (it carries more of Y-90's
    energy beyond 6 mm): pinned, so that the README's statement of its error stays true."""
    table = {(0, 0, 0): 1.59, (0, 0, 1): 0.275, (0, 1, 1): 0.0950, (1, 1, 1): 0.0429, (0, 0, 2): 0.0205}
    kern = voxel_kernel(loevinger_kernel(density_g_per_ml=1.04), (3.0, 3.0, 3.0))
    got = {off: _s_value(kern, 3.0, off) / want - 1.0 for off, want in table.items()}
    assert got == pytest.approx({(0, 0, 0): -0.053, (0, 0, 1): -0.024, (0, 1, 1): -0.032, (1, 1, 1): -0.038,
                                 (0, 0, 2): -0.022}, abs=0.002)


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("Soft tissue", "Bone"), "names no soft tissue"),
    (lambda t: t.replace("Y90 - 3mm", "Lu177 - 3mm"), "names no Y-90"),
    (lambda t: t.replace("3mm", "three"), "no voxel size"),
    (lambda t: t.replace("1.59E+00", "1.59E+03"), "holds"),
    (lambda t: t.replace("2.75E-01", "x"), "expected 'i j k S'"),
    (lambda t: t.replace("mGy", "Gy"), "mGy/(MBq s)"),
    (lambda t: "\r\n".join(t.splitlines()[:2] + ["# no rows"]), "no 'i j k S' rows"),
    (lambda t: "# density_g_per_ml: 0.3\r\n" + t, "expected soft tissue"),
])
def test_a_bad_voxel_s_table_is_one_line(tmp_path, edit, words):
    text = LANCONELLI_3MM.read_bytes().decode("latin-1")
    path = tmp_path / "bad.txt"
    path.write_bytes(edit(text).encode("latin-1"))
    with pytest.raises(InputError) as e:
        read_radial_kernel(str(path))
    assert words in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(path))


def test_the_kernel_conserves_energy_and_a_uniform_medium_gets_the_local_dose():
    """Σ kernel = the radial kernel's share; deep inside a uniform source in a uniform medium the kernel dose
    is the local-deposition dose."""
    import jax.numpy as jnp

    from y90opt.kernels import _lattice_kernel
    from y90opt.voxel_dosimetry import kernel_dose, ldm_dose

    radial = loevinger_kernel()
    kern = voxel_kernel(radial, (4.0, 4.0, 4.0))
    # the Fourier sums themselves conserve the energy (before the clip of round-off tails and its renormalisation)
    a, n = np.full(3, 4.0), np.array(kern.shape) // 2
    q = np.linspace(0.0, float(np.sqrt(np.sum((np.pi * 8 / a) ** 2))) * 1.0001, 16384)
    for s in (8, 4):
        raw = _lattice_kernel(radial, a, n, s, (q, radial.transform(q)))
        assert raw.sum() == pytest.approx(radial.total, rel=1e-9)
    assert kern.sum() == pytest.approx(radial.total, rel=1e-12)
    assert np.allclose(kern, kern[::-1, ::-1, ::-1], rtol=1e-9, atol=1e-15)  # symmetric
    activity = np.ones((40, 40, 40)) * 0.01
    density = np.full(activity.shape, 1.04)
    voxel_ml = 0.064
    kd = np.asarray(kernel_dose(jnp.asarray(50.0 * activity), jnp.asarray(kern), jnp.asarray(density), voxel_ml))
    ld = np.asarray(ldm_dose(jnp.asarray(activity), jnp.asarray(density), voxel_ml, 50.0))
    inner = (slice(12, 28),) * 3
    assert kd[inner] == pytest.approx(ld[inner] * radial.total, rel=2e-5)


def test_the_closed_form_sphere_absorbed_fraction_and_the_kernel_dose_of_a_voxelised_sphere():
    """The share of the energy a uniform sphere keeps: the closed form P(r) against a seeded Monte Carlo, and
    the kernel convolution of a voxelised sphere (2 mm voxels, R = 12 mm) against the closed form."""
    import jax.numpy as jnp

    from y90opt.voxel_dosimetry import kernel_dose

    radial = loevinger_kernel()
    rng = np.random.default_rng(7)
    n, radius = 400_000, 12.0
    p = rng.normal(size=(n, 3))
    p *= (radius * rng.random(n) ** (1 / 3) / np.linalg.norm(p, axis=1))[:, None]
    u = rng.random(n)  # distances drawn from the kernel by its cumulative share
    cum = np.concatenate([[0.0], np.cumsum(radial.fractions)]) / radial.total
    r = np.interp(u, cum, radial.edges_mm)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    kept = np.linalg.norm(p + r[:, None] * direction, axis=1) <= radius
    mc, se = kept.mean() * radial.total, kept.std() / np.sqrt(n)
    phi = sphere_absorbed_fraction(radial, radius)
    assert abs(phi - mc) < 4 * se
    errors = []
    for side, m in ((2.0, 40), (1.0, 48)):  # the voxelised sphere's staircase surface leaks more than a sphere
        idx = (np.indices((m, m, m)) - (m - 1) / 2) * side
        sphere = (idx ** 2).sum(axis=0) <= radius ** 2
        r_eq = (3 * sphere.sum() * side ** 3 / (4 * np.pi)) ** (1 / 3)  # the voxel sphere's own radius
        energy = sphere * 1.0
        dose = np.asarray(kernel_dose(jnp.asarray(energy), jnp.asarray(voxel_kernel(radial, (side,) * 3)),
                                      jnp.full(energy.shape, 1.04), side ** 3 / 1000))
        kept_share = float((dose * 1.04 * side ** 3 / 1e6)[sphere].sum() / energy.sum())
        errors.append(kept_share / sphere_absorbed_fraction(radial, r_eq) - 1.0)
    assert -0.02 < errors[0] < 0 and -0.01 < errors[1] < 0  # -1.6 % at 2 mm, -0.6 % at 1 mm
    assert abs(errors[1]) < 0.5 * abs(errors[0])  # and it shrinks with the voxel


def test_fft_convolution_equals_scipy():
    import jax.numpy as jnp
    from scipy.signal import fftconvolve

    from y90opt.voxel_dosimetry import fft_convolve

    rng = np.random.default_rng(3)
    x = rng.random((30, 25, 20))
    k = rng.random((7, 9, 5))
    ours = np.asarray(fft_convolve(jnp.asarray(x, dtype=jnp.float32), jnp.asarray(k, dtype=jnp.float32)))
    np.testing.assert_allclose(ours, fftconvolve(x, k, mode="same"), rtol=2e-5, atol=2e-5 * fftconvolve(x, k).max())


def _write_table(path, radial: RadialKernel, source="a published table"):
    lines = [f"# source: {source}", "# density_g_per_ml: 1.04", "r_mm,fraction"]
    lines += [f"{r:.6g},{f:.9g}" for r, f in zip(radial.edges_mm[1:], radial.fractions, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_kernel_tables_read_and_bad_ones_refused(tmp_path):
    radial = loevinger_kernel(shell_mm=0.1)
    _write_table(tmp_path / "k.csv", radial)
    read = read_radial_kernel(str(tmp_path / "k.csv"))
    assert read.source == "a published table" and read.density_g_per_ml == 1.04
    np.testing.assert_allclose(read.fractions, radial.fractions, rtol=1e-8)
    # a Graves et al. radial dose file: a title line, a header, five columns (r cm, MeV per decay, ...)
    rows = [f"{r / 10:.6g},{f * MEAN_BETA_ENERGY_MEV:.9g},0,1,1" for r, f in zip(radial.edges_mm[1:], radial.fractions,
                                                                                 strict=True)]
    (tmp_path / "90Y_beta.csv").write_text("Y-90 beta\nr,E,dE,m,D\n" + "\n".join(rows) + "\n", encoding="utf-8")
    graves = read_radial_kernel(str(tmp_path / "90Y_beta.csv"))
    assert graves.total == pytest.approx(1.0) and graves.density_g_per_ml == 1.0
    np.testing.assert_allclose(graves.fractions, radial.fractions / radial.total, rtol=1e-7)
    bad = {
        "nosource.csv": "r_mm,fraction\n1,0.5\n2,0.4\n",
        "over.csv": "# source: x\nr_mm,fraction\n1,0.7\n2,0.6\n",
        "order.csv": "# source: x\nr_mm,fraction\n2,0.5\n1,0.4\n",
        "text.csv": "# source: x\nr_mm,fraction\n1,0.5\n2,abc\n",
        "lu177.csv": "t\nh\n0.1,0.1,0,1,1\n0.2,0.03,0,1,1\n",
    }
    from y90opt.errors import InputError

    for name, text in bad.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=name):
            read_radial_kernel(str(tmp_path / name))


def _cli(argv):
    from y90opt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_voxel_kernel_method_end_to_end(tmp_path):
    """`voxel --method kernel` on the phantom: the hot tumour's mean falls below its local-deposition mean (its
    energy leaks into the normal tissue around it), the kernel named in the JSON, a kernel table given on the
    command line used, and a bad table or a table with ldm refused with one line."""
    from y90opt.phantoms import PHANTOM_CASE, make_phantom

    ph = make_phantom(n=40, voxel_mm=5.0, lsf=0.07)
    ph.write_nifti(str(tmp_path))
    (tmp_path / "case.toml").write_text(PHANTOM_CASE, encoding="utf-8")
    assert _cli(["measure", str(tmp_path / "case.toml"), "-o", str(tmp_path / "m.toml")])[0] == 0
    code, out, _ = _cli(["voxel", str(tmp_path / "m.toml"), "--json"])
    ldm = json.loads(out)
    code, out, _ = _cli(["voxel", str(tmp_path / "m.toml"), "--method", "kernel", "--json"])
    assert code == 0
    ker = json.loads(out)
    assert "Lanconelli" in ker["kernel"]["source"] and "built in" in ker["kernel"]["source"] and ker["method"] == "kernel"
    code, out, _ = _cli(["voxel", str(tmp_path / "m.toml"), "--method", "kernel", "--kernel", "loevinger", "--json"])
    assert code == 0 and "Loevinger" in json.loads(out)["kernel"]["source"]
    assert ker["vois"]["tumors"]["T1"]["mean_gy"] < 0.95 * ldm["vois"]["tumors"]["T1"]["mean_gy"]
    assert ker["vois"]["tumors"]["T1"]["d95_gy"] >= 0
    assert 0.8 < ker["kernel"]["absorbed_share"] <= 1.0
    _write_table(tmp_path / "k.csv", loevinger_kernel(shell_mm=0.1), source="the test's own table")
    code, out, _ = _cli(["voxel", str(tmp_path / "m.toml"), "--method", "kernel", "--kernel", str(tmp_path / "k.csv"),
                         "--json"])
    assert code == 0 and json.loads(out)["kernel"]["source"].startswith("the test's own table")
    (tmp_path / "bad.csv").write_text("r_mm,fraction\n1,0.5\n", encoding="utf-8")
    code, _, err = _cli(["voxel", str(tmp_path / "m.toml"), "--method", "kernel", "--kernel", str(tmp_path / "bad.csv")])
    assert code == 2 and "bad.csv" in err and err.count("\n") == 1
    code, _, err = _cli(["voxel", str(tmp_path / "m.toml"), "--kernel", str(tmp_path / "k.csv")])
    assert code == 2 and "--kernel" in err


def test_the_leakage_at_a_territory_edge_against_the_published_voxel_s_table(fitted_to_lanconelli):
    """A uniform source filling a half-space (a territory's flat edge), 3 mm voxels: the share of the equilibrium
    dose in the 1st, 2nd and 3rd voxel layers outside the edge, from the published 3 mm table itself (plain
    numpy: Σ of S over the offsets that reach past the edge, over Σ S: 19.46 %, 2.05 % and 0.085 %), against the
    FFT convolution (voxel_dosimetry.kernel_dose) with the kernel fitted to that table: within 0.5 % in the
    first two layers and 10 % in the third. Loevinger's approximation leaks too far: 5 % more into the first
    layer, 44 % more into the second, five times as much into the third (pinned)."""
    import jax.numpy as jnp

    from y90opt.voxel_dosimetry import kernel_dose

    full = np.zeros((11, 11, 11))
    for (i, j, k), v in _lanconelli_3mm().items():  # the octant mirrored into the whole cube
        for a in {i, -i}:
            for b in {j, -j}:
                for c in {k, -k}:
                    full[5 + a, 5 + b, 5 + c] = v
    published = np.array([full[5 + n:].sum() for n in (1, 2, 3)]) / full.sum()
    assert published == pytest.approx([0.1946, 0.0205, 0.00085], rel=6e-3)
    side, m = 3.0, 48
    energy = np.zeros((m, 20, 20))
    energy[m // 2:] = 1.0

    def outside(radial):
        dose = np.asarray(kernel_dose(jnp.asarray(energy), jnp.asarray(voxel_kernel(radial, (side,) * 3)),
                                      jnp.full(energy.shape, 1.04), side ** 3 / 1000), dtype=np.float64)[:, 10, 10]
        eq = float(np.median(dose[m // 2 + 8:m - 8]))
        return np.array([dose[m // 2 - n] for n in (1, 2, 3)]) / eq

    fitted = outside(fitted_to_lanconelli) / published - 1.0
    assert abs(fitted[0]) < 5e-3 and abs(fitted[1]) < 5e-3 and abs(fitted[2]) < 0.1, fitted
    loevinger = outside(loevinger_kernel(density_g_per_ml=1.04)) / published - 1.0
    assert loevinger == pytest.approx([0.05, 0.44, 4.1], rel=0.05)


def test_the_dose_across_a_territory_edge_is_symmetric_about_half_the_equilibrium_dose():
    """A uniform source filling a half-space of a uniform medium (a territory's flat edge): by symmetry the dose
    k voxels inside the edge and k voxels outside add up to the equilibrium dose, D(k) + D(−1 − k) = D_eq, for
    every k (the energy that leaks out is what the edge's inside lacks). With 2 mm voxels the voxel just inside
    the edge receives 74 % of it and the one just outside 26 %; 14 mm out, under 0.1 %."""
    import jax.numpy as jnp

    from y90opt.voxel_dosimetry import kernel_dose

    radial = loevinger_kernel()
    side = 2.0
    kern = voxel_kernel(radial, (side,) * 3)
    m = 64
    energy = np.zeros((m, 24, 24))
    energy[m // 2:] = 1.0  # the source fills x >= the edge; y and z wrap nothing: read the middle only
    dose = np.asarray(kernel_dose(jnp.asarray(energy), jnp.asarray(kern), jnp.full(energy.shape, 1.04),
                                  side ** 3 / 1000), dtype=np.float64)
    profile = dose[:, 12, 12]
    eq = float(np.median(profile[m // 2 + 14:m - 14]))  # deep inside: the local dose times the kernel's total
    assert eq == pytest.approx(1.0 / (1.04 * side ** 3 / 1e6) * radial.total, rel=1e-4)
    for k in range(12):
        assert profile[m // 2 + k] + profile[m // 2 - 1 - k] == pytest.approx(eq, rel=1e-5), k
    assert 0.70 < profile[m // 2] / eq < 0.78 and profile[m // 2 - 7] / eq < 1e-3
