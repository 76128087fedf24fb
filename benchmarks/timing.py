"""Timing helper shared by the benchmark scripts.

Rules (docs: /work/shared/style.md, "Benchmarks are scripts, not tests"):

* the first call (trace + compile + run) is timed apart from the warm calls; ``compile_s`` is the first call
  minus the warm median of the same call;
* every timed result goes through ``jax.block_until_ready`` inside the timed region (JAX dispatches
  asynchronously: without it a timer measures the dispatch, not the work);
* the figure is the median of the warm repeats (min and CPU time beside it: the machine may be shared);
* the device, dtype and package versions are printed beside each figure (:func:`environment`, :func:`tag`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def block(x: Any) -> Any:
    """``jax.block_until_ready`` on every array in ``x`` when JAX is loaded (numpy results pass through)."""
    if "jax" in sys.modules:
        import jax

        return jax.block_until_ready(x)
    return x


@dataclasses.dataclass
class Timing:
    """Wall-clock times of one benchmarked call. ``first_s`` includes tracing and compilation."""

    first_s: float | None
    times_s: list[float]
    cpu_s: list[float]
    result: Any = dataclasses.field(default=None, repr=False)  # the last call's return value

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def cpu_median_s(self) -> float:
        return statistics.median(self.cpu_s)

    @property
    def compile_s(self) -> float | None:
        """First call minus the warm median: tracing + compilation (+ first-touch allocation)."""
        if self.first_s is None:
            return None
        return max(self.first_s - self.median_s, 0.0)

    def rate(self, work: float) -> float:
        """Work units (samples, candidates, trials) per second, from the warm median."""
        return work / self.median_s

    def as_dict(self, work: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "first_call_s": self.first_s,
            "compile_s": self.compile_s,
            "median_s": self.median_s,
            "min_s": self.min_s,
            "cpu_median_s": self.cpu_median_s,
            "repeats": len(self.times_s),
        }
        if work is not None:
            d["per_s"] = self.rate(work)
        return d


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: bool = True) -> Timing:
    """Time ``fn()``: one first call (timed apart) when ``warmup``, then ``repeats`` warm calls.

    ``fn`` must return its JAX results (or numpy ones); they are blocked on inside the timed region.
    """
    first = None
    if warmup:
        t0 = time.perf_counter()
        block(fn())
        first = time.perf_counter() - t0
    times, cpus = [], []
    result = None
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = block(fn())
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(first, times, cpus, result)


# -- the environment printed beside every figure -------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=10)
        if sha.returncode:
            return None
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def jax_devices() -> dict[str, Any]:
    """JAX's default backend and devices (imports JAX)."""
    import jax

    devs = jax.devices()
    return {
        "default_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in devs],
        "gpu": any(d.platform == "gpu" for d in devs),
        "x64": bool(jax.config.jax_enable_x64),
    }


def environment() -> dict[str, Any]:
    """Date, machine, versions; printed with every benchmark run and stored in its JSON."""
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scipy", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "xarray", "optuna", "y90opt"):
        v = _version(dist)
        if v is not None:
            versions[dist] = v
    now = _dt.datetime.now(_dt.UTC).astimezone()
    return {
        "date": now.isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "memory_gib": _memory_gib(),
        "git_commit": git_commit(),
        "versions": versions,
        "load_average_start": load_average(),
    }


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def tag(backend: str, dtype: str, env: dict[str, Any]) -> str:
    """The context printed beside each figure: device, dtype and the versions that matter for it."""
    v = env["versions"]
    if backend == "numpy":
        lib = f"numpy {v.get('numpy')}"
        where = f"{env['cpu_cores']}-core {env['cpu_model']}"
    else:
        lib = f"jax {v.get('jax')}/jaxlib {v.get('jaxlib')}"
        where = backend
    return f"[{where}, {dtype}, {lib}]"


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def fmt_n(n: int) -> str:
    """1e6-style label of a sample count."""
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10**e else f"{n:,}"
