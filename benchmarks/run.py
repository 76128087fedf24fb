"""y90opt benchmarks: forward Monte Carlo, the model alone, planning, Optuna, Sobol, memory.

    python benchmarks/run.py --quick            # under a minute on a 2-core CPU
    python benchmarks/run.py                    # the full run (N up to 1e9; tens of minutes on 2 cores)
    python benchmarks/run.py --json --out r.json
    python benchmarks/run.py --gpu --json       # on a GPU (see benchmarks/gpu_smoke.sh)
    python benchmarks/run.py --table r.json     # the short table of a saved run (imports nothing heavy)

Every figure is measured in the same run as its baseline and printed with its ratio to it: the JAX forward
pipeline against the plain-numpy pipeline (benchmarks/numpy_pipeline.py: ``np.random.default_rng``, float64,
the reference model, the same reductions), the exact planner against a naive planner that re-simulates each
candidate with fresh samples. Both pipelines run the SAME forward model on the same case (two tumours with
the partition model, lung, whole liver; eight uncertain inputs): sampling + model + reductions (count, mean,
sum of squares and an exceedance count per quantity).

The JSON holds ``throughput_samples_per_s.{numpy, jax_cpu[, jax_gpu]}`` (samples per second at the headline
N, float32 for JAX as y90opt runs by default; ``jax_cpu_float64`` beside it), every row with its
device, dtype, first-call (compile) and warm times, and the environment (date, CPU, versions, load average:
the benchmark machine may be shared, so CPU time is recorded beside wall time).

Optuna and y90opt's optional modules (``optimise``, ``sensitivity``) are imported lazily: a section whose
module is missing is recorded as skipped, never fatal. A failing section is recorded with its error and the
run goes on, so a time-limited run always leaves its JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from typing import Any

import numpy as np
import numpy_pipeline as npp
import timing
from timing import fmt_n, fmt_rate, time_call

#: Sizes of the forward throughput sweep.
FULL_NS = [10**k for k in range(4, 10)]  # 1e4 … 1e9
QUICK_NS = [10**5, 10**6]
#: Largest N for float64 and numpy in the full CPU run (1e9 in float64 / numpy would take an hour here).
FULL_MAX_N_F64 = 10**8
FULL_MAX_N_NUMPY = 10**8
#: Planning benchmark: samples, and larger decision spaces given as (vial range, hours range).
PLAN_N = 10**6
SPACES = {
    "6x5": None,  # the case's catalogue × its five candidate days
    "20x20": ((1.0, 20.0, 1.0), (24.0, 480.0, 24.0)),
    "100x50": ((0.2, 20.0, 0.2), (12.0, 600.0, 12.0)),
    "1000x100": ((0.02, 20.0, 0.02), (6.0, 600.0, 6.0)),
}
GPU_CHUNK = 1 << 22

#: Stated physical estimate for the forward pipeline on a GPU (not measured: from data sheets and a count of
#: instructions). Per device kind (a substring of JAX's ``device_kind``, most specific first): streaming
#: multiprocessors, boost clock (GHz) and HBM bandwidth (TB/s), from NVIDIA's H100 (SXM5 80 GB, PCIe 80 GB, NVL
#: 94 GB) and H200 data sheets. JAX's ``core_count`` replaces the SM count when the device reports it.
GPU_SPECS = {
    "H200": {"sms": 132, "clock_ghz": 1.98, "hbm_tb_s": 4.8},
    "H100 PCIe": {"sms": 114, "clock_ghz": 1.755, "hbm_tb_s": 2.0},
    "H100 NVL": {"sms": 132, "clock_ghz": 1.785, "hbm_tb_s": 3.9},
    "H100": {"sms": 132, "clock_ghz": 1.98, "hbm_tb_s": 3.35},
}
#: Per SM and clock on Hopper: 64 int32 lanes, 128 float32 lanes (4 schedulers × 32: also the issue rate of
#: thread-instructions), 64 float64 lanes.
LANES_PER_SM = {"int32": 64, "issue": 128, "float32": 128, "float64": 64}
#: A threefry-2×32 hash: 20 rounds of add, rotate (one funnel shift) and xor, 5 key injections, ≈ 110 int32
#: instructions. A sample draws 8 words: float32 4 hashes (both words of each, engine.block_normals), float64
#: 8 hashes (one 64-bit word each).
INT_PER_HASH = 110
HASHES_PER_SAMPLE = {"float32": 4, "float64": 8}
#: Float instructions per sample: 8 erf⁻¹ (≈ 25 each in float32), 8 exp (≈ 10), the model and the reductions
#: of 12 quantities (≈ 220); float64 transcendental polynomials are about twice as long.
FLOAT_PER_SAMPLE = {"float32": 500, "float64": 1000}
#: Bytes per sample if a chunk's variates (8) and factor matrix (12) were materialised: written and read.
MATERIALISED_BYTES = {"float32": (8 + 12) * 4 * 2, "float64": (8 + 12) * 8 * 2}


def gpu_spec_estimate(device_kind: str, core_count: int | None, dtype: str) -> dict | None:
    """The stated compute-bound estimate of forward samples/s on a known GPU (``None`` for an unknown one):
    the lesser of the integer-pipe bound (hashes), the float-pipe bound and the instruction-issue bound; and the
    memory bound if the variates and factors were materialised (XLA fusion should avoid it)."""
    spec = next((v for k, v in GPU_SPECS.items() if k in device_kind), None)
    if spec is None:
        return None
    sms = core_count or spec["sms"]
    per_s = sms * spec["clock_ghz"] * 1e9
    int_ops = HASHES_PER_SAMPLE[dtype] * INT_PER_HASH
    flt_ops = FLOAT_PER_SAMPLE[dtype]
    bounds = {
        "int32_pipe": per_s * LANES_PER_SM["int32"] / int_ops,
        "float_pipe": per_s * LANES_PER_SM[dtype] / flt_ops,
        "issue": per_s * LANES_PER_SM["issue"] / (int_ops + flt_ops),
    }
    return {
        "device_kind": device_kind, "sms": sms, **{k: spec[k] for k in ("clock_ghz", "hbm_tb_s")},
        "int_ops_per_sample": int_ops, "float_ops_per_sample": flt_ops,
        "compute_bounds_samples_per_s": bounds,
        "estimate_samples_per_s": min(bounds.values()),
        "memory_bound_if_materialised_samples_per_s": spec["hbm_tb_s"] * 1e12 / MATERIALISED_BYTES[dtype],
    }


#: Warm repeats of each ceiling figure: the calls take milliseconds, and a few repeats right after compiling
#: read up to 3× low on the CPU (the figure then depends on what ran before).
CEILING_REPEATS = 40

TARGETS = {
    "jax_cpu_vs_numpy": "JAX pipeline ≥ 3× the numpy pipeline on CPU",
    "plan_6x5_1e6_warm_s": "exact plan over 6 vials × 5 days with 1e6 samples ≤ 0.5 s warm on CPU",
    "memory_flat": "peak memory of simulate flat in N (streaming above the exact-quantile limit)",
}


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# -- the JAX pipeline -----------------------------------------------------------------------------------------


def bench_reducer(f, valid, in_range, s, b, thr):
    """Per chunk: valid count, sum, sum of squares and exceedance count of every quantity at s."""
    import jax.numpy as jnp

    ok = valid & in_range
    d = s * f + b
    dz = jnp.where(ok[:, None], d, 0.0)
    return jnp.sum(ok), jnp.sum(dz, axis=0), jnp.sum(dz * dz, axis=0), jnp.sum((d > thr) & ok[:, None], axis=0)


def jax_pipeline(model, n: int, seed: int, s: float, b: np.ndarray, thr: np.ndarray, chunk: int, dtype: str) -> dict:
    """Sampling + model + reductions through ``engine.run_chunks``; partial results summed in float64 on the
    host every 64 chunks (JAX keeps dispatching while earlier chunks run)."""
    import jax

    from y90opt import engine

    q = len(model.quantities)
    acc = {"count": 0, "sum": np.zeros(q), "sumsq": np.zeros(q), "exceed": np.zeros(q, np.int64)}
    pending: list = []

    def flush() -> None:
        for c, s1, s2, e in jax.device_get(pending):
            acc["count"] += int(c)
            acc["sum"] += np.asarray(s1, np.float64)
            acc["sumsq"] += np.asarray(s2, np.float64)
            acc["exceed"] += np.asarray(e, np.int64)
        pending.clear()

    for part in engine.run_chunks(model, n, seed, bench_reducer, (s, b, thr), chunk, dtype):
        pending.append(part)
        if len(pending) >= 64:
            flush()
    flush()
    return acc


def summary_stats(r: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = max(r["count"], 1)
    mean = r["sum"] / n
    var = np.maximum(r["sumsq"] / n - mean**2, 0.0)
    p = r["exceed"] / n
    return mean, np.sqrt(var / n), p, np.sqrt(p * (1 - p) / n)


def agreement(a: dict, b: dict) -> float:
    """Largest |difference| / combined standard error over the means and exceedance fractions."""
    ma, sa, pa, spa = summary_stats(a)
    mb, sb, pb, spb = summary_stats(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        zm = np.abs(ma - mb) / np.sqrt(sa**2 + sb**2)
        zp = np.abs(pa - pb) / np.sqrt(spa**2 + spb**2)
    z = np.concatenate([zm, zp])
    z = z[np.isfinite(z)]
    return float(z.max()) if z.size else float("nan")


# -- the benchmark ------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.res: dict[str, Any] = {"schema": "y90opt-benchmarks/1", "quick": args.quick, "sections": {}}
        self.env = timing.environment()
        self.res["environment"] = self.env
        self.res["targets"] = TARGETS
        self.tp: dict[str, float] = {}
        self.res["throughput_samples_per_s"] = self.tp
        self.headline: dict[str, Any] = {}
        self.res["headline"] = self.headline

    def save(self) -> None:
        if self.a.out:
            self.headline_figures()
            with open(self.a.out, "w") as fh:
                fh.write(json.dumps(self.res, indent=1, default=_json_default))

    # helpers
    def repeats(self, n: int) -> int:
        if self.a.repeats:
            return 1 if n >= 10**8 and not self.a.gpu else self.a.repeats
        if n >= 10**8:
            return 1
        return 3 if self.a.quick else 5

    def section(self, name: str):
        bench = self

        @contextlib.contextmanager
        def run():
            log(f"\n== {name} ==")
            t0 = time.perf_counter()
            try:
                yield
            except Exception as exc:  # a failing section is recorded, the run goes on
                bench.res["sections"].setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
                log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
                if bench.a.verbose:
                    traceback.print_exc()
            bench.res["sections"].setdefault(name, {})["section_wall_s"] = time.perf_counter() - t0
            bench.res["sections"][name]["load_average_end"] = timing.load_average()
            bench.save()  # after every section: a run cut short still leaves its figures

        return run()

    def setup(self) -> None:
        from y90opt import engine
        from y90opt.case import parse_case
        from y90opt.simulation import decision_activity

        self.case = parse_case(npp.BENCH_CASE, "bench.toml")
        self.model = engine.Model.from_case(self.case)
        self.hours, self.s = decision_activity(self.case)
        self.b = self.model.offsets
        # exceedance threshold: each quantity's nominal value (P(above) ≈ 0.5: a well-conditioned check)
        self.thr = self.s * self.model.nominal_factors() + self.b
        self.nm = npp.NumpyModel.from_case(self.case, self.model.quantities)
        self.devices = timing.jax_devices()
        self.res["devices"] = self.devices
        self.has_gpu = self.devices["gpu"]
        if self.a.gpu and not self.has_gpu:
            raise SystemExit("--gpu: JAX sees no GPU (devices: " + ", ".join(self.devices["devices"]) + ")")
        self.cpu_chunk = self.a.chunk or engine.DEFAULT_CHUNK
        self.gpu_chunk = self.a.gpu_chunk or GPU_CHUNK
        log(f"y90opt benchmarks {self.env['date']}  {self.env['cpu_cores']}-core {self.env['cpu_model']}  "
            f"load {self.env['load_average_start']}")
        log("versions: " + ", ".join(f"{k} {v}" for k, v in self.env["versions"].items()))
        log(f"jax devices: {', '.join(self.devices['devices'])}; case {self.case.name!r}: "
            f"{self.model.n_dims} uncertain inputs, {len(self.model.quantities)} quantities, s = {self.s:.4g} GBq")

    def ns(self, cap: int | None = None) -> list[int]:
        ns = [int(float(x)) for x in self.a.sizes] if self.a.sizes else (QUICK_NS if self.a.quick else FULL_NS)
        if self.a.max_n:
            ns = [n for n in ns if n <= self.a.max_n]
        if cap:
            ns = [n for n in ns if n <= cap]
        return ns

    # -- sections ----------------------------------------------------------------------------------------

    def forward_numpy(self) -> None:
        rows = []
        cap = None if self.a.quick or self.a.sizes else FULL_MAX_N_NUMPY
        if self.a.gpu:
            cap = 10**7
        for n in self.ns(cap):
            t = time_call(lambda n=n: npp.run(self.nm, n, 1, self.s, self.thr, self.a.numpy_chunk), self.repeats(n),
                          warmup=not self.a.quick and n < 10**8)
            row = {"backend": "numpy", "dtype": "float64", "n": n, "chunk": self.a.numpy_chunk, **t.as_dict(n),
                   "samples_per_s": t.rate(n)}
            rows.append(row)
            log(f"numpy     N={fmt_n(n):>6}  {fmt_rate(t.rate(n))}samples/s  (median {t.median_s:.3g} s, cpu "
                f"{t.cpu_median_s:.3g} s)  {timing.tag('numpy', 'float64', self.env)}")
        self.res["sections"]["forward_numpy"] = {"rows": rows}
        self.numpy_rows = {r["n"]: r for r in rows}
        # an independent numpy run for the statistical agreement check of every JAX pipeline
        self.numpy_ref = npp.run(self.nm, 10**6, 11, self.s, self.thr, self.a.numpy_chunk)

    def forward_jax(self, dtype: str, device: str) -> None:
        import jax

        from y90opt import engine

        engine.enable_x64_if(dtype)
        chunk = self.gpu_chunk if device == "gpu" else self.cpu_chunk
        cap = None
        if device == "cpu" and dtype == "float64" and not (self.a.quick or self.a.sizes):
            cap = FULL_MAX_N_F64
        if device == "cpu" and self.a.gpu:
            cap = 10**7
        dev = jax.devices(device)[0]
        rows = []
        name = f"forward_jax_{device}_{dtype}"
        compiled: set[int] = set()
        with jax.default_device(dev):
            for n in self.ns(cap):
                # the first call of each chunk shape is timed apart (compile); later sizes reuse the compile
                c = min(chunk, n)
                warm = c not in compiled or (n < 10**8 and not self.a.quick)
                compiled.add(c)
                t = time_call(lambda n=n: jax_pipeline(self.model, n, 1, self.s, self.b, self.thr, chunk, dtype),
                              self.repeats(n), warmup=warm)
                base = self.numpy_rows.get(n) if hasattr(self, "numpy_rows") else None
                row = {"backend": f"jax_{device}", "device": str(dev), "dtype": dtype, "n": n, "chunk": min(chunk, n),
                       **t.as_dict(n), "samples_per_s": t.rate(n)}
                if base:
                    row["ratio_to_numpy"] = t.rate(n) / base["samples_per_s"]
                    row["ratio_to_numpy_cpu_time"] = base["cpu_median_s"] / t.cpu_median_s
                rows.append(row)
                comp = f", first call {t.first_s:.3g} s (compile ≈ {t.compile_s:.3g} s)" if t.first_s is not None else ""
                ratio = (f"  ×{row['ratio_to_numpy']:.2f} numpy (CPU time ×{row['ratio_to_numpy_cpu_time']:.2f})"
                         if base else "")
                log(f"jax {device:<4} N={fmt_n(n):>6}  {fmt_rate(t.rate(n))}samples/s{ratio}  (median {t.median_s:.3g} s, "
                    f"cpu {t.cpu_median_s:.3g} s{comp})  {timing.tag(str(dev), dtype, self.env)}")
            # statistical agreement with the numpy pipeline (different random streams: within SE)
            if getattr(self, "numpy_ref", None) is not None:
                nn = 10**6
                r = jax_pipeline(self.model, nn, 5, self.s, self.b, self.thr, chunk, dtype)
                z = agreement(r, self.numpy_ref)
                log(f"agreement with numpy ({fmt_n(nn)} vs {fmt_n(self.numpy_ref['count'])} valid samples): "
                    f"max |Δ|/SE = {z:.2f} over means and exceedance fractions")
                self.res["sections"].setdefault(name, {})["agreement_max_z"] = z
        self.res["sections"].setdefault(name, {})["rows"] = rows

    def headline_figures(self) -> None:
        """throughput_samples_per_s.*: JAX on CPU and numpy at the largest N both ran in this run (same N, same
        window of machine load); JAX on a GPU at its largest N (steady state), against numpy's largest N."""
        secs = self.res["sections"]
        np_rows = {r["n"]: r for r in secs.get("forward_numpy", {}).get("rows", [])}
        for device in ("cpu", "gpu"):
            for dtype in ("float32", "float64"):
                rows = {r["n"]: r for r in secs.get(f"forward_jax_{device}_{dtype}", {}).get("rows", [])}
                if not rows:
                    continue
                common = sorted(set(rows) & set(np_rows))
                n = common[-1] if device == "cpu" and common else max(rows)
                r = rows[n]
                key = f"jax_{device}" + ("" if dtype == "float32" else "_float64")
                self.tp[key] = r["samples_per_s"]
                self.headline[key] = {"n": n, "dtype": dtype, "chunk": r["chunk"]}
                base = np_rows.get(n) or (np_rows[max(np_rows)] if np_rows else None)
                if base:
                    if key == "jax_cpu" or "numpy" not in self.tp:
                        self.tp["numpy"] = base["samples_per_s"]
                        self.headline["numpy"] = {"n": base["n"], "dtype": "float64", "chunk": base["chunk"]}
                    self.headline[key]["numpy_n"] = base["n"]
                    self.headline[key]["ratio_to_numpy"] = r["samples_per_s"] / base["samples_per_s"]
                    self.headline[key]["ratio_to_numpy_cpu_time"] = (
                        base["cpu_median_s"] / base["n"]) / (r["cpu_median_s"] / r["n"])
                ceil = secs.get(f"ceilings_{device}", {})
                if dtype == "float32" and "sampling_ceiling_samples_per_s" in ceil:
                    self.headline[key]["ratio_to_sampling_ceiling"] = r["samples_per_s"] / ceil["sampling_ceiling_samples_per_s"]
                    self.headline[key]["ratio_to_bandwidth_ceiling"] = (
                        r["samples_per_s"] / ceil["bandwidth_ceiling_samples_per_s"])
                est = (ceil.get("spec_estimate") or {}).get(dtype)
                if est:
                    self.headline[key]["stated_estimate_samples_per_s"] = est["estimate_samples_per_s"]
                    self.headline[key]["ratio_to_stated_estimate"] = r["samples_per_s"] / est["estimate_samples_per_s"]
        if "numpy" not in self.tp and np_rows:
            base = np_rows[max(np_rows)]
            self.tp["numpy"] = base["samples_per_s"]
            self.headline["numpy"] = {"n": base["n"], "dtype": "float64", "chunk": base["chunk"]}

    def model_only(self, dtype: str, device: str) -> None:
        """The model (+ the same reductions) on pre-drawn inputs: no sampling."""
        import jax
        import jax.numpy as jnp

        from y90opt import engine

        engine.enable_x64_if(dtype)
        m = 1 << 16 if device == "cpu" else 1 << 22  # a CPU chunk; a GPU needs far more work per call
        dev = jax.devices(device)[0]
        out = {}
        with jax.default_device(dev):
            z = jax.random.normal(jax.random.key(0), (m, self.model.n_dims), jnp.dtype(dtype))
            ones = jnp.ones(m, bool)
            s = jnp.asarray(self.s, dtype)
            b = jnp.asarray(self.b, dtype)
            thr = jnp.asarray(self.thr, dtype)
            f_model = jax.jit(lambda z: self.model.factors_from_z(z))
            f_red = jax.jit(lambda z, s, b, thr: bench_reducer(*self.model.factors_from_z(z), ones, s, b, thr))
            t1 = time_call(lambda: f_model(z), 7)
            t2 = time_call(lambda: f_red(z, s, b, thr), 7)
        out["model"] = {**t1.as_dict(m), "samples_per_s": t1.rate(m)}
        out["model_reduce"] = {**t2.as_dict(m), "samples_per_s": t2.rate(m)}
        base = self.res["sections"].get("model_numpy", {})
        for k in ("model", "model_reduce"):
            if k in base:
                out[k]["ratio_to_numpy"] = out[k]["samples_per_s"] / base[k]["samples_per_s"]
        out.update({"n_per_call": m, "dtype": dtype, "device": str(dev)})
        self.res["sections"][f"model_jax_{device}_{dtype}"] = out
        for k in ("model", "model_reduce"):
            r = out[k].get("ratio_to_numpy")
            log(f"jax {device} {k:<13} {fmt_rate(out[k]['samples_per_s'])}samples/s"
                + (f"  ×{r:.2f} numpy" if r else "") + f"  (compile ≈ {out[k]['compile_s']:.3g} s)  "
                + timing.tag(str(dev), dtype, self.env))

    def model_numpy(self) -> None:
        m = 1 << 16
        rng = np.random.default_rng(0)
        x = npp.sample_inputs(self.nm, rng, m)
        t1 = time_call(lambda: npp.model_only(self.nm, x, self.s), 7)

        def red():
            d, valid = npp.doses(self.nm, x, self.s)
            dv = d[valid]
            return dv.shape[0], dv.sum(0), np.einsum("ij,ij->j", dv, dv), (dv > self.thr).sum(0)

        t2 = time_call(red, 7)
        ts = time_call(lambda: npp.sample_inputs(self.nm, rng, m), 7)
        out = {"model": {**t1.as_dict(m), "samples_per_s": t1.rate(m)},
               "model_reduce": {**t2.as_dict(m), "samples_per_s": t2.rate(m)},
               "sampling": {**ts.as_dict(m), "samples_per_s": ts.rate(m)}, "n_per_call": m, "dtype": "float64"}
        self.res["sections"]["model_numpy"] = out
        for k in ("sampling", "model", "model_reduce"):
            log(f"numpy {k:<13} {fmt_rate(out[k]['samples_per_s'])}samples/s  {timing.tag('numpy', 'float64', self.env)}")

    def plan(self) -> None:
        from y90opt import planner
        from y90opt.outcomes import active_rules, compile_rules

        case, model = self.case, self.model
        n = self.a.plan_n
        dtype = "float32"
        out: dict[str, Any] = {"n": n, "dtype": dtype, "backend": self.devices["default_backend"]}
        chunk = self.gpu_chunk if self.has_gpu else self.cpu_chunk
        quick = self.a.quick
        # the Dataset read too (built lazily since 0.4.0): the same work as the figures recorded before
        t = time_call(lambda: planner.plan_case(case, n=n, seed=0, chunk=chunk, optuna_trials=0).dataset, 1 if quick else 3)
        out["plan_case_6x5"] = t.as_dict()
        log(f"plan_case 6x5, {fmt_n(n)} samples: warm {t.median_s:.3g} s (first call {t.first_s:.3g} s, "
            f"compile ≈ {t.compile_s:.3g} s)  {timing.tag(self.devices['default_backend'], dtype, self.env)}")
        # breakdown: sampling + critical activities + sorts | the enumeration itself | Dataset and summary
        ar = active_rules(case)
        rt = compile_rules(ar, model.quantities)
        risk = case.plan.risk
        tb = time_call(lambda: planner.build_evaluator(model, rt, n, 0, chunk, dtype), 1 if quick else 3, warmup=False)
        ev, factors, _ = tb.result
        out["build_evaluator"] = tb.as_dict()
        msg = ""
        if not quick:
            tb_nf = time_call(lambda: planner.build_evaluator(model, rt, n, 0, chunk, dtype, keep_factors=False), 3,
                              warmup=False)
            out["build_evaluator_no_factors"] = tb_nf.as_dict()
            msg = f"; without keeping the factor matrix {tb_nf.median_s:.3g} s"
        out["dataset_and_summary_s"] = max(t.median_s - tb.median_s, 0.0)
        # the exact solver alone: sample, critical activities, sort, enumerate the 6×5 candidates (no Dataset, no
        # dose quantiles); on a GPU sorted and counted on the device, and once more through the host for the ratio
        space6 = planner.decision_space(case, ar.scenario.window)
        reps = 3 if quick else 7

        def solve(on_device=None):
            ev_ = planner.build_evaluator(model, rt, n, 0, chunk, dtype, keep_factors=False, on_device=on_device)[0]
            return planner.evaluate_space(case, space6, ev_, risk)["p_success"]

        ts = time_call(solve, reps)
        out["solve_6x5"] = ts.as_dict()
        out["solve_on_device"] = self.has_gpu
        log(f"  exact solver alone (sample, sort, enumerate 6x5): {ts.median_s * 1e3:.3g} ms warm  "
            f"{timing.tag(self.devices['default_backend'], dtype, self.env)}")
        if self.has_gpu:
            th = time_call(lambda: solve(on_device=False), reps)
            out["solve_6x5_host_sort"] = th.as_dict()
            # a smoke test of the device path: the same samples must give the same counts
            out["solve_device_equals_host"] = bool(np.array_equal(np.asarray(ts.result), np.asarray(th.result)))
            log(f"  the same with the rows sorted on the host: {th.median_s * 1e3:.3g} ms; identical P(targets): "
                f"{out['solve_device_equals_host']}")
        log(f"  build_evaluator (sample, critical activities, sort): {tb.median_s:.3g} s{msg}; the rest of plan_case "
            f"(Dataset, dose quantiles, rule probabilities, summary) ≈ {out['dataset_and_summary_s']:.3g} s")
        spaces = {}
        for label, rng_ in SPACES.items():
            if self.a.quick and label == "1000x100":
                continue
            space = planner.decision_space(case, ar.scenario.window, *(rng_ or (None, None)))
            te = time_call(lambda space=space: planner.evaluate_space(case, space, ev, risk), 7)
            row = {"candidates": space.size, "evaluate_space": te.as_dict(space.size),
                   "candidates_per_s": te.rate(space.size)}
            if label == "6x5" or (not quick and not self.a.gpu and label in ("20x20", "100x50")):
                if label != "6x5":
                    tp = time_call(lambda r=rng_: planner.plan_case(case, n=n, seed=0, chunk=chunk, optuna_trials=0,
                                                                    vial_range=r[0], hours_range=r[1]).dataset, 1)
                    row["plan_case"] = tp.as_dict()
                else:
                    row["plan_case"] = out["plan_case_6x5"]
            spaces[label] = row
            pc = f"; plan_case {row['plan_case']['median_s']:.3g} s" if "plan_case" in row else ""
            log(f"  space {label:>8} ({space.size:>6} candidates): enumeration {te.median_s * 1e3:.3g} ms "
                f"({fmt_rate(te.rate(space.size))}candidates/s){pc}")
        out["spaces"] = spaces
        self.res["sections"]["plan"] = out
        self.ev, self.factors, self.rt = ev, factors, rt

    def naive(self) -> None:
        """Re-simulate every candidate with fresh samples (no common random numbers)."""
        import jax

        from y90opt import engine, physics, planner
        from y90opt.outcomes import active_rules, compile_rules

        case, model = self.case, self.model
        n = self.a.naive_n
        ar = active_rules(case)
        rt = compile_rules(ar, model.quantities)
        space = planner.decision_space(case, ar.scenario.window)
        vials = np.asarray(space.vials_gbq)
        hours = space.hours
        s = vials[:, None] * physics.decay_factor(hours[None, :], case.conventions.half_life_h)
        chunk = self.gpu_chunk if self.has_gpu else self.cpu_chunk
        args_rt = (model.offsets, rt.cols, rt.thresholds, rt.signs, rt.is_primary, rt.is_limit)

        def run() -> dict:
            V, T = s.shape
            ps = np.zeros((V, T))
            lim = np.flatnonzero(rt.is_limit)
            pl = np.zeros((V, T, lim.size))
            for k, (i, j) in enumerate(np.ndindex(V, T)):
                cnt, succ, kept = 0, 0, np.zeros(len(rt.labels), np.int64)
                for part in engine.run_chunks(model, n, 1000 + k, naive_reducer, (float(s[i, j]), *args_rt), chunk, "float32"):
                    c, sc, kp = jax.device_get(part)
                    cnt += int(c)
                    succ += int(sc)
                    kept += np.asarray(kp, np.int64)
                ps[i, j] = succ / cnt
                pl[i, j] = kept[lim] / cnt
            ch = planner.choose(ps, pl, vials, hours, case.plan.risk, case.plan.tie_tolerance)
            return {"p_success": ps, "p_limits": pl, "choice": ch}

        t = time_call(run, 1 if n >= 10**6 or self.a.quick else 3)
        res = t.result
        # the exact planner at the same N, same machine, same run: sample once, sort, enumerate
        te = time_call(lambda: planner.evaluate_space(case, space,
                                                      planner.build_evaluator(model, rt, n, 0, chunk, "float32",
                                                                               keep_factors=False)[0],
                                                      case.plan.risk), 1 if self.a.quick else 3)
        ex = te.result
        pbar = (res["p_success"] + ex["p_success"]) / 2
        se = np.sqrt(2 * np.maximum(pbar * (1 - pbar), 1.0 / n) / n)  # of a difference of two independent estimates
        dz = np.abs(res["p_success"] - ex["p_success"]) / se
        same = tuple(res["choice"]["index"]) == tuple(ex["choice"]["index"])
        out = {
            "n_per_candidate": n, "candidates": int(s.size), "samples_drawn": int(n * s.size),
            "naive": t.as_dict(), "exact_build_plus_enumerate": te.as_dict(),
            "speedup_exact_vs_naive": t.median_s / te.median_s,
            "same_recommendation": bool(same),
            "max_abs_dp_success_over_se": float(np.max(dz)),
            "naive_choice": [float(vials[res["choice"]["index"][0]]), float(hours[res["choice"]["index"][1]])],
            "exact_choice": [float(vials[ex["choice"]["index"][0]]), float(hours[ex["choice"]["index"][1]])],
        }
        # what common random numbers buy: the noise on the difference between the recommendation and its
        # closest neighbour (next vial or next day) in P(success)
        i, j = ex["choice"]["index"]
        ps = ex["p_success"]
        nbrs = [(a, c) for a, c in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                if 0 <= a < s.shape[0] and 0 <= c < s.shape[1] and ps[a, c] != ps[i, j]]
        if nbrs:
            other = min(nbrs, key=lambda ac: abs(ps[ac] - ps[i, j]))
            out["difference_noise"] = self._crn_difference(ex, res, (i, j), other, n)
        self.res["sections"]["naive_plan"] = out
        log(f"naive planner: {s.size} candidates × {fmt_n(n)} fresh samples: {t.median_s:.3g} s; exact (sample once, "
            f"sort, enumerate) {te.median_s:.3g} s → exact is ×{out['speedup_exact_vs_naive']:.1f} faster; "
            f"same recommendation: {same}; max |ΔP(success)|/SE {out['max_abs_dp_success_over_se']:.2f}")

    def _crn_difference(self, ex, res, a, b, n) -> dict:
        """SE of P(a) − P(b): independent samples (naive) vs common samples (exact, from the sorted arrays)."""
        pa, pb = ex["p_success"][a], ex["p_success"][b]
        se_indep = math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
        # with common samples, success at the larger activity implies success at the smaller one's interval
        # edge: the difference is the share of samples whose s_lo lies between the two activities
        p_between = abs(pa - pb)
        se_crn = math.sqrt(max(p_between * (1 - p_between), 0.0) / n)
        return {"candidates": [list(map(int, a)), list(map(int, b))], "p": [float(pa), float(pb)],
                "se_difference_independent": se_indep, "se_difference_common": se_crn,
                "variance_ratio": (se_indep / se_crn) ** 2 if se_crn > 0 else float("inf")}

    def optuna(self) -> None:
        try:
            import optuna  # noqa: F401  (lazily: the GPU machine has no optuna)
        except ImportError:
            self.res["sections"]["optuna"] = {"skipped": "optuna not installed"}
            log("optuna: skipped (not installed)")
            return
        try:
            from y90opt.optimise import optuna_search
        except ImportError as exc:
            self.res["sections"]["optuna"] = {"skipped": f"y90opt.optimise unavailable: {exc}"}
            log("optuna: skipped (y90opt.optimise unavailable)")
            return
        from y90opt import planner
        from y90opt.outcomes import active_rules

        case = self.case
        ar = active_rules(case)
        out = {}
        for label, trials in (("6x5", 15),) if self.a.quick else (("6x5", 15), ("100x50", 200)):
            rng_ = SPACES[label]
            space = planner.decision_space(case, ar.scenario.window, *(rng_ or (None, None)))
            exact = planner.evaluate_space(case, space, self.ev, case.plan.risk)["choice"]
            t = time_call(lambda space=space, exact=exact, trials=trials: optuna_search(
                self.ev, space, case.plan.risk, case.plan.tie_tolerance, trials=trials, seed=0, exact=exact),
                1 if self.a.quick else 2)
            info = t.result
            out[label] = {"trials": trials, **t.as_dict(trials), "trials_per_s": t.rate(trials),
                          "matches_exact": info.get("matches_exact")}
            log(f"optuna {label}: {trials} trials in {t.median_s:.3g} s → {t.rate(trials):.3g} trials/s "
                f"(matches exact: {info.get('matches_exact')})")
        self.res["sections"]["optuna"] = out

    def sobol(self) -> None:
        try:
            from y90opt.sensitivity_analysis import sensitivity_case
        except ImportError as exc:
            self.res["sections"]["sobol"] = {"skipped": f"y90opt.sensitivity unavailable: {exc}"}
            log("sobol: skipped (y90opt.sensitivity unavailable)")
            return
        n = self.a.sobol_n
        evals = n * (self.model.n_dims + 2)
        t = time_call(lambda: sensitivity_case(self.case, n=n, seed=0, bootstrap=0).dataset, 2)
        self.res["sections"]["sobol"] = {"n": n, "model_evaluations": evals, **t.as_dict(evals),
                                         "evaluations_per_s": t.rate(evals), "bootstrap": 0, "dtype": "float32"}
        log(f"sobol: N = {n}, {evals} model evaluations: {t.median_s:.3g} s → {fmt_rate(t.rate(evals))}evaluations/s "
            f"(first call {t.first_s:.3g} s)")

    def memory(self) -> None:
        import memory

        ns = [int(float(x)) for x in self.a.memory_n]
        rows = memory.measure(ns, "float32", log=lambda r: log("memory " + memory.describe(r)))
        self.res["sections"]["memory"] = {"rows": rows, "method": "one subprocess per N, simulate_case, ru_maxrss"}

    def ceilings(self, device: str) -> None:
        """Measured ceilings of this device in float32, for each forward figure's ratio: memory bandwidth (a
        read-scale-write of a 256 MiB / 1 GiB array: numpy into a preallocated output on the CPU, where a JAX
        call would also pay for a fresh output's page faults; JAX on a GPU), threefry-2×32 words per second
        (hashes summed) and the engine's float32 normals per second (engine.block_normals, summed). On the CPU
        the draws are timed one pipeline chunk at a time (cache-resident, as the pipeline runs them), on a GPU
        in calls of 2²⁸–2³⁰ (launch overhead negligible). The sampling ceiling of the forward pipeline is
        normals/s ÷ 8 (8 uncertain inputs per sample)."""
        import jax
        import jax.numpy as jnp
        from jax.extend.random import threefry_2x32

        from y90opt import engine

        dev = jax.devices(device)[0]
        d = self.model.n_dims
        m = 1 << 26 if device == "cpu" else 1 << 28  # elements (256 MiB / 1 GiB of float32)
        blocks = max(1, self.cpu_chunk // engine.BLOCK) if device == "cpu" else (1 << 28) // (engine.BLOCK * d)
        words = blocks * engine.BLOCK * d if device == "cpu" else 1 << 30
        out: dict[str, Any] = {"device": str(dev), "dtype": "float32"}
        with jax.default_device(dev):
            t = _time_scale(m, device)
            out["bandwidth"] = {**t.as_dict(), "bytes": 8 * m, "bytes_per_s": 8 * m / t.median_s}
            kd = jax.random.key_data(engine.make_key(0))  # threefry, whatever jax_default_prng_impl says
            hash_sum = jax.jit(lambda kd: jnp.sum(threefry_2x32(kd, jnp.arange(words, dtype=jnp.uint32)), dtype=jnp.uint32))
            t = time_call(lambda: hash_sum(kd), CEILING_REPEATS)
            out["threefry"] = {**t.as_dict(), "words": words, "words_per_s": words / t.median_s}
            key = engine.make_key(0)
            n_norm = blocks * engine.BLOCK * d
            start = jnp.asarray(0, jnp.uint32)
            normal_sum = jax.jit(lambda key: jnp.sum(engine.variates(key, start, blocks * engine.BLOCK, d, jnp.float32, True)))
            t = time_call(lambda: normal_sum(key), CEILING_REPEATS)
            out["normals"] = {**t.as_dict(), "normals": n_norm, "normals_per_s": n_norm / t.median_s}
        out["sampling_ceiling_samples_per_s"] = out["normals"]["normals_per_s"] / d
        out["bandwidth_ceiling_samples_per_s"] = out["bandwidth"]["bytes_per_s"] / MATERIALISED_BYTES["float32"]
        if device == "gpu":
            out["spec_estimate"] = {dt: gpu_spec_estimate(getattr(dev, "device_kind", ""), getattr(dev, "core_count", None), dt)
                                    for dt in ("float32", "float64")}
        self.res["sections"][f"ceilings_{device}"] = out
        log(f"{device}: bandwidth {out['bandwidth']['bytes_per_s'] / 1e9:.3g} GB/s (read + write, float32); threefry "
            f"{fmt_rate(out['threefry']['words_per_s'])}words/s; float32 normals {fmt_rate(out['normals']['normals_per_s'])}/s "
            f"→ sampling ceiling {fmt_rate(out['sampling_ceiling_samples_per_s'])}samples/s  {timing.tag(str(dev), 'float32', self.env)}")
        est = (out.get("spec_estimate") or {}).get("float32")
        if est:
            log(f"{device}: stated estimate {fmt_rate(est['estimate_samples_per_s'])}samples/s float32 (compute bound, "
                f"{est['device_kind']}, {est['sms']} SMs); memory bound if materialised "
                f"{fmt_rate(est['memory_bound_if_materialised_samples_per_s'])}samples/s")

    def startup(self) -> None:
        """Whole processes, interleaved, warm compile cache: the bare JAX floor (import jax.numpy and one op)
        against `y90opt dose` and `y90opt plan --samples 1e5 --json` (the default Optuna cross-check counted),
        minimum of the repeats. The ratios are the figures of merit (targets: dose ≤ 1.5, plan ≤ 2.5)."""
        import subprocess
        import sys
        import tempfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        example = os.path.join(root, "configs", "examples", "multifocal-unilobar.toml")
        env = dict(os.environ, Y90OPT_CACHE_DIR=tempfile.mkdtemp(prefix="y90opt-bench-cache-"))
        cmds = {
            "jax_floor": [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
            "dose": [sys.executable, "-m", "y90opt.cli", "dose", example, "--json"],
            "plan_1e5": [sys.executable, "-m", "y90opt.cli", "plan", example, "--samples", "100000", "--json"],
        }
        for argv in cmds.values():  # warm: the persistent compile cache and the OS file cache
            subprocess.run(argv, env=env, capture_output=True, check=True)
        reps = 3 if self.a.quick else 5
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(reps):
            for name, argv in cmds.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=True)
                times[name].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        out = {"seconds_min": best, "seconds_all": times, "load_average": timing.load_average(),
               "dose_over_floor": best["dose"] / best["jax_floor"], "plan_over_floor": best["plan_1e5"] / best["jax_floor"]}
        self.res["sections"]["startup"] = out
        log(f"startup: floor {best['jax_floor']:.2f} s, dose {best['dose']:.2f} s (×{out['dose_over_floor']:.2f}), "
            f"plan 1e5 {best['plan_1e5']:.2f} s (×{out['plan_over_floor']:.2f}); load {out['load_average']}")

    def sensitivity_scale(self) -> None:
        """`y90opt sensitivity --samples N` (bootstrap on) against `y90opt simulate` of the same N·(d + 2) model
        evaluations, whole processes with a warm compile cache, each in its own child so that its peak RSS is
        its own. Targets: time ratio ≤ 2 at 10⁵ and 10⁶ base samples, peak ≤ 1.5 GB at 10⁶."""
        import subprocess
        import sys
        import tempfile

        path = os.path.join(tempfile.mkdtemp(prefix="y90opt-bench-"), "bench.toml")
        with open(path, "w") as fh:
            fh.write(npp.BENCH_CASE)
        d = self.model.n_dims
        env = dict(os.environ, Y90OPT_CACHE_DIR=tempfile.mkdtemp(prefix="y90opt-bench-cache-"))
        probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                 "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                 "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

        def run(argv):
            subprocess.run(argv, env=env, capture_output=True, check=True)  # warm the compile cache
            out = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, check=True, text=True)
            wall, rss_kb = out.stdout.split()
            return float(wall), int(rss_kb) * 1024

        res = {}
        for n in ([10**5] if self.a.quick else [10**5, 10**6]):
            sens = run([sys.executable, "-m", "y90opt.cli", "sensitivity", path, "--samples", str(n), "--json"])
            sim = run([sys.executable, "-m", "y90opt.cli", "simulate", path, "--samples", str(n * (d + 2)), "--json"])
            res[str(n)] = {"sensitivity_s": sens[0], "sensitivity_peak_bytes": sens[1], "simulate_s": sim[0],
                           "simulate_peak_bytes": sim[1], "evaluations": n * (d + 2), "ratio": sens[0] / sim[0]}
            log(f"sensitivity N={n:.0e} ({n * (d + 2):.0e} evaluations): {sens[0]:.2f} s, peak {sens[1] / 2**20:.0f} MiB; "
                f"simulate of as many: {sim[0]:.2f} s, peak {sim[1] / 2**20:.0f} MiB; ratio {sens[0] / sim[0]:.2f}")
        self.res["sections"]["sensitivity_scale"] = {"by_base_samples": res, "inputs": d,
                                                     "load_average": timing.load_average()}

    def cohort(self) -> None:
        """Patients per second: a plain loop of plan_case in this process (the baseline), then y90opt.cohort
        with 1 and 2 local worker processes and on a Dask LocalCluster of 2 workers; the scheduling overhead
        per patient is (wall − loop time of the same patients / workers) / patients. Each patient plans at
        `--cohort-samples` with Optuna off."""
        import tempfile

        import y90opt
        from y90opt.cohorts import read_patients
        from y90opt.planner import plan_case

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        template = os.path.join(root, "configs", "examples", "multifocal-unilobar.toml")
        n_pat = 8 if self.a.quick else 24
        folder = tempfile.mkdtemp(prefix="y90opt-bench-cohort-")
        table = os.path.join(folder, "patients.csv")
        rng = np.random.default_rng(0)
        with open(table, "w") as fh:
            fh.write("patient_id,liver.perfused_volume_ml,tumors.T1.tn_ratio,lung.shunt_fraction\n")
            for i in range(n_pat):
                fh.write(f"P{i},{rng.uniform(800, 1200):.0f},{rng.uniform(2.0, 4.5):.2f},{rng.uniform(0.03, 0.1):.3f}\n")
        samples = self.a.cohort_samples
        _, patients = read_patients(template, table)
        from y90opt.case import parse_case

        cases = [parse_case(p.text, "bench") for p in patients]
        _ = plan_case(cases[0], n=samples, seed=0, optuna_trials=0).dataset  # compile
        t0 = time.perf_counter()
        for c in cases:
            _ = plan_case(c, n=samples, seed=0, optuna_trials=0).dataset  # the Dataset too, as each worker builds it
        loop = time.perf_counter() - t0
        out = {"patients": n_pat, "samples": samples, "loop_s": loop, "loop_patients_per_s": n_pat / loop}
        log(f"cohort: plain loop {n_pat / loop:.2f} patients/s ({loop:.1f} s for {n_pat})")
        for name, kw in (("local_1", {"workers": 1}), ("local_2", {"workers": 2}),
                         ("dask_2", {"executor": "dask", "workers": 2})):
            try:
                t0 = time.perf_counter()
                y90opt.cohort(template, table, os.path.join(folder, name), samples=samples, optuna_trials=0, **kw)
                wall = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - dask may be absent: the other figures stand
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            w = kw["workers"]
            out[name] = {"wall_s": wall, "patients_per_s": n_pat / wall, "ratio_to_loop": loop / wall,
                         "overhead_per_patient_s": (wall - loop / w) / n_pat}
            log(f"cohort {name}: {n_pat / wall:.2f} patients/s (x{loop / wall:.2f} the loop), overhead "
                f"{(wall - loop / w) / n_pat:.2f} s per patient (process start, import and compile included)")
        out["load_average"] = timing.load_average()
        self.res["sections"]["cohort"] = out

    def joint(self) -> None:
        """Several injections (the modified radiation lobectomy example): exact evaluation of 6 × 6 vials × 5
        days (180 joint candidates) at `--joint-n` samples against a plain-numpy brute force of the same grid
        on the same samples (the baseline); then Optuna on the 35 × 35 × 145 space (0.5 GBq steps, hourly
        times) against the exhaustive exact evaluation of that space, at `--joint-fine-n` samples."""
        import tomllib

        import tomli_w

        from y90opt import engine
        from y90opt.case import parse_case
        from y90opt.joint_planner import build_joint_evaluator, joint_optuna_search, joint_space
        from y90opt.outcomes import active_rules, compile_rules

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "configs", "examples", "modified-radiation-lobectomy.toml"), "rb") as fh:
            doc = tomllib.load(fh)
        doc["sessions"][0]["hours_after_calibration"] = [72, 96, 120, 192, 216]
        out: dict[str, Any] = {}

        def setup(d, n, any_time=False):
            case = parse_case(tomli_w.dumps(d), "bench.toml")
            ar = active_rules(case, strict=True)
            model = engine.TreatmentModel.from_case(case)
            rt = compile_rules(ar, model.quantities)
            space = joint_space(case, ar.scenario.window, any_time=any_time)
            ev, g, _ = build_joint_evaluator(model, rt, n, 0, None, "float32")
            return case, ar, space, ev, g

        n = self.a.joint_n
        case, ar, space, ev, g = setup(doc, n)
        dec = space.decode(space.all_indices(), case.conventions.half_life_h)
        s_all = dec["s"]
        t = timing.time_call(lambda: ev.evaluate(s_all), repeats=self.repeats(n))
        res = ev.evaluate(s_all)

        def brute():
            b = np.asarray(ev.b, np.float32)
            thr, sg = np.asarray(ev.thresholds, np.float32), np.asarray(ev.signs, np.float32)
            ps = np.empty(len(s_all))
            for k, s in enumerate(s_all.astype(np.float32)):
                d = g[:, 0, :] * s[0]
                for j in range(1, g.shape[1]):
                    d = d + g[:, j, :] * s[j]
                sat = sg * (d + b - thr) <= 0
                ps[k] = np.mean(np.all(sat | ~ev.primary, axis=1))
            return ps

        tb = timing.time_call(brute, repeats=1, warmup=False)
        ps_np = brute()
        out["exact_180"] = {"candidates": int(len(s_all)), "samples": int(ev.n), **t.as_dict(len(s_all)),
                            "numpy_brute_force": tb.as_dict(len(s_all)), "ratio_to_numpy": tb.median_s / t.median_s,
                            "max_abs_difference_p_success": float(np.max(np.abs(ps_np - res["p_success"]))),
                            "tag": timing.tag("jax-cpu", "float32", self.env)}
        log(f"joint exact 180 candidates x {ev.n} samples: {t.median_s:.3f} s warm (first {t.first_s:.2f} s); numpy "
            f"brute force {tb.median_s:.2f} s (x{tb.median_s / t.median_s:.1f}); max |dP| {out['exact_180']['max_abs_difference_p_success']:.2g}")
        # the same grid with a research target on T1's D70, which both vials reach: m · h(t) at each candidate and
        # sample (a 41-node curve, as voxel writes one), against the linear rules alone in the same run
        with_d70 = tomllib.loads(tomli_w.dumps(doc))
        shares = np.linspace(0.0, 1.0, 41)
        with_d70["tumors"][0]["d70_ratio"] = 0.8
        with_d70["tumors"][0]["d70_ratio_by_share"] = {"share": shares.tolist(), "ratio": (0.7 + 0.2 * shares).tolist()}
        with_d70.setdefault("rules", {})["targets"] = [{"id": "t1-d70", "quantity": "tumors_d70", "min_gy": 300.0,
                                                        "source": "research: a D70 target for the benchmark"}]
        _, _, _, ev_d70, _ = setup(with_d70, n)
        t_d70 = timing.time_call(lambda: ev_d70.evaluate(s_all), repeats=self.repeats(n))
        t_lin = timing.time_call(lambda: ev.evaluate(s_all), repeats=self.repeats(n))
        out["exact_180_d70_curve"] = {"candidates": int(len(s_all)), "samples": int(ev_d70.n), **t_d70.as_dict(len(s_all)),
                                      "linear_rules_median_s": t_lin.median_s, "ratio_to_linear": t_d70.median_s / t_lin.median_s,
                                      "tag": timing.tag("jax-cpu", "float32", self.env)}
        log(f"joint exact 180 candidates with a D70 curve target: {t_d70.median_s:.3f} s warm against {t_lin.median_s:.3f} s "
            f"for the linear rules alone (x{t_d70.median_s / t_lin.median_s:.2f})")
        # the fine space: 0.5 GBq steps (3-20 GBq) for both vials, hourly times 72-216 h
        fine = dict(doc)
        fine["vials"] = {"catalogue": "custom"}
        fine["sessions"] = [dict(doc["sessions"][0], hours_after_calibration={"min": 72, "max": 216, "step": 1})]
        nf = self.a.joint_fine_n
        case_f, ar_f, space_f, ev_f, _ = setup(fine, nf, any_time=True)  # every hour, as literal times
        half = case_f.conventions.half_life_h
        idx = space_f.all_indices()
        ev_f.evaluate(space_f.decode(idx[:180], half)["s"])
        hwm_small = _peak_rss()
        t0 = time.perf_counter()
        full = ev_f.evaluate(space_f.decode(idx, half)["s"])
        t_full = time.perf_counter() - t0
        hwm_large = _peak_rss()
        from y90opt.chance import limit_margins

        feas = np.all(limit_margins(full["p_limits"], case_f.plan.risk) <= 0, axis=1)
        best_fine = float(full["p_success"][feas].max()) if feas.any() else None
        # the coarse grid it contains: the catalogue vials at the five days
        cat = [3.0, 5.0, 7.0, 10.0, 15.0, 20.0]
        vials_f = np.asarray(space_f.vials[0])
        hours_f = np.array([x.hours for x in space_f.times[0]])
        coarse = np.isin(vials_f[idx[:, 0]], cat) & np.isin(vials_f[idx[:, 1]], cat) & np.isin(hours_f[idx[:, 2]], [72, 96, 120, 192, 216])
        best_coarse = float(full["p_success"][coarse & feas].max()) if (coarse & feas).any() else None

        def evaluate(c):
            r = ev_f.evaluate(space_f.decode(c, half)["s"])
            return r["p_success"][0], r["p_limits"][0]

        rows = []
        for trials in (200, 400):
            t0 = time.perf_counter()
            o = joint_optuna_search(space_f, evaluate, case_f.plan.risk, case_f.plan.tie_tolerance, trials, 0, half,
                                    ev_f.limit_labels, lambda ti: 0)
            wall = time.perf_counter() - t0
            rows.append({"trials": o["trials"], "wall_s": wall, "p_success": o["p_success"],
                         "reaches_coarse_optimum": o["p_success"] is not None and best_coarse is not None
                         and o["p_success"] >= best_coarse - case_f.plan.tie_tolerance,
                         "gap_to_fine_optimum": None if o["p_success"] is None or best_fine is None else best_fine - o["p_success"]})
            log(f"joint Optuna {o['trials']} trials on {space_f.size} candidates: {wall:.1f} s, P {o['p_success']}, "
                f"coarse optimum {best_coarse}, fine optimum {best_fine}")
        out["optuna_fine"] = {"space": list(space_f.shape), "candidates": int(space_f.size), "samples": int(ev_f.n),
                              "exhaustive_s": t_full,
                              "peak_rss_after_180_candidates_bytes": hwm_small,
                              "peak_rss_after_all_candidates_bytes": hwm_large, "best_fine": best_fine, "best_coarse": best_coarse, "optuna": rows,
                              "tag": timing.tag("jax-cpu", "float32", self.env)}
        log(f"joint exhaustive {space_f.size} candidates x {ev_f.n} samples: {t_full:.1f} s")
        self.res["sections"]["joint"] = out

    def measure(self) -> None:
        """y90opt measure on a 256 × 256 × 200 phantom (CT, SPECT and five masks as NIfTI, read from disk):
        wall time and peak memory in copies of one float64 volume (the budget: ≤ 10 s, ≤ 4 copies)."""
        import tempfile

        from y90opt.imaging import measure_case
        from y90opt.phantoms import PHANTOM_CASE, make_phantom

        shape = (256, 256, 200)
        ph = make_phantom(shape=shape, voxel_mm=2.0, tumors={"T1": (12.0, 4.0), "T2": (8.0, 2.5)}, lsf=0.07)
        folder = tempfile.mkdtemp(prefix="y90opt-bench-measure-")
        ph.write_nifti(folder)
        case = os.path.join(folder, "case.toml")
        with open(case, "w") as fh:
            fh.write(PHANTOM_CASE)
        del ph
        t = timing.time_call(lambda: measure_case(case), repeats=3)
        volume = float(np.prod(shape)) * 8
        # the peak memory of one measure in a fresh process (this one holds the phantom's peak), less that of
        # the same process importing what measure imports
        import subprocess

        probe = ("import sys; sys.path[:0] = [{root!r}]; import numpy, scipy.ndimage, nibabel, tomlkit, pydicom; {call}"
                 "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        base = int(subprocess.run([sys.executable, "-c", probe.format(root=root, call="")], capture_output=True,
                                  text=True, check=True).stdout.split()[-1]) * 1024
        call = f"from y90opt.imaging import measure_case; measure_case({case!r}); "
        peak = int(subprocess.run([sys.executable, "-c", probe.format(root=root, call=call)], capture_output=True,
                                  text=True, check=True).stdout.split()[-1]) * 1024
        out = {"shape": list(shape), "masks": 5, **t.as_dict(), "peak_rss_bytes": peak, "import_rss_bytes": base,
               "one_volume_float64_bytes": volume, "peak_in_volumes": (peak - base) / volume}
        log(f"measure {shape} with 5 masks: {t.median_s:.2f} s warm (first {t.first_s:.2f} s); peak RSS of one measure "
            f"{peak / 2**20:.0f} MiB, {(peak - base) / volume:.2f} float64 volumes above the imports ({base / 2**20:.0f} MiB)")
        # what SPECT resolution does to the measurements, and the lung-base band (64³ phantom, 4 mm voxels, true
        # LSF 7 %, T:N 4 and 2.5, Poisson noise at 400 counts per normal voxel, seed 1)
        rows = []
        for lung_height in (0.75, 0.68):  # lungs clear of the liver's dome, and on it
            for fwhm in (None, 12.0, 14.0):
                ph = make_phantom(n=64, voxel_mm=4.0, lsf=0.07, counts_per_voxel=400.0, fwhm_mm=fwhm,
                                  noise_seed=None if fwhm is None else 1, lung_height=lung_height)
                d = tempfile.mkdtemp(prefix="y90opt-bench-spill-")
                ph.write_nifti(d)
                row = {"lung_height": lung_height, "fwhm_mm": fwhm, "lsf_by_margin_mm": {}}
                for margin in (0, 10, 20, 30):
                    text = PHANTOM_CASE.replace('spect = "spect.nii.gz"',
                                                f'spect = "spect.nii.gz"\nlung_base_margin_mm = {margin}')
                    with open(os.path.join(d, "case.toml"), "w") as fh:
                        fh.write(text)
                    m = measure_case(os.path.join(d, "case.toml"))["measurements"]
                    row["lsf_by_margin_mm"][margin] = m["shunt_fraction"]
                    row["tn_ratio"] = m["tn_ratio"]
                if fwhm is not None:  # the partial-volume correction of T:N at the SPECT's own resolution
                    with open(os.path.join(d, "case.toml"), "w") as fh:
                        fh.write(PHANTOM_CASE.replace('spect = "spect.nii.gz"',
                                                      f'spect = "spect.nii.gz"\nspect_fwhm_mm = {fwhm}'))
                    row["tn_ratio_pvc"] = measure_case(os.path.join(d, "case.toml"))["measurements"]["tn_ratio"]
                rows.append(row)
                log(f"lungs at {lung_height} n, FWHM {fwhm}: LSF by band {row['lsf_by_margin_mm']}, T:N {row['tn_ratio']}"
                    f", corrected {row.get('tn_ratio_pvc')}")
        out["spect_resolution"] = rows
        self.res["sections"]["measure"] = out

    def voxel(self) -> None:
        """Local-deposition and dose-voxel-kernel maps of 64³, 128³ and 256³ phantoms (JAX, jit, warm) against the
        same formula in numpy and scipy's fftconvolve (the same-run baselines), the DVH and VOI metrics of every
        VOI against the dose's time, and how far each model's tumour and normal means are from the phantom's
        analytic doses (the partition model; a sphere's absorbed fraction)."""
        import jax

        from y90opt.voxel_dosimetry import ldm_dose

        f = jax.jit(ldm_dose, static_argnums=(2, 3))
        rows = [self._voxel_row(n, f) for n in (64, 128, 256)]
        self.res["sections"]["voxel"] = {"rows": rows, "tag": timing.tag("jax-cpu", "float32", self.env)}

    def _voxel_row(self, n: int, f) -> dict:
        import jax.numpy as jnp

        from y90opt.phantoms import make_phantom
        from y90opt.voxel_dosimetry import voi_summaries

        ph = make_phantom(n=n, voxel_mm=4.0 * 64 / n, lsf=0.06)
        act = ph.spect / ph.spect[ph.masks["perfused"]].sum() * 2.0  # 2 GBq over the perfused territory
        act[~ph.masks["perfused"]] = 0.0
        rho = np.full(act.shape, 1.03)
        v_ml = (4.0 * 64 / n) ** 3 / 1000.0
        a, r = jnp.asarray(act, jnp.float32), jnp.asarray(rho, jnp.float32)
        t = timing.time_call(lambda: f(a, r, v_ml, 50.0), repeats=self.repeats(10**5))
        tn = timing.time_call(lambda: 50.0 * act / (rho * v_ml / 1000.0), repeats=3)
        dose = np.asarray(f(a, r, v_ml, 50.0))  # float32, as voxel keeps it
        edges = np.linspace(0, dose.max(), 400)
        td = timing.time_call(lambda: voi_summaries(dose, ph.masks, (120.0, 205.0), edges), repeats=3)
        normal = ph.masks["perfused"] & ~ph.masks["tumors.T1"] & ~ph.masks["tumors.T2"]

        def ml(m):
            return float(m.sum()) * v_ml

        w = ml(normal) + 4.0 * ml(ph.masks["tumors.T1"]) + 2.5 * ml(ph.masks["tumors.T2"])
        d_n = 50.0 * 2.0 / (1.03 * w / 1000.0)  # the partition model's normal dose for the phantom's counts
        row = {"n": n, "ldm_jax": t.as_dict(n**3), "ldm_numpy": tn.as_dict(n**3),
               "ratio_to_numpy": tn.median_s / t.median_s, "metrics_and_dvh_s": td.median_s,
               "metrics_share_of_dose_time": td.median_s / t.median_s,
               "normal_rel_diff": float(dose[normal].mean() / d_n - 1),
               "tumour_T1_rel_diff": float(dose[ph.masks["tumors.T1"]].mean() / (4.0 * d_n) - 1)}
        log(f"voxel LDM {n}³: jax {t.median_s * 1e3:.1f} ms, numpy {tn.median_s * 1e3:.1f} ms "
            f"(x{tn.median_s / t.median_s:.2f}); metrics+DVH of {len(ph.masks)} VOIs {td.median_s * 1e3:.0f} ms; "
            f"LDM vs partition: normal {row['normal_rel_diff']:.2e}, T1 {row['tumour_T1_rel_diff']:.2e}")
        # the dose-voxel kernel (the built-in one, at the phantom's voxel size) by jnp.fft, against scipy's
        # fftconvolve of the same float32 arrays; the tumour's mean against the closed form for a sphere in a
        # uniform background, d_N (1 + (T:N − 1) φ(R)), φ the sphere's absorbed fraction
        import jax
        from scipy.signal import fftconvolve

        from y90opt.kernels import default_kernel, sphere_absorbed_fraction, voxel_kernel
        from y90opt.voxel_dosimetry import kernel_dose

        side = 4.0 * 64 / n
        radial = default_kernel().scaled_to(1.03)
        tk = timing.time_call(lambda: voxel_kernel(radial, (side,) * 3), repeats=1)
        kern = voxel_kernel(radial, (side,) * 3)
        energy = (50.0 * act).astype(np.float32)
        e, k32 = jnp.asarray(energy), jnp.asarray(kern, jnp.float32)
        fk = jax.jit(kernel_dose, static_argnums=(3,))
        tkj = timing.time_call(lambda: fk(e, k32, r, v_ml), repeats=self.repeats(10**5))
        tks = timing.time_call(lambda: fftconvolve(energy, kern.astype(np.float32), mode="same") / (rho * v_ml / 1000.0),
                               repeats=3)
        kd = np.asarray(fk(e, k32, r, v_ml))
        tdk = timing.time_call(lambda: voi_summaries(kd, ph.masks, (120.0, 205.0), edges), repeats=3)
        from y90opt.voxel_dosimetry import voi_index

        ti = timing.time_call(lambda: voi_index(ph.masks), repeats=3)  # once per grid and set of VOIs
        index = voi_index(ph.masks)
        tdi = timing.time_call(lambda: voi_summaries(kd, index, (120.0, 205.0), edges), repeats=5)
        t1 = ph.masks["tumors.T1"]
        r_t1 = (3 * ml(t1) * 1000.0 / (4 * np.pi)) ** (1 / 3)
        d_t1 = d_n * (1.0 + 3.0 * sphere_absorbed_fraction(radial, r_t1))
        from scipy.ndimage import distance_transform_edt

        interior = normal & (distance_transform_edt(normal, sampling=side) > 12.0)  # beyond the beta range
        row.update({"kernel_shape": list(kern.shape), "kernel_build_s": tk.median_s, "kernel_jax": tkj.as_dict(n**3),
                    "kernel_scipy": tks.as_dict(n**3), "kernel_ratio_to_scipy": tks.median_s / tkj.median_s,
                    "kernel_metrics_and_dvh_s": tdk.median_s, "dvh_share_of_kernel_time": tdk.median_s / tkj.median_s,
                    "voi_index_s": ti.median_s, "metrics_and_dvh_indexed_s": tdi.median_s,
                    "dvh_indexed_share_of_kernel_time": tdi.median_s / tkj.median_s,
                    "kernel_normal_interior_rel_diff": float(kd[interior].mean() / (d_n * radial.total) - 1),
                    "kernel_tumour_T1_rel_diff": float(kd[t1].mean() / d_t1 - 1),
                    "tumour_T1_sphere_absorbed_fraction": sphere_absorbed_fraction(radial, r_t1)})
        log(f"voxel kernel {n}³ ({side:g} mm, kernel {kern.shape[0]}³ built in {tk.median_s:.2f} s): jax "
            f"{tkj.median_s * 1e3:.0f} ms, scipy fftconvolve {tks.median_s * 1e3:.0f} ms (x{tks.median_s / tkj.median_s:.2f}); "
            f"metrics+DVH {tdk.median_s * 1e3:.0f} ms ({100 * tdk.median_s / tkj.median_s:.0f} % of the convolution; "
            f"{tdi.median_s * 1e3:.1f} ms = {100 * tdi.median_s / tkj.median_s:.0f} % from a VOI index built once in "
            f"{ti.median_s * 1e3:.0f} ms); "
            f"interior normal {row['kernel_normal_interior_rel_diff']:.2e}, T1 vs sphere closed form "
            f"{row['kernel_tumour_T1_rel_diff']:.2e}")
        return row

    def voxel_batch(self, device: str) -> None:
        """Dose maps per second in a batch (the GPU target: ≥ 100 maps of 128³ per second by the dose-voxel kernel): the
        128³ phantom's emitted energy scaled by a batch of activities (a Monte Carlo's replicas or a plan's
        candidates), one jit-compiled ``vmap`` of ``kernel_dose`` over the batch, on ``device``; local deposition
        beside it. The batch is 4 maps on the CPU, 32 on a GPU (about 1 GB of padded FFTs)."""
        import jax
        import jax.numpy as jnp

        from y90opt.kernels import default_kernel, voxel_kernel
        from y90opt.phantoms import make_phantom
        from y90opt.voxel_dosimetry import kernel_dose, ldm_dose

        n, side = 128, 2.0
        ph = make_phantom(n=n, voxel_mm=side, lsf=0.06)
        act = np.where(ph.masks["perfused"], ph.spect, 0.0)
        act = (act / act.sum() * 2.0).astype(np.float32)
        v_ml = side ** 3 / 1000.0
        kern = voxel_kernel(default_kernel().scaled_to(1.03), (side,) * 3).astype(np.float32)
        batch = 32 if device == "gpu" else 4
        dev = jax.devices(device)[0]
        with jax.default_device(dev):
            scale = jnp.linspace(0.5, 1.5, batch, dtype=jnp.float32)
            e, k, rho = jnp.asarray(50.0 * act), jnp.asarray(kern), jnp.full(act.shape, 1.03, jnp.float32)
            fk = jax.jit(jax.vmap(lambda s: kernel_dose(s * e, k, rho, v_ml)))
            fl = jax.jit(jax.vmap(lambda s: ldm_dose(s * e / 50.0, rho, v_ml, 50.0)))
            tk = timing.time_call(lambda: fk(scale), repeats=self.repeats(10**5))
            tl = timing.time_call(lambda: fl(scale), repeats=self.repeats(10**5))
        out = {"device": str(dev), "n": n, "batch": batch, "kernel_shape": list(kern.shape),
               "kernel": tk.as_dict(batch), "kernel_maps_per_s": batch / tk.median_s,
               "ldm": tl.as_dict(batch), "ldm_maps_per_s": batch / tl.median_s,
               "tag": timing.tag(str(dev), "float32", self.env)}
        self.res["sections"][f"voxel_batch_{device}"] = out
        log(f"voxel batch {device}: {batch} maps of {n}³ by the kernel in {tk.median_s:.3g} s = "
            f"{out['kernel_maps_per_s']:.3g} maps/s (first call {tk.first_s:.3g} s); local deposition "
            f"{out['ldm_maps_per_s']:.3g} maps/s  {out['tag']}")

    def chunk_sweep(self) -> None:
        """GPU only: throughput at one large N for several chunk sizes."""
        import jax

        n = 10**8
        rows = []
        with jax.default_device(jax.devices("gpu")[0]):
            for c in (1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24):
                t = time_call(lambda c=c: jax_pipeline(self.model, n, 1, self.s, self.b, self.thr, c, "float32"), 2)
                rows.append({"chunk": c, "n": n, **t.as_dict(n), "samples_per_s": t.rate(n)})
                log(f"gpu chunk {c:>9}: {fmt_rate(t.rate(n))}samples/s (compile ≈ {t.compile_s:.3g} s)")
        self.res["sections"]["gpu_chunk_sweep"] = {"rows": rows}

    def run(self) -> dict:
        want = set(self.a.sections.split(",")) if self.a.sections else None

        def on(name: str, default: bool = True) -> bool:
            return name in want if want is not None else default

        with self.section("setup"):
            self.setup()
        if "case" not in self.__dict__:
            return self.res
        if on("forward"):
            with self.section("forward_numpy"):
                self.forward_numpy()
            with self.section("forward_jax_cpu_float32"):
                self.forward_jax("float32", "cpu")
            if self.has_gpu:
                with self.section("forward_jax_gpu_float32"):
                    self.forward_jax("float32", "gpu")
        if on("ceilings"):
            with self.section("ceilings_cpu"):
                self.ceilings("cpu")
            if self.has_gpu:
                with self.section("ceilings_gpu"):
                    self.ceilings("gpu")
        if on("model"):
            with self.section("model_numpy"):
                self.model_numpy()
            with self.section("model_jax_cpu_float32"):
                self.model_only("float32", "cpu")
            if self.has_gpu:
                with self.section("model_jax_gpu_float32"):
                    self.model_only("float32", "gpu")
        if on("startup"):
            with self.section("startup"):
                self.startup()
        if on("plan"):
            with self.section("plan"):
                self.plan()
        if on("naive"):
            with self.section("naive_plan"):
                self.naive()
        if on("optuna") and "ev" in self.__dict__:
            with self.section("optuna"):
                self.optuna()
        if on("sobol", not self.a.quick):
            with self.section("sobol"):
                self.sobol()
        if on("sensitivity"):
            with self.section("sensitivity_scale"):
                self.sensitivity_scale()
        if on("cohort", not self.a.quick):
            with self.section("cohort"):
                self.cohort()
        if on("measure", not self.a.quick):
            with self.section("measure"):
                self.measure()
        if on("voxel", not self.a.quick):
            with self.section("voxel"):
                self.voxel()
        if on("voxelbatch", not self.a.quick):
            with self.section("voxel_batch_cpu"):
                self.voxel_batch("cpu")
            if self.has_gpu:
                with self.section("voxel_batch_gpu"):
                    self.voxel_batch("gpu")
        if on("joint"):
            with self.section("joint"):
                self.joint()
        if self.has_gpu and on("chunks", self.a.gpu):
            with self.section("gpu_chunk_sweep"):
                self.chunk_sweep()
        # float64 last: it switches JAX's x64 mode on for the rest of the process
        if on("forward"):
            with self.section("forward_jax_cpu_float64"):
                self.forward_jax("float64", "cpu")
            if self.has_gpu:
                with self.section("forward_jax_gpu_float64"):
                    self.forward_jax("float64", "gpu")
        if on("model") and not self.a.quick:
            with self.section("model_jax_cpu_float64"):
                self.model_only("float64", "cpu")
        if on("memory", not self.a.quick):
            with self.section("memory"):
                self.memory()
        self.headline_figures()
        self.res["environment"]["load_average_end"] = timing.load_average()
        return self.res


def _time_scale(m: int, device: str):
    """Times a read-scale-write of m float32 (8·m bytes moved per call): numpy into a preallocated output on
    the CPU, a jitted JAX multiply on other devices (under the caller's default device)."""
    if device == "cpu":
        x = np.ones(m, np.float32)
        y = np.empty_like(x)
        return time_call(lambda: np.multiply(x, np.float32(1.5), out=y), 5)
    import jax
    import jax.numpy as jnp

    x = jnp.ones(m, jnp.float32)
    scale = jax.jit(lambda x: x * np.float32(1.5))
    return time_call(lambda: scale(x), 5)


def naive_reducer(f, valid, in_range, s, b, cols, thr, signs, primary, limit):
    """Per chunk at one activity s: valid count, samples meeting every primary target, samples keeping each rule."""
    import jax.numpy as jnp

    ok = valid & in_range
    d = s * f + b
    sat = signs * (d[:, cols] - thr) <= 0
    success = jnp.all(sat | ~primary, axis=1) & ok
    kept = (sat | ~limit[None, :]) & ok[:, None]
    return jnp.sum(ok), jnp.sum(success), jnp.sum(kept, axis=0)


# -- output ---------------------------------------------------------------------------------------------------


def table(res: dict) -> str:
    """The short table (the last thing gpu_smoke.sh prints)."""
    env = res.get("environment", {})
    v = env.get("versions", {})
    lines = [f"y90opt benchmarks {env.get('date')}  {env.get('cpu_cores')}-core {env.get('cpu_model')}  "
             f"devices {', '.join(res.get('devices', {}).get('devices', []))}",
             f"jax {v.get('jax')} jaxlib {v.get('jaxlib')} numpy {v.get('numpy')}  load {env.get('load_average_start')}"
             f" → {env.get('load_average_end')}",
             f"{'figure':<46}{'value':>18}  {'ratio':>12}  context"]

    def row(label: str, value: str, ratio: str = "", context: str = "") -> None:
        lines.append(f"{label:<46}{value:>18}  {ratio:>12}  {context}")

    tp, hl = res.get("throughput_samples_per_s", {}), res.get("headline", {})
    for k in ("numpy", "jax_cpu", "jax_cpu_float64", "jax_gpu", "jax_gpu_float64"):
        if k in tp:
            h = hl.get(k, {})
            r = h.get("ratio_to_numpy")
            row(f"throughput {k}", f"{fmt_rate(tp[k])}samples/s", f"×{r:.2f} numpy" if r else "",
                f"N={fmt_n(h.get('n', 0))} {h.get('dtype', '')}")
            if "ratio_to_sampling_ceiling" in h:
                row(f"  {k} / sampling ceiling", f"{h['ratio_to_sampling_ceiling']:.2f}", "",
                    f"bandwidth ceiling ratio {h['ratio_to_bandwidth_ceiling']:.3g}")
            if "ratio_to_stated_estimate" in h:
                row(f"  {k} / stated estimate", f"{h['ratio_to_stated_estimate']:.2f}", "",
                    f"estimate {fmt_rate(h['stated_estimate_samples_per_s'])}samples/s")
    sec = res.get("sections", {})
    for key, c in sec.items():
        if key.startswith("ceilings_") and "normals" in c:
            row(f"{key} bandwidth (read + write)", f"{c['bandwidth']['bytes_per_s'] / 1e9:.3g} GB/s", "", c["device"])
            row(f"{key} threefry words", f"{fmt_rate(c['threefry']['words_per_s'])}words/s")
            row(f"{key} float32 normals", f"{fmt_rate(c['normals']['normals_per_s'])}/s", "",
                f"sampling ceiling {fmt_rate(c['sampling_ceiling_samples_per_s'])}samples/s")
    for key, s in sec.items():
        if key.startswith("model_") and isinstance(s, dict):
            for k in ("model", "model_reduce"):
                if k in s:
                    r = s[k].get("ratio_to_numpy")
                    row(f"{key.replace('model_', '')} {k} (no sampling)", f"{fmt_rate(s[k]['samples_per_s'])}samples/s",
                        f"×{r:.2f} numpy" if r else "")
    p = sec.get("plan", {})
    if "plan_case_6x5" in p:
        pc = p["plan_case_6x5"]
        row(f"plan 6x5, {fmt_n(p['n'])} samples, warm", f"{pc['median_s']:.3g} s", "",
            f"compile ≈ {pc['compile_s']:.3g} s; build_evaluator {p.get('build_evaluator', {}).get('median_s', float('nan')):.3g} s")
    if "solve_6x5" in p:
        host = p.get("solve_6x5_host_sort")
        row(f"exact solver 6x5, {fmt_n(p['n'])} samples, warm", f"{p['solve_6x5']['median_s'] * 1e3:.3g} ms", "",
            ("sorted on the device" + (f"; host sort {host['median_s'] * 1e3:.3g} ms, identical: "
                                       f"{p.get('solve_device_equals_host')}" if host else ""))
            if p.get("solve_on_device") else "sorted on the host")
    for label, r in p.get("spaces", {}).items():
        ctx = f"{r['candidates']} candidates"
        if "plan_case" in r:
            ctx += f"; plan_case {r['plan_case']['median_s']:.3g} s"
        row(f"enumerate {label}", f"{r['evaluate_space']['median_s'] * 1e3:.3g} ms", "", ctx)
    nv = sec.get("naive_plan", {})
    if "naive" in nv:
        row(f"naive planner ({nv['candidates']} × {fmt_n(nv['n_per_candidate'])} fresh)", f"{nv['naive']['median_s']:.3g} s",
            f"×{nv['speedup_exact_vs_naive']:.1f} exact", f"same choice: {nv['same_recommendation']}")
    opt = sec.get("optuna", {})
    for label, r in opt.items():
        if isinstance(r, dict) and "trials_per_s" in r:
            row(f"optuna {label}", f"{r['trials_per_s']:.3g} trials/s", "", f"{r['trials']} trials")
    if "skipped" in opt:
        row("optuna", "skipped", "", opt["skipped"])
    sb = sec.get("sobol", {})
    if "evaluations_per_s" in sb:
        row(f"sobol N={sb['n']}", f"{fmt_rate(sb['evaluations_per_s'])}evals/s", "", f"{sb['median_s']:.3g} s warm")
    elif "skipped" in sb:
        row("sobol", "skipped", "", sb["skipped"])
    for r in sec.get("memory", {}).get("rows", []):
        if "peak_rss_mib" in r:
            row(f"memory simulate N={fmt_n(r['n'])}", f"{r['peak_rss_mib']:.0f} MiB", "", f"{r['quantiles']}, {r['wall_s']:.3g} s")
    for r in sec.get("gpu_chunk_sweep", {}).get("rows", []):
        row(f"gpu chunk {r['chunk']}, N=1e8", f"{fmt_rate(r['samples_per_s'])}samples/s")
    for k, s in sec.items():
        if isinstance(s, dict) and "error" in s:
            lines.append(f"FAILED {k}: {s['error']}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The measured tables of a run as Markdown (for benchmarks/RESULTS.md)."""
    env = res.get("environment", {})
    v = env.get("versions", {})
    sec = res.get("sections", {})
    out = [f"Run {env.get('date')} on {env.get('cpu_cores')}-core {env.get('cpu_model')}, {env.get('memory_gib')} GiB; "
           f"devices {', '.join(res.get('devices', {}).get('devices', []))}; "
           + ", ".join(f"{k} {x}" for k, x in v.items())
           + f"; commit {env.get('git_commit')}; load average {env.get('load_average_start')} → "
           f"{env.get('load_average_end')}.", ""]
    np_rows = {r["n"]: r for r in sec.get("forward_numpy", {}).get("rows", [])}
    out += ["| pipeline | dtype | N | chunk | warm median (s) | samples/s | × numpy (wall) | × numpy (CPU time) | first call (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in ("forward_numpy", "forward_jax_cpu_float32", "forward_jax_cpu_float64", "forward_jax_gpu_float32",
                "forward_jax_gpu_float64"):
        for r in sec.get(key, {}).get("rows", []):
            base = np_rows.get(r["n"])
            rw = f"{r['ratio_to_numpy']:.2f}" if "ratio_to_numpy" in r else ("1" if r["backend"] == "numpy" else "")
            rc = f"{r['ratio_to_numpy_cpu_time']:.2f}" if "ratio_to_numpy_cpu_time" in r else ("1" if base and r is base else "")
            first = f"{r['first_call_s']:.3g}" if r.get("first_call_s") is not None else "-"
            out.append(f"| {r['backend']} | {r['dtype']} | {fmt_n(r['n'])} | {r['chunk']} | {r['median_s']:.3g} | "
                       f"{fmt_rate(r['samples_per_s'])} | {rw} | {rc} | {first} |")
    for key in ("forward_jax_cpu_float32", "forward_jax_cpu_float64", "forward_jax_gpu_float32"):
        z = sec.get(key, {}).get("agreement_max_z")
        if z is not None:
            out.append(f"\n{key}: agreement with an independent numpy run, max |Δ|/SE = {z:.2f} (means and exceedance "
                       "fractions of the 12 quantities).")
    ceil = [(k, c) for k, c in sec.items() if k.startswith("ceilings_") and "normals" in c]
    if ceil:
        out += ["", "| ceilings (float32) | bandwidth, read + write (GB/s) | threefry words/s | normals/s | sampling ceiling "
                "(samples/s) | forward float32 / sampling ceiling | stated estimate (samples/s) | forward / estimate |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        hl = res.get("headline", {})
        for k, c in ceil:
            h = hl.get("jax_" + k.removeprefix("ceilings_"), {})
            est = h.get("stated_estimate_samples_per_s")
            out.append(f"| {c['device']} | {c['bandwidth']['bytes_per_s'] / 1e9:.3g} | {fmt_rate(c['threefry']['words_per_s'])} | "
                       f"{fmt_rate(c['normals']['normals_per_s'])} | {fmt_rate(c['sampling_ceiling_samples_per_s'])} | "
                       f"{h['ratio_to_sampling_ceiling']:.2f} | " if "ratio_to_sampling_ceiling" in h else
                       f"| {c['device']} | {c['bandwidth']['bytes_per_s'] / 1e9:.3g} | {fmt_rate(c['threefry']['words_per_s'])} | "
                       f"{fmt_rate(c['normals']['normals_per_s'])} | {fmt_rate(c['sampling_ceiling_samples_per_s'])} | | ")
            out[-1] += (f"{fmt_rate(est)} | {h['ratio_to_stated_estimate']:.2f} |" if est else " | |")
    out += ["", "| model alone (pre-drawn samples: 2¹⁶ per call on CPU, 2²² on GPU) | samples/s | × numpy | compile (s) |",
            "|---|---:|---:|---:|"]
    for key, s in sec.items():
        if key.startswith("model_") and isinstance(s, dict):
            for k in ("sampling", "model", "model_reduce"):
                if k in s:
                    r = s[k].get("ratio_to_numpy")
                    c = s[k].get("compile_s")
                    out.append(f"| {key} {k} ({s.get('dtype')}) | {fmt_rate(s[k]['samples_per_s'])} | "
                               f"{f'{r:.2f}' if r else ''} | {f'{c:.3g}' if c is not None and key != 'model_numpy' else ''} |")
    p = sec.get("plan", {})
    if "plan_case_6x5" in p:
        pc = p["plan_case_6x5"]
        out += ["", f"Planning, {fmt_n(p['n'])} samples, {p['dtype']} on {p['backend']}: plan_case 6×5 warm median "
                f"{pc['median_s']:.3g} s (first call {pc['first_call_s']:.3g} s, compile ≈ {pc['compile_s']:.3g} s); "
                f"build_evaluator {p['build_evaluator']['median_s']:.3g} s"
                + (f" ({p['build_evaluator_no_factors']['median_s']:.3g} s without the factor matrix)"
                   if "build_evaluator_no_factors" in p else "")
                + f"; Dataset + quantiles + summary ≈ {p.get('dataset_and_summary_s', float('nan')):.3g} s."
                + (f" The exact solver alone (sample, sort, enumerate; no Dataset, no dose quantiles): "
                   f"{p['solve_6x5']['median_s'] * 1e3:.3g} ms warm"
                   + (" (rows sorted and counted on the device" + (
                       f"; {p['solve_6x5_host_sort']['median_s'] * 1e3:.3g} ms sorted on the host)"
                       if "solve_6x5_host_sort" in p else ")") if p.get("solve_on_device") else "") + "."
                   if "solve_6x5" in p else ""), "",
                "| space | candidates | enumeration (ms) | candidates/s | plan_case warm (s) |", "|---|---:|---:|---:|---:|"]
        for label, r in p.get("spaces", {}).items():
            pcs = f"{r['plan_case']['median_s']:.3g}" if "plan_case" in r else ""
            out.append(f"| {label} | {r['candidates']} | {r['evaluate_space']['median_s'] * 1e3:.3g} | "
                       f"{fmt_rate(r['candidates_per_s'])} | {pcs} |")
    nv = sec.get("naive_plan", {})
    if "naive" in nv:
        d = nv.get("difference_noise") or {"p": [float("nan")] * 2, "se_difference_independent": float("nan"),
                                            "se_difference_common": float("nan"), "variance_ratio": float("nan")}
        out += ["", f"Naive planner (each of {nv['candidates']} candidates re-simulated with {fmt_n(nv['n_per_candidate'])} "
                f"fresh samples, {fmt_n(nv['samples_drawn'])} in all): {nv['naive']['median_s']:.3g} s; exact planner at "
                f"the same N (sample once, sort, enumerate): {nv['exact_build_plus_enumerate']['median_s']:.3g} s → "
                f"×{nv['speedup_exact_vs_naive']:.1f}. Same recommendation: {nv['same_recommendation']} "
                f"(naive {nv['naive_choice']}, exact {nv['exact_choice']}); max |ΔP(success)|/SE = "
                f"{nv['max_abs_dp_success_over_se']:.2f}. Noise on the difference between two neighbouring candidates "
                f"(P = {d['p'][0]:.3f} vs {d['p'][1]:.3f}): SE {d['se_difference_independent']:.2e} with independent "
                f"samples, {d['se_difference_common']:.2e} with common random numbers (variance ×"
                f"{d['variance_ratio']:.3g} smaller)."]
    opt = sec.get("optuna", {})
    rows = [(k, r) for k, r in opt.items() if isinstance(r, dict) and "trials_per_s" in r]
    if rows:
        out += ["", "| Optuna (y90opt.optimise.optuna_search on the exact evaluator) | trials | s | trials/s | matches exact |",
                "|---|---:|---:|---:|---|"]
        out += [f"| {k} | {r['trials']} | {r['median_s']:.3g} | {r['trials_per_s']:.3g} | {r['matches_exact']} |" for k, r in rows]
    elif "skipped" in opt:
        out += ["", f"Optuna: skipped ({opt['skipped']})."]
    sb = sec.get("sobol", {})
    if "evaluations_per_s" in sb:
        out += ["", f"Sobol (sensitivity_case, N = {sb['n']}, {sb['model_evaluations']} model evaluations, no bootstrap): "
                f"warm {sb['median_s']:.3g} s → {fmt_rate(sb['evaluations_per_s'])}evaluations/s (first call "
                f"{sb['first_call_s']:.3g} s)."]
    mem = [r for r in sec.get("memory", {}).get("rows", []) if "peak_rss_mib" in r]
    if mem:
        out += ["", "| simulate, N | peak RSS (MiB) | RSS after imports, before the run (MiB) | wall incl. compile (s) | "
                "quantiles |", "|---:|---:|---:|---:|---|"]
        out += [f"| {fmt_n(r['n'])} | {r['peak_rss_mib']:.0f} | {r.get('peak_rss_before_run_mib', float('nan')):.0f} | "
                f"{r['wall_s']:.3g} | {r['quantiles']} |" for r in mem]
    errs = [f"{k}: {s['error']}" for k, s in sec.items() if isinstance(s, dict) and "error" in s]
    out += [f"\nFAILED {e}" for e in errs]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="y90opt benchmarks (scripts, not tests)")
    ap.add_argument("--quick", action="store_true", help="small sizes; under a minute on a 2-core CPU")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout (the log goes to stderr)")
    ap.add_argument("--out", help="also write the JSON results to this file")
    ap.add_argument("--gpu", action="store_true", help="require a GPU: GPU sizes, chunk sweep; CPU figures up to 1e7")
    ap.add_argument("--table", metavar="JSON", help="print the short table of a saved run and exit")
    ap.add_argument("--markdown", metavar="JSON", help="print the tables of a saved run as Markdown and exit")
    ap.add_argument("--sections", help="comma list: forward,ceilings,model,startup,plan,naive,optuna,sobol,sensitivity,cohort,measure,voxel,voxelbatch,joint,memory,chunks")
    ap.add_argument("--sizes", nargs="*", help="forward sample counts (e.g. 1e4 1e6)")
    ap.add_argument("--max-n", type=float, help="drop forward sizes above this")
    ap.add_argument("--chunk", type=int, help="JAX chunk on CPU (default engine.DEFAULT_CHUNK)")
    ap.add_argument("--gpu-chunk", type=int, help=f"JAX chunk on GPU (default {GPU_CHUNK})")
    ap.add_argument("--numpy-chunk", type=int, default=npp.DEFAULT_CHUNK)
    ap.add_argument("--plan-n", type=int, default=PLAN_N)
    ap.add_argument("--naive-n", type=int, help="samples per candidate of the naive planner (default 1e5 quick, 1e6 full)")
    ap.add_argument("--sobol-n", type=int, default=1 << 14)
    ap.add_argument("--cohort-samples", type=int, default=100_000, help="Monte Carlo samples per patient of the cohort section")
    ap.add_argument("--memory-n", nargs="*", default=["1e3", "1e5", "1e6", "3e6", "1e7", "1e8", "1e9"],
                    help="simulate sizes of the memory section (1e9 takes ≈ 9 min on the 2-core CPU)")
    ap.add_argument("--repeats", type=int, help="warm repeats per figure (default 5, quick 3; 1 at N ≥ 1e8 on CPU)")
    ap.add_argument("--joint-n", type=int, default=100_000, help="samples of the joint section's 180-candidate grid")
    ap.add_argument("--joint-fine-n", type=int, default=20_000, help="samples of the joint section's fine space")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.table:
        with open(a.table) as fh:
            print(table(json.load(fh)))
        return 0
    if a.markdown:
        with open(a.markdown) as fh:
            print(markdown(json.load(fh)))
        return 0
    if a.max_n:
        a.max_n = int(a.max_n)
    if a.naive_n is None:
        a.naive_n = 10**5 if a.quick else 10**6
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    res = Bench(a).run()
    res["total_wall_s"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1, default=_json_default)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)
    log("\n" + table(json.loads(text)))
    log(f"total {res['total_wall_s']:.1f} s")
    if a.json:
        print(text)
    return 0


def _peak_rss() -> int | None:
    """The process's peak resident memory so far (VmHWM of /proc/self/status), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
