"""Data sources: where a phase's minibatches come from (in-memory tensors or a ``DataLoader``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from sbridge.core.errors import ConfigError
from sbridge.losses.base import Batch


class Source(Protocol):
    """A data source: ``source.batch(batch_size, generator) -> dict of tensors``."""

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...


class TensorSource:
    """Minibatches drawn uniformly with replacement from in-memory tensors of equal length (``x``, ``cond``, ...)."""

    def __init__(self, **tensors: torch.Tensor | None) -> None:
        self.tensors = {k: v for k, v in tensors.items() if v is not None}
        lengths = {v.shape[0] for v in self.tensors.values()}
        if len(lengths) != 1:
            raise ConfigError(f"the tensors of a data source must have one length, got {sorted(lengths)}.")
        self.n = lengths.pop()

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        first = next(iter(self.tensors.values()))
        idx = torch.randint(self.n, (batch_size,), generator=generator, device=first.device)
        return {k: v[idx] for k, v in self.tensors.items()}


class LoaderSource:
    """Minibatches from a ``torch.utils.data.DataLoader`` (its own batch size), cycled without end.

    A loader item may be a tensor (``x``), a tuple ``(x, cond)`` or a dict. Resuming restarts the loader, so a run
    resumed from a ``DataLoader`` continues the right number of steps but sees other minibatches than an
    uninterrupted one; in-memory data (:class:`TensorSource`) resumes exactly.
    """

    def __init__(self, loader: Any, device: torch.device | str = "cpu") -> None:
        self.loader, self.device = loader, device
        self._it: Iterator[Any] | None = None

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            item = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            item = next(self._it)
        if isinstance(item, torch.Tensor):
            item = {"x": item}
        elif isinstance(item, (tuple, list)):
            item = dict(zip(("x", "cond"), item, strict=False))
        return {k: v.to(self.device) for k, v in item.items()}
