"""Datasets for sbridge: seeded 2-D toy distributions and Gaussians (see :mod:`sbridge.data.toy`)."""

from . import toy

__all__ = ["toy"]
