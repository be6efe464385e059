"""The time-conditioned MLP: the default network for vectors (and any event shape, flattened)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sbridge.core.tensors import batch_time, event_numel
from sbridge.core.validation import (
    check_choice,
    check_memory,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)
from sbridge.nets.embeddings import ConditionEmbedding, SinusoidalTimeEmbedding


class TimeMLP(nn.Module):
    """MLP ``(x, t[, cond]) -> x``-shaped output, conditioned on time through a sinusoidal embedding concatenated to
    the (flattened) input, and on ``cond`` through a :class:`ConditionEmbedding` concatenated likewise.

    ``depth`` hidden layers of width ``hidden`` with SiLU activations; the last layer starts at zero so the initial
    output is 0 (an identity-like start for residual parametrizations). ``time_layers="all"`` also adds a linear
    map of the time embedding to every hidden layer's pre-activation (``h = SiLU(W h + U e(t) + b)``), so that deep
    layers see time directly rather than through the first layer only; ``"input"`` (default) concatenates it to
    the input alone.

    ``fourier_bands = B > 0`` also feeds the network ``sin(w_k x_i)`` and ``cos(w_k x_i)`` of every input coordinate
    at the frequencies ``w_k = 2 pi 2^k / fourier_period``, ``k = 0..B-1`` (wavelengths from ``fourier_period`` down
    to ``fourier_period / 2^(B-1)``, in data units): positional encoding (Mildenhall et al. 2020; Tancik et al.
    2020), which lets a small MLP represent functions that change over short distances in ``x``, as a score does at
    low noise near a sharp edge of the data. It multiplies the input width by ``1 + 2B``: meant for low-dimensional
    data (the 2-D toys), not images.
    """

    def __init__(self, dim: int | None = None, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 1000.0, *, time_layers: str = "input", fourier_bands: int = 0,
                 fourier_period: float = 8.0, shape: tuple[int, ...] | None = None,
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
        self.fourier_bands = check_nonnegative_int(fourier_bands, "fourier_bands")
        period = check_positive_float(fourier_period, "fourier_period")
        # derived from the config, so not saved: checkpoints keep the keys they had before this option
        self.register_buffer("fourier_freqs", 2 * math.pi * 2.0 ** torch.arange(self.fourier_bands) / period,
                             persistent=False)
        features = self.dim * (1 + 2 * self.fourier_bands)
        width_in = features + time_dim * (2 if cond is not None else 1)
        params = width_in * hidden + (depth - 1) * hidden * (hidden + (time_dim if time_layers == "all" else 0)) \
            + hidden * self.dim
        # parameters, their EMA copy, gradients and two Adam moments: five float32 copies
        check_memory(20 * params + 3000 * depth, f"a time MLP of depth {depth:,} and width {hidden:,}",
                     "choose a smaller hidden / depth")
        self.embed = SinusoidalTimeEmbedding(check_positive_int(time_dim, "time_dim"), scale=time_scale)
        self.cond_embed = ConditionEmbedding(cond, time_dim) if cond is not None else None
        layers: list[nn.Module] = []
        width = width_in
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
        flat = x.reshape(x.shape[0], -1)
        time_embedding = self.embed(t).to(x.dtype)
        parts = [flat]
        if self.fourier_bands:
            angles = (flat[:, :, None] * self.fourier_freqs.to(x.dtype)).flatten(1)
            parts += [angles.sin(), angles.cos()]
        parts.append(time_embedding)
        if self.cond_embed is not None:
            parts.append(self.cond_embed(cond, x.shape[0]).to(x.dtype))
        h = torch.cat(parts, dim=1)
        if self.time_maps is None:
            return self.net(h).reshape(x.shape)
        # self.net is [Linear, SiLU] * depth + [Linear]: layer l's pre-activation gets U_l e(t) added
        h = self.net[1](self.net[0](h))
        for layer, time_map in enumerate(self.time_maps, start=1):
            h = self.net[2 * layer + 1](self.net[2 * layer](h) + time_map(time_embedding))
        return self.net[-1](h).reshape(x.shape)
