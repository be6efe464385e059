"""Simulation-free Schrödinger bridges via score and flow matching (SF2M; Tong, Malkin, Fatras, Atanackovic, Zhang,
Huguet, Wolf & Bengio, AISTATS 2024; maths.md §J).

The Schrödinger bridge of the Brownian reference ``sigma W`` on ``[0, 1]`` is the mixture, over its static EOT plan
``pi``, of Brownian bridges. SF2M draws pairs ``(x0, x1)`` from the entropic OT plan between two minibatches
(Sinkhorn started from the exact plan's duals, maths.md §J.1; ``coupling="exact"`` or ``"independent"`` as options),
a time ``t`` and the bridge point ``x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z``, and regresses two networks
on closed-form targets:

* the probability-flow velocity ``v(x, t)`` on ``u = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + (x1 - x0)``;
* the score ``s(x, t)`` in its noise form, ``|lambda(t) s + z|^2`` with ``lambda(t) = sigma sqrt(t (1 - t))``.

No simulation in training. The bridge's forward drift is ``v + sigma^2 s / 2`` and its reverse-time drift
``sigma^2 s / 2 - v`` (Nelson's relation, maths.md §1.1), so ``transport`` runs the SDE both ways and ``ode=True``
the probability flow ``v``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError
from sbridge.core.tensors import expand_as_batch, sum_event
from sbridge.core.validation import check_choice, check_positive_float
from sbridge.losses.base import Batch, Terms
from sbridge.numerics.couplings import COUPLINGS
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver, BrownianReference
from sbridge.training.sources import CoupledSource
from sbridge.training.trainer import Phase, TrainConfig


class ScoreFlowMatching:
    """SF2M's loss on pairs ``{"x0", "x1"}`` of the coupling (the paper's Eq. 11 with ``lambda(t) = sigma sqrt(t (1
    - t))``): ``|v(x_t, t) - u_t|^2 + |lambda(t) s(x_t, t) + z|^2``, ``t`` uniform on ``[t_min, 1 - t_min]`` (the
    flow target's variance grows as ``1 / t`` at the ends)."""

    def __init__(self, sigma: float, t_min: float) -> None:
        self.sigma, self.t_min = sigma, t_min

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x0, x1, cond = batch["x0"], batch["x1"], batch.get("cond")
        t = self.t_min + (1 - 2 * self.t_min) * torch.rand(x0.shape[0], generator=generator, device=x0.device)
        tb = expand_as_batch(t, x0)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        spread = torch.sqrt(tb * (1 - tb))
        xt = (1 - tb) * x0 + tb * x1 + self.sigma * spread * z
        flow_target = (1 - 2 * tb) / (2 * spread) * self.sigma * z + (x1 - x0)
        flow = sum_event((models["velocity"](xt, t, cond) - flow_target) ** 2).mean()
        score = sum_event((self.sigma * spread * models["score"](xt, t, cond) + z) ** 2).mean()
        return flow + score, {"flow": flow.detach(), "score": score.detach()}


class SF2M(BrownianReference, BridgeSolver):
    """Score and flow matching on minibatch OT couplings, between data and ``N(0, I)`` or between two data sets.

    ``sigma``: reference noise (the coupling's entropic regularisation is POT's ``reg = 2 sigma^2``); ``coupling``:
    ``"entropic"`` (default), ``"exact"`` (unregularised OT, the ``sigma -> 0`` plan) or ``"independent"``;
    ``t_min``: training times are uniform on ``[t_min, 1 - t_min]``. Two networks, ``velocity`` and ``score``.
    """

    method = "sf2m"
    model_names = ("velocity", "score")
    default_steps = 5000
    #: 256 points a side: the minibatch plan (network simplex, then Sinkhorn) costs ~10-30 ms at 256 and ~4x that
    #: at 512 on a CPU, more than the networks' step.
    train_defaults = {"batch_size": 256}
    declared = BridgeSolver.declared.with_(plots=("samples", "trajectories"))

    def __init__(self, dim: int | None = None, *, coupling: str = "entropic", t_min: float = 1e-3,
                 **options: Any) -> None:
        self.coupling = check_choice(coupling, COUPLINGS, "coupling")
        self.t_min = check_positive_float(t_min, "t_min")
        if self.t_min >= 0.5:
            raise ConfigError(f"t_min must lie in (0, 0.5) so that training times fill (t_min, 1 - t_min), got "
                              f"{t_min!r}.")
        super().__init__(dim, **options)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "coupling": self.coupling, "t_min": self.t_min}

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        source = CoupledSource(data.x0, data.x1, self.sigma, self.coupling, cond=data.cond)
        return [Phase("score_flow", config.steps, ScoreFlowMatching(self.sigma, self.t_min), source,
                      self.model_names, on_end=lambda: self._monitor(1, data, None))]

    # ---- the bridge --------------------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The learned probability-flow velocity ``v(x, t)``."""
        return self.ema_models["velocity"](x, t, cond)

    def score(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The learned score ``grad log p_t(x)`` of the bridge's marginal."""
        return self.ema_models["score"](x, t, cond)

    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``v + sigma^2 s / 2``: the forward SDE with the flow's marginals."""
        return self.velocity(x, t, cond) + 0.5 * self.sigma**2 * self.score(x, t, cond)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma^2 s / 2 - v``: the reverse-time drift (Nelson: forward + backward = ``sigma^2 s``)."""
        return 0.5 * self.sigma**2 * self.score(x, t, cond) - self.velocity(x, t, cond)

