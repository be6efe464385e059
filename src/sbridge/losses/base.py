"""What every loss object is: ``loss(models, batch, generator) -> (scalar, named terms)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Terms = dict[str, torch.Tensor]


class Loss(Protocol):
    """A training objective: ``loss(models, batch, generator) -> (scalar, named terms)``.

    ``models`` maps names to modules (the trainer's, possibly wrapped); ``batch`` is a dict of tensors from the
    phase's data source; every random draw goes through ``generator``. ``terms`` are detached scalars logged to
    ``metrics.jsonl`` beside the loss.
    """

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]: ...
