"""Diffusion Schrödinger Bridge (De Bortoli, Thornton, Heng, Doucet; NeurIPS 2021): IPF with iterative mean
matching (maths.md §D.3–D.4, Proposition 3, Algorithm 1), on a discrete time grid ``0 = t_0 < ... < t_N = 1``.

Kernels (reference noise ``sigma``, step ``gamma_{k+1} = t_{k+1} - t_k``):

* forward ``X_{k+1} = F_k(X_k) + sigma sqrt(gamma_{k+1}) Z`` with ``F_k(x) = x + gamma_{k+1} f(x, t_k)``;
* backward ``X_k = B_{k+1}(X_{k+1}) + sigma sqrt(gamma_{k+1}) Z`` with ``B_{k+1}(x) = x + gamma_{k+1} b(x, t_{k+1})``.

Mean matching: the backward half-step fits ``B_{k+1}(X_{k+1}) ~ X_{k+1} + F_k(X_k) - F_k(X_{k+1})`` on forward
trajectories (Eq. 12); the forward half-step fits ``F_k(X_k) ~ X_k + B_{k+1}(X_{k+1}) - B_{k+1}(X_k)`` on backward
trajectories (Eq. 13). The drifts are residuals on the reference, ``f = f_ref + net_f`` and ``b = -f_ref + net_b``,
with zero-initialised networks: iteration 0's forward process *is* the reference, so the first backward half-step
is score-based generative modelling under the reference (§D.4). Each half-step warm-starts from the previous
network; trajectories are simulated with the other direction's EMA network and cached, the cache refreshed every
``cache_refresh`` steps. The step schedule is symmetric (small steps at both ends, §D.6).

Generation uses an Ornstein–Uhlenbeck reference ``f_ref(x) = -(sigma^2 / 2) x``, whose invariant law is the prior
``N(0, I)``; a bridge between two data sets uses the Brownian reference ``f_ref = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError
from sbridge.core.tensors import expand_as_batch, sum_event
from sbridge.core.validation import check_choice, check_positive_int
from sbridge.losses.base import Batch, Terms
from sbridge.numerics.integrators import euler_maruyama
from sbridge.processes.linear import OU, LinearSDE
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver, BrownianReference, Iterated
from sbridge.solvers.capabilities import Capabilities
from sbridge.training.trainer import Phase, TrainConfig


def symmetric_schedule(n_steps: int, ratio: float = 10.0) -> torch.Tensor:
    """Step sizes ``gamma_1..gamma_N`` summing to 1: linear from small to large over the first half, mirrored
    (the DSB code's ``gamma_half`` + ``flip``); ``ratio`` = largest / smallest step."""
    n_steps = check_positive_int(n_steps, "n_steps")
    if n_steps % 2:
        raise ConfigError(f"n_steps must be even for the symmetric DSB schedule, got {n_steps}.")
    half = torch.linspace(1.0, float(ratio), n_steps // 2, dtype=torch.float64)
    gammas = torch.cat([half, half.flip(0)])
    return gammas / gammas.sum()


class MeanMatching:
    """Mean-matching loss of one IPF half-step (DSB Prop. 3) on cached transitions
    ``batch = {"x", "t", "gamma", "target"}`` (and ``"cond"``):
    ``|| gamma (±f_ref(x) + net(x, t)) - target ||^2 / gamma``.

    ``direction="backward"`` fits ``B_{k+1}(X_{k+1}) - X_{k+1}`` (Eq. 12), ``"forward"`` fits ``F_k(X_k) - X_k``
    (Eq. 13); the network is a residual on the reference drift (``+f_ref`` forward, ``-f_ref`` backward), and the
    division by ``gamma`` makes every grid step weigh alike.
    """

    def __init__(self, reference: LinearSDE, direction: str, model: str) -> None:
        self.reference, self.model = reference, model
        self.direction = check_choice(direction, ("forward", "backward"), "direction")

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x, t, gamma, target = batch["x"], batch["t"], batch["gamma"], batch["target"]
        ref = self.reference.drift(x, t)
        drift = (ref if self.direction == "forward" else -ref) + models[self.model](x, t, batch.get("cond"))
        return (sum_event((expand_as_batch(gamma, x) * drift - target) ** 2) / gamma).mean(), {}


class DSB(BrownianReference, Iterated, BridgeSolver):
    """IPF bridge between data and ``N(0, I)`` or between two data sets. ``n_steps``: time steps of the grid;
    ``iterations``: IPF iterations, each a backward then a forward half-step of ``steps // (2 iterations)`` training
    steps; ``cache_size`` trajectories are simulated for each cache, refreshed every ``cache_refresh`` steps.

    The default grid has 40 steps: mean matching is exact only up to ``O(gamma)`` (the Gaussian approximation of
    the reversed kernel, §D.1), and on a 2-D Gaussian pair the transported mean error fell from 0.5 to 0.27 to
    0.15 at 10, 20 and 40 steps, while the training cost does not depend on ``n_steps``.

    Training defaults (maths.md §D.6): 4 IPF iterations of 20,000 steps in all, the learning rate on a cosine per
    half-step, caches of 4,000 trajectories. On the d = 5 Gaussian pair (DSBM paper) the coupling error was 0.154
    with the earlier 6 iterations / 12,000 steps / constant rate / 1,000 trajectories, and 0.047 with these: IPF
    converges in a few iterations there (about 7x per iteration at sigma = 1), so the budget is better spent on each
    half-step's regression, whose targets carry the step's Brownian increment (signal O(gamma), noise
    O(sqrt(gamma))); a larger batch did not help, a decaying rate did.
    """

    method = "dsb"
    fit_options = ("iterations", "cache_size", "cache_refresh")

    def capabilities(self) -> Capabilities:
        """As a bridge's, sampling on its training grid only (its drifts are trained at the grid times)."""
        return super().capabilities().with_(fixed_steps=self.n_steps)
    default_steps = 20_000
    default_iterations = 4
    train_defaults = {"steps": default_steps, "lr_schedule": "cosine"}

    def __init__(self, dim: int | None = None, *, n_steps: int = 40, cache_size: int = 4000,
                 cache_refresh: int = 250, **options: Any) -> None:
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.gammas = symmetric_schedule(self.n_steps)
        self.times = [0.0, *torch.cumsum(self.gammas, 0).tolist()]
        self.times[-1] = 1.0
        self.cache_size = check_positive_int(cache_size, "cache_size")
        self.cache_refresh = check_positive_int(cache_refresh, "cache_refresh")
        super().__init__(dim, **options)

    def set_option(self, key: str, value: Any) -> None:
        if key in ("cache_size", "cache_refresh"):
            value = check_positive_int(value, key)
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "n_steps": self.n_steps, "cache_size": self.cache_size,
                "cache_refresh": self.cache_refresh}

    def _generative_reference(self) -> LinearSDE:
        """OU toward ``N(0, I)`` for generation (Brownian motion between two data sets; both with noise sigma)."""
        return OU(self.sigma)

    # ---- drifts (residual on the reference) --------------------------------------------------------------------
    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.reference.drift(x, t) + self.ema_models["fwd"](x, t, cond)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        return -self.reference.drift(x, t) + self.ema_models["bwd"](x, t, cond)

    @torch.no_grad()
    def transport(self, x: Any, *, steps: int | None = None, **kwargs: Any) -> torch.Tensor:
        """Push samples along the learned kernels on the training grid (``steps`` must be None or ``n_steps``:
        the drifts are only trained at the grid times)."""
        if steps is not None and steps != self.n_steps:
            raise ConfigError(f"DSB transports on its training grid of n_steps={self.n_steps} steps; pass "
                              f"steps={self.n_steps} or leave it out.")
        return super().transport(x, steps=self.n_steps, **kwargs)

    def _grid(self, steps: int | None, reverse: bool) -> list[float]:
        return self.times[::-1] if reverse else self.times

    # ---- training ----------------------------------------------------------------------------------------------
    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        return self._alternating_phases(data, config, lambda n, direction: f"ipf{n + 1}_{direction}",
                                        lambda direction, model: MeanMatching(self.reference, direction, model),
                                        self._simulate_cache, self.n_steps)

    @torch.no_grad()
    def _simulate_cache(self, direction: str, data: FitData, generator: torch.Generator,
                        count: int | None = None) -> dict[str, torch.Tensor]:
        """Trajectories of the *other* direction's EMA kernels and the mean-matching targets at each step (with the
        condition of each trajectory's data point, for conditional generative bridges)."""
        x0 = data.x0
        device, m = x0.device, self.cache_size if count is None else count
        gammas = self.gammas.to(device=device, dtype=x0.dtype)
        xs, ts, gs, targets = [], [], [], []
        start, c = self._cache_starts(direction, data, m, generator)
        if direction == "backward":  # forward trajectories from the data, targets F_k(X_k) - F_k(X_{k+1})
            path, _ = euler_maruyama(lambda y, t: self.forward_drift(y, t, c), self._diffusion, start, self.times,
                                     generator=generator, return_path=True, noise_last_step=True)
            for k in range(self.n_steps):
                g, tk = gammas[k], self.times[k]
                fk, fk1 = self.forward_drift(path[k], tk, c), self.forward_drift(path[k + 1], tk, c)
                targets.append(path[k] - path[k + 1] + g * (fk - fk1))
                xs.append(path[k + 1])
                ts.append(torch.full((m,), self.times[k + 1], device=device))
                gs.append(torch.full((m,), float(g), device=device))
        else:  # backward trajectories from the prior end, targets B_{k+1}(X_{k+1}) - B_{k+1}(X_k)
            path, _ = euler_maruyama(lambda y, t: -self.backward_drift(y, t, c), self._diffusion, start,
                                     self.times[::-1], generator=generator, return_path=True, noise_last_step=True)
            path = path.flip(0)  # index by grid position: path[k] is X_k
            for k in range(self.n_steps):
                g, tk1 = gammas[k], self.times[k + 1]
                bk1, bk = self.backward_drift(path[k + 1], tk1, c), self.backward_drift(path[k], tk1, c)
                targets.append(path[k + 1] - path[k] + g * (bk1 - bk))
                xs.append(path[k])
                ts.append(torch.full((m,), self.times[k], device=device))
                gs.append(torch.full((m,), float(g), device=device))
        cache = {"x": torch.cat(xs), "t": torch.cat(ts), "gamma": torch.cat(gs), "target": torch.cat(targets)}
        if c is not None:
            cache["cond"] = c.repeat(self.n_steps, *([1] * (c.ndim - 1)))
        return cache
