r"""Clinical rules: the DSC 2022 scenarios as data, and their evaluation.

The rules live in ``configs/scenarios/<id>.toml`` (shipped as the package data ``y90opt._scenarios``), each
number with the DSC section it comes from. This module loads and validates them once, applies a case's
``[rules]`` overrides, and evaluates them on doses. Evaluation is pure array arithmetic that works on NumPy
and JAX arrays alike (and inside ``jit``); it never reads files.

Margins follow one convention everywhere (the grid search, Optuna's constraints, the report):

.. math::

    m_{target} = D_{min} - D, \qquad m_{limit} = D - D_{max}, \qquad m \le 0 \iff \text{the rule is met.}

A rule on the quantity ``tumors`` is evaluated per counted tumour and labelled ``"<rule id>:<tumour>"``.

Reference: TheraSphere Global Dosimetry Steering Committee, updated 2022 recommendations for HCC
(Salem et al., EJNMMI 2023;50:328-343), "DSC" below.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import math
import os
import pathlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Dose names of the forward model [Gy] a rule may constrain. ``tumors`` is per tumour (last axis).
QUANTITIES: tuple[str, ...] = (
    "perfused_mean",  # single-compartment mean dose over the perfused territory (with its tumours)
    "normal_perfused",  # NTAD: normal tissue of the perfused territory (partition model)
    "whole_normal_liver",  # normal liver, perfused and non-perfused (needs the whole-liver volume)
    "whole_liver",  # mean over the whole liver including tumours (needs the whole-liver volume)
    "lung",  # this session
    "lung_cumulative",  # prior sessions + this session
    "tumors",  # each treated tumour; which tumours count is the case's choice
    "tumor_total",  # mass-weighted mean over the treated tumours
)

#: Rule kinds: a target is a minimum dose, a limit a maximum dose.
KINDS: tuple[str, ...] = ("target", "limit")

#: ``primary`` rules define success (targets) or feasibility (limits); ``secondary`` ones ("where possible")
#: are reported only.
LEVELS: tuple[str, ...] = ("primary", "secondary")

#: Dosimetry models a scenario may prefer or an alternative may use.
MODELS: tuple[str, ...] = ("partition", "single-compartment")

#: Treatment intents of the DSC's key definitions.
INTENTS: tuple[str, ...] = ("curative", "palliative")

#: What a plan counts as tumour success (the case's ``[plan] success``).
SUCCESS_MODES: tuple[str, ...] = ("all-tumors", "index-tumor", "mass-weighted")

#: The scenario windows are hours after calibration at the Sunday 12:00 US Eastern convention, so each edge
#: is the noon of a named day. The DSC names days, not hours: by default a time within 12 h of an edge (the
#: same calendar day at the calibration's clock) is inside the window.
DAY_TOLERANCE_H: float = 12.0

# --- advisory thresholds (general, not scenario-specific; each is returned as advice, never applied) -----

#: Below this MAA tumour-to-normal ratio the tumour shows little preferential uptake: the partition model
#: gains little over the single-compartment model and the tumour dose estimate is least reliable. A common
#: rule of thumb in partition-model planning, not a DSC number.
TN_RATIO_MIN: float = 1.5

#: A lung shunt fraction above 20 % is a common contraindication threshold for resin microspheres and a
#: warning sign for glass; for TheraSphere the binding rules are the lung dose and lung activity.
SHUNT_FRACTION_MAX: float = 0.20

#: TheraSphere IFU contraindication: more than 16.5 mCi (0.61 GBq) delivered to the lungs.
LUNG_ACTIVITY_MAX_GBQ: float = 0.61

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ScenarioError(ValueError):
    """A malformed scenario file or ``[rules]`` override. ``str(e)`` is one line: ``"<file>: <field>: <message>"``."""

    def __init__(self, file: str, field: str, message: str):
        self.file = str(file)
        self.field = field
        self.message = " ".join(str(message).split())  # one line
        super().__init__(f"{self.file}: {field}: {self.message}")


# --- data ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One threshold on one dose quantity.

    Attributes:
        id: unique within the scenario (letters, digits, ``-``, ``_``).
        kind: ``"target"`` (dose ≥ threshold) or ``"limit"`` (dose ≤ threshold).
        quantity: one of :data:`QUANTITIES`.
        threshold_gy: the minimum (target) or maximum (limit) dose [Gy].
        level: ``"primary"`` or ``"secondary"`` (reported only).
        source: where the number comes from (DSC scenario, section, item).
        condition: the patients it applies to, e.g. ``"bilirubin >= 1.1 mg/dL"`` (documentation only).
        note: anything else worth printing beside it.
    """

    id: str
    kind: str
    quantity: str
    threshold_gy: float
    level: str = "primary"
    source: str = ""
    condition: str | None = None
    note: str = ""

    def margin(self, dose_gy):
        """Margin [Gy] of ``dose_gy`` (any array): ≤ 0 means the rule is met."""
        if self.kind == "target":
            return self.threshold_gy - dose_gy
        return dose_gy - self.threshold_gy

    def describe(self) -> str:
        """E.g. ``"tumors ≥ 205 Gy"``."""
        op = "≥" if self.kind == "target" else "≤"
        return f"{self.quantity} {op} {self.threshold_gy:g} Gy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "quantity": self.quantity,
            "threshold_gy": self.threshold_gy,
            "level": self.level,
            "source": self.source,
            "condition": self.condition,
            "note": self.note,
        }


@dataclasses.dataclass(frozen=True)
class Window:
    """Treatment window in hours after calibration (Sunday 12:00 US Eastern convention).

    ``default`` is true where the DSC sets no window and the numbers are the project's default.
    """

    start_h: float
    end_h: float
    preferred_h: tuple[float, ...]
    days: tuple[str, ...]
    default: bool
    source: str

    def contains(self, hours_after_calibration: float, tolerance_h: float = 0.0) -> bool:
        """Whether a time lies in ``[start_h - tolerance_h, end_h + tolerance_h]``."""
        return self.start_h - tolerance_h <= hours_after_calibration <= self.end_h + tolerance_h

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_h": self.start_h,
            "end_h": self.end_h,
            "preferred_h": list(self.preferred_h),
            "days": list(self.days),
            "default": self.default,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class Alternative:
    """Another planning criterion the DSC allows for the scenario; off unless a case turns it on.

    ``vials`` > 1 marks a multi-vial plan (the modified radiation lobectomy): described, not evaluated by
    the single-vial planner.
    """

    id: str
    description: str
    model: str
    targets: tuple[Rule, ...]
    limits: tuple[Rule, ...]
    condition: str | None
    source: str
    vials: int = 1

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.targets + self.limits

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "model": self.model,
            "condition": self.condition,
            "vials": self.vials,
            "targets": [r.to_dict() for r in self.targets],
            "limits": [r.to_dict() for r in self.limits],
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A DSC scenario: the active targets and limits, the treatment window, advisory thresholds
    (``checks``, read-only) and the alternatives a case may turn on.

    ``applied`` records what :func:`apply_overrides` changed (empty for the scenario as published).
    """

    id: str
    title: str
    dsc_scenario: int
    intent: str
    preferred_model: str
    source: str
    targets: tuple[Rule, ...]
    limits: tuple[Rule, ...]
    window: Window
    checks: dict
    alternatives: tuple[Alternative, ...]
    path: str = ""
    applied: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Active targets then limits."""
        return self.targets + self.limits

    @property
    def primary_targets(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.targets if r.level == "primary")

    @property
    def primary_limits(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.limits if r.level == "primary")

    def alternative(self, alternative_id: str) -> Alternative:
        for alt in self.alternatives:
            if alt.id == alternative_id:
                return alt
        raise KeyError(alternative_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (``y90opt scenarios --json``)."""
        return {
            "id": self.id,
            "title": self.title,
            "dsc_scenario": self.dsc_scenario,
            "intent": self.intent,
            "preferred_model": self.preferred_model,
            "source": self.source,
            "targets": [r.to_dict() for r in self.targets],
            "limits": [r.to_dict() for r in self.limits],
            "window": self.window.to_dict(),
            "checks": dict(self.checks),
            "alternatives": [a.to_dict() for a in self.alternatives],
            "applied": list(self.applied),
            "file": pathlib.Path(self.path).name if self.path else "",
        }


# --- locating and loading -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def scenario_dir() -> pathlib.Path:
    """Directory of the packaged scenario files (``y90opt._scenarios``), or ``<repo>/configs/scenarios``
    when running from a checkout that is not installed (looked up once per process)."""
    package = "y90opt._scenarios"
    try:
        files = importlib.resources.files(package)
        if isinstance(files, pathlib.Path) and files.is_dir():
            return files
    except (ImportError, OSError, TypeError, ValueError):
        pass
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            p = pathlib.Path(location)
            if p.is_dir() and any(p.glob("*.toml")):
                return p
    return pathlib.Path(__file__).resolve().parent.parent / "configs" / "scenarios"


def scenario_ids() -> list[str]:
    """Ids of the packaged scenarios (file stems), sorted alphabetically."""
    return sorted(p.stem for p in scenario_dir().glob("*.toml"))


def load_scenario(id_or_path: str | os.PathLike) -> Scenario:
    """Load and validate a scenario: a packaged id (``"multifocal-unilobar"``) or a path to a TOML file.

    Raises :class:`ScenarioError` naming the file and the field for anything malformed: unknown keys,
    unknown quantity, non-positive thresholds, a target above a limit on the same quantity, a window that
    starts after it ends or a preferred time outside it, a rule or window without a source.
    """
    text = os.fspath(id_or_path)
    looks_like_path = (
        isinstance(id_or_path, os.PathLike) or text.endswith(".toml") or os.sep in text or "/" in text
    )
    if looks_like_path:
        path = pathlib.Path(text)
        file = text
        if not path.is_file():
            raise ScenarioError(file, "file", "no such scenario file")
    else:
        path = scenario_dir() / f"{text}.toml"
        file = f"{text}.toml"
        if not path.is_file():
            known = ", ".join(scenario_ids())
            raise ScenarioError(text, "scenario", f"unknown scenario {text!r} (known: {known})")
    st = path.stat()
    version = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return _load_scenario_file(str(path), file, version)


@functools.lru_cache(maxsize=64)
def _load_scenario_file(path: str, file: str, version: tuple) -> Scenario:
    """A scenario file read and validated once per version of it: ``version`` holds its resolved path, inode,
    size, and modification and change times, so an edited or replaced file is read again (a restored
    modification time does not restore the change time). Scenarios are frozen, so callers share the result."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(file, "toml", str(e)) from None
    scenario = parse_scenario(doc, file, path)
    stem = pathlib.Path(path).stem
    if scenario.id != stem:
        raise ScenarioError(file, "id", f"{scenario.id!r} does not match the file name {stem!r}")
    return scenario


def load_scenarios() -> list[Scenario]:
    """Every packaged scenario, in DSC order."""
    return sorted((load_scenario(i) for i in scenario_ids()), key=lambda s: s.dsc_scenario)


_TOP_KEYS = {
    "id",
    "title",
    "dsc_scenario",
    "intent",
    "preferred_model",
    "source",
    "targets",
    "limits",
    "window",
    "checks",
    "alternatives",
}
_TOP_REQUIRED = ("id", "title", "dsc_scenario", "intent", "preferred_model", "source", "window")
_WINDOW_KEYS = {"start_h", "end_h", "preferred_h", "days", "default", "source"}
_ALT_KEYS = {"id", "description", "model", "targets", "limits", "condition", "source", "vials"}
_RULE_OPTIONAL = {"level", "source", "condition", "note"}
_THRESHOLD_KEY = {"target": "min_gy", "limit": "max_gy"}
#: ``[checks]`` keys and the open interval each value must lie in.
_CHECKS: dict[str, tuple[float, float]] = {
    "hepatic_reserve_min": (0.0, 1.0),
    "sphere_activity_min_bq": (0.0, math.inf),
}


def parse_scenario(doc: Mapping[str, Any], file: str, path: str = "") -> Scenario:
    """Validate a parsed scenario document (a dict from TOML) into a :class:`Scenario`."""
    _keys(doc, _TOP_KEYS, file, "")
    for key in _TOP_REQUIRED:
        if key not in doc:
            raise ScenarioError(file, key, "missing")
    sid = _ident(doc["id"], file, "id")
    dsc = doc["dsc_scenario"]
    if isinstance(dsc, bool) or not isinstance(dsc, int) or not 1 <= dsc <= 5:
        raise ScenarioError(file, "dsc_scenario", "expected an integer from 1 to 5")
    intent = _choice(doc["intent"], INTENTS, file, "intent")
    model = _choice(doc["preferred_model"], MODELS, file, "preferred_model")
    targets = _rules(doc.get("targets", []), "target", file, "targets")
    limits = _rules(doc.get("limits", []), "limit", file, "limits")
    if not any(r.level == "primary" for r in targets):
        raise ScenarioError(file, "targets", "at least one primary target is required")
    window = _window(doc["window"], file)
    checks = _checks(doc.get("checks", {}), file)
    alternatives = _alternatives(doc.get("alternatives", []), file)
    seen: dict[str, str] = {}
    for where, rules in [("", targets + limits)] + [
        (f"alternatives[{i}].", a.rules) for i, a in enumerate(alternatives)
    ]:
        for r in rules:
            if r.id in seen:
                raise ScenarioError(
                    file, f"{where}{r.kind}s", f"duplicate rule id {r.id!r} (also in {seen[r.id]})"
                )
            seen[r.id] = where.rstrip(".") or "the main rules"
    _check_consistent(targets + limits, file, "targets")
    for i, alt in enumerate(alternatives):
        _check_consistent(alt.rules, file, f"alternatives[{i}].targets")
    return Scenario(
        id=sid,
        title=_text(doc["title"], file, "title"),
        dsc_scenario=dsc,
        intent=intent,
        preferred_model=model,
        source=_text(doc["source"], file, "source"),
        targets=targets,
        limits=limits,
        window=window,
        checks=checks,
        alternatives=alternatives,
        path=path,
    )


# --- validation helpers -------------------------------------------------------------------------------


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _keys(table: Any, allowed: set[str], file: str, where: str) -> None:
    if not isinstance(table, Mapping):
        raise ScenarioError(file, where or "document", "expected a table")
    for key in table:
        if key not in allowed:
            raise ScenarioError(
                file, _join(where, key), f"unknown key (expected one of {', '.join(sorted(allowed))})"
            )


def _text(value: Any, file: str, field: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ScenarioError(file, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ScenarioError(file, field, "must not be empty")
    return value


def _ident(value: Any, file: str, field: str) -> str:
    s = _text(value, file, field)
    if not _ID.match(s):
        raise ScenarioError(file, field, f"{s!r}: use letters, digits, '-' and '_' only")
    return s


def _choice(value: Any, choices: Sequence[str], file: str, field: str) -> str:
    s = _text(value, file, field)
    if s not in choices:
        raise ScenarioError(file, field, f"{s!r}: expected one of {', '.join(choices)}")
    return s


def _number(value: Any, file: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(file, field, f"expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ScenarioError(file, field, "must be finite")
    return v


def _positive(value: Any, file: str, field: str) -> float:
    v = _number(value, file, field)
    if v <= 0:
        raise ScenarioError(file, field, f"must be > 0, got {v:g}")
    return v


def _array(value: Any, file: str, field: str) -> list:
    if not isinstance(value, list):
        raise ScenarioError(file, field, "expected an array")
    return value


def _rule(table: Any, kind: str, file: str, where: str, *, inherit_condition: str | None = None) -> Rule:
    threshold_key = _THRESHOLD_KEY[kind]
    other_key = _THRESHOLD_KEY["limit" if kind == "target" else "target"]
    if isinstance(table, Mapping) and other_key in table:
        raise ScenarioError(file, f"{where}.{other_key}", f"a {kind} takes {threshold_key}, not {other_key}")
    _keys(table, {"id", "quantity", threshold_key} | _RULE_OPTIONAL, file, where)
    for key in ("id", "quantity", threshold_key, "source"):
        if key not in table:
            raise ScenarioError(file, f"{where}.{key}", "missing")
    rid = _ident(table["id"], file, f"{where}.id")
    quantity = _text(table["quantity"], file, f"{where}.quantity")
    if quantity not in QUANTITIES:
        raise ScenarioError(
            file,
            f"{where}.quantity",
            f"unknown quantity {quantity!r} (expected one of {', '.join(QUANTITIES)})",
        )
    condition = table.get("condition", inherit_condition)
    return Rule(
        id=rid,
        kind=kind,
        quantity=quantity,
        threshold_gy=_positive(table[threshold_key], file, f"{where}.{threshold_key}"),
        level=_choice(table.get("level", "primary"), LEVELS, file, f"{where}.level"),
        source=_text(table["source"], file, f"{where}.source"),
        condition=None if condition is None else _text(condition, file, f"{where}.condition"),
        note=_text(table.get("note", ""), file, f"{where}.note", allow_empty=True),
    )


def _rules(
    raw: Any, kind: str, file: str, where: str, *, inherit_condition: str | None = None
) -> tuple[Rule, ...]:
    items = _array(raw, file, where)
    return tuple(
        _rule(t, kind, file, f"{where}[{i}]", inherit_condition=inherit_condition)
        for i, t in enumerate(items)
    )


def _check_consistent(rules: Sequence[Rule], file: str, where: str) -> None:
    """A target above a limit on the same quantity can never be met."""
    for t in rules:
        if t.kind != "target":
            continue
        for lim in rules:
            if lim.kind == "limit" and lim.quantity == t.quantity and t.threshold_gy > lim.threshold_gy:
                raise ScenarioError(
                    file,
                    where,
                    f"target {t.id!r} ({t.describe()}) is above limit {lim.id!r} ({lim.describe()}): it can never be met",
                )


def _window(raw: Any, file: str) -> Window:
    _keys(raw, _WINDOW_KEYS, file, "window")
    for key in ("start_h", "end_h", "preferred_h", "source"):
        if key not in raw:
            raise ScenarioError(file, f"window.{key}", "missing")
    start = _number(raw["start_h"], file, "window.start_h")
    end = _number(raw["end_h"], file, "window.end_h")
    if start < 0:
        raise ScenarioError(file, "window.start_h", "must be ≥ 0 (hours after calibration)")
    if start > end:
        raise ScenarioError(file, "window.start_h", f"{start:g} h is after window.end_h {end:g} h")
    preferred = tuple(
        _number(v, file, f"window.preferred_h[{i}]")
        for i, v in enumerate(_array(raw["preferred_h"], file, "window.preferred_h"))
    )
    if not preferred:
        raise ScenarioError(file, "window.preferred_h", "give at least one preferred time")
    for i, h in enumerate(preferred):
        if not start <= h <= end:
            raise ScenarioError(
                file, f"window.preferred_h[{i}]", f"{h:g} h is outside the window {start:g}-{end:g} h"
            )
    days = tuple(
        _text(v, file, f"window.days[{i}]")
        for i, v in enumerate(_array(raw.get("days", []), file, "window.days"))
    )
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise ScenarioError(file, "window.default", "expected true or false")
    return Window(start, end, preferred, days, default, _text(raw["source"], file, "window.source"))


def _checks(raw: Any, file: str) -> dict[str, Any]:
    _keys(raw, set(_CHECKS) | {"source"}, file, "checks")
    out: dict[str, Any] = {}
    for key, (low, high) in _CHECKS.items():
        if key in raw:
            v = _number(raw[key], file, f"checks.{key}")
            if not low < v < high:
                raise ScenarioError(file, f"checks.{key}", f"must lie in ({low:g}, {high:g}), got {v:g}")
            out[key] = v
    if out:
        if "source" not in raw:
            raise ScenarioError(file, "checks.source", "missing")
        out["source"] = _text(raw["source"], file, "checks.source")
    return out


def _alternatives(raw: Any, file: str) -> tuple[Alternative, ...]:
    out = []
    ids: set[str] = set()
    for i, table in enumerate(_array(raw, file, "alternatives")):
        where = f"alternatives[{i}]"
        _keys(table, _ALT_KEYS, file, where)
        for key in ("id", "description", "model", "source"):
            if key not in table:
                raise ScenarioError(file, f"{where}.{key}", "missing")
        aid = _ident(table["id"], file, f"{where}.id")
        if aid in ids:
            raise ScenarioError(file, f"{where}.id", f"duplicate alternative id {aid!r}")
        ids.add(aid)
        condition = table.get("condition")
        if condition is not None:
            condition = _text(condition, file, f"{where}.condition")
        vials = table.get("vials", 1)
        if isinstance(vials, bool) or not isinstance(vials, int) or vials < 1:
            raise ScenarioError(file, f"{where}.vials", "expected a positive integer")
        targets = _rules(
            table.get("targets", []), "target", file, f"{where}.targets", inherit_condition=condition
        )
        limits = _rules(
            table.get("limits", []), "limit", file, f"{where}.limits", inherit_condition=condition
        )
        if not targets and not limits:
            raise ScenarioError(file, where, "an alternative needs at least one target or limit")
        out.append(
            Alternative(
                id=aid,
                description=_text(table["description"], file, f"{where}.description"),
                model=_choice(table["model"], MODELS, file, f"{where}.model"),
                targets=targets,
                limits=limits,
                condition=condition,
                source=_text(table["source"], file, f"{where}.source"),
                vials=vials,
            )
        )
    return tuple(out)


# --- per-case overrides -------------------------------------------------------------------------------

_OVERRIDE_KEYS = {"targets", "limits", "remove", "alternatives"}


def apply_overrides(s: Scenario, overrides: Mapping[str, Any], file: str) -> Scenario:
    """Apply a case's ``[rules]`` table to a scenario and return the new scenario.

    Keys (all optional), applied in this order:

    - ``alternatives = ["id", ...]``: add that alternative's targets and limits to the active rules (e.g.
      the bilirubin-dependent whole-liver limit). Multi-vial alternatives are refused.
    - ``remove = ["id", ...]``: drop active rules by id.
    - ``targets = [{...}, ...]`` / ``limits = [{...}, ...]``: a table whose ``id`` is an active rule of that
      kind replaces the fields it gives (``min_gy``/``max_gy``, ``level``, ``source``, ``note``,
      ``condition``; ``quantity`` may be repeated but not changed); a new ``id`` adds a rule and must give
      ``quantity``, the threshold (``min_gy`` for a target, ``max_gy`` for a limit) and ``source`` (which may
      be ``"patient-specific"``).

    At least one primary target must remain, and no target may end above a limit on the same quantity.
    Errors raise :class:`ScenarioError` with ``file`` and a field such as ``rules.limits[1].max_gy``.
    """
    if not overrides:
        return s
    _keys(overrides, _OVERRIDE_KEYS, file, "rules")
    active: list[Rule] = list(s.rules)
    applied = list(s.applied)

    for i, aid in enumerate(_array(overrides.get("alternatives", []), file, "rules.alternatives")):
        field = f"rules.alternatives[{i}]"
        aid = _text(aid, file, field)
        try:
            alt = s.alternative(aid)
        except KeyError:
            known = ", ".join(a.id for a in s.alternatives) or "none"
            raise ScenarioError(
                file, field, f"unknown alternative {aid!r} for scenario {s.id!r} (known: {known})"
            ) from None
        if alt.vials != 1:
            raise ScenarioError(
                file,
                field,
                f"{aid!r} is a {alt.vials}-vial plan, not evaluated by the single-vial planner; plan each vial as its own case",
            )
        if f"alternative:{aid}" in applied:
            raise ScenarioError(file, field, f"alternative {aid!r} given twice")
        active.extend(alt.rules)
        applied.append(f"alternative:{aid}")

    for i, rid in enumerate(_array(overrides.get("remove", []), file, "rules.remove")):
        field = f"rules.remove[{i}]"
        rid = _text(rid, file, field)
        index = next((j for j, r in enumerate(active) if r.id == rid), None)
        if index is None:
            raise ScenarioError(
                file, field, f"no active rule {rid!r} (active: {', '.join(r.id for r in active)})"
            )
        del active[index]
        applied.append(f"remove:{rid}")

    for kind, key in (("target", "targets"), ("limit", "limits")):
        for i, table in enumerate(_array(overrides.get(key, []), file, f"rules.{key}")):
            where = f"rules.{key}[{i}]"
            if not isinstance(table, Mapping):
                raise ScenarioError(file, where, "expected a table")
            if "id" not in table:
                raise ScenarioError(file, f"{where}.id", "missing")
            rid = _ident(table["id"], file, f"{where}.id")
            index = next((j for j, r in enumerate(active) if r.id == rid), None)
            if index is None:
                active.append(_rule(table, kind, file, where))
                applied.append(f"add:{rid}")
                continue
            old = active[index]
            if old.kind != kind:
                raise ScenarioError(
                    file, f"{where}.id", f"{rid!r} is a {old.kind}; override it under rules.{old.kind}s"
                )
            active[index] = _replace_rule(old, table, file, where)
            applied.append(f"replace:{rid}")

    targets = tuple(r for r in active if r.kind == "target")
    limits = tuple(r for r in active if r.kind == "limit")
    if not any(r.level == "primary" for r in targets):
        raise ScenarioError(file, "rules", "no primary target left: a plan needs at least one")
    _check_consistent(targets + limits, file, "rules")
    return dataclasses.replace(s, targets=targets, limits=limits, applied=tuple(applied))


def _replace_rule(old: Rule, table: Mapping[str, Any], file: str, where: str) -> Rule:
    threshold_key = _THRESHOLD_KEY[old.kind]
    other_key = _THRESHOLD_KEY["limit" if old.kind == "target" else "target"]
    if other_key in table:
        raise ScenarioError(
            file, f"{where}.{other_key}", f"a {old.kind} takes {threshold_key}, not {other_key}"
        )
    _keys(table, {"id", "quantity", threshold_key} | _RULE_OPTIONAL, file, where)
    if len(table) == 1:
        raise ScenarioError(
            file, where, f"nothing to change for {old.id!r}: give {threshold_key}, level, source or note"
        )
    if "quantity" in table and table["quantity"] != old.quantity:
        raise ScenarioError(
            file,
            f"{where}.quantity",
            f"{old.id!r} is on {old.quantity!r}; to constrain another quantity remove it and add a new rule",
        )
    changes: dict[str, Any] = {}
    if threshold_key in table:
        changes["threshold_gy"] = _positive(table[threshold_key], file, f"{where}.{threshold_key}")
    if "level" in table:
        changes["level"] = _choice(table["level"], LEVELS, file, f"{where}.level")
    if "source" in table:
        changes["source"] = _text(table["source"], file, f"{where}.source")
    if "condition" in table:
        changes["condition"] = _text(table["condition"], file, f"{where}.condition")
    if "note" in table:
        changes["note"] = _text(table["note"], file, f"{where}.note", allow_empty=True)
    elif changes.get("threshold_gy", old.threshold_gy) != old.threshold_gy:
        changes["note"] = f"threshold set by {file} (scenario: {old.threshold_gy:g} Gy)"
    return dataclasses.replace(old, **changes)


# --- evaluation ---------------------------------------------------------------------------------------


def _is_missing(x: Any) -> bool:
    """True when a dose is absent, or all NaN (e.g. whole-liver doses without a whole-liver volume)."""
    if x is None:
        return True
    if not hasattr(x, "any"):
        x = np.asarray(x, dtype=float)
    try:
        return not bool((x == x).any())  # NaN != NaN; works on NumPy and JAX arrays
    except TypeError:  # an abstract (jit-traced) array has no values yet: it counts as present
        return False


def rule_labels(
    rules: Sequence[Rule], tumor_names: Sequence[str], counted_tumors: Sequence[str] | None = None
) -> dict[str, Rule]:
    """Label → rule, in rule order: the rule id, or ``"<id>:<tumour>"`` for each counted tumour of a
    rule on ``tumors``."""
    names = list(tumor_names)
    counted = names if counted_tumors is None else list(counted_tumors)
    for name in counted:
        if name not in names:
            raise ValueError(f"counted tumour {name!r} is not one of {names}")
    out: dict[str, Rule] = {}
    for rule in rules:
        if rule.quantity == "tumors":
            for name in counted:
                out[f"{rule.id}:{name}"] = rule
        else:
            out[rule.id] = rule
    return out


def margins(
    rules: Sequence[Rule],
    doses: Mapping[str, Any],
    tumor_names: Sequence[str],
    counted_tumors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Margin of every rule on ``doses`` (≤ 0 means met).

    Args:
        rules: targets and/or limits.
        doses: quantity → dose array [Gy], any shape with the same leading shape; ``doses["tumors"]`` has
            shape ``(..., T)`` in ``tumor_names`` order.
        tumor_names: names of the tumour axis.
        counted_tumors: the tumours a ``tumors`` rule applies to (default: all of ``tumor_names``); the
            case's choice (treated tumours, or only the index tumour).

    Returns:
        label → margin array (the dose's shape; tumour rules give one label per counted tumour,
        ``"<rule id>:<tumour>"``): ``threshold - dose`` for a target, ``dose - threshold`` for a limit.
        Rules whose dose is absent or all NaN are skipped (see :func:`missing_quantities`).
    """
    names = list(tumor_names)
    out: dict[str, Any] = {}
    tumor_columns: dict[str, Any] = {}
    for label, rule in rule_labels(rules, names, counted_tumors).items():
        if rule.quantity == "tumors":
            name = label.split(":", 1)[1]
            if name not in tumor_columns:
                all_tumors = doses.get("tumors")
                tumor_columns[name] = None if _is_missing(all_tumors) else all_tumors[..., names.index(name)]
            dose = tumor_columns[name]
        else:
            dose = doses.get(rule.quantity)
        if _is_missing(dose):
            continue
        out[label] = rule.margin(dose)
    return out


def missing_quantities(rules: Sequence[Rule], doses: Mapping[str, Any]) -> list[str]:
    """Quantities the rules need whose dose is absent or all NaN (their rules are skipped by :func:`margins`)."""
    out: list[str] = []
    for rule in rules:
        if rule.quantity not in out and _is_missing(doses.get(rule.quantity)):
            out.append(rule.quantity)
    return out


def success_rules(rules: Sequence[Rule], success: str) -> tuple[Rule, ...]:
    """The rules as a case's ``[plan] success`` reads them: for ``"mass-weighted"`` a target on ``tumors``
    applies to the mass-weighted mean tumour dose (``tumor_total``); otherwise unchanged (for
    ``"index-tumor"`` pass only the index tumour as ``counted_tumors``)."""
    if success not in SUCCESS_MODES:
        raise ValueError(f"success must be one of {SUCCESS_MODES}, got {success!r}")
    if success != "mass-weighted":
        return tuple(rules)
    return tuple(
        dataclasses.replace(r, quantity="tumor_total") if r.kind == "target" and r.quantity == "tumors" else r
        for r in rules
    )


def hepatic_reserve_fraction(perfused_volume_ml: float, whole_liver_volume_ml: float) -> float:
    """Share of the whole liver outside the treated (perfused) territory: 1 − V_perfused / V_whole."""
    if whole_liver_volume_ml <= 0:
        raise ValueError("whole_liver_volume_ml must be > 0")
    return 1.0 - perfused_volume_ml / whole_liver_volume_ml


# --- advisories ---------------------------------------------------------------------------------------

#: Codes :func:`advisories` may return.
ADVISORY_CODES: tuple[str, ...] = (
    "low-tn",
    "high-lsf",
    "lung-activity",
    "outside-window",
    "not-preferred-time",
    "default-window",
    "model",
    "hepatic-reserve",
    "hepatic-reserve-unknown",
    "sphere-activity",
    "rule-not-evaluated",
)


def advisories(
    scenario: Scenario,
    *,
    tn_ratios: Mapping[str, float] | None = None,
    shunt_fraction: float | None = None,
    lung_activity_gbq: float | None = None,
    hours_after_calibration: float | None = None,
    model: str | None = None,
    hepatic_reserve: float | None = None,
    activity_per_sphere_bq: float | None = None,
    missing: Sequence[str] = (),
    window_tolerance_h: float = DAY_TOLERANCE_H,
) -> list[tuple[str, str]]:
    """Advice on a plan's nominal inputs: returned as ``(code, message)`` pairs, never applied.

    Args:
        scenario: the scenario (after overrides).
        tn_ratios: tumour name → nominal MAA T:N of the treated tumours.
        shunt_fraction: nominal lung shunt fraction (0-1).
        lung_activity_gbq: nominal activity reaching the lungs [GBq].
        hours_after_calibration: the treatment time.
        model: the dosimetry model the plan uses (one of :data:`MODELS`).
        hepatic_reserve: share of the whole liver outside the treated territory, or None when unknown
            (see :func:`hepatic_reserve_fraction`).
        activity_per_sphere_bq: activity of one sphere at treatment [Bq].
        missing: quantities without a dose (from :func:`missing_quantities`).
        window_tolerance_h: slack at the window edges (default: the same calendar day, :data:`DAY_TOLERANCE_H`).

    Inputs left as None are not checked. Codes are listed in :data:`ADVISORY_CODES`.
    """
    out: list[tuple[str, str]] = []
    for name, tn in (tn_ratios or {}).items():
        if tn < TN_RATIO_MIN:
            out.append(
                (
                    "low-tn",
                    f"tumour {name}: T:N {tn:.3g} < {TN_RATIO_MIN:g}: little preferential uptake on MAA; the tumour dose "
                    "estimate is least reliable and the partition model gains little",
                )
            )
    if shunt_fraction is not None and shunt_fraction > SHUNT_FRACTION_MAX:
        out.append(
            (
                "high-lsf",
                f"lung shunt fraction {100 * shunt_fraction:.3g} % > {100 * SHUNT_FRACTION_MAX:g} %: check the lung dose "
                "and the shunt measurement (planar imaging overestimates)",
            )
        )
    if lung_activity_gbq is not None and lung_activity_gbq > LUNG_ACTIVITY_MAX_GBQ:
        out.append(
            (
                "lung-activity",
                f"lung activity {lung_activity_gbq:.3g} GBq ({lung_activity_gbq / 0.037:.3g} mCi) > "
                f"{LUNG_ACTIVITY_MAX_GBQ:g} GBq (16.5 mCi): TheraSphere IFU contraindication",
            )
        )
    w = scenario.window
    span = f"{w.start_h:g}-{w.end_h:g} h after calibration" + (
        f" ({w.days[0]} to {w.days[-1]})" if w.days else ""
    )
    if w.default:
        out.append(
            (
                "default-window",
                f"the DSC sets no treatment window for scenario {scenario.id}; {span} is a default",
            )
        )
    if hours_after_calibration is not None:
        h = hours_after_calibration
        if not w.contains(h, window_tolerance_h):
            out.append(
                (
                    "outside-window",
                    f"treatment at {h:.4g} h is outside the scenario window {span} ({w.source})",
                )
            )
        elif not any(abs(h - p) <= window_tolerance_h for p in w.preferred_h):
            pref = ", ".join(f"{p:g}" for p in w.preferred_h)
            out.append(
                (
                    "not-preferred-time",
                    f"treatment at {h:.4g} h is inside the window but not at a preferred time ({pref} h); the DSC thresholds "
                    "were validated mostly at week 1 Wednesday",
                )
            )
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if model == "single-compartment" and scenario.preferred_model == "partition":
            out.append(
                (
                    "model",
                    f"single-compartment dosimetry used where the DSC prefers the partition (multicompartment) model "
                    f"for scenario {scenario.id}",
                )
            )
    reserve_min = scenario.checks.get("hepatic_reserve_min")
    if reserve_min is not None:
        if hepatic_reserve is None:
            out.append(
                (
                    "hepatic-reserve-unknown",
                    f"scenario {scenario.id} selects patients with hepatic reserve ≥ {100 * reserve_min:g} %; "
                    "give the whole-liver volume to check it",
                )
            )
        elif hepatic_reserve < reserve_min:
            out.append(
                (
                    "hepatic-reserve",
                    f"hepatic reserve {100 * hepatic_reserve:.3g} % < {100 * reserve_min:g} % "
                    f"({scenario.checks.get('source', scenario.source)})",
                )
            )
    sphere_min = scenario.checks.get("sphere_activity_min_bq")
    if sphere_min is not None and activity_per_sphere_bq is not None and activity_per_sphere_bq < sphere_min:
        out.append(
            (
                "sphere-activity",
                f"activity per sphere {activity_per_sphere_bq:.4g} Bq < {sphere_min:g} Bq (preliminary; "
                f"{scenario.checks.get('source', scenario.source)}); it depends on the activity per sphere at calibration",
            )
        )
    for quantity in missing:
        ids = [r.id for r in scenario.rules if r.quantity == quantity]
        if not ids:
            continue
        hint = (
            " (give [liver] whole_liver_volume_ml)"
            if quantity in ("whole_normal_liver", "whole_liver")
            else ""
        )
        out.append(
            (
                "rule-not-evaluated",
                f"no {quantity} dose{hint}: rule{'s' if len(ids) > 1 else ''} {', '.join(ids)} not evaluated",
            )
        )
    return out
