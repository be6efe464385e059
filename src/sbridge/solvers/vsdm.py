"""Variational Schrödinger Diffusion Models (Deng et al., ICML 2024; maths.md §C) — the pieces VSDM is built from.

VSDM linearises the forward Schrödinger-bridge score, ``grad log psi_t(x) ~ A x``, which turns the forward process
into a multivariate OU process ``dx = -beta_t D x / 2 dt + sqrt(beta_t) dW`` with ``D = I - 2A`` (§C.1): its
marginals are closed-form (:class:`~sbridge.processes.LinearSDE`), so the backward score trains without simulation,
and ``A`` is updated by stochastic approximation from simulated backward trajectories (§C.4).

This module holds the variational score :class:`LinearScore` (``A`` and its admissible set), the SA gradient
:func:`sa_gradient`, the drift operator they define (:class:`VariationalDrift`) and the solver :class:`VSDM`,
which is SGM's score matching and samplers under that process plus one SA phase end per stage.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.seeds import SA_STREAM, stream_seed
from sbridge.core.validation import check_choice, check_event_shape, check_positive_float, check_positive_int
from sbridge.numerics.integrators import time_grid
from sbridge.processes.linear import DriftOperator, LinearSDE, PowerRate
from sbridge.solvers.base import FitData
from sbridge.solvers.sgm import SGM
from sbridge.training.trainer import Phase, TrainConfig, split_steps

#: Largest singular value (full) or entry (diagonal) of ``A``: keeps ``D + D^T = 2I - (A + A^T)`` positive definite
#: with room to spare, so the forward covariance stays bounded (§C.2: ``a_i < 1/2``).
DEFAULT_MAX_RATE = 0.45
#: Most negative diagonal rate (``D`` up to ``1 + 2 * 5 = 11``: more contraction than VP, but not a stiff process).
MAX_CONTRACTION = 5.0
#: Largest factor of the time-varying scale of ``A``.
MAX_SCALE = 3.0


class LinearScore(nn.Module):
    """The variational forward score ``x -> A x`` of VSDM (maths.md §C.1), starting at ``A = 0`` (plain VP).

    ``kind="diagonal"``: ``A = diag(a)``, one rate per event entry (images and sequences); ``kind="full"``: a
    ``(d, d)`` matrix for vectors, moved in matrix space by the SA step; :meth:`factors` gives its orthogonal ·
    diagonal · orthogonal form ``U diag(s) V^T`` (the paper's code parametrises ``A`` that way because it trains the
    factors by AdamW; a stochastic-approximation step on ``A`` itself followed by a projection needs no factors).

    The admissible set keeps the symmetric part of ``D = I - 2A`` positive definite, so the OU marginals stay
    bounded (§C.2: ``a_i < 1/2``): every diagonal rate, or every eigenvalue of ``(A + A^T) / 2``, lies in
    ``[-MAX_CONTRACTION, max_rate]`` with ``max_rate < 1/2``, and a full ``A``'s antisymmetric (rotating) part has
    spectral norm at most ``MAX_CONTRACTION``. The set is convex; :meth:`project_` is the Frobenius projection onto
    it, applied after every update instead of letting the covariance blow up.

    ``ema``: the process reads an exponential moving average of the SA iterates, ``A_bar <- ema A_bar + (1 - ema)
    A`` (maths.md §C.4–C.5: the paper's code caches the dynamics from an EMA copy of ``A``); ``0`` reads the iterate.

    ``pieces > 1`` adds a time-varying scale (the paper's code scales ``A`` by ``exp(MLP(t))``): ``A_t = h_k A`` on
    the ``k``-th of ``pieces`` equal pieces of ``[0, T]``, with learned factors ``h_k`` in ``[0, MAX_SCALE]``
    starting at 1. Piecewise constant keeps the marginals exact (the pieces' OU transitions compose), and the
    admissible set then bounds ``max_k h_k A`` as above.
    """

    def __init__(self, dim: int, kind: str = "diagonal", max_rate: float = DEFAULT_MAX_RATE, ema: float = 0.0,
                 pieces: int = 1) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.kind = check_choice(kind, ("diagonal", "full"), "kind of A")
        if isinstance(max_rate, bool) or not 0.0 < float(max_rate) < 0.5:
            raise ConfigError(f"max_rate must lie in (0, 1/2) so that D = I - 2A stays positive definite, got "
                              f"{max_rate!r}.")
        self.max_rate = float(max_rate)
        if isinstance(ema, bool) or not 0.0 <= float(ema) < 1.0:
            raise ConfigError(f"a_ema, the moving-average weight of A, must lie in [0, 1), got {ema!r}.")
        self.ema = float(ema)
        self.pieces = check_positive_int(pieces, "a_pieces")
        shape = (self.dim,) if self.kind == "diagonal" else (self.dim, self.dim)
        # buffers, not parameters: A moves by stochastic approximation, never by autograd
        self.register_buffer("iterate", torch.zeros(shape))  # the SA iterate A^(k)
        self.register_buffer("average", torch.zeros(shape))  # its moving average, the A the process uses
        if self.pieces > 1:  # the time-varying scale h_k: iterate and moving average, as for A
            self.register_buffer("scale_iterate", torch.ones(self.pieces))
            self.register_buffer("scale_average", torch.ones(self.pieces))

    def matrix(self) -> torch.Tensor:
        """``A`` as the process uses it: the ``(d,)`` diagonal for ``kind="diagonal"``, else the ``(d, d)``
        matrix (the moving average of the SA iterates; the iterate itself when ``ema = 0``)."""
        return self.average if self.ema else self.iterate

    def scales(self) -> torch.Tensor:
        """The time-varying scale ``(h_1, ..., h_K)`` the process uses (ones of length 1 for a time-invariant A)."""
        if self.pieces == 1:
            return torch.ones(1, dtype=self.iterate.dtype, device=self.iterate.device)
        return self.scale_average if self.ema else self.scale_iterate

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, s, V)`` with ``A = U diag(s) V^T``, ``U, V`` orthogonal and ``s >= 0`` (full ``A`` only)."""
        if self.kind != "full":
            raise ConfigError("factors() is for a full A; a diagonal A is its own spectrum (matrix()).")
        u, s, vh = torch.linalg.svd(self.matrix().detach())
        return u, s, vh.T

    def drift_matrix(self) -> torch.Tensor:
        """``D = I - 2A`` (diagonal: ``1 - 2a``), the drift operator of the forward OU process (§C.1)."""
        a = self.matrix()
        if self.kind == "diagonal":
            return 1.0 - 2.0 * a
        return torch.eye(self.dim, dtype=a.dtype, device=a.device) - 2.0 * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for a batch ``(B, d)`` (without the time-varying scale)."""
        a = self.matrix()
        return x * a if self.kind == "diagonal" else x @ a.T

    def piece_of(self, t: torch.Tensor, T: float) -> torch.Tensor:
        """Index of the piece of ``[0, T]`` holding each time ``t``."""
        return (t / T * self.pieces).long().clamp(0, self.pieces - 1)

    @torch.no_grad()
    def project_(self) -> None:
        """Map the iterate onto the admissible set (the nearest point in Frobenius norm): clamp the diagonal rates,
        or the eigenvalues of the symmetric part, into ``[-MAX_CONTRACTION, max_rate]``, and shrink the
        antisymmetric part to spectral norm ``MAX_CONTRACTION``. The largest eigenvalue of ``A + A^T`` is then at
        most ``2 max_rate < 1`` and ``D``'s symmetric part stays positive definite."""
        a, shrink = self.iterate, 1.0
        if self.pieces > 1:  # A_t = h_k A must be admissible for every piece: bound A by the largest h_k
            self.scale_iterate.clamp_(0.0, MAX_SCALE)
            shrink = max(1.0, float(self.scale_iterate.max()))
        low, high = -MAX_CONTRACTION / shrink, self.max_rate / shrink
        if self.kind == "diagonal":
            a.clamp_(min=low, max=high)
            return
        sym, skew = 0.5 * (a + a.T), 0.5 * (a - a.T)
        lam, vecs = torch.linalg.eigh(sym)
        sym = (vecs * lam.clamp(low, high)) @ vecs.T
        norm = float(torch.linalg.matrix_norm(skew, ord=2))
        if norm > -low:
            skew = skew * (-low / norm)
        a.copy_(sym + skew)

    @torch.no_grad()
    def step_(self, gradient: torch.Tensor, lr: float, scale_gradient: torch.Tensor | None = None) -> None:
        """One stochastic-approximation step ``A <- A - lr * gradient`` (§C.4), and ``h <- h - lr *
        scale_gradient`` for a time-varying scale, then :meth:`project_`, then the moving averages (convex
        combinations of admissible points, so admissible too). ``gradient`` has ``A``'s shape: ``(d,)`` diagonal
        or ``(d, d)``; ``scale_gradient`` is ``(pieces,)``."""
        self.iterate.sub_(lr * gradient.to(self.iterate))
        if self.pieces > 1 and scale_gradient is not None:
            self.scale_iterate.sub_(lr * scale_gradient.to(self.scale_iterate))
        self.project_()
        self.average.mul_(self.ema).add_(self.iterate, alpha=1.0 - self.ema)
        if self.pieces > 1:
            self.scale_average.mul_(self.ema).add_(self.scale_iterate, alpha=1.0 - self.ema)


def sa_gradient(xs: torch.Tensor, scores: torch.Tensor, betas: torch.Tensor, dts: torch.Tensor, zeta: float,
                kind: str = "full", per_time: bool = False) -> torch.Tensor:
    """Gradient in ``A`` of VSDM's forward loss on backward trajectories (maths.md §C.4):

        grad_A L = sum_n beta_n dt_n ( E[A x x^T] + E[(s(x, t_n) - A x) x^T] + zeta I )
                 = sum_n beta_n dt_n ( E[s(x, t_n) x^T] + zeta I ),

    the ``A`` terms cancelling because the backward score is ``grad log phi = s - A x``. ``xs`` and ``scores`` are
    ``(N, B, d)``: the states of ``B`` simulated backward trajectories at ``N`` grid times and the learned scores
    there; ``betas`` and ``dts`` are ``(N,)``. With ``zeta = 1`` and states distributed as the forward marginals
    ``rho_t`` with their exact scores the gradient vanishes (Stein: ``E[grad log rho x^T] = -I``), so ``A`` moves only
    through the mismatch between backward and forward marginals — the IPF projection. ``kind="diagonal"`` returns
    the diagonal ``(d,)``; ``per_time=True`` returns the ``N`` terms of the sum, ``(N, d)`` or ``(N, d, d)`` (for
    a time-varying scale, whose gradients weight them piece by piece).
    """
    if xs.ndim != 3 or xs.shape != scores.shape:
        raise DataError(f"xs and scores must both have shape (times, batch, dim), got {tuple(xs.shape)} and "
                        f"{tuple(scores.shape)}.")
    if betas.shape != xs.shape[:1] or dts.shape != xs.shape[:1]:
        raise DataError("betas and dts need one value per grid time (the first dimension of xs).")
    if not 0.0 <= float(zeta) <= 1.0:
        raise ConfigError(f"the interaction coefficient zeta must lie in [0, 1], got {zeta!r}.")
    weight = (betas * dts).to(xs.dtype)
    if check_choice(kind, ("diagonal", "full"), "kind of A") == "diagonal":
        cross = (scores * xs).mean(1)  # (N, d): E[s_i x_i]
        terms = weight[:, None] * (cross + zeta)
    else:
        cross = torch.einsum("nbi,nbj->nij", scores, xs) / xs.shape[1]  # (N, d, d): E[s x^T]
        eye = torch.eye(xs.shape[2], dtype=xs.dtype, device=xs.device)
        terms = weight[:, None, None] * (cross + zeta * eye)
    return terms if per_time else terms.sum(0)


class VariationalDrift(DriftOperator):
    """The drift operator ``D = I - 2A`` of VSDM's forward process, read from a :class:`LinearScore` (``A`` moves by
    stochastic approximation, not by gradients of the score loss, so ``D`` is used detached)."""

    def __init__(self, score: LinearScore, event_shape: tuple[int, ...], T: float = 1.0) -> None:
        # a learned D may overflow exp(-B D / 2): the variance is checked
        super().__init__(score.kind, learnable=False, symmetric=score.kind != "full", may_overflow=True)
        self.score, self.event_shape = score, tuple(event_shape)

        if score.pieces > 1:  # A_t = h_k A on equal pieces of [0, T]
            self.edges = torch.linspace(0.0, T, score.pieces + 1, dtype=torch.float64)

    def matrix(self) -> torch.Tensor:
        d = self.score.drift_matrix().detach()
        return d.reshape(self.event_shape) if self.kind == "diagonal" else d

    def matrices(self) -> torch.Tensor:
        """``D_k = I - 2 h_k A`` for the pieces of a time-varying scale, ``(K, *event)`` or ``(K, d, d)``."""
        a, h = self.score.matrix().detach(), self.score.scales().detach()
        if self.kind == "diagonal":
            return (1.0 - 2.0 * h[:, None] * a).reshape(-1, *self.event_shape)
        return torch.eye(a.shape[0], dtype=a.dtype, device=a.device) - 2.0 * h[:, None, None] * a

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "variational": True}


class VSDM(SGM):
    """Variational Schrödinger diffusion (Deng et al. 2024; maths.md §C.5): stages of simulation-free score matching
    under the forward OU process ``dx = -beta_t (I - 2A) x / 2 dt + sqrt(beta_t) dW`` with the current ``A``, each
    followed by a stochastic-approximation step on ``A`` from simulated backward trajectories.

    ``beta_min``, ``beta_max``, ``beta_r``: the schedule ``beta_t = beta_min + (t/T)^r (beta_max - beta_min)``;
    ``a_kind``: ``"diagonal"`` (any event shape) or ``"full"`` (vectors); ``stages``: number of score-matching /
    SA stages (``steps // stages`` training steps each); ``zeta``: the interaction coefficient in ``[0, 1]``;
    ``sa_lr``, ``sa_decay``: step sizes ``sa_lr / k^sa_decay`` of the SA update at stage ``k`` (Robbins–Monro,
    ``1/2 < sa_decay <= 1``; ``sa_lr = 0`` freezes ``A`` at 0: plain SGM under this schedule); ``sa_samples``,
    ``sa_steps``: backward trajectories and Euler–Maruyama steps of each SA update; ``a_ema``: the process uses a
    moving average of the SA iterates of ``A`` with this weight (0: the iterate itself); ``a_pieces``: with ``K > 1``
    a time-varying scale ``A_t = h_k A`` on ``K`` equal pieces of ``[0, T]``, learned by the same SA steps
    (1: time-invariant ``A``, the paper's main setting); ``prior``: ``"marginal"``
    (``N(0, Sigma_T)`` of the current ``A``, the paper's adaptive prior) or a variance (``1.0``: fixed ``N(0, I)``).
    """

    method = "vsdm"
    declared = SGM.declared.with_(plots=(*SGM.declared.plots, "variational", "forward_backward"),
                                  diagnostics=("stage", "A_norm", "A_max", "A_spectrum", "prior_kl"))
    fit_options = ("stages",)
    default_steps = 5000

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, beta_min: float = 0.1,
                 beta_max: float = 10.0, beta_r: float = 1.0, T: float = 1.0, a_kind: str = "diagonal",
                 max_rate: float = DEFAULT_MAX_RATE, a_ema: float = 0.0, a_pieces: int = 1, stages: int = 10,
                 zeta: float = 0.75,
                 sa_lr: float = 0.05,
                 sa_decay: float = 0.6, sa_samples: int = 1000, sa_steps: int = 50, prior: str | float = "marginal",
                 hidden: int | None = None, depth: int | None = None, time_dim: int | None = None,
                 cond: dict[str, Any] | None = None, cond_drop: float = 0.0, net: Any = None, seed: int = 0,
                 device: str | torch.device = "auto") -> None:
        event_shape = check_event_shape(dim, shape)
        numel = int(torch.Size(event_shape).numel())
        if a_kind == "full" and len(event_shape) != 1:
            raise ConfigError(f"a full A acts on vectors; for event shape {event_shape} use a_kind='diagonal'.")
        self.a_kind, self.max_rate, self.a_ema, self.a_pieces = a_kind, max_rate, a_ema, a_pieces
        if isinstance(beta_r, bool) or not (isinstance(beta_r, int | float) and beta_r > 0 and math.isfinite(beta_r)):
            raise ConfigError(f"beta_r, the power of the schedule beta_min + (t/T)^r (beta_max - beta_min), must be a "
                              f"positive number, got {beta_r!r} (for a constant beta set beta_min = beta_max).")
        self.beta_min, self.beta_max, self.beta_r, self.T = beta_min, beta_max, beta_r, T
        self.zeta = float(zeta)
        if isinstance(zeta, bool) or not 0.0 <= self.zeta <= 1.0:
            raise ConfigError(f"the interaction coefficient zeta must lie in [0, 1], got {zeta!r}.")
        self.sa_lr = float(sa_lr)
        if isinstance(sa_lr, bool) or not (self.sa_lr >= 0 and math.isfinite(self.sa_lr)):
            raise ConfigError(f"sa_lr must be a non-negative number (0 freezes A), got {sa_lr!r}.")
        self.sa_decay = check_positive_float(sa_decay, "sa_decay")
        self.sa_samples = check_positive_int(sa_samples, "sa_samples")
        self.sa_steps = check_positive_int(sa_steps, "sa_steps")
        self.set_option("stages", stages)
        if isinstance(prior, str) and prior != "marginal":
            raise ConfigError(f"VSDM's prior is 'marginal' (N(0, Sigma_T) of the current A) or a fixed variance such "
                              f"as 1.0; got {prior!r}, which would not follow A as it moves.")
        self.prior_kind = prior
        self.variational = LinearScore(numel, a_kind, max_rate, a_ema, a_pieces)
        process = LinearSDE(PowerRate(beta_min, beta_max, beta_r, T),
                            VariationalDrift(self.variational, event_shape, T), prior=prior)
        super().__init__(shape=event_shape, process=process, hidden=hidden, depth=depth, time_dim=time_dim,
                         cond=cond, cond_drop=cond_drop, net=net, seed=seed, device=device)

    def set_option(self, key: str, value: Any) -> None:
        if key == "stages":
            value = check_positive_int(value, "stages")
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "beta_r": self.beta_r, "T": self.T,
                "a_kind": self.a_kind, "max_rate": self.max_rate, "a_ema": self.a_ema, "a_pieces": self.a_pieces,
                "stages": self.stages, "zeta": self.zeta, "sa_lr": self.sa_lr, "sa_decay": self.sa_decay,
                "sa_samples": self.sa_samples, "sa_steps": self.sa_steps, "prior": self.prior_kind,
                "cond_drop": self.cond_drop}

    @property
    def A(self) -> torch.Tensor:
        """The current variational score matrix (``(d,)`` diagonal or ``(d, d)``); with a time-varying scale,
        ``A_t = A_scale[k] A`` on the ``k``-th piece of ``[0, T]``."""
        return self.variational.matrix().detach()

    @property
    def A_scale(self) -> torch.Tensor:
        """The time-varying scale ``(h_1, ..., h_K)`` of ``A`` (a single 1 when ``a_pieces = 1``)."""
        return self.variational.scales().detach()

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        per_stage = split_steps(config.steps, self.stages, "stages")
        return [Phase(f"stage{k + 1}", per_stage, self.loss, data.source(), ("score",),
                      update=lambda k=k: self.sa_step(k + 1, data), on_end=lambda k=k: self.stage_row(k + 1, data))
                for k in range(self.stages)]

    @torch.no_grad()
    def sa_step(self, stage: int, data: FitData) -> None:
        """One SA step on ``A`` (maths.md §C.4, §C.5 c–d): simulate ``sa_samples`` backward trajectories from the
        prior with the current score (seeded per stage), take :func:`sa_gradient` over the grid, and move ``A`` by
        ``sa_lr / stage^sa_decay`` within its admissible set (nothing when ``sa_lr = 0``). The gradient's norm is
        kept for the stage's row."""
        self._sa_grad_norm: float | None = None
        if self.sa_lr > 0:
            cond = None if data.cond is None else data.cond[:self.sa_samples]
            n = self.sa_samples if cond is None else cond.shape[0]
            path = self.sample(n, steps=self.sa_steps, return_path=True, cond=cond,
                               seed=stream_seed(self.seed, SA_STREAM, stage))
            times = time_grid(self.reference.T, self.reference.t_min, self.sa_steps)
            xs, scores = path[:-1], []
            c = self._sampling_condition(cond, n)
            for x, t in zip(xs, times[:-1], strict=True):
                scores.append(self.score(x, t, c))
            t = torch.tensor(times[:-1], dtype=torch.float64)
            betas = self.reference.schedule.beta(t).to(xs.dtype)
            dts = (-torch.diff(torch.tensor(times, dtype=torch.float64))).to(xs.dtype)
            terms = sa_gradient(xs.flatten(2), torch.stack(scores).flatten(2), betas.to(xs.device),
                                dts.to(xs.device), self.zeta, self.a_kind, per_time=True)
            grad, scale_grad = self._sa_step_gradients(terms, t)
            self.variational.step_(grad, self.sa_lr / stage ** self.sa_decay, scale_grad)
            self._sa_grad_norm = float(grad.norm())

    @torch.no_grad()
    def stage_row(self, stage: int, data: FitData) -> dict[str, Any]:
        """The row logged for a stage after its SA step: the step's gradient norm, the spectrum of ``A`` (and its
        time scale) and the prior mismatch :meth:`prior_mismatch` on the data."""
        row: dict[str, Any] = {"stage": stage}
        if getattr(self, "_sa_grad_norm", None) is not None:
            row["grad_norm"] = self._sa_grad_norm
        a = self.A
        if self.a_pieces > 1:
            row["A_scale"] = [float(h) for h in self.variational.scales()]
        spectrum = a if self.a_kind == "diagonal" else torch.linalg.svdvals(a)
        row["A_norm"] = float(a.norm())
        row["A_max"] = float(spectrum.max())
        row["A_spectrum"] = _summary(spectrum)
        if data.x0 is not None:
            row["prior_kl"] = self.prior_mismatch(data.x0[:2000])
        return row

    def _sa_step_gradients(self, terms: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The SA gradients in ``A`` and in the time-varying scale from the per-time terms ``G_n`` of
        :func:`sa_gradient`: with ``A_t = h_k A`` on piece ``k``, the ``A`` terms cancel as before and
        ``grad_A = sum_n h_{k(n)} G_n``, ``grad_{h_k} = sum_{n in piece k} <A, G_n>`` (Frobenius product)."""
        if self.a_pieces == 1:
            return terms.sum(0), None
        score = self.variational
        k = score.piece_of(times.to(terms.device), self.reference.T)
        h = score.scale_iterate.to(terms)[k]
        grad = (h.reshape(-1, *([1] * (terms.ndim - 1))) * terms).sum(0)
        inner = (terms * score.iterate.to(terms)).flatten(1).sum(1)                 # <A, G_n>
        scale_grad = torch.zeros(self.a_pieces, dtype=terms.dtype, device=terms.device).index_add_(0, k, inner)
        return grad, scale_grad

    @torch.no_grad()
    def prior_mismatch(self, x0: torch.Tensor) -> float:
        """``KL(N(m_T, S_T) || prior)`` in nats, where ``N(m_T, S_T)`` has the moments of the forward law at ``T``
        started from the data points ``x0`` (per coordinate for a diagonal ``A``, with correlations for a full one):
        how far sampling starts from the law it should start from. The SA step on ``A`` works to shrink it."""
        t = torch.full((x0.shape[0],), self.reference.T, dtype=x0.dtype, device=x0.device)
        mean, cov = self.reference.marginal(x0, t)
        _, prior = self.reference.prior_moments(self.event_shape, like=x0)
        m = mean.flatten(1).double()
        mu = m.mean(0)
        if self.a_kind == "diagonal":
            var = m.var(0) + cov.var.expand_as(mean)[0].flatten().double()
            p = prior.var.expand_as(mean)[0].flatten().double()
            return float(0.5 * (var / p + mu**2 / p - 1 + torch.log(p / var)).sum())
        s1 = torch.cov(m.T).reshape(mu.numel(), mu.numel()) + cov.dense(mean)[0].double()
        s0 = prior.dense(x0[:1])[0].double()
        s0_inv = torch.linalg.inv(s0)
        return float(0.5 * (torch.trace(s0_inv @ s1) + mu @ s0_inv @ mu - mu.numel()
                            + torch.logdet(s0) - torch.logdet(s1)))




def _summary(values: torch.Tensor, most: int = 16) -> list[float]:
    """``values`` sorted, or 16 of their quantiles when there are more (an image's per-pixel rates)."""
    v = values.detach().flatten().double().sort().values.cpu()
    if v.numel() > most:
        v = torch.quantile(v, torch.linspace(0, 1, most, dtype=torch.float64))
    return [float(x) for x in v]
