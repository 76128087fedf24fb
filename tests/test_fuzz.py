"""Property-based fuzzing of the case file through the command line, in process.

The contract: every input ends in exit 0 with finite, meaningful numbers, or exit 2 with one line naming the
file (and the field), never an internal error (exit 1), a traceback, a multi-line message or a non-finite
number in the JSON. Cases are built by mutating valid ones: values of every type and magnitude (NaN, inf,
subnormal, huge, unicode, nesting), removed and unknown keys, datetimes with odd offsets, duplicated tables.

Profiles (hypothesis): the default runs a few hundred examples in the suite; ``Y90OPT_FUZZ=long`` runs 10⁴
(a local run: ``Y90OPT_FUZZ=long python -m pytest tests/test_fuzz.py -q``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import pathlib
import tomllib

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from y90opt.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.toml"))
BASES = [tomllib.loads(p.read_text(encoding="utf-8")) for p in EXAMPLES]

LONG = os.environ.get("Y90OPT_FUZZ") == "long"
DOSE_EXAMPLES = 10_000 if LONG else 250
SIMULATE_EXAMPLES = 2_000 if LONG else 60
COMMON = dict(deadline=None, derandomize=not LONG, suppress_health_check=list(HealthCheck))

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-320, 1e-300, 1e300, 1e39, 3.5e38, -1.0, 1e6, 1e10, 0.5, 1.0, 100.0]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "normal", "lognormal", "weibull", "2026-12-06T12:00:00-05:00", "2026-12-06T12:00:00",
                     "2126-12-10T12:00:00-05:00", "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+14:00",
                     "Europe/Paris", "Mars/Base", "10:00", "25:61", "T1", "T 1", "ntad", "x" * 5000]),
)
leaves = st.one_of(numbers, strings, st.booleans())
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
specs = st.one_of(
    numbers,
    st.fixed_dictionaries({"value": numbers, "cv": numbers}),
    st.fixed_dictionaries({"dist": st.sampled_from(["normal", "lognormal", "uniform", "triangular", "gamma"]),
                           "mean": numbers, "sd": numbers},
                          optional={"min": numbers, "max": numbers, "median": numbers, "mode": numbers,
                                    "cv": numbers, "bias_factor": numbers}),
)


def _paths(doc, prefix=()):
    """Every (path to a leaf or a table) of a document."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _delete(doc, path):
    node = doc
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]


@st.composite
def mutated_cases(draw):
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["value", "spec", "delete", "unknown"]))
        try:
            if action == "value":
                _set(doc, path, draw(values))
            elif action == "spec":
                _set(doc, path, draw(specs))
            elif action == "delete":
                _delete(doc, path)
            else:
                node = doc
                for k in path[:-1]:
                    node = node[k]
                if isinstance(node, dict):
                    node[draw(st.text(min_size=1, max_size=8))] = draw(leaves)
        except (KeyError, IndexError, TypeError):
            pass
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        text = repr(doc)  # not TOML at all: the parser's problem to refuse
    tweak = draw(st.sampled_from(["none", "duplicate", "nest", "truncate"]))
    if tweak == "duplicate":
        text = text + "\n[plan]\nrisk = 0.1\n"
    elif tweak == "nest":
        text = text.replace("[plan]", "[rules]\nx = " + "[" * 400 + "]" * 400 + "\n\n[plan]", 1)
    elif tweak == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _reject_constant(name):
    raise AssertionError(f"non-finite number {name} in the JSON")


def _finite_numbers(x, where="") -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _finite_numbers(v, f"{where}[{i}]")
    elif isinstance(x, float):
        assert math.isfinite(x), where


def _check(code: int, out: str, err: str, path: str, command: str) -> None:
    assert code in (0, 2), f"exit {code}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("y90opt: "), err
        assert len(err) < 1000, len(err)
        assert path in err, err
        return
    doc = json.loads(out, parse_constant=_reject_constant)
    _finite_numbers(doc)
    for key, value in doc["dose_gy"].items():  # every dose is a number, never null
        for v in (value.values() if isinstance(value, dict) else [value]):
            if command == "simulate" and isinstance(v, dict):
                assert all(isinstance(v[s], float) for s in ("mean", "p05", "p50", "p95")), (key, v)
            elif command == "simulate" and key != "tumors":
                assert isinstance(v, float), (key, v)
            else:
                assert v is None or isinstance(v, int | float) or isinstance(v, dict), (key, v)


@settings(max_examples=DOSE_EXAMPLES, **COMMON)
@given(text=mutated_cases())
def test_fuzz_dose(text, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "case.toml")
    pathlib.Path(path).write_text(text, encoding="utf-8")
    _check(*_run(["dose", path, "--json"]), path, "dose")


@pytest.mark.slow
@settings(max_examples=SIMULATE_EXAMPLES, **COMMON)
@given(text=mutated_cases())
def test_fuzz_simulate(text, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "case.toml")
    pathlib.Path(path).write_text(text, encoding="utf-8")
    _check(*_run(["simulate", path, "--json", "--samples", "300"]), path, "simulate")
