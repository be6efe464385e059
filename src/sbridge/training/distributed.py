"""Data-parallel training on ``torch.distributed``: who this process is, and the few collectives the frame needs.

A fit is distributed when a process group is initialised with more than one process (``torchrun`` does that for
the CLI through :func:`init_from_env`; a Python user may call ``torch.distributed.init_process_group`` themselves).
Then every rank builds the same solver and data, the :class:`~sbridge.training.trainer.Trainer` wraps the trained models
in ``DistributedDataParallel`` (gradients all-reduced), each step's global batch is drawn in *shards* — one per
rank by default — each with its own generator derived from the run seed and the shard index, and rank 0 alone
writes the run directory. Because the random draws belong to shards and not to processes, a run with ``S`` shards
gives the same result on 1, 2, ... or ``S`` processes (a process handles ``S / world`` shards in turn and
accumulates their gradients), and it resumes exactly on any of them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from sbridge.core.errors import ConfigError, SBridgeError

if dist.is_available():
    # Imported before any process group exists, on purpose: torch.distributed.nn.functional binds the world group as
    # a default argument when it is first imported, and DistributedDataParallel imports it (through torch._dynamo)
    # once a group exists; that reference then keeps the group alive, destroy_process_group() cannot free gloo's
    # backend, and its worker threads run on into interpreter shutdown, where one that drops the last reference to a
    # tensor aborts the process ("terminate called without an active exception"). Imported here, before any
    # init_process_group, its defaults are None and destroying the group joins gloo's threads.
    import torch.distributed.nn  # noqa: F401

T = TypeVar("T")

#: How long a collective waits for a silent peer before this process gives up (a dead rank must not hang the
#: others for ever).
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("SBRIDGE_DIST_TIMEOUT", "120")))


class PeerError(SBridgeError):
    """Another process of a distributed run stopped or failed; this one stops too."""


@dataclass(frozen=True)
class Context:
    """This process's place in a run: ``rank`` of ``world`` processes (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def context() -> Context:
    """The current process group's rank and size, or the single-process context when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process (``torchrun`` sets ``WORLD_SIZE``/``RANK``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun.") from None


def local_device(device: str | torch.device = "auto") -> str | torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` on GPUs when ``device`` is ``auto``, else ``device``."""
    if device == "auto" and torch.cuda.is_available() and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_from_env(device: str | torch.device = "auto") -> Context:
    """Join the process group described by torchrun's environment (``env://``), with gloo on CPU and nccl on
    CUDA; a no-op for a single process or an already initialised group."""
    if not launched_by_torchrun() or dist.is_initialized():
        return context()
    dev = torch.device(local_device(device) if device != "auto" or torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    return context()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        try:  # leave together: a process that tears its connections down while a peer still uses them aborts it
            dist.barrier()
        except (RuntimeError, dist.DistBackendError):
            pass  # a peer is already gone; leave anyway
        dist.destroy_process_group()


#: Words of the errors the gloo / nccl backends raise when a peer process is gone or silent.
_PEER_FAILURE_WORDS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "nccl",
                       "gloo", "peer")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (raised inside a collective, e.g. by DDP in backward) means another process failed."""
    return isinstance(exc, (RuntimeError, dist.DistBackendError)) and any(
        w in str(exc).lower() for w in _PEER_FAILURE_WORDS)


def peer_failed(exc: Exception) -> PeerError:
    return PeerError(f"another process of this distributed run stopped or failed ({str(exc).splitlines()[0]}); "
                     "this one stops too: the last checkpoint is kept, resume with --resume (any number of "
                     "processes).")


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    """Turn the backend's error when a peer is gone (raised inside a collective) into :class:`PeerError`."""
    try:
        yield
    except RuntimeError as exc:  # dist.DistBackendError is a RuntimeError
        raise peer_failed(exc) from None


def all_reduce_(tensor: torch.Tensor, ctx: Context, op: Any = None) -> torch.Tensor:
    """In-place sum (or ``op``) over ranks; a failed peer raises :class:`PeerError`."""
    if ctx.active:
        with _collective():
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: T, ctx: Context) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world
    with _collective():
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, ctx: Context) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    with _collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], ctx: Context) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result; if it raises an :class:`SBridgeError` there,
    every rank raises one with the same sentence (so a refused run directory stops all ranks, not only rank 0)."""
    result: Any = None
    error: tuple[type, str] | None = None
    if ctx.is_main:
        try:
            result = fn()
        except SBridgeError as exc:
            error = (type(exc), str(exc))
            if not ctx.active:
                raise
    if not ctx.active:
        return result
    result, error = broadcast_object((result, error), ctx)
    if error is not None:
        kind, message = error
        raise kind(message)
    return result


def barrier(ctx: Context) -> None:
    if ctx.active:
        with _collective():
            dist.barrier()


def shards_of(rank: int, world: int, shards: int) -> range:
    """The shard indices rank ``rank`` handles when ``shards`` are spread evenly over ``world`` processes."""
    per = shards // world
    return range(rank * per, (rank + 1) * per)
