"""Seeded toy distributions for Schrödinger-bridge experiments.

The 2-D sets follow the spread of the usual FFJORD-style benchmarks: points lie roughly inside ``[-4, 4]^2``.
Every generator draws from its own ``numpy.random.Generator`` built from ``seed``; global RNG state is never
touched, so ``sample(name, n, seed)`` returns the same tensor on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_memory, check_positive_int, check_seed

DATASETS: tuple[str, ...] = (
    "checkerboard", "8gaussians", "moons", "swissroll", "spiral", "pinwheel", "circles", "scurve", "gaussian",
)

_Generator = Callable[[np.random.Generator, int], np.ndarray]


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the 8 black squares (side 2, column + row index even) of a 4x4 board over [-4, 4]^2."""
    col = rng.integers(0, 4, size=n)
    row = 2 * rng.integers(0, 2, size=n) + col % 2
    cells = np.stack([col, row], axis=1)
    return -4.0 + 2.0 * (cells + rng.random((n, 2)))


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Equal mixture of 8 isotropic Gaussians (std 0.35) centred at angles k*pi/4 on a circle of radius 2*sqrt(2)."""
    angles = rng.integers(0, 8, size=n) * (np.pi / 4.0)
    centres = 2.0 * np.sqrt(2.0) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + 0.35 * rng.standard_normal((n, 2))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaving half circles (cos t, sin t) and (1 - cos t, 1/2 - sin t), centred, noise std 0.08, x2."""
    t = np.pi * rng.random(n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t)) - 0.5
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t)) - 0.25
    return 2.0 * (np.stack([x, y], axis=1) + 0.08 * rng.standard_normal((n, 2)))


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    """Planar swiss roll (t cos t, t sin t) / 5 with t ~ U[1.5 pi, 4.5 pi] and noise std 0.2."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    return (points + rng.standard_normal((n, 2))) / 5.0


def _spiral(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two-arm spiral +-(-t cos t, t sin t) / 3 with t = 3 pi sqrt(u), u ~ U[0, 1], noise std 0.1."""
    t = 3.0 * np.pi * np.sqrt(rng.random(n))
    arm = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]
    points = arm * np.stack([-t * np.cos(t), t * np.sin(t)], axis=1) / 3.0
    return points + 0.1 * rng.standard_normal((n, 2))


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """5-arm pinwheel: (r, s) ~ N((1, 0), diag(0.3^2, 0.1^2)) rotated by 2 pi k/5 + exp(r)/4, then doubled."""
    radial = 1.0 + 0.3 * rng.standard_normal(n)
    tangential = 0.1 * rng.standard_normal(n)
    angle = 2.0 * np.pi * rng.integers(0, 5, size=n) / 5.0 + 0.25 * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], axis=1)


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Equal mixture of two concentric circles of radius 3 and 1.5 with isotropic noise std 0.2."""
    radius = np.where(rng.random(n) < 0.5, 3.0, 1.5)
    theta = 2.0 * np.pi * rng.random(n)
    points = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return points + 0.2 * rng.standard_normal((n, 2))


def _scurve(rng: np.random.Generator, n: int) -> np.ndarray:
    """(x, z) of the 3-D S-curve: 2 (sin t, sign(t)(cos t - 1)) with t ~ U[-3 pi/2, 3 pi/2] and noise std 0.1."""
    t = 3.0 * np.pi * (rng.random(n) - 0.5)
    points = 2.0 * np.stack([np.sin(t), np.sign(t) * (np.cos(t) - 1.0)], axis=1)
    return points + 0.1 * rng.standard_normal((n, 2))


_GENERATORS: dict[str, _Generator] = {
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "swissroll": _swissroll,
    "spiral": _spiral,
    "pinwheel": _pinwheel,
    "circles": _circles,
    "scurve": _scurve,
}


def describe(name: str) -> str:
    """Return a one-line human description of the dataset ``name`` (the first line of its generator's docstring)."""
    check_choice(name, DATASETS, "dataset")
    if name == "gaussian":
        return "Multivariate normal N(mean, cov) sampled as mean + L z with cov = L L^T (Cholesky) and z ~ N(0, I)."
    return (_GENERATORS[name].__doc__ or "").strip().splitlines()[0]


def _gaussian_params(mean: Any, cov: Any, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and fill in defaults for ``mean`` (zeros) and ``cov`` (identity) of the gaussian dataset."""
    if dim is not None:
        dim = check_positive_int(dim, "dim")
    mean_arr = None if mean is None else _as_finite(mean, "mean", ndim=1)
    cov_arr = None if cov is None else _as_finite(cov, "cov", ndim=2)
    sizes = {len(a) for a in (mean_arr, cov_arr) if a is not None} | ({dim} if dim is not None else set())
    if len(sizes) > 1:
        raise ConfigError(f"gaussian mean, cov and dim disagree on the dimension (got sizes {sorted(sizes)}); "
                          "pass a mean of length d and a (d, d) cov.")
    d = sizes.pop() if sizes else 2
    mean_arr = np.zeros(d) if mean_arr is None else mean_arr
    cov_arr = np.eye(d) if cov_arr is None else cov_arr
    _check_spd(cov_arr)
    return mean_arr, cov_arr


def _as_finite(value: Any, name: str, *, ndim: int) -> np.ndarray:
    """Return ``value`` as a finite float64 array with ``ndim`` dimensions or raise :class:`ConfigError`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"gaussian {name} could not be read as numbers; pass a numeric array.") from None
    if arr.ndim != ndim or arr.size == 0:
        raise ConfigError(f"gaussian {name} has shape {arr.shape} but must be {ndim}-D and non-empty.")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"gaussian {name} contains NaN or Inf; pass finite values.")
    return arr


def _check_spd(cov: np.ndarray) -> None:
    """Raise :class:`ConfigError` unless ``cov`` is square, symmetric and positive definite."""
    if cov.shape[0] != cov.shape[1]:
        raise ConfigError(f"gaussian cov has shape {cov.shape} but must be square (d, d).")
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-8):
        raise ConfigError("gaussian cov is not symmetric; pass a symmetric positive definite matrix.")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ConfigError("gaussian cov is not positive definite (Cholesky failed); "
                          "pass a symmetric matrix with strictly positive eigenvalues.") from None


def _gaussian(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Draw n points mean + z L^T with z ~ N(0, I) and L the Cholesky factor of cov (so Cov = L L^T = cov)."""
    chol = np.linalg.cholesky(cov)
    return mean + rng.standard_normal((n, len(mean))) @ chol.T


def _scale_factors(scale: float | Sequence[float], d: int) -> np.ndarray:
    """Return ``scale`` as ``d`` positive finite per-axis factors or raise :class:`ConfigError`."""
    try:
        factors = np.asarray(scale, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"scale {scale!r} is not numeric; pass a positive number or one per axis.") from None
    if factors.size == 1:
        factors = np.full(d, factors[0])
    if factors.size != d:
        raise ConfigError(f"scale has {factors.size} values but the data has {d} axes; "
                          f"pass one number or exactly {d} values.")
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise ConfigError(f"scale must contain positive finite numbers, got {scale!r}.")
    return factors


def sample(name: str, n: int, seed: int = 0, *, scale: float | Sequence[float] | None = None,
           mean: Any = None, cov: Any = None, dim: int | None = None) -> torch.Tensor:
    """Draw ``n`` points from the toy dataset ``name`` as a float32 tensor of shape ``(n, d)``.

    ``d = 2`` for the 2-D sets; for ``"gaussian"`` the points are ``mean + L z`` with ``cov = L L^T`` and
    ``z ~ N(0, I_d)``, where ``mean`` defaults to zeros, ``cov`` to the identity and ``d`` to ``dim`` (else 2).
    ``scale`` multiplies each axis after generation (one float for all axes or one per axis), so the per-axis
    standard deviation is multiplied by the same factor. The result depends only on ``(name, n, seed, ...)``.
    """
    check_choice(name, DATASETS, "dataset")
    n = check_positive_int(n, "n")
    check_memory(3 * n * 2 * 8, f"drawing {n:,} points of {name!r}", "ask for fewer points (--n-data, --n)")
    rng = np.random.default_rng(check_seed(seed))
    if name == "gaussian":
        points = _gaussian(rng, n, *_gaussian_params(mean, cov, dim))
    else:
        if mean is not None or cov is not None or dim is not None:
            raise ConfigError(f"mean, cov and dim only apply to the 'gaussian' dataset, not {name!r}; drop them.")
        points = _GENERATORS[name](rng, n)
    if scale is not None:
        points = points * _scale_factors(scale, points.shape[1])
    return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
