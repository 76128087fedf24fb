"""Chance constraints: the one number that says whether a limit is kept often enough.

A limit is kept often enough at a candidate when P(limit kept) ≥ 1 − risk. The constraint value
(1 − risk) − P(limit kept) is ≤ 0 exactly then (Optuna's convention: ≤ 0 feasible), so one function drives
the exact enumeration (:mod:`y90opt.planner`), Optuna's constraints (:mod:`y90opt.optimise`) and the report.
"""

from __future__ import annotations

import numpy as np

#: Constraint margins within this of zero count as zero (a limit kept with P = 1 − risk exactly is feasible).
MARGIN_ATOL = 1e-12


def limit_margins(p_limits, risk: float) -> np.ndarray:
    """Constraint values (1 − risk) − P(limit kept), shape (..., L); ≤ 0 means the limit is kept often enough.

    One number drives the enumeration, Optuna's constraints and the report (Optuna's convention: ≤ 0 feasible).
    Values within :data:`MARGIN_ATOL` of zero are set to zero, so the boundary case P = 1 − risk is feasible.
    """
    m = (1.0 - risk) - np.asarray(p_limits, dtype=np.float64)
    return np.where(np.abs(m) <= MARGIN_ATOL, 0.0, m)
