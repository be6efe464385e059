"""Solvers: one module per method, all built on :class:`sbridge.solvers.base.Solver`."""

from sbridge.solvers.base import SOLVERS, Solver, load
from sbridge.solvers.sgm import SGM

__all__ = ["SGM", "SOLVERS", "Solver", "load"]
