"""Light Schrödinger Bridge (Korotin, Gushchin & Burnaev, ICLR 2024; maths.md §I): the Schrödinger potential as a
Gaussian mixture, so the bridge is trained without simulation and sampled exactly.

Reference ``dX = sqrt(eps) dW`` on ``[0, 1]`` (``eps = sigma**2``). The entropic plan has the form
``pi(x1 | x0) ∝ exp(<x0, x1> / eps) v(x1)``, and LightSB takes the adjusted potential ``v`` to be an unnormalised
Gaussian mixture (:class:`MixturePotential`),

    v(y) = sum_k alpha_k N(y | r_k, eps S_k),

so that the normaliser ``c(x) = int exp(<x, y> / eps) v(y) dy`` and the conditional plan are closed-form:

    log c(x) = logsumexp_k [log alpha_k + (r_k . x + x^T S_k x / 2) / eps],
    pi(y | x) = sum_k w_k(x) N(y | r_k + S_k x, eps S_k),    w_k(x) ∝ alpha_k exp((r_k . x + x^T S_k x / 2) / eps).

Training minimises ``E_{x0 ~ p0} log c(x0) - E_{x1 ~ p1} log v(x1)``, which is ``KL(pi* || pi_v)`` up to a constant
(the paper's Eq. 11): independent minibatches of the two ends, no simulation. The SDE drift of the bridge is also
closed-form (:meth:`MixturePotential.drift`), so ``transport`` samples the plan exactly by default and by SDE or
ODE on a grid when asked. Each direction has its own potential: ``fwd`` for ``pi(x1 | x0)``, ``bwd`` for
``pi(x0 | x1)`` (the same problem with the ends swapped), so transport works both ways and a generative fit samples
``N(0, I) -> data`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError, DataError
from sbridge.core.seeds import INIT_STREAM, TRANSPORT_OFFSET, stream_seed
from sbridge.core.tensors import logsumexp, softmax
from sbridge.core.validation import check_choice, check_positive_float, check_positive_int
from sbridge.losses.base import Batch, Terms
from sbridge.processes.gaussian import GaussianBridge
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver, BrownianReference
from sbridge.training.sources import IndependentSource
from sbridge.training.trainer import Phase, TrainConfig

#: Covariance parametrisations of the mixture components: ``S = diag(s)``, ``S = L L^T`` (Cholesky factor ``L``),
#: ``S = diag(s) + V V^T`` (``V`` of ``rank`` columns).
COVARIANCES = ("diagonal", "full", "lowrank")
#: ``covariance="auto"``: full covariances (``AUTO_FULL_COMPONENTS`` of them) up to this dimension, above it low-rank
#: ones (``AUTO_LOWRANK_COMPONENTS``): the cost of a full covariance grows as ``K d^2`` per point, a low-rank one's as
#: ``K d rank`` (measured on the EOT benchmark, benchmarks/bench_eot.py).
AUTO_FULL_MAX_DIM = 32
AUTO_FULL_COMPONENTS = 25
AUTO_LOWRANK_COMPONENTS = 50
#: Which potentials a fit trains: both, or only that of ``pi(x1 | x0)`` (``"forward"``) or ``pi(x0 | x1)``.
DIRECTIONS = {"both": ("fwd", "bwd"), "forward": ("fwd",), "backward": ("bwd",)}
_LOG_2PI = math.log(2.0 * math.pi)


def _projected_square(y: torch.Tensor, means: torch.Tensor | None, maps: torch.Tensor) -> torch.Tensor:
    """``|M_k (y_n - m_k)|^2`` (n, K) for points ``y`` (n, d), means (K, d), (n, K, d) or ``None`` (zero) and maps
    ``M`` (K, p, d): ``M_k y`` for all k as one GEMM, ``y @ [M_1; ...; M_K]^T`` (n K p d flops, an (n, K, p)
    result)."""
    k, p, d = maps.shape
    projected = (y @ maps.reshape(k * p, d).T).reshape(-1, k, p)
    if means is None:
        return projected.square().sum(-1)
    if means.dim() == 2:
        return (projected - torch.einsum("kpd,kd->kp", maps, means)[None]).square().sum(-1)
    return (projected - torch.einsum("kpd,nkd->nkp", maps, means)).square().sum(-1)


def _diagonal_square(y: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_j w_kj (y_nj - m_kj)^2`` (n, K) for weights (K, d). Shared means (K, d): expanded into three GEMMs
    about the means' centre (the form is invariant to a common shift, which keeps the cancellation small), with no
    (n, K, d) intermediate; per-point means (n, K, d): directly."""
    if means.dim() == 3:
        return ((y[:, None, :] - means).square() * weights[None]).sum(-1)
    centre = means.mean(0).detach()
    y, means = y - centre, means - centre
    return (y.square() @ weights.T - 2 * y @ (weights * means).T + (weights * means.square()).sum(-1)[None]
            ).clamp_min(0)


def _per_component(index: torch.Tensor, rows: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``rows_n @ maps[index_n]`` for rows (n, p) and maps (K, p, q), one product per component present (no
    (n, p, q) gather: at n = 250,000 and d = 128 that would be 16 GB)."""
    out = rows.new_zeros((rows.shape[0], maps.shape[-1]))
    for component in torch.unique(index).tolist():
        chosen = index == component
        out[chosen] = rows[chosen] @ maps[component]
    return out


class MixturePotential(nn.Module):
    """The adjusted Schrödinger potential ``v(y) = sum_k alpha_k N(y | r_k, eps S_k)`` of one direction (LightSB,
    Eq. 9) and the closed forms it gives: the normaliser ``log c``, the conditional plan, and the bridge's drift.

    Parameters: ``log_alpha`` (K,), ``r`` (K, d), ``log_s`` (K, d) (the log diagonal of ``S``; of ``L L^T`` for
    ``"full"``), ``tril`` (K, d, d; strictly lower part of ``L``, ``"full"``) or ``factor`` (K, d, rank,
    ``"lowrank"``). ``initialised`` records that ``r`` was set from data (:meth:`initialise`).
    """

    def __init__(self, dim: int, components: int, eps: float, covariance: str = "diagonal", rank: int = 1,
                 scale_init: float = 1.0) -> None:
        super().__init__()
        self.dim, self.components, self.eps = dim, components, float(eps)
        self.covariance = check_choice(covariance, COVARIANCES, "covariance")
        # log alpha = log_alpha_raw / eps: the logits of the plan scale as 1 / eps, and so must the weights' steps
        self.log_alpha_raw = nn.Parameter(torch.full((components,), -self.eps * math.log(components)))
        self.r = nn.Parameter(torch.zeros(components, dim))
        self.log_s = nn.Parameter(torch.full((components, dim), math.log(scale_init)))
        if covariance == "full":
            self.tril = nn.Parameter(torch.zeros(components, dim, dim))
        elif covariance == "lowrank":
            # a zero factor would have a zero gradient (S is quadratic in V): start it small and random
            self.factor = nn.Parameter(1e-2 * torch.randn(components, dim, rank))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def log_alpha(self) -> torch.Tensor:
        """``log alpha_k`` (K,)."""
        return self.log_alpha_raw / self.eps

    # ---- the covariances ---------------------------------------------------------------------------------------
    def cholesky(self) -> torch.Tensor:
        """``L`` with ``L L^T = S`` (``"full"``), shape (K, d, d)."""
        return torch.tril(self.tril, -1) + torch.diag_embed(torch.exp(0.5 * self.log_s))

    def matrices(self) -> torch.Tensor:
        """``S_k`` as dense (K, d, d) matrices."""
        if self.covariance == "diagonal":
            return torch.diag_embed(torch.exp(self.log_s))
        if self.covariance == "full":
            chol = self.cholesky()
            return chol @ chol.transpose(-1, -2)
        return torch.diag_embed(torch.exp(self.log_s)) + self.factor @ self.factor.transpose(-1, -2)

    def quadratic(self, x: torch.Tensor) -> torch.Tensor:
        """``x^T S_k x`` for every point and component, shape (n, K): ``|L_k^T x|^2`` (full) or
        ``x^T diag(s_k) x + |V_k^T x|^2`` (low rank)."""
        if self.covariance == "full":
            return _projected_square(x, None, self.cholesky().transpose(-1, -2))
        diag = x.square() @ torch.exp(self.log_s).T
        if self.covariance == "diagonal":
            return diag
        return diag + _projected_square(x, None, self.factor.transpose(-1, -2))

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps of the Mahalanobis form and ``log det S_k`` (K,). Full: ``W_k = L_k^{-1}`` (K, d, d), with
        ``z^T S_k^{-1} z = |W_k z|^2``. Low rank (Woodbury, with ``D = diag(s_k)``, ``V = V_k`` and ``C C^T = I +
        V^T D^{-1} V``): ``U_k = C^{-1} V^T D^{-1}`` (K, rank, d), with ``z^T S_k^{-1} z = z^T D^{-1} z - |U_k z|^2``
        and ``log det S_k = log det D + 2 log det C``."""
        if self.covariance == "full":
            eye = torch.eye(self.dim, dtype=self.r.dtype, device=self.r.device).expand(self.components, -1, -1)
            return torch.linalg.solve_triangular(self.cholesky(), eye, upper=False), self.log_s.sum(-1)
        inv_diag = torch.exp(-self.log_s)  # (K, d)
        scaled = self.factor.transpose(-1, -2) * inv_diag[:, None, :]  # V^T D^{-1}, (K, rank, d)
        rank = self.factor.shape[-1]
        inner = torch.eye(rank, dtype=self.r.dtype, device=self.r.device) + scaled @ self.factor
        chol = torch.linalg.cholesky(inner)
        maps = torch.linalg.solve_triangular(chol, scaled, upper=False)
        return maps, self.log_s.sum(-1) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``S_k x`` for every point and component, shape (n, K, d)."""
        if self.covariance == "diagonal":
            return torch.exp(self.log_s)[None] * x[:, None, :]
        return torch.einsum("kde,ne->nkd", self.matrices(), x)

    def component_log_prob(self, y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """``log N(y | means_k, eps S_k)``, shape (n, K); ``means`` is (K, d) or (n, K, d). The Mahalanobis terms
        of all components come from one GEMM (:meth:`whitening`, :func:`_projected_square`)."""
        eps, d = self.eps, self.dim
        if self.covariance == "full":
            maps, logdet = self.whitening()
            maha = _projected_square(y, means, maps)
        else:
            maha = _diagonal_square(y, means, torch.exp(-self.log_s))
            logdet = self.log_s.sum(-1)
            if self.covariance == "lowrank":
                maps, logdet = self.whitening()
                maha = maha - _projected_square(y, means, maps)
        return -0.5 * (maha / eps + logdet[None] + d * (_LOG_2PI + math.log(eps)))

    def noise(self, shape: tuple[int, ...], index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draws of ``N(0, S_k)`` for the components ``index`` (n,), shape (n, d)."""
        z = torch.randn(shape, generator=generator, device=self.r.device, dtype=self.r.dtype)
        if self.covariance == "diagonal":
            return torch.exp(0.5 * self.log_s)[index] * z
        if self.covariance == "full":
            return _per_component(index, z, self.cholesky().transpose(-1, -2))
        extra = torch.randn((shape[0], self.factor.shape[-1]), generator=generator, device=self.r.device,
                            dtype=self.r.dtype)
        return torch.exp(0.5 * self.log_s)[index] * z + _per_component(index, extra, self.factor.transpose(-1, -2))

    # ---- the closed forms --------------------------------------------------------------------------------------
    def log_v(self, y: torch.Tensor) -> torch.Tensor:
        """``log v(y) = logsumexp_k [log alpha_k + log N(y | r_k, eps S_k)]``, shape (n,)."""
        return logsumexp(self.log_alpha[None] + self.component_log_prob(y, self.r), dim=1)

    def plan_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log alpha_k + (r_k . x + x^T S_k x / 2) / eps`` (n, K): the log-weights of the conditional plan's
        components, whose logsumexp is ``log c(x)``."""
        return self.log_alpha[None] + (x @ self.r.T + 0.5 * self.quadratic(x)) / self.eps

    def log_c(self, x: torch.Tensor) -> torch.Tensor:
        """``log c(x) = log int exp(<x, y> / eps) v(y) dy``, shape (n,)."""
        return logsumexp(self.plan_logits(x), dim=1)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LightSB's loss ``E log c(x) - E log v(y)`` on a minibatch of each end (``KL(pi* || pi_v)`` + const)."""
        return self.log_c(x).mean() - self.log_v(y).mean()

    def plan_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log pi(y | x)`` of the conditional plan (a Gaussian mixture), shape (n,)."""
        logits = self.plan_logits(x)
        weights = logits - logsumexp(logits, dim=1)[:, None]
        return logsumexp(weights + self.component_log_prob(y, self.r[None] + self.apply(x)), dim=1)

    def sample_plan(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws of ``pi(. | x)``: a component ``k ~ w(x)``, then ``N(r_k + S_k x, eps S_k)``."""
        logits = self.plan_logits(x)
        uniform = torch.rand(logits.shape, generator=generator, device=x.device, dtype=logits.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-30)))
        k = torch.argmax(logits + gumbel, dim=1)
        if self.covariance == "diagonal":
            mean = self.r[k] + torch.exp(self.log_s)[k] * x
        else:
            mean = self.r[k] + _per_component(k, x, self.matrices())  # S_k symmetric: x^T S_k = (S_k x)^T
        return mean + math.sqrt(self.eps) * self.noise(tuple(x.shape), k, generator)

    def plan_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (n, d) and covariance (n, d, d) of the conditional plan ``pi(. | x)``: ``sum_k w_k m_k`` and
        ``eps sum_k w_k S_k + sum_k w_k (m_k - mean)(m_k - mean)^T`` with ``m_k = r_k + S_k x`` (maths.md §I.1)."""
        weights = softmax(self.plan_logits(x), dim=1)
        means = self.r[None] + self.apply(x)
        mean = (weights[:, :, None] * means).sum(1)
        spread = means - mean[:, None]
        cov = (self.eps * torch.einsum("nk,kde->nde", weights, self.matrices())
               + torch.einsum("nk,nkd,nke->nde", weights, spread, spread))
        return mean, cov

    @classmethod
    def from_gaussian_potential(cls, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
                                eps: float) -> MixturePotential:
        """The full-covariance potential whose plan is ``pi(y | x) ∝ N(y | x, eps I) f(y)`` for the Gaussian
        mixture ``f = sum_k p_k N(mu_k, Sigma_k)`` (the known plans of maths.md §H.1): ``v(y) = exp(-|y|^2 / (2 eps))
        f(y)`` has ``eps S_k = (I / eps + Sigma_k^{-1})^{-1}``, ``r_k = eps S_k Sigma_k^{-1} mu_k`` and ``log alpha_k
        = log p_k + log N(mu_k | 0, Sigma_k + eps I)`` up to a common constant (maths.md §I.1)."""
        k, d = means.shape
        eye = torch.eye(d, dtype=covs.dtype, device=covs.device)
        plan_covs = torch.linalg.inv(eye / eps + torch.linalg.inv(covs))
        r = torch.einsum("kde,kef,kf->kd", plan_covs, torch.linalg.inv(covs), means)
        log_alpha = torch.log(weights) + torch.distributions.MultivariateNormal(
            torch.zeros(d, dtype=covs.dtype, device=covs.device), covs + eps * eye).log_prob(means)
        chol = torch.linalg.cholesky(plan_covs / eps)
        potential = cls(d, k, eps, "full").to(dtype=covs.dtype, device=covs.device)
        with torch.no_grad():
            potential.r.copy_(r)
            potential.log_alpha_raw.copy_(eps * log_alpha)
            potential.log_s.copy_(2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)))
            potential.tril.copy_(torch.tril(chol, -1))
            potential.initialised.fill_(True)
        return potential

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eigenvalues (K, d) and eigenvectors (K, d, d; ``None`` when diagonal) of ``S_k``, kept until the
        parameters change (the drift reads them at every step)."""
        key = tuple((id(p), p._version) for p in self.parameters())
        cached = getattr(self, "_spectrum", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            if self.covariance == "diagonal":
                value: tuple[torch.Tensor, torch.Tensor | None] = (torch.exp(self.log_s), None)
            else:
                eigs, vecs = torch.linalg.eigh(self.matrices().double())
                value = (eigs.clamp_min(1e-12).to(self.r.dtype), vecs.to(self.r.dtype))
        self._spectrum = (key, value)
        return value

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The bridge's drift ``(E[X1 | X_t = x] - x) / (1 - t)`` at time ``t`` in ``[0, 1]`` (maths.md §I.3).

        With ``S_k = U diag(lam) U^T``, ``s = eps lam``, ``z = U^T x``, ``rho = U^T r_k`` and ``den = t s +
        eps (1 - t)``, the posterior of ``X1`` given ``X_t = x`` is a mixture with log-weights ``log alpha_k -
        sum log(den) / 2 + sum [z^2 (s - eps) / eps + 2 z rho - t rho^2] / (2 den)`` (up to terms common to all
        k) and per-component drift ``U [(s - eps) z + eps rho] / den``: finite on all of ``[0, 1]``.
        """
        eps = self.eps
        lam, vecs = self.spectrum()
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # (1 or n, 1, 1)
        s = eps * lam[None]  # (1, K, d)
        if vecs is None:
            z, rho = x[:, None, :].expand(-1, self.components, -1), self.r[None]
        else:
            z, rho = torch.einsum("nd,kde->nke", x, vecs), torch.einsum("kd,kde->ke", self.r, vecs)[None]
        den = t * s + eps * (1 - t)
        logits = (self.log_alpha[None] - 0.5 * torch.log(den).sum(-1)
                  + 0.5 * ((z.square() * (s - eps) / eps + 2 * z * rho - t * rho.square()) / den).sum(-1))
        weights = softmax(logits, dim=1)  # (n, K)
        coef = ((s - eps) * z + eps * rho) / den  # (n, K, d) in each component's eigenbasis
        if vecs is not None:
            coef = torch.einsum("kde,nke->nkd", vecs, coef)
        return (weights[:, :, None] * coef).sum(1)

    def forward(self, x: torch.Tensor, t: Any = None, cond: Any = None, target: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The drift at ``t``; with ``target`` (points of the other end), the training objective (so that the
        trainer's distributed wrapper sees the loss go through ``forward``)."""
        if target is not None:
            return self.objective(x, target)
        return self.drift(x, t)

    @torch.no_grad()
    def initialise(self, targets: torch.Tensor, scale: float | None = None) -> None:
        """Set ``r`` to ``K`` points of the target end (the paper's initialisation), with ``scale`` the diagonal of
        every ``S_k`` (kept when ``None``), and mark the potential as initialised."""
        self.r.copy_(targets[: self.components].to(self.r))
        if scale is not None:
            self.log_s.fill_(math.log(scale))
        self.initialised.fill_(True)


#: Rows of each end used for the moment fit of :func:`gaussian_bridge_scale`.
SCALE_FIT_ROWS = 100_000


def gaussian_bridge_scale(source: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    """The mean eigenvalue of ``S = Cov(Y | X) / eps`` of the Gaussian SB between moment fits of the two ends: the
    minimiser of the one-component LightSB objective (maths.md §I.2), used as the initial ``S_k = scale I``
    (``scale_init="auto"``); ``Cov(Y | X)`` is :meth:`GaussianBridge.conditional`'s (maths.md §G.2).
    A mixture's components are narrower than one Gaussian's, so this is an upper estimate of their scale: a start
    far closer than ``S = I`` when ``eps`` is large (measured, maths.md §I.2); 1 when the fit is degenerate."""
    x, y = source[:SCALE_FIT_ROWS].double(), target[:SCALE_FIT_ROWS].double()
    if x.shape[0] < 2 or y.shape[0] < 2:
        return 1.0
    try:
        bridge = GaussianBridge(x.mean(0), torch.atleast_2d(torch.cov(x.T)), y.mean(0),
                                torch.atleast_2d(torch.cov(y.T)), sigma=math.sqrt(eps))
        _, conditional = bridge.conditional(bridge.a)  # the same for every x
    except (RuntimeError, ValueError, ConfigError, DataError):  # singular or degenerate moments
        return 1.0
    scale = float(torch.trace(conditional)) / (eps * x.shape[1])
    return scale if math.isfinite(scale) and scale > 1e-6 else 1.0


class LightSBObjective:
    """The LightSB losses of the potentials ``names`` on independent minibatches ``{"x0", "x1"}``: ``fwd`` on
    ``(x0, x1)``, ``bwd`` on ``(x1, x0)``."""

    def __init__(self, names: tuple[str, ...] = ("fwd", "bwd")) -> None:
        self.names = names

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        ends = {"fwd": ("x0", "x1"), "bwd": ("x1", "x0")}
        terms = {name: models[name](batch[ends[name][0]], target=batch[ends[name][1]]) for name in self.names}
        return sum(terms.values()), {name: value.detach() for name, value in terms.items()}


class LightSB(BrownianReference, BridgeSolver):
    """Light Schrödinger Bridge between data and ``N(0, I)`` or between two data sets (vectors).

    ``sigma``: reference noise, ``eps = sigma**2``. ``covariance``: ``"diagonal"``, ``"full"``, ``"lowrank"`` (with
    ``rank`` columns) or ``"auto"`` (full up to ``AUTO_FULL_MAX_DIM`` dimensions, low-rank above); ``components``:
    mixture components ``K`` of each potential (default 25 with full covariances, else 50); ``scale_init``: the
    initial ``S_k = scale_init I``, or ``"auto"`` (default) for the scale of the Gaussian SB between the two ends'
    moment fits (:func:`gaussian_bridge_scale`); ``directions``: ``"both"`` (default), or ``"forward"`` /
    ``"backward"`` to train only the potential of ``pi(x1 | x0)`` / ``pi(x0 | x1)`` (half the work; sampling from
    noise uses the backward one). ``transport(x)`` samples the conditional plan exactly (no steps); with ``steps``
    (or ``ode=True``, ``return_path=True``) it integrates the closed-form drift on a grid.
    """

    method = "lightsb"
    fit_options = ()
    default_steps = 10_000
    #: Measured on the EOT benchmark (benchmarks/bench_eot.py): a 10x larger step than the trainer's, annealed to
    #: its hundredth.
    train_defaults = {"steps": default_steps, "lr": 1e-2, "lr_schedule": "cosine", "ema_decay": 0.99}
    declared = BridgeSolver.declared.with_(cond_required=False, exact_plan=True, plots=("samples", "trajectories"))

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, sigma: float = 1.0,
                 components: int | None = None, covariance: str = "auto", rank: int = 8,
                 scale_init: float | str = "auto", directions: str = "both", seed: int = 0,
                 device: str | torch.device = "auto", cond: dict[str, Any] | None = None, net: Any = None) -> None:
        if isinstance(net, nn.Module):
            raise ConfigError("LightSB's potentials are Gaussian mixtures, not networks; drop net= and choose "
                              "components / covariance instead.")
        if cond is not None:
            raise ConfigError("LightSB's potentials take no condition; fit one LightSB per condition, or use dsbm for "
                              "a conditional bridge.")
        self.covariance = check_choice(covariance, (*COVARIANCES, "auto"), "covariance")
        if self.covariance == "auto":
            size = dim if shape is None else next(iter(tuple(shape)), None)
            small = isinstance(size, int) and size <= AUTO_FULL_MAX_DIM
            self.covariance = "full" if small else "lowrank"
        if components is None:
            components = AUTO_FULL_COMPONENTS if self.covariance == "full" else AUTO_LOWRANK_COMPONENTS
        self.components = check_positive_int(components, "components")
        self.rank = check_positive_int(rank, "rank")
        if isinstance(scale_init, str):
            if scale_init != "auto":
                raise ConfigError(f"scale_init must be a positive number or 'auto', got {scale_init!r}.")
        else:
            scale_init = check_positive_float(scale_init, "scale_init")
        self.scale_init = scale_init
        self.directions = check_choice(directions, tuple(DIRECTIONS), "directions")
        if shape is not None and len(tuple(shape)) != 1:
            raise ConfigError(f"LightSB works on vectors (n, d); got event shape {tuple(shape)}: flatten the data "
                              "first, or run it in an autoencoder's latent space (--latent).")
        # ``net`` is only ever the stored default configuration of a saved run here: no network is built from it
        super().__init__(dim, shape=shape, sigma=sigma, net=net if isinstance(net, dict) else None, seed=seed,
                         device=device)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "components": self.components, "covariance": self.covariance,
                "rank": self.rank, "scale_init": self.scale_init, "directions": self.directions}

    @property
    def eps(self) -> float:
        """The reference's variance per unit time, ``sigma**2``."""
        return self.sigma**2

    def _build_models(self) -> dict[str, nn.Module]:
        scale = 1.0 if self.scale_init == "auto" else self.scale_init  # "auto": set from the data by before_fit
        return {name: MixturePotential(self.dim, self.components, self.eps, self.covariance, self.rank, scale)
                for name in self.model_names}

    # ---- training ----------------------------------------------------------------------------------------------
    def before_fit(self, data: FitData) -> None:
        """Start each potential's means at points of its target end (once: a later fit continues from them)."""
        for name, sources, targets, part in (("fwd", data.x0, data.x1, 0), ("bwd", data.x1, data.x0, 1)):
            if bool(self.models[name].initialised):
                continue
            gen = make_generator(stream_seed(self.seed, INIT_STREAM, part), targets.device)
            idx = torch.randint(targets.shape[0], (self.components,), generator=gen, device=targets.device)
            scale = gaussian_bridge_scale(sources, targets, self.eps) if self.scale_init == "auto" else None
            self.models[name].initialise(targets[idx], scale)
            self.ema_models[name].load_state_dict(self.models[name].state_dict())

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        source = IndependentSource(x0=data.x0, x1=data.x1)
        names = self.trained_directions
        return [Phase("potentials", config.steps, LightSBObjective(names), source, names,
                      on_end=lambda: self._monitor(1, data, None))]

    # ---- the bridge --------------------------------------------------------------------------------------------
    @property
    def trained_directions(self) -> tuple[str, ...]:
        return DIRECTIONS[self.directions]

    def potential(self, reverse: bool = False) -> MixturePotential:
        """The (EMA) potential of ``pi(x1 | x0)``, or with ``reverse`` of ``pi(x0 | x1)``; refused with a sentence
        when the fit did not train it (``directions``)."""
        name = "bwd" if reverse else "fwd"
        if name not in self.trained_directions:
            way = "x1 -> x0 (nor sample from noise)" if reverse else "x0 -> x1"
            raise ConfigError(f"this LightSB was trained with directions={self.directions!r}, so it cannot transport "
                              f"{way}; fit it with directions='both'.")
        return self.ema_models[name]

    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The forward potential's closed-form drift at ``t``."""
        return self.potential().drift(x, t)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The backward potential's drift in reverse time ``s = 1 - t`` (the bridge ``x1 -> x0`` is the same problem
        with the ends swapped, and Brownian motion is reversible)."""
        return self.potential(reverse=True).drift(x, 1.0 - t)

    @torch.no_grad()
    def transport(self, x: Any, *, steps: int | None = None, reverse: bool = False, ode: bool = False,
                  method: str = "heun", cond: Any = None, return_path: bool = False,
                  seed: int | None = None) -> torch.Tensor:
        """Exact draws of the conditional plan ``pi(x1 | x0)`` (``reverse``: ``pi(x0 | x1)``) by default;
        with ``steps``, ``ode=True`` or ``return_path``, the bridge's SDE / probability-flow ODE on a grid (see
        :meth:`BridgeSolver.transport`)."""
        if steps is not None or ode or return_path:
            return super().transport(x, steps=steps, reverse=reverse, ode=ode, method=method, cond=cond,
                                     return_path=return_path, seed=seed)
        x = self._data(x, "points to transport")
        self._bridge_condition(cond, x.shape[0])
        gen = make_generator(self.seed + TRANSPORT_OFFSET if seed is None else seed, self.device)
        self.last_nfe = 0
        return self.potential(reverse).sample_plan(x, gen)

    @torch.no_grad()
    def plan_log_prob(self, x: Any, y: Any, *, reverse: bool = False) -> torch.Tensor:
        """``log pi(y | x)`` of the learned conditional plan (``reverse``: ``log pi(x0 = y | x1 = x)``), shape
        ``(n,)``."""
        x = self._data(x, "points to condition on")
        y = self._data(y, "points of the other end")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"plan_log_prob takes one point of each end per row; got {x.shape[0]} and "
                              f"{y.shape[0]} rows.")
        return self.potential(reverse).plan_log_prob(x, y)
