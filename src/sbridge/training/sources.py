"""Data sources: where a phase's minibatches come from (in-memory tensors or a ``DataLoader``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.core.seeds import stream_seed
from sbridge.losses.base import Batch
from sbridge.numerics.couplings import pairs
from sbridge.training import distributed


class Source(Protocol):
    """A data source, and everything the trainer asks of one.

    ``batch(batch_size, generator)``: the next minibatch, a dict of tensors. ``calls_per_step``: how many batches
    the trainer draws per training step (one per shard this process handles; the trainer sets it when the phase
    starts). ``seek(step)``: continue as if ``step`` training steps had been drawn (the trainer calls it when a phase
    resumes mid-way). Sources whose batches do not depend on their position (uniform draws from tensors, a
    ``DataLoader``) accept both and ignore them.
    """

    calls_per_step: int

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...

    def seek(self, step: int) -> None: ...


class _Positionless:
    """A source whose batches do not depend on how many were drawn before: ``seek`` has nothing to skip."""

    calls_per_step = 1

    def seek(self, step: int) -> None:
        """Nothing to skip: every batch is a fresh draw."""


class TensorSource(_Positionless):
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


class IndependentSource(_Positionless):
    """Minibatches of several tensors of any lengths, each drawn uniformly with replacement on its own (e.g. the two
    ends of an unpaired bridge: ``x0`` and ``x1`` batches with no coupling between them)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        if not tensors:
            raise ConfigError("an independent data source needs at least one tensor.")
        self.tensors = tensors

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        out = {}
        for key, v in self.tensors.items():
            idx = torch.randint(v.shape[0], (batch_size,), generator=generator, device=v.device)
            out[key] = v[idx]
        return out


class CoupledSource(_Positionless):
    """Minibatches ``{"x0", "x1"}`` of pairs drawn from an OT plan between independent minibatches of the two ends
    (:func:`sbridge.numerics.couplings.pairs`: ``kind`` entropic at ``sigma``, exact or independent): each batch is
    a fresh draw, as in SF2M and OT-CFM. ``cond`` (one row per ``x0`` row) stays with its ``x0`` point."""

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, sigma: float, kind: str = "entropic",
                 cond: torch.Tensor | None = None) -> None:
        self.start = TensorSource(x0=x0, cond=cond)
        self.end = TensorSource(x1=x1)
        self.sigma, self.kind = sigma, kind

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        start, end = self.start.batch(batch_size, generator), self.end.batch(batch_size, generator)
        i, j = pairs(start["x0"], end["x1"], self.sigma, self.kind, generator)
        return {**{k: v[i] for k, v in start.items()}, "x1": end["x1"][j]}


class LoaderSource(_Positionless):
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


class RefreshingSource:
    """Minibatches from ``size`` rows rebuilt every ``refresh`` steps by ``build(generator, count)``, with a
    generator seeded from the refresh index (so a resumed phase rebuilds the same tensors); DSB's trajectory cache.

    Distributed, each process builds its share of the rows with a generator seeded from the index and its rank, and
    the shares are gathered: the simulation time divides by the number of processes (the rows then depend on it)."""

    def __init__(self, build: Callable[[torch.Generator, int], dict[str, torch.Tensor]], size: int, refresh: int,
                 seed: int, device: torch.device) -> None:
        self.build, self.size, self.refresh, self.seed, self.device = build, size, refresh, seed, device
        self.calls = 0
        #: Batches drawn per training step (the trainer sets it when a process handles several shards).
        self.calls_per_step = 1
        self._source: TensorSource | None = None
        self._built_for = -1

    def seek(self, step: int) -> None:
        """Continue as if ``step`` training steps had been made (called by the trainer on resume)."""
        self.calls = step * self.calls_per_step

    @torch.no_grad()
    def _build(self, index: int) -> dict[str, torch.Tensor]:
        ctx = distributed.context()
        seed = stream_seed(self.seed, index) if ctx.rank == 0 else stream_seed(self.seed, index, ctx.rank)
        count = self.size // ctx.world + (1 if ctx.rank < self.size % ctx.world else 0)
        tensors = self.build(make_generator(seed, self.device), count)
        if not ctx.active:
            return tensors
        shares = distributed.all_gather_objects({k: v.cpu() for k, v in tensors.items()}, ctx)
        return {k: torch.cat([share[k] for share in shares]).to(self.device) for k in tensors}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = self.calls // self.calls_per_step // self.refresh  # refresh every ``refresh`` training steps
        if index != self._built_for:
            self._source, self._built_for = TensorSource(**self._build(index)), index
        self.calls += 1
        assert self._source is not None
        return self._source.batch(batch_size, generator)
