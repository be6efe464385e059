"""Diffusion Schrödinger Bridge Matching (Shi, De Bortoli, Campbell, Doucet, NeurIPS 2023): iterative Markovian
fitting (IMF) with a Brownian-bridge reference.

Each outer iteration is one phase: take the current coupling ``(X0, X1)``, sample the reference bridge between its
pairs, ``X_t = (1 - t) X0 + t X1 + sigma sqrt(t (1 - t)) Z``, and regress one direction's drift on it — the
Markovian projection of the mixture of bridges (:class:`BridgeMatching`):

* forward: ``f(x, t) = (E[X1 | X_t = x] - x) / (1 - t)`` (maths.md §G.4), trained as
  ``E || X_t + (1 - t) f(X_t, t) - X1 ||^2``;
* backward (reverse time): ``b(x, t) = (E[X0 | X_t = x] - x) / t``, trained as ``E || X_t + t b(X_t, t) - X0 ||^2``.

Both losses are the drift regressions weighted by ``(1 - t)^2`` and ``t^2``, which have the same minimiser and keep
the targets' variance bounded near the ends. The next phase's coupling is simulated by the direction just trained
(forward from the ``X0`` data, or backward from the ``X1`` data) with a fixed seed, when that phase starts.

The first coupling (``start``; Shi et al. 2023, Sec. 4 and App. I) is one of

* ``"auto"`` (the default): ``"reference"`` between two data sets, ``"independent"`` from noise (generation);
* ``"reference"`` (the authors' default): ``X0 ~ p0``, ``X1 = X0 + sigma W_1``, the reference process's
  own coupling (DSBM-IPF): the first phase learns the reference run backward, so the phases alternate backward,
  forward, ... and follow the IPF sequence of DSB (maths.md §D.3);
* ``"independent"``: ``p0 x p1`` (DSBM-IMF), directions forward, backward, ...;
* ``"ot"``: pairs drawn afresh every step from the entropic OT plan between two minibatches at ``reg = 2 sigma^2``
  (SF2M's coupling, maths.md §J.1), directions as for ``"independent"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.core.seeds import COUPLING_STREAM, stream_seed
from sbridge.core.tensors import expand_as_batch, sum_event
from sbridge.core.validation import check_choice, check_positive_int
from sbridge.losses.base import Batch, Terms
from sbridge.processes.linear import LinearSDE
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver, BrownianReference, Iterated
from sbridge.training import distributed
from sbridge.training.sources import CoupledSource, Source, TensorSource
from sbridge.training.trainer import Phase, TrainConfig, split_steps


class BridgeMatching:
    """Bridge-matching loss of one direction on pairs ``batch = {"x0", "x1"}`` (and ``"cond"``; DSBM, Shi et al.
    2023, Eq. 8–9).

    ``direction="forward"`` trains ``models[model]`` as the forward drift, ``"backward"`` as the reverse-time
    backward drift; ``reference`` draws the pinned bridge ``X_t`` between the pairs.
    """

    def __init__(self, reference: LinearSDE, direction: str, model: str) -> None:
        self.reference, self.model = reference, model
        self.direction = check_choice(direction, ("forward", "backward"), "direction")

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        a, b, cond = batch["x0"], batch["x1"], batch.get("cond")
        t = torch.rand(a.shape[0], generator=generator, device=a.device)
        xt = self.reference.bridge_sample(a, b, t, generator)
        tb = expand_as_batch(t, a)
        if self.direction == "forward":
            residual = xt + (1 - tb) * models[self.model](xt, t, cond) - b
        else:
            residual = xt + tb * models[self.model](xt, t, cond) - a
        return sum_event(residual**2).mean(), {}


class DSBM(BrownianReference, Iterated, BridgeSolver):
    """Bridge matching between data and ``N(0, I)`` or between two data sets. ``sigma``: reference noise;
    ``iterations``: IMF iterations (alternating the two directions), ``steps // iterations`` training steps each;
    ``sim_steps``: Euler–Maruyama steps of each re-coupling; ``start``: the first coupling, ``"reference"``
    (DSBM-IPF), ``"independent"``, ``"ot"`` (minibatch entropic OT) or ``"auto"`` (reference between two data
    sets, independent from noise); ``coupling_size``: pairs per phase, drawn
    afresh from the data every phase when the data have more rows (each re-coupling simulates that many paths:
    on a million rows, re-coupling all of them took 5 of the 6 minutes of a 2-D fit)."""

    method = "dsbm"
    fit_options = ("iterations", "sim_steps", "coupling_size")
    #: Defaults measured on the EOT benchmark (maths.md §G.6; D = 16, eps = 1, cBW2-UVP above the draw floor): 6
    #: iterations / 6,000 steps / a constant rate from the independent coupling 2.65 %, from the reference one 1.10;
    #: the reference start with 10 iterations, 30,000 steps and a cosine rate per phase 0.29 and 0.33 (two seeds);
    #: the independent start with those 0.98. From noise the reference coupling ``(x0, x0 + sigma W_1)`` does not
    #: end at the prior, so ``"auto"`` starts generation from the independent coupling. A peak rate of 3e-3 instead
    #: of the trainer's 1e-3 (maths.md §G.6): on isotropic pairs 2.79 -> 0.67 at D = 16 and 0.20 -> 0.09 at D = 2,
    #: on the rotated D = 16 pair 0.26 -> 0.23 (1e-2: 0.75 at D = 16, isotropic).
    default_steps = 30_000
    default_iterations = 10
    train_defaults = {"steps": default_steps, "lr": 3e-3, "lr_schedule": "cosine"}
    starts = ("auto", "reference", "independent", "ot")

    def __init__(self, dim: int | None = None, *, sim_steps: int = 50, start: str = "auto",
                 coupling_size: int = 50_000, **options: Any) -> None:
        self.sim_steps = check_positive_int(sim_steps, "sim_steps")
        self.coupling_size = check_positive_int(coupling_size, "coupling_size")
        self.start = check_choice(start, self.starts, "start")
        shape = options.get("shape")
        size = dim if shape is None else (shape[0] if isinstance(shape, (tuple, list)) and len(shape) == 1 else None)
        if options.get("net") is None and options.get("hidden") is None and isinstance(size, int) and size > 0:
            options["hidden"] = self.default_width(size)
        super().__init__(dim, **options)

    @staticmethod
    def default_width(dim: int) -> int:
        """The MLP width when neither ``hidden`` nor ``net`` is given: 128 up to 16 dimensions, then 8 per dimension
        up to 512. Measured on the EOT benchmark at D = 64, eps = 1 (cBW2-UVP above the draw floor): 7.6 % with
        width 128, 1.5 % with 512, the rest alike."""
        return max(128, min(512, 8 * dim))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "auto", net: Any = None) -> DSBM:
        """As :meth:`Solver.from_config`; a run saved before ``start`` was recorded began from the independent
        coupling, which was then the only one."""
        if "options" in cfg and "start" not in cfg["options"]:
            cfg = {**cfg, "options": {**cfg["options"], "start": "independent"}}
        return super().from_config(cfg, device=device, net=net)

    def set_option(self, key: str, value: Any) -> None:
        if key == "iterations" and check_positive_int(value, "iterations") < 2:
            raise ConfigError(f"iterations must be at least 2 so that both directions are trained, got {value}.")
        if key in ("sim_steps", "coupling_size"):
            value = check_positive_int(value, key)
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "sim_steps": self.sim_steps, "start": self.start,
                "coupling_size": self.coupling_size}

    @property
    def first_coupling(self) -> str:
        """The start in effect: ``start``, with ``"auto"`` resolved by whether the bridge is generative."""
        if self.start != "auto":
            return self.start
        return "independent" if self.generative else "reference"

    def direction(self, k: int) -> str:
        """The direction phase ``k`` trains: forward first, except from the reference coupling (backward first)."""
        first = 1 if self.first_coupling == "reference" else 0
        return "forward" if (k + first) % 2 == 0 else "backward"

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        per_iteration = split_steps(config.steps, self.iterations, "iterations")
        phases = []
        for k in range(self.iterations):
            direction = self.direction(k)
            model = "fwd" if direction == "forward" else "bwd"
            phases.append(Phase(
                f"{direction}_{k + 1}", per_iteration, BridgeMatching(self.reference, direction, model),
                source=lambda k=k: self._source(k, data),
                train=(model,),
                on_end=lambda k=k, direction=direction: {**self._monitor(k + 1, data, self.sim_steps),
                                                         "trained": direction, "start": self.first_coupling}))
        return phases

    def _source(self, k: int, data: FitData) -> Source:
        """Phase ``k``'s minibatches: fresh minibatch-OT pairs every step in phase 0 of ``start="ot"``, else
        draws from the pairs of :meth:`coupling`."""
        if k == 0 and self.first_coupling == "ot":
            return CoupledSource(data.x0, data.x1, self.sigma, "entropic", cond=data.cond)
        x0, x1, cond = self._subset(k, data)
        x0, x1 = self.coupling(k, x0, x1, cond)
        return TensorSource(x0=x0, x1=x1, cond=cond)

    def _subset(self, k: int, data: FitData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Phase ``k``'s rows of each end: all of them, or ``coupling_size`` drawn without replacement (the same on
        every process: the draw depends on the seed and ``k`` only)."""
        x0, x1, cond = data.x0, data.x1, data.cond
        gen = make_generator(stream_seed(self.seed, COUPLING_STREAM, k, 1), self.device)
        if x0.shape[0] > self.coupling_size:
            rows = torch.randperm(x0.shape[0], generator=gen, device=self.device)[:self.coupling_size]
            x0, cond = x0[rows], None if cond is None else cond[rows]
        if x1.shape[0] > self.coupling_size:
            x1 = x1[torch.randperm(x1.shape[0], generator=gen, device=self.device)[:self.coupling_size]]
        return x0, x1, cond

    def coupling(self, k: int, x0: torch.Tensor, x1: torch.Tensor,
                 cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The coupling phase ``k`` trains on: for ``k = 0`` the independent one (also what ``start="ot"`` pairs
        stand in for here) or the reference's ``(x0, x0 + sigma W_1)``, else the pairs simulated by the direction
        trained in phase ``k - 1`` (forward from the ``X0`` data when it was the forward one). ``cond`` (conditional
        generative bridges) belongs to the ``X0`` rows and is kept with each pair."""
        seed = stream_seed(self.seed, COUPLING_STREAM, k)
        if k == 0:
            gen = make_generator(seed, self.device)
            if self.first_coupling == "reference":
                return x0, self.reference.sample_marginal(x0, 1.0, gen)[0]
            return x0, x1[torch.randint(x1.shape[0], (x0.shape[0],), generator=gen, device=self.device)]
        if self.direction(k - 1) == "forward":
            return x0, self._chunked_transport(x0, cond, reverse=False, seed=seed)
        return self._chunked_transport(x1, cond, reverse=True, seed=seed), x1

    def _chunked_transport(self, x: torch.Tensor, cond: torch.Tensor | None, *, reverse: bool, seed: int,
                           chunk: int = 8192) -> torch.Tensor:
        """Transport ``x`` in chunks, each with its own seed; distributed, the chunks are shared out over the
        processes and gathered, so the coupling is the same on any number of processes."""
        ctx = distributed.context()
        starts = list(range(0, x.shape[0], chunk))
        parts: dict[int, torch.Tensor] = {}
        for i in starts[ctx.rank::ctx.world]:
            parts[i] = self.transport(x[i:i + chunk], steps=self.sim_steps, reverse=reverse, seed=seed + i,
                                      cond=None if cond is None else cond[i:i + chunk])
        if ctx.active:
            gathered: dict[int, torch.Tensor] = {}
            for part in distributed.all_gather_objects({i: p.cpu() for i, p in parts.items()}, ctx):
                gathered.update(part)
            parts = {i: p.to(x.device) for i, p in gathered.items()}
        return torch.cat([parts[i] for i in starts])
