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
    steps = g.shape[0]
    # forward kernel X_{k+1} = a[k] X_k + c[k] + noise; backward X_k = p[k] X_{k+1} + q[k] + noise
    a = (1 + g * reference_slope).expand(steps, m0.shape[0]).clone()
    c = torch.zeros_like(a)
    p, q = torch.ones_like(a), torch.zeros_like(a)
    history = []
    for _ in range(iterations):
        mean, var = m0, v0  # backward half-step: regress on the forward chain (Eq. 12)
        for k in range(steps):
            mean_next, var_next = a[k] * mean + c[k], a[k] ** 2 * var + noise[k]
            beta = a[k] * var / var_next  # E[X_k | X_{k+1}] = mean + beta (X_{k+1} - mean_next)
            p[k] = (1 - a[k]) + a[k] * beta
            q[k] = a[k] * (mean - beta * mean_next)
            mean, var = mean_next, var_next
        mean, var = m1, v1  # forward half-step: regress on the backward chain (Eq. 13)
        for k in reversed(range(steps)):
            mean_prev, var_prev = p[k] * mean + q[k], p[k] ** 2 * var + noise[k]
            beta = p[k] * var / var_prev  # E[X_{k+1} | X_k]
            a[k] = (1 - p[k]) + p[k] * beta
            c[k] = p[k] * (mean - beta * mean_prev)
            mean, var = mean_prev, var_prev
        mean0_hat, var0_hat = mean, var
        means, variances, cross = [m0], [v0], v0.clone()
        for k in range(steps):
            means.append(a[k] * means[-1] + c[k])
            variances.append(a[k] ** 2 * variances[-1] + noise[k])
            cross = a[k] * cross
        history.append(IPFIterate(torch.stack(means), torch.stack(variances), mean0_hat, var0_hat, cross))
    return history
