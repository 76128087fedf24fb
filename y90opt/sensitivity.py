r"""Variance-based (Sobol') sensitivity analysis of the doses and of plan success: ``y90opt sensitivity``.

Which measured input drives the uncertainty of each dose, and of the plan's success? For an output
Y = f(X₁, …, X_d) of independent inputs the first-order index S1ᵢ = V[E(Y | Xᵢ)] / V(Y) is the share of the
variance that Xᵢ explains alone, and the total index STᵢ = E[V(Y | X₋ᵢ)] / V(Y) the share it takes part in,
interactions included (Sobol' 1993; Homma & Saltelli 1996). An input that does not enter an output has
S1 = ST = 0 for it; STᵢ − S1ᵢ measures interactions.

Design and estimators (Saltelli et al., Comput. Phys. Commun. 181 (2010) 259-270): two independent
N × d matrices A and B of standard normal variates (scrambled Sobol' points mapped through Φ⁻¹), and for
each input i the matrix A_B⁽ⁱ⁾ (A with column i taken from B): N·(d + 2) model evaluations.

.. math::

    \hat V &= \widehat{\mathrm{Var}}\,[f(A) ∪ f(B)] \\
    \widehat{S1}_i &= \tfrac{1}{N}\textstyle\sum_j f(B)_j\,\big(f(A_B^{(i)})_j - f(A)_j\big) / \hat V
        \qquad \text{(Saltelli 2010, Table 2 b)} \\
    \widehat{ST}_i &= \tfrac{1}{2N}\textstyle\sum_j \big(f(A)_j - f(A_B^{(i)})_j\big)^2 / \hat V
        \qquad \text{(Jansen 1999; Saltelli 2010, Table 2 f)}

Outputs are centred on the mean of f(A) ∪ f(B) first (as SALib does): it leaves the estimators unbiased and
lowers their variance. Confidence intervals are percentile intervals of a row bootstrap (the rows j of A, B
and every A_B⁽ⁱ⁾ are resampled together) drawn from a seeded numpy Generator; ``*_se`` is the bootstrap
standard deviation. Over quasi-random points the bootstrap treats rows as independent, so its intervals are
conservative.

The uncertain inputs of a case are quantile transforms of standard normal variates (:mod:`y90opt.uncertainty`),
so the design is drawn in that space and evaluated through the JAX model (:meth:`y90opt.engine.Model.factors_from_z`)
in chunks of fixed size: the indices do not depend on the chunk size, and the same seed gives the same indices.
Sobol' indices assume independent inputs; a case with ``[[correlations]]`` is refused (see
:func:`sensitivity_case`).

A one-at-a-time (OAT) view complements the indices: each output with one input at its 5th and 95th
percentile and every other input at its nominal (measured) value, as data and as a tornado figure.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from . import __version__, physics
from .case import Case, CaseError

#: Percentiles of the one-at-a-time view.
OAT_QUANTILES: tuple[float, float] = (0.05, 0.95)

#: Default bootstrap resamples and confidence level of the intervals.
DEFAULT_BOOTSTRAP = 200
DEFAULT_LEVEL = 0.95

#: Bytes of bootstrap weights built at once (replicates are processed in groups below this size).
_BOOTSTRAP_BLOCK_BYTES = 1 << 25

METHOD = (
    "Sobol' indices, independent inputs: Saltelli 2010 design (A, B, A_B^(i); N(d+2) evaluations) on "
    "scrambled Sobol' points mapped to standard normal variates; first order: Saltelli 2010 estimator; "
    "total: Jansen 1999 estimator; outputs centred; percentile row-bootstrap confidence intervals"
)


# -- the estimator core (any vectorised model) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SobolEstimate:
    """Indices of K outputs with respect to d inputs: arrays (K, d), ``mean``/``variance`` (K,)."""

    S1: np.ndarray
    ST: np.ndarray
    S1_lo: np.ndarray
    S1_hi: np.ndarray
    ST_lo: np.ndarray
    ST_hi: np.ndarray
    S1_se: np.ndarray
    ST_se: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    n_base: int  # N, the base sample count
    n_used: int  # rows of the design kept (rows with a non-finite output are dropped)
    level: float


def saltelli_design(n: int, d: int, seed: int | np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """The base matrices A and B (n, d) of standard normal variates, float64.

    One scrambled Sobol' sequence of dimension 2d (seeded) gives A (its first d columns) and B (the last d),
    mapped through Φ⁻¹. n need not be a power of two (the balance of the points is then not exact).
    """
    from scipy.stats import qmc

    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    sampler = qmc.Sobol(2 * d, scramble=True, rng=np.random.default_rng(ss))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*balance properties of Sobol.*", category=UserWarning)
        u = sampler.random(n)
    eps = np.finfo(np.float64).eps
    z = special.ndtri(np.clip(u, eps, 1.0 - eps))
    return z[:, :d], z[:, d:]


def design_rows(a: np.ndarray, b: np.ndarray, start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of the stacked design [A; B; A_B⁽¹⁾; …; A_B⁽ᵈ⁾] (N·(d + 2), d)."""
    n, d = a.shape
    r = np.arange(start, start + count)
    block, j = np.divmod(r, n)
    from_b = (block == 1)[:, None] | (np.arange(d)[None, :] == (block - 2)[:, None])
    return np.where(from_b, b[j], a[j])


def evaluate_design(
    func: Callable[[np.ndarray], np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    chunk: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f(A) (N, K), f(B) (N, K) and f(A_B⁽ⁱ⁾) (N, d, K), calling ``func`` on chunks of exactly ``chunk`` rows.

    The last chunk is padded by repeating its last row (so a jitted ``func`` compiles once); every row is
    evaluated on its own, so the result does not depend on ``chunk``.
    """
    n, d = a.shape
    total = n * (d + 2)
    chunk = max(1, min(int(chunk), total))
    out: np.ndarray | None = None
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        z = design_rows(a, b, start, size)
        if size < chunk:
            z = np.concatenate([z, np.repeat(z[-1:], chunk - size, axis=0)])
        y = np.asarray(func(z), dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if out is None:
            out = np.empty((total, y.shape[1]), np.float64)
        out[start : start + size] = y[:size]
        if progress is not None:
            progress(start + size, total)
    assert out is not None
    k = out.shape[1]
    f = out.reshape(d + 2, n, k)
    return f[0], f[1], np.moveaxis(f[2:], 0, 1)


def sobol_from_samples(
    f_a: np.ndarray,
    f_b: np.ndarray,
    f_ab: np.ndarray,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    rng: np.random.Generator | None = None,
    level: float = DEFAULT_LEVEL,
) -> SobolEstimate:
    """First-order (Saltelli 2010) and total (Jansen) indices with bootstrap intervals.

    Args:
        f_a, f_b: outputs on A and B, (N, K).
        f_ab: outputs on A_B⁽ⁱ⁾, (N, d, K).
        bootstrap: resamples of the rows (0: no intervals, NaN).
        rng: the bootstrap's Generator (required when ``bootstrap`` > 0; no global state is used).
        level: confidence level of the percentile intervals.

    Rows with a non-finite output anywhere are dropped. An output of zero variance gets NaN indices.
    """
    f_a, f_b, f_ab = (np.asarray(x, np.float64) for x in (f_a, f_b, f_ab))
    n_base = f_a.shape[0]
    keep = np.isfinite(f_a).all(axis=1) & np.isfinite(f_b).all(axis=1) & np.isfinite(f_ab).all(axis=(1, 2))
    if not keep.all():
        f_a, f_b, f_ab = f_a[keep], f_b[keep], f_ab[keep]
    n, d, k = f_ab.shape
    if n < 2:
        raise ValueError("fewer than two usable rows in the Sobol' design")
    mean = 0.5 * (f_a.mean(axis=0) + f_b.mean(axis=0))
    ya, yb, yab = f_a - mean, f_b - mean, f_ab - mean
    # per-row terms: every estimator is a ratio of row means, so a bootstrap replicate is a weighted mean
    t1 = (yb[:, None, :] * (yab - ya[:, None, :])).reshape(n, d * k)
    t2 = 0.5 * ((ya[:, None, :] - yab) ** 2).reshape(n, d * k)
    sq = 0.5 * (ya**2 + yb**2)
    lin = 0.5 * (ya + yb)
    terms = np.concatenate([t1, t2, sq, lin], axis=1)

    def indices(sums: np.ndarray, count: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = sums / count
        var = m[..., 2 * d * k : 2 * d * k + k] - m[..., 2 * d * k + k :] ** 2
        v = np.where(var > 0, var, np.nan)[..., None, :]
        s1 = m[..., : d * k].reshape(*m.shape[:-1], d, k) / v
        st = m[..., d * k : 2 * d * k].reshape(*m.shape[:-1], d, k) / v
        return s1, st, var

    s1, st, var = indices(terms.sum(axis=0), n)
    nan = np.full((k, d), np.nan)
    s1_lo = s1_hi = st_lo = st_hi = s1_se = st_se = nan
    if bootstrap > 0:
        if rng is None:
            raise ValueError("a numpy Generator is required for the bootstrap")
        reps = []
        group = max(1, _BOOTSTRAP_BLOCK_BYTES // (8 * n))
        for g0 in range(0, bootstrap, group):
            g = min(group, bootstrap - g0)
            w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(g)]).astype(np.float64)
            reps.append(w @ terms)
        bs1, bst, _ = indices(np.concatenate(reps), n)
        alpha = 0.5 * (1.0 - level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of zero-variance outputs
            s1_lo, s1_hi = np.nanquantile(bs1, [alpha, 1.0 - alpha], axis=0)
            st_lo, st_hi = np.nanquantile(bst, [alpha, 1.0 - alpha], axis=0)
            s1_se = np.nanstd(bs1, axis=0, ddof=1)
            st_se = np.nanstd(bst, axis=0, ddof=1)
        s1_lo, s1_hi, st_lo, st_hi, s1_se, st_se = (x.T for x in (s1_lo, s1_hi, st_lo, st_hi, s1_se, st_se))
    return SobolEstimate(
        S1=s1.T, ST=st.T, S1_lo=s1_lo, S1_hi=s1_hi, ST_lo=st_lo, ST_hi=st_hi, S1_se=s1_se, ST_se=st_se,
        mean=mean, variance=var, n_base=n_base, n_used=n, level=level,
    )


def sobol_indices(
    func: Callable[[np.ndarray], np.ndarray],
    d: int,
    n: int,
    seed: int = 0,
    chunk: int = 1 << 16,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    progress: Callable[[int, int], None] | None = None,
) -> SobolEstimate:
    """Sobol' indices of a vectorised model of d independent standard normal inputs.

    ``func`` maps variates z (m, d) to outputs (m, K) or (m,); a non-finite output marks an unusable row.
    The design and the bootstrap are seeded from ``seed`` (independent streams of one SeedSequence).
    Inputs with another law are quantile transforms of z (e.g. uniform: x = a + (b − a)·Φ(z)).
    """
    design_ss, boot_ss = np.random.SeedSequence(seed).spawn(2)
    a, b = saltelli_design(n, d, design_ss)
    f_a, f_b, f_ab = evaluate_design(func, a, b, chunk, progress)
    return sobol_from_samples(f_a, f_b, f_ab, bootstrap, np.random.default_rng(boot_ss), level)


# -- a case: doses and success at the [plan] decision ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Indices and the one-at-a-time view of one case. ``summary`` is derived from ``dataset``."""

    dataset: Any  # xarray.Dataset
    summary: dict[str, Any]

    def text(self) -> str:
        return _text(self.dataset)


def _input_units(path: str) -> str:
    for suffix, unit in (("_ml", "mL"), ("_kg", "kg"), ("_gy", "Gy"), ("_gbq", "GBq")):
        if path.endswith(suffix):
            return unit
    return "1"


def _input_long_name(path: str) -> str:
    names = {
        "liver.perfused_volume_ml": "perfused volume",
        "liver.whole_liver_volume_ml": "whole-liver volume",
        "lung.shunt_fraction": "lung shunt fraction",
        "lung.mass_kg": "lung mass",
        "delivery.residual_fraction": "residual fraction",
        "delivery.activity_factor": "activity factor (dose calibrator)",
    }
    if path in names:
        return names[path]
    parts = path.split(".")
    if parts[0] == "tumors" and len(parts) == 3:
        what = {"volume_ml": "volume", "tn_ratio": "tumour-to-normal ratio"}.get(parts[2], parts[2])
        return f"tumour {parts[1]} {what}"
    return path


def _output_long_name(name: str) -> str:
    names = {
        "dose_gy.perfused_mean": "mean dose to the perfused territory",
        "dose_gy.normal_perfused": "normal perfused liver dose (NTAD)",
        "dose_gy.whole_normal_liver": "normal liver dose averaged over the whole liver",
        "dose_gy.whole_liver": "mean whole-liver dose",
        "dose_gy.lung": "lung dose (this session)",
        "dose_gy.lung_cumulative": "cumulative lung dose",
        "dose_gy.tumor_total": "mass-weighted mean tumour dose",
        "success": "all primary targets met at the [plan] decision",
    }
    if name in names:
        return names[name]
    if name.startswith("dose_gy.tumors."):
        return f"dose to tumour {name.removeprefix('dose_gy.tumors.')}"
    return name


def _success_function(case: Case, quantities: tuple[str, ...]) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Doses (m, Q) → 1.0 where every primary target is met (margin ≤ 0), else 0.0; and its description."""
    from . import outcomes
    from . import rules as _rules

    ar = outcomes.active_rules(case)
    targets = ar.targets
    described = "; ".join(f"{r.id}: {r.quantity} >= {r.threshold_gy:g} Gy" for r in targets) or "no primary target"
    counted = ", ".join(ar.counted_tumors)
    description = f"all primary targets met ({described}; counted tumours: {counted or 'none'})"

    def success(doses: np.ndarray) -> np.ndarray:
        ok = np.ones(doses.shape[0], dtype=bool)
        if not targets:
            return ok.astype(np.float64)
        mapping = outcomes.dose_mapping(quantities, doses)
        margins = _rules.margins(targets, mapping, case.tumor_names, ar.counted_tumors)
        for m in margins.values():
            ok &= np.asarray(m) <= 0
        return ok.astype(np.float64)

    return success, description


def _reporter(progress: bool | Callable[[int, int], None] | None) -> Callable[[int, int], None] | None:
    if callable(progress):
        return progress
    if not progress or not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        sys.stderr.write(f"\rmodel evaluations {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def sensitivity_case(
    case: Case,
    n: int = 8192,
    seed: int = 0,
    chunk: int | None = None,
    dtype: str = "float32",
    bootstrap: int = DEFAULT_BOOTSTRAP,
    progress: bool | Callable[[int, int], None] | None = False,
    level: float = DEFAULT_LEVEL,
) -> SensitivityResult:
    """Sobol' indices of every dose and of plan success at the case's ``[plan]`` decision.

    Args:
        case: a validated case with ``[plan].vial_gbq`` and ``[plan].treatment``.
        n: base sample count N; the model is evaluated N·(d + 2) times (d uncertain inputs).
        seed: seeds the design and the bootstrap; the same seed gives the same indices.
        chunk: model evaluations per JAX call (default: all at once up to 2¹⁸); does not change the result.
        dtype: "float32" or "float64" for the JAX model (the estimators run in float64).
        bootstrap: bootstrap resamples for the confidence intervals (0: none).
        progress: True to report progress on a terminal, or a callable(done, total).
        level: confidence level of the intervals.

    Outputs: ``dose_gy.<quantity>`` for every dose of the model (tumours as ``dose_gy.tumors.<name>``) and
    ``success`` (1 when every primary target of the scenario is met, else 0). Inputs: the case paths of the
    uncertain inputs (exact inputs have no index).

    Raises:
        CaseError: ``[plan]`` incomplete, no uncertain input, or ``[[correlations]]`` declared (the indices
            assume independent inputs).
    """
    import jax
    import jax.numpy as jnp
    import xarray as xr

    from .engine import DEFAULT_CHUNK, Model, check_invalid, enable_x64_if

    if case.plan.vial_gbq is None:
        raise CaseError(case.path, "plan.vial_gbq", "missing (required by `sensitivity`)")
    if case.plan.treatment is None:
        raise CaseError(case.path, "plan.treatment", "missing (required by `sensitivity`)")
    if case.correlations:
        raise CaseError(
            case.path,
            "correlations",
            "Sobol' indices assume independent inputs; remove [[correlations]] to run `sensitivity` "
            "(the indices then describe the uncorrelated model)",
        )
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if n < 2:
        raise ValueError("n must be at least 2")
    enable_x64_if(dtype)

    model = Model.from_case(case)
    d = model.n_dims
    if d == 0:
        raise CaseError(case.path, "", "every input is exact: there is no uncertainty to attribute")
    inputs = model.uncertain
    hours = case.treatment_hours()
    s_gbq = case.plan.vial_gbq * physics.decay_factor(hours, case.conventions.half_life_h)
    offsets = model.offsets
    dose_q = model.dose_quantities()
    cols = [model.quantities.index(q) for q in dose_q]
    outputs = [f"dose_gy.{q}" for q in dose_q] + ["success"]
    units = ["Gy"] * len(dose_q) + ["1"]
    success, success_text = _success_function(case, model.quantities)

    jdt = jnp.dtype(dtype)
    factors = jax.jit(model.factors_from_z)
    def evaluate(z: np.ndarray) -> np.ndarray:
        f, valid = factors(jnp.asarray(z, jdt))
        f = np.asarray(f, np.float64)
        valid = np.asarray(valid)
        doses = s_gbq * f + offsets
        y = np.concatenate([doses[:, cols], success(doses)[:, None]], axis=1)
        y[~valid] = np.nan
        return y

    total = n * (d + 2)
    chunk = max(1, min(chunk or DEFAULT_CHUNK, total))
    design_ss, boot_ss = np.random.SeedSequence(seed).spawn(2)
    a, b = saltelli_design(n, d, design_ss)
    f_a, f_b, f_ab = evaluate_design(evaluate, a, b, chunk, _reporter(progress))
    invalid = int(
        (~np.isfinite(f_a[:, 0])).sum() + (~np.isfinite(f_b[:, 0])).sum() + (~np.isfinite(f_ab[:, :, 0])).sum()
    )
    check_invalid(invalid, total, case.path)
    est = sobol_from_samples(f_a, f_b, f_ab, bootstrap, np.random.default_rng(boot_ss), level)

    # one-at-a-time: nominal row, then each input at its low and high percentile
    z_nom = np.array([_nominal_z(case.inputs[p]) for p in inputs])
    z_oat = np.repeat(z_nom[None, :], 1 + 2 * d, axis=0)
    q_lo, q_hi = (float(special.ndtri(q)) for q in OAT_QUANTILES)
    for i in range(d):
        z_oat[1 + 2 * i, i] = q_lo
        z_oat[2 + 2 * i, i] = q_hi
    z_pad = np.concatenate([z_oat, np.repeat(z_oat[-1:], max(0, chunk - len(z_oat)), axis=0)])
    y_oat = np.concatenate([evaluate(z_pad[i : i + chunk]) for i in range(0, len(z_oat), chunk)])[: len(z_oat)]
    x_cols = model.input_columns(jnp.asarray(z_oat, jdt))
    x_oat = np.stack([np.asarray(x_cols[p], np.float64) for p in inputs], axis=1)

    ds = _dataset(
        xr, case, est, outputs, units, list(inputs), y_oat, x_oat, d,
        attrs={
            "y90opt_version": __version__,
            "method": METHOD,
            "input_dependence": "independent (the case declares no correlations)",
            "seed": int(seed),
            "samples": int(n),
            "model_evaluations": int(total),
            "rows_used": int(est.n_used),
            "invalid_evaluations": invalid,
            "bootstrap": int(bootstrap),
            "confidence_level": float(level),
            "dtype": dtype,
            "jax_backend": jax.default_backend(),
            "case_name": case.name,
            "case_sha256": case.sha256,
            "case_path": str(case.path),
            "scenario": case.scenario,
            "vial_gbq": float(case.plan.vial_gbq),
            "hours_after_calibration": float(hours),
            "vial_at_treatment_gbq": float(s_gbq),
            "success_definition": success_text,
            "oat_quantiles": f"{OAT_QUANTILES[0]:g} {OAT_QUANTILES[1]:g}",
            "oat_baseline": "every other input at its nominal (measured) value",
            "biased_inputs": ", ".join(case.biased_inputs) or "none",
            **{f"conventions_{k}": float(v) for k, v in case.conventions.as_dict().items()},
        },
    )
    return SensitivityResult(ds, summary_from_dataset(ds))


def _nominal_z(spec) -> float:
    """The variate that the spec maps to its nominal value: Φ⁻¹(F(nominal)) (0 for a lognormal median)."""
    u = float(spec.scipy().cdf(spec.nominal))
    if u == 0.5:
        return 0.0
    eps = 1e-12
    return float(special.ndtri(min(max(u, eps), 1.0 - eps)))


def _dataset(xr, case, est: SobolEstimate, outputs, units, inputs, y_oat, x_oat, d, attrs):
    dims = ("output", "input")
    idx = {"units": "1"}
    ci = f"{100 * est.level:g} % bootstrap percentile interval"
    data = {
        "S1": (dims, est.S1, {**idx, "long_name": "first-order Sobol' index"}),
        "ST": (dims, est.ST, {**idx, "long_name": "total Sobol' index"}),
        "S1_lo": (dims, est.S1_lo, {**idx, "long_name": f"first-order index, lower end of the {ci}"}),
        "S1_hi": (dims, est.S1_hi, {**idx, "long_name": f"first-order index, upper end of the {ci}"}),
        "ST_lo": (dims, est.ST_lo, {**idx, "long_name": f"total index, lower end of the {ci}"}),
        "ST_hi": (dims, est.ST_hi, {**idx, "long_name": f"total index, upper end of the {ci}"}),
        "S1_se": (dims, est.S1_se, {**idx, "long_name": "first-order index, bootstrap standard error"}),
        "ST_se": (dims, est.ST_se, {**idx, "long_name": "total index, bootstrap standard error"}),
        "output_mean": (("output",), est.mean, {"long_name": "output mean over A and B (units: output_units)"}),
        "output_variance": (("output",), est.variance, {"long_name": "output variance over A and B (units: output_units squared)"}),
        "oat_nominal": (("output",), y_oat[0], {"long_name": "output with every input at its nominal value (units: output_units)"}),
        "oat_low": (dims, y_oat[1::2][:d].T, {"long_name": f"output with the input at its {100 * OAT_QUANTILES[0]:g}th percentile, others nominal (units: output_units)"}),
        "oat_high": (dims, y_oat[2::2][:d].T, {"long_name": f"output with the input at its {100 * OAT_QUANTILES[1]:g}th percentile, others nominal (units: output_units)"}),
        "input_nominal": (("input",), x_oat[0], {"long_name": "nominal (measured) input value (units: input_units)"}),
        "input_low": (("input",), x_oat[1::2][np.arange(d), np.arange(d)], {"long_name": f"input at its {100 * OAT_QUANTILES[0]:g}th percentile (units: input_units)"}),
        "input_high": (("input",), x_oat[2::2][np.arange(d), np.arange(d)], {"long_name": f"input at its {100 * OAT_QUANTILES[1]:g}th percentile (units: input_units)"}),
    }
    coords = {
        "output": ("output", list(outputs), {"long_name": "model output"}),
        "input": ("input", list(inputs), {"long_name": "uncertain input (case path)"}),
        "output_units": ("output", list(units), {"long_name": "units of the output"}),
        "output_long_name": ("output", [_output_long_name(o) for o in outputs], {"long_name": "description of the output"}),
        "input_units": ("input", [_input_units(p) for p in inputs], {"long_name": "units of the input"}),
        "input_long_name": ("input", [_input_long_name(p) for p in inputs], {"long_name": "description of the input"}),
        "input_distribution": ("input", [case.inputs[p].describe() for p in inputs], {"long_name": "uncertainty of the input"}),
    }
    ds = xr.Dataset(data, coords=coords, attrs={"title": f"y90opt sensitivity: {case.name}", **attrs})
    return ds


def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summary_from_dataset(ds) -> dict[str, Any]:
    """The ``sensitivity --json`` document, derived from the Dataset."""
    indices = []
    oat = []
    for o in ds["output"].values:
        for i in ds["input"].values:
            sel = ds.sel(output=o, input=i)
            indices.append({
                "output": str(o),
                "input": str(i),
                "S1": _f(sel["S1"]),
                "ST": _f(sel["ST"]),
                "S1_ci": [_f(sel["S1_lo"]), _f(sel["S1_hi"])],
                "ST_ci": [_f(sel["ST_lo"]), _f(sel["ST_hi"])],
            })
            oat.append({
                "output": str(o),
                "input": str(i),
                "units": str(sel["output_units"].values),
                "nominal": _f(sel["oat_nominal"]),
                "low": _f(sel["oat_low"]),
                "high": _f(sel["oat_high"]),
                "input_units": str(sel["input_units"].values),
                "input_nominal": _f(sel["input_nominal"]),
                "input_low": _f(sel["input_low"]),
                "input_high": _f(sel["input_high"]),
            })
    a = ds.attrs
    return {
        "case": a["case_name"],
        "scenario": a["scenario"],
        "method": a["method"],
        "input_dependence": a["input_dependence"],
        "samples": int(a["samples"]),
        "model_evaluations": int(a["model_evaluations"]),
        "seed": int(a["seed"]),
        "bootstrap": int(a["bootstrap"]),
        "confidence_level": float(a["confidence_level"]),
        "dtype": a["dtype"],
        "jax_backend": a["jax_backend"],
        "y90opt_version": a["y90opt_version"],
        "case_sha256": a["case_sha256"],
        "vial_gbq": float(a["vial_gbq"]),
        "hours_after_calibration": float(a["hours_after_calibration"]),
        "success_definition": a["success_definition"],
        "outputs": [
            {"output": str(o), "units": str(u), "mean": _f(m), "variance": _f(v)}
            for o, u, m, v in zip(ds["output"].values, ds["output_units"].values, ds["output_mean"].values,
                                  ds["output_variance"].values, strict=True)
        ],
        "inputs": [
            {"input": str(i), "units": str(u), "distribution": str(dd)}
            for i, u, dd in zip(ds["input"].values, ds["input_units"].values, ds["input_distribution"].values, strict=True)
        ],
        "indices": indices,
        "oat": {
            "quantiles": [float(q) for q in OAT_QUANTILES],
            "baseline": a["oat_baseline"],
            "rows": oat,
        },
    }


def _text(ds) -> str:
    from .textout import table

    a = ds.attrs
    lines = [
        f"case {a['case_name']!r}  scenario {a['scenario']}  vial {a['vial_gbq']:g} GBq at "
        f"{a['hours_after_calibration']:.1f} h after calibration",
        f"{a['samples']} base samples, {a['model_evaluations']} model evaluations, seed {a['seed']}, "
        f"{a['dtype']} on {a['jax_backend']}; {100 * a['confidence_level']:g} % bootstrap intervals ({a['bootstrap']} resamples)",
        f"method: {a['method']}",
        f"success = {a['success_definition']}",
    ]
    if a.get("invalid_evaluations"):
        lines.append(f"{a['invalid_evaluations']} evaluations had an unphysical geometry; their design rows were dropped")
    plo, phi = (f"p{100 * q:02.0f}" for q in OAT_QUANTILES)
    for o in ds["output"].values:
        sub = ds.sel(output=o)
        unit = str(sub["output_units"].values)
        sd = math.sqrt(float(sub["output_variance"])) if float(sub["output_variance"]) >= 0 else float("nan")
        lines += ["", f"{o} ({unit}): mean {float(sub['output_mean']):.4g}, SD {sd:.3g}, nominal "
                  f"{float(sub['oat_nominal']):.4g}"]
        if not np.isfinite(sub["S1"].values).any():
            lines.append("  constant over the samples: no variance to attribute")
            continue
        st = sub["ST"].values
        order = np.argsort(-np.nan_to_num(st, nan=-1.0), kind="stable")
        rows = []
        for j in order:
            if st[j] == 0.0:  # the input does not enter this output: listed once below
                continue
            s = sub.isel(input=j)
            rows.append((
                str(s["input"].values),
                float(s["S1"]), f"[{float(s['S1_lo']):.3f}, {float(s['S1_hi']):.3f}]",
                float(s["ST"]), f"[{float(s['ST_lo']):.3f}, {float(s['ST_hi']):.3f}]",
                float(s["oat_low"]), float(s["oat_high"]),
            ))
        lines.append(table(
            rows,
            header=("input", "S1", "S1 CI", "ST", "ST CI", f"at {plo}", f"at {phi}"),
            align="lrlrlrr",
        ))
        absent = [str(i) for i, v in zip(sub["input"].values, st, strict=True) if v == 0.0]
        if absent:
            lines.append("no effect (ST = 0): " + ", ".join(absent))
    return "\n".join(lines)


# -- figure ----------------------------------------------------------------------------------------------


def tornado_figure(result: SensitivityResult | Any, output: str, path: str) -> str:
    """A tornado figure of one output: the output with each input at its low and high percentile (others
    nominal), bars sorted by their span, a line at the nominal output. Written to ``path`` (format from the
    suffix); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ds = result.dataset if isinstance(result, SensitivityResult) else result
    if output not in set(ds["output"].values.tolist()):
        raise KeyError(f"unknown output {output!r}; expected one of {', '.join(ds['output'].values.tolist())}")
    sub = ds.sel(output=output)
    base = float(sub["oat_nominal"])
    lo = sub["oat_low"].values.astype(float)
    hi = sub["oat_high"].values.astype(float)
    span = np.nan_to_num(np.abs(hi - lo), nan=0.0)
    order = np.argsort(span, kind="stable")  # largest at the top
    unit = str(sub["output_units"].values)
    d = len(order)
    fig = Figure(figsize=(8.0, 1.2 + 0.45 * d), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plo, phi = (f"p{100 * q:02.0f}" for q in OAT_QUANTILES)
    for y, j in enumerate(order):
        ax.barh(y, lo[j] - base, left=base, color="tab:blue", label=f"input at its {plo}" if y == 0 else None)
        ax.barh(y, hi[j] - base, left=base, color="tab:orange", label=f"input at its {phi}" if y == 0 else None)
    labels = []
    for j in order:
        s = sub.isel(input=j)
        iu = str(s["input_units"].values)
        iu = "" if iu == "1" else f" {iu}"
        labels.append(f"{s['input'].values} ({float(s['input_low']):.3g} to {float(s['input_high']):.3g}{iu})")
    ax.set_yticks(range(d), labels)
    ax.axvline(base, color="black", linewidth=1.0, label=f"nominal {base:.4g} {unit}")
    ax.set_xlabel(f"{output} ({unit})")
    ax.set_ylabel("input (its p05 to p95)")
    ax.set_title(f"{ds.attrs.get('case_name', '')}: {_output_long_name(output)}, one input at a time")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path)
    return path


__all__ = [
    "METHOD",
    "SensitivityResult",
    "SobolEstimate",
    "design_rows",
    "evaluate_design",
    "saltelli_design",
    "sensitivity_case",
    "sobol_from_samples",
    "sobol_indices",
    "summary_from_dataset",
    "tornado_figure",
]
