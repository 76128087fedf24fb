"""y90opt: uncertainty-aware planning for Y-90 glass microsphere (TheraSphere) radioembolization.

Research software: every plan must be checked independently before clinical use.

Importing the package is cheap; JAX is imported only by the functions that need it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
