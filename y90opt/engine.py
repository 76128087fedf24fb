"""Monte Carlo engine: sampling of the uncertain inputs and the forward model, chunked and reproducible.

Design:

* Every uncertain input is a quantile transform of a standard normal variate (see :mod:`y90opt.uncertainty`);
  a Gaussian copula correlates them through the Cholesky factor of their correlation matrix.
* A sample's randomness depends only on the key and its global index: variates are drawn in fixed blocks of
  :data:`BLOCK` samples, block ``b`` from ``fold_in(key, b)``. A chunk of any size and offset slices the same
  numbers, so results do not depend on the chunk size. A float32 block uses both 32-bit words of each
  threefry-2×32 hash (:func:`block_normals`); a float64 block is ``jax.random.normal`` of its key.
* Doses are affine in the vial activity at treatment s: ``dose = s · F + b`` per sample, with F the dose
  factors (Gy per GBq of s; activities in GBq per GBq) and b the prior lung dose for the cumulative lung dose
  and 0 elsewhere. One sample set serves every decision (common random numbers).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator

import numpy as np

from . import dosimetry
from .case import Case
from .errors import InputError

#: Samples per random block (the unit of reproducibility).
BLOCK = 4096

#: Default number of samples evaluated per JAX call. On CPU a chunk's working set must stay in the cache: 2¹⁵
#: is as fast as 2¹⁶ in float32 and twice as fast in float64; 2¹⁸ ran 2-3× slower (benchmarks/RESULTS.md).
#: Results do not depend on it.
DEFAULT_CHUNK = 1 << 15

#: Samples per JAX call on an accelerator (a GPU wants far more work per launch than a CPU cache holds).
ACCELERATOR_CHUNK = 1 << 22


def on_accelerator() -> bool:
    """JAX's default backend is not the CPU (a GPU): larger chunks, rows sorted on the device."""
    import jax

    return jax.default_backend() != "cpu"


def default_chunk() -> int:
    """Samples per JAX call for the default backend: :data:`DEFAULT_CHUNK` on CPU, :data:`ACCELERATOR_CHUNK`
    on a GPU. Results do not depend on it."""
    return ACCELERATOR_CHUNK if on_accelerator() else DEFAULT_CHUNK


#: Chunks :func:`run_chunks` dispatches beyond the one its caller is reading (JAX dispatch is asynchronous).
LOOKAHEAD = 2

#: Largest share of unphysical samples (normal liver mass ≤ 0) tolerated before a run stops.
MAX_INVALID_FRACTION = 1e-3

ACTIVITY_QUANTITIES = ("injected", "liver", "lung_activity")


def enable_x64_if(dtype: str) -> None:
    """float64 needs JAX's x64 mode; it must be switched on before any array is made."""
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def available_memory_bytes(device=None) -> int | None:
    """Memory a run can still take, or ``None`` when unknown. On an accelerator: its free device memory. On a
    CPU: the host's available memory (``MemAvailable`` of /proc/meminfo), within the process's cgroup v2
    memory limit when it has one (a container)."""
    import jax

    device = device or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001 - a backend without memory statistics: unknown, not an error
            return None
        return free if free > 0 else None
    free = _meminfo_available()
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free if free is not None and free > 0 else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The memory limit of this process's cgroup minus its usage (cgroup v2 ``memory.max``/``memory.current``,
    else v1 ``memory.limit_in_bytes``/``memory.usage_in_bytes``), or ``None`` without a limit."""

    def read(*parts: str) -> str:
        with open(os.path.join(root, *parts)) as fh:
            return fh.read().strip()

    try:
        with open(proc) as fh:
            rel = next((line.split(":", 2)[2].strip() for line in fh if line.startswith("0::")), None)
    except OSError:
        rel = None
    try:
        if rel is not None and os.path.exists(os.path.join(root, rel.lstrip("/"), "memory.max")):
            base = rel.lstrip("/")
            limit = read(base, "memory.max")
            return None if limit == "max" else int(limit) - int(read(base, "memory.current"))
        limit = int(read("memory", "memory.limit_in_bytes"))
        return None if limit >= 2**60 else limit - int(read("memory", "memory.usage_in_bytes"))
    except (OSError, ValueError):
        return None


def _cholesky(case: Case, uncertain: tuple[str, ...]) -> np.ndarray | None:
    """The Cholesky factor of the case's correlation matrix over its uncertain inputs (None without any)."""
    if not case.correlations:
        return None
    m = np.eye(len(uncertain))
    for a, b, rho in case.correlations:
        i, j = uncertain.index(a), uncertain.index(b)
        m[i, j] = m[j, i] = rho
    return np.linalg.cholesky(m)


def _form(spec) -> tuple:
    """A form's structure: its class chain and whether it is truncated (its numbers are :meth:`params`)."""
    base = getattr(spec, "base", None)
    return (type(spec).__name__, getattr(spec, "truncated", None), None if base is None else _form(base))


class UnphysicalSamplesError(InputError):
    """Too many samples gave a non-positive normal liver mass (tumours larger than their territory)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """The forward model of one case: inputs by case path → dose factors per sample.

    Attributes:
        case: the validated case.
        uncertain: case paths of the sampled inputs, in the order of the variate columns.
        quantities: names of the columns of the factor matrix (doses, then tumours, then activities).
        units: "Gy" or "GBq" per quantity.
    """

    case: Case
    uncertain: tuple[str, ...]
    quantities: tuple[str, ...]
    units: tuple[str, ...]
    cholesky: np.ndarray | None

    @classmethod
    def from_case(cls, case: Case) -> Model:
        if case.multi and cls is Model:
            return TreatmentModel.from_case(case)
        uncertain = tuple(case.uncertain_inputs)
        q = ["perfused_mean", "normal_perfused"]
        if case.has_whole_liver:
            q += ["whole_normal_liver", "whole_liver"]
        q += ["lung", "lung_cumulative"]
        if any(t.treated for t in case.tumors):
            q.append("tumor_total")
        q += [f"tumors.{n}" for n in case.tumor_names]
        q += [f"tumors_d70.{t.name}" for t in case.tumors if t.d70_ratio is not None and t.treated]
        units = ["Gy"] * len(q)
        q += list(ACTIVITY_QUANTITIES)
        units += ["GBq"] * len(ACTIVITY_QUANTITIES)
        return cls(case, uncertain, tuple(q), tuple(units), _cholesky(case, uncertain))

    @property
    def n_dims(self) -> int:
        return len(self.uncertain)

    @property
    def n_base_dims(self) -> int:
        """The uncertain inputs drawn from the case's main stream: all but the tumours' D70 ratios, which come
        last, each from a stream of its own (:func:`model_variates`), so that giving a ratio an uncertainty
        moves no other input's draws, nor another ratio's."""
        ratios = set(self.case.ratio_inputs)
        n = sum(1 for p in self.uncertain if p not in ratios)
        if any(p in ratios for p in self.uncertain[:n]):
            raise AssertionError("the D70 ratios must be the last uncertain inputs")
        return n

    def ratio_streams(self) -> tuple[int, ...]:
        """For each uncertain D70 ratio (in :attr:`uncertain` order), its tumour's index in the case: the tag of
        its own stream."""
        names = [t.name for t in self.case.tumors]
        return tuple(names.index(p.split(".")[1]) for p in self.uncertain[self.n_base_dims:])

    @property
    def offsets(self) -> np.ndarray:
        """b in dose = s·F + b (prior lung dose on the cumulative lung dose, 0 elsewhere)."""
        b = np.zeros(len(self.quantities))
        b[self.quantities.index("lung_cumulative")] = self.case.prior_lung_dose_gy
        return b

    def dose_quantities(self) -> list[str]:
        return [q for q, u in zip(self.quantities, self.units, strict=True) if u == "Gy"]

    # -- the pure part ---------------------------------------------------------------------------------

    # -- the numbers of the case, apart from its structure ----------------------------------------------
    #
    # The traced computation depends on the case in two ways: its structure (which inputs, which forms, the
    # tumours, the quantities, the conventions) and its numbers (each form's parameters, the prior lung dose,
    # the copula's factor). The numbers can be passed to a compiled chunk function as arguments, so that
    # cases of one structure (a cohort's patients) share one compile. Each number is computed exactly as the
    # computation with constants computes it, so both give the same floating-point operations.

    def numbers(self, dtype) -> tuple[float, ...]:
        """Every number the traced computation reads from the case, in the order :meth:`factors_from_z` reads
        them: the forms' parameters by case path, the prior lung dose, the copula's factor (the conventions are
        part of the :meth:`structure`)."""
        out: list[float] = []
        for spec in self.case.inputs.values():
            out.extend(spec.params(dtype))
        out.append(self.case.prior_lung_dose_gy)
        if self.cholesky is not None:
            chol = self.cholesky
            for i in range(chol.shape[0]):
                out.append(float(chol[i, 0]))
                out.extend(float(chol[i, j]) for j in range(1, i + 1) if chol[i, j] != 0.0)
        return tuple(out)

    def structure(self) -> tuple:
        """What the traced computation depends on besides :meth:`numbers` (a hashable key)."""
        case = self.case
        forms = tuple((path, _form(spec)) for path, spec in case.inputs.items())
        chol = None if self.cholesky is None else tuple(
            tuple(bool(self.cholesky[i, j] != 0.0) for j in range(i + 1)) for i in range(self.cholesky.shape[0]))
        # the conventions stay constants of the computation (XLA folds the mass and dose constants into the
        # formulas; as arguments they would change the results in the last float32 bit): part of the structure
        return (type(self).__name__, self.uncertain, self.quantities, self.units, forms, chol, case.conventions,
                tuple((t.name, t.treated, t.injection, t.d70_ratio is not None, t.d70_by_share,
                       t.d70_ratio.nominal if t.d70_by_share is not None else None) for t in case.tumors),
                case.has_whole_liver,
                tuple((j.name, j.session, j.within, j.shunt_fraction is None, j.residual_fraction is None,
                       tuple(n for n, _ in j.tn_ratios)) for j in case.injections),
                tuple(x.name for x in case.sessions))

    def _reader(self, p):
        it = iter(p)
        return lambda k: tuple(next(it) for _ in range(k))

    def correlate(self, z, chol_values=None):
        """Gaussian copula: z ↦ z Lᵀ, summed term by term in a fixed order (a matrix product's summation
        order may depend on the batch shape, which would make results depend on the chunk size)."""
        import jax.numpy as jnp

        chol = self.cholesky
        values = iter(chol_values) if chol_values is not None else None

        def entry(i, j):
            return jnp.asarray(chol[i, j] if values is None else next(values), z.dtype)

        cols = []
        for i in range(chol.shape[0]):
            acc = z[:, 0] * entry(i, 0)
            for j in range(1, i + 1):
                if chol[i, j] != 0.0:
                    acc = acc + z[:, j] * entry(i, j)
            cols.append(acc)
        return jnp.stack(cols, axis=1)

    def _unpack(self, p, dtype):
        """(per-path form parameters, the conventions, prior lung dose, copula values, the rest) from numbers p."""
        take = self._reader(p if p is not None else self.numbers(dtype))
        forms = {path: take(len(spec.params(dtype))) for path, spec in self.case.inputs.items()}
        (prior,) = take(1)
        chol = None
        if self.cholesky is not None:
            m = self.cholesky.shape[0]
            count = sum(1 + sum(1 for j in range(1, i + 1) if self.cholesky[i, j] != 0.0) for i in range(m))
            chol = take(count)
        return forms, self.case.conventions, prior, chol, take

    def input_columns(self, z, p=None) -> dict:
        """Case path → array of per-sample values (exact inputs broadcast) from variates z (n, d); ``p``: the
        case's :meth:`numbers` (traced arguments), default the case's own (constants)."""
        forms, _, _, chol, _ = self._unpack(p, z.dtype)
        return self._columns_from(z, forms, chol)

    def _columns_from(self, z, forms, chol) -> dict:
        import jax.numpy as jnp

        if self.cholesky is not None:
            z = self.correlate(z, chol)
        n = z.shape[0]
        cols = {}
        for path, spec in self.case.inputs.items():
            if path in self.uncertain:
                cols[path] = spec.from_z(z[:, self.uncertain.index(path)], forms[path])
            else:  # exact (Fixed): its value
                cols[path] = jnp.full((n,), forms[path][0], z.dtype)
        return cols

    def dose_inputs(self, cols: dict, dtype, prior=None) -> tuple[dosimetry.DoseInputs, object]:
        import jax.numpy as jnp

        case = self.case
        prior = case.prior_lung_dose_gy if prior is None else prior
        n = next(iter(cols.values())).shape[0]
        names = case.tumor_names
        if names:
            tv = jnp.stack([cols[f"tumors.{t}.volume_ml"] for t in names], axis=-1)
            tn = jnp.stack([cols[f"tumors.{t}.tn_ratio"] for t in names], axis=-1)
        else:
            tv = jnp.zeros((n, 0), dtype)
            tn = jnp.zeros((n, 0), dtype)
        whole = cols.get("liver.whole_liver_volume_ml", jnp.full((n,), jnp.nan, dtype))
        x = dosimetry.DoseInputs(
            perfused_volume_ml=cols["liver.perfused_volume_ml"],
            tumor_volume_ml=tv,
            tn_ratio=tn,
            tumor_treated=jnp.asarray([t.treated for t in case.tumors], dtype=dtype),
            shunt_fraction=cols["lung.shunt_fraction"],
            lung_mass_kg=cols["lung.mass_kg"],
            residual_fraction=cols["delivery.residual_fraction"],
            whole_liver_volume_ml=whole,
            prior_lung_dose_gy=jnp.full((n,), prior, dtype),
        )
        return x, cols["delivery.activity_factor"]

    def factors_from_z(self, z, p=None):
        """Factor matrix F (n, Q) and validity mask (n,) from variates z (n, d); ``p``: the case's
        :meth:`numbers` as traced arguments (default: the case's own numbers, as constants)."""
        import jax.numpy as jnp

        forms, conv, prior, chol, _ = self._unpack(p, z.dtype)
        cols = self._columns_from(z, forms, chol)
        x, act = self.dose_inputs(cols, z.dtype, prior)
        u = dosimetry.dose_factors(x, conv)
        by_name = {
            "perfused_mean": u.perfused_mean,
            "normal_perfused": u.normal_perfused,
            "whole_normal_liver": u.whole_normal_liver,
            "whole_liver": u.whole_liver,
            "lung": u.lung,
            "lung_cumulative": u.lung,
            "tumor_total": u.tumor_total,
            "injected": u.injected,
            "liver": u.liver_activity,
            "lung_activity": u.lung_activity,
        }
        for i, t in enumerate(self.case.tumors):
            by_name[f"tumors.{t.name}"] = u.tumors[:, i]
            if t.d70_ratio is not None and t.treated:  # the voxel D70 as a share of the mean, drawn per sample
                by_name[f"tumors_d70.{t.name}"] = u.tumors[:, i] * cols[f"tumors.{t.name}.d70_ratio"]
        f = jnp.stack([by_name[q] for q in self.quantities], axis=-1) * act[:, None]
        # a sample whose factors are not all finite (an overflow in the run's dtype) is never counted as a
        # success or a failure: it is invalid, counted, and stops the run above MAX_INVALID_FRACTION
        valid = (u.normal_mass_kg > 0) & jnp.all(jnp.isfinite(f), axis=-1)
        if self.case.has_whole_liver:
            # the whole liver must hold the perfused territory and the untreated tumours
            untreated = 1.0 - x.tumor_treated
            outside = dosimetry._sum_tumors(x.tumor_volume_ml * untreated)
            valid = valid & (x.whole_liver_volume_ml >= x.perfused_volume_ml + outside)
        return f, valid

    def nominal_factors(self) -> np.ndarray:
        """Dose factors at the nominal (measured) inputs, in float64 numpy (independent of JAX's x64)."""
        from .reference import reference_doses

        c = self.case
        nom = c.nominal()
        names = c.tumor_names
        d = reference_doses(
            nom["delivery.activity_factor"],
            nom["liver.perfused_volume_ml"],
            np.array([nom[f"tumors.{t}.volume_ml"] for t in names]),
            np.array([nom[f"tumors.{t}.tn_ratio"] for t in names]),
            np.array([t.treated for t in c.tumors], dtype=bool),
            nom["lung.shunt_fraction"],
            nom["lung.mass_kg"],
            nom["delivery.residual_fraction"],
            nom.get("liver.whole_liver_volume_ml", np.nan),
            0.0,
            c.conventions.dose_constant_gy_kg_per_gbq,
            c.conventions.tissue_density_g_per_ml,
        )
        out = []
        for q in self.quantities:
            if q.startswith("tumors."):
                out.append(d["tumors"][names.index(q.split(".", 1)[1])])
            elif q.startswith("tumors_d70."):
                name = q.split(".", 1)[1]
                out.append(d["tumors"][names.index(name)] * nom[f"tumors.{name}.d70_ratio"])
            else:
                out.append(d[q])
        return np.asarray(out, dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class TreatmentModel(Model):
    """The forward model of a case with ``[[injections]]``: doses linear in the vector of vial activities (all but
    a D70 that two vials reach: :attr:`curves`).

    Without ``weights``, :meth:`factors_from_z` gives the per-vial factors, shape (n, J · Q): column
    ``j · Q + q`` is quantity q's dose (or activity) per GBq of injection j's vial at treatment, so that
    dose_q = Σ_j s_j F[:, j·Q + q] + b_q for any vector s of vial activities (one sample set serves every
    joint decision). :meth:`decided` fixes s and gives the doses at it, shape (n, Q), as a single-injection
    model's factors at s = 1.

    Quantities: ``injections.<name>.{perfused_mean, normal_perfused}`` (from that injection alone),
    ``regions.<name>.{mean, normal}`` (all injections), ``tumors.<name>``, ``tumor_total``,
    ``tumors_d70.<name>`` (a tumour with a ``d70_ratio``: reached by one injection, the ratio times its mean
    dose, linear in that vial; reached by two, its own and the one whose territory holds its own, the mean m
    times the tumour's ``d70_ratio_by_share`` curve h at the share t of m its own injection gives, m · h(t),
    not linear in the vials: see :attr:`curves`),
    ``lung_sessions.<session>``, ``lung_cumulative``, with the whole liver ``whole_normal_liver_sessions.<session>``,
    ``whole_normal_liver``, ``whole_liver``, then the activities ``injections.<name>.{injected, liver,
    lung_activity}`` [GBq].
    """

    weights: tuple[float, ...] | None = None

    @classmethod
    def from_case(cls, case: Case) -> TreatmentModel:
        uncertain = tuple(case.uncertain_inputs)
        inj = [j.name for j in case.injections]
        q = []
        for n in inj:
            q += [f"injections.{n}.perfused_mean", f"injections.{n}.normal_perfused"]
        for n in inj:
            q += [f"regions.{n}.mean", f"regions.{n}.normal"]
        q += [f"tumors.{t}" for t in case.tumor_names]
        if any(t.treated for t in case.tumors):
            q.append("tumor_total")
        q += [f"tumors_d70.{t.name}" for t in case.tumors if t.d70_ratio is not None and t.treated]
        q += [f"lung_sessions.{x.name}" for x in case.sessions] + ["lung_cumulative"]
        if case.has_whole_liver:
            q += [f"whole_normal_liver_sessions.{x.name}" for x in case.sessions]
            q += ["whole_normal_liver", "whole_liver"]
        units = ["Gy"] * len(q)
        for n in inj:
            q += [f"injections.{n}.{a}" for a in ACTIVITY_QUANTITIES]
        units += ["GBq"] * (len(q) - len(units))
        return cls(case, uncertain, tuple(q), tuple(units), _cholesky(case, uncertain))

    @property
    def n_vials(self) -> int:
        return len(self.case.injections)

    @property
    def curves(self) -> dict[int, tuple[int, tuple[float, ...], tuple[float, ...]]]:
        """The columns that are not linear in the vials: quantity index → (the tumour's own injection's index,
        the curve's shares, its ratios). Without weights, such a column's per-vial factors are the tumour's
        mean dose per GBq of each vial (times the sample's ratio factor, its ``d70_ratio`` drawn over its
        nominal value); a consumer gives the dose m · h(t) at activities s with m = Σ_j s_j F_j and t the own
        vial's share of m (:func:`curve_dose`). With weights, :meth:`factors_from_z` gives that dose itself."""
        inj = [j.name for j in self.case.injections]
        out = {}
        for t in self.case.tumors:
            if t.d70_by_share is not None and t.treated:
                out[self.quantities.index(f"tumors_d70.{t.name}")] = (inj.index(t.injection), *t.d70_by_share)
        return out

    def decided(self, weights) -> TreatmentModel:
        """The model at vial activities at treatment ``weights`` (GBq, one per injection): doses, not factors."""
        w = tuple(float(x) for x in weights)
        if len(w) != self.n_vials:
            raise ValueError(f"expected {self.n_vials} activities, got {len(w)}")
        return dataclasses.replace(self, weights=w)

    def _structure(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        case = self.case
        names = [j.name for j in case.injections]
        within = tuple(-1 if j.within is None else names.index(j.within) for j in case.injections)
        region = tuple(-1 if t.injection is None else names.index(t.injection) for t in case.tumors)
        return within, region

    def _reaching(self, j: int) -> tuple[int, ...]:
        """Injection j and those whose territories hold its own: the vials that reach a tumour of its region."""
        within, _ = self._structure()
        out = [j]
        while within[out[-1]] != -1:
            out.append(within[out[-1]])
        return tuple(out)

    def treatment_inputs(self, cols: dict, dtype) -> dosimetry.TreatmentInputs:
        import jax.numpy as jnp

        case = self.case
        n = next(iter(cols.values())).shape[0]
        inj = case.injections

        def per_injection(key: str, shared: str):
            return jnp.stack([cols[f"injections.{j.name}.{key}"] if getattr(j, key) is not None else cols[shared]
                              for j in inj], axis=-1)

        names = case.tumor_names
        tv = (jnp.stack([cols[f"tumors.{t}.volume_ml"] for t in names], axis=-1) if names
              else jnp.zeros((n, 0), dtype))
        tn_rows = []
        for j in inj:
            own = dict(j.tn_ratios)
            row = [cols[f"injections.{j.name}.tn_ratios.{t}"] if t in own else cols[f"tumors.{t}.tn_ratio"] for t in names]
            tn_rows.append(jnp.stack(row, axis=-1) if names else jnp.zeros((n, 0), dtype))
        return dosimetry.TreatmentInputs(
            territory_volume_ml=jnp.stack([cols[f"injections.{j.name}.perfused_volume_ml"] for j in inj], axis=-1),
            tumor_volume_ml=tv,
            tn_ratio=jnp.stack(tn_rows, axis=-2),
            shunt_fraction=per_injection("shunt_fraction", "lung.shunt_fraction"),
            residual_fraction=per_injection("residual_fraction", "delivery.residual_fraction"),
            activity_factor=jnp.stack([cols[f"injections.{j.name}.activity_factor"] for j in inj], axis=-1),
            lung_mass_kg=cols["lung.mass_kg"],
            whole_liver_volume_ml=cols.get("liver.whole_liver_volume_ml", jnp.full((n,), jnp.nan, dtype)),
        )

    def _columns(self, u: dict, like, cols: dict) -> list[list]:
        """For each vial j, the list of its Q factor columns (arrays of shape (n,), or 0.0 where none)."""
        import jax.numpy as jnp

        case = self.case
        inj = [j.name for j in case.injections]
        ratio = {t.name: t for t in case.tumors if t.d70_ratio is not None and t.treated}
        reach = {n: self._reaching(inj.index(t.injection)) for n, t in ratio.items()}
        sess = [x.name for x in case.sessions]
        zero = jnp.zeros_like(like)
        out = []
        for j, jn in enumerate(inj):
            s_name = case.injection(jn).session
            by_name = {
                f"injections.{jn}.perfused_mean": u["perfused_mean"][:, j],
                f"injections.{jn}.normal_perfused": u["normal_perfused"][:, j],
                f"injections.{jn}.injected": u["injected"][:, j],
                f"injections.{jn}.liver": u["liver_activity"][:, j],
                f"injections.{jn}.lung_activity": u["lung_activity"][:, j],
                f"lung_sessions.{s_name}": u["lung"][:, j],
                "lung_cumulative": u["lung"][:, j],
                f"whole_normal_liver_sessions.{s_name}": u["whole_normal_liver"][:, j],
                "whole_normal_liver": u["whole_normal_liver"][:, j],
                "whole_liver": u["whole_liver"][:, j],
                "tumor_total": u["tumor_total"][:, j],
            }
            for r, rn in enumerate(inj):
                by_name[f"regions.{rn}.mean"] = u["region_mean"][:, j, r]
                by_name[f"regions.{rn}.normal"] = u["region_normal"][:, j, r]
            for i, t in enumerate(case.tumor_names):
                by_name[f"tumors.{t}"] = u["tumors"][:, j, i]
                if t in ratio and j in reach[t]:
                    r = cols[f"tumors.{t}.d70_ratio"]
                    if ratio[t].d70_by_share is None:  # one injection reaches it: D70 = ratio × mean
                        by_name[f"tumors_d70.{t}"] = u["tumors"][:, j, i] * r
                    else:  # the mean per GBq, times the ratio's sampled factor; the curve applies to the sum
                        by_name[f"tumors_d70.{t}"] = u["tumors"][:, j, i] * (r / ratio[t].d70_ratio.nominal)
            out.append([by_name.get(q, zero) for q in self.quantities])
        del sess
        return out

    def numbers(self, dtype) -> tuple[float, ...]:
        return super().numbers(dtype) + (self.weights or ())

    def structure(self) -> tuple:
        return super().structure() + (self.weights is None,)

    def factors_from_z(self, z, p=None):
        import jax.numpy as jnp

        forms, conv, _, chol, take = self._unpack(p, z.dtype)
        weights = take(len(self.weights)) if self.weights is not None else None
        cols = self._columns_from(z, forms, chol)
        x = self.treatment_inputs(cols, z.dtype)
        within, region = self._structure()
        u = dosimetry.treatment_factors(x, within, region, conv)
        per_vial = self._columns(u, x.lung_mass_kg, cols)
        if weights is None:
            f = jnp.stack([c for vial in per_vial for c in vial], axis=-1)
        else:
            summed = []
            curves = self.curves
            for q in range(len(self.quantities)):
                acc = per_vial[0][q] * jnp.asarray(weights[0], z.dtype)
                for j in range(1, len(per_vial)):
                    acc = acc + per_vial[j][q] * jnp.asarray(weights[j], z.dtype)
                if q in curves:
                    own, xs, ys = curves[q]
                    acc = curve_dose(acc, per_vial[own][q] * jnp.asarray(weights[own], z.dtype), xs, ys)
                summed.append(acc)
            f = jnp.stack(summed, axis=-1)
        valid = jnp.all(u["region_normal_mass"] > 0, axis=-1) & jnp.all(jnp.isfinite(f), axis=-1)
        if self.case.has_whole_liver:
            outer = [j for j, w in enumerate(within) if w == -1]
            untreated = [i for i, r in enumerate(region) if r == -1]
            need = x.territory_volume_ml[:, outer[0]]
            for j in outer[1:]:
                need = need + x.territory_volume_ml[:, j]
            for i in untreated:
                need = need + x.tumor_volume_ml[:, i]
            valid = valid & (x.whole_liver_volume_ml >= need)
        return f, valid

    def nominal_factors(self) -> np.ndarray:
        """At the nominal inputs, from the plain-numpy reference: the per-vial factors (J · Q) without weights
        (each vial's column block is the reference's doses for 1 GBq in that vial and none in the others),
        the doses (Q) at the weights with them. The offsets (prior lung dose) are not included."""
        from .reference import reference_treatment_doses

        case = self.case
        nom = case.nominal()
        inj = case.injections
        within, region = self._structure()
        names = case.tumor_names

        def value(key: str, j, shared: str) -> float:
            return nom[f"injections.{j.name}.{key}"] if getattr(j, key) is not None else nom[shared]

        args = dict(
            within=within,
            session=[[x.name for x in case.sessions].index(j.session) for j in inj],
            territory_volume_ml=[nom[f"injections.{j.name}.perfused_volume_ml"] for j in inj],
            tumor_region=region,
            tumor_volume_ml=[nom[f"tumors.{t}.volume_ml"] for t in names],
            tn_ratio=[[nom.get(f"injections.{j.name}.tn_ratios.{t}", nom[f"tumors.{t}.tn_ratio"]) for t in names]
                      for j in inj],
            shunt_fraction=[value("shunt_fraction", j, "lung.shunt_fraction") for j in inj],
            lung_mass_kg=nom["lung.mass_kg"],
            residual_fraction=[value("residual_fraction", j, "delivery.residual_fraction") for j in inj],
            whole_liver_volume_ml=nom.get("liver.whole_liver_volume_ml", np.nan),
            prior_lung_dose_gy=0.0,
            activity_factor=[nom[f"injections.{j.name}.activity_factor"] for j in inj],
            dose_constant_gy_kg_per_gbq=case.conventions.dose_constant_gy_kg_per_gbq,
            tissue_density_g_per_ml=case.conventions.tissue_density_g_per_ml,
        )

        def flat(d) -> np.ndarray:
            return np.array([float(treatment_value(d, q, case, nom, per_vial=self.weights is None))
                             for q in self.quantities], dtype=np.float64)

        if self.weights is not None:
            return flat(reference_treatment_doses(list(self.weights), **args))
        blocks = [flat(reference_treatment_doses(list(np.eye(len(inj))[j]), **args)) for j in range(len(inj))]
        return np.concatenate(blocks)


def curve_dose(mean, own, shares, ratios):
    """A tumour's D70 reached by two injections: its mean dose ``mean`` times its D70 curve (piecewise linear
    through ``(shares, ratios)``) at the share ``own / mean`` of that mean its own injection gives. The same
    arithmetic wherever it is evaluated (the joint planner's count, the model at decided vials)."""
    import jax.numpy as jnp

    t = jnp.where(mean > 0, jnp.clip(own / jnp.where(mean > 0, mean, 1.0), 0.0, 1.0), 1.0)  # no dose: D70 0
    return mean * _interp_curve(t, shares, ratios)


def _interp_curve(t, shares, ratios):
    """The piecewise-linear curve at t in [0, 1]: on evenly spaced shares (what voxel writes) by the node's
    index, t (K − 1) split into its integer and fractional parts (a gather, no search); else ``jnp.interp``."""
    import jax.numpy as jnp

    k = len(shares)
    fp = jnp.asarray(ratios, t.dtype)
    if np.allclose(shares, np.linspace(0.0, 1.0, k), rtol=0.0, atol=1e-12):
        x = t * jnp.asarray(k - 1, t.dtype)
        base = jnp.clip(jnp.floor(x), 0, k - 2)
        i = base.astype(jnp.int32)
        lo = fp[i]
        return lo + (x - base) * (fp[i + 1] - lo)
    return jnp.interp(t, jnp.asarray(shares, t.dtype), fp)


def treatment_value(d: dict, q: str, case: Case, inputs: dict | None = None, per_vial: bool = False):
    """Quantity ``q`` (a :class:`TreatmentModel` column name) from a :func:`reference_treatment_doses` result
    (a number, or an array for sampled inputs); ``inputs`` (by case path) gives the D70 ratios. With
    ``per_vial``, a D70 with a share curve is its mean times the ratio's factor (:attr:`TreatmentModel.curves`)."""
    inj = [j.name for j in case.injections]
    sess = [x.name for x in case.sessions]
    head, _, rest = q.partition(".")
    if head == "tumors_d70":
        i = case.tumor_names.index(rest)
        t = case.tumors[i]
        ratio = inputs[f"tumors.{rest}.d70_ratio"]
        by = d["tumors_by_injection"]
        own = inj.index(t.injection)
        if t.d70_by_share is None:
            return by[own][i] * ratio
        outer = inj.index(case.injection(t.injection).within)
        mean = by[own][i] + by[outer][i]
        if per_vial:
            return mean * (ratio / t.d70_ratio.nominal)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.clip(np.where(mean > 0, by[own][i] / mean, 1.0), 0.0, 1.0)
        return mean * np.interp(share, *t.d70_by_share) * (ratio / t.d70_ratio.nominal)
    if head == "injections":
        name, _, what = rest.partition(".")
        key = {"lung_activity": "lung"}.get(what, what)
        return d["injections"][inj.index(name)][key]
    if head == "regions":
        name, _, what = rest.partition(".")
        return d["regions"][inj.index(name)][what]
    if head == "tumors":
        return d["tumors"][case.tumor_names.index(rest)]
    if head in ("lung_sessions", "whole_normal_liver_sessions"):
        return d[head][sess.index(rest)]
    return d[q]


# -- sampling -----------------------------------------------------------------------------------------------


def block_normals(block_key, n_dims: int, dtype):
    """The standard normal variates (BLOCK, n_dims) of one block, drawn from its key.

    float32: each threefry-2×32 hash gives two 32-bit words, and both are used. The block's BLOCK · n_dims
    words are ``threefry_2x32(key_data(block_key), arange(BLOCK · n_dims))``: hash i of the pair of counters
    (i, i + m), m = BLOCK · n_dims / 2, gives words i and i + m. A word becomes a uniform u in
    (-1, 1) from its 23 high bits, exactly as :func:`jax.random.uniform` does, and z = √2 · erf⁻¹(u), exactly as
    :func:`jax.random.normal` does. This is half the hashes of ``jax.random.normal(block_key, ...)`` in JAX's
    partitionable threefry mode, which spends a hash on each 32-bit word (the draw ran 1.5× faster;
    benchmarks/RESULTS.md). It is the stream that ``jax.random.normal`` drew before that mode became JAX's
    default (``jax.threefry_partitionable(False)``), written out so that it depends on no global flag.
    ``tests/test_engine.py`` checks the words against a plain-numpy threefry-2×32, and against that mode.

    float64: ``jax.random.normal(block_key, (BLOCK, n_dims), float64)`` (one hash per 64-bit word already).
    """
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype)
    if dtype != jnp.float32:
        return jax.random.normal(block_key, (BLOCK, n_dims), dtype)
    from jax.extend.random import threefry_2x32

    bits = threefry_2x32(jax.random.key_data(block_key), jnp.arange(BLOCK * n_dims, dtype=jnp.uint32))
    return _normal_from_bits32(bits).reshape(BLOCK, n_dims)


def _normal_from_bits32(bits):
    """float32 standard normals from uint32 words, as :func:`jax.random.normal` turns its words into normals."""
    import jax
    import jax.numpy as jnp

    one = np.float32(1.0).view(np.uint32)
    u01 = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - np.float32(1.0)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(lo, u01 * (np.float32(1.0) - lo) + lo)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def variates(key, start, count: int, n_dims: int, dtype, aligned: bool = False):
    """Standard normal variates (count, n_dims) for global sample indices [start, start + count).

    Block b = index // BLOCK is drawn from fold_in(key, b); the result does not depend on how a run is
    chunked. ``start`` may be traced; ``count`` is static. ``aligned`` (static) promises that ``start`` is a
    multiple of :data:`BLOCK`: the same numbers are then drawn without the extra block and the dynamic slice
    (faster; the unaligned path serves any chunk size).
    """
    b0 = start // BLOCK
    return block_variates(key, b0, start - b0 * BLOCK, count, n_dims, dtype, aligned)


#: The D70 ratios' streams (see :attr:`Model.n_base_dims`): the key folded with this tag, a block number no run
#: reaches (:func:`_position` refuses it), then with the tumour's index.
RATIO_STREAM = 2**32 - 1


def model_variates(model: Model, key, block0, offset, count: int, dtype, aligned: bool = False):
    """The model's variates (count, n_dims): its main inputs from ``key`` (:func:`block_variates`), each D70
    ratio after them from ``fold_in(fold_in(key, RATIO_STREAM), tumour index)`` (the same blocks and
    positions), so that no ratio's uncertainty moves another input's draws."""
    import jax
    import jax.numpy as jnp

    z = block_variates(key, block0, offset, count, model.n_base_dims, dtype, aligned)
    streams = model.ratio_streams()
    if streams:
        ratio_key = jax.random.fold_in(key, RATIO_STREAM)
        z = jnp.concatenate([z] + [block_variates(jax.random.fold_in(ratio_key, i), block0, offset, count, 1, dtype,
                                                  aligned) for i in streams], axis=1)
    return z


def block_variates(key, block0, offset, count: int, n_dims: int, dtype, aligned: bool = False):
    """:func:`variates` for the samples from index ``block0 · BLOCK + offset`` on, 0 ≤ offset < BLOCK.

    Positions are passed as a block number (uint32: up to (2³² − 1) · BLOCK ≈ 1.8·10¹³ samples; the last block number
    tags the D70 ratios' streams) and an offset
    within it, so no sample index, which may exceed 2³¹, is ever a device integer (JAX without x64 mode has
    no 64-bit integers).
    """
    import jax
    import jax.numpy as jnp

    nb = -(-count // BLOCK) + (0 if aligned else 1)
    blocks = block0 + jnp.arange(nb, dtype=jnp.uint32)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(blocks)
    z = jax.vmap(lambda k: block_normals(k, n_dims, dtype))(keys).reshape(nb * BLOCK, n_dims)
    if aligned:
        return z[:count]
    return jax.lax.dynamic_slice_in_dim(z, offset, count, axis=0)


def _position(start: int, size: int) -> tuple:
    """A chunk's device arguments: its first block (uint32), the offset in it and its sample count (int32)."""
    import jax.numpy as jnp

    block0, offset = divmod(start, BLOCK)
    if (start + size - 1) // BLOCK >= RATIO_STREAM:  # the last block number tags the ratios' streams
        raise ValueError(f"sample index {start + size - 1} is beyond the {RATIO_STREAM * BLOCK:.3g} samples a key can address")
    return jnp.asarray(block0, jnp.uint32), jnp.asarray(offset, jnp.int32), jnp.asarray(size, jnp.int32)


def _aligned(n: int, chunk: int) -> bool:
    """Every chunk of a run starts on a block boundary (chunks are BLOCK multiples, or there is one chunk)."""
    return chunk % BLOCK == 0 or n <= chunk


def make_key(seed: int):
    import jax

    # threefry named, not taken from jax_default_prng_impl: block_normals reads its two-word key data, and the
    # random numbers of a seed must not depend on a global setting
    return jax.random.key(seed, impl="threefry2x32")


def chunks(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, size) pairs covering [0, n); the last chunk is padded up to ``chunk`` by the caller."""
    for start in range(0, n, chunk):
        yield start, min(chunk, n - start)


class _SameComputation:
    """A model keyed by what its traced computation depends on besides the case's numbers
    (:meth:`Model.structure`), so that every model of one structure (the same case planned again, a cohort's
    patients) reuses one compiled chunk function: the numbers (:meth:`Model.numbers`) are its argument.
    """

    __slots__ = ("model", "key")

    def __init__(self, model: Model):
        self.model = model
        self.key = (type(model), model.structure())

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _SameComputation) and self.key == other.key


def _jit_chunk_fn(model: Model, count: int, dtype: str, reducer: Callable | None, aligned: bool = False):
    return _compiled_chunk_fn(_SameComputation(model), count, dtype, reducer, aligned)


@functools.lru_cache(maxsize=64)
def _compiled_chunk_fn(same: _SameComputation, count: int, dtype: str, reducer: Callable | None, aligned: bool):
    import jax
    import jax.numpy as jnp

    model = same.model
    dt = jnp.dtype(dtype)

    def fn(key, block0, offset, size, numbers, *args):
        z = model_variates(model, key, block0, offset, count, dt, aligned)
        f, valid = model.factors_from_z(z, numbers)
        in_range = jnp.arange(count, dtype=jnp.int32) < size  # the last chunk is padded
        if reducer is None:
            return f, valid, in_range
        return reducer(f, valid, in_range, *args)

    return jax.jit(fn)


def model_numbers(model: Model, dtype):
    """The model's :meth:`~Model.numbers` as one array in the run's dtype (the chunk function's argument)."""
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(model.numbers(np.dtype(dtype)), dtype=np.float64), dtype)


def run_chunks(
    model: Model,
    n: int,
    seed: int,
    reducer: Callable,
    args: tuple = (),
    chunk: int | None = None,
    dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
    whole_blocks: bool = False,
) -> Iterator:
    """Yield ``reducer(F, valid, in_range, *args)`` for each chunk of the n samples.

    Every chunk has the same static size (the last is masked with ``in_range``), so one compile serves the
    whole run. ``reducer`` must be a pure JAX function (it is traced inside the chunk's ``jit``). Up to
    :data:`LOOKAHEAD` further chunks are dispatched before a result is yielded, so the device does not wait
    for the caller; ``progress(size)`` is called after the caller has taken each result. So an error in
    dispatching chunk k reaches the caller when it asks for chunk k − LOOKAHEAD, and a caller that stops early
    has had up to LOOKAHEAD chunks computed for nothing. With ``whole_blocks`` every chunk is a whole number of
    random blocks (:data:`BLOCK`; the last one padded), so no block is split between chunks.
    """
    import jax.numpy as jnp

    chunk = max(1, min(chunk or default_chunk(), n))
    if whole_blocks:  # chunks of whole random blocks (a reducer that keeps per-block results needs them)
        chunk = -(-chunk // BLOCK) * BLOCK
    key = make_key(seed)
    fn = _jit_chunk_fn(model, chunk, dtype, reducer, _aligned(n, chunk))
    dt = jnp.dtype(dtype)
    numbers = model_numbers(model, dt)
    # floating arguments take the run's dtype, so a float32 run stays float32 even under JAX's x64 mode
    jargs = tuple(
        jnp.asarray(a, dt) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a) for a in args
    )
    todo = chunks(n, chunk)
    in_flight: collections.deque = collections.deque()
    while True:
        # dispatch ahead: the device works on the next chunks while the caller reads this one back
        while len(in_flight) <= LOOKAHEAD and (nxt := next(todo, None)) is not None:
            start, size = nxt
            in_flight.append((fn(key, *_position(start, size), numbers, *jargs), size))
        if not in_flight:
            return
        out, size = in_flight.popleft()
        yield out
        if progress is not None:
            progress(size)


def sample_factors(model: Model, n: int, seed: int, chunk: int | None = None, dtype: str = "float32"):
    """All factors (n, Q) and validity (n,) as numpy arrays (for small runs, tests and the planner)."""

    import jax.numpy as jnp

    chunk = max(1, min(chunk or default_chunk(), n))
    key = make_key(seed)
    fn = _jit_chunk_fn(model, chunk, dtype, None, _aligned(n, chunk))
    numbers = model_numbers(model, jnp.dtype(dtype))
    fs, vs = [], []
    for start, size in chunks(n, chunk):
        f, v, _ = fn(key, *_position(start, size), numbers)
        fs.append(np.asarray(f[:size]))
        vs.append(np.asarray(v[:size]))
    return np.concatenate(fs), np.concatenate(vs)


def sample_inputs(model: Model, n: int, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The sampled input values by case path (numpy), for inspection and tests."""
    import jax.numpy as jnp

    z = model_variates(model, make_key(seed), jnp.asarray(0, jnp.uint32), jnp.asarray(0, jnp.int32), n,
                       jnp.dtype(dtype), aligned=True)
    return {k: np.asarray(v) for k, v in model.input_columns(z).items()}


def check_invalid(n_invalid: int, n: int, file: str, limit: float = MAX_INVALID_FRACTION, model: Model | None = None,
                  seed: int = 0) -> None:
    """Stop a run whose share of invalid samples exceeds ``limit``, naming the cause (the field to change) from
    a diagnosis of the sampled inputs when ``model`` is given."""
    if not n or n_invalid / n <= limit:
        return
    share = f"{n_invalid} of {n} samples ({100 * n_invalid / n:.3g} %; at most {100 * limit:g} % tolerated)"
    if model is not None:
        field, why = diagnose_invalid(model, seed)
        raise UnphysicalSamplesError(f"{file}: {field}: {share} are unphysical: {why}")
    raise UnphysicalSamplesError(
        f"{file}: tumors: {share} have tumours larger than their territory, a whole liver smaller than the perfused "
        "territory, or doses that overflow: reduce the volume uncertainties or correlate the volumes"
    )


def diagnose_invalid(model: Model, seed: int, n: int = 1 << 15) -> tuple[str, str]:
    """Which geometry fails most often in the sampled inputs: (the field to change, the cause with its share)."""
    x = sample_inputs(model, n, seed, "float64" if _x64() else "float32")
    case = model.case
    if case.multi:
        return _diagnose_treatment(case, x)
    perfused = x["liver.perfused_volume_ml"]
    treated = sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if t.treated), np.zeros_like(perfused))
    untreated = sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if not t.treated), np.zeros_like(perfused))
    causes = [("tumors", "the treated tumours are larger than the perfused territory",
               float(np.mean(treated >= perfused)),
               "reduce the volume uncertainties or correlate the tumour and perfused volumes")]
    if case.has_whole_liver:
        whole = x["liver.whole_liver_volume_ml"]
        causes.append(("liver.whole_liver_volume_ml",
                       "the whole liver is smaller than the perfused territory and the untreated tumours",
                       float(np.mean(whole < perfused + untreated)),
                       "check the whole-liver volume, or correlate it with the perfused volume"))
    for path, v in x.items():
        causes.append((path, "its samples are not finite in the run's precision", float(np.mean(~np.isfinite(v))),
                       "narrow its spread or use --dtype float64"))
    field, what, p, fix = max(causes, key=lambda c: c[2])
    return field, f"{what} in {100 * p:.3g} % of the samples: {fix}"


def _diagnose_treatment(case: Case, x: dict) -> tuple[str, str]:
    """:func:`diagnose_invalid` for a case with ``[[injections]]``: each region's geometry and the whole liver."""
    names = [j.name for j in case.injections]
    causes = []
    for i, j in enumerate(case.injections):
        v = x[f"injections.{j.name}.perfused_volume_ml"]
        inner = sum((x[f"injections.{c.name}.perfused_volume_ml"] for c in case.injections if c.within == j.name),
                    np.zeros_like(v))
        tum = sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if t.injection == j.name), np.zeros_like(v))
        causes.append((f"injections[{i}].perfused_volume_ml",
                       f"the territories nested in {j.name!r} and its tumours are larger than its territory",
                       float(np.mean(inner + tum >= v)),
                       "reduce the volume uncertainties or correlate the nested volumes ([[correlations]])"))
    if case.has_whole_liver:
        whole = x["liver.whole_liver_volume_ml"]
        outer = sum((x[f"injections.{j.name}.perfused_volume_ml"] for j in case.injections if j.within is None),
                    np.zeros_like(whole))
        outer = outer + sum((x[f"tumors.{t.name}.volume_ml"] for t in case.tumors if not t.treated), np.zeros_like(whole))
        causes.append(("liver.whole_liver_volume_ml",
                       "the whole liver is smaller than the outermost territories and the untreated tumours",
                       float(np.mean(whole < outer)),
                       "check the volumes, or correlate the whole liver with the territories ([[correlations]])"))
    for path, v in x.items():
        causes.append((path, "its samples are not finite in the run's precision", float(np.mean(~np.isfinite(v))),
                       "narrow its spread or use --dtype float64"))
    del names
    field, what, p, fix = max(causes, key=lambda c: c[2])
    return field, f"{what} in {100 * p:.3g} % of the samples: {fix}"


def _x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)

