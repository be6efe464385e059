"""Closed-form Schrödinger bridge (SB) between two Gaussian measures: the ground truth for tests and benchmarks.

The bridge goes from ``mu0 = N(a, A)`` at ``t = 0`` to ``mu1 = N(b, B)`` at ``t = 1`` (maths.md §G; Janati et al.,
"Entropic optimal transport between unbalanced Gaussian measures has a closed form", NeurIPS 2020, Thm 1; Bunne et
al., "The Schrödinger bridge between Gaussian measures has a closed form", AISTATS 2023, Thm 3).

Noise-level conventions (maths.md §G.1). :class:`GaussianBridge` uses the Brownian reference ``dX = sigma dW`` on
``[0, 1]``, so ``sigma**2`` is the variance per unit time. The same static problem appears under other names:

* LightSB and the EOT benchmark of Gushchin et al. use ``epsilon = sigma**2``;
* POT's ``ot.sinkhorn(a, b, M=||x - y||**2, reg=...)`` needs ``reg = 2 * sigma**2`` (see :func:`sinkhorn_reg`);
* papers written as ``min E||x - y||**2 + eps * KL(pi || mu0 x mu1)`` use ``eps = 2 * sigma**2``.

All computations use ``torch.float64`` and every returned tensor is float64. Inputs may be numpy arrays, torch
tensors or nested sequences; a 1-D problem may be given with scalar means and variances.

:class:`LinearGaussianBridge` handles the general linear reference ``dX = c(t) X dt + g(t) dW`` (maths.md §G.5).
Every §G formula that the code uses was derived again and checked numerically in ``tests/test_gaussian.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.validation import as_data_tensor, as_float64, check_positive_float, check_positive_int

__all__ = [
    "GaussianBridge",
    "GaussianNoiseOracle",
    "LinearGaussianBridge",
    "coupling",
    "gaussian_kl",
    "sinkhorn_reg",
]

_DTYPE = torch.float64
_SYM_RTOL = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Input checks and small linear-algebra helpers
# ----------------------------------------------------------------------------------------------------------------
def _as_mean(x: Any, name: str) -> torch.Tensor:
    """Return a mean vector of shape ``(d,)`` (a scalar counts as ``d = 1``)."""
    t = as_float64(x, name)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise DataError(f"mean {name} has shape {tuple(t.shape)} but must be a vector of shape (d,).")
    return t


def _as_covariance(x: Any, name: str) -> torch.Tensor:
    """Return a symmetric positive-definite ``(d, d)`` matrix (a scalar counts as a 1x1 variance)."""
    t = as_float64(x, name)
    if t.ndim == 0:
        t = t.reshape(1, 1)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise DataError(f"covariance {name} has shape {tuple(t.shape)} but must be a square (d, d) matrix.")
    scale = max(1.0, float(t.abs().max()))
    asym = float((t - t.T).abs().max())
    if asym > _SYM_RTOL * scale:
        raise DataError(f"covariance {name} is not symmetric (max |{name} - {name}^T| = {asym:.3g}); "
                        "pass a symmetric matrix.")
    t = 0.5 * (t + t.T)
    eigmin = float(torch.linalg.eigvalsh(t).min())
    if eigmin <= 1e-12 * scale:
        raise DataError(f"covariance {name} is not positive definite (smallest eigenvalue {eigmin:.3g}); "
                        "pass a symmetric positive-definite matrix.")
    return t


def _check_pair(m: torch.Tensor, S: torch.Tensor, mname: str, sname: str) -> None:
    if m.shape[0] != S.shape[0]:
        raise DataError(f"mean {mname} has dimension {m.shape[0]} but covariance {sname} is "
                        f"{S.shape[0]}x{S.shape[0]}; pass a mean and covariance of the same dimension.")


def _check_marginals(a: Any, A: Any, b: Any, B: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    a_t, A_t = _as_mean(a, "a"), _as_covariance(A, "A")
    b_t, B_t = _as_mean(b, "b"), _as_covariance(B, "B")
    _check_pair(a_t, A_t, "a", "A")
    _check_pair(b_t, B_t, "b", "B")
    if a_t.shape[0] != b_t.shape[0]:
        raise DataError(f"the two marginals have different dimensions ({a_t.shape[0]} and {b_t.shape[0]}); "
                        "an SB between Gaussians needs N(a, A) and N(b, B) in the same space.")
    return a_t, A_t, b_t, B_t


def _check_time(t: Any) -> float:
    """Return ``t`` as a float in ``[0, 1]`` or raise :class:`ConfigError`."""
    try:
        if isinstance(t, bool):
            raise TypeError
        v = float(t)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"time t must be a number in [0, 1], got {t!r}.") from None
    if not (0.0 <= v <= 1.0):
        raise ConfigError(f"time t must be in [0, 1], got {t!r}.")
    return v


def _as_points(x: Any, d: int) -> torch.Tensor:
    """Return points of shape ``(n, d)`` in float64; torch inputs keep their autograd graph and device."""
    if isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] == d and x.shape[0] > 0 and x.is_floating_point():
        if not bool(torch.isfinite(x.detach()).all()):
            raise DataError("x contains NaN or Inf; pass finite points of shape (n, d).")
        return x.to(_DTYPE)
    return as_data_tensor(x, name="x", dim=d, dtype=_DTYPE)


def _sym_sqrt_and_inv(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric square root ``S^{1/2}`` and its inverse for a symmetric positive-definite ``S``."""
    w, V = torch.linalg.eigh(S)
    w = w.clamp_min(0.0)
    sq = w.sqrt()
    return (V * sq) @ V.T, (V / sq) @ V.T


def _psd_factor(S: torch.Tensor) -> torch.Tensor:
    """A matrix ``L`` with ``L L^T = S`` for symmetric positive-semidefinite ``S`` (Cholesky, else eigh)."""
    S = 0.5 * (S + S.T)
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) == 0:
        return L
    w, V = torch.linalg.eigh(S)
    return V * w.clamp_min(0.0).sqrt()


def _eot_cross_cov(A: torch.Tensor, B: torch.Tensor, sigma2: float) -> torch.Tensor:
    """C_sigma = Cov(X0, X1) of the EOT coupling for variance ``sigma2`` per unit time (maths.md §G.2).

    Uses the symmetric form ``C = 1/2 A^{1/2} (D - sigma^2 I) A^{-1/2}`` with ``D = (4K + sigma^4 I)^{1/2}`` and
    ``K = A^{1/2} B A^{1/2}``. Since ``D`` is a function of ``K``, ``D - sigma^2 I = 4K (D + sigma^2 I)^{-1}``;
    in the eigenbasis of ``K`` (eigenvalues k) this is ``4k / (sqrt(4k + sigma^4) + sigma^2)``, which avoids the
    cancellation of ``D - sigma^2 I`` for large sigma and tends to ``2 sqrt(k)`` (the OT limit) as sigma -> 0.
    """
    A_half, A_mhalf = _sym_sqrt_and_inv(A)
    K = A_half @ B @ A_half
    k, U = torch.linalg.eigh(0.5 * (K + K.T))
    k = k.clamp_min(0.0)
    s4 = sigma2 * sigma2
    lam = 2.0 * k / (torch.sqrt(4.0 * k + s4) + sigma2)
    return A_half @ ((U * lam) @ U.T) @ A_mhalf


# ----------------------------------------------------------------------------------------------------------------
# Public helpers
# ----------------------------------------------------------------------------------------------------------------
def sinkhorn_reg(sigma: float) -> float:
    """POT ``reg`` for the Brownian reference ``sigma W``: ``reg = 2 sigma**2`` (maths.md §G.1).

    ``ot.sinkhorn(w0, w1, M=||x - y||**2, reg=sinkhorn_reg(sigma))`` solves
    ``min E||X0 - X1||**2 + 2 sigma**2 KL(pi || mu0 x mu1)``, the static SB problem for ``dX = sigma dW``.
    """
    s = check_positive_float(sigma, "sigma")
    return 2.0 * s * s


def coupling(a: Any, A: Any, b: Any, B: Any, sigma: float) -> torch.Tensor:
    """Cross-covariance ``C_sigma = Cov(X0, X1)`` of the static SB / EOT coupling between N(a, A) and N(b, B).

    maths.md §G.2 (Janati et al. 2020, Thm 1):
    ``C_sigma = 1/2 (A^{1/2} D_sigma A^{-1/2} - sigma^2 I)`` with ``D_sigma = (4 A^{1/2} B A^{1/2} + sigma^4 I)^{1/2}``,
    equal to ``(A B + sigma^4/4 I)^{1/2} - sigma^2/2 I``. The coupling is
    ``N([a; b], [[A, C], [C^T, B]])``; ``C`` does not depend on the means and is in general not symmetric.
    It is the unique C for which the joint precision has off-diagonal block ``-I / sigma^2``, i.e. for which the
    joint density has the Schrödinger product form ``phi(x) exp(-|x - y|^2 / (2 sigma^2)) psi(y)``.
    """
    s = check_positive_float(sigma, "sigma")
    _, A_t, _, B_t = _check_marginals(a, A, b, B)
    return _eot_cross_cov(A_t, B_t, s * s)


def gaussian_kl(m0: Any, S0: Any, m1: Any, S1: Any) -> float:
    """``KL(N(m0, S0) || N(m1, S1))`` in nats.

    ``1/2 [ tr(S1^{-1} S0) + (m1 - m0)^T S1^{-1} (m1 - m0) - d + log det S1 - log det S0 ]``.
    """
    m0_t, S0_t, m1_t, S1_t = _check_marginals(m0, S0, m1, S1)
    return _kl(m0_t, S0_t, m1_t, S1_t)


def _kl(m0: torch.Tensor, S0: torch.Tensor, m1: torch.Tensor, S1: torch.Tensor) -> float:
    L1 = torch.linalg.cholesky(S1)
    L0 = torch.linalg.cholesky(S0)
    d = m0.shape[0]
    M = torch.linalg.solve_triangular(L1, L0, upper=False)
    diff = torch.linalg.solve_triangular(L1, (m1 - m0).unsqueeze(1), upper=False)
    logdet1 = 2.0 * torch.log(torch.diagonal(L1)).sum()
    logdet0 = 2.0 * torch.log(torch.diagonal(L0)).sum()
    kl = 0.5 * ((M * M).sum() + (diff * diff).sum() - d + logdet1 - logdet0)
    return float(kl)


# ----------------------------------------------------------------------------------------------------------------
# Shared machinery: an SB between Gaussians for a linear reference is a Gauss-Markov process with
#   X_t = rbar(t) X0 + r(t) X1 + tau(t) Y_t,
# (X0, X1) ~ the static coupling, and Y a Brownian bridge from 0 to 0 run with the clock xi(t) (independent of X0, X1).
# ----------------------------------------------------------------------------------------------------------------
class _GaussianSBBase:
    a: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    dim: int

    # --- to be provided by subclasses ---------------------------------------------------------------------------
    def _coefficients(self, t: float) -> tuple[float, float, float, float]:
        """(rbar(t), r(t), tau(t), xi(t))."""
        raise NotImplementedError

    def _xi1(self) -> float:
        raise NotImplementedError

    def _diffusion_sq(self, t: float) -> float:
        """Squared diffusion coefficient g(t)^2 of the reference."""
        raise NotImplementedError

    def _mean_dot(self, t: float) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, t: float) -> torch.Tensor:
        raise NotImplementedError

    def cov(self, t: float) -> torch.Tensor:
        raise NotImplementedError

    def drift_matrix(self, t: float) -> torch.Tensor:
        raise NotImplementedError

    # --- shared methods -----------------------------------------------------------------------------------------
    def _centered(self, t: float, x: Any) -> torch.Tensor:
        x_t = _as_points(x, self.dim)
        return x_t - self.mean(t).to(x_t.device)

    def drift(self, x: Any, t: float) -> torch.Tensor:
        """SB SDE drift ``f(t, x) = mu'(t) + M_t (x - mu_t)`` for points ``x`` of shape (n, d) (§G.4 / §G.5)."""
        t = _check_time(t)
        xc = self._centered(t, x)
        M = self.drift_matrix(t).to(xc.device)
        return self._mean_dot(t).to(xc.device) + xc @ M.T

    def score(self, x: Any, t: float) -> torch.Tensor:
        """Score of the time-t marginal: ``grad log p_t(x) = -Sigma_t^{-1} (x - mu_t)`` (maths.md §G.3)."""
        t = _check_time(t)
        xc = self._centered(t, x)
        S = self.cov(t).to(xc.device)
        return -torch.linalg.solve(S, xc.T).T

    def velocity(self, x: Any, t: float) -> torch.Tensor:
        """Probability-flow ODE velocity ``v = f - g(t)^2/2 grad log p_t`` (maths.md §1.1, §G.4).

        Integrating ``dx/dt = v(t, x)`` from ``X0 ~ N(a, A)`` transports the SB marginals, so ``x(1) ~ N(b, B)``.
        """
        t = _check_time(t)
        return self.drift(x, t) - 0.5 * self._diffusion_sq(t) * self.score(x, t)

    def backward_drift(self, x: Any, t: float) -> torch.Tensor:
        """Drift of the time reversal written in reverse time, ``g(t)^2 grad log p_t - f`` (maths.md §1.1, §G.4): the
        reversed process ``Y_s = X_{1-s}`` solves ``dY = backward_drift(Y, 1 - s) ds + g dW`` (the convention of the
        bridge solvers' ``backward_drift``)."""
        t = _check_time(t)
        return self._diffusion_sq(t) * self.score(x, t) - self.drift(x, t)

    def conditional(self, x0: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of ``X1 | X0 = x0`` under the static coupling (maths.md §G.2).

        ``mean = b + C^T A^{-1} (x0 - a)`` (same shape as ``x0``: (d,) or (n, d)); ``cov = B - C^T A^{-1} C``.
        """
        single = False
        if not isinstance(x0, torch.Tensor):
            x0 = as_float64(x0, "x0")
        if x0.ndim == 1:
            single = True
            x0 = x0.unsqueeze(0)
        x0_t = _as_points(x0, self.dim).detach()
        gain = torch.linalg.solve(self.A, self.C)  # A^{-1} C, so that rows map as (x0 - a) @ A^{-1} C
        mean = self.b + (x0_t - self.a) @ gain
        cov = self.B - self.C.T @ gain
        cov = 0.5 * (cov + cov.T)
        return (mean[0] if single else mean), cov

    def sample_coupling(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples ``(x0, x1)``, each (n, d), of the coupling ``N([a; b], [[A, C], [C^T, B]])`` (§G.2)."""
        n = check_positive_int(n, "n")
        d = self.dim
        z = torch.randn(n, 2 * d, generator=generator, dtype=_DTYPE)
        x0 = self.a + z[:, :d] @ _psd_factor(self.A).T
        mean, cov = self.conditional(x0)
        x1 = mean + z[:, d:] @ _psd_factor(cov).T
        return x0, x1

    def sample_path(self, n: int, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact joint samples of the bridge at ``t_k = k / steps``; returns shape (steps + 1, n, d).

        Draws ``(X0, X1)`` from the coupling, then ``X_t = rbar(t) X0 + r(t) X1 + tau(t) Y_t`` where ``Y`` is a
        Brownian bridge from 0 to 0 in the clock ``xi`` (for the Brownian reference: ``rbar = 1 - t``, ``r = t``,
        ``tau = 1``, ``xi = sigma^2 t``, maths.md §G.3). ``Y`` is sampled sequentially from its exact transition
        ``Y_t | Y_s = y ~ N(y (xi1 - xi_t)/(xi1 - xi_s), (xi_t - xi_s)(xi1 - xi_t)/(xi1 - xi_s))``, so the joint law
        of the whole grid is exact, not only each marginal.
        """
        n = check_positive_int(n, "n")
        steps = check_positive_int(steps, "steps")
        x0, x1 = self.sample_coupling(n, generator=generator)
        out = torch.empty(steps + 1, n, self.dim, dtype=_DTYPE)
        out[0] = x0
        out[steps] = x1
        xi1 = self._xi1()
        y = torch.zeros(n, self.dim, dtype=_DTYPE)
        xi_prev = 0.0
        for k in range(1, steps):
            t = k / steps
            rbar, r, tau, xi = self._coefficients(t)
            remaining = xi1 - xi_prev
            shrink = (xi1 - xi) / remaining
            var = max((xi - xi_prev) * (xi1 - xi) / remaining, 0.0)
            y = shrink * y + math.sqrt(var) * torch.randn(n, self.dim, generator=generator, dtype=_DTYPE)
            out[k] = rbar * x0 + r * x1 + tau * y
            xi_prev = xi
        return out

    def kl_marginal(self, t: float, mean: Any, cov: Any) -> float:
        """``KL( N(mean, cov) || N(mu_t, Sigma_t) )`` in nats: how far a learned marginal is from the truth."""
        t = _check_time(t)
        m, S = _as_mean(mean, "mean"), _as_covariance(cov, "cov")
        _check_pair(m, S, "mean", "cov")
        if m.shape[0] != self.dim:
            raise DataError(f"mean has dimension {m.shape[0]} but the bridge has dimension {self.dim}; "
                            "pass a mean and covariance of the bridge's dimension.")
        return _kl(m, S, self.mean(t), self.cov(t))


class GaussianBridge(_GaussianSBBase):
    """Schrödinger bridge from N(a, A) to N(b, B) for the Brownian reference ``dX = sigma dW`` on [0, 1] (§G.2-G.4).

    Attributes: ``a, A, b, B`` (float64 tensors), ``sigma``, ``dim`` and ``C`` = ``Cov(X0, X1)`` of the coupling.
    """

    def __init__(self, a: Any, A: Any, b: Any, B: Any, sigma: float = 1.0) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        self.a, self.A, self.b, self.B = _check_marginals(a, A, b, B)
        self.dim = int(self.a.shape[0])
        self.C = _eot_cross_cov(self.A, self.B, self.sigma**2)
        self._eye = torch.eye(self.dim, dtype=_DTYPE)

    def __repr__(self) -> str:
        return f"GaussianBridge(dim={self.dim}, sigma={self.sigma})"

    def _coefficients(self, t: float) -> tuple[float, float, float, float]:
        return 1.0 - t, t, 1.0, self.sigma**2 * t

    def _xi1(self) -> float:
        return self.sigma**2

    def _diffusion_sq(self, t: float) -> float:
        return self.sigma**2

    def _mean_dot(self, t: float) -> torch.Tensor:
        return self.b - self.a

    def mean(self, t: float) -> torch.Tensor:
        """Marginal mean ``mu_t = (1 - t) a + t b`` (maths.md §G.3)."""
        t = _check_time(t)
        return (1.0 - t) * self.a + t * self.b

    def cov(self, t: float) -> torch.Tensor:
        """Marginal covariance ``Sigma_t = (1-t)^2 A + t^2 B + t(1-t)(C + C^T + sigma^2 I)`` (maths.md §G.3)."""
        t = _check_time(t)
        S = (1 - t) ** 2 * self.A + t**2 * self.B + t * (1 - t) * (self.C + self.C.T + self.sigma**2 * self._eye)
        return 0.5 * (S + S.T)

    def drift_matrix(self, t: float) -> torch.Tensor:
        """Linear part ``M_t = S_t^T Sigma_t^{-1}`` of the drift ``f(t, x) = (b - a) + M_t (x - mu_t)`` (§G.4).

        ``S_t^T = Cov(X1 - X0, X_t) - sigma^2 t I = (1-t)(C^T - A) + t(B - C) - sigma^2 t I`` (Bunne et al. 2023,
        Thm 3); equivalently ``f(t, x) = (E[X1 | X_t = x] - x) / (1 - t)``. ``M_t`` is symmetric (the SB drift is a
        gradient field) and satisfies the covariance ODE ``Sigma_t' = M_t Sigma_t + Sigma_t M_t^T + sigma^2 I``.
        """
        t = _check_time(t)
        St_T = (1 - t) * (self.C.T - self.A) + t * (self.B - self.C) - self.sigma**2 * t * self._eye
        return torch.linalg.solve(self.cov(t), St_T.T).T  # S^T Sigma^{-1} = (Sigma^{-1} S)^T, Sigma symmetric


class _LinearSchedule:
    """``int_0^t c``, ``xi(t) = int_0^t g^2 exp(-2 int_0^s c) ds`` by composite 8-point Gauss-Legendre quadrature.

    ``[0, 1]`` is cut into ``n_panels`` equal panels whose cumulative integrals are computed once; a query adds the
    partial panel containing ``t``. For smooth ``c`` and ``g`` the error is at round-off level.
    """

    _rule = [(float(x), float(w)) for x, w in np.stack(np.polynomial.legendre.leggauss(8), axis=1)]

    def __init__(self, c: Callable[[float], float], g: Callable[[float], float], n_panels: int) -> None:
        self.c, self.g, self.n = c, g, n_panels
        self.edges = np.linspace(0.0, 1.0, n_panels + 1)
        self.int_c_edges = np.zeros(n_panels + 1)
        self.xi_edges = np.zeros(n_panels + 1)
        for k in range(n_panels):
            lo, hi = self.edges[k], self.edges[k + 1]
            self.int_c_edges[k + 1] = self.int_c_edges[k] + self._gl(self.c_at, lo, hi)
        for k in range(n_panels):
            lo, hi = self.edges[k], self.edges[k + 1]
            self.xi_edges[k + 1] = self.xi_edges[k] + self._gl(self._xi_integrand, lo, hi)

    @staticmethod
    def _value(fn: Callable[[float], float], name: str, s: float) -> float:
        try:
            v = float(fn(s))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}(t) must return a real number, but {name}({s:.4g}) failed ({exc}).") from None
        if not math.isfinite(v):
            raise ConfigError(f"{name}(t) must be finite on [0, 1], but {name}({s:.4g}) = {v}.")
        return v

    def c_at(self, s: float) -> float:
        return self._value(self.c, "c", s)

    def g_at(self, s: float) -> float:
        return self._value(self.g, "g", s)

    def _gl(self, fn: Callable[[float], float], lo: float, hi: float) -> float:
        if hi <= lo:
            return 0.0
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        return half * sum(w * fn(mid + half * x) for x, w in self._rule)

    def _panel(self, t: float) -> int:
        return min(max(int(np.searchsorted(self.edges, t, side="right")) - 1, 0), self.n - 1)

    def int_c(self, t: float) -> float:
        k = self._panel(t)
        return float(self.int_c_edges[k]) + self._gl(self.c_at, float(self.edges[k]), t)

    def _xi_integrand(self, s: float) -> float:
        return self.g_at(s) ** 2 * math.exp(-2.0 * self.int_c(s))

    def xi(self, t: float) -> float:
        k = self._panel(t)
        return float(self.xi_edges[k]) + self._gl(self._xi_integrand, float(self.edges[k]), t)


class LinearGaussianBridge(_GaussianSBBase):
    """SB from N(a, A) to N(b, B) for the linear reference ``dX = c(t) X dt + g(t) dW`` on [0, 1] (maths.md §G.5).

    Notation (§G.5): ``tau(t) = exp int_0^t c``, ``xi(t) = int_0^t g^2 tau^{-2}``, ``kappa(t, t') = tau(t) tau(t')
    xi(t)`` for ``t <= t'``, ``r = kappa(t, 1)/kappa(1, 1) = tau xi / (tau1 xi1)``, ``rbar = tau - r tau1 =
    tau (1 - rho)``, ``rho = xi / xi1``, ``sigma_star^2 = kappa(1, 1)/tau(1) = tau1 xi1``.

    * Coupling: ``C = C_{sigma_star}(A, B)``. The reference transition is ``N(tau1 x0, tau1^2 xi1)``, whose cross term
      ``x0.x1 / (tau1 xi1)`` is the Brownian one with ``sigma^2 = tau1 xi1``.
    * Marginals: ``mu_t = rbar a + r b``; ``Sigma_t = rbar^2 A + r^2 B + r rbar (C + C^T) + kappa(t,t)(1 - rho) I``
      (the reference bridge from x0 to x1 has mean ``rbar x0 + r x1`` and covariance ``kappa(t,t)(1 - rho) I``).
    * Drift: ``f(t, x) = mu'_t + S_t^T Sigma_t^{-1} (x - mu_t)`` with
      ``S_t^T = r' (rbar C^T + r B) + rbar' (rbar A + r C) + [c kappa(t,t)(1 - rho) - g^2 rho] I``,
      ``r' = c r + g^2/(tau tau1 xi1)``, ``rbar' = c rbar - g^2/(tau xi1)``.

    The §G.5 formulas (tagged as coming from notes) were re-derived: the SB is the Markovian projection of the
    mixture of reference bridges ``rbar X0 + r X1 + zeta_t``, and the pinned bridge ``zeta`` has drift
    ``(c - g^2/(tau^2 (xi1 - xi))) zeta``; projecting gives exactly the ``S_t`` above, i.e. §G.5 with ``S_t = P_t -
    Q_t^T + [...] I``, ``P_t = r'(r B + rbar C)``, ``Q_t = -rbar'(rbar A + r C)``. No correction was needed; the tests
    check it against Euler-Maruyama simulation and against :class:`GaussianBridge` for ``c = 0``, ``g = sigma``.

    ``c`` and ``g`` are functions of a float time; ``n_quad`` is the number of Gauss-Legendre panels (8 nodes each)
    used for ``int c`` and ``xi``.
    """

    def __init__(self, a: Any, A: Any, b: Any, B: Any, c: Callable[[float], float], g: Callable[[float], float],
                 n_quad: int = 64) -> None:
        if not callable(c) or not callable(g):
            raise ConfigError("c and g must be functions of time t (float -> float), e.g. c=lambda t: -0.5.")
        n_quad = check_positive_int(n_quad, "n_quad")
        self.a, self.A, self.b, self.B = _check_marginals(a, A, b, B)
        self.dim = int(self.a.shape[0])
        self._eye = torch.eye(self.dim, dtype=_DTYPE)
        self.c, self.g = c, g
        self._sched = _LinearSchedule(c, g, n_quad)
        self._tau1 = math.exp(self._sched.int_c(1.0))
        self._xi1_val = self._sched.xi(1.0)
        if not (self._xi1_val > 0.0 and math.isfinite(self._xi1_val) and math.isfinite(self._tau1)):
            raise ConfigError("the reference dX = c X dt + g dW has no noise on [0, 1] (xi(1) = 0); "
                              "g must be nonzero on part of [0, 1].")
        self.sigma_star = math.sqrt(self._tau1 * self._xi1_val)
        self.C = _eot_cross_cov(self.A, self.B, self.sigma_star**2)
        self._cache: dict[float, tuple[float, ...]] = {}

    def __repr__(self) -> str:
        return f"LinearGaussianBridge(dim={self.dim}, sigma_star={self.sigma_star:.6g})"

    def tau(self, t: float) -> float:
        """``tau(t) = exp int_0^t c(s) ds`` (maths.md §G.5)."""
        return self._schedule(_check_time(t))[2]

    def xi(self, t: float) -> float:
        """``xi(t) = int_0^t g(s)^2 tau(s)^{-2} ds`` (maths.md §G.5)."""
        return self._schedule(_check_time(t))[3]

    def _schedule(self, t: float) -> tuple[float, ...]:
        """(rbar, r, tau, xi, rbar', r', bridge variance kappa(t,t)(1-rho), rho, c_t, g_t^2) at time t."""
        hit = self._cache.get(t)
        if hit is not None:
            return hit
        tau = math.exp(self._sched.int_c(t))
        xi = self._sched.xi(t)
        tau1, xi1 = self._tau1, self._xi1_val
        rho = xi / xi1
        r = tau * xi / (tau1 * xi1)
        rbar = tau * (1.0 - rho)
        c_t = self._sched.c_at(t)
        g2 = self._sched.g_at(t) ** 2
        dr = c_t * r + g2 / (tau * tau1 * xi1)
        drbar = c_t * rbar - g2 / (tau * xi1)
        var_bridge = tau * tau * xi * (1.0 - rho)
        out = (rbar, r, tau, xi, drbar, dr, var_bridge, rho, c_t, g2)
        if len(self._cache) < 100_000:
            self._cache[t] = out
        return out

    def _coefficients(self, t: float) -> tuple[float, float, float, float]:
        rbar, r, tau, xi = self._schedule(t)[:4]
        return rbar, r, tau, xi

    def _xi1(self) -> float:
        return self._xi1_val

    def _diffusion_sq(self, t: float) -> float:
        return self._schedule(t)[9]

    def _mean_dot(self, t: float) -> torch.Tensor:
        _, _, _, _, drbar, dr, *_ = self._schedule(t)
        return drbar * self.a + dr * self.b

    def mean(self, t: float) -> torch.Tensor:
        """Marginal mean ``mu_t = rbar(t) a + r(t) b`` (maths.md §G.5)."""
        rbar, r = self._schedule(_check_time(t))[:2]
        return rbar * self.a + r * self.b

    def cov(self, t: float) -> torch.Tensor:
        """``Sigma_t = rbar^2 A + r^2 B + r rbar (C + C^T) + kappa(t,t)(1 - rho(t)) I`` (maths.md §G.5)."""
        rbar, r, _, _, _, _, var_bridge, *_ = self._schedule(_check_time(t))
        S = rbar**2 * self.A + r**2 * self.B + r * rbar * (self.C + self.C.T) + var_bridge * self._eye
        return 0.5 * (S + S.T)

    def drift_matrix(self, t: float) -> torch.Tensor:
        """Linear part ``M_t = S_t^T Sigma_t^{-1}`` of ``f(t, x) = mu'_t + M_t (x - mu_t)`` (maths.md §G.5).

        ``S_t^T = r'(rbar C^T + r B) + rbar'(rbar A + r C) + [c_t kappa(t,t)(1 - rho) - g_t^2 rho] I``; ``M_t`` is
        symmetric and satisfies ``Sigma_t' = M_t Sigma_t + Sigma_t M_t^T + g_t^2 I``.
        """
        t = _check_time(t)
        rbar, r, _, _, drbar, dr, var_bridge, rho, c_t, g2 = self._schedule(t)
        St_T = (dr * (rbar * self.C.T + r * self.B) + drbar * (rbar * self.A + r * self.C)
                + (c_t * var_bridge - g2 * rho) * self._eye)
        return torch.linalg.solve(self.cov(t), St_T.T).T


class GaussianNoiseOracle(torch.nn.Module):
    """The exact noise prediction for data ``N(mean, cov)`` under a linear reference process: an oracle network.

    For ``X_0 ~ N(m, S)`` and the transition ``X_t | X_0 ~ N(M_t X_0, Sigma_t)`` of a
    :class:`~sbridge.processes.linear.LinearSDE`, the marginal is ``N(M_t m, M_t S M_t^T + Sigma_t)`` and its score is
    ``s = -(M_t S M_t^T + Sigma_t)^{-1}(x - M_t m)``; the network returns the noise ``eps = -L_t^T s`` that a
    denoising-score-matching network would learn (``L_t`` the Cholesky factor of ``Sigma_t``, so that the solver's
    ``-L_t^{-T} eps`` gives ``s`` back). It reads the process at call time, so it stays exact while a solver changes
    the process (VSDM's ``A``). Call :meth:`bind` with the solver's process (on the model and its EMA copy): the
    process is held as a reference, not a submodule. A zero-valued dummy parameter keeps optimisers content.
    Vectors ``(batch, d)`` only; float64 inside.
    """

    def __init__(self, mean: Any, cov: Any) -> None:
        super().__init__()
        self.register_buffer("mean", _as_mean(mean, "mean"))
        self.register_buffer("cov", _as_covariance(cov, "cov"))
        if self.cov.shape[0] != self.mean.shape[0]:
            raise DataError(f"mean has {self.mean.shape[0]} entries but cov is {tuple(self.cov.shape)}.")
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def bind(self, process: Any) -> GaussianNoiseOracle:
        """Use ``process`` (a :class:`~sbridge.processes.linear.LinearSDE`) as the reference; returns ``self``."""
        self.__dict__["process"] = process
        return self

    def forward(self, x: torch.Tensor, t: float | torch.Tensor, cond: Any = None) -> torch.Tensor:
        process = self.__dict__.get("process")
        if process is None:
            raise ConfigError("GaussianNoiseOracle needs its reference process: call .bind(solver.reference) first.")
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise DataError(f"GaussianNoiseOracle takes vectors of shape (batch, {self.mean.shape[0]}), got "
                            f"{tuple(x.shape)}.")
        y = x.to(_DTYPE)  # differentiable in x: divergences of the oracle score are exact too
        t = torch.as_tensor(t, dtype=_DTYPE).expand(y.shape[0])
        mean, sigma_t = process.marginal(self.mean.expand_as(y), t)
        M, _ = process._transition(t, y)
        if M is None:
            M = torch.eye(y.shape[1], dtype=_DTYPE)
        elif M.shape[-2:] != (y.shape[1], y.shape[1]):  # an elementwise (scalar or diagonal) factor
            M = torch.diag_embed(M.expand_as(y))
        sigma = sigma_t.dense(y)
        total = M @ self.cov @ M.transpose(-1, -2) + sigma
        score = -torch.linalg.solve(total, (y - mean).unsqueeze(-1))
        L = torch.linalg.cholesky(sigma)
        eps = -(L.transpose(-1, -2) @ score).squeeze(-1)
        return eps.to(x.dtype) + 0 * self.dummy
