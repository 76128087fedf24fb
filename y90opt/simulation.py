"""Monte Carlo doses at one decision (``y90opt simulate``), with streaming reductions.

Memory does not grow with the sample count: every chunk is reduced inside its ``jit`` to sums, counts and
fixed-bin histograms. Quantiles are exact (all samples kept) up to :data:`EXACT_QUANTILE_LIMIT` samples;
above, they come from log-spaced histograms whose bin edges are fixed by a pilot chunk, and their relative
error (half a bin) is stated in the Dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from . import engine, physics
from .case import Case
from .outcomes import RuleTable, active_rules, compile_rules, nominal_advisories

#: Up to this many samples, quantiles are computed exactly from all samples.
EXACT_QUANTILE_LIMIT = 2_000_000
#: Log-spaced histogram bins per quantity for streaming quantiles.
HIST_BINS = 16384
QUANTILES = (0.05, 0.5, 0.95)


def sort_rows(rows: np.ndarray) -> np.ndarray:
    """Sort each row of a 2-D array (each row contiguous) in place, rows spread over the CPU cores (numpy's sort
    releases the GIL); returns ``rows``."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(rows), os.cpu_count() or 1)
    if workers <= 1 or rows.shape[1] < 2**16:
        rows.sort(axis=1)
        return rows
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda r: r.sort(), rows))
    return rows


def sorted_quantiles(rows, probs, n: int | None = None) -> np.ndarray:
    """``np.quantile(rows[:, :n], probs, axis=1)`` (its default 'linear' method) of rows already sorted (numpy
    or JAX arrays; only the order statistics used are read back): shape (P, rows), float64.

    The same order statistics and interpolation as numpy's, without its partition (which costs more than the
    sort on sorted data)."""
    n = rows.shape[1] if n is None else n
    probs = np.asarray(probs, dtype=np.float64)
    virtual = probs * (n - 1)
    lo = np.floor(virtual).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    t = (virtual - lo)[:, None]
    a, b = np.asarray(rows[:, lo]).T, np.asarray(rows[:, hi]).T
    diff = (b - a).astype(np.float64)  # numpy's _lerp takes the difference in the data's dtype
    a, b = a.astype(np.float64), b.astype(np.float64)
    # and interpolates from the nearer end, so t = 1 gives b exactly
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


@dataclasses.dataclass
class SimulationResult:
    dataset: Any  # xarray.Dataset
    summary: dict[str, Any]

    def text(self) -> str:
        return simulation_text(self.summary)


def decision_activity(case: Case) -> tuple[float, float]:
    """(hours after calibration, vial activity at treatment [GBq]) of the case's ``[plan]`` decision."""
    return case.decision("`dose` and `simulate`")


def _pairwise_sum(x):
    """Sum over axis 1 (a power of two long) by halving: elementwise additions only, in a fixed tree, so the
    result of every block is bit-identical whatever the number of blocks in the call (a library reduction
    may group its additions differently for different array shapes)."""
    import jax

    while x.shape[1] > 1:
        # a + b, one addition per element; the barrier keeps XLA from merging the steps into one reduction
        x = jax.lax.optimization_barrier(x.reshape(x.shape[0], 2, x.shape[1] // 2, *x.shape[2:]).sum(axis=1))
    return x[:, 0]


def _moment_reducer(f, valid, in_range, s, b, cols, thr, signs, primary, limit, lo, hi, shift):
    """Per chunk: per-block counts and sums of (d − shift) and (d − shift)², rule and success counts,
    histograms, minima and maxima. The chunk is a whole number of the engine's random blocks, and the sums are
    kept per block, so that the run's statistics do not depend on how the samples are cut into chunks."""
    import jax.numpy as jnp

    from .engine import BLOCK

    ok = valid & in_range
    d = s * f + b
    x = jnp.where(ok[:, None], d - shift, 0.0).reshape(-1, BLOCK, d.shape[1])
    block_count = jnp.sum(ok.reshape(-1, BLOCK), axis=1)
    block_s1 = _pairwise_sum(x)
    block_s2 = _pairwise_sum(x * x)
    margins = signs * (d[:, cols] - thr)
    sat = (margins <= 0) & ok[:, None]
    rule_counts = jnp.sum(sat, axis=0)
    success = jnp.all((margins <= 0) | ~primary, axis=1) & ok
    limits_ok = jnp.all((margins <= 0) | ~limit, axis=1) & ok
    # histograms on log scale; NaN and out-of-range values go to the under/overflow bins
    nb = HIST_BINS
    logd = jnp.log(jnp.maximum(d, 1e-30))
    pos = (logd - lo) / (hi - lo) * nb
    idx = jnp.clip(jnp.floor(pos), -1, nb).astype(jnp.int32) + 1  # 0 underflow, nb+1 overflow
    q = d.shape[1]
    flat = idx + jnp.arange(q, dtype=jnp.int32)[None, :] * (nb + 2)
    hist = jnp.zeros(q * (nb + 2), jnp.int32).at[flat.ravel()].add(jnp.repeat(ok.astype(jnp.int32), q))
    return (
        jnp.sum(ok), jnp.sum(in_range & ~valid), block_count, block_s1, block_s2, rule_counts,
        jnp.sum(success), jnp.sum(limits_ok), hist.reshape(q, nb + 2), jnp.min(jnp.where(ok[:, None], d, jnp.inf), 0),
        jnp.max(jnp.where(ok[:, None], d, -jnp.inf), 0),
    )


def _collect_reducer(f, valid, in_range, s, b):
    return s * f + b, valid & in_range, in_range & ~valid


def simulate_case(
    case: Case,
    n: int = 100_000,
    seed: int = 0,
    chunk: int | None = None,
    dtype: str = "float32",
    keep_samples: bool = False,
    progress: bool = False,
    exact_quantile_limit: int = EXACT_QUANTILE_LIMIT,
) -> SimulationResult:
    """Propagate the input uncertainties of ``case`` to every dose at its ``[plan]`` decision."""
    engine.enable_x64_if(dtype)
    if case.multi:
        # the doses at the decision are the factors of a model at s = 1 (linear in the vial activities)
        decisions = case.injection_decisions("`dose` and `simulate`")
        model = engine.TreatmentModel.from_case(case).decided([x[2] for x in decisions])
        hours, s = None, 1.0
    else:
        hours, s = decision_activity(case)
        model = engine.Model.from_case(case)
    rt = compile_rules(active_rules(case), model.quantities)
    chunk = chunk or engine.default_chunk()
    b = model.offsets
    bar = _progress(n, progress)
    exact = n <= exact_quantile_limit or keep_samples

    if exact:
        doses, oks = [], []
        n_invalid = 0
        for d, ok, bad in engine.run_chunks(model, n, seed, _collect_reducer, (s, b), chunk, dtype, bar):
            m = np.asarray(ok)
            doses.append(np.asarray(d)[m])
            n_invalid += int(np.sum(bad))
            oks.append(m)
        _close(bar)
        engine.check_invalid(n_invalid, n, case.path, model=model, seed=seed)
        all_d = np.concatenate(doses)  # kept in the run's dtype; statistics accumulate in float64
        stats = _exact_stats(all_d, rt)
        stats["quantile_method"] = "exact (all samples)"
        stats["quantile_rel_error"] = 0.0
    else:
        stats, n_invalid = _streaming_stats(model, n, seed, s, b, rt, chunk, dtype, bar)
        _close(bar)
        engine.check_invalid(n_invalid, n, case.path, model=model, seed=seed)
        all_d = None
    stats["n_invalid"] = n_invalid
    ds = _dataset(case, model, rt, stats, hours, s, n, seed, dtype, all_d if keep_samples else None)
    return SimulationResult(ds, summarize_simulation(ds, case))


def _exact_stats(d: np.ndarray, rt: RuleTable) -> dict[str, Any]:
    n = d.shape[0]
    margins = rt.margins(d)
    sat = margins <= 0
    success = np.all(sat[:, rt.is_primary], axis=1) if rt.is_primary.any() else np.ones(n, bool)
    limits = np.all(sat[:, rt.is_limit], axis=1) if rt.is_limit.any() else np.ones(n, bool)
    rows = sort_rows(np.array(d.T, order="C"))  # one contiguous, sorted row per quantity (a copy: d is kept)
    return {
        "n": n,
        "mean": rows.mean(1, dtype=np.float64),
        "sd": rows.std(1, ddof=1, dtype=np.float64) if n > 1 else np.zeros(d.shape[1]),
        "quantiles": sorted_quantiles(rows, QUANTILES) if n else np.full((3, d.shape[1]), np.nan),
        "rule_counts": sat.sum(0),
        "success": int(success.sum()),
        "limits": int(limits.sum()),
    }


def _streaming_stats(model, n, seed, s, b, rt: RuleTable, chunk, dtype, bar):
    # pilot: the first chunk fixes the histogram range (log scale, widened 4x each way)
    pilot_n = min(n, 1 << 16)
    f, v = engine.sample_factors(model, pilot_n, seed, chunk=pilot_n, dtype=dtype)
    d = s * f[v] + b
    pos = d[d > 0]
    lo = np.log(pos.min() / 4.0) if pos.size else -30.0
    hi = np.log(d.max() * 4.0) if pos.size else 1.0
    shift = d.mean(axis=0) if d.size else np.zeros(len(b))  # sums of (d − shift)²: no cancellation
    args = (s, b, rt.cols, rt.thresholds, rt.signs, rt.is_primary, rt.is_limit, lo, hi, shift)
    # whole random blocks per chunk, so no block is ever split between chunks (the chunk size stays a
    # performance setting: the statistics below are the same for any chunk)
    block = engine.BLOCK
    chunk = max(block, -(-(chunk or engine.default_chunk()) // block) * block)
    count = n_invalid = success = limits = 0
    rule_counts = hist = dmin = dmax = None
    s1 = s2 = np.zeros(len(b))
    for part in engine.run_chunks(model, n, seed, _moment_reducer, args, chunk, dtype, bar, whole_blocks=True):
        ok_n, bad_n, bc, b1, b2, rc, su, li, h, mn, mx = (np.asarray(x) for x in part)
        count += int(ok_n)
        n_invalid += int(bad_n)
        success += int(su)
        limits += int(li)
        rule_counts = rc.astype(np.int64) if rule_counts is None else rule_counts + rc
        hist = h.astype(np.int64) if hist is None else hist + h
        dmin = mn.astype(np.float64) if dmin is None else np.minimum(dmin, mn)
        dmax = mx.astype(np.float64) if dmax is None else np.maximum(dmax, mx)
        # the blocks' sums added one block after another in the order of the blocks: a left fold, the same
        # operations in the same order whatever the chunk size (np.cumsum is sequential)
        keep = bc > 0
        s1 = np.cumsum(np.vstack([s1, b1[keep].astype(np.float64)]), axis=0)[-1]
        s2 = np.cumsum(np.vstack([s2, b2[keep].astype(np.float64)]), axis=0)[-1]
    mean = shift + s1 / max(count, 1)
    var = np.maximum(s2 - s1 * s1 / max(count, 1), 0.0) / max(count - 1, 1)
    edges = lo + (hi - lo) * np.arange(HIST_BINS + 1) / HIST_BINS
    quantiles = np.stack([[_hist_quantile(hist[j], edges, p, dmin[j], dmax[j]) for j in range(hist.shape[0])] for p in QUANTILES])
    return {
        "n": count,
        "mean": mean,
        "sd": np.sqrt(var),
        "quantiles": quantiles,
        "rule_counts": rule_counts,
        "success": int(success),
        "limits": int(limits),
        "quantile_method": f"log-spaced histogram, {HIST_BINS} bins",
        "quantile_rel_error": float(np.expm1((hi - lo) / HIST_BINS / 2)),
    }, int(n_invalid)


def _hist_quantile(h: np.ndarray, edges: np.ndarray, p: float, dmin: float, dmax: float) -> float:
    """Quantile from a histogram with under/overflow bins (log-linear interpolation within a bin)."""
    total = h.sum()
    if total == 0:
        return float("nan")
    target = p * total
    c = np.cumsum(h)
    k = int(np.searchsorted(c, target, side="left"))
    if k == 0:
        return float(dmin)
    if k == len(h) - 1:
        return float(dmax)
    before = c[k - 1]
    frac = (target - before) / h[k] if h[k] else 0.0
    lo_e, hi_e = edges[k - 1], edges[k]
    return float(np.clip(np.exp(lo_e + frac * (hi_e - lo_e)), dmin, dmax))


def _dataset(case, model, rt, stats, hours, s, n, seed, dtype, samples):
    from .results import build_dataset, provenance

    count = stats["n"]
    rc = np.asarray(stats["rule_counts"], dtype=np.float64)
    p = rc / count if count else np.full(len(rt.labels), np.nan)
    p_succ = stats["success"] / count if count else float("nan")
    if not rt.is_primary.any():  # no primary target to meet: success is undefined, never a vacuous 1
        p_succ = float("nan")
    nominal = s * model.nominal_factors() + model.offsets
    dv = {
        "mean": ("quantity", stats["mean"]),
        "mean_se": ("quantity", stats["sd"] / np.sqrt(max(count, 1))),
        "sd": ("quantity", stats["sd"]),
        "p05": ("quantity", stats["quantiles"][0]),
        "p50": ("quantity", stats["quantiles"][1]),
        "p95": ("quantity", stats["quantiles"][2]),
        "nominal": ("quantity", nominal),
        "probability": ("rule", p),
        "probability_se": ("rule", np.sqrt(p * (1 - p) / max(count, 1))),
        "threshold": ("rule", rt.thresholds),
        "rule_kind": ("rule", np.array(rt.kinds, dtype=object)),
        "rule_quantity": ("rule", np.array(rt.quantities, dtype=object)),
        "rule_source": ("rule", np.array(rt.sources, dtype=object)),
        "p_success": ((), p_succ),
        "p_success_se": ((), np.sqrt(p_succ * (1 - p_succ) / max(count, 1))),
        "p_limits": ((), stats["limits"] / count if count else float("nan")),
    }
    if samples is not None:
        dv["samples"] = (("sample", "quantity"), samples)
    coords = {"quantity": list(model.quantities), "rule": list(rt.labels), "unit": ("quantity", list(model.units))}
    if case.multi:
        decisions = case.injection_decisions("`simulate`")
        dv["injection_hours_after_calibration"] = ("injection", np.array([d[0] for d in decisions]))
        dv["injection_vial_at_calibration"] = ("injection", np.array([d[1] for d in decisions]))
        dv["injection_vial_at_treatment"] = ("injection", np.array([d[2] for d in decisions]))
        coords["injection"] = [j.name for j in case.injections]
        coords["injection_session"] = ("injection", [j.session for j in case.injections])
        decision = {"decision": "per injection: see the injection variables"}
    else:
        decision = {"hours_after_calibration": hours, "vial_at_calibration_gbq": case.plan.vial_gbq,
                    "vial_at_treatment_gbq": s}
    attrs = provenance(case, seed=seed, n=n, dtype=dtype, command="simulate", extra={
        **decision,
        "valid_sample_count": count,
        "unphysical_sample_count": stats["n_invalid"],
        "quantile_method": stats["quantile_method"],
        "quantile_rel_error": stats["quantile_rel_error"],
        "rules_not_evaluated": ", ".join(rt.not_evaluated),
        "rules_not_evaluable": json.dumps(list(rt.not_evaluable)),
        "quantities_not_available": ", ".join(rt.missing_quantities),
        "success_definition": f"all primary targets met ({case.plan.success})",
    })
    ds = build_dataset(dv, coords, attrs)
    for v in ("mean", "mean_se", "sd", "p05", "p50", "p95", "nominal"):
        ds[v].attrs["units"] = "Gy (GBq for activities: see the unit coordinate)"
    return ds


def summarize_simulation(ds, case: Case) -> dict[str, Any]:
    """The pinned ``simulate --json`` structure, derived from the Dataset."""
    if case.multi:
        return _summarize_treatment(ds, case)
    dose_gy: dict[str, Any] = {}
    act: dict[str, Any] = {}
    for q, unit in zip(ds["quantity"].values.tolist(), ds["unit"].values.tolist(), strict=True):
        st = {k: float(ds[k].sel(quantity=q)) for k in ("mean", "p05", "p50", "p95", "sd", "mean_se", "nominal")}
        if unit == "GBq":
            act[q] = st
        elif q.startswith("tumors."):
            dose_gy.setdefault("tumors", {})[q.split(".", 1)[1]] = st
        elif q.startswith("tumors_d70."):
            dose_gy.setdefault("tumors_d70", {})[q.split(".", 1)[1]] = st
        else:
            dose_gy[q] = st
    a = ds.attrs
    rules = _rule_summaries(ds)
    not_evaluable = json.loads(a.get("rules_not_evaluable", "[]"))
    nominal = {
        "activity_gbq": {"lung": float(ds["nominal"].sel(quantity="lung_activity"))},
        "hours_after_calibration": float(a["hours_after_calibration"]),
        "activity_per_sphere_bq": physics.activity_per_sphere_bq(float(a["hours_after_calibration"]), case.conventions),
    }
    return {
        "case": case.name,
        "scenario": case.scenario,
        "samples": int(a["sample_count"]),
        "seed": int(a["seed"]),
        "dtype": a["dtype"],
        "backend": a["backend"],
        "hours_after_calibration": float(a["hours_after_calibration"]),
        "activity_gbq": {"vial_at_calibration": float(a["vial_at_calibration_gbq"]), "vial_at_treatment": float(a["vial_at_treatment_gbq"]), **act},
        "dose_gy": dose_gy,
        "rules": rules,
        "rules_not_evaluated": [x for x in str(a["rules_not_evaluated"]).split(", ") if x],
        "rules_not_evaluable": not_evaluable,
        "p_success": _finite_or_none(ds["p_success"]),
        "p_success_se": _finite_or_none(ds["p_success_se"]),
        "p_limits": float(ds["p_limits"]),
        "valid_samples": int(a["valid_sample_count"]),
        "unphysical_samples": int(a["unphysical_sample_count"]),
        "quantile_method": a["quantile_method"],
        "quantile_rel_error": float(a["quantile_rel_error"]),
        "conventions": case.conventions.as_dict(),
        "case_sha256": a["case_sha256"],
        "advisories": nominal_advisories(case, nominal),
    }


def _rule_summaries(ds) -> list[dict[str, Any]]:
    a = ds.attrs
    rules = [
        {
            "label": str(r),
            "kind": str(ds["rule_kind"].sel(rule=r).item()),
            "quantity": str(ds["rule_quantity"].sel(rule=r).item()),
            "threshold_gy": float(ds["threshold"].sel(rule=r)),
            "probability": float(ds["probability"].sel(rule=r)),
            "probability_se": float(ds["probability_se"].sel(rule=r)),
            "ci95": wilson_interval(float(ds["probability"].sel(rule=r)), int(a["valid_sample_count"])),
            "source": str(ds["rule_source"].sel(rule=r).item()),
        }
        for r in ds["rule"].values.tolist()
    ]
    not_evaluable = json.loads(a.get("rules_not_evaluable", "[]"))
    rules += [{"label": r["id"], "kind": r["kind"], "quantity": r["quantity"], "status": "not evaluable",
               "reason": r["reason"], "probability": None} for r in not_evaluable]
    return rules


def _summarize_treatment(ds, case: Case) -> dict[str, Any]:
    """``simulate --json`` of a case with ``[[injections]]``: the nested keys of ``dose --json``, each dose as
    ``{mean, p05, p50, p95, …}`` and each activity likewise."""
    from .outcomes import treatment_advisories, treatment_dose_mapping

    names = ds["quantity"].values.tolist()
    stats = {q: {k: float(ds[k].sel(quantity=q)) for k in ("mean", "p05", "p50", "p95", "sd", "mean_se", "nominal")}
             for q in names}
    decisions = [(float(h), float(v), float(s)) for h, v, s in zip(
        ds["injection_hours_after_calibration"].values, ds["injection_vial_at_calibration"].values,
        ds["injection_vial_at_treatment"].values, strict=True)]
    out = treatment_dose_mapping(case, stats, decisions)
    nominal = treatment_dose_mapping(case, {q: v["nominal"] for q, v in stats.items()}, decisions)
    a = ds.attrs
    out.update({
        "samples": int(a["sample_count"]),
        "seed": int(a["seed"]),
        "dtype": a["dtype"],
        "backend": a["backend"],
        "rules": _rule_summaries(ds),
        "rules_not_evaluated": [x for x in str(a["rules_not_evaluated"]).split(", ") if x],
        "rules_not_evaluable": json.loads(a.get("rules_not_evaluable", "[]")),
        "p_success": _finite_or_none(ds["p_success"]),
        "p_success_se": _finite_or_none(ds["p_success_se"]),
        "p_limits": float(ds["p_limits"]),
        "valid_samples": int(a["valid_sample_count"]),
        "unphysical_samples": int(a["unphysical_sample_count"]),
        "quantile_method": a["quantile_method"],
        "quantile_rel_error": float(a["quantile_rel_error"]),
        "case_sha256": a["case_sha256"],
        "advisories": treatment_advisories(case, nominal),
    })
    return out


def _finite_or_none(x) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def wilson_interval(p: float, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson score interval for a binomial proportion: unlike p ± z·SE it is not empty at p = 0 or 1
    (Wilson, JASA 1927)."""
    if n <= 0 or not np.isfinite(p):
        return [float("nan"), float("nan")]
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if p == 0 else max(0.0, centre - half)
    hi = 1.0 if p == 1 else min(1.0, centre + half)
    return [float(lo), float(hi)]


def simulation_text(summary: dict[str, Any]) -> str:
    from .outcomes import flatten_doses
    from .textout import table

    if "injections" in summary:
        return _treatment_simulation_text(summary)

    act = summary["activity_gbq"]
    c = summary["conventions"]
    lines = [
        f"case {summary['case']!r}  scenario {summary['scenario']}",
        f"vial {act['vial_at_calibration']:g} GBq, treatment {summary['hours_after_calibration']:.1f} h after calibration "
        f"({act['vial_at_treatment']:.3g} GBq at treatment)",
        f"{summary['samples']} samples, seed {summary['seed']}, {summary['dtype']} on {summary['backend']}; "
        f"K = {c['dose_constant_gy_kg_per_gbq']:g} Gy·kg/GBq, T½ = {c['half_life_h']:g} h, density {c['tissue_density_g_per_ml']:g} g/mL",
        "",
    ]
    rows = [(k, v["nominal"], v["mean"], v["p05"], v["p50"], v["p95"]) for k, v in flatten_doses(summary["dose_gy"]).items()]
    lines.append(table(rows, header=("dose (Gy)", "nominal", "mean", "p05", "p50", "p95")))
    lines.append("")
    lines += _rule_lines(summary, "tumours larger than their territory, or a whole liver smaller than the perfused "
                                  "territory and the untreated tumours")
    return "\n".join(lines)


def _rule_lines(summary: dict[str, Any], unphysical: str) -> list[str]:
    """The rules table (P ± SE, Wilson interval; the rules not evaluable with their reason), P(success), the
    unphysical samples (``unphysical``: what makes one) and the advisories of a ``simulate`` summary."""
    from .textout import table

    rrows = [
        (r["label"], r["kind"], ("≥ " if r["kind"] != "limit" else "≤ ") + f"{r['threshold_gy']:g}",
         f"{r['probability']:.4f} ± {r['probability_se']:.4f}", f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
        for r in summary["rules"] if r.get("status") != "not evaluable"
    ]
    rrows += [(r["label"], r["kind"], "", "not evaluable", r["reason"])
              for r in summary["rules"] if r.get("status") == "not evaluable"]
    lines = [table(rrows, header=("rule", "kind", "Gy", "P(satisfied) ± SE", "95 % CI (Wilson)"), align="lllrr")]
    success = ("no primary target evaluable" if summary["p_success"] is None
               else f"{summary['p_success']:.4f} ± {summary['p_success_se']:.4f}")
    lines.append(f"\nP(all primary targets met) = {success}; P(all limits kept) = {summary['p_limits']:.4f}")
    if summary["unphysical_samples"]:
        lines.append(f"{summary['unphysical_samples']} unphysical samples excluded ({unphysical})")
    lines += [f"advisory [{a['code']}]: {a['message']}" for a in summary["advisories"]]
    return lines


def _treatment_simulation_text(summary: dict[str, Any]) -> str:
    from .outcomes import flatten_nested
    from .textout import table

    lines = [f"case {summary['case']!r}  scenario {summary['scenario']}",
             f"{summary['samples']} samples, seed {summary['seed']}, {summary['dtype']} on {summary['backend']}", ""]
    lines.append(table([(n, j["session"], f"{j['hours_after_calibration']:.1f}", j["activity_gbq"]["vial_at_calibration"],
                         j["activity_gbq"]["vial_at_treatment"]) for n, j in summary["injections"].items()],
                       header=("injection", "session", "h after cal.", "vial GBq", "at treatment"), align="lllrr"))
    lines.append("")
    flat = {f"injections.{n}.{k}": v for n, j in summary["injections"].items() for k, v in j["dose_gy"].items()}
    flat.update(flatten_nested(summary["dose_gy"]))
    lines.append(table([(k, v["nominal"], v["mean"], v["p05"], v["p50"], v["p95"]) for k, v in flat.items()],
                       header=("dose (Gy)", "nominal", "mean", "p05", "p50", "p95")))
    lines.append("")
    lines += _rule_lines(summary, "a region without normal tissue: nested territories or tumours larger than their "
                                  "container, or a whole liver too small")
    return "\n".join(lines)


def _progress(n: int, enabled: bool):
    import sys

    if not enabled or n < 2_000_000 or not sys.stderr.isatty():
        return None

    from tqdm import tqdm

    bar = tqdm(total=n, unit="samples", unit_scale=True, file=sys.stderr, leave=False)
    return bar.update


def _close(bar) -> None:
    if bar is not None:
        bar.__self__.close()
