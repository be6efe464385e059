"""Datasets for sbridge, all offline and seeded: 2-D toy distributions and Gaussians (:mod:`sbridge.data.toy`),
entropic-OT pairs whose Schrödinger bridge is known exactly (:mod:`sbridge.data.eot_benchmark`) and images
(:mod:`sbridge.data.images`: scikit-learn's digits, Fashion-MNIST from Debian's package)."""

from . import eot_benchmark, images, toy
from .eot_benchmark import EOTBenchmark

__all__ = ["EOTBenchmark", "eot_benchmark", "images", "toy"]
