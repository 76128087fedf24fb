"""Dose kernels for voxel dosimetry: a radial dose-point kernel (DPK) and the dose-voxel kernel it gives on an
image's own voxel size.

A **radial kernel** is the share of the energy a point source emits that is absorbed in each spherical shell
around it, in a uniform medium of a stated density (:class:`RadialKernel`). Sources:

* the **built-in** kernel (:func:`default_kernel`): the one :func:`read_voxel_s_table` fits to the Y-90 3 mm
  soft-tissue voxel S values of Lanconelli et al. 2012, its 24 shell shares shipped
  (:data:`LANCONELLI_3MM_SHELLS`); its voxel kernels are within 0.5 % of that database's from 2.21 to 6 mm;
* a published table, read from a file (:func:`read_radial_kernel`): a CSV of shells, ``r_mm,fraction`` (each
  shell's outer radius and the share of the emitted energy absorbed between the previous radius and it), with
  ``# source:`` and ``# density_g_per_ml:`` lines; or a radial dose file of Graves, Flynn and Hyer, "Dose point
  kernels for 2,174 radionuclides", Med. Phys. 46 (2019) 5284-5293 (their data: zenodo.org/record/2564036,
  ``90Y_64.10H_beta.io_processed.csv``: per shell its outer radius [cm] and the energy absorbed in it [MeV per
  decay], water), normalised by the energy the table holds (checked against Y-90's mean beta energy); or a
  table of **voxel S values** (the free database of Lanconelli et al. 2012), to which a radial kernel is fitted
  (:func:`read_voxel_s_table`), so that voxel sizes other than the table's get their kernel;
* an **approximation**, by name (``--kernel loevinger``): Loevinger's empirical point-source function for a beta emitter (R. Loevinger,
  "The dosimetry of beta sources in tissue. The point-source function", Radiology 66 (1956) 55-62), for
  E_max = 2.28 MeV: with u = ν ρ r, ν = 18.6 (E_max − 0.036)^−1.37 cm²/g and c = 1 (1.5 < E_max < 3 MeV), the
  energy absorbed per unit u is constant below u = 1 and ∝ u e^{1−u} above, so the share within u is u/3 below
  1 and 1 − (u + 1) e^{1−u}/3 above (closed form: each shell's share is exact). Loevinger's function was
  fitted to measurements of beta emitters of the 1950s, not to Y-90 Monte Carlo: its self-voxel S values are
  6.5 % (3 mm voxels) and 5.1 % (6 mm) below MIRD Pamphlet 17's, and it leaks too much energy past a
  territory's edge (``tests/test_kernels.py``). It was the default before 0.4.0.

The **dose-voxel kernel** (:func:`voxel_kernel`) holds, for each voxel offset d, the share of the energy emitted
uniformly in a source voxel that is absorbed in the voxel at d: S(d) = ∫ k(|h|) G(h − d) dh with k the point
kernel per unit volume and G = (box ⋆ box)/V the voxel's autocorrelation (a uniform source in one voxel, the
energy averaged over the other). It is computed deterministically in Fourier space, where both factors are
known in closed form: k̂(q) = Σ_shells (f_s/Δr_s) [Si(q r_{s+1}) − Si(q r_s)] / q (each shell's energy spread
uniformly over its radii) and Ĝ(q)/V = Π sinc²(q_i a_i / 2), on a grid ``oversample`` times finer than the
voxels, one inverse FFT, sampled at the voxel lattice, extrapolated in the oversampling (Richardson).
Σ_d S(d) = the radial kernel's total (the lattice sum picks the frequencies where sinc² vanishes), so energy
is conserved.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .errors import InputError
from .physics import MEAN_BETA_ENERGY_MEV

#: J per MeV.
MEV_J = 1.602176634e-13

#: Y-90's beta end-point energy [MeV] (domain reference §1).
Y90_E_MAX_MEV = 2.28
#: MIRD Pamphlet 17's medium: ICRU soft tissue of 1.04 g/cm³ (Bolch et al., J Nucl Med 40 (1999) 11S-36S).
SOFT_TISSUE_DENSITY = 1.04
#: A table's total energy must be Y-90's mean beta energy within this share (else it is not a Y-90 beta kernel).
ENERGY_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class RadialKernel:
    """Shares of the emitted energy absorbed in shells [edges_mm[s], edges_mm[s + 1]) around a point source, in
    a uniform medium of ``density_g_per_ml``."""

    edges_mm: np.ndarray
    fractions: np.ndarray
    density_g_per_ml: float
    source: str

    def __post_init__(self):
        e, f = np.asarray(self.edges_mm, float), np.asarray(self.fractions, float)
        if e.ndim != 1 or f.shape != (len(e) - 1,) or e[0] != 0.0 or np.any(np.diff(e) <= 0) or np.any(f < 0):
            raise ValueError("a radial kernel needs edges from 0, increasing, and one non-negative share per shell")

    @property
    def r_max_mm(self) -> float:
        return float(self.edges_mm[-1])

    @property
    def total(self) -> float:
        return float(np.sum(self.fractions))

    def scaled_to(self, density_g_per_ml: float) -> RadialKernel:
        """The same kernel in a medium of another density: ranges scale as 1/ρ (same energy shares)."""
        factor = self.density_g_per_ml / density_g_per_ml
        return RadialKernel(np.asarray(self.edges_mm) * factor, self.fractions, density_g_per_ml,
                            f"{self.source}, ranges scaled to {density_g_per_ml:g} g/mL")

    def cumulative(self, r_mm) -> np.ndarray:
        """The share of the emitted energy absorbed within radius r (linear within each shell)."""
        return np.interp(r_mm, self.edges_mm, np.concatenate([[0.0], np.cumsum(self.fractions)]))

    def transform(self, q_per_mm) -> np.ndarray:
        """k̂(q), the 3-D Fourier transform of the kernel per unit volume (each shell's share spread uniformly
        over its radii), at the wave numbers ``q`` [rad/mm]; k̂(0) = the total share."""
        from scipy.special import sici

        q = np.atleast_1d(np.asarray(q_per_mm, dtype=np.float64))
        e = np.asarray(self.edges_mm, dtype=np.float64)
        density = np.asarray(self.fractions, dtype=np.float64) / np.diff(e)  # share per mm of radius
        out = np.empty_like(q)
        small = q < 1e-9
        out[small] = self.total
        where = np.flatnonzero(~small)
        for lo in range(0, len(where), 2048):  # sum over shells of density · [Si(q r)] between edges, / q
            at = where[lo:lo + 2048]
            out[at] = (np.diff(sici(np.outer(q[at], e))[0], axis=1) @ density) / q[at]
        return out


#: The built-in radial kernel: the shares of 0.5 mm shells out to 12 mm in ICRU soft tissue (1.04 g/mL), as
#: :func:`read_voxel_s_table` fits them to the Y-90 3 mm soft-tissue voxel S values of Lanconelli et al., Phys.
#: Med. Biol. 57 (2012) 517-533 (the tests' copy, ``tests/data``, reproduces them; MIT-redistributed data).
LANCONELLI_3MM_SHELLS = (
    1.165363e-01, 1.146445e-01, 1.112670e-01, 1.053649e-01, 9.700033e-02, 8.714764e-02, 7.698486e-02,
    6.703785e-02, 5.696612e-02, 4.662921e-02, 3.651597e-02, 2.732991e-02, 1.969510e-02, 1.404959e-02,
    9.845338e-03, 5.993077e-03, 2.577648e-03, 5.848227e-04, 2.494618e-04, 3.942528e-04, 3.107645e-04,
    7.906487e-05, 0.0, 0.0,
)


def default_kernel() -> RadialKernel:
    """The built-in Y-90 radial kernel (:data:`LANCONELLI_3MM_SHELLS`): its voxel kernels are within 0.5 % of
    the database's voxel S values from 2.21 to 6 mm and within 1.3 % of MIRD Pamphlet 17's."""
    edges = np.arange(0.0, FIT_R_MAX_MM + 0.5 * FIT_SHELL_MM, FIT_SHELL_MM)
    return RadialKernel(edges, np.asarray(LANCONELLI_3MM_SHELLS), SOFT_TISSUE_DENSITY,
                        "fitted to the Y-90 3 mm soft-tissue voxel S values of Lanconelli et al. 2012 (built in)")


def loevinger_kernel(density_g_per_ml: float = SOFT_TISSUE_DENSITY, e_max_mev: float = Y90_E_MAX_MEV,
                     shell_mm: float = 0.02, r_max_mm: float = 20.0) -> RadialKernel:
    """Loevinger's point-source function for a beta spectrum of end point ``e_max_mev`` (c = 1: 1.5-3 MeV),
    as exact shell shares up to ``r_max_mm`` (the share beyond, 3.5·10⁻⁵ for Y-90 at 20 mm, is left out and
    reported by :attr:`RadialKernel.total`)."""
    if not 1.5 < e_max_mev < 3.0:
        raise ValueError("the c = 1 form of Loevinger's function holds for 1.5 < E_max < 3 MeV")
    nu = 18.6 / (e_max_mev - 0.036) ** 1.37  # cm²/g
    k = nu * density_g_per_ml / 10.0  # per mm
    edges = np.arange(0.0, r_max_mm + 0.5 * shell_mm, shell_mm)
    u = k * edges
    cum = np.where(u < 1.0, u / 3.0, 1.0 - (u + 1.0) * np.exp(1.0 - u) / 3.0)
    return RadialKernel(edges, np.diff(cum), density_g_per_ml,
                        "Loevinger's point-source function (Radiology 1956), E_max 2.28 MeV: an approximation")


def read_radial_kernel(path: str) -> RadialKernel:
    """A radial kernel from a CSV file: ``r_mm,fraction`` rows (with ``# source:`` and optional
    ``# density_g_per_ml:`` lines), or a Graves et al. (2019) radial dose file (five numeric columns, the
    first the shell's outer radius [cm], the second its energy [MeV per decay]; water, 1 g/mL), or a voxel S
    value table of the database of Lanconelli et al. (2012), from which the radial kernel is fitted
    (:func:`read_voxel_s_table`)."""
    lines = _kernel_lines(path)
    if _is_voxel_s_table(lines):
        return read_voxel_s_table(path, lines)
    meta: dict[str, str] = {}
    rows: list[list[float]] = []
    for n, line in enumerate(lines, start=1):
        s = line.strip()
        if s.startswith("#"):
            key, _, value = s.lstrip("#").partition(":")
            meta[key.strip().lower()] = value.strip()
            continue
        if not s:
            continue
        cells = [c.strip() for c in s.split(",")]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if rows:
                raise InputError(f"{path}: line {n}: not a row of numbers: {s[:60]!r}") from None
            continue  # a header line
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) not in (2, 5):
        raise InputError(f"{path}: kernel: expected rows of r_mm,fraction or a Graves et al. five-column radial dose file")
    data = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: kernel: a value is not finite")
    if data.shape[1] == 5:
        outer, energy = data[:, 0] * 10.0, data[:, 1]
        total = float(energy.sum())
        if abs(total / MEAN_BETA_ENERGY_MEV - 1.0) > ENERGY_TOLERANCE:
            raise InputError(f"{path}: kernel: the shells hold {total:.4g} MeV per decay, not Y-90's mean beta energy "
                             f"{MEAN_BETA_ENERGY_MEV:g} MeV (within {100 * ENERGY_TOLERANCE:g} %): not a Y-90 beta kernel")
        fractions, density = energy / total, 1.0
        source = meta.get("source") or f"Graves et al. 2019 radial dose file {os.path.basename(path)}"
    else:
        if "source" not in meta or not meta["source"]:
            raise InputError(f"{path}: kernel: a '# source:' line is required (the published table the shells come from)")
        outer, fractions = data[:, 0], data[:, 1]
        try:
            density = float(meta.get("density_g_per_ml", "1.0"))
        except ValueError:
            raise InputError(f"{path}: kernel: density_g_per_ml: not a number") from None
        if not 0.5 <= density <= 2.0:
            raise InputError(f"{path}: kernel: density_g_per_ml {density:g}: expected a tissue-like 0.5 to 2 g/mL")
        source = meta["source"]
        if fractions.sum() > 1.0 + 1e-6:
            raise InputError(f"{path}: kernel: the shares sum to {fractions.sum():.6g} > 1")
    if np.any(fractions < 0) or outer[0] <= 0 or np.any(np.diff(outer) <= 0):
        raise InputError(f"{path}: kernel: radii must increase from above 0 and shares must be >= 0")
    return RadialKernel(np.concatenate([[0.0], outer]), fractions, density, source)


#: The radial kernel fitted to a voxel S table: shells of this width [mm] out to :data:`FIT_R_MAX_MM`.
FIT_SHELL_MM = 0.5
#: Outer radius of the fitted kernel [mm]: past Y-90's largest beta range in soft tissue (about 11 mm).
FIT_R_MAX_MM = 12.0
#: Weight of the fit's smoothness term (second differences of the energy per mm of radius, against the
#: table's shares): without it the shells fitted to one voxel size oscillate, and transfer worse to others.
FIT_SMOOTHNESS = 1e-3
#: A voxel S table's energy, at its density, must be the emitted energy within this share.
S_TABLE_ENERGY_RANGE = (0.95, 1.01)


def _kernel_lines(path: str) -> list[str]:
    """A kernel file's lines: split as bytes (a Latin-1 byte never splits a line), each decoded as UTF-8, else
    Latin-1 (the voxel S tables write the · of mGy/(MBq·s) in Latin-1); a UTF-8 byte-order mark dropped."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: kernel: no such file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise InputError(f"{path}: kernel: cannot read ({e.strerror or e})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for line in raw.splitlines():
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode("latin-1"))
    return out


def _table_body(lines: list[str]) -> list[str]:
    """The non-blank lines that are not ``#`` comments."""
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _is_voxel_s_table(lines: list[str]) -> bool:
    body = _table_body(lines)
    return len(body) >= 2 and body[1].split()[:3] == ["i", "j", "k"]


def read_voxel_s_table(path: str, lines: list[str] | None = None) -> RadialKernel:
    """The radial kernel fitted to a table of voxel S values for Y-90 in soft tissue, in the layout of the free
    database of Lanconelli et al., "A free database of radionuclide voxel S values for the dosimetry of
    nonuniform activity distributions", Phys. Med. Biol. 57 (2012) 517-533: a title line naming the nuclide,
    the voxel size and the medium (``Y90 - 3mm - Soft tissue``), a header ``i j k S [mGy/(MBq s)]``, then one
    row per voxel offset of one octant.

    S is turned into the share of the emitted energy absorbed in each voxel, S · m_voxel / E (E the mean beta
    energy per decay, m at the medium's density: ICRU soft tissue, 1.04 g/mL, at which the database's Y-90
    soft-tissue tables hold 0.997-0.999 of the emitted energy; a ``# density_g_per_ml:`` line overrides it),
    and the table must hold the emitted energy within :data:`S_TABLE_ENERGY_RANGE`. The radial kernel is the
    non-negative least-squares fit of :data:`FIT_SHELL_MM` shells to every offset of the table, through the
    same voxel integration as :func:`voxel_kernel`, with a small smoothness term: deterministic. Fitted to the
    3 mm table, its voxel kernels give the database's 2.21, 4, 4.8 and 6 mm values of the source voxel and its
    face, edge and corner neighbours within 0.5 % (``tests/test_kernels.py``, ``tests/test_voxel.py``)."""
    import re

    from scipy.optimize import nnls

    if lines is None:
        lines = _kernel_lines(path)
    meta = {k.strip().lower(): v.strip() for k, _, v in
            (ln.strip().lstrip("#").partition(":") for ln in lines if ln.strip().startswith("#"))}
    body = _table_body(lines)
    if len(body) < 2 or body[1].split()[:3] != ["i", "j", "k"]:
        raise InputError(f"{path}: kernel: expected a title line, an 'i j k S' header and rows of a voxel S table")
    title = body[0]
    if not re.search(r"(?<![0-9A-Za-z])(?:Y-?90(?![0-9])|90-?Y(?![A-Za-z]))", title, re.IGNORECASE):
        raise InputError(f"{path}: kernel: the title {title!r} names no Y-90 (a Y-90 voxel S table is needed)")
    size = re.search(r"(\d+(?:\.\d+)?)\s*mm", title)
    if size is None:
        raise InputError(f"{path}: kernel: the title {title!r} gives no voxel size in mm")
    a = float(size.group(1))
    if "density_g_per_ml" in meta:
        try:
            density = float(meta["density_g_per_ml"])
        except ValueError:
            raise InputError(f"{path}: kernel: density_g_per_ml: not a number") from None
    elif "soft" in title.lower():
        density = SOFT_TISSUE_DENSITY
    else:
        raise InputError(f"{path}: kernel: the title {title!r} names no soft tissue: give a '# density_g_per_ml:' "
                         "line (a soft-tissue table is what the dose model needs)")
    if not 0.9 <= density <= 1.2:
        raise InputError(f"{path}: kernel: density_g_per_ml {density:g}: expected soft tissue, 0.9 to 1.2 g/mL")
    if "mgy" not in body[1].lower():
        raise InputError(f"{path}: kernel: the header {body[1]!r} does not give S in mGy/(MBq s)")
    offsets, values = [], []
    for n, ln in enumerate(body[2:], start=3):
        cells = ln.split()
        try:
            if len(cells) != 4:
                raise ValueError
            offsets.append([int(c) for c in cells[:3]])
            values.append(float(cells[3]))
        except ValueError:
            raise InputError(f"{path}: kernel: row {n}: expected 'i j k S', got {ln[:60]!r}") from None
    if not offsets:
        raise InputError(f"{path}: kernel: no 'i j k S' rows")
    ijk, sv = np.asarray(offsets, dtype=int), np.asarray(values, dtype=np.float64)
    if ijk.min() < 0 or not np.all(np.isfinite(sv)) or sv.min() < 0 or len({tuple(r) for r in ijk}) != len(ijk):
        raise InputError(f"{path}: kernel: offsets must be distinct and >= 0 (one octant), S finite and >= 0")
    mass_kg = (a / 10.0) ** 3 * density / 1000.0
    shares = sv * 1e-3 * mass_kg / (1e6 * MEAN_BETA_ENERGY_MEV * MEV_J)
    held = float(np.sum(shares * 2.0 ** np.count_nonzero(ijk, axis=1)))  # each octant entry stands for its mirrors
    lo, hi = S_TABLE_ENERGY_RANGE
    if not lo <= held <= hi:
        raise InputError(f"{path}: kernel: at {density:g} g/mL the table holds {held:.4g} of the emitted energy (expected "
                         f"{lo:g} to {hi:g}): not a Y-90 soft-tissue table in mGy/(MBq s)")
    # the shells in the table's own medium: Y-90's ranges scale as 1/ρ from ICRU soft tissue's
    edges = np.arange(0.0, FIT_R_MAX_MM + 0.5 * FIT_SHELL_MM, FIT_SHELL_MM) * (SOFT_TISSUE_DENSITY / density)
    design = np.empty((len(ijk), len(edges) - 1))
    for k in range(len(edges) - 1):
        unit = np.zeros(len(edges) - 1)
        unit[k] = 1.0
        kern = voxel_kernel(RadialKernel(edges, unit, density, "shell"), (a, a, a))
        c = np.array(kern.shape) // 2
        inside = np.all(ijk <= c, axis=1)
        design[:, k] = 0.0
        design[inside, k] = kern[tuple((c + ijk[inside]).T)]
    width = np.diff(edges)
    smooth = np.zeros((len(width) - 2, len(width)))
    for i in range(len(width) - 2):
        smooth[i, i:i + 3] = np.array([1.0, -2.0, 1.0]) / width[i]
    fractions, _ = nnls(np.vstack([design, FIT_SMOOTHNESS * smooth]), np.concatenate([shares, np.zeros(len(smooth))]))
    return RadialKernel(edges, fractions, density,
                        f"fitted to the voxel S values of {os.path.basename(path)} ({title}; Lanconelli et al. 2012 layout)")


def _lattice_kernel(radial: RadialKernel, a: np.ndarray, n: np.ndarray, oversample: int, table) -> np.ndarray:
    """S on the voxel lattice (offsets −n … n per axis) from the Fourier grid ``oversample`` times finer."""
    m = oversample * (2 * n + 1)  # fine points per axis: the periodic domain is 2n + 1 voxels long
    h = a / oversample
    q = [2.0 * np.pi * np.fft.fftfreq(int(mi), d=float(hi)) for mi, hi in zip(m, h, strict=True)]
    qx, qy, qz = np.meshgrid(*q, indexing="ij", sparse=True)
    spectrum = np.interp(np.sqrt(qx * qx + qy * qy + qz * qz), *table)
    for axis, qi in enumerate((qx, qy, qz)):
        spectrum = spectrum * np.sinc(qi * a[axis] / (2.0 * np.pi)) ** 2
    # S(d) = (1/V) ∫ k(|h|) (box ⋆ box)(h − d) dh, whose transform is k̂(q) V Π sinc²: sampled on the fine grid
    fine = np.fft.ifftn(spectrum).real * float(np.prod(a) / np.prod(h))
    return np.fft.fftshift(fine[::oversample, ::oversample, ::oversample])  # the source voxel at the centre


#: Most points per axis of the Fourier grid (memory: its cube of complex numbers).
MAX_FOURIER_POINTS = 256


def voxel_kernel(radial: RadialKernel, spacing_mm, oversample: int = 8) -> np.ndarray:
    """The dose-voxel kernel on voxels of ``spacing_mm`` (3 values): an odd-sized array, its centre the source
    voxel, each entry the share of the energy emitted uniformly in the source voxel that is absorbed in that
    voxel (see the module's docstring). Deterministic.

    The Fourier grid's truncation makes each entry converge as 1/s² in the oversampling s (the self-voxel
    share of a 3 mm voxel is 1.9 % low at s = 4, 0.5 % at s = 8); the kernel returned is the Richardson
    extrapolation (4 S_s − S_{s/2}) / 3, within 0.05 % of the limit there. s is ``oversample``, lowered so that
    the grid keeps at most :data:`MAX_FOURIER_POINTS` points per axis, and made even (at 1 mm voxels and a 20 mm
    kernel, 4)."""
    a = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
    if np.any(a <= 0) or not np.all(np.isfinite(a)):
        raise ValueError("voxel spacing must be positive")
    n = np.ceil((radial.r_max_mm + a) / a).astype(int) + 1  # voxels each side (the support is r_max + a)
    s = max(2, min(int(oversample), MAX_FOURIER_POINTS // int(np.max(2 * n + 1))))
    s -= s % 2  # even, so that s/2 is a grid too
    q_max = float(np.sqrt(np.sum((np.pi * s / a) ** 2)))
    table_q = np.linspace(0.0, q_max * 1.0001, 16384)
    table = (table_q, radial.transform(table_q))
    fine, coarse = _lattice_kernel(radial, a, n, s, table), _lattice_kernel(radial, a, n, s // 2, table)
    kernel = np.clip((4.0 * fine - coarse) / 3.0, 0.0, None)
    return kernel * (radial.total / kernel.sum())  # the clipped tails' rounding: the total is the kernel's


def sphere_absorbed_fraction(radial: RadialKernel, radius_mm: float) -> float:
    """The share of the energy emitted uniformly in a sphere that is absorbed in it, in a uniform medium:
    ∫ F'(r) P(r) dr with P(r) = 1 − 3r/(4R) + r³/(16R³) for r < 2R (the chance that a point at distance r
    in a random direction from a uniform point of the sphere lies in the sphere), shell by shell (Gauss-Legendre)."""
    x, w = np.polynomial.legendre.leggauss(8)
    e, f = np.asarray(radial.edges_mm), np.asarray(radial.fractions)
    total = 0.0
    for lo, hi, share in zip(e[:-1], e[1:], f, strict=True):
        if lo >= 2.0 * radius_mm or share == 0.0:
            continue
        top = min(hi, 2.0 * radius_mm)
        r = 0.5 * (top - lo) * (x + 1.0) + lo
        p = 1.0 - 3.0 * r / (4.0 * radius_mm) + r ** 3 / (16.0 * radius_mm ** 3)
        total += share / (hi - lo) * 0.5 * (top - lo) * float(np.sum(w * p))
    return total
