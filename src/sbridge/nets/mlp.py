"""The time-conditioned MLP: the default network for vectors (and any event shape, flattened)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sbridge.core.tensors import batch_time, event_numel
from sbridge.core.validation import check_choice, check_memory, check_positive_int
from sbridge.nets.embeddings import ConditionEmbedding, SinusoidalTimeEmbedding


class TimeMLP(nn.Module):
    """MLP ``(x, t[, cond]) -> x``-shaped output, conditioned on time through a sinusoidal embedding concatenated to
    the (flattened) input, and on ``cond`` through a :class:`ConditionEmbedding` concatenated likewise.

    ``depth`` hidden layers of width ``hidden`` with SiLU activations; the last layer starts at zero so the initial
    output is 0 (an identity-like start for residual parametrizations). ``time_layers="all"`` also adds a linear
    map of the time embedding to every hidden layer's pre-activation (``h = SiLU(W h + U e(t) + b)``), so that deep
    layers see time directly rather than through the first layer only; ``"input"`` (default) concatenates it to
    the input alone.
    """

    def __init__(self, dim: int | None = None, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 1000.0, *, time_layers: str = "input", shape: tuple[int, ...] | None = None,
                 cond: dict[str, Any] | None = None) -> None:
        super().__init__()
        if shape is None:
            shape = (check_positive_int(dim, "dim"),)
        self.shape = tuple(int(s) for s in shape)
        self.dim = event_numel(self.shape)
        hidden = check_positive_int(hidden, "hidden")
        depth = check_positive_int(depth, "depth")
        time_dim = check_positive_int(time_dim, "time_dim")
        self.time_layers = check_choice(time_layers, ("input", "all"), "time_layers")
        width_in = self.dim + time_dim * (2 if cond is not None else 1)
        params = width_in * hidden + (depth - 1) * hidden * (hidden + (time_dim if time_layers == "all" else 0)) \
            + hidden * self.dim
        # parameters, their EMA copy, gradients and two Adam moments: five float32 copies
        check_memory(20 * params + 3000 * depth, f"a time MLP of depth {depth:,} and width {hidden:,}",
                     "choose a smaller hidden / depth")
        self.embed = SinusoidalTimeEmbedding(check_positive_int(time_dim, "time_dim"), scale=time_scale)
        self.cond_embed = ConditionEmbedding(cond, time_dim) if cond is not None else None
        layers: list[nn.Module] = []
        width = self.dim + time_dim * (2 if cond is not None else 1)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, self.dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)
        # the time maps of the deeper layers (the first layer already sees the embedding in its input)
        self.time_maps = None
        if self.time_layers == "all":
            self.time_maps = nn.ModuleList(nn.Linear(time_dim, hidden, bias=False) for _ in range(depth - 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = batch_time(t, x)
        parts = [x.reshape(x.shape[0], -1), self.embed(t).to(x.dtype)]
        if self.cond_embed is not None:
            parts.append(self.cond_embed(cond, x.shape[0]).to(x.dtype))
        h = torch.cat(parts, dim=1)
        if self.time_maps is None:
            return self.net(h).reshape(x.shape)
        # self.net is [Linear, SiLU] * depth + [Linear]: layer l's pre-activation gets U_l e(t) added
        h = self.net[1](self.net[0](h))
        for layer, time_map in enumerate(self.time_maps, start=1):
            h = self.net[2 * layer + 1](self.net[2 * layer](h) + time_map(parts[1]))
        return self.net[-1](h).reshape(x.shape)
