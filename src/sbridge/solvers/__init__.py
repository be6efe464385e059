"""Solvers: one module per method, all built on :class:`sbridge.solvers.base.Solver`."""

from sbridge.solvers.autoencoder import Autoencoder
from sbridge.solvers.base import SOLVERS, Solver, load
from sbridge.solvers.bridge import BridgeSolver
from sbridge.solvers.dsb import DSB
from sbridge.solvers.dsbm import DSBM
from sbridge.solvers.follmer import SchrodingerFollmer
from sbridge.solvers.gaussian_sb import GaussianSB
from sbridge.solvers.lightsb import LightSB
from sbridge.solvers.sbfbsde import SBFBSDE
from sbridge.solvers.sbvae import SBVAE
from sbridge.solvers.sf2m import SF2M
from sbridge.solvers.sgm import SGM
from sbridge.solvers.vsdm import VSDM

__all__ = ["DSB", "DSBM", "SBFBSDE", "SBVAE", "SF2M", "SGM", "SOLVERS", "VSDM", "Autoencoder", "BridgeSolver",
           "GaussianSB", "LightSB", "SchrodingerFollmer", "Solver", "load"]
