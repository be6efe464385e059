"""Embeddings shared by every network: time (sinusoidal) and conditions (labels or vectors).

A condition is a class label (``int``) or a condition vector, with a learned "no condition" embedding for
classifier-free guidance. A missing condition is written ``-1`` for a label and ``NaN`` for a vector (per row), and
``cond=None`` means no condition for the whole batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_positive_int


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


COND_KINDS = ("label", "vector")


def check_condition_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a condition spec: ``None``, ``{"kind": "label", "classes": K}`` or ``{"kind": "vector", "dim": k}``."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"cond must be a dict like {{'kind': 'label', 'classes': 10}} or {{'kind': 'vector', "
                          f"'dim': 3}}, got {spec!r}.")
    kind = check_choice(spec["kind"], COND_KINDS, "condition kind")
    key = "classes" if kind == "label" else "dim"
    if set(spec) != {"kind", key}:
        raise ConfigError(f"a {kind} condition takes exactly the keys 'kind' and {key!r}, got {sorted(spec)}.")
    return {"kind": kind, key: check_positive_int(spec[key], f"condition {key}")}


class ConditionEmbedding(nn.Module):
    """Embed a condition into ``out_dim`` features; rows without a condition get a learned null embedding.

    Labels: ``nn.Embedding`` with one extra row for "no label" (``-1``). Vectors: a two-layer MLP, with a learned null
    vector for rows holding ``NaN``.
    """

    def __init__(self, spec: dict[str, Any], out_dim: int) -> None:
        super().__init__()
        self.spec = check_condition_spec(spec)
        self.out_dim = out_dim
        if self.spec["kind"] == "label":
            self.classes = self.spec["classes"]
            self.table = nn.Embedding(self.classes + 1, out_dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(self.spec["dim"], out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
            self.null = nn.Parameter(torch.zeros(out_dim))

    def forward(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        if self.spec["kind"] == "label":
            if cond is None:
                idx = torch.full((batch,), self.classes, dtype=torch.long, device=self.table.weight.device)
            else:
                idx = cond.reshape(batch).long()
                idx = torch.where(idx < 0, torch.full_like(idx, self.classes), idx)
            return self.table(idx)
        if cond is None:
            return self.null.expand(batch, -1)
        cond = cond.reshape(batch, -1).to(self.null.dtype)
        missing = torch.isnan(cond).any(dim=1, keepdim=True)
        return torch.where(missing, self.null.expand(batch, -1), self.mlp(torch.nan_to_num(cond)))


def drop_condition(cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Replace the rows where ``drop`` is true by "no condition" (``-1`` for integer labels, ``NaN`` for vectors)."""
    if cond.is_floating_point():
        mask = drop.reshape(-1, *([1] * (cond.ndim - 1)))
        return torch.where(mask, torch.full_like(cond, float("nan")), cond)
    return torch.where(drop.reshape(cond.shape[0], *([1] * (cond.ndim - 1))), torch.full_like(cond, -1), cond)
