"""The latent bridge's pre-trained autoencoder as a run of its own (maths.md §B.1): trained, saved, resumed and loaded
like any solver, then reused by path (``sbridge train --latent RUN``, :class:`~sbridge.solvers.latent.LatentBridge`).

It neither samples nor transports: it encodes, decodes and reconstructs. Pre-training may use another data set
than the bridge's target (the paper's distribution-shift setting, e.g. half of the classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.validation import check_event_shape, check_positive_int
from sbridge.losses.reconstruction import Reconstruction
from sbridge.nets.autoencoders import autoencoder_config, make_autoencoder
from sbridge.solvers.base import FitData, Solver
from sbridge.solvers.capabilities import Capabilities
from sbridge.training.trainer import Phase, TrainConfig


class Autoencoder(Solver):
    """Encoder ``E`` and decoder ``D`` trained by least-squares reconstruction, ``min E||D(E(x)) - x||^2``.

    ``latent_dim``: the latent dimension ``d*``. ``net``: ``"conv"`` (images of at least 16x16), ``"mlp"`` (the
    default for smaller images and vectors) or a dict with the architecture's options (``{"name": "conv",
    "channels": 32, "levels": 2}``, ``{"name": "mlp", "hidden": 256, "depth": 2}``). The decoder's outputs lie in
    ``[0, 1]`` (images). Your own pair: ``net={"encoder": module, "decoder": module}`` (``(n, *shape) -> (n, d*)``
    and back; ``sbridge.load(path, net=...)`` rebuilds such a run).
    """

    method = "autoencoder"
    model_names = ("encoder", "decoder")
    declared = Capabilities(codec=True, plots=("reconstructions", "interpolations", "loss"))
    default_steps = 3000

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, latent_dim: int = 8,
                 net: Any = None, seed: int = 0, device: str | torch.device = "auto",
                 cond: dict[str, Any] | None = None) -> None:
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self._given: dict[str, nn.Module] | None = None
        if isinstance(net, dict) and any(isinstance(v, nn.Module) for v in net.values()):
            if set(net) != {"encoder", "decoder"} or not all(isinstance(v, nn.Module) for v in net.values()):
                raise ConfigError("pass your own autoencoder as net={'encoder': module, 'decoder': module}.")
            self._given, self.arch = dict(net), {"name": "custom"}
        elif isinstance(net, nn.Module):
            raise ConfigError("an autoencoder has two networks: pass net={'encoder': module, 'decoder': module}.")
        else:
            self.arch = autoencoder_config(net, check_event_shape(dim, shape))
        if cond is not None:
            raise ConfigError("the autoencoder is not conditional; condition the latent solver instead.")
        super().__init__(dim, shape=shape, net="mlp", seed=seed, device=device)

    @property
    def autoencoder_run(self) -> Autoencoder:
        """Itself: what ``codec`` plots encode and decode with (a latent run returns its first stage)."""
        return self

    def _build_models(self) -> dict[str, nn.Module]:
        if self._given is not None:
            return self._given
        return make_autoencoder(self.arch, self.event_shape, self.latent_dim)

    def options(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "net": self.arch}

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        return [Phase("autoencoder", config.steps, Reconstruction(), data.source(), ("encoder", "decoder"))]

    def _prepare(self, x: Any, prior: Any, cond: Any) -> FitData:
        if cond is not None:
            raise ConfigError("the autoencoder is not conditional; pass the labels to the latent solver's fit.")
        data = super()._prepare(x, prior, None)
        if data.x0 is not None and (float(data.x0.min()) < 0 or float(data.x0.max()) > 1):
            raise DataError("the autoencoder's decoder outputs lie in [0, 1] (images); scale the data into [0, 1] "
                            "first.")
        return data

    # ---- use -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Any, *, batch_size: int = 4096) -> torch.Tensor:
        """Latent codes ``E(x)``, ``(n, latent_dim)``, from the EMA encoder, in batches."""
        x = self._data(x, "images")
        enc = self.ema_models["encoder"].eval()
        return torch.cat([enc(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        """Decoded images ``D(z)``, ``(n, *event_shape)`` in ``[0, 1]``, from the EMA decoder, in batches."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device).reshape(-1, self.latent_dim)
        dec = self.ema_models["decoder"].eval()
        return torch.cat([dec(z[i:i + batch_size]) for i in range(0, z.shape[0], batch_size)])

    def reconstruct(self, x: Any) -> torch.Tensor:
        """``D(E(x))``."""
        return self.decode(self.encode(x))

    def reconstruction_error(self, x: Any) -> float:
        """Mean squared error per pixel of :meth:`reconstruct` on ``x``."""
        x = self._data(x, "images")
        return float(((self.reconstruct(x) - x) ** 2).mean())
