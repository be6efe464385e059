"""Neural networks. Plain ``torch.nn.Module``s that know nothing about bridges."""

from __future__ import annotations

import math

import torch
from torch import nn

from sbridge.validation import check_positive_int


class SinusoidalTimeEmbedding(nn.Module):
    """Map a time ``t`` (``(batch,)``) to ``[sin(w_k t), cos(w_k t)]`` with geometric frequencies (Vaswani et al. 2017).

    ``scale`` stretches ``t in [0, T]`` so that the frequencies span the interval well (1000 for T = 1).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = self.scale * t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        emb = torch.cat([args.sin(), args.cos()], dim=1)
        if self.dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb


class TimeMLP(nn.Module):
    """MLP ``(x, t) -> R^dim`` conditioned on time through a sinusoidal embedding concatenated to the input.

    ``depth`` hidden layers of width ``hidden`` with SiLU activations; the last layer starts at zero so the initial
    output is 0 (an identity-like start for residual parametrizations).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        hidden = check_positive_int(hidden, "hidden")
        depth = check_positive_int(depth, "depth")
        self.embed = SinusoidalTimeEmbedding(check_positive_int(time_dim, "time_dim"), scale=time_scale)
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(torch.cat([x, self.embed(t).to(x.dtype)], dim=1))
