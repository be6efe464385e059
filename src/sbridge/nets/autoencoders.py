"""Encoder / decoder networks and the reconstruction loss of the latent bridge's pre-training (maths.md §B.1).

The paper pre-trains ``E: [0, 1]^d -> R^{d*}`` and ``D: R^{d*} -> [0, 1]^d`` by least squares,
``min (1/M) sum_i ||D(E(x_i)) - x_i||^2``. Two architectures:

* :class:`ConvEncoder` / :class:`ConvDecoder` for images ``(C, H, W)``: stride-2 3x3 convolutions halve the
  resolution ``levels`` times (28 -> 14 -> 7), a linear layer maps to ``latent_dim``; the decoder mirrors it with
  nearest-neighbour upsampling to the exact sizes of the encoder's feature maps (so odd sizes work);
* :class:`MLPEncoder` / :class:`MLPDecoder` for any event shape, flattened (the default for small images such as
  the 8x8 digits); its outputs too lie in ``[0, 1]``.

The decoder ends in a sigmoid, so decoded images lie in ``[0, 1]`` like the data. The encoder is unbounded (the
paper's lies in ``[0, 1]^{d*}``): :class:`~sbridge.LatentBridge` standardises the latents, an affine map the
bridge does not depend on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_positive_int
from sbridge.nets.registry import named_config
from sbridge.nets.unet import group_norm

ARCHITECTURES = ("conv", "mlp")


class MLPEncoder(nn.Module):
    """``(n, *shape) -> (n, latent_dim)``: ``depth`` SiLU layers of width ``hidden`` on the flattened input."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        width, layers = int(torch.Size(shape).numel()), []
        for _ in range(check_positive_int(depth, "depth")):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """``(n, latent_dim) -> (n, *shape)`` in ``[0, 1]`` (sigmoid output)."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.shape = tuple(shape)
        width, layers = latent_dim, []
        for _ in range(check_positive_int(depth, "depth")):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, int(torch.Size(shape).numel())))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).reshape(z.shape[0], *self.shape)


def _conv_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2, padding-1 3x3 convolution: ``s -> ceil(s / 2)``."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """Images ``(C, H, W) -> (latent_dim,)``: a 3x3 convolution to ``channels``, then ``levels`` blocks of
    (stride-2 conv, GroupNorm, SiLU) doubling the channels, then a linear map of the flattened features."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, channels: int = 32, levels: int = 2) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.SiLU()]
        ch = channels
        for _ in range(check_positive_int(levels, "levels")):
            layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), group_norm(2 * ch, 8), nn.SiLU()]
            ch *= 2
        fh, fw = _conv_sizes(h, w, levels)[-1]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * fh * fw, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``(latent_dim,) -> (C, H, W)`` in ``[0, 1]``: the mirror of :class:`ConvEncoder` (linear map to the lowest
    resolution, then per level nearest-neighbour upsampling to the encoder's size there, 3x3 conv, GroupNorm, SiLU)."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, channels: int = 32, levels: int = 2) -> None:
        super().__init__()
        c, h, w = shape
        self.sizes = _conv_sizes(h, w, check_positive_int(levels, "levels"))
        self.top = channels * 2 ** levels
        fh, fw = self.sizes[-1]
        self.linear = nn.Linear(latent_dim, self.top * fh * fw)
        self.ups = nn.ModuleList()
        ch = self.top
        for _ in range(levels):
            self.ups.append(nn.Sequential(nn.Conv2d(ch, ch // 2, 3, padding=1), group_norm(ch // 2, 8), nn.SiLU()))
            ch //= 2
        self.out = nn.Conv2d(ch, c, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        fh, fw = self.sizes[-1]
        h = F.silu(self.linear(z)).reshape(z.shape[0], self.top, fh, fw)
        for up, size in zip(self.ups, reversed(self.sizes[:-1]), strict=True):
            h = up(F.interpolate(h, size=size, mode="nearest"))
        return torch.sigmoid(self.out(h))


def default_architecture(shape: tuple[int, ...]) -> str:
    """``conv`` for images ``(C, H, W)`` with ``H, W >= 16``, else ``mlp`` (8x8 digits, vectors)."""
    return "conv" if len(shape) == 3 and min(shape[1:]) >= 16 else "mlp"


def autoencoder_config(spec: str | dict[str, Any] | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """Normalise an architecture spec (``"conv"``, ``"mlp"``, a dict with ``name`` and its options, or ``None`` for
    :func:`default_architecture`) to a config dict."""
    spec = named_config(spec, default_architecture(shape), ARCHITECTURES, "autoencoder architecture",
                        "the autoencoder's net must be 'conv', 'mlp' or a dict with a 'name' key")
    if spec["name"] == "conv" and len(shape) != 3:
        raise ConfigError(f"the convolutional autoencoder needs images (C, H, W), got event shape {shape}; use "
                          "net='mlp'.")
    return spec


def make_autoencoder(config: dict[str, Any], shape: tuple[int, ...], latent_dim: int) -> dict[str, nn.Module]:
    """The ``encoder`` and ``decoder`` described by ``config`` (see :func:`autoencoder_config`)."""
    options = {k: v for k, v in config.items() if k != "name"}
    pair = (ConvEncoder, ConvDecoder) if config["name"] == "conv" else (MLPEncoder, MLPDecoder)
    try:
        return {"encoder": pair[0](tuple(shape), latent_dim, **options),
                "decoder": pair[1](tuple(shape), latent_dim, **options)}
    except TypeError as exc:
        raise ConfigError(f"invalid options {sorted(options)} for the {config['name']} autoencoder ({exc}).") from None
