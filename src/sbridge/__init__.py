"""sbridge: Schrödinger-bridge generative modelling on PyTorch."""

from sbridge.core.errors import SBridgeError
from sbridge.solvers import (
    DSB,
    DSBM,
    SBFBSDE,
    SBVAE,
    SF2M,
    SGM,
    SOLVERS,
    VSDM,
    Autoencoder,
    BridgeSolver,
    GaussianSB,
    LightSB,
    SchrodingerFollmer,
    Solver,
    load,
)
from sbridge.solvers.latent import LatentBridge

__version__ = "0.1.0"

__all__ = ["DSB", "DSBM", "SBFBSDE", "SBVAE", "SF2M", "SGM", "SOLVERS", "VSDM", "Autoencoder", "BridgeSolver",
           "GaussianSB", "LatentBridge", "LightSB", "SBridgeError", "SchrodingerFollmer", "Solver", "__version__",
           "load"]
