"""Neural networks: plain ``torch.nn.Module``s with ``forward(x, t, cond=None)`` that know nothing about bridges.

* :class:`TimeMLP` for vectors (and any event shape, flattened);
* :class:`~sbridge.unet.UNet` for images ``(C, H, W)``;
* :class:`ConditionEmbedding`, shared by both: a class label (``int``) or a condition vector, with a learned "no
  condition" embedding for classifier-free guidance. A missing condition is written ``-1`` for a label and ``NaN``
  for a vector (per row), and ``cond=None`` means no condition for the whole batch.

:func:`make_network` builds a network from a JSON-compatible config (``{"name": "mlp", "hidden": 128}``), so a run's
``config.json`` rebuilds it; a user's own module may be passed to a solver instead (``net=``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sbridge.errors import ConfigError
from sbridge.tensors import batch_time, event_numel
from sbridge.validation import check_choice, check_memory, check_positive_int


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


class TimeMLP(nn.Module):
    """MLP ``(x, t[, cond]) -> x``-shaped output, conditioned on time through a sinusoidal embedding concatenated to
    the (flattened) input, and on ``cond`` through a :class:`ConditionEmbedding` concatenated likewise.

    ``depth`` hidden layers of width ``hidden`` with SiLU activations; the last layer starts at zero so the initial
    output is 0 (an identity-like start for residual parametrizations).
    """

    def __init__(self, dim: int | None = None, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 time_scale: float = 1000.0, *, shape: tuple[int, ...] | None = None,
                 cond: dict[str, Any] | None = None) -> None:
        super().__init__()
        if shape is None:
            shape = (check_positive_int(dim, "dim"),)
        self.shape = tuple(int(s) for s in shape)
        self.dim = event_numel(self.shape)
        hidden = check_positive_int(hidden, "hidden")
        depth = check_positive_int(depth, "depth")
        time_dim = check_positive_int(time_dim, "time_dim")
        width_in = self.dim + time_dim * (2 if cond is not None else 1)
        params = width_in * hidden + (depth - 1) * hidden * hidden + hidden * self.dim
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

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = batch_time(t, x)
        parts = [x.reshape(x.shape[0], -1), self.embed(t).to(x.dtype)]
        if self.cond_embed is not None:
            parts.append(self.cond_embed(cond, x.shape[0]).to(x.dtype))
        return self.net(torch.cat(parts, dim=1)).reshape(x.shape)


def _build_mlp(shape: tuple[int, ...], cond: dict[str, Any] | None, **options: Any) -> nn.Module:
    return TimeMLP(shape=shape, cond=cond, **options)


def _build_unet(shape: tuple[int, ...], cond: dict[str, Any] | None, **options: Any) -> nn.Module:
    from sbridge.unet import UNet

    if len(shape) != 3:
        raise ConfigError(f"the UNet needs image data of shape (C, H, W), got event shape {shape}; use net='mlp'.")
    return UNet(shape, cond=cond, **options)


NETWORKS = {"mlp": _build_mlp, "unet": _build_unet}


def default_network(shape: tuple[int, ...]) -> str:
    """``unet`` for images ``(C, H, W)`` with ``H, W >= 8``, else ``mlp``."""
    return "unet" if len(shape) == 3 and min(shape[1:]) >= 8 else "mlp"


def network_config(spec: str | dict[str, Any] | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """Normalise a network spec (a name, a dict with ``name``, or ``None`` for the default) to a config dict."""
    return named_config(spec, default_network(shape), tuple(NETWORKS), "network",
                        "net must be 'mlp', 'unet', a dict with a 'name' key, or an nn.Module")


def named_config(spec: str | dict[str, Any] | None, default: str, names: tuple[str, ...], what: str,
                 shape_error: str) -> dict[str, Any]:
    """A config spec as a dict with a ``name`` among ``names``: ``None`` gives ``default``, a string its name, a
    dict is copied; anything else raises ``shape_error`` (a sentence without its full stop)."""
    if spec is None:
        spec = default
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{shape_error}; got {spec!r}.")
    check_choice(spec["name"], names, what)
    return dict(spec)


def make_network(config: dict[str, Any], shape: tuple[int, ...], cond: dict[str, Any] | None = None) -> nn.Module:
    """Build the network described by ``config`` (see :func:`network_config`) for events of ``shape``."""
    options = dict(config)
    name = options.pop("name")
    try:
        return NETWORKS[name](tuple(shape), cond, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid options {sorted(options)} for network {name!r} ({exc}).") from None
