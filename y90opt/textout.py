"""Plain-text output helpers for the command line: aligned tables and strict JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, align: str | None = None) -> str:
    """An aligned text table. ``align`` is a string of 'l'/'r' per column (numbers right by default)."""
    cells = [[_cell(c) for c in r] for r in rows]
    if header is not None:
        cells.insert(0, [str(h) for h in header])
    if not cells:
        return ""
    ncol = max(len(r) for r in cells)
    cells = [r + [""] * (ncol - len(r)) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]
    if align is None:
        first = rows[0] if rows else [""] * ncol
        align = "".join("r" if isinstance(v, int | float | np.floating | np.integer) else "l" for v in first)
        align = align.ljust(ncol, "l")
    lines = []
    for j, r in enumerate(cells):
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align, strict=False)]
        lines.append("  ".join(parts).rstrip())
        if j == 0 and header is not None:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and NaN (→ null) so that ``json.dumps(..., allow_nan=False)`` works."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return None if not math.isfinite(x) else x
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)
