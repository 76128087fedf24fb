"""y90opt: uncertainty-aware planning for Y-90 glass microsphere (TheraSphere) radioembolization.

Which vial and which treatment day give the best chance of reaching the tumour dose target while the
normal liver and the lungs stay within their limits, given inputs measured with error?

    import y90opt
    case = y90opt.load_case("configs/examples/multifocal-unilobar.toml")
    y90opt.dose(case).summary["dose_gy"]["lung"]            # nominal doses [Gy] at [plan]
    y90opt.simulate(case, samples=100_000, seed=1).summary   # Monte Carlo doses and P(rules)
    result = y90opt.plan(case, samples=100_000, seed=1)      # choose vial and time
    result.summary["recommended"]; result.write_report("results/")
    y90opt.sensitivity(case, samples=8192, seed=1).summary   # Sobol' indices

Functions: :func:`load_case`, :func:`parse_case`, :func:`dose`, :func:`simulate`, :func:`plan`,
:func:`sensitivity`, :func:`cohort`, :func:`virtual_patients`, :func:`trial`, :func:`list_scenarios`. Bad input raises :class:`InputError` (one line naming the file and
the field). See ``docs/api.md``.

Research software: every plan must be checked independently before clinical use.

Importing the package is cheap: JAX, xarray and the rest load on first use.
"""

from ._version import __version__
from .errors import InputError

__all__ = [
    "InputError",
    "__version__",
    "cohort",
    "dose",
    "load_case",
    "parse_case",
    "plan",
    "list_scenarios",
    "measure",
    "sensitivity",
    "simulate",
    "trial",
    "virtual_patients",
    "voxel",
]

_API = {"cohort", "dose", "list_scenarios", "load_case", "measure", "parse_case", "plan", "sensitivity", "simulate", "trial",
        "virtual_patients", "voxel"}


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'y90opt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
