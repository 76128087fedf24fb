"""Uncertainty specifications: small named distribution objects.

Every uncertain input is drawn from a standard normal variate z (so that a Gaussian copula can correlate
inputs) and mapped through the distribution's quantile function: x = F⁻¹(Φ(z)). Lognormal and normal use the
exact shortcut x = m·exp(σz), x = μ + σz. Truncation is done by the quantile function on the truncated range,
never by clipping samples. A systematic bias (``bias_factor`` and/or ``bias_shift``) maps x ↦ x·factor + shift;
it moves the distribution toward a delivered rather than a planned dose and is always reported.

Case-file forms (tables are named, never positional)::

    3.2                                               exact (no uncertainty)
    { value = 3.2, cv = 0.35 }                        lognormal, median 3.2, σ_ln = sqrt(ln(1 + cv²))
    { dist = "lognormal", median = 3.2, sigma_ln = 0.3 }   (or cv = ...)
    { dist = "normal", mean = 0.06, sd = 0.02, min = 0, max = 0.5 }   min/max: truncated normal
    { dist = "uniform", min = 0.9, max = 1.1 }
    { dist = "triangular", min = 0.8, mode = 1.0, max = 1.3 }
    any table form may add  bias_factor = 0.8  and/or  bias_shift = -0.085
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def _stats():
    """scipy.stats on first use: it takes about a second to import, and parsing a case needs none of it."""
    from scipy import stats

    return stats


def _phi(x: float) -> float:
    """Standard normal CDF, accurate in both tails (erfc)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _sf(x: float) -> float:
    """Standard normal survival function."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


class SpecError(ValueError):
    """A malformed uncertainty specification; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class Fixed:
    """An exactly known value."""

    value: float

    kind = "fixed"

    @property
    def nominal(self) -> float:
        return self.value

    def scipy(self):
        return _stats().uniform(loc=self.value, scale=0.0)

    def params(self, dtype) -> tuple[float, ...]:
        return (self.value,)

    def from_z(self, z, p=None):
        import jax.numpy as jnp

        (value,) = (self.value,) if p is None else p
        return jnp.full(jnp.shape(z), value, dtype=jnp.result_type(z))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": "fixed", "value": self.value}

    def describe(self) -> str:
        return f"{self.value:g}"

    def outside(self, low: float, high: float) -> float:
        return 0.0 if low <= self.value < high else 1.0


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Lognormal with median ``median`` and log-standard deviation ``sigma_ln``."""

    median: float
    sigma_ln: float

    kind = "lognormal"

    @classmethod
    def from_cv(cls, median: float, cv: float) -> LogNormal:
        return cls(median, math.sqrt(math.log1p(cv * cv)))

    @property
    def cv(self) -> float:
        return math.sqrt(math.expm1(self.sigma_ln**2))

    @property
    def nominal(self) -> float:
        return self.median

    def scipy(self):
        return _stats().lognorm(s=self.sigma_ln, scale=self.median)

    def params(self, dtype) -> tuple[float, ...]:
        return (self.median, self.sigma_ln)

    def from_z(self, z, p=None):
        import jax.numpy as jnp

        median, sigma_ln = self.params(None) if p is None else p
        return median * jnp.exp(sigma_ln * z)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": "lognormal", "median": self.median, "sigma_ln": self.sigma_ln, "cv": self.cv}

    def describe(self) -> str:
        return f"lognormal(median {self.median:g}, CV {100 * self.cv:.3g} %)"

    def outside(self, low: float, high: float) -> float:
        below = 0.0 if low <= 0 else _phi((math.log(low) - math.log(self.median)) / self.sigma_ln)
        above = 0.0 if high == math.inf else _sf((math.log(high) - math.log(self.median)) / self.sigma_ln)
        return below + above


@dataclasses.dataclass(frozen=True)
class Normal:
    """Normal with ``mean`` and ``sd``, truncated to [low, high] when either bound is finite."""

    mean: float
    sd: float
    low: float = -math.inf
    high: float = math.inf

    @property
    def kind(self) -> str:
        return "truncnormal" if self.truncated else "normal"

    @property
    def truncated(self) -> bool:
        return math.isfinite(self.low) or math.isfinite(self.high)

    @property
    def nominal(self) -> float:
        return self.mean

    def scipy(self):
        if not self.truncated:
            return _stats().norm(loc=self.mean, scale=self.sd)
        a = (self.low - self.mean) / self.sd
        b = (self.high - self.mean) / self.sd
        return _stats().truncnorm(a, b, loc=self.mean, scale=self.sd)

    def params(self, dtype) -> tuple[float, ...]:
        """The numbers of :meth:`from_z`, each computed as it computes them (so that passing them as arguments
        gives the same floating-point operations): (mean, sd) untruncated; truncated, also the bounds, the
        probabilities pa and pb − pa of the law below and inside them, and the clip of u in ``dtype``."""
        if not self.truncated:
            return (self.mean, self.sd)
        pa = _phi((self.low - self.mean) / self.sd)
        pb = _phi((self.high - self.mean) / self.sd)
        dt = np.dtype(dtype if dtype is not None else np.float32)
        tiny = float(np.finfo(dt).tiny)
        return (self.mean, self.sd, self.low, self.high, pa, pb - pa, max(pa, tiny),
                min(pb, 1.0 - float(np.finfo(dt).epsneg)))

    def from_z(self, z, p=None):
        import jax.numpy as jnp
        from jax.scipy.special import ndtr, ndtri

        dt = jnp.result_type(z)
        if p is None:
            p = self.params(dt)
        if not self.truncated:
            mean, sd = p
            return mean + sd * z
        mean, sd, low, high, pa, width, u_lo, u_hi = p
        u = pa + ndtr(z) * width
        u = jnp.clip(u, u_lo, u_hi)
        x = mean + sd * ndtri(u)
        # the quantile function of the truncated law maps into [low, high]; rounding can step 1 ulp out
        return jnp.clip(x, low, high).astype(dt)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dist": "normal", "mean": self.mean, "sd": self.sd}
        if math.isfinite(self.low):
            d["min"] = self.low
        if math.isfinite(self.high):
            d["max"] = self.high
        return d

    def describe(self) -> str:
        s = f"normal(mean {self.mean:g}, SD {self.sd:g})"
        if self.truncated:
            s += f" truncated to [{self.low:g}, {self.high:g}]"
        return s

    def outside(self, low: float, high: float) -> float:
        za, zb = (self.low - self.mean) / self.sd, (self.high - self.mean) / self.sd
        pa, pb = _phi(za), _phi(zb)
        mass = pb - pa  # of the untruncated law on [low bound, high bound]
        if not mass > 0:  # bounds far out in one tail: the closed form underflows, the library does not
            d = self.scipy()
            return float(d.cdf(low) + d.sf(high))

        def cdf(x: float) -> float:
            return min(1.0, max(0.0, (_phi((x - self.mean) / self.sd) - pa) / mass))

        return cdf(low) + (0.0 if high == math.inf else 1.0 - cdf(high))


@dataclasses.dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    kind = "uniform"

    @property
    def nominal(self) -> float:
        return 0.5 * (self.low + self.high)

    def scipy(self):
        return _stats().uniform(loc=self.low, scale=self.high - self.low)

    def params(self, dtype) -> tuple[float, ...]:
        return (self.low, self.high - self.low)

    def from_z(self, z, p=None):
        from jax.scipy.special import ndtr

        low, width = self.params(None) if p is None else p
        return low + width * ndtr(z)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": "uniform", "min": self.low, "max": self.high}

    def describe(self) -> str:
        return f"uniform[{self.low:g}, {self.high:g}]"

    def outside(self, low: float, high: float) -> float:
        w = self.high - self.low
        return min(1.0, max(0.0, (low - self.low) / w)) + min(1.0, max(0.0, (self.high - high) / w))


@dataclasses.dataclass(frozen=True)
class Triangular:
    low: float
    mode: float
    high: float

    kind = "triangular"

    @property
    def nominal(self) -> float:
        return self.mode

    def scipy(self):
        width = self.high - self.low
        return _stats().triang(c=(self.mode - self.low) / width, loc=self.low, scale=width)

    def params(self, dtype) -> tuple[float, ...]:
        width = self.high - self.low
        return (self.low, self.high, width, (self.mode - self.low) / width, self.mode - self.low, self.high - self.mode)

    def from_z(self, z, p=None):
        import jax.numpy as jnp
        from jax.scipy.special import ndtr

        low, high, width, c, rise, fall = self.params(None) if p is None else p
        u = ndtr(z)
        left = low + jnp.sqrt(u * width * rise)
        right = high - jnp.sqrt((1.0 - u) * width * fall)
        return jnp.where(u < c, left, right)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": "triangular", "min": self.low, "mode": self.mode, "max": self.high}

    def describe(self) -> str:
        return f"triangular(min {self.low:g}, mode {self.mode:g}, max {self.high:g})"

    def outside(self, low: float, high: float) -> float:
        a, c, b = self.low, self.mode, self.high

        def cdf(x: float) -> float:
            if x <= a:
                return 0.0
            if x >= b:
                return 1.0
            if x <= c:
                return (x - a) ** 2 / ((b - a) * (c - a))
            return 1.0 - (b - x) ** 2 / ((b - a) * (b - c))

        return cdf(low) + (0.0 if high == math.inf else 1.0 - cdf(high))


Distribution = Fixed | LogNormal | Normal | Uniform | Triangular


@dataclasses.dataclass(frozen=True)
class Biased:
    """A systematic bias on top of a distribution: x ↦ x · factor + shift (research use; always reported)."""

    base: Distribution
    factor: float = 1.0
    shift: float = 0.0

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def nominal(self) -> float:
        """The measured (planned) value: the bias is not applied to the nominal dose."""
        return self.base.nominal

    def scipy(self):
        return _AffineScipy(self.base.scipy(), self.factor, self.shift)

    def params(self, dtype) -> tuple[float, ...]:
        return (*self.base.params(dtype), self.factor, self.shift)

    def from_z(self, z, p=None):
        if p is None:
            return self.base.from_z(z) * self.factor + self.shift
        *base, factor, shift = p
        return self.base.from_z(z, tuple(base)) * factor + shift

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.base.to_dict())
        d["bias_factor"] = self.factor
        d["bias_shift"] = self.shift
        return d

    def describe(self) -> str:
        parts = []
        if self.factor != 1.0:
            parts.append(f"× {self.factor:g}")
        if self.shift != 0.0:
            parts.append(f"{self.shift:+g}")
        return f"{self.base.describe()} with bias {' '.join(parts)} (research)"

    def outside(self, low: float, high: float) -> float:
        return self.base.outside((low - self.shift) / self.factor,
                                 math.inf if high == math.inf else (high - self.shift) / self.factor)


class _AffineScipy:
    """The law of a·X + b for a frozen scipy distribution X (a > 0)."""

    def __init__(self, dist, a: float, b: float):
        self.dist, self.a, self.b = dist, a, b

    def cdf(self, x):
        return self.dist.cdf((np.asarray(x) - self.b) / self.a)

    def sf(self, x):
        return self.dist.sf((np.asarray(x) - self.b) / self.a)

    def ppf(self, q):
        return self.dist.ppf(q) * self.a + self.b

    def mean(self):
        return self.dist.mean() * self.a + self.b

    def std(self):
        return self.dist.std() * self.a

    def median(self):
        return self.dist.median() * self.a + self.b


Spec = Distribution | Biased


def is_uncertain(spec: Spec) -> bool:
    return not isinstance(spec, Fixed)


def is_biased(spec: Spec) -> bool:
    return isinstance(spec, Biased)


def _num(table: dict, key: str, *, required: bool = True, default: float | None = None) -> float | None:
    if key not in table:
        if required:
            raise SpecError(f"{key}: missing")
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"{key}: expected a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise SpecError(f"{key}: must be finite")
    return v


_ALLOWED = {
    None: {"value", "cv"},
    "lognormal": {"dist", "median", "cv", "sigma_ln"},
    "normal": {"dist", "mean", "sd", "min", "max"},
    "uniform": {"dist", "min", "max"},
    "triangular": {"dist", "min", "mode", "max"},
}


def parse_spec(raw: Any) -> Spec:
    """Parse a case-file quantity (a number or a table) into a spec. Raises :class:`SpecError`."""
    if isinstance(raw, bool):
        raise SpecError("expected a number or a table, got a boolean")
    if isinstance(raw, int | float):
        v = float(raw)
        if not math.isfinite(v):
            raise SpecError("must be finite")
        return Fixed(v)
    if not isinstance(raw, dict):
        raise SpecError(f"expected a number or a table, got {type(raw).__name__}")
    dist = raw.get("dist")
    if dist is not None and not isinstance(dist, str):
        raise SpecError(f"dist: expected a distribution name (a string), got {type(dist).__name__}")
    if dist is not None and dist not in _ALLOWED:
        raise SpecError(f"dist: unknown distribution {dist!r}; expected one of lognormal, normal, uniform, triangular")
    allowed = _ALLOWED[dist] | {"bias_factor", "bias_shift"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown key for {'the {value, cv} form' if dist is None else dist}")
    base: Distribution
    if dist is None:
        value = _num(raw, "value")
        cv = _num(raw, "cv", required=False, default=0.0)
        if cv < 0:
            raise SpecError("cv: must be ≥ 0")
        if cv > 0 and value <= 0:
            raise SpecError("value: a lognormal median must be > 0")
        base = LogNormal.from_cv(value, cv) if cv > 0 else Fixed(value)
    elif dist == "lognormal":
        median = _num(raw, "median")
        if median <= 0:
            raise SpecError("median: must be > 0")
        if ("cv" in raw) == ("sigma_ln" in raw):
            raise SpecError("cv: give exactly one of cv or sigma_ln")
        if "cv" in raw:
            cv = _num(raw, "cv")
            if cv <= 0:
                raise SpecError("cv: must be > 0")
            base = LogNormal.from_cv(median, cv)
        else:
            sigma = _num(raw, "sigma_ln")
            if sigma <= 0:
                raise SpecError("sigma_ln: must be > 0")
            base = LogNormal(median, sigma)
    elif dist == "normal":
        mean, sd = _num(raw, "mean"), _num(raw, "sd")
        if sd <= 0:
            raise SpecError("sd: must be > 0")
        low = _num(raw, "min", required=False, default=-math.inf)
        high = _num(raw, "max", required=False, default=math.inf)
        if not low < high:
            raise SpecError("min: must be below max")
        if not low <= mean <= high:
            raise SpecError("mean: must lie within [min, max]")
        base = Normal(mean, sd, low, high)
    elif dist == "uniform":
        low, high = _num(raw, "min"), _num(raw, "max")
        if not low < high:
            raise SpecError("min: must be below max")
        base = Uniform(low, high)
    else:  # triangular
        low, mode, high = _num(raw, "min"), _num(raw, "mode"), _num(raw, "max")
        if not low < high:
            raise SpecError("min: must be below max")
        if not low <= mode <= high:
            raise SpecError("mode: must lie within [min, max]")
        base = Triangular(low, mode, high)
    factor = _num(raw, "bias_factor", required=False, default=1.0)
    shift = _num(raw, "bias_shift", required=False, default=0.0)
    if factor <= 0:
        raise SpecError("bias_factor: must be > 0")
    if factor != 1.0 or shift != 0.0:
        return Biased(base, factor, shift)
    return base


#: Probability mass allowed outside an input's physical support before a spec is rejected.
SUPPORT_TOLERANCE = 1e-6

#: Largest magnitude an input may reach at its extreme samples: no measured volume (mL), ratio, fraction or
#: mass (kg) comes near it, so a larger value is a unit error, and beyond it float32 arithmetic in the dose
#: model would overflow (float32 holds up to 3.4·10³⁸; doses multiply such values by activities and K).
MAX_MAGNITUDE = 1e9
#: The extreme standard normal variate the sampler can reach in practice (Φ(−8.5) ≈ 10⁻¹⁷).
Z_EXTREME = 8.5
#: Smallest spread, relative to the value, that float32 samples can carry (its resolution is 6·10⁻⁸): a
#: narrower distribution is the value itself and must be written as a plain number.
MIN_RELATIVE_SPREAD = 1e-6


def _extremes(base) -> tuple[float, float]:
    """The values at z = ∓:data:`Z_EXTREME` (closed forms; a quantile function at Φ(8.5) would round to 1)."""
    if isinstance(base, LogNormal):
        return base.median * math.exp(-Z_EXTREME * base.sigma_ln), base.median * math.exp(Z_EXTREME * base.sigma_ln)
    if isinstance(base, Normal):
        return (max(base.low, base.mean - Z_EXTREME * base.sd), min(base.high, base.mean + Z_EXTREME * base.sd))
    if isinstance(base, Uniform):
        return base.low, base.high
    if isinstance(base, Triangular):
        return base.low, base.high
    raise ValueError(f"unknown distribution {type(base).__name__}")


def check_samplable(spec: Spec) -> None:
    """Raise :class:`SpecError` unless every sample of ``spec`` is finite and meaningful in float32 and float64:
    its extreme quantiles (|z| ≤ :data:`Z_EXTREME`) stay within :data:`MAX_MAGNITUDE`, and a spread, when
    given, is not so narrow that it vanishes (:data:`MIN_RELATIVE_SPREAD`). Numerical warnings of the
    libraries become this error, never a message on the user's terminal."""
    import warnings

    if isinstance(spec, Fixed):
        if abs(spec.value) > MAX_MAGNITUDE:
            raise SpecError(f"value {spec.value:.3g} is beyond any measurement (at most {MAX_MAGNITUDE:g}): check the units")
        return
    base = spec.base if isinstance(spec, Biased) else spec
    if isinstance(base, Normal) and base.sd > MAX_MAGNITUDE:
        raise SpecError(f"sd: {base.sd:.3g} is beyond any measurement (at most {MAX_MAGNITUDE:g}): check the units")
    if isinstance(base, Normal):
        scale = max(abs(base.mean), abs(base.low) if math.isfinite(base.low) else 0.0,
                    abs(base.high) if math.isfinite(base.high) else 0.0)
        if base.sd < MIN_RELATIVE_SPREAD * scale:
            raise SpecError(f"sd: {base.sd:.3g} is below the resolution of the mean {base.mean:g}: the input is exact; "
                            "write it as a plain number")
    if isinstance(base, LogNormal) and base.sigma_ln < MIN_RELATIVE_SPREAD:
        raise SpecError("cv: too small to sample: the input is exact; write it as a plain number")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lo, hi = _extremes(base)
    except (ArithmeticError, ValueError, RuntimeWarning) as e:
        raise SpecError(f"cannot be sampled: {e}") from None
    if isinstance(spec, Biased):
        lo, hi = sorted((lo * spec.factor + spec.shift, hi * spec.factor + spec.shift))
    if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) > MAX_MAGNITUDE:
        raise SpecError(f"its samples reach {lo:.3g} to {hi:.3g}, beyond any measurement (at most {MAX_MAGNITUDE:g} "
                        "in magnitude): check the units and the spread")
    if isinstance(base, Uniform | Triangular) and (hi - lo) < MIN_RELATIVE_SPREAD * max(abs(lo), abs(hi)):
        raise SpecError("max: the range is too narrow to sample: the input is exact; write it as a plain number")


def check_support(spec: Spec, support: str) -> None:
    """Raise :class:`SpecError` if ``spec`` puts more than :data:`SUPPORT_TOLERANCE` of its mass outside
    the support: ``"positive"`` (x > 0), ``"nonnegative"`` (x ≥ 0) or ``"fraction"`` (0 ≤ x < 1)."""
    low, high = (0.0, 1.0) if support == "fraction" else (0.0, math.inf)
    if isinstance(spec, Fixed) or (isinstance(spec, Biased) and isinstance(spec.base, Fixed)):
        v = spec.nominal if isinstance(spec, Fixed) else spec.base.value * spec.factor + spec.shift
        ok = {"positive": v > 0, "nonnegative": v >= 0, "fraction": 0 <= v < 1}[support]
        if not ok:
            what = {"positive": "> 0", "nonnegative": "≥ 0", "fraction": "in [0, 1)"}[support]
            raise SpecError(f"value {v:g} must be {what}{_percent_hint(v, support)}")
        return
    mass = spec.outside(low, high)
    if mass > SUPPORT_TOLERANCE:
        rng = "[0, 1)" if support == "fraction" else "(0, ∞)"
        raise SpecError(
            f"{100 * mass:.3g} % of this distribution lies outside {rng}; "
            "narrow it or truncate it with min/max (dist = \"normal\")" + _percent_hint(spec.nominal, support)
        )


def _percent_hint(v: float, support: str) -> str:
    """A fraction written as a percentage (4 for 4 %) gets the value it probably meant."""
    if support == "fraction" and 1 <= v <= 100:
        return f"; fractions are written from 0 to 1: did you mean {v / 100:g} (i.e. {v:g} %)?"
    return ""
