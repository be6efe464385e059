"""Entropic-OT / Schrödinger-bridge benchmark pairs whose solution is known exactly (maths.md §H).

The construction is the one of Gushchin et al., "Building the Bridge of Schrödinger: A Continuous Entropic Optimal
Transport Benchmark" (NeurIPS 2023 Datasets & Benchmarks, arXiv 2306.10161), maths.md §H.1. The published
benchmark ships its mixtures as data files; :class:`EOTBenchmark` instead draws the same kind of mixtures from a
seed, so every pair is reproducible without downloads (the numbers differ from the published files).

Conventions (maths.md §G.1): the reference process is ``dX = sqrt(eps) dW`` on ``[0, 1]``, i.e. ``eps = sigma**2``
is the variance per unit time; the static problem is ``min E|X0 - X1|^2 + 2 eps KL(pi || P0 x P1)``, which POT
solves with ``ot.sinkhorn(a, b, M=|x - y|^2, reg=2 * eps)``.

Construction (maths.md §H.1). Pick any input law ``P0`` (here a Gaussian mixture) and any positive potential
``f(y) = sum_k p_k N(y | mu_k, Sigma_k)``. The plan

    pi*(x, y) = p0(x) N(y | x, eps I) f(y) / Z(x),        Z(x) = int N(y | x, eps I) f(y) dy,

has the Schrödinger product form ``a(x) exp(-|x - y|^2 / (2 eps)) b(y)`` with ``b = f``, so it *is* the EOT plan
between its marginals ``P0`` and ``P1 := int pi*(. | x) dP0(x)``, for every ``P0`` and every ``f``. Completing
the square in ``N(y | x, eps I) N(y | mu_k, Sigma_k)`` gives the conditional plan in closed form:

    pi*(y | x) = sum_k w_k(x) N(y | Sigma~_k (Sigma_k^{-1} mu_k + x / eps), Sigma~_k),
    Sigma~_k = (I / eps + Sigma_k^{-1})^{-1},        w_k(x) ∝ p_k N(x | mu_k, Sigma_k + eps I).

The dynamic SB is the reference conditioned by the Doob h-transform with ``h(t, x) = E[f(X_1) | X_t = x]``:

    h(t, x) = int N(y | x, eps (1 - t) I) f(y) dy = sum_k p_k N(x | mu_k, Sigma_k + eps (1 - t) I),
    drift(t, x) = eps grad_x log h(t, x),

which matches the ``GroundTruthSDE`` of §H.1. At ``t = 0`` the identity ``eps grad log h(0, x) = E[X1 | X0 = x] - x``
holds exactly (differentiate ``Z(x)`` under the integral); the tests check it together with quadrature and
autograd versions of ``h``.

Scale. Input means are drawn from ``N(0, 1.5^2 I)`` and input covariances have eigenvalues in ``[0.1, 0.6]``;
potential means are drawn from ``N(0, 2^2 I)`` and ``Sigma_k = eps S_k`` with eigenvalues of ``S_k`` in
``[0.5, 2]``. Scaling ``Sigma_k`` with ``eps`` keeps the problem non-trivial at every ``eps``: component ``k`` moves
``x`` the fraction ``(S_k + I)^{-1}`` of the way to ``mu_k`` (``E[y | x, k] = (S_k + I)^{-1}(S_k x + mu_k)``),
with conditional covariance ``eps (I + S_k^{-1})^{-1}``, and the SB drift stays O(1) instead of vanishing as
``eps -> 0``. These are ``family="rotated"`` pairs; ``family="isotropic"`` builds the kind of pair the published
files hold (maths.md §H.2).

Every parameter is computed in float64; samples and moments are returned as float32 tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.tensors import logsumexp, softmax
from sbridge.core.validation import as_data_tensor, check_choice, check_positive_float, check_positive_int
from sbridge.processes.linear import Brownian

__all__ = ["EOTBenchmark"]

_DTYPE = torch.float64
_OUT = torch.float32
_LOG_2PI = math.log(2.0 * math.pi)
_X1_VAR_SAMPLES = 100_000
_CHUNK = 20_000

# Ranges of the random mixtures (see the module docstring).
_INPUT_MEAN_STD = 1.5
_INPUT_EIGS = (0.1, 0.6)
_POTENTIAL_MEAN_STD = 2.0
_POTENTIAL_EIGS = (0.5, 2.0)  # eigenvalues of S_k, with Sigma_k = eps S_k

#: ``family="isotropic"``, the kind of pair the published files hold (maths.md §H.2): grid spacing of the input and
#: potential means, the input standard deviation, and the potential's standard deviation ``0.5 * scale`` per
#: published cell, ``{eps: {dim: scale}}`` (as in the benchmark authors' generator notebook).
_ISO_INPUT_SPACING, _ISO_POTENTIAL_SPACING, _ISO_INPUT_STD = 2.0, 1.0, 0.5
_ISO_POTENTIAL_SCALE = {0.1: {2: 0.5, 16: 1.0, 64: 8.0, 128: 8.0}, 1.0: {2: 0.5, 16: 1.0, 64: 2.0, 128: 2.0},
                        10.0: {2: 0.5, 16: 1.0, 64: 2.0, 128: 2.0}}
FAMILIES = ("rotated", "isotropic")


def _check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as a non-negative int or raise :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-distributed orthogonal (d, d) matrix: QR of a Gaussian matrix with the signs of diag(R) fixed."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def _random_mixture(rng: np.random.Generator, k: int, d: int, mean_std: float,
                    eigs: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights (k,), means (k, d), eigenvectors (k, d, d) and eigenvalues (k, d) of a random Gaussian mixture.

    Weights are ``1/(2k) + Dirichlet(1,...,1)/2`` (no component below half the uniform weight); covariances are
    ``U diag(lam) U^T`` with a Haar rotation ``U`` and ``lam`` uniform in ``eigs``.
    """
    weights = 0.5 / k + 0.5 * rng.dirichlet(np.ones(k))
    weights = weights / weights.sum()
    means = mean_std * rng.standard_normal((k, d))
    rotations = np.stack([_random_rotation(rng, d) for _ in range(k)])
    lams = rng.uniform(eigs[0], eigs[1], size=(k, d))
    return weights, means, rotations, lams


def _grid_mixture(rng: np.random.Generator, k: int, d: int, spacing: float,
                  std: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights (k,), means (k, d), eigenvectors (identity) and eigenvalues (``std**2``) of an isotropic mixture whose
    means lie on a grid: in every coordinate the k components take the values ``spacing * (j - (k - 1) / 2)``,
    ``j = 0..k-1``, in a random order; weights uniform in (0, 1), normalised."""
    weights = rng.uniform(size=k)
    weights = weights / weights.sum()
    order = np.stack([rng.permutation(k) for _ in range(d)], axis=1)  # (k, d)
    means = spacing * (order - (k - 1) / 2)
    rotations = np.broadcast_to(np.eye(d), (k, d, d)).copy()
    return weights, means, rotations, np.full((k, d), std**2)


def _generator_from(*words: int) -> torch.Generator:
    """A CPU torch generator seeded from a tuple of integers via numpy's SeedSequence (deterministic)."""
    state = int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(state)


#: Elements of the (rows, K, d) intermediates formed at once when sampling (about 128 MB in float64).
_CHUNK_ELEMENTS = 1 << 24


class EOTBenchmark:
    """A pair ``(P0, P1)`` whose entropic OT plan and Schrödinger bridge are known exactly (maths.md §H.1).

    ``P0`` is a random Gaussian mixture with ``n_input_components`` components and the potential
    ``f(y) = sum_k p_k N(y | mu_k, Sigma_k)`` has ``n_potential_components`` components, both drawn from ``seed``.
    ``family``: ``"rotated"`` (default; 4 input components, covariances with random rotations and ``Sigma_k = eps
    S_k``) or ``"isotropic"``, the kind of pair the published files hold (3 input components of covariance
    ``0.25 I``, means on a grid, ``Sigma_k`` a multiple of ``I`` set per published cell; maths.md §H.2): a diagonal
    LightSB potential is exact there, not on ``"rotated"`` pairs, whose plan maps are full matrices.
    The ground-truth plan ``pi*(y | x) ∝ N(y | x, eps I) f(y)`` is the EOT plan between ``P0`` and its push-forward
    ``P1`` for the Brownian reference ``dX = sqrt(eps) dW`` (``eps = sigma**2``, POT ``reg = 2 eps``, §G.1).

    Attributes (float64 tensors unless noted): ``dim``, ``eps``, ``seed`` (ints/floats); ``input_weights`` (K0,),
    ``input_means`` (K0, d), ``input_covs`` (K0, d, d); ``potential_weights`` (K,), ``potential_means`` (K, d),
    ``potential_covs`` (K, d, d) = ``Sigma_k``; ``plan_covs`` (K, d, d) = ``Sigma~_k``.

    Sampling methods take an optional ``torch.Generator``; without one they use torch's global RNG. The mixtures
    themselves depend only on ``(dim, eps, seed, n_input_components, n_potential_components)``.
    """

    def __init__(self, dim: int, eps: float, seed: int = 0, n_input_components: int | None = None,
                 n_potential_components: int = 5, family: str = "rotated") -> None:
        self.dim = check_positive_int(dim, "dim")
        self.eps = check_positive_float(eps, "eps")
        self.seed = _check_seed(seed)
        self.family = check_choice(family, FAMILIES, "family")
        if n_input_components is None:
            n_input_components = 4 if self.family == "rotated" else 3
        k0 = check_positive_int(n_input_components, "n_input_components")
        k1 = check_positive_int(n_potential_components, "n_potential_components")
        d, eps = self.dim, self.eps
        rng_in, rng_pot = (np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(2))

        if self.family == "rotated":
            w0, m0, u0, l0 = _random_mixture(rng_in, k0, d, _INPUT_MEAN_STD, _INPUT_EIGS)
            p, mu, u, s = _random_mixture(rng_pot, k1, d, _POTENTIAL_MEAN_STD, _POTENTIAL_EIGS)
            lam = eps * s  # eigenvalues of Sigma_k
        else:
            scale = _ISO_POTENTIAL_SCALE.get(eps, {}).get(d)
            if scale is None:
                cells = ", ".join(f"eps={e:g}" for e in _ISO_POTENTIAL_SCALE)
                raise ConfigError(f"family='isotropic' exists only in the published cells (dim 2, 16, 64 or 128; "
                                  f"{cells}), got dim={d}, eps={eps:g}; use family='rotated' for other cells.")
            w0, m0, u0, l0 = _grid_mixture(rng_in, k0, d, _ISO_INPUT_SPACING, _ISO_INPUT_STD)
            p, mu, u, lam = _grid_mixture(rng_pot, k1, d, _ISO_POTENTIAL_SPACING, 0.5 * scale)
        self.input_weights = torch.from_numpy(w0)
        self.input_means = torch.from_numpy(m0)
        self.input_covs = torch.from_numpy(np.einsum("kij,kj,klj->kil", u0, l0, u0))
        self._input_chol = torch.linalg.cholesky(self.input_covs)

        self.potential_weights = torch.from_numpy(p)
        self.potential_means = torch.from_numpy(mu)
        self._rot = torch.from_numpy(u)  # (K, d, d), columns are eigenvectors of Sigma_k
        self._lam = torch.from_numpy(lam)  # (K, d)
        self.potential_covs = torch.einsum("kij,kj,klj->kil", self._rot, self._lam, self._rot)
        # Sigma~_k = (I/eps + Sigma_k^{-1})^{-1} = U diag(eps lam / (lam + eps)) U^T (same eigenvectors).
        plan_eigs = eps * self._lam / (self._lam + eps)
        self.plan_covs = torch.einsum("kij,kj,klj->kil", self._rot, plan_eigs, self._rot)
        self._plan_factor = self._rot * plan_eigs.sqrt()[:, None, :]  # L_k L_k^T = Sigma~_k
        self._log_p = torch.log(self.potential_weights)
        self._mu_rot = torch.einsum("kd,kde->ke", self.potential_means, self._rot)  # U_k^T mu_k
        self._x1_var: float | None = None

    def __repr__(self) -> str:
        return (f"EOTBenchmark(dim={self.dim}, eps={self.eps}, seed={self.seed}, family={self.family!r}, "
                f"n_input_components={self.input_weights.shape[0]}, "
                f"n_potential_components={self.potential_weights.shape[0]})")

    @property
    def reference(self) -> Brownian:
        """The reference process ``dX = sqrt(eps) dW`` on ``[0, 1]`` (maths.md §G.1)."""
        return Brownian(math.sqrt(self.eps), T=1.0, prior="marginal")

    @property
    def sigma(self) -> float:
        """Diffusion coefficient of the reference ``dX = sigma dW``: ``sigma = sqrt(eps)`` (maths.md §G.1)."""
        return math.sqrt(self.eps)

    # ------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------
    def _points(self, x: Any, name: str = "x") -> torch.Tensor:
        """Return ``x`` as float64 points (n, d); a float torch tensor keeps its autograd graph."""
        if (isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim == 2 and x.shape[1] == self.dim
                and x.shape[0] > 0):
            if not bool(torch.isfinite(x.detach()).all()):
                raise DataError(f"{name} contains NaN or Inf; pass finite points of shape (n, {self.dim}).")
            return x.to(device="cpu", dtype=_DTYPE)
        return as_data_tensor(x, name=name, dim=self.dim, dtype=_DTYPE).cpu()

    @staticmethod
    def _times(t: Any, n: int) -> torch.Tensor:
        """Return ``t`` (a number, or a tensor of shape (), (n,) or (n, 1)) as float64 of shape (n, 1) in [0, 1]."""
        if isinstance(t, torch.Tensor):
            tt = t.detach().to(device="cpu", dtype=_DTYPE)
            if tt.numel() == 1:
                tt = tt.reshape(1, 1).expand(n, 1)
            elif tt.shape in ((n,), (n, 1)):
                tt = tt.reshape(n, 1)
            else:
                raise DataError(f"t has shape {tuple(t.shape)} but must be a scalar or have shape ({n},) or "
                                f"({n}, 1) to match x.")
        else:
            if isinstance(t, bool):
                raise ConfigError(f"time t must be a number in [0, 1], got {t!r}.")
            try:
                value = float(t)
            except (TypeError, ValueError):
                raise ConfigError(f"time t must be a number in [0, 1], got {t!r}.") from None
            tt = torch.full((n, 1), value, dtype=_DTYPE)
        if not bool(((tt >= 0.0) & (tt <= 1.0)).all()):
            raise ConfigError("time t must lie in [0, 1]; clip or rescale the times you pass.")
        return tt

    # ------------------------------------------------------------------------------------------------------------
    # Closed-form pieces (float64)
    # ------------------------------------------------------------------------------------------------------------
    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates ``U_k^T x`` of the points in every component's eigenbasis, shape (n, K, d)."""
        return torch.einsum("nd,kde->nke", x, self._rot)

    def _log_terms(self, zx: torch.Tensor, extra_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p_k + log N(x | mu_k, Sigma_k + v I)`` (n, K) and ``U_k^T (x - mu_k) / (lam_k + v)`` (n, K, d).

        ``zx = U_k^T x`` from :meth:`_rotate` and ``extra_var`` is ``v`` of shape (n, 1); both terms use the
        eigendecomposition ``Sigma_k = U diag(lam) U^T``.
        """
        z = zx - self._mu_rot[None]  # U_k^T (x - mu_k)
        var = self._lam[None] + extra_var[:, :, None]  # (n, K, d)
        scaled = z / var
        log_n = -0.5 * ((z * scaled).sum(-1) + torch.log(var).sum(-1) + self.dim * _LOG_2PI)
        return self._log_p[None] + log_n, scaled

    def _plan_weights_and_means(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture weights ``w_k(x)`` (n, K) and component means ``Sigma~_k (Sigma_k^{-1} mu_k + x / eps)`` (n, K, d).

        In the eigenbasis of ``Sigma_k`` the component mean is ``U (eps U^T mu + lam U^T x) / (lam + eps)``.
        """
        eps = self.eps
        zx = self._rotate(x)
        logits, _ = self._log_terms(zx, torch.full((x.shape[0], 1), eps, dtype=_DTYPE))
        weights = softmax(logits, dim=1)
        coef = (eps * self._mu_rot[None] + self._lam[None] * zx) / (self._lam[None] + eps)
        means = torch.einsum("kde,nke->nkd", self._rot, coef)
        return weights, means

    def log_h(self, x: Any, t: Any) -> torch.Tensor:
        """``log h(t, x) = log sum_k p_k N(x | mu_k, Sigma_k + eps (1 - t) I)``, shape (n,), float64 (§H.1).

        ``h(t, x) = E[f(X_1) | X_t = x]`` under the reference ``dX = sqrt(eps) dW``; ``log h(1, .) = log f``.
        Differentiable in ``x`` when ``x`` is a float tensor that requires grad (the graph is kept).
        """
        xt = self._points(x)
        tt = self._times(t, xt.shape[0])
        logits, _ = self._log_terms(self._rotate(xt), self.eps * (1.0 - tt))
        return logsumexp(logits, dim=1)

    def drift(self, x: Any, t: Any) -> torch.Tensor:
        """Ground-truth SB drift ``eps grad_x log sum_k p_k N(x | mu_k, Sigma_k + eps (1 - t) I)`` (maths.md §H.1).

        The h-transform of the reference ``dX = sqrt(eps) dW`` by ``h(t, x) = E[f(X_1) | X_t = x]``: simulating
        ``dX = drift(t, X) dt + sqrt(eps) dW`` from ``X_0 ~ P0`` gives ``(X_0, X_1) ~ pi*``. In closed form
        ``drift = -eps sum_k r_k(t, x) (Sigma_k + eps (1 - t) I)^{-1} (x - mu_k)`` with ``r_k`` the softmax of the
        log terms of :meth:`log_h`. ``t`` is a number in [0, 1] or a tensor of shape (), (n,) or (n, 1). Returns
        (n, d), float64 if ``x`` is a float64 tensor, else float32.
        """
        xt = self._points(x).detach()
        tt = self._times(t, xt.shape[0])
        logits, scaled = self._log_terms(self._rotate(xt), self.eps * (1.0 - tt))
        resp = softmax(logits, dim=1)
        grad = -torch.einsum("kde,nke->nd", self._rot, resp[:, :, None] * scaled)
        out_dtype = _DTYPE if isinstance(x, torch.Tensor) and x.dtype == _DTYPE else _OUT
        return (self.eps * grad).to(out_dtype)

    def conditional_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (m, d) and covariance (m, d, d) of ``pi*(. | x)`` for inputs ``x`` of shape (m, d) (maths.md §H.3).

        Mixture moments: ``mean = sum_k w_k m_k`` and ``cov = sum_k w_k Sigma~_k + sum_k w_k (m_k - mean)(m_k -
        mean)^T`` (within- plus between-component covariance). Computed in float64, returned as float32.
        """
        xt = self._points(x).detach()
        mean, cov = self._moments64(xt)
        return mean.to(_OUT), cov.to(_OUT)

    def _moments64(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, means = self._plan_weights_and_means(x)
        mean = torch.einsum("nk,nkd->nd", weights, means)
        centred = means - mean[:, None, :]
        within = torch.einsum("nk,kde->nde", weights, self.plan_covs)
        between = torch.einsum("nk,nkd,nke->nde", weights, centred, centred)
        cov = within + between
        return mean, 0.5 * (cov + cov.transpose(1, 2))

    # ------------------------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------------------------
    def _sample_x0_64(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        comp = torch.multinomial(self.input_weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=_DTYPE)
        out = self.input_means[comp].clone()
        for k in range(self.input_weights.shape[0]):
            idx = comp == k
            out[idx] += z[idx] @ self._input_chol[k].T
        return out

    def _sample_conditional_64(self, x: torch.Tensor, n_per_x: int,
                               generator: torch.Generator | None) -> torch.Tensor:
        m, d = x.shape
        # the (m, K, d) component means are formed a chunk of rows at a time (1M points at d = 128 would need
        # several GB at once); the random draws are made whole, so chunking does not change the samples
        rows = max(1, _CHUNK_ELEMENTS // (self.potential_weights.shape[0] * d))
        weights = torch.cat([self._plan_weights_and_means(part)[0] for part in x.split(rows)])
        comp = torch.multinomial(weights, n_per_x, replacement=True, generator=generator)  # (m, n_per_x)
        z = torch.randn(m, n_per_x, d, generator=generator, dtype=_DTYPE)
        out = torch.cat([torch.gather(self._plan_weights_and_means(part)[1], 1,
                                      chosen[:, :, None].expand(-1, n_per_x, d))
                         for part, chosen in zip(x.split(rows), comp.split(rows), strict=True)])
        for k in range(self.potential_weights.shape[0]):
            idx = comp == k
            out[idx] += z[idx] @ self._plan_factor[k].T
        return out

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of the input law ``P0`` (a Gaussian mixture), float32 of shape (n, d)."""
        n = check_positive_int(n, "n")
        return self._sample_x0_64(n, generator).to(_OUT)

    def sample_conditional(self, x: Any, n_per_x: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_per_x`` samples of ``pi*(. | x_i)`` for each row of ``x`` (m, d); float32 of shape (m, n_per_x, d).

        Draws the component ``k`` with probability ``w_k(x)``, then ``y ~ N(Sigma~_k (Sigma_k^{-1} mu_k + x/eps),
        Sigma~_k)`` (maths.md §H.1).
        """
        n_per_x = check_positive_int(n_per_x, "n_per_x")
        xt = self._points(x).detach()
        return self._sample_conditional_64(xt, n_per_x, generator).to(_OUT)

    def sample_plan(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs ``(x, y) ~ pi*``: ``x ~ P0`` then ``y ~ pi*(. | x)``; two float32 tensors of shape (n, d)."""
        n = check_positive_int(n, "n")
        x = self._sample_x0_64(n, generator)
        y = self._sample_conditional_64(x, 1, generator)[:, 0]
        return x.to(_OUT), y.to(_OUT)

    def sample_x1(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of the target ``P1 = int pi*(. | x) dP0(x)`` (push-forward of P0), float32 (n, d)."""
        return self.sample_plan(n, generator)[1]

    def test_inputs(self, m: int = 1000, seed: int = 0) -> torch.Tensor:
        """``m`` fixed inputs ``x ~ P0`` for the conditional metric (cBW2-UVP, maths.md §H.3), float32 (m, d).

        Drawn with a generator derived from ``(self.seed, seed)``, so they do not coincide with samples drawn with
        ``torch.Generator().manual_seed(seed)``.
        """
        m = check_positive_int(m, "m")
        seed = _check_seed(seed)
        return self.sample_x0(m, generator=_generator_from(self.seed, seed, 0x7E57))

    def x1_var(self) -> float:
        """``tr Cov(P1)``, the normaliser of BW2-UVP and cBW2-UVP (maths.md §H.3), computed once and stored.

        Estimated from 100,000 seeded draws ``x_i ~ P0`` by the law of total variance with the exact conditional
        moments: ``tr Cov(P1) = E[tr Cov(Y | X)] + tr Cov(E[Y | X])`` (lower variance than sampling ``y``).
        """
        if self._x1_var is None:
            gen = _generator_from(self.seed, 0x71)
            x = self._sample_x0_64(_X1_VAR_SAMPLES, gen)
            tr_within = torch.einsum("kii->k", self.plan_covs)
            sum_sq, sum_mean = 0.0, torch.zeros(self.dim, dtype=_DTYPE)
            for s in range(0, x.shape[0], _CHUNK):
                weights, means = self._plan_weights_and_means(x[s:s + _CHUNK])
                second = weights @ tr_within + torch.einsum("nk,nkd,nkd->n", weights, means, means)  # E[|Y|^2 | x]
                sum_sq += float(second.sum())
                sum_mean += torch.einsum("nk,nkd->d", weights, means)
            mean = sum_mean / x.shape[0]
            self._x1_var = sum_sq / x.shape[0] - float(mean @ mean)
        return self._x1_var
