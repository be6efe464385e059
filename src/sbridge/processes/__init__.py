"""Reference processes: the linear Gaussian SDEs every solver diffuses with (:mod:`.linear`), and the closed-form
Gaussian Schrödinger bridges used as ground truth (:mod:`.gaussian`)."""

from sbridge.processes.linear import (
    OU,
    VE,
    VP,
    Brownian,
    ConstantRate,
    DenseCovariance,
    DiagonalCovariance,
    DriftMatrix,
    GeometricNoise,
    LinearSDE,
    PowerRate,
    Schedule,
    make_drift,
    make_process,
    make_schedule,
)

__all__ = ["OU", "VE", "VP", "Brownian", "ConstantRate", "DenseCovariance", "DiagonalCovariance", "DriftMatrix",
           "GeometricNoise", "LinearSDE", "PowerRate", "Schedule", "make_drift", "make_process", "make_schedule"]
