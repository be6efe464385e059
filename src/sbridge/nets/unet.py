"""A small time- (and condition-) dependent UNet for images ``(C, H, W)``, in plain PyTorch.

The layout follows the denoising-diffusion UNets of Ho et al. (2020, "Denoising Diffusion Probabilistic Models")
and the refinements of Nichol & Dhariwal (2021, "Improved Denoising Diffusion Probabilistic Models"), reduced to
what small images (MNIST-sized or smaller) need:

* an encoder that halves the resolution once per extra entry of ``channel_mults`` (a strided 3x3 convolution) and a
  mirrored decoder (nearest-neighbour upsampling then a 3x3 convolution), joined by skip connections that are
  concatenated along the channel axis at every resolution;
* residual blocks ``GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> dropout -> conv`` in which the time (and
  condition) embedding enters every block as a per-channel scale and shift applied right after the second
  normalisation (the "scale-shift norm" of Nichol & Dhariwal), with a 1x1 convolution on the shortcut when the
  number of channels changes;
* a sinusoidal time embedding passed through a two-layer MLP, to which a :class:`~.embeddings.ConditionEmbedding`
  is added when the network is conditional (class labels or vectors, with a learned "no condition" entry for
  classifier-free guidance);
* optionally one single-head self-attention block in the middle, at the lowest resolution;
* a last convolution initialised at zero, so the network outputs exactly 0 at initialisation: a residual
  parametrisation (drift = reference + network) starts at the reference, as with
  :class:`~sbridge.nets.mlp.TimeMLP`.

Spatial sizes need not be powers of two: downsampling pads, so 28 -> 14 -> 7 and 7 -> 4, and each upsampling
interpolates straight to the size of the skip tensor it is concatenated with.

Measured sizes: the default ``UNet((1, 28, 28))`` (``channels=32``, ``channel_mults=(1, 2, 2)``, one residual block
per level) has 1,136,449 parameters (1,153,217 with ``attention=True``); ``UNet((1, 8, 8), channels=32,
channel_mults=(1, 2))`` has 700,225. The count does not depend on ``H`` and ``W``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.tensors import batch_time
from sbridge.core.validation import check_positive_int
from sbridge.nets.embeddings import ConditionEmbedding, SinusoidalTimeEmbedding


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """``GroupNorm`` with the largest number of groups ``<= groups`` that divides ``channels``."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding ``emb`` (``(batch, emb_dim)``) through a per-channel scale-shift."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the ``H * W`` positions, as a residual block (output projection starts at 0)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve the resolution (rounding up) with a strided 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to an explicit ``size`` (the skip's, so odd sizes match), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """UNet ``(x, t[, cond]) -> x``-shaped output for images ``x`` of shape ``(batch, C, H, W)``.

    Args:
        shape: event shape ``(C, H, W)``; only ``C`` fixes the weights, other spatial sizes also run.
        channels: width of the first level; level ``i`` has ``channels * channel_mults[i]`` channels.
        channel_mults: one entry per resolution; ``len(channel_mults) - 1`` downsamplings.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more, as in DDPM).
        time_dim: width of the sinusoidal time embedding, of the time MLP and of the condition embedding.
        groups: maximal number of GroupNorm groups (reduced to a divisor of the channel count).
        attention: add a single-head self-attention block at the lowest resolution.
        dropout: dropout rate inside the residual blocks.
        time_scale: factor applied to ``t`` before the sinusoidal embedding (1000 for ``t`` in ``[0, 1]``).
        cond: condition spec (see :func:`~sbridge.nets.embeddings.check_condition_spec`) or ``None``.
    """

    def __init__(self, shape: tuple[int, int, int], *, channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, time_dim: int = 128, groups: int = 8, attention: bool = False,
                 dropout: float = 0.0, time_scale: float = 1000.0, cond: dict[str, Any] | None = None) -> None:
        super().__init__()
        if len(shape) != 3:
            raise ConfigError(f"the UNet needs an image shape (C, H, W), got {tuple(shape)}.")
        self.shape = tuple(check_positive_int(s, "image dimension") for s in shape)
        in_ch = self.shape[0]
        channels = check_positive_int(channels, "channels")
        mults = tuple(check_positive_int(m, "channel multiplier") for m in channel_mults)
        if not mults:
            raise ConfigError("channel_mults must hold at least one multiplier, e.g. (1, 2, 2).")
        num_res_blocks = check_positive_int(num_res_blocks, "num_res_blocks")
        time_dim = check_positive_int(time_dim, "time_dim")
        groups = check_positive_int(groups, "groups")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}.")

        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(time_dim, scale=time_scale),
                                        nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_embed = ConditionEmbedding(cond, time_dim) if cond is not None else None

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, time_dim, groups, float(dropout))

        self.conv_in = nn.Conv2d(in_ch, channels, 3, padding=1)
        widths = [channels * m for m in mults]
        skip_widths = [channels]
        self.down = nn.ModuleList()
        ch = channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, width))
                ch = width
                skip_widths.append(ch)
            if level < len(widths) - 1:
                self.down.append(Downsample(ch))
                skip_widths.append(ch)

        self.mid1 = block(ch, ch)
        self.mid_attn = SelfAttention(ch, groups) if attention else nn.Identity()
        self.mid2 = block(ch, ch)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_widths.pop(), widths[level]))
                ch = widths[level]
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = group_norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None) -> torch.Tensor:
        """Time embedding (after its MLP) plus the condition embedding, ``(batch, time_dim)``."""
        t = batch_time(t, x)
        emb = self.time_embed(t.to(x.dtype)).to(x.dtype)
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, x.shape[0]).to(x.dtype)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.shape[0]:
            raise DataError(f"the UNet expects images of shape (batch, {self.shape[0]}, H, W), got {tuple(x.shape)}.")
        emb = self.embedding(x, t, cond)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))
