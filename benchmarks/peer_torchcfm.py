"""torchcfm's SF2M (Tong et al., AISTATS 2024) as a peer in the benchmarks: its own pair sampler and regression
targets, trained by a bare PyTorch loop, on networks identical to sbridge's SF2M.

A bench-only extra, not a dependency of sbridge: ``make bench-peers`` installs ``torchcfm`` without its dependencies
(its flow-matching module needs only torch, numpy and POT; its other requirements would pull another torch build).

What comes from torchcfm: ``SchrodingerBridgeConditionalFlowMatcher`` (the minibatch plan, ``ot_method`` "exact" by
default or "sinkhorn" at POT's ``reg = 2 sigma^2``; the bridge point, the flow target ``u_t`` and the noise) and
``compute_lambda`` (the score loss ``|lambda_t s + z|^2``, ``lambda_t = 2 sigma_t / sigma^2``, so its score network
learns ``sigma^2 / 2`` times the score). What is kept from sbridge, so that only the training differs: the
networks (built by ``sbridge.SF2M`` with the same seed), Adam at the same rate, gradient clipping, the EMA of the
weights, and the sampler (the trained EMA networks are put into an ``sbridge.SF2M`` whose ``transport`` runs the
same Euler–Maruyama SDE as every other row).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import sbridge


class _Rescaled(nn.Module):
    """``scale * net(...)``: torchcfm's score network (``sigma^2 / 2`` times the score) read as sbridge's score."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, *args: Any) -> torch.Tensor:
        return self.scale * self.net(*args)


def available() -> bool:
    """Whether torchcfm is installed (``make bench-peers``)."""
    try:
        import torchcfm  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    """torchcfm's version."""
    import torchcfm

    return torchcfm.__version__


def fit_sf2m(x0: torch.Tensor, x1: torch.Tensor, sigma: float, *, ot_method: str = "exact", steps: int = 5000,
             batch_size: int = 256, lr: float = 1e-3, grad_clip: float = 1.0, ema_decay: float = 0.999,
             seed: int = 0) -> sbridge.SF2M:
    """torchcfm's SF2M fitted between ``x0`` and ``x1``; returned inside an ``sbridge.SF2M`` for sampling.

    Defaults are sbridge's SF2M defaults (5,000 steps, batch 256, Adam 1e-3, clip 1, EMA 0.999)."""
    from torchcfm.conditional_flow_matching import SchrodingerBridgeConditionalFlowMatcher

    solver = sbridge.SF2M(x0.shape[1], sigma=sigma, device="cpu", seed=seed)
    velocity, score = solver.models["velocity"], solver.models["score"]
    ema = [copy.deepcopy(velocity).requires_grad_(False), copy.deepcopy(score).requires_grad_(False)]
    params = [*velocity.parameters(), *score.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    matcher = SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method=ot_method)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        a = x0[torch.randint(x0.shape[0], (batch_size,), generator=gen)]
        b = x1[torch.randint(x1.shape[0], (batch_size,), generator=gen)]
        t, xt, ut, noise = matcher.sample_location_and_conditional_flow(a, b, return_noise=True)
        lam = matcher.compute_lambda(t)[:, None]
        flow_loss = ((velocity(xt, t, None) - ut) ** 2).sum(-1).mean()
        score_loss = ((lam * score(xt, t, None) + noise) ** 2).sum(-1).mean()
        optimiser.zero_grad(set_to_none=True)
        (flow_loss + score_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimiser.step()
        with torch.no_grad():
            for avg, net in zip(ema, (velocity, score), strict=True):
                for p_avg, p in zip(avg.parameters(), net.parameters(), strict=True):
                    p_avg.lerp_(p, 1 - ema_decay)
    solver.ema_models["velocity"] = ema[0]
    solver.ema_models["score"] = _Rescaled(ema[1], 2 / sigma**2)
    return solver
