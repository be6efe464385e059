"""The autoencoder's least-squares reconstruction loss (maths.md §B.1)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sbridge.core.tensors import sum_event
from sbridge.losses.base import Batch, Terms


class Reconstruction:
    """Squared reconstruction error ``E ||D(E(x)) - x||^2`` summed over the event (maths.md §B.1), as a loss object
    ``(models, batch, generator) -> (loss, terms)``; ``terms["mse"]`` is the per-pixel mean squared error."""

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x = batch["x"]
        err = sum_event((models["decoder"](models["encoder"](x)) - x) ** 2)
        return err.mean(), {"mse": err.detach().mean() / x[0].numel()}
