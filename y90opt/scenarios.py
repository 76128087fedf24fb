r"""Clinical rules as data: the DSC 2022 scenarios read from their files, validated once, and a case's overrides.

The rules live in ``configs/scenarios/<id>.toml`` (shipped as the package data ``y90opt._scenarios``), each
number with the DSC section it comes from. This module loads and validates them once per file version and
applies a case's ``[rules]`` overrides; it never evaluates a dose (that is :mod:`y90opt.rules`).

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

from .errors import InputError

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
    "tumors_d70",  # each counted tumour's D70 (voxel) as its d70_ratio × its mean (a curve with two vials): research
)

#: Rule quantities of treatments of several injections (cases with ``[[injections]]``): a limit on a
#: ``*_sessions`` quantity holds for each session; ``<key>`` is an injection's role (or name), ``*`` each one.
TREATMENT_QUANTITIES: tuple[str, ...] = (
    "lung_sessions",  # each session's lung dose
    "whole_normal_liver_sessions",  # each session's whole normal liver dose (needs the whole-liver volume)
    "injections.<key>.perfused_mean",  # single-compartment dose over that injection's territory, from it alone
    "injections.<key>.normal_perfused",  # that injection's normal-tissue dose over its territory, from it alone
    "regions.<key>.mean",  # mean dose over the injection's region (its territory less those nested in it), all injections
    "regions.<key>.normal",  # the region's normal tissue, all injections
)
_TREATMENT_Q = re.compile(r"^(injections\.([A-Za-z0-9_-]+|\*)\.(perfused_mean|normal_perfused)"
                          r"|regions\.([A-Za-z0-9_-]+|\*)\.(mean|normal)|lung_sessions|whole_normal_liver_sessions)$")


def is_quantity(name: str) -> bool:
    """A dose a rule may constrain: one of :data:`QUANTITIES` or the forms of :data:`TREATMENT_QUANTITIES`."""
    return name in QUANTITIES or bool(_TREATMENT_Q.match(name))


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

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ScenarioError(InputError):
    """A malformed scenario file or ``[rules]`` override. ``str(e)`` is one line: ``"<file>: <field>: <message>"``."""

    def __init__(self, file: str, field: str, message: str):
        super().__init__(file, field, message)


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
    the single-vial planner. ``replaces`` names the main rules this alternative stands in for when a plan
    switches to it entirely (a single-compartment plan replaces the tumour and NTAD rules of a partition
    plan): the ``[rules] remove`` list that goes with it, which an error message may offer as the fix.
    """

    id: str
    description: str
    model: str
    targets: tuple[Rule, ...]
    limits: tuple[Rule, ...]
    condition: str | None
    source: str
    vials: int = 1
    replaces: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.targets + self.limits

    @property
    def has_primary_target(self) -> bool:
        return any(r.level == "primary" for r in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "model": self.model,
            "condition": self.condition,
            "vials": self.vials,
            "replaces": list(self.replaces),
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
_ALT_KEYS = {"id", "description", "model", "targets", "limits", "condition", "source", "vials", "replaces"}
_RULE_OPTIONAL = {"level", "source", "condition", "note"}
_THRESHOLD_KEY = {"target": "min_gy", "limit": "max_gy"}
#: ``[checks]`` keys and the open interval each value must lie in.
_CHECKS: dict[str, tuple[float, float]] = {
    "hepatic_reserve_min": (0.0, 1.0),
    "sphere_activity_min_bq": (0.0, math.inf),
    "treated_liver_share_max": (0.0, 1.0),  # share of the whole liver treated in one session, summed over injections
    "treated_liver_share_caution": (0.0, 1.0),  # the share above which toxicity rises in poorer liver function
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
    main_ids = [r.id for r in targets + limits]
    for i, alt in enumerate(alternatives):
        _check_consistent(alt.rules, file, f"alternatives[{i}].targets")
        for k, rid in enumerate(alt.replaces):
            if rid not in main_ids:
                raise ScenarioError(
                    file, f"alternatives[{i}].replaces[{k}]",
                    f"{rid!r} is not a main rule (main rules: {', '.join(main_ids)})",
                )
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
    if not is_quantity(quantity):
        raise ScenarioError(
            file,
            f"{where}.quantity",
            f"unknown quantity {quantity!r} (expected one of {', '.join(QUANTITIES + TREATMENT_QUANTITIES)})",
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
        replaces = tuple(
            _ident(x, file, f"{where}.replaces[{k}]")
            for k, x in enumerate(_array(table.get("replaces", []), file, f"{where}.replaces"))
        )
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
                replaces=replaces,
            )
        )
    return tuple(out)


# --- per-case overrides -------------------------------------------------------------------------------

_OVERRIDE_KEYS = {"targets", "limits", "remove", "alternatives"}


def apply_overrides(s: Scenario, overrides: Mapping[str, Any], file: str, *, require_primary: bool = True) -> Scenario:
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

    At least one primary target must remain (unless ``require_primary`` is false: a nominal dose needs no
    rule), and no target may end above a limit on the same quantity.
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
    if require_primary and not any(r.level == "primary" for r in targets):
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

