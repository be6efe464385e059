"""Datasets for sbridge, all offline and seeded: 2-D toy distributions and Gaussians (:mod:`sbridge.data.toy`) and
entropic-OT pairs whose Schrödinger bridge is known exactly (:mod:`sbridge.data.eot_benchmark`)."""

from . import eot_benchmark, toy
from .eot_benchmark import EOTBenchmark

__all__ = ["EOTBenchmark", "eot_benchmark", "toy"]
