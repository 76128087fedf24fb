"""Virtual patients: measured inputs drawn from a population file, seeded and reproducible.

A population file (``configs/populations/<name>.toml``) lists ``[[inputs]]``: a case path (``tumors.*`` for every
tumour of the template), a distribution, its parameters, the truncation ``[min, max]`` and its source. A
virtual patient is one draw of every listed input that the template case has, kept only where its geometry
holds (the treated tumours inside the perfused territory, the whole liver holding the territory and the
untreated tumours): a draw that fails is drawn again. The patients become the rows of a cohort table
(:mod:`y90opt.cohorts`): each value replaces the template's measured value and keeps its uncertainty form.

Reproducibility: patient k's numbers come from ``numpy.random.default_rng([seed, k])`` alone (PCG64, numpy's
documented stream), so the same seed gives the same patients whatever N and in any order; the k-th patient of
a cohort of N is the k-th of any larger one.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InputError

FORMS = ("lognormal", "uniform", "ratio_uniform")
#: Redraws of one patient before the population is declared unable to give a valid patient for the template.
MAX_REDRAWS = 1000


def population_dir() -> str:
    """Directory of the packaged population files (``y90opt._populations``), or ``<repo>/configs/populations``
    when running from a checkout that is not installed."""
    import importlib.util
    import pathlib

    try:
        spec = importlib.util.find_spec("y90opt._populations")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        p = pathlib.Path(location)
        if p.is_dir() and any(p.glob("*.toml")):
            return str(p)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "populations")


def load_population(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A population by packaged name (``"hcc"``) or path; its ``inputs`` validated (one-line errors)."""
    p = os.fspath(name_or_path)
    path = p if (os.sep in p or p.endswith(".toml")) else os.path.join(population_dir(), f"{p}.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        known = sorted(f[:-5] for f in os.listdir(population_dir()) if f.endswith(".toml"))
        raise InputError(f"{path}: no such population file (packaged: {', '.join(known)})") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{path}: not a readable population file ({e})") from None
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError(f"{path}: inputs: missing or empty ([[inputs]])")
    for i, e in enumerate(inputs):
        where = f"{path}: inputs[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise InputError(f"{where}.path: missing")
        if e.get("dist") not in FORMS:
            raise InputError(f"{where}.dist: expected one of {', '.join(FORMS)}")
        if not isinstance(e.get("source"), str) or not e["source"]:
            raise InputError(f"{where}.source: missing (every distribution names its source)")
        need = {"lognormal": ("median", "sigma_ln"), "uniform": ("min", "max"), "ratio_uniform": ("of", "low", "high")}
        for key in need[e["dist"]] + ("min", "max"):
            if key not in e:
                raise InputError(f"{where}.{key}: missing")
        for key in ("median", "sigma_ln", "min", "max", "low", "high"):
            if key in e and not (isinstance(e[key], int | float) and math.isfinite(e[key]) and e[key] >= 0):
                raise InputError(f"{where}.{key}: expected a finite number >= 0")
        if e["min"] > e["max"]:
            raise InputError(f"{where}.max: must be >= min")
    return {"name": doc.get("name", os.path.basename(path)[:-5]), "path": path, "inputs": inputs,
            "description": doc.get("description", "")}


def measured_value(raw: Any) -> float | None:
    """The measured value a case file gives a quantity: a plain number, or the ``value``/``median``/``mean`` of
    its uncertainty form; None for a form without one (uniform, triangular)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, Mapping):
        for k in ("value", "median", "mean"):
            if k in raw:
                return float(raw[k])
    return None


def _settable(raw: Any) -> bool:
    """The template gives the quantity a single measured value a patient's draw can replace (a number,
    ``{ value, cv }``, a lognormal median or a normal mean); other forms (uniform, triangular) are kept."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return True
    return isinstance(raw, dict) and any(k in raw for k in ("value", "median", "mean"))


def _template_paths(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Population path → the template's case paths it sets (``tumors.*`` expands to every tumour whose form has
    a measured value to replace)."""
    tumors = [t for t in doc.get("tumors", []) if isinstance(t, dict) and "name" in t]
    out: dict[str, list[str]] = {}
    for head in ("liver", "lung", "delivery"):
        table = doc.get(head, {}) if isinstance(doc.get(head), dict) else {}
        for key, raw in table.items():
            if _settable(raw):
                out[f"{head}.{key}"] = [f"{head}.{key}"]
    for what in ("volume_ml", "tn_ratio"):
        out[f"tumors.*.{what}"] = [f"tumors.{t['name']}.{what}" for t in tumors if _settable(t.get(what))]
        for t in tumors:
            if _settable(t.get(what)):
                out[f"tumors.{t['name']}.{what}"] = [f"tumors.{t['name']}.{what}"]
    return out


def _draw(rng: np.random.Generator, e: Mapping[str, Any], drawn: Mapping[str, float]) -> float:
    for _ in range(MAX_REDRAWS):
        if e["dist"] == "lognormal":
            x = float(e["median"] * math.exp(e["sigma_ln"] * rng.standard_normal()))
        elif e["dist"] == "uniform":
            x = float(rng.uniform(e["min"], e["max"]))
        else:
            if e["of"] not in drawn:
                raise InputError(f"population: {e['path']}: 'of' = {e['of']!r} is not drawn before it")
            x = float(drawn[e["of"]] * rng.uniform(e["low"], e["high"]))
        if e["min"] <= x <= e["max"]:
            return x
    raise InputError(f"population: {e['path']}: no draw inside [{e['min']:g}, {e['max']:g}] in {MAX_REDRAWS} tries")


def _geometry_ok(doc: Mapping[str, Any], row: Mapping[str, float]) -> bool:
    def value(path: str) -> float | None:
        if path in row:
            return row[path]
        head, _, key = path.partition(".")
        return measured_value(doc.get(head, {}).get(key) if isinstance(doc.get(head), dict) else None)

    def tumour(t: Mapping[str, Any]) -> float:
        path = f"tumors.{t['name']}.volume_ml"
        return row[path] if path in row else (measured_value(t.get("volume_ml")) or 0.0)

    perfused = value("liver.perfused_volume_ml")
    tumors = [t for t in doc.get("tumors", []) if isinstance(t, dict)]
    treated = sum(tumour(t) for t in tumors if t.get("treated", True))
    untreated = sum(tumour(t) for t in tumors if not t.get("treated", True))
    if perfused is None or treated >= 0.8 * perfused:  # a tumour burden above 80 % of the territory: no candidate
        return False
    whole = value("liver.whole_liver_volume_ml")
    return whole is None or whole >= perfused + untreated


def virtual_patients(template_doc: Mapping[str, Any], population: Mapping[str, Any], n: int, seed: int = 0
                     ) -> list[dict[str, float]]:
    """``n`` virtual patients for a template case document: per patient, case path → measured value.

    Only the population's inputs that the template has are drawn. Raises :class:`InputError` when the template
    has a ``[[injections]]`` treatment (not supported) or none of the population's inputs."""
    if "injections" in template_doc:
        raise InputError("population: virtual patients take a template of one injection")
    paths = _template_paths(template_doc)
    plan = [(e, paths[e["path"]]) for e in population["inputs"] if paths.get(e["path"])]
    if not plan:
        raise InputError(f"population {population['name']}: none of its inputs is in the template")
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        for _ in range(MAX_REDRAWS):
            row: dict[str, float] = {}
            for e, targets in plan:
                for p in targets:
                    row[p] = _draw(rng, e, row)
            if _geometry_ok(template_doc, row):
                break
        else:
            raise InputError(f"population {population['name']}: no patient with a valid geometry for the template "
                             f"in {MAX_REDRAWS} draws")
        out.append(row)
    return out


def write_patients_csv(rows: list[dict[str, float]], path: str, prefix: str = "V") -> str:
    """A cohort table (``patient_id`` and one column per case path) of virtual patients."""
    import csv

    cols = sorted({c for r in rows for c in r})
    width = len(str(max(len(rows) - 1, 0)))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", *cols])
        for k, r in enumerate(rows):
            w.writerow([f"{prefix}{k:0{width}d}", *[repr(float(r[c])) for c in cols]])
    return path
