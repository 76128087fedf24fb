"""The case file: parse and validate once, where it is read, with messages that name the file and the field.

The format is pinned in the project's design document (``name``, ``scenario``, ``[conventions]``, ``[liver]``,
``[[tumors]]``, ``[lung]``, ``[delivery]``, ``[vials]``, ``[plan]``), extended here with ``[[correlations]]``,
``[rules]`` (per-patient overrides of the scenario's rules) and the uncertainty forms of
:mod:`y90opt.uncertainty`. Unknown keys are errors: a typo must never fall back to a default.
The raw TOML text is kept unaltered (and hashed) in every result.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import re
import tomllib
import warnings
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import physics, scenarios
from .errors import InputError
from .physics import Conventions
from .uncertainty import Fixed, Spec, SpecError, check_samplable, check_support, is_biased, parse_spec


class CaseError(InputError):
    """Bad input in a case. ``str(err)`` is the one line the CLI prints: ``<file>: <field>: <message>``."""

    def __init__(self, file: str, field: str, message: str):
        super().__init__(file, field, message)


@dataclasses.dataclass(frozen=True)
class Tumor:
    name: str
    volume_ml: Spec
    tn_ratio: Spec
    treated: bool = True
    injection: str | None = None  # with [[injections]]: the innermost territory the tumour lies in
    d70_ratio: Spec | None = None  # its D70 over its mean dose (voxel dosimetry, ``y90opt voxel --case-out``)
    #: with two injections reaching it (its own and the one whose territory holds its own): the D70 ratio as a
    #: function of the share of its mean dose its own injection gives, ((shares…), (ratios…)), shares from 0 to 1
    d70_by_share: tuple[tuple[float, ...], tuple[float, ...]] | None = None


@dataclasses.dataclass(frozen=True)
class Session:
    """One treatment session of a case with ``[[injections]]``: its vials' calibration and its time.

    ``delivered``: the session has taken place; its time and its injections' activities are what was given,
    never chosen by ``plan`` (a plan of the later sessions given this one)."""

    name: str
    calibration: _dt.datetime
    treatment: _dt.datetime | None
    hours_after_calibration: Candidates | None
    delivered: bool = False


@dataclasses.dataclass(frozen=True)
class Injection:
    """One injection (catheter position, one vial) of a case with ``[[injections]]``.

    ``shunt_fraction`` and ``residual_fraction`` are ``None`` when the injection uses the case-level value
    (the same draw as the other injections that do); ``tn_ratios`` holds this injection's own MAA T:N of the
    tumours it names (the others use the tumour's ``tn_ratio``, one draw shared by the injections)."""

    name: str
    session: str
    role: str | None
    perfused_volume_ml: Spec
    within: str | None
    vial_gbq: float | None
    shunt_fraction: Spec | None
    residual_fraction: Spec | None
    tn_ratios: tuple[tuple[str, Spec], ...]
    calibration: _dt.datetime | None
    activities_gbq: Candidates | None

    @property
    def key(self) -> str:
        """The name scenario rules use for this injection: its role, else its name."""
        return self.role or self.name


@dataclasses.dataclass(frozen=True)
class Candidates:
    """An explicit list or an inclusive ``{min, max, step}`` range."""

    values: tuple[float, ...]
    spec: str  # "list", "range" or "default"


@dataclasses.dataclass(frozen=True)
class Plan:
    vial_gbq: float | None
    treatment: _dt.datetime | None
    hours_after_calibration: Candidates | None
    risk: float
    site_timezone: str | None
    procedure_time: _dt.time | None
    success: str  # "all-tumors" | "index-tumor" | "mass-weighted"
    index_tumor: str | None
    tie_tolerance: float
    acceptable_success: float = 0.5
    treatment_days: tuple[int, ...] = (0, 1, 2, 3, 4)  # weekdays the site treats (0 = Monday)
    clinic_hours: tuple[_dt.time, _dt.time] | None = None  # local hours a range's times may fall in
    holidays: tuple[_dt.date, ...] = ()
    min_lead_time_h: float = 0.0  # earliest treatment after the vial's calibration [h]


@dataclasses.dataclass(frozen=True)
class Case:
    """A validated case. Uncertain inputs are in :attr:`inputs`, keyed by their case path."""

    path: str
    name: str
    scenario: str
    conventions: Conventions
    perfused_volume_ml: Spec
    whole_liver_volume_ml: Spec | None
    tumors: tuple[Tumor, ...]
    shunt_fraction: Spec
    lung_mass_kg: Spec
    prior_lung_dose_gy: float
    residual_fraction: Spec
    activity_factor: Spec
    calibration: _dt.datetime
    vials_gbq: Candidates
    plan: Plan
    delivered: _dt.datetime | None
    correlations: tuple[tuple[str, str, float], ...]
    rules: Mapping[str, Any]
    text: str
    custom_conventions: tuple[str, ...] = ()  # conventions outside their cited range (allowed by custom = true)
    usable_life_h: float = physics.USABLE_LIFE_H
    injections: tuple[Injection, ...] = ()  # [[injections]]: a treatment of several injections (else empty)
    sessions: tuple[Session, ...] = ()

    @property
    def multi(self) -> bool:
        """The case describes its treatment by ``[[injections]]`` (one or more injections and sessions)."""
        return bool(self.injections)

    def injection(self, name: str) -> Injection:
        return next(j for j in self.injections if j.name == name)

    def session(self, name: str) -> Session:
        return next(x for x in self.sessions if x.name == name)

    def injection_calibration(self, j: Injection) -> _dt.datetime:
        return j.calibration or self.session(j.session).calibration

    def injection_hours(self, j: Injection) -> float | None:
        """Hours from the injection's vial calibration to its session's ``treatment`` (None when not given)."""
        t = self.session(j.session).treatment
        return None if t is None else physics.hours_between(self.injection_calibration(j), t)

    def injection_decisions(self, command: str) -> list[tuple[float, float, float]]:
        """Per injection, (hours after its vial's calibration, vial at calibration [GBq], vial at treatment
        [GBq]) of the case's decision (each injection's ``vial_gbq``, each session's ``treatment``), which
        ``command`` needs. Raises :class:`CaseError` naming the missing field."""
        out = []
        for i, j in enumerate(self.injections):
            if j.vial_gbq is None:
                raise CaseError(self.path, f"injections[{i}].vial_gbq", f"missing (required by {command})")
            hours = self.injection_hours(j)
            if hours is None:
                k = [x.name for x in self.sessions].index(j.session)
                raise CaseError(self.path, f"sessions[{k}].treatment", f"missing (required by {command})")
            if hours < 0:
                raise CaseError(self.path, f"injections[{i}].calibration", "after its session's treatment")
            out.append((hours, j.vial_gbq, j.vial_gbq * physics.decay_factor(hours, self.conventions.half_life_h)))
        return out

    def injection_vials(self, j: Injection) -> Candidates:
        return j.activities_gbq or self.vials_gbq

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def tumor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tumors)

    @property
    def inputs(self) -> dict[str, Spec]:
        """Every input quantity by case path (exact ones included), in a fixed order."""
        if self.multi:
            return self._treatment_inputs()
        d: dict[str, Spec] = {"liver.perfused_volume_ml": self.perfused_volume_ml}
        if self.whole_liver_volume_ml is not None:
            d["liver.whole_liver_volume_ml"] = self.whole_liver_volume_ml
        for t in self.tumors:
            d[f"tumors.{t.name}.volume_ml"] = t.volume_ml
            d[f"tumors.{t.name}.tn_ratio"] = t.tn_ratio
        d["lung.shunt_fraction"] = self.shunt_fraction
        d["lung.mass_kg"] = self.lung_mass_kg
        d["delivery.residual_fraction"] = self.residual_fraction
        d["delivery.activity_factor"] = self.activity_factor
        for t in self.tumors:  # last, drawn from a stream of their own (engine.RATIO_STREAM): no other input moves
            if t.d70_ratio is not None and t.treated:
                d[f"tumors.{t.name}.d70_ratio"] = t.d70_ratio
        return d

    def _treatment_inputs(self) -> dict[str, Spec]:
        d: dict[str, Spec] = {f"injections.{j.name}.perfused_volume_ml": j.perfused_volume_ml for j in self.injections}
        if self.whole_liver_volume_ml is not None:
            d["liver.whole_liver_volume_ml"] = self.whole_liver_volume_ml
        for t in self.tumors:
            d[f"tumors.{t.name}.volume_ml"] = t.volume_ml
            d[f"tumors.{t.name}.tn_ratio"] = t.tn_ratio
        for j in self.injections:
            for tname, spec in j.tn_ratios:
                d[f"injections.{j.name}.tn_ratios.{tname}"] = spec
        if any(j.shunt_fraction is None for j in self.injections):
            d["lung.shunt_fraction"] = self.shunt_fraction
        for j in self.injections:
            if j.shunt_fraction is not None:
                d[f"injections.{j.name}.shunt_fraction"] = j.shunt_fraction
        d["lung.mass_kg"] = self.lung_mass_kg
        if any(j.residual_fraction is None for j in self.injections):
            d["delivery.residual_fraction"] = self.residual_fraction
        for j in self.injections:
            if j.residual_fraction is not None:
                d[f"injections.{j.name}.residual_fraction"] = j.residual_fraction
        # the dose calibrator's factor is one draw per vial (each injection has its own vial)
        for j in self.injections:
            d[f"injections.{j.name}.activity_factor"] = self.activity_factor
        for t in self.tumors:  # last, each from a stream of its own, as with one injection
            if t.d70_ratio is not None and t.treated:
                d[f"tumors.{t.name}.d70_ratio"] = t.d70_ratio
        return d

    @property
    def ratio_inputs(self) -> tuple[str, ...]:
        """The case paths of the treated tumours' D70 ratios (the last inputs; each drawn from a stream of its
        own, ``engine.model_variates``)."""
        return tuple(f"tumors.{t.name}.d70_ratio" for t in self.tumors if t.d70_ratio is not None and t.treated)

    @property
    def uncertain_inputs(self) -> dict[str, Spec]:
        return {k: v for k, v in self.inputs.items() if not isinstance(v, Fixed)}

    @property
    def biased_inputs(self) -> list[str]:
        return [k for k, v in self.inputs.items() if is_biased(v)]

    @property
    def has_whole_liver(self) -> bool:
        return self.whole_liver_volume_ml is not None

    def treatment_hours(self) -> float | None:
        if self.plan.treatment is None:
            return None
        return physics.hours_between(self.calibration, self.plan.treatment)

    def decision(self, command: str) -> tuple[float, float]:
        """(hours after calibration, vial activity at treatment [GBq]) of the ``[plan]`` decision, which
        ``command`` needs. Raises :class:`CaseError` naming the missing field."""
        if self.plan.vial_gbq is None:
            raise CaseError(self.path, "plan.vial_gbq", f"missing (required by {command})")
        if self.plan.treatment is None:
            raise CaseError(self.path, "plan.treatment", f"missing (required by {command})")
        hours = physics.hours_between(self.calibration, self.plan.treatment)
        return hours, self.plan.vial_gbq * physics.decay_factor(hours, self.conventions.half_life_h)

    def nominal(self) -> dict[str, float]:
        return {k: float(v.nominal) for k, v in self.inputs.items()}

    def site_zone(self) -> _dt.tzinfo:
        if self.plan.site_timezone:
            return zoneinfo.ZoneInfo(self.plan.site_timezone)
        return self.calibration.tzinfo  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------

_TOP = {"name", "scenario", "conventions", "liver", "tumors", "lung", "delivery", "vials", "plan", "correlations", "rules",
        "sessions", "injections", "images"}
_LIVER = {"perfused_volume_ml", "whole_liver_volume_ml"}
_TUMOR = {"name", "volume_ml", "tn_ratio", "treated", "injection", "d70_ratio", "d70_ratio_by_share"}
#: Most nodes of a tumour's ``d70_ratio_by_share`` curve.
MAX_SHARE_NODES = 201
_SESSION = {"name", "calibration", "treatment", "hours_after_calibration", "delivered"}
_INJECTION = {"name", "session", "role", "perfused_volume_ml", "within", "vial_gbq", "shunt_fraction",
              "residual_fraction", "tn_ratios", "calibration", "activities_gbq"}
#: Most injections a case may list (the vendor's calculator takes four targets).
MAX_INJECTIONS = 8
_LUNG = {"shunt_fraction", "mass_kg", "prior_dose_gy"}
_DELIVERY = {"residual_fraction", "activity_factor"}
_VIALS = {"calibration", "activities_gbq", "catalogue", "delivered", "usable_life_h"}
#: ``[vials] catalogue`` names. "custom": 3-20 GBq in 0.5 GBq steps. Widely reported for TheraSphere but not
#: confirmed in the package insert we cite (which lists the six standard activities): check with the supplier.
CATALOGUES = {"standard": "standard", "custom": "custom (3-20 GBq in 0.5 GBq steps; unconfirmed: check with the supplier)"}
#: Weekday names a ``[plan] treatment_days`` list may use.
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PLAN = {
    "vial_gbq",
    "treatment",
    "hours_after_calibration",
    "risk",
    "site_timezone",
    "procedure_time",
    "success",
    "index_tumor",
    "tie_tolerance",
    "acceptable_success",
    "treatment_days",
    "clinic_hours",
    "holidays",
    "min_lead_time_h",
}
_SUCCESS = ("all-tumors", "index-tumor", "mass-weighted")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Largest prior lung dose [Gy] a case may give (ten times the usual 50 Gy cumulative limit).
MAX_PRIOR_LUNG_GY = 500.0
#: Most tumours a case may list (each is a compartment of the model and a column of every result).
MAX_TUMORS = 200
#: Largest candidate set a range may expand to (keeps a typo such as step = 0.0001 from exhausting memory).
MAX_CANDIDATES = 100_000
#: Latest candidate treatment time [h after calibration] (a Y-90 vial has decayed 10⁻⁴⁷ by then).
MAX_HOURS = 10_000.0


class _Reader:
    def __init__(self, file: str):
        self.file = file

    def fail(self, field: str, message: str) -> CaseError:
        return CaseError(self.file, field, message)

    def table(self, raw: Any, field: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(raw, dict):
            raise self.fail(field, f"expected a table, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                prefix = f"{field}." if field else ""
                raise self.fail(f"{prefix}{key}", "unknown key (allowed: " + ", ".join(sorted(allowed)) + ")")
        for key in sorted(required):
            if key not in raw:
                raise self.fail(f"{field}.{key}" if field else key, "missing")
        return raw

    def number(self, raw: Any, field: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.fail(field, f"expected a number, got {type(raw).__name__}")
        v = float(raw)
        if not math.isfinite(v):
            raise self.fail(field, "must be finite")
        return v

    def string(self, raw: Any, field: str) -> str:
        if not isinstance(raw, str):
            raise self.fail(field, f"expected a string, got {type(raw).__name__}")
        return raw

    def spec(self, raw: Any, field: str, support: str) -> Spec:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a library's numerical warning is this field's error, never noise
                spec = parse_spec(raw)
                check_samplable(spec)
                check_support(spec, support)
        except RuntimeWarning as e:
            raise self.fail(field, f"cannot be evaluated numerically ({e}): check its values") from None
        except SpecError as e:
            msg = str(e)
            sub, sep, rest = msg.partition(": ")
            if sep and re.fullmatch(r"[a-z_]+", sub):
                raise self.fail(f"{field}.{sub}", rest) from None
            raise self.fail(field, msg) from None
        return spec

    def datetime(self, raw: Any, field: str) -> _dt.datetime:
        if isinstance(raw, str):
            try:
                raw = _dt.datetime.fromisoformat(raw)
            except ValueError:
                raise self.fail(field, f"not an ISO 8601 datetime: {raw!r}") from None
        if isinstance(raw, _dt.date) and not isinstance(raw, _dt.datetime):
            raise self.fail(field, "a date alone is not enough: give a datetime with a UTC offset")
        if not isinstance(raw, _dt.datetime):
            raise self.fail(field, f"expected a datetime, got {type(raw).__name__}")
        if raw.tzinfo is None or raw.utcoffset() is None:
            raise self.fail(field, "datetime has no UTC offset (write e.g. 2026-12-06T12:00:00-05:00)")
        return raw

    def candidates(self, raw: Any, field: str, *, positive: bool) -> Candidates:
        if isinstance(raw, list):
            if not raw:
                raise self.fail(field, "empty list")
            vals = [self.number(v, f"{field}[{i}]") for i, v in enumerate(raw)]
            for i, v in enumerate(vals):
                if (positive and v <= 0) or v < 0:
                    raise self.fail(f"{field}[{i}]", "must be > 0" if positive else "must be ≥ 0")
            if len(set(vals)) != len(vals):
                raise self.fail(field, "duplicate values")
            return Candidates(tuple(sorted(vals)), "list")
        if isinstance(raw, dict):
            self.table(raw, field, {"min", "max", "step"}, {"min", "max", "step"})
            lo, hi, step = (self.number(raw[k], f"{field}.{k}") for k in ("min", "max", "step"))
            if (positive and lo <= 0) or lo < 0:
                raise self.fail(f"{field}.min", "must be > 0" if positive else "must be ≥ 0")
            if hi < lo:
                raise self.fail(f"{field}.max", "must be ≥ min")
            if step <= 0:
                raise self.fail(f"{field}.step", "must be > 0")
            n = math.floor((hi - lo) / step + 1e-9) + 1
            if n > MAX_CANDIDATES:
                raise self.fail(f"{field}.step", f"range expands to {n} values (at most {MAX_CANDIDATES})")
            vals = np.round(lo + step * np.arange(n), 10)
            return Candidates(tuple(float(v) for v in vals), "range")
        raise self.fail(field, "expected a list of numbers or a { min, max, step } table")


#: Largest case file read (bytes): a case is a few kB; anything larger is not a case (or an endless stream).
MAX_CASE_BYTES = 1 << 20


def parse_case(source: str | Mapping[str, Any], file: str | None = None) -> Case:
    """Parse and validate a case from TOML text or from a mapping of the same structure.

    Args:
        source: the TOML text of a case file, or a mapping (nested dicts and lists, numbers, strings,
            ``datetime`` objects with a UTC offset) with the keys of a case file.
        file: the name used in error messages and stored with the results (default ``"<case>"``).

    The case is checked on its own: its scenario must exist, but its rules are judged only where a
    judgement is made (:func:`y90opt.outcomes.active_rules`). A mapping is stored as the TOML text it writes
    (the text is what every result hashes and keeps). Raises :class:`CaseError` (one line, file and field).
    """
    file = "<case>" if file is None else str(file)
    try:
        return _parse_case(source, file)
    except RecursionError:
        raise CaseError(file, "", "the file's structure is nested too deeply to be a case") from None


def _parse_case(source: str | Mapping[str, Any], file: str) -> Case:
    r = _Reader(file)
    if isinstance(source, str) and len(source) > MAX_CASE_BYTES:
        raise CaseError(file, "", f"larger than {MAX_CASE_BYTES // 1024} kB: not a case file")
    if isinstance(source, Mapping):
        doc, text = _document_from_mapping(source, file)
    elif isinstance(source, str):
        text = source
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CaseError(file, "", f"not valid TOML: {e}") from None
    else:
        raise CaseError(file, "", f"expected TOML text or a mapping, got {type(source).__name__}")
    multi = "injections" in doc or "sessions" in doc
    r.table(doc, "", _TOP, {"name", "scenario", "lung"} if multi else {"name", "scenario", "liver", "lung", "vials"})

    name = r.string(doc["name"], "name")
    scenario = r.string(doc["scenario"], "scenario")
    _check_scenario_id(r, scenario)

    conv_raw = r.table(doc.get("conventions", {}), "conventions", set(physics.CONVENTION_FIELDS) | {"custom"})
    custom = conv_raw.get("custom", False)
    if not isinstance(custom, bool):
        raise r.fail("conventions.custom", "expected true or false")
    conv_kwargs = {}
    outside: list[str] = []
    for k, v in conv_raw.items():
        if k == "custom":
            continue
        x = r.number(v, f"conventions.{k}")
        lo, hi = physics.CONVENTION_HARD_RANGES[k]
        if not lo <= x <= hi:
            raise r.fail(f"conventions.{k}", f"{x:g} is outside [{lo:g}, {hi:g}]")
        lo, hi = physics.CONVENTION_RANGES[k]
        if not lo <= x <= hi:
            if not custom:
                raise r.fail(f"conventions.{k}", f"{x:g} is outside the cited range [{lo:g}, {hi:g}]; set "
                             "custom = true in [conventions] to use it anyway (every output then flags it)")
            outside.append(f"{k} = {x:g} (cited range {lo:g}-{hi:g})")
        conv_kwargs[k] = x
    conventions = Conventions(**conv_kwargs)

    liver = r.table(doc.get("liver", {}), "liver", _LIVER, set() if multi else {"perfused_volume_ml"})
    if multi:
        if "perfused_volume_ml" in liver:
            raise r.fail("liver.perfused_volume_ml", "ambiguous with [[injections]]: give each injection's "
                         "perfused_volume_ml instead")
        perfused = None
    else:
        perfused = r.spec(liver["perfused_volume_ml"], "liver.perfused_volume_ml", "positive")
    whole = None
    if "whole_liver_volume_ml" in liver:
        whole = r.spec(liver["whole_liver_volume_ml"], "liver.whole_liver_volume_ml", "positive")

    tumors_raw = doc.get("tumors", [])
    if not isinstance(tumors_raw, list):
        raise r.fail("tumors", "expected an array of tables ([[tumors]])")
    if len(tumors_raw) > MAX_TUMORS:
        raise r.fail("tumors", f"{len(tumors_raw)} tumours (at most {MAX_TUMORS})")
    tumors: list[Tumor] = []
    seen: set[str] = set()
    for i, traw in enumerate(tumors_raw):
        f = f"tumors[{i}]"
        r.table(traw, f, _TUMOR if multi else _TUMOR - {"injection"}, {"name", "volume_ml", "tn_ratio"})
        tname = r.string(traw["name"], f"{f}.name")
        if not _NAME_RE.match(tname):
            raise r.fail(f"{f}.name", f"{tname!r}: use letters, digits, '-' and '_' only")
        if tname in seen:
            raise r.fail(f"{f}.name", f"duplicate tumour name {tname!r}")
        seen.add(tname)
        treated = traw.get("treated", True)
        if not isinstance(treated, bool):
            raise r.fail(f"{f}.treated", "expected true or false")
        where = None
        if multi:
            if "injection" in traw:
                where = r.string(traw["injection"], f"{f}.injection")
                if not treated:
                    raise r.fail(f"{f}.injection", "a tumour with treated = false lies in no injection's territory")
            elif treated:
                raise r.fail(f"{f}.injection", "missing: name the injection whose territory holds the tumour "
                             "(or say treated = false for a tumour outside every territory)")
        d70 = None
        if "d70_ratio" in traw:  # a number, or an uncertainty form (voxel --uncertainty writes one)
            d70 = r.spec(traw["d70_ratio"], f"{f}.d70_ratio", "positive")
            if not 0 < d70.nominal < math.inf:
                raise r.fail(f"{f}.d70_ratio", "must be > 0 (a tumour's D70 over the compartment mean of its counts)")
        by_share = None
        if "d70_ratio_by_share" in traw:
            by_share = _share_curve(r, traw["d70_ratio_by_share"], f"{f}.d70_ratio_by_share", multi, d70)
        tumors.append(
            Tumor(
                name=tname,
                volume_ml=r.spec(traw["volume_ml"], f"{f}.volume_ml", "positive"),
                tn_ratio=r.spec(traw["tn_ratio"], f"{f}.tn_ratio", "positive"),
                treated=treated,
                injection=where,
                d70_ratio=d70,
                d70_by_share=by_share,
            )
        )

    lung = r.table(doc["lung"], "lung", _LUNG, set() if multi else {"shunt_fraction"})
    lsf = r.spec(lung["shunt_fraction"], "lung.shunt_fraction", "fraction") if "shunt_fraction" in lung else None
    lung_mass = r.spec(lung.get("mass_kg", physics.LUNG_MASS_KG), "lung.mass_kg", "positive")
    prior = r.number(lung.get("prior_dose_gy", 0.0), "lung.prior_dose_gy")
    if not 0 <= prior <= MAX_PRIOR_LUNG_GY:
        raise r.fail("lung.prior_dose_gy", f"must be in [0, {MAX_PRIOR_LUNG_GY:g}] Gy")

    delivery = r.table(doc.get("delivery", {}), "delivery", _DELIVERY)
    residual = r.spec(delivery.get("residual_fraction", 0.0), "delivery.residual_fraction", "fraction")
    activity_factor = r.spec(delivery.get("activity_factor", 1.0), "delivery.activity_factor", "positive")

    vials = r.table(doc.get("vials", {}), "vials", _VIALS, set() if multi else {"calibration"})
    if multi:
        for key in ("calibration", "delivered"):
            if key in vials:
                raise r.fail(f"vials.{key}", "ambiguous with [[injections]]: give it per session in [[sessions]]")
        calibration = None
    else:
        calibration = r.datetime(vials["calibration"], "vials.calibration")
    if "activities_gbq" in vials and "catalogue" in vials:
        raise r.fail("vials.catalogue", "give either activities_gbq or catalogue, not both")
    if "activities_gbq" in vials:
        vial_set = r.candidates(vials["activities_gbq"], "vials.activities_gbq", positive=True)
    elif "catalogue" in vials:
        name = r.string(vials["catalogue"], "vials.catalogue")
        if name not in CATALOGUES:
            raise r.fail("vials.catalogue", f"expected one of {', '.join(CATALOGUES)}, got {name!r}")
        vial_set = (Candidates(physics.STANDARD_VIALS_GBQ, "default") if name == "standard"
                    else Candidates(tuple(float(x) for x in np.arange(3.0, 20.0 + 1e-9, 0.5)), "custom"))
    else:
        vial_set = Candidates(physics.STANDARD_VIALS_GBQ, "default")
    if max(vial_set.values) > physics.MAX_VIAL_GBQ:
        raise r.fail("vials.activities_gbq", f"{max(vial_set.values):g} GBq is beyond any vial (at most "
                     f"{physics.MAX_VIAL_GBQ:g} GBq): check the units")
    delivered = None
    if "delivered" in vials:
        delivered = r.datetime(vials["delivered"], "vials.delivered")
    usable = r.number(vials.get("usable_life_h", physics.USABLE_LIFE_H), "vials.usable_life_h")
    if not 0 < usable <= MAX_HOURS:
        raise r.fail("vials.usable_life_h", f"must be in (0, {MAX_HOURS:g}] h")

    if multi:
        plan_raw = doc.get("plan", {})
        for key in ("vial_gbq", "treatment", "hours_after_calibration"):
            if isinstance(plan_raw, dict) and key in plan_raw:
                raise r.fail(f"plan.{key}", "ambiguous with [[injections]]: give "
                             + ("each injection's vial_gbq" if key == "vial_gbq" else f"each session's {key}"))
        sessions, injections = _parse_treatment(r, doc, tumors, lsf, vial_set, usable)
        calibration = min(x.calibration for x in sessions)
    else:
        sessions, injections = (), ()
        if lsf is None:  # pragma: no cover - required above
            raise r.fail("lung.shunt_fraction", "missing")
    plan = _parse_plan(r, doc.get("plan", {}), calibration, [t.name for t in tumors], {t.name for t in tumors if t.treated})
    if multi:
        _check_treatment_geometry(r, injections, tumors, whole)
    elif plan.treatment is not None and physics.hours_between(calibration, plan.treatment) > usable:
        h = physics.hours_between(calibration, plan.treatment)
        raise r.fail("plan.treatment", f"{h:.0f} h after the vial's calibration, beyond its usable life "
                     f"({usable:g} h; [vials] usable_life_h sets another)")
    if plan.hours_after_calibration is not None and max(plan.hours_after_calibration.values) > usable:
        raise r.fail("plan.hours_after_calibration", f"times must be within the vial's usable life ({usable:g} h "
                     "after calibration; [vials] usable_life_h sets another)")

    # geometry: nominal tumours must fit inside the perfused territory, the whole liver must contain it
    if not multi:
        _check_single_geometry(r, perfused, tumors, whole)

    specs = {
        "liver.perfused_volume_ml": perfused,
        "liver.whole_liver_volume_ml": whole,
        "lung.shunt_fraction": lsf,
        "lung.mass_kg": lung_mass,
        "delivery.residual_fraction": residual,
        "delivery.activity_factor": activity_factor,
        **{f"tumors.{t.name}.volume_ml": t.volume_ml for t in tumors},
        **{f"tumors.{t.name}.tn_ratio": t.tn_ratio for t in tumors},
    }
    for j in injections:
        specs[f"injections.{j.name}.perfused_volume_ml"] = j.perfused_volume_ml
        specs[f"injections.{j.name}.shunt_fraction"] = j.shunt_fraction
        specs[f"injections.{j.name}.residual_fraction"] = j.residual_fraction
        for tname, spec in j.tn_ratios:
            specs[f"injections.{j.name}.tn_ratios.{tname}"] = spec
    if multi:
        specs["liver.perfused_volume_ml"] = None
        specs["delivery.activity_factor"] = None  # drawn per vial
        for j in injections:
            specs[f"injections.{j.name}.activity_factor"] = activity_factor
        if all(j.shunt_fraction is not None for j in injections):
            specs["lung.shunt_fraction"] = None
        if all(j.residual_fraction is not None for j in injections):
            specs["delivery.residual_fraction"] = None
    correlations = _parse_correlations(r, doc.get("correlations", []), tumors, whole is not None, specs)
    rules = doc.get("rules", {})
    if not isinstance(rules, dict):
        raise r.fail("rules", "expected a table")
    _check_images(r, doc.get("images"))

    case = Case(
        path=file,
        name=name,
        scenario=scenario,
        conventions=conventions,
        perfused_volume_ml=perfused,
        whole_liver_volume_ml=whole,
        tumors=tuple(tumors),
        shunt_fraction=lsf,
        lung_mass_kg=lung_mass,
        prior_lung_dose_gy=prior,
        residual_fraction=residual,
        activity_factor=activity_factor,
        calibration=calibration,
        vials_gbq=vial_set,
        plan=plan,
        delivered=delivered,
        correlations=correlations,
        rules=rules,
        text=text,
        custom_conventions=tuple(outside),
        usable_life_h=usable,
        injections=injections,
        sessions=sessions,
    )
    return case


def _check_single_geometry(r: _Reader, perfused: Spec, tumors: list[Tumor], whole: Spec | None) -> None:
    v_p = perfused.nominal
    v_t = sum(t.volume_ml.nominal for t in tumors if t.treated)
    if v_t >= v_p:
        raise r.fail(
            "tumors", f"treated tumour volume {v_t:g} mL does not fit in the perfused volume {v_p:g} mL"
        )
    if whole is not None:
        if whole.nominal < v_p:
            raise r.fail(
                "liver.whole_liver_volume_ml",
                f"{whole.nominal:g} mL is smaller than the perfused territory ({v_p:g} mL)",
            )
        v_all = v_p + sum(t.volume_ml.nominal for t in tumors if not t.treated)
        if v_all >= whole.nominal + 1e-9 and any(not t.treated for t in tumors):
            raise r.fail(
                "liver.whole_liver_volume_ml",
                f"{whole.nominal:g} mL cannot hold the perfused territory and the untreated tumours ({v_all:g} mL)",
            )



def _parse_treatment(r: _Reader, doc: dict, tumors: list[Tumor], lsf: Spec | None, vial_set: Candidates,
                     usable: float) -> tuple[tuple[Session, ...], tuple[Injection, ...]]:
    """``[[sessions]]`` and ``[[injections]]``: names, sessions, nesting (``within``), per-injection values."""
    raw_s = doc.get("sessions")
    if not isinstance(raw_s, list) or not raw_s:
        raise r.fail("sessions", "missing or empty: a case with [[injections]] lists its sessions in [[sessions]]")
    raw_j = doc.get("injections")
    if not isinstance(raw_j, list) or not raw_j:
        raise r.fail("injections", "missing or empty: a case with [[sessions]] lists its injections in [[injections]]")
    if len(raw_j) > MAX_INJECTIONS:
        raise r.fail("injections", f"{len(raw_j)} injections (at most {MAX_INJECTIONS})")
    sessions: list[Session] = []
    for i, x in enumerate(raw_s):
        f = f"sessions[{i}]"
        r.table(x, f, _SESSION, {"name", "calibration"})
        name = _name(r, x["name"], f"{f}.name", {y.name for y in sessions}, "session")
        cal = r.datetime(x["calibration"], f"{f}.calibration")
        treat = None
        if "treatment" in x:
            treat = r.datetime(x["treatment"], f"{f}.treatment")
            if treat < cal:
                raise r.fail(f"{f}.treatment", "treatment is before this session's calibration")
            if physics.hours_between(cal, treat) > usable:
                raise r.fail(f"{f}.treatment", f"{physics.hours_between(cal, treat):.0f} h after the calibration, "
                             f"beyond the vial's usable life ({usable:g} h; [vials] usable_life_h sets another)")
        hours = None
        if "hours_after_calibration" in x:
            hours = r.candidates(x["hours_after_calibration"], f"{f}.hours_after_calibration", positive=False)
            if max(hours.values) > usable:
                raise r.fail(f"{f}.hours_after_calibration", f"times must be within the vial's usable life ({usable:g} h)")
        delivered = x.get("delivered", False)
        if not isinstance(delivered, bool):
            raise r.fail(f"{f}.delivered", "expected true or false")
        if delivered and treat is None:
            raise r.fail(f"{f}.treatment", "missing: a delivered session gives the time it took place")
        if delivered and hours is not None:
            raise r.fail(f"{f}.hours_after_calibration", "a delivered session has no candidate times")
        sessions.append(Session(name, cal, treat, hours, delivered))
    session_names = [x.name for x in sessions]
    tumor_names = {t.name for t in tumors}
    injections: list[Injection] = []
    roles: dict[str, str] = {}
    for i, x in enumerate(raw_j):
        f = f"injections[{i}]"
        r.table(x, f, _INJECTION, {"name", "session", "perfused_volume_ml"})
        name = _name(r, x["name"], f"{f}.name", {y.name for y in injections}, "injection")
        sess = r.string(x["session"], f"{f}.session")
        if sess not in session_names:
            raise r.fail(f"{f}.session", f"unknown session {sess!r} (sessions: {', '.join(session_names)})")
        role = None
        if "role" in x:
            role = r.string(x["role"], f"{f}.role")
            if not _NAME_RE.match(role):
                raise r.fail(f"{f}.role", f"{role!r}: use letters, digits, '-' and '_' only")
            if role in roles:
                raise r.fail(f"{f}.role", f"role {role!r} is already used by injection {roles[role]!r}")
            roles[role] = name
        within = r.string(x["within"], f"{f}.within") if "within" in x else None
        vial = None
        if "vial_gbq" in x:
            vial = r.number(x["vial_gbq"], f"{f}.vial_gbq")
            if not 0 < vial <= physics.MAX_VIAL_GBQ:
                raise r.fail(f"{f}.vial_gbq", f"must be in (0, {physics.MAX_VIAL_GBQ:g}] GBq")
        shunt = r.spec(x["shunt_fraction"], f"{f}.shunt_fraction", "fraction") if "shunt_fraction" in x else None
        if shunt is None and lsf is None:
            raise r.fail("lung.shunt_fraction", f"missing: injection {name!r} gives no shunt_fraction of its own")
        residual = (r.spec(x["residual_fraction"], f"{f}.residual_fraction", "fraction")
                    if "residual_fraction" in x else None)
        tn = x.get("tn_ratios", {})
        if not isinstance(tn, dict):
            raise r.fail(f"{f}.tn_ratios", "expected a table of tumour name = T:N")
        tn_ratios = []
        for tname, v in tn.items():
            if tname not in tumor_names:
                raise r.fail(f"{f}.tn_ratios.{tname}", f"no tumour named {tname!r}")
            tn_ratios.append((tname, r.spec(v, f"{f}.tn_ratios.{tname}", "positive")))
        cal = r.datetime(x["calibration"], f"{f}.calibration") if "calibration" in x else None
        acts = None
        if "activities_gbq" in x:
            acts = r.candidates(x["activities_gbq"], f"{f}.activities_gbq", positive=True)
            if max(acts.values) > physics.MAX_VIAL_GBQ:
                raise r.fail(f"{f}.activities_gbq", f"{max(acts.values):g} GBq is beyond any vial")
        delivered = sessions[session_names.index(sess)].delivered
        if delivered and vial is None:
            raise r.fail(f"{f}.vial_gbq", f"missing: session {sess!r} is delivered, give the vial it received")
        injections.append(Injection(name, sess, role, r.spec(x["perfused_volume_ml"], f"{f}.perfused_volume_ml",
                                    "positive"), within, vial, shunt, residual, tuple(tn_ratios), cal, acts))
    names = [j.name for j in injections]
    for role, owner in roles.items():
        if role in names and role != owner:
            raise r.fail(f"injections[{names.index(owner)}].role",
                         f"role {role!r} is the name of another injection: the rules could not tell them apart")
    for i, j in enumerate(injections):
        if j.within is not None and j.within not in names:
            raise r.fail(f"injections[{i}].within", f"unknown injection {j.within!r} (injections: {', '.join(names)})")
        # a cycle: following `within` from j comes back to j
        seen, k = {j.name}, j.within
        while k is not None:
            if k in seen:
                raise r.fail(f"injections[{i}].within", f"the territories form a cycle through {j.name!r}")
            seen.add(k)
            k = injections[names.index(k)].within
    for i, sess in enumerate(sessions):
        if not any(j.session == sess.name for j in injections):
            raise r.fail(f"sessions[{i}]", f"session {sess.name!r} has no injection")
        if sess.treatment is not None:
            for j in injections:
                if j.session == sess.name and j.calibration is not None and sess.treatment < j.calibration:
                    raise r.fail(f"injections[{names.index(j.name)}].calibration",
                                 f"after session {sess.name!r}'s treatment")
    for k, t in enumerate(tumors):
        if t.injection is not None and t.injection not in names:
            raise r.fail(f"tumors[{k}].injection", f"unknown injection {t.injection!r} (injections: {', '.join(names)})")
    by_name = {j.name: j for j in injections}
    region_of = {t.name: t.injection for t in tumors}

    def inside(region: str | None, j: str) -> bool:
        while region is not None:
            if region == j:
                return True
            region = by_name[region].within
        return False

    for k, t in enumerate(tumors):
        curve = f"tumors[{k}].d70_ratio_by_share"
        if t.d70_ratio is None or not t.treated:
            if t.d70_by_share is not None:
                raise r.fail(curve, "the tumour is not treated (treated = false): no injection reaches it")
            continue
        reach = [t.injection]
        while by_name[reach[-1]].within is not None:
            reach.append(by_name[reach[-1]].within)
        if len(reach) > 2:
            raise r.fail(f"tumors[{k}].d70_ratio", f"injections {', '.join(reach)} all reach this tumour: a D70 of "
                         "three or more injections is not available")
        if len(reach) == 2 and t.d70_by_share is None:
            raise r.fail(curve, f"missing: injections {reach[0]!r} and {reach[1]!r} both reach this tumour, so its "
                         "D70 is not one ratio times its mean (y90opt voxel --case-out writes the curve)")
        if len(reach) == 1 and t.d70_by_share is not None:
            raise r.fail(curve, "one injection reaches this tumour: its D70 is d70_ratio times its mean at any "
                         "activity (give no curve)")
        if t.d70_by_share is not None:
            _check_share_curve(r, curve, t.d70_by_share, t.d70_ratio.nominal, f"tumors[{k}].d70_ratio")
    for i, j in enumerate(injections):
        for tname, _ in j.tn_ratios:
            if not inside(region_of[tname], j.name):
                raise r.fail(f"injections[{i}].tn_ratios.{tname}", f"tumour {tname!r} does not lie in the territory "
                             f"of injection {j.name!r}: this injection sends it no activity")
        sess = sessions[session_names.index(j.session)]
        if j.calibration is not None:
            if sess.treatment is not None and physics.hours_between(j.calibration, sess.treatment) > usable:
                raise r.fail(f"injections[{i}].calibration", f"{physics.hours_between(j.calibration, sess.treatment):.0f} h "
                             f"before session {sess.name!r}'s treatment, beyond the vial's usable life ({usable:g} h)")
    return tuple(sessions), tuple(injections)


def _share_curve(r: _Reader, raw: Any, f: str, multi: bool, d70: Spec | None):
    """``{share = [...], ratio = [...]}``: a tumour's D70 over its mean dose against the share of that mean its own
    injection gives (the rest from the injection whose territory holds its own), written by ``y90opt voxel``."""
    if not multi:
        raise r.fail(f, "only with [[injections]] (with one injection the ratio does not depend on the activity)")
    if d70 is None:
        raise r.fail(f, "needs the tumour's d70_ratio (its uncertainty form scales the curve)")
    t = r.table(raw, f, {"share", "ratio"}, {"share", "ratio"})
    share, ratio = t["share"], t["ratio"]
    for key, v in (("share", share), ("ratio", ratio)):
        if not isinstance(v, list) or not 2 <= len(v) <= MAX_SHARE_NODES:
            raise r.fail(f"{f}.{key}", f"expected a list of 2 to {MAX_SHARE_NODES} numbers")
    if len(share) != len(ratio):
        raise r.fail(f"{f}.ratio", f"{len(ratio)} values for {len(share)} shares")
    xs = [r.number(v, f"{f}.share[{i}]") for i, v in enumerate(share)]
    ys = [r.number(v, f"{f}.ratio[{i}]") for i, v in enumerate(ratio)]
    if xs[0] != 0.0 or xs[-1] != 1.0 or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
        raise r.fail(f"{f}.share", "must rise strictly from 0 to 1")
    if any(y < 0 for y in ys):
        raise r.fail(f"{f}.ratio", "every ratio must be >= 0 (a tumour's D70 over its mean dose)")
    return tuple(xs), tuple(ys)


def _check_share_curve(r: _Reader, f: str, curve, nominal: float, ratio_field: str) -> None:
    """A D70 curve must give a D70 that rises with either vial, as a D70 of non-negative doses does: with
    D = m · h(t) = b · h(t) / (1 − t) = a · h(t) / t (a, b the own and the outer vial's parts of the mean m),
    h / (1 − t) must not fall and h / t must not rise from node to node (the joint search relies on it). The
    ratio's value is the curve's at the decision it was measured for: it must lie in the curve's range (only
    its uncertainty form acts: the sample's factor on the curve is the drawn ratio over it)."""
    xs, ys = curve
    tol = 1e-5
    for i in range(len(xs) - 1):
        if xs[i + 1] < 1.0 and ys[i + 1] / (1.0 - xs[i + 1]) < ys[i] / (1.0 - xs[i]) * (1 - tol) - 1e-12:
            raise r.fail(f"{f}.ratio", f"ratio / (1 - share) falls between shares {xs[i]:g} and {xs[i + 1]:g}: "
                         "the D70 would fall as the outer vial's activity rises")
        if xs[i] > 0.0 and ys[i + 1] / xs[i + 1] > ys[i] / xs[i] * (1 + tol) + 1e-12:
            raise r.fail(f"{f}.ratio", f"ratio / share rises between shares {xs[i]:g} and {xs[i + 1]:g}: the D70 "
                         "would fall as the own vial's activity rises")
    if not min(ys) - 1e-6 <= nominal <= max(ys) + 1e-6:
        raise r.fail(ratio_field, f"{nominal:g} lies outside its d70_ratio_by_share curve's range "
                     f"[{min(ys):g}, {max(ys):g}]")


_IMAGES = {"ct", "spect", "masks", "spect_by_injection", "planar_anterior", "planar_posterior", "lung_base_margin_mm",
           "spect_fwhm_mm"}
_MASKS = {"liver", "lungs", "perfused", "tumors", "injections", "planar_liver", "planar_lungs"}


def _check_images(r: _Reader, raw: Any) -> None:
    """``[images]`` (read by ``y90opt measure``): image paths as strings, relative to the case file."""
    if raw is None:
        return
    r.table(raw, "images", _IMAGES)
    for key in ("ct", "spect", "planar_anterior", "planar_posterior"):
        if key in raw:
            r.string(raw[key], f"images.{key}")
    if "lung_base_margin_mm" in raw:
        margin = r.number(raw["lung_base_margin_mm"], "images.lung_base_margin_mm")
        if not 0.0 <= margin <= 100.0:
            raise r.fail("images.lung_base_margin_mm", f"{margin:g} mm: expected 0 to 100 mm")
    if "spect_fwhm_mm" in raw:
        fwhm = r.number(raw["spect_fwhm_mm"], "images.spect_fwhm_mm")
        if not 0.0 < fwhm <= 40.0:
            raise r.fail("images.spect_fwhm_mm", f"{fwhm:g} mm: expected a SPECT resolution above 0 and at most 40 mm")
    masks = r.table(raw.get("masks", {}), "images.masks", _MASKS)

    def mask(v: Any, field: str) -> None:  # a path, or { file = "…", label = <integer or name> }
        if isinstance(v, dict):
            r.table(v, field, {"file", "label"}, {"file"})
            r.string(v["file"], f"{field}.file")
            label = v.get("label")
            if label is not None and (isinstance(label, bool) or not isinstance(label, int | str)):
                raise r.fail(f"{field}.label", f"expected an integer label or a name, got {type(label).__name__}")
        else:
            r.string(v, field)

    for key in ("liver", "lungs", "perfused"):
        if key in masks:
            mask(masks[key], f"images.masks.{key}")
    for key in ("planar_liver", "planar_lungs"):
        if key in masks:
            r.string(masks[key], f"images.masks.{key}")
    for group in ("tumors", "injections"):
        for name, v in r.table(masks.get(group, {}), f"images.masks.{group}", set(masks.get(group, {}))).items():
            mask(v, f"images.masks.{group}.{name}")
    for name, v in r.table(raw.get("spect_by_injection", {}), "images.spect_by_injection",
                           set(raw.get("spect_by_injection", {}))).items():
        r.string(v, f"images.spect_by_injection.{name}")


def _name(r: _Reader, raw: Any, field: str, taken: set[str], what: str) -> str:
    name = r.string(raw, field)
    if not _NAME_RE.match(name):
        raise r.fail(field, f"{name!r}: use letters, digits, '-' and '_' only")
    if name in taken:
        raise r.fail(field, f"duplicate {what} name {name!r}")
    return name


def territory_children(injections) -> dict[str, list[str]]:
    """Injection name → the injections whose territory lies directly inside its own."""
    out: dict[str, list[str]] = {j.name: [] for j in injections}
    for j in injections:
        if j.within is not None:
            out[j.within].append(j.name)
    return out


def _check_treatment_geometry(r: _Reader, injections, tumors: list[Tumor], whole: Spec | None) -> None:
    """Nominal geometry: each region (a territory less those nested in it) holds its tumours with normal
    tissue left over; the whole liver holds the outermost territories and the untreated tumours."""
    names = [j.name for j in injections]
    children = territory_children(injections)
    vol = {j.name: j.perfused_volume_ml.nominal for j in injections}
    for i, j in enumerate(injections):
        inner = sum(vol[c] for c in children[j.name])
        in_region = sum(t.volume_ml.nominal for t in tumors if t.injection == j.name)
        if inner + in_region >= vol[j.name]:
            what = " and ".join(x for x, v in (("the territories nested in it", inner), ("its tumours", in_region)) if v)
            raise r.fail(f"injections[{i}].perfused_volume_ml",
                         f"{vol[j.name]:g} mL does not hold {what} ({inner + in_region:g} mL)")
    if whole is not None:
        outer = sum(vol[j.name] for j in injections if j.within is None)
        untreated = sum(t.volume_ml.nominal for t in tumors if not t.treated)
        if outer + untreated > whole.nominal + 1e-9:
            raise r.fail("liver.whole_liver_volume_ml",
                         f"{whole.nominal:g} mL cannot hold the outermost territories"
                         + (" and the untreated tumours" if untreated else "") + f" ({outer + untreated:g} mL)")
    del names


def _document_from_mapping(source: Mapping[str, Any], file: str) -> tuple[dict, str]:
    """The mapping as TOML text, and that text read back: what a file would have given, so that a case built
    in a script and the same case read from a file are one case (same checks, same hash)."""
    import tomli_w

    try:
        text = tomli_w.dumps(_plain(source))
    except (TypeError, ValueError) as e:
        raise CaseError(file, "", f"the mapping cannot be written as TOML: {e}") from None
    return tomllib.loads(text), text


def _plain(x: Any) -> Any:
    """Mappings as dicts and tuples as lists, recursively (what a TOML writer takes)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _check_scenario_id(r: _Reader, scenario: str) -> None:
    ids = scenarios.scenario_ids()
    if scenario not in ids:
        raise r.fail("scenario", f"unknown scenario {scenario!r} (known: {', '.join(ids)})")


def _parse_plan(r: _Reader, raw: Any, calibration: _dt.datetime, tumor_names: list[str], treated: set[str] | None = None) -> Plan:
    p = r.table(raw, "plan", _PLAN)
    vial = None
    if "vial_gbq" in p:
        vial = r.number(p["vial_gbq"], "plan.vial_gbq")
        if vial <= 0:
            raise r.fail("plan.vial_gbq", "must be > 0")
        if vial > physics.MAX_VIAL_GBQ:
            raise r.fail("plan.vial_gbq", f"{vial:g} GBq is beyond any vial (at most {physics.MAX_VIAL_GBQ:g} GBq): "
                         "check the units")
    treatment = None
    if "treatment" in p:
        treatment = r.datetime(p["treatment"], "plan.treatment")
        if treatment < calibration:
            raise r.fail("plan.treatment", "treatment is before the vial's calibration")
    hours = None
    if "hours_after_calibration" in p:
        hours = r.candidates(p["hours_after_calibration"], "plan.hours_after_calibration", positive=False)
        if max(hours.values) > MAX_HOURS:
            raise r.fail("plan.hours_after_calibration", f"times must be at most {MAX_HOURS:g} h after calibration")
    risk = r.number(p.get("risk", 0.05), "plan.risk")
    if not 0 < risk < 1:
        raise r.fail("plan.risk", "must be in (0, 1)")
    tz = None
    if "site_timezone" in p:
        tz = r.string(p["site_timezone"], "plan.site_timezone")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise r.fail("plan.site_timezone", f"unknown IANA time zone {tz!r}") from None
    proc = None
    if "procedure_time" in p:
        s = r.string(p["procedure_time"], "plan.procedure_time")
        try:
            proc = _dt.time.fromisoformat(s)
        except ValueError:
            raise r.fail("plan.procedure_time", f"expected a clock time like \"10:00\", got {s!r}") from None
        if proc.tzinfo is not None:
            raise r.fail("plan.procedure_time", "give a local clock time without an offset (the zone is plan.site_timezone)")
    success = r.string(p.get("success", "all-tumors"), "plan.success")
    if success not in _SUCCESS:
        raise r.fail("plan.success", f"expected one of {', '.join(_SUCCESS)}")
    index = None
    if "index_tumor" in p:
        index = r.string(p["index_tumor"], "plan.index_tumor")
        if index not in tumor_names:
            raise r.fail("plan.index_tumor", f"no tumour named {index!r}")
        if treated is not None and index not in treated:
            raise r.fail("plan.index_tumor", f"tumour {index!r} is not treated (treated = false): it gets no activity")
    if success == "index-tumor" and index is None:
        raise r.fail("plan.index_tumor", "missing (required when success = \"index-tumor\")")
    tol = r.number(p.get("tie_tolerance", 0.005), "plan.tie_tolerance")
    if not 0 <= tol < 1:
        raise r.fail("plan.tie_tolerance", "must be in [0, 1)")
    acceptable = r.number(p.get("acceptable_success", 0.5), "plan.acceptable_success")
    if not 0 < acceptable <= 1:
        raise r.fail("plan.acceptable_success", "must be in (0, 1]")
    days = _weekdays(r, p.get("treatment_days", list(WEEKDAYS[:5])), "plan.treatment_days")
    clinic = None
    if "clinic_hours" in p:
        raw_h = p["clinic_hours"]
        if not (isinstance(raw_h, list) and len(raw_h) == 2):
            raise r.fail("plan.clinic_hours", 'expected two local clock times, e.g. ["08:00", "17:00"]')
        clinic = tuple(_clock(r, x, f"plan.clinic_hours[{k}]") for k, x in enumerate(raw_h))
        if clinic[1] <= clinic[0]:
            raise r.fail("plan.clinic_hours", "the end must be after the start")
    holidays = _dates(r, p.get("holidays", []), "plan.holidays")
    lead = r.number(p.get("min_lead_time_h", 0.0), "plan.min_lead_time_h")
    if not 0 <= lead <= MAX_HOURS:
        raise r.fail("plan.min_lead_time_h", f"must be in [0, {MAX_HOURS:g}] h")
    return Plan(vial, treatment, hours, risk, tz, proc, success, index, tol, acceptable, days, clinic, holidays, lead)


def _weekdays(r: _Reader, raw: Any, field: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        raise r.fail(field, f"expected a non-empty list of weekday names ({', '.join(WEEKDAYS)})")
    out = []
    for k, x in enumerate(raw):
        name = r.string(x, f"{field}[{k}]")
        day = next((d for d, full in enumerate(_FULL_DAYS) if name.lower() in (full, full[:3])), None)
        if day is None:
            raise r.fail(f"{field}[{k}]", f"not a weekday: {name!r} (use {', '.join(WEEKDAYS)})")
        if day in out:
            raise r.fail(f"{field}[{k}]", f"{name!r} given twice")
        out.append(day)
    return tuple(sorted(out))


def _clock(r: _Reader, raw: Any, field: str) -> _dt.time:
    s = r.string(raw, field)
    try:
        t = _dt.time.fromisoformat(s)
    except ValueError:
        raise r.fail(field, f"expected a clock time like \"08:00\", got {s!r}") from None
    if t.tzinfo is not None:
        raise r.fail(field, "give a local clock time without an offset (the zone is plan.site_timezone)")
    return t


def _dates(r: _Reader, raw: Any, field: str) -> tuple[_dt.date, ...]:
    if not isinstance(raw, list):
        raise r.fail(field, "expected a list of dates, e.g. [2026-12-25, \"2027-01-01\"]")
    out = []
    for k, x in enumerate(raw):
        if isinstance(x, str):
            try:
                x = _dt.date.fromisoformat(x)
            except ValueError:
                raise r.fail(f"{field}[{k}]", f"not an ISO date: {x!r}") from None
        if isinstance(x, _dt.datetime) or not isinstance(x, _dt.date):
            raise r.fail(f"{field}[{k}]", "expected a date (local to the site), e.g. 2026-12-25")
        out.append(x)
    return tuple(sorted(set(out)))


def _parse_correlations(r: _Reader, raw: Any, tumors, has_whole: bool, specs: dict) -> tuple:
    if not isinstance(raw, list):
        raise r.fail("correlations", "expected an array of tables ([[correlations]])")
    out = []
    pairs = set()
    for i, c in enumerate(raw):
        f = f"correlations[{i}]"
        r.table(c, f, {"inputs", "rho"}, {"inputs", "rho"})
        ins = c["inputs"]
        if not (isinstance(ins, list) and len(ins) == 2 and all(isinstance(x, str) for x in ins)):
            raise r.fail(f"{f}.inputs", "expected two input paths, e.g. [\"lung.shunt_fraction\", \"tumors.T1.tn_ratio\"]")
        a, b = ins
        for j, x in enumerate((a, b)):
            if x not in specs or specs[x] is None:
                raise r.fail(f"{f}.inputs[{j}]", f"unknown input {x!r}")
            if isinstance(specs[x], Fixed):
                raise r.fail(f"{f}.inputs[{j}]", f"{x} is exact: nothing to correlate")
        if a == b:
            raise r.fail(f"{f}.inputs", "an input cannot be correlated with itself")
        key = frozenset((a, b))
        if key in pairs:
            raise r.fail(f"{f}.inputs", "this pair is already correlated")
        pairs.add(key)
        rho = r.number(c["rho"], f"{f}.rho")
        if not -1 < rho < 1:
            raise r.fail(f"{f}.rho", "must be in (-1, 1)")
        out.append((a, b, rho))
    if out:
        names = sorted({x for a, b, _ in out for x in (a, b)})
        m = np.eye(len(names))
        for a, b, rho in out:
            i, j = names.index(a), names.index(b)
            m[i, j] = m[j, i] = rho
        if np.linalg.eigvalsh(m).min() <= 1e-10:
            raise r.fail("correlations", "the correlation matrix is not positive definite")
    return tuple(out)


def load_case(path: str | Path) -> Case:
    """Read and validate a case file. Raises :class:`CaseError`."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_CASE_BYTES + 1)
        if len(data) > MAX_CASE_BYTES:
            raise CaseError(str(path), "", f"larger than {MAX_CASE_BYTES // 1024} kB: not a case file")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise CaseError(str(path), "", "no such file") from None
    except IsADirectoryError:
        raise CaseError(str(path), "", "is a directory, not a case file") from None
    except UnicodeDecodeError:
        raise CaseError(str(path), "", "not UTF-8 text") from None
    except OSError as e:
        raise CaseError(str(path), "", f"cannot read: {e.strerror}") from None
    return parse_case(text, str(path))
