"""Results as labelled ``xarray.Dataset`` objects: one builder sets units, long names and provenance.

Summaries (JSON, tables, the report) are derived from the Dataset, never computed twice.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._version import __version__

#: CF-style units and long names of every variable a y90opt Dataset may hold.
VARIABLES: dict[str, tuple[str, str]] = {
    "mean": ("", "Monte Carlo mean"),
    "mean_se": ("", "standard error of the Monte Carlo mean"),
    "sd": ("", "standard deviation across samples"),
    "p05": ("", "5th percentile"),
    "p50": ("", "median"),
    "p95": ("", "95th percentile"),
    "nominal": ("", "value at the nominal (measured) inputs"),
    "unit": ("1", "unit of the quantity"),
    "probability": ("1", "probability that the rule is satisfied"),
    "probability_se": ("1", "Monte Carlo standard error of the probability"),
    "threshold": ("Gy", "rule threshold"),
    "rule_kind": ("1", "target (minimum dose) or limit (maximum dose)"),
    "rule_quantity": ("1", "dose quantity the rule applies to"),
    "rule_source": ("1", "where the rule comes from"),
    "p_success": ("1", "probability that every primary target is met"),
    "p_success_se": ("1", "Monte Carlo standard error of p_success"),
    "p_limits": ("1", "probability that every limit is kept"),
    "samples": ("", "sampled values"),
    "inputs": ("", "sampled input values"),
    "vial_at_treatment": ("GBq", "vial activity at the treatment time"),
}


#: Reader's names of the model's quantities: (short label for tables and figures, description). Tumours
#: (``tumors.<name>``) are named by :func:`quantity_label` and :func:`quantity_description`.
QUANTITY_NAMES: dict[str, tuple[str, str]] = {
    "perfused_mean": ("perfused territory (mean)", "mean dose to the perfused territory"),
    "normal_perfused": ("NTAD (normal perfused liver)", "normal perfused liver dose (NTAD)"),
    "whole_normal_liver": ("whole normal liver", "normal liver dose averaged over the whole liver"),
    "whole_liver": ("whole liver", "mean whole-liver dose"),
    "lung": ("lung, this session", "lung dose (this session)"),
    "lung_cumulative": ("lung, cumulative", "cumulative lung dose"),
    "tumor_total": ("tumours, mass-weighted", "mass-weighted mean tumour dose"),
    "injected": ("injected activity", "activity injected"),
    "liver": ("activity to the liver", "activity reaching the liver"),
    "lung_activity": ("activity to the lungs", "activity shunted to the lungs"),
}


def quantity_label(q: str) -> str:
    """A reader's short name for a quantity (``tumors.T1`` → ``tumour T1``)."""
    if q.startswith("tumors."):
        return f"tumour {q.split('.', 1)[1]}"
    if q.startswith("tumors_d70."):
        return f"tumour {q.split('.', 1)[1]} D70"
    return QUANTITY_NAMES[q][0] if q in QUANTITY_NAMES else q


def quantity_description(q: str) -> str:
    """A reader's description of a quantity (``tumors.T1`` → ``dose to tumour T1``)."""
    if q.startswith("tumors."):
        return f"dose to tumour {q.split('.', 1)[1]}"
    if q.startswith("tumors_d70."):
        return f"D70 of tumour {q.split('.', 1)[1]} (voxel: d70_ratio x its mean dose, or its curve with two vials)"
    return QUANTITY_NAMES[q][1] if q in QUANTITY_NAMES else q


def provenance(case, *, seed: int | None, n: int | None, dtype: str | None, command: str, extra: Mapping | None = None) -> dict[str, Any]:
    """Attributes every Dataset carries: what produced it, from which case, with which conventions."""
    attrs: dict[str, Any] = {
        "title": f"y90opt {command}: {case.name}",
        "y90opt_version": __version__,
        "command": command,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "case_name": case.name,
        "case_path": str(case.path),
        "case_sha256": case.sha256,
        "case_toml": case.text,
        "scenario": case.scenario,
        "conventions": json.dumps(case.conventions.as_dict()),
        "disclaimer": "research software: check every plan independently before clinical use",
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    if n is not None:
        attrs["sample_count"] = int(n)
    if dtype is not None:
        attrs["dtype"] = dtype
        attrs.update(_backend())
    if case.biased_inputs:
        attrs["bias_used"] = "research: bias options centre the inputs on a delivered-dose estimate: " + ", ".join(case.biased_inputs)
    for k, v in (extra or {}).items():
        attrs[k] = v
    return attrs


def _backend() -> dict[str, str]:
    import jax

    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
    }


class _Column:
    """One variable of :class:`Fields`: its dimensions and values."""

    def __init__(self, dims: tuple[str, ...], values, fields: Fields):
        self.dims, self.values, self._fields = dims, np.asarray(values), fields

    def sel(self, **labels) -> _Column:
        """The values at one label of each named dimension (as ``xarray.DataArray.sel`` with scalars)."""
        out = self
        for dim, label in labels.items():
            axis = out.dims.index(dim)
            if dim not in out.dims:
                raise KeyError(f"no dimension {dim!r}")
            hits = np.flatnonzero(self._fields[dim].values == label)
            if not len(hits):
                raise KeyError(f"{dim}={label!r}")
            at = int(hits[0])
            out = _Column(out.dims[:axis] + out.dims[axis + 1:], np.take(out.values, at, axis=axis), self._fields)
        return out


class Fields:
    """A result's variables, coordinates and attributes before they become an :class:`xarray.Dataset`, read as
    a summary reads the Dataset (``fields[name].values``, ``.sel`` on a dimension, ``name in fields``,
    ``.attrs``): a command that prints only its JSON summary then never imports xarray (nor what xarray imports
    on its first array: dask, when installed). :meth:`dataset` builds the Dataset (:func:`build_dataset`)."""

    def __init__(self, data_vars: Mapping[str, tuple], coords: Mapping[str, Any], attrs: Mapping[str, Any]):
        self.data_vars, self.coords, self.attrs = dict(data_vars), dict(coords), dict(attrs)

    def __contains__(self, name: str) -> bool:
        return name in self.data_vars or name in self.coords

    def __getitem__(self, name: str) -> _Column:
        if name in self.data_vars:
            dims, values = self.data_vars[name][:2]
            return _Column((dims,) if isinstance(dims, str) else tuple(dims), values, self)
        c = self.coords[name]
        if isinstance(c, tuple):
            dims = (c[0],) if isinstance(c[0], str) else tuple(c[0])
            return _Column(dims, c[1], self)
        return _Column((name,), c, self)

    def dataset(self):
        return build_dataset(self.data_vars, self.coords, self.attrs)


def build_dataset(data_vars: Mapping[str, tuple], coords: Mapping[str, Any], attrs: Mapping[str, Any], units: Mapping[str, str] | None = None):
    """Make a Dataset; every variable gets ``units`` and ``long_name`` from :data:`VARIABLES`
    (``units`` overrides per variable, e.g. a dose statistic in Gy)."""
    import xarray as xr

    ds = xr.Dataset({k: v for k, v in data_vars.items()}, coords=dict(coords), attrs=dict(attrs))
    for name in ds.data_vars:
        unit, long_name = VARIABLES.get(name, ("", name))
        if units and name in units:
            unit = units[name]
        if unit:
            ds[name].attrs["units"] = unit
        ds[name].attrs["long_name"] = long_name
    return ds


def write_netcdf(ds, path: str | os.PathLike) -> None:
    """Write atomically (a partial file never replaces a good one)."""
    tmp = f"{path}.part"
    ds.to_netcdf(tmp, engine="netcdf4")
    os.replace(tmp, path)


def read_netcdf(path: str | os.PathLike):
    import xarray as xr

    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()
