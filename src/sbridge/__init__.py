"""sbridge: Schrödinger-bridge generative modelling on PyTorch."""

from sbridge.errors import SBridgeError
from sbridge.solvers import DSB, DSBM, SBFBSDE, SBVAE, SGM, SOLVERS, VSDM, BridgeSolver, GaussianSB, Solver, load

__version__ = "0.1.0"

__all__ = ["DSB", "DSBM", "SBFBSDE", "SBVAE", "SGM", "SOLVERS", "VSDM", "BridgeSolver", "GaussianSB", "SBridgeError",
           "Solver", "__version__", "load"]
