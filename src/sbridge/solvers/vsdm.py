"""Variational Schrödinger Diffusion Models (Deng et al., ICML 2024; math.md §C) — the pieces VSDM is built from.

VSDM linearises the forward Schrödinger-bridge score, ``grad log psi_t(x) ~ A x``, which turns the forward process
into a multivariate OU process ``dx = -beta_t D x / 2 dt + sqrt(beta_t) dW`` with ``D = I - 2A`` (§C.1): its
marginals are closed-form (:class:`~sbridge.processes.LinearSDE`), so the backward score trains without simulation,
and ``A`` is updated by stochastic approximation from simulated backward trajectories (§C.4).

This module holds the variational score :class:`LinearScore` (``A`` and its admissible set) and the SA gradient
:func:`sa_gradient`; the solver that alternates them is built on these.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from sbridge.errors import ConfigError, DataError
from sbridge.validation import check_choice, check_positive_int

#: Largest singular value (full) or entry (diagonal) of ``A``: keeps ``D + D^T = 2I - (A + A^T)`` positive definite
#: with room to spare, so the forward covariance stays bounded (§C.2: ``a_i < 1/2``).
DEFAULT_MAX_RATE = 0.45
#: Most negative diagonal rate (``D`` up to ``1 + 2 * 5 = 11``: more contraction than VP, but not a stiff process).
MAX_CONTRACTION = 5.0


class LinearScore(nn.Module):
    """The variational forward score ``x -> A x`` of VSDM (math.md §C.1), starting at ``A = 0`` (plain VP).

    ``kind="diagonal"``: ``A = diag(a)``, one rate per event entry (images and sequences); ``kind="full"``:
    ``A = U diag(s) V^T`` with ``U, V`` orthogonal (the paper's code parametrisation), for vectors. The admissible
    set keeps every ``a_i`` (diagonal) or singular value ``s_i`` (full) at most ``max_rate < 1/2``, so that the
    symmetric part of ``D = I - 2A`` stays positive definite and the OU marginals stay bounded;
    :meth:`project_` maps ``A`` back into it after an update instead of letting the covariance blow up.
    """

    def __init__(self, dim: int, kind: str = "diagonal", max_rate: float = DEFAULT_MAX_RATE) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.kind = check_choice(kind, ("diagonal", "full"), "kind of A")
        if not 0.0 < float(max_rate) < 0.5:
            raise ConfigError(f"max_rate must lie in (0, 1/2) so that D = I - 2A stays positive definite, got "
                              f"{max_rate!r}.")
        self.max_rate = float(max_rate)
        if self.kind == "diagonal":
            self.rates = nn.Parameter(torch.zeros(self.dim))
        else:
            self.singular = nn.Parameter(torch.zeros(self.dim))
            self.u = parametrizations.orthogonal(nn.Linear(self.dim, self.dim, bias=False))
            self.v = parametrizations.orthogonal(nn.Linear(self.dim, self.dim, bias=False))

    def matrix(self) -> torch.Tensor:
        """``A``: the ``(d,)`` diagonal for ``kind="diagonal"``, else the ``(d, d)`` matrix ``U diag(s) V^T``."""
        if self.kind == "diagonal":
            return self.rates
        return self.u.weight @ torch.diag(self.singular) @ self.v.weight.T

    def drift_matrix(self) -> torch.Tensor:
        """``D = I - 2A`` (diagonal: ``1 - 2a``), the drift operator of the forward OU process (§C.1)."""
        a = self.matrix()
        if self.kind == "diagonal":
            return 1.0 - 2.0 * a
        return torch.eye(self.dim, dtype=a.dtype, device=a.device) - 2.0 * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for a batch ``(B, d)``."""
        a = self.matrix()
        return x * a if self.kind == "diagonal" else x @ a.T

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the diagonal rates into ``[-MAX_CONTRACTION, max_rate]`` or the singular values into
        ``[0, max_rate]``: the largest eigenvalue of ``A + A^T`` is then at most ``2 max_rate < 1`` and ``D``'s
        symmetric part stays positive definite (negative diagonal rates contract more than VP)."""
        if self.kind == "diagonal":
            self.rates.clamp_(min=-MAX_CONTRACTION, max=self.max_rate)
        else:  # singular values are magnitudes (a sign belongs to U or V)
            self.singular.abs_().clamp_(max=self.max_rate)

    @torch.no_grad()
    def step_(self, gradient: torch.Tensor, lr: float) -> None:
        """One stochastic-approximation step ``A <- A - lr * gradient`` (§C.4), then :meth:`project_`.

        Diagonal: ``gradient`` is ``(d,)``. Full: a ``(d, d)`` gradient with respect to ``A`` moves the singular
        values along ``diag(U^T G V)`` (the gradient restricted to the current singular directions; ``U`` and ``V``
        stay, as with the paper's code whose orthogonal factors move far more slowly)."""
        if self.kind == "diagonal":
            self.rates.sub_(lr * gradient)
        else:
            self.singular.sub_(lr * torch.diagonal(self.u.weight.T @ gradient @ self.v.weight))
        self.project_()


def sa_gradient(xs: torch.Tensor, scores: torch.Tensor, betas: torch.Tensor, dts: torch.Tensor, zeta: float,
                kind: str = "full") -> torch.Tensor:
    """Gradient in ``A`` of VSDM's forward loss on backward trajectories (math.md §C.4):

        grad_A L = sum_n beta_n dt_n ( E[A x x^T] + E[(s(x, t_n) - A x) x^T] + zeta I )
                 = sum_n beta_n dt_n ( E[s(x, t_n) x^T] + zeta I ),

    the ``A`` terms cancelling because the backward score is ``grad log phi = s - A x``. ``xs`` and ``scores`` are
    ``(N, B, d)``: the states of ``B`` simulated backward trajectories at ``N`` grid times and the learned scores
    there; ``betas`` and ``dts`` are ``(N,)``. With ``zeta = 1`` and states distributed as the forward marginals
    ``rho_t`` with their exact scores the gradient vanishes (Stein: ``E[grad log rho x^T] = -I``), so ``A`` moves only
    through the mismatch between backward and forward marginals — the IPF projection. ``kind="diagonal"`` returns
    the diagonal ``(d,)``.
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
        return (weight[:, None] * (cross + zeta)).sum(0)
    cross = torch.einsum("nbi,nbj->nij", scores, xs) / xs.shape[1]  # (N, d, d): E[s x^T]
    eye = torch.eye(xs.shape[2], dtype=xs.dtype, device=xs.device)
    return (weight[:, None, None] * (cross + zeta * eye)).sum(0)
