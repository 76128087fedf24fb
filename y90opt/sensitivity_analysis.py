r"""Variance-based (Sobol') sensitivity analysis of the doses and of plan success: ``y90opt sensitivity``.

Which measured input drives the uncertainty of each dose, and of the plan's success? For an output
Y = f(X₁, …, X_d) of independent inputs the first-order index S1ᵢ = V[E(Y | Xᵢ)] / V(Y) is the share of the
variance that Xᵢ explains alone, and the total index STᵢ = E[V(Y | X₋ᵢ)] / V(Y) the share it takes part in,
interactions included (Sobol' 1993; Homma & Saltelli 1996). An input that does not enter an output has
S1 = ST = 0 for it; STᵢ − S1ᵢ measures interactions.

The design, the estimators (Saltelli 2010 first order, Jansen total, outputs centred) and their bootstrap
intervals are :mod:`y90opt.sobol`, for any vectorised model; this module makes a case into such a model
(N·(d + 2) evaluations for d independent inputs) and adds the one-at-a-time view.

The uncertain inputs of a case are quantile transforms of standard normal variates (:mod:`y90opt.uncertainty`),
so the design is drawn in that space and evaluated through the JAX model (:meth:`y90opt.engine.Model.factors_from_z`)
in chunks of fixed size: the indices do not depend on the chunk size, and the same seed gives the same indices.
Dependent inputs: the Saltelli design assumes independence. When a case declares ``[[correlations]]`` (a
Gaussian copula) the indices reported are S1ᵢ = V[E(Y|Xᵢ)]/V and STᵢ = E[V(Y|X₋ᵢ)]/V, which stay defined
for dependent inputs (Kucherenko, Tarantola & Annoni, Comput. Phys. Commun. 183 (2012) 937-946), estimated
as the "full" first-order and the "independent" total index of Mara, Tarantola & Annoni (Environ. Model.
Softw. 72 (2015) 173-183) on decorrelated orderings of the inputs (:func:`sobol_indices_dependent`). With
dependence S1 may exceed ST: an input correlated with an influential one has S1 > 0 even when it does not
enter the output (then ST = 0). Every result states which case applied (``input_dependence``).

A one-at-a-time (OAT) view complements the indices: each output with one input at its 5th and 95th
percentile and every other input at its nominal (measured) value, as data and as a tornado figure.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from ._version import __version__
from .case import Case, CaseError
from .sobol import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_LEVEL,
    METHOD,
    METHOD_DEPENDENT,
    METHOD_STREAMING,
    STREAM_ABOVE,
    DependentEstimate,
    SobolEstimate,
    evaluate_design,
    saltelli_design,
    sobol_from_samples,
    sobol_indices_dependent,
    sobol_streaming,
)

#: Most base samples an analysis takes: 10⁸ base samples are 10⁹ model evaluations for 8 inputs (about
#: 15 minutes on a 2-core CPU); beyond it a run would take days whatever its memory.
MAX_BASE_SAMPLES = 10**8

#: Percentiles of the one-at-a-time view.
OAT_QUANTILES: tuple[float, float] = (0.05, 0.95)


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


def input_long_name(path: str) -> str:
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


def output_long_name(name: str) -> str:
    from .results import quantity_description

    if name == "success":
        return "all primary targets met at the [plan] decision"
    return quantity_description(name.removeprefix("dose_gy."))


def _success_function(case: Case, quantities: tuple[str, ...]) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """Doses (m, Q) → 1.0 where every primary target is met (margin ≤ 0), else 0.0; and its description.
    None when the case has no primary target it can evaluate: success is then undefined (never a constant 1),
    and the analysis has no ``success`` output."""
    from . import outcomes
    from . import rules as _rules

    ar = outcomes.active_rules(case)
    targets = ar.targets
    described = "; ".join(f"{r.id}: {r.quantity} >= {r.threshold_gy:g} Gy" for r in targets) or "no primary target"
    counted = ", ".join(ar.counted_tumors)
    description = f"all primary targets met ({described}; counted tumours: {counted or 'none'})"
    if not targets:
        not_evaluable = ", ".join(f"{ne.id} ({ne.reason})" for ne in ar.not_evaluable) or "none"
        return None, f"no primary target the case can evaluate (not evaluable: {not_evaluable})"

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


@dataclasses.dataclass(frozen=True)
class CaseFunction:
    """The outputs of a case at its ``[plan]`` decision as a function of variates z (m, d).

    ``z`` are standard normal variates in copula space (already correlated when the case declares
    correlations; this function does not apply the case's Cholesky factor): input i is F_i⁻¹(Φ(z_i)).
    ``__call__`` returns (m, K) float64: the doses of ``outputs`` (Gy) then ``success`` (0/1); rows with
    an unphysical geometry are NaN.
    """

    model: Any  # engine.Model
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    units: tuple[str, ...]
    correlation: np.ndarray  # (d, d) correlation of z (identity without [[correlations]])
    vial_at_treatment_gbq: float
    hours_after_calibration: float
    success_definition: str
    dtype: str
    _evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self._evaluate(z)[0]

    def with_inputs(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The outputs (m, K) and the input values (m, d) that the model used for variates z."""
        return self._evaluate(z)


_COMPILED: dict[tuple[str, str, str], tuple] = {}


def _compiled_model(case: Case, dtype: str):
    """The case's model, its copy without the copula's Cholesky factor (the design is drawn in copula space:
    the model must not correlate the variates again) and that copy's jitted factor function. Kept for a few
    cases (keyed by the case text and path, which determine the model) so that repeated runs compile once
    per chunk shape."""
    import jax

    from .engine import Model

    key = (case.sha256, str(case.path), dtype)
    if key not in _COMPILED:
        model = Model.from_case(case)
        if case.multi:  # the doses at the case's decision (linear in the vial activities: the factors at s = 1)
            model = model.decided([x[2] for x in case.injection_decisions("`sensitivity`")])
        free = dataclasses.replace(model, cholesky=None)
        while len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        inputs = tuple(model.uncertain)

        def factors(z):
            import jax.numpy as jnp

            f, valid = free.factors_from_z(z)
            cols = free.input_columns(z)
            x = jnp.stack([cols[p] for p in inputs], axis=-1) if inputs else jnp.zeros((z.shape[0], 0), z.dtype)
            return f, valid, x

        _COMPILED[key] = (model, free, jax.jit(factors))
    return _COMPILED[key]


def output_function(case: Case, dtype: str = "float32") -> CaseFunction:
    """The case's doses and success indicator at its ``[plan]`` decision, evaluated through the JAX model.

    Raises :class:`CaseError` when ``[plan]`` lacks the vial or the treatment time or no input is uncertain.
    """
    import jax.numpy as jnp

    from .engine import enable_x64_if

    if case.multi:
        case.injection_decisions("`sensitivity`")  # the decision must be complete
        hours, s_gbq = float("nan"), 1.0
    else:
        hours, s_gbq = case.decision("`sensitivity`")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    enable_x64_if(dtype)
    model, free, factors = _compiled_model(case, dtype)
    if model.n_dims == 0:
        raise CaseError(case.path, "", "every input is exact: there is no uncertainty to attribute")
    corr = np.eye(model.n_dims) if model.cholesky is None else model.cholesky @ model.cholesky.T
    offsets = model.offsets
    dose_q = model.dose_quantities()
    cols = [model.quantities.index(q) for q in dose_q]
    success, success_text = _success_function(case, model.quantities)
    jdt = jnp.dtype(dtype)

    def evaluate(z: np.ndarray) -> np.ndarray:
        f, valid, x = factors(jnp.asarray(z, jdt))
        doses = s_gbq * np.asarray(f, np.float64) + offsets
        parts = [doses[:, cols]] + ([success(doses)[:, None]] if success is not None else [])
        y = np.concatenate(parts, axis=1)
        y[~np.asarray(valid)] = np.nan
        return y, np.asarray(x, np.float64)

    return CaseFunction(
        model=free,
        inputs=tuple(model.uncertain),
        outputs=tuple(f"dose_gy.{q}" for q in dose_q) + (("success",) if success is not None else ()),
        units=("Gy",) * len(dose_q) + (("1",) if success is not None else ()),
        correlation=corr,
        vial_at_treatment_gbq=float(s_gbq),
        hours_after_calibration=float(hours),
        success_definition=success_text,
        dtype=dtype,
        _evaluate=evaluate,
    )


#: Peak host memory of one Saltelli design, in float64 values per design row and per output or input: the
#: inputs, the outputs and the centred copies and bootstrap sums the estimators hold (about 4.2 GB measured for
#: 8·10⁶ rows of 6 inputs and 13 outputs, i.e. ≈ 28 values per row per column; 4 copies of each is the bound).
SOBOL_PEAK_COPIES = 4


def check_sobol_memory(case: Case, rows: int, d: int, k: int, rows_per_base: int) -> None:
    """Refuse, before any evaluation, a design whose values cannot fit in the free memory (as ``plan`` does),
    with the largest base sample count that fits."""
    from .engine import available_memory_bytes
    from .errors import InputError

    per_row = SOBOL_PEAK_COPIES * (d + k) * 8
    free = available_memory_bytes()
    if free is None or rows * per_row <= free:
        return
    fit = int(free / per_row / rows_per_base)
    raise InputError(
        f"{case.path}: --samples: the Sobol' design holds {rows} model evaluations with {d} inputs and {k} outputs, "
        f"about {rows * per_row / 2**30:.3g} GiB at its peak, and {free / 2**30:.3g} GiB is free: use at most "
        f"{max(fit, 0)} base samples"
    )


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
        n: base sample count N; the model is evaluated N·(d + 2) times for d independent inputs,
            4·N·d times when the case declares correlations.
        seed: seeds the design and the bootstrap; the same seed gives the same indices.
        chunk: model evaluations per JAX call (default: :func:`y90opt.engine.default_chunk`); does not change the result.
        dtype: "float32" or "float64" for the JAX model (the estimators run in float64).
        bootstrap: bootstrap resamples for the confidence intervals (0: none).
        progress: True to report progress on a terminal, or a callable(done, total).
        level: confidence level of the intervals.

    Outputs: ``dose_gy.<quantity>`` for every dose of the model (tumours as ``dose_gy.tumors.<name>``) and
    ``success`` (1 when every primary target of the scenario is met, else 0). Inputs: the case paths of the
    uncertain inputs (exact inputs have no index).

    Inputs correlated through ``[[correlations]]`` (a Gaussian copula): S1 is V[E(Y|Xᵢ)]/V and ST is
    E[V(Y|X₋ᵢ)]/V, both defined for dependent inputs (Kucherenko et al. 2012), estimated as the full
    first-order and the independent total index of Mara et al. 2015 (:func:`sobol_indices_dependent`);
    the Dataset adds ``ST_full`` and ``S1_independent``. With dependence S1 may exceed ST.

    Raises:
        CaseError: ``[plan]`` incomplete or no uncertain input.
    """
    import jax
    import xarray as xr

    from .engine import check_invalid, default_chunk

    if n < 2:
        raise ValueError("n must be at least 2")
    fn = output_function(case, dtype)
    d = len(fn.inputs)
    dependent = bool(case.correlations)
    total = 4 * n * d if dependent else n * (d + 2)
    per_design = 4 * n if dependent else total
    streaming = not dependent and n > STREAM_ABOVE  # bounded memory: sums per batch, not the design
    if n > MAX_BASE_SAMPLES:
        from .errors import InputError

        raise InputError(f"{case.path}: --samples: at most {MAX_BASE_SAMPLES:.0e} base samples ({n:.3g} asked: "
                         f"{n * (d + 2):.3g} model evaluations, days on a CPU); the indices' intervals shrink as "
                         "1/sqrt(N), so 1e6 to 1e7 is ample")
    if not streaming:
        check_sobol_memory(case, per_design, d, len(fn.outputs), 4 if dependent else d + 2)
    chunk = max(1, min(chunk or default_chunk(), per_design))

    report = _reporter(progress)
    if dependent:
        dep = sobol_indices_dependent(fn, fn.correlation, n, seed, chunk, bootstrap, level, report)
        est, extra = dep.full, dep.independent
        est = dataclasses.replace(
            est, ST=extra.ST, ST_lo=extra.ST_lo, ST_hi=extra.ST_hi, ST_se=extra.ST_se,
            n_used=min(est.n_used, extra.n_used),
        )
        method, dependence = METHOD_DEPENDENT, (
            "Gaussian copula with the case's [[correlations]]: S1 = full first-order index V[E(Y|Xi)]/V, "
            "ST = independent total index E[V(Y|X~i)]/V (Mara et al. 2015; Kucherenko et al. 2012); "
            "ST_full and S1_independent are also given"
        )
    elif streaming:
        design_ss, boot_ss = np.random.SeedSequence(seed).spawn(2)
        est = sobol_streaming(fn, d, n, chunk=chunk, bootstrap=bootstrap, level=level, progress=report,
                              seeds=(design_ss, boot_ss))
        dep = None
        method, dependence = METHOD_STREAMING, "independent (the case declares no correlations)"
    else:
        design_ss, boot_ss = np.random.SeedSequence(seed).spawn(2)
        a, b = saltelli_design(n, d, design_ss)
        f_a, f_b, f_ab = evaluate_design(fn, a, b, chunk, report)
        est = sobol_from_samples(f_a, f_b, f_ab, bootstrap, np.random.default_rng(boot_ss), level)
        dep = None
        method, dependence = METHOD, "independent (the case declares no correlations)"
    # an evaluation with an unphysical geometry (normal liver mass ≤ 0) drops its design row; the share of
    # such evaluations is held to the Monte Carlo engine's limit
    dropped = est.n_base - est.n_used
    check_invalid(est.n_invalid, total, case.path)

    # one-at-a-time: nominal row, then each input at its low and high percentile (independently)
    z_nom = np.array([_nominal_z(case.inputs[p]) for p in fn.inputs])
    z_oat = np.repeat(z_nom[None, :], 1 + 2 * d, axis=0)
    q_lo, q_hi = (float(special.ndtri(q)) for q in OAT_QUANTILES)
    for i in range(d):
        z_oat[1 + 2 * i, i] = q_lo
        z_oat[2 + 2 * i, i] = q_hi
    z_pad = np.concatenate([z_oat, np.repeat(z_oat[-1:], (-len(z_oat)) % chunk, axis=0)])
    parts = [fn.with_inputs(z_pad[i : i + chunk]) for i in range(0, len(z_pad), chunk)]
    y_oat = np.concatenate([p[0] for p in parts])[: len(z_oat)]
    x_oat = np.concatenate([p[1] for p in parts])[: len(z_oat)]

    ds = _dataset(
        xr, case, est, list(fn.outputs), list(fn.units), list(fn.inputs), y_oat, x_oat, d,
        attrs={
            "y90opt_version": __version__,
            "method": method,
            "input_dependence": dependence,
            "seed": int(seed),
            "samples": int(n),
            "model_evaluations": int(total),
            "rows_used": int(est.n_used),
            "rows_dropped": int(dropped),
            "invalid_evaluations": int(est.n_invalid),
            "bootstrap": int(bootstrap),
            "confidence_level": float(level),
            "dtype": dtype,
            "jax_backend": jax.default_backend(),
            "case_name": case.name,
            "case_sha256": case.sha256,
            "case_path": str(case.path),
            "scenario": case.scenario,
            **_decision_attrs(case, fn),
            "vial_at_treatment_gbq": fn.vial_at_treatment_gbq,
            "success_definition": fn.success_definition,
            "oat_quantiles": f"{OAT_QUANTILES[0]:g} {OAT_QUANTILES[1]:g}",
            "oat_baseline": "every other input at its nominal (measured) value, inputs moved one at a time "
            "without their correlations",
            "biased_inputs": ", ".join(case.biased_inputs) or "none",
            **{f"conventions_{k}": float(v) for k, v in case.conventions.as_dict().items()},
        },
    )
    if dep is not None:
        ds = _add_dependent(ds, dep)
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
        "output_long_name": ("output", [output_long_name(o) for o in outputs], {"long_name": "description of the output"}),
        "input_units": ("input", [_input_units(p) for p in inputs], {"long_name": "units of the input"}),
        "input_long_name": ("input", [input_long_name(p) for p in inputs], {"long_name": "description of the input"}),
        "input_distribution": ("input", [case.inputs[p].describe() for p in inputs], {"long_name": "uncertainty of the input"}),
    }
    ds = xr.Dataset(data, coords=coords, attrs={"title": f"y90opt sensitivity: {case.name}", **attrs})
    return ds


def _add_dependent(ds, dep: DependentEstimate):
    """The other two indices of dependent inputs: ST_full (Xᵢ with its correlations) and S1_independent
    (the part of Xᵢ independent of the other inputs)."""
    dims = ("output", "input")
    ci = f"{100 * dep.full.level:g} % bootstrap percentile interval"
    for name, est, what in (
        ("ST_full", dep.full, "total index of the input with its correlations (full)"),
        ("S1_independent", dep.independent, "first-order index of the part of the input independent of the others"),
    ):
        key = name[:2]
        ds[name] = (dims, getattr(est, key), {"units": "1", "long_name": what})
        ds[f"{name}_lo"] = (dims, getattr(est, f"{key}_lo"), {"units": "1", "long_name": f"{what}, lower end of the {ci}"})
        ds[f"{name}_hi"] = (dims, getattr(est, f"{key}_hi"), {"units": "1", "long_name": f"{what}, upper end of the {ci}"})
        ds[f"{name}_se"] = (dims, getattr(est, f"{key}_se"), {"units": "1", "long_name": f"{what}, bootstrap standard error"})
    ds["S1"].attrs["long_name"] = "first-order Sobol' index V[E(Y|Xi)]/V (full, with the input's correlations)"
    ds["ST"].attrs["long_name"] = "total Sobol' index E[V(Y|X~i)]/V (independent part of the input)"
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
            for extra in ("ST_full", "S1_independent"):
                if extra in ds:
                    indices[-1][extra] = _f(sel[extra])
                    indices[-1][f"{extra}_ci"] = [_f(sel[f"{extra}_lo"]), _f(sel[f"{extra}_hi"])]
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
        **_decision_summary(a),
        "success_definition": a["success_definition"],
        "conventions": {k[len("conventions_"):]: float(v) for k, v in a.items() if k.startswith("conventions_")},
        "biased_inputs": [x for x in str(a.get("biased_inputs", "none")).split(", ") if x and x != "none"],
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


def _decision_attrs(case: Case, fn) -> dict[str, Any]:
    """The decision the indices hold at: the ``[plan]`` vial and time, or each injection's (JSON)."""
    if not case.multi:
        return {"vial_gbq": float(case.plan.vial_gbq), "hours_after_calibration": fn.hours_after_calibration}
    import json

    return {"injections": json.dumps({j.name: {"vial_gbq": v, "hours_after_calibration": h}
                                      for j, (h, v, _) in zip(case.injections, case.injection_decisions("`sensitivity`"),
                                                              strict=True)})}


def _decision_summary(a) -> dict[str, Any]:
    import json

    if "injections" in a:
        return {"injections": json.loads(a["injections"])}
    return {"vial_gbq": float(a["vial_gbq"]), "hours_after_calibration": float(a["hours_after_calibration"])}


def _ci(lo, hi) -> str:
    lo, hi = float(lo), float(hi)
    return f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "—"


def _text(ds) -> str:
    from .textout import table

    a = ds.attrs
    lines = [
        f"case {a['case_name']!r}  scenario {a['scenario']}  "
        + (f"vial {a['vial_gbq']:g} GBq at {a['hours_after_calibration']:.1f} h after calibration" if "injections" not in a
           else "injections " + ", ".join(f"{n} {d['vial_gbq']:g} GBq at {d['hours_after_calibration']:.1f} h"
                                          for n, d in _decision_summary(a)["injections"].items())),
        f"{a['samples']} base samples, {a['model_evaluations']} model evaluations, seed {a['seed']}, "
        f"{a['dtype']} on {a['jax_backend']}; "
        + (f"{100 * a['confidence_level']:g} % bootstrap intervals ({a['bootstrap']} resamples)" if a["bootstrap"]
           else "no confidence intervals (no bootstrap)"),
        f"inputs: {a['input_dependence']}",
        f"method: {a['method']}",
        f"success = {a['success_definition']}",
        f"conventions: K = {a['conventions_dose_constant_gy_kg_per_gbq']:g} Gy·kg/GBq, "
        f"T½ = {a['conventions_half_life_h']:g} h, density {a['conventions_tissue_density_g_per_ml']:g} g/mL",
    ]
    if a.get("biased_inputs", "none") != "none":
        lines.append(f"bias options used on {a['biased_inputs']} (research: inputs centred on a delivered-dose estimate)")
    if a.get("rows_dropped"):
        lines.append(f"{a['rows_dropped']} of {a['samples']} design rows dropped (an unphysical geometry: normal "
                     "liver mass ≤ 0 or perfused territory larger than the liver)")
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
        none = (st == 0.0) & (sub["S1"].values == 0.0)  # the input does not enter this output
        order = np.argsort(-np.nan_to_num(np.fmax(st, sub["S1"].values), nan=-1.0), kind="stable")
        rows = []
        for j in order:
            if none[j]:  # listed once below
                continue
            s = sub.isel(input=j)
            rows.append((
                str(s["input"].values),
                float(s["S1"]), _ci(s["S1_lo"], s["S1_hi"]),
                float(s["ST"]), _ci(s["ST_lo"], s["ST_hi"]),
                float(s["oat_low"]), float(s["oat_high"]),
            ))
        lines.append(table(
            rows,
            header=("input", "S1", "S1 CI", "ST", "ST CI", f"at {plo}", f"at {phi}"),
            align="lrlrlrr",
        ))
        absent = [str(i) for i, v in zip(sub["input"].values, none, strict=True) if v]
        if absent:
            lines.append("no effect (S1 = ST = 0): " + ", ".join(absent))
    return "\n".join(lines)
