"""sbridge: Schrödinger-bridge generative modelling on PyTorch."""

from sbridge.errors import SBridgeError
from sbridge.solvers import SGM, SOLVERS, Solver, load

__version__ = "0.1.0"

__all__ = ["SGM", "SOLVERS", "SBridgeError", "Solver", "__version__", "load"]
