"""DSB's iterative proportional fitting in exact arithmetic, for Gaussian ends with diagonal covariances (maths.md
§D.7): what a DSB run would reach with a perfect regression at every half-step, on the same time grid.

Per dimension everything is affine-Gaussian. With the forward kernel ``X_{k+1} = a_k X_k + c_k + sigma sqrt(gamma_k)
Z`` (``a_k = 1 + gamma_k A_k``, drift ``A_k x + C_k``), the backward half-step's mean-matching target
``X_{k+1} + F_k(X_k) - F_k(X_{k+1})`` (DSB Eq. 12) has, given ``X_{k+1}``, the conditional mean
``(1 - a_k) X_{k+1} + a_k E[X_k | X_{k+1}]``: affine in ``X_{k+1}``, so the best network is that affine map and the
half-step is exact. The forward half-step (Eq. 13) is the mirror image on the backward chain. What remains is DSB's
own approximation: both kernels keep the variance ``sigma^2 gamma_k``, so the fixed point is the Schrödinger bridge
of the discrete chain only up to ``O(gamma)`` (§D.1), and ``iterations`` finite leaves IPF's own error (§D.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_positive_float, check_positive_int

__all__ = ["IPFIterate", "gaussian_ipf"]


@dataclass(frozen=True)
class IPFIterate:
    """Per-dimension moments after one IPF iteration (a backward then a forward half-step): the forward chain's
    marginals from ``p0`` at every grid time (``path_mean``, ``path_var``, shape (N + 1, d)), the backward chain's
    end ``X_0`` from ``p1`` (``mean0``, ``var0``) and the forward chain's ``Cov(X_0, X_N)`` (``cross``), shape (d,).
    """

    path_mean: torch.Tensor
    path_var: torch.Tensor
    mean0: torch.Tensor
    var0: torch.Tensor
    cross: torch.Tensor

    @property
    def mean1(self) -> torch.Tensor:
        """The forward chain's end mean, (d,)."""
        return self.path_mean[-1]

    @property
    def var1(self) -> torch.Tensor:
        """The forward chain's end variance, (d,)."""
        return self.path_var[-1]


def _moments(values: object, name: str) -> torch.Tensor:
    out = torch.atleast_1d(torch.as_tensor(values, dtype=torch.float64))
    if out.dim() != 1 or not torch.isfinite(out).all():
        raise ConfigError(f"{name} must be a finite number or vector (one entry per dimension); got {values!r}.")
    return out


def _chain(slope: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
           noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and variances (N + 1, d) of the affine-Gaussian chain ``Y_{k+1} = slope[k] Y_k + shift[k] +
    N(0, noise[k])`` from ``N(mean, var)``."""
    means, variances = [mean], [var]
    for k in range(slope.shape[0]):
        means.append(slope[k] * means[-1] + shift[k])
        variances.append(slope[k] ** 2 * variances[-1] + noise[k])
    return torch.stack(means), torch.stack(variances)


def gaussian_ipf(mean0: object, var0: object, mean1: object, var1: object, sigma: float, gammas: torch.Tensor,
                 iterations: int, reference_slope: float = 0.0) -> list[IPFIterate]:
    """DSB's IPF between ``N(mean0, diag var0)`` and ``N(mean1, diag var1)`` on the grid of steps ``gammas`` (sum
    1), with exact mean matching (module docstring). The first forward process is the reference with drift
    ``reference_slope * x`` (0: Brownian motion, as between two data sets; ``-sigma**2 / 2``: DSB's generative OU).
    Returns one :class:`IPFIterate` per iteration."""
    sigma = check_positive_float(sigma, "sigma")
    iterations = check_positive_int(iterations, "iterations")
    m0, v0, m1, v1 = (_moments(v, n) for v, n in ((mean0, "mean0"), (var0, "var0"), (mean1, "mean1"), (var1, "var1")))
    m0, v0, m1, v1 = torch.broadcast_tensors(m0, v0, m1, v1)
    if (v0 <= 0).any() or (v1 <= 0).any():
        raise ConfigError("var0 and var1 must be positive: they are the ends' variances per dimension.")
    g = torch.as_tensor(gammas, dtype=torch.float64).reshape(-1, 1)  # (N, 1)
    noise = sigma**2 * g
    # forward kernel X_{k+1} = a[k] X_k + c[k] + noise[k]; backward X_k = p[k] X_{k+1} + q[k] + noise[k]
    a = (1 + g * reference_slope).expand(-1, m0.shape[0])
    c = torch.zeros_like(a)
    forward = _chain(a, c, m0, v0, noise)  # the reference's marginals at every grid time
    history = []
    for _ in range(iterations):
        # backward half-step (Eq. 12) on the forward chain: E[X_k | X_{k+1}] = m_k + beta (X_{k+1} - m_{k+1})
        means, variances = forward
        beta = a * variances[:-1] / variances[1:]
        p, q = (1 - a) + a * beta, a * (means[:-1] - beta * means[1:])
        # forward half-step (Eq. 13) on the backward chain from p1, run in reverse and indexed by grid position
        means, variances = (x.flip(0) for x in _chain(p.flip(0), q.flip(0), m1, v1, noise.flip(0)))
        beta = p * variances[1:] / variances[:-1]  # E[X_{k+1} | X_k]
        a, c = (1 - p) + p * beta, p * (means[1:] - beta * means[:-1])
        forward = _chain(a, c, m0, v0, noise)
        history.append(IPFIterate(*forward, means[0], variances[0], v0 * a.prod(0)))
    return history
