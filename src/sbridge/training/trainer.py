"""One trainer for every solver: named models, a fit declared as a list of phases, exact resume at any step.

A solver hands the :class:`Trainer` its named models (an ``nn.ModuleDict``), their EMA copies and a list of
:class:`Phase` objects. A phase says which models it trains, with which loss object, on which data source, for how
many steps; DSB, DSBM and SGM differ only in their phase lists. A loss object is called as
``loss(models, batch, generator) -> (scalar, terms)`` with the models the trainer hands it (never a solver's
attribute), so a data-parallel wrapper can be slipped in without touching any solver.

The trainer owns everything else: one Adam per phase over the trained models' parameters, EMA
(``torch.optim.swa_utils``), gradient clipping, the learning-rate schedule, a tqdm progress bar, periodic
evaluation, named loss terms in ``metrics.jsonl``, a NaN/Inf guard, atomic checkpoints and exact resume.

Exact resume: a checkpoint holds every model and EMA weight, the current phase's optimizer state, the generator
state, the phase index and the step. A phase's data source is built when the phase starts, as a pure function of
the models it does not train and of seeds (see :class:`Phase`), so a run interrupted anywhere and resumed ends with
the same weights as an uninterrupted run (on the same device).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sbridge.core import io
from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError, LossGrowthWarning, RunDirError, TrainingDivergedError
from sbridge.core.seeds import SHARD_STREAM, stream_seed
from sbridge.core.validation import check_choice, check_nonnegative_float, check_positive_float, check_positive_int
from sbridge.losses.base import Loss, Terms
from sbridge.training import distributed
from sbridge.training.sources import Source

#: ``constant``, or ``cosine``: cosine decay from ``lr`` to ``lr / 100`` over each phase (Loshchilov & Hutter 2017).
LR_SCHEDULES = ("constant", "cosine")
#: What the trainer does when a logged loss exceeds ``LOSS_GROWTH_FACTOR`` times the lowest logged loss of its phase
#: (and its first one): ``warn`` (a warning and a ``metrics.jsonl`` row), ``stop`` (stop as for a NaN loss) or
#: ``ignore``.
LOSS_GROWTH_ACTIONS = ("warn", "stop", "ignore")
LOSS_GROWTH_FACTOR = 1000.0
#: ``fp32``, or ``bf16``: the loss's forward pass under bfloat16 autocast (meant for GPUs; it runs on CPUs too).
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Hyper-parameters of the shared trainer. ``steps`` is the total over all phases of a fit."""

    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    eval_every: int = 0
    log_every: int = 50
    quiet: bool = False
    loss_growth: str = "warn"
    shards: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.steps = check_positive_int(self.steps, "steps")
        self.batch_size = check_positive_int(self.batch_size, "batch_size")
        self.lr = check_positive_float(self.lr, "lr")
        self.grad_clip = check_nonnegative_float(self.grad_clip, "grad_clip")  # 0: no clipping
        self.checkpoint_every = check_positive_int(self.checkpoint_every, "checkpoint_every")
        self.log_every = check_positive_int(self.log_every, "log_every")
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        check_choice(self.loss_growth, LOSS_GROWTH_ACTIONS, "loss_growth")
        check_choice(self.precision, PRECISIONS, "precision")
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 0:
            raise ConfigError(f"shards must be a non-negative integer (0: one per process), got {self.shards!r}.")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ConfigError("eval_every must be a non-negative integer (0 disables evaluation), "
                              f"got {self.eval_every!r}.")
        try:
            decay = float(self.ema_decay)
        except (TypeError, ValueError):
            decay = float("nan")
        if isinstance(self.ema_decay, bool) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema_decay must be a number in [0, 1), got {self.ema_decay!r}.")
        self.ema_decay = decay

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid options are {sorted(known)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Phase:
    """One stage of a fit.

    ``train``: names of the models whose parameters this phase optimises (the others stay frozen), or a function
    giving them when the phase starts (from state the checkpoint holds, e.g. SB-VAE's encoder stop).
    ``source``: a data source, or a function building it when the phase starts (e.g. DSBM's coupling simulated by
    the model trained in the previous phase); it must depend only on the frozen models and fixed seeds, so that a
    resumed phase rebuilds the same source.
    ``update``: a state-changing step after the last training step (VSDM's SA step on ``A``, SB-VAE's encoder-stop
    decision); the checkpoint written at the phase's end follows it, so a resume mid-phase or after the phase neither
    repeats nor skips it (a finished phase resumed with more steps runs it again at its new end).
    ``on_end``: called after ``update``; its dict (e.g. per-iteration monitoring) is logged with the phase name. It
    only reads state.
    ``lr``: overrides the fit's learning rate for this phase.
    """

    name: str
    steps: int
    loss: Loss
    source: Source | Callable[[], Source]
    train: tuple[str, ...] | Callable[[], tuple[str, ...]]
    on_end: Callable[[], dict[str, Any]] | None = None
    lr: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    update: Callable[[], None] | None = None

    def trained(self) -> tuple[str, ...]:
        """The names of the models this phase trains (``train`` evaluated now)."""
        return tuple(self.train()) if callable(self.train) else self.train


Callback = Callable[[int, float], None]


def split_steps(steps: int, phases: int, what: str) -> int:
    """Training steps of each of ``phases`` equal phases of a fit of ``steps`` steps (the remainder is dropped);
    fewer steps than phases is an error naming the phases (``what``, e.g. ``"2 x iterations"``)."""
    per_phase = steps // phases
    if per_phase < 1:
        raise ConfigError(f"steps ({steps}) must be at least {what} ({phases}).")
    return per_phase


class Trainer:
    """Runs a list of phases on named ``models``, keeping ``ema_models`` as their EMA.

    ``run_dir``: where checkpoints and ``metrics.jsonl`` go (``None`` keeps everything in memory).
    ``evaluate(step) -> dict``: called every ``config.eval_every`` steps; its result is logged.
    ``callbacks``: called as ``cb(step, loss)`` after every step (tests use them to interrupt a run).
    ``seed``: derives the generators of shards other than shard 0 (which uses ``generator``).

    Distributed (a process group of ``world > 1`` processes, see :mod:`.distributed`): the trained models of
    each phase are wrapped in ``DistributedDataParallel``; the global batch ``batch_size`` is drawn in
    ``config.shards`` shards (default: one per process) of ``batch_size / shards`` samples, each with its own
    generator, a process handling its shards in turn with gradient accumulation; the loss, the NaN/Inf decision
    and Ctrl-C are agreed by an all-reduce every step; rank 0 alone writes checkpoints and ``metrics.jsonl``.
    """

    #: Device types on which losses are read back every few steps instead of every step (see ``_flush``).
    DEFER_ON: tuple[str, ...] = ("cuda",)

    def __init__(self, models: nn.ModuleDict, ema_models: nn.ModuleDict, phases: Sequence[Phase],
                 config: TrainConfig, *, generator: torch.Generator, run_dir: str | Path | None = None,
                 evaluate: Callable[[int], dict[str, Any]] | None = None, callbacks: tuple[Callback, ...] = (),
                 extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
                 load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 history: list[dict[str, Any]] | None = None, seed: int = 0) -> None:
        self.models, self.ema_models, self.phases, self.config = models, ema_models, list(phases), config
        for phase in self.phases:
            unknown = set(phase.trained()) - set(models.keys())
            if unknown:
                raise ConfigError(f"phase {phase.name!r} trains unknown model(s) {sorted(unknown)}.")
        self.dist = distributed.context()
        self.shards = config.shards or self.dist.world
        if self.shards % self.dist.world:
            raise ConfigError(f"shards ({self.shards}) must be a multiple of the number of processes "
                              f"({self.dist.world}), so that every process handles the same number of shards.")
        if config.batch_size % self.shards:
            nearest = config.batch_size // self.shards * self.shards or self.shards
            raise ConfigError(f"batch_size ({config.batch_size}) must be divisible by the number of shards "
                              f"({self.shards}); e.g. use batch_size {nearest}.")
        self.local_shards = distributed.shards_of(self.dist.rank, self.dist.world, self.shards)
        self.device = generator.device
        self.seed = seed
        #: One generator per shard this process handles (shard 0's is ``generator``, the single-process stream).
        self.generators = {s: generator if s == 0 else make_generator(stream_seed(seed, SHARD_STREAM, s), self.device)
                           for s in self.local_shards}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writes = self.run_dir is not None and self.dist.is_main
        self.evaluate, self.callbacks = evaluate, callbacks
        self.extra_state, self.load_extra_state = extra_state, load_extra_state
        self.history = history if history is not None else []
        self.phase_index = 0
        self.phase_step = 0
        self.last_loss = math.nan
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []  # the current phase's trained parameters
        self._ema_pairs: list[EMAPairs] | None = None  # the current phase's EMA tensors, listed at its first update
        self._phase_models: Mapping[str, nn.Module] = models  # what the losses are handed (DDP-wrapped if needed)
        self._resumed_optimizer: tuple[dict[str, Any], dict[int, dict[str, torch.Tensor]]] | None = None
        self._last_checkpoint_step: int | None = None
        self._loss_watch: tuple[float, float] | None = None  # (first, lowest) loss of the current phase
        self._warned_growth = False
        #: The current phase has run its ``on_end`` (a checkpoint written at a phase's end records this, so a
        #: resumed fit neither repeats it nor, when the phase was given more steps, keeps its stale row).
        self._phase_ended = False

    # ---- steps -------------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def step(self) -> int:
        """Global step: steps completed over all phases."""
        return sum(p.steps for p in self.phases[:self.phase_index]) + self.phase_step

    def lr_at(self, phase: Phase, step: int) -> float:
        """Learning rate of step ``step`` (0-based) of ``phase``: a pure function of the step, so resuming
        reproduces it."""
        base = phase.lr if phase.lr is not None else self.config.lr
        if self.config.lr_schedule == "constant":
            return base
        floor = base / 100
        return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / phase.steps))

    def ema_decay(self, step: int) -> float:
        """EMA decay with warm-up, ``min(decay, (1 + k) / (10 + k))`` over the phase's steps: early averages do not
        drag in the untrained initial weights (TensorFlow's ExponentialMovingAverage with num_updates)."""
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    # ---- state -------------------------------------------------------------------------------------------------
    def _generator_states(self) -> dict[int, torch.Tensor]:
        """Every shard's generator state (gathered from all processes: a collective)."""
        mine = {s: g.get_state() for s, g in self.generators.items()}
        merged: dict[int, torch.Tensor] = {}
        for part in distributed.all_gather_objects(mine, self.dist):
            merged.update(part)
        return merged

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to resume, as flat tensors plus JSON metadata (a collective when distributed)."""
        tensors = {**io.prefixed("model", self.models.state_dict()), **io.prefixed("ema", self.ema_models.state_dict())}
        meta: dict[str, Any] = {"phase": self.phase_index, "phase_step": self.phase_step, "step": self.step,
                                "phase_ended": self._phase_ended, "last_loss": self.last_loss,
                                "history": self.history, "shards": self.shards}
        if self.optimizer is not None:
            opt = self.optimizer.state_dict()
            for idx, state in opt["state"].items():
                for key, value in state.items():
                    tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
            meta["param_groups"] = opt["param_groups"]
        if self.extra_state is not None:
            tensors.update(io.prefixed("extra", self.extra_state()))
        for s, state in self._generator_states().items():
            tensors["rng" if s == 0 else f"rng.{s}"] = state
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.models.load_state_dict(io.unprefixed("model", tensors))
        self.ema_models.load_state_dict(io.unprefixed("ema", tensors))
        if self.load_extra_state is not None:
            self.load_extra_state(io.unprefixed("extra", tensors))
        self.phase_index, self.phase_step = int(meta["phase"]), int(meta["phase_step"])
        same_shards = int(meta.get("shards", 1)) == self.shards
        for s, gen in self.generators.items():
            key = "rng" if s == 0 else f"rng.{s}"
            if same_shards and key in tensors:
                gen.set_state(tensors[key])
            else:  # resumed with another number of shards: a fresh stream for this shard from here on
                gen.manual_seed(stream_seed(self.seed, SHARD_STREAM, s, self.step))
        self._phase_ended = bool(meta.get("phase_ended", False))
        self.last_loss = float(meta.get("last_loss", math.nan))
        self.history[:] = meta.get("history", [])
        if "param_groups" in meta:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in io.unprefixed("optim", tensors).items():
                idx, name = key.split(".", 1)
                state.setdefault(int(idx), {})[name] = value
            self._resumed_optimizer = (meta["param_groups"], state)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / io.CHECKPOINT_FILE if self.run_dir is not None else None

    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0); every process must call it, since the generator states are gathered."""
        if self.checkpoint_path is not None:
            tensors, meta = self.state_tensors()
            if self.writes:
                io.write_tensors(self.checkpoint_path, tensors, meta)
            self._last_checkpoint_step = self.step

    def resume(self) -> bool:
        """Load the checkpoint in ``run_dir`` if there is one (read by rank 0 and sent to every process); returns
        whether it did."""
        path = self.checkpoint_path
        if path is None:
            return False
        expected = {**io.prefixed("model", self.models.state_dict()),
                    **io.prefixed("ema", self.ema_models.state_dict())}

        def read() -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
            if not path.is_file():
                return None
            tensors, meta = io.read_tensors(path)
            io.check_layout(expected, tensors, path)
            return tensors, meta

        found = distributed.on_main(read, self.dist)
        if found is None:
            return False
        tensors, meta = found
        try:
            self.load_state(tensors, meta)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RunDirError(f"checkpoint {str(path)!r} does not match this model ({str(exc).splitlines()[0]}); "
                              "resume with the same method and options, or start a new --out folder.") from None
        if self.phase_index >= len(self.phases) or self.phase_step > self.phases[self.phase_index].steps:
            made = meta.get("step", "more")
            raise RunDirError(f"{str(path)!r} has already made {made} training steps, past the end of a fit of "
                              f"{self.total_steps} steps; resume with --steps {made} or more.")
        if self.writes:
            io.truncate_jsonl(self.run_dir / io.METRICS_FILE, self.step)
        self._last_checkpoint_step = self.step
        return True

    # ---- loop --------------------------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if self.writes:
            io.append_jsonl(self.run_dir / io.METRICS_FILE, row)

    def _start_phase(self, phase: Phase) -> Source:
        self._trained = phase.trained()  # read once per phase: its models do not change within it
        self._ema_pairs = None
        self._params = [p for name in self._trained for p in self.models[name].parameters()]
        # the multi-tensor ("foreach") update, also on CPU, where torch's default is a Python loop over tensors
        self.optimizer = torch.optim.Adam(self._params, lr=self.lr_at(phase, 0), foreach=True)
        if self._resumed_optimizer is not None:
            groups, state = self._resumed_optimizer
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
            self._resumed_optimizer = None
        self._phase_models = self.models
        if self.dist.active:  # gradients of the trained models are all-reduced (averaged) by DDP
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers (time embeddings, fitted priors) are the same on every rank: no per-forward broadcast
            self._phase_models = {name: DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
                                  if name in self._trained else module for name, module in self.models.items()}
        source = phase.source() if callable(phase.source) and not hasattr(phase.source, "batch") else phase.source
        source.calls_per_step = len(self.local_shards)  # one batch per local shard per step
        seek = getattr(source, "seek", None)  # a user's source may implement batch() alone
        if self.phase_step and seek is not None:  # resuming mid-phase: a source that counts its batches skips ahead
            seek(self.phase_step)
        return source

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self, phase: Phase, source: Source, interrupted: bool,
                    deferred: bool = False) -> tuple[Any, Terms, Any]:
        """One step over this process's shards; returns the loss agreed over all processes (mean over shards), the
        named terms, and whether any process was interrupted. The update is applied only if the loss is finite and
        no process was interrupted — except ``deferred`` (CUDA): then nothing is read back to the host, the loss and
        the flag come back as device tensors, and the update is applied; the caller checks them every few steps."""
        assert self.optimizer is not None
        for name in self._trained:
            if not self.models[name].training:  # set once; an evaluation in between may have left it in eval mode
                self.models[name].train()
        micro = self.config.batch_size // self.shards
        self.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | float = 0.0
        terms_sum: dict[str, torch.Tensor] = {}
        n_local = len(self.local_shards)
        for i, s in enumerate(self.local_shards):
            gen = self.generators[s]
            with contextlib.ExitStack() as stack:
                if self.dist.active and i < n_local - 1:  # accumulate locally; DDP syncs on the last shard
                    for name in self._trained:
                        stack.enter_context(self._phase_models[name].no_sync())
                with self._autocast():
                    loss, terms = phase.loss(self._phase_models, source.batch(micro, gen), gen)
                (loss.float() / n_local).backward()
            total = total + loss.detach().float() / n_local
            for key, term in terms.items():
                terms_sum[key] = terms_sum.get(key, 0) + term.detach().float() / n_local
        flag: torch.Tensor | bool = interrupted
        if self.dist.active:  # one all-reduce agrees on the loss (a NaN anywhere is a NaN everywhere), terms, Ctrl-C
            keys = sorted(terms_sum)
            stats = torch.stack([total, *(terms_sum[k] for k in keys),
                                 torch.tensor(float(interrupted), device=self.device)])
            distributed.all_reduce_(stats, self.dist)
            total, flag = stats[0] / self.dist.world, stats[-1] > 0
            terms_sum = {k: stats[1 + i] / self.dist.world for i, k in enumerate(keys)}
        if deferred:
            self._apply_update(phase)
            return total, terms_sum, flag
        value, stop = float(total), bool(flag)
        if stop or not math.isfinite(value):
            return value, terms_sum, stop
        self._apply_update(phase)
        return value, terms_sum, stop

    def _apply_update(self, phase: Phase) -> None:
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(phase, self.phase_step)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
        self.optimizer.step()
        decay = self.ema_decay(self.phase_step)
        if self._ema_pairs is None:  # listed once per phase: walking the module trees every step costs more
            self._ema_pairs = [EMAPairs(self.ema_models[name], self.models[name]) for name in self._trained]
        for pairs in self._ema_pairs:
            pairs.update(decay)

    def _watch_growth(self, step: int, mean: float) -> None:
        """Warn (or stop) once a logged mean loss exceeds ``LOSS_GROWTH_FACTOR`` x the lowest loss of its phase and
        its first one: a run that explodes to 1e29 without a NaN is caught."""
        if self.config.loss_growth == "ignore" or self._loss_watch is None:
            return
        first, lowest = self._loss_watch
        if mean > first and lowest > 0 and mean > LOSS_GROWTH_FACTOR * lowest:
            if self.config.loss_growth == "stop":
                raise self._diverged(mean, grew_from=lowest)
            if not self._warned_growth:
                self._warned_growth = True
                msg = (f"the loss grew from {lowest:.3g} to {mean:.3g} by step {step}; the run is probably diverging: "
                       "lower the learning rate (--lr), or stop on this with loss_growth='stop'.")
                if self.dist.is_main:
                    warnings.warn(msg, LossGrowthWarning, stacklevel=2)
                self._log({"step": step, "warning": msg})

    def _track_loss(self, value: float) -> None:
        """Keep the first and the lowest loss of the current phase."""
        first, lowest = self._loss_watch if self._loss_watch is not None else (value, value)
        self._loss_watch = (first, min(lowest, value))

    def _diverged(self, value: float, grew_from: float | None = None, at: int | None = None) -> TrainingDivergedError:
        if self.checkpoint_path is not None and self._last_checkpoint_step is not None:
            where = f"the last good checkpoint (step {self._last_checkpoint_step}) is kept in {self.checkpoint_path}"
        elif self.checkpoint_path is not None:
            where = "no checkpoint had been written yet, so nothing is saved"
        else:
            where = "the weights from the last good step are kept in memory"
        what = f"became {value}" if grew_from is None else f"grew from {grew_from:.3g} to {value:.3g}"
        if at is None:
            at = self.step + 1 if grew_from is None else self.step
        again = " and start again with --overwrite" if self.run_dir is not None else ""
        return TrainingDivergedError(f"training stopped at step {at}: the loss {what}; {where}; lower the learning "
                                     f"rate (--lr){again}, or check the data scale.")

    def _flush(self, pending: list[tuple[int, torch.Tensor, torch.Tensor | bool]]) -> list[float]:
        """Deferred mode: read the pending steps' losses and flags in one transfer; stop at the first non-finite
        loss (nothing after the last checkpoint is saved) or, after these steps, on an interrupt."""
        if not pending:
            return []
        values = torch.stack([v for _, v, _ in pending]).tolist()
        flags = [f for _, _, f in pending]  # bools, or device tensors when distributed (read here, in one transfer)
        device_flags = [f for f in flags if isinstance(f, torch.Tensor)]
        interrupted = any(f is True for f in flags) or (bool(device_flags) and bool(torch.stack(device_flags).any()))
        steps = [st for st, _, _ in pending]
        pending.clear()
        for st, value in zip(steps, values, strict=True):
            if not math.isfinite(value):
                raise self._diverged(value, at=st)
            self._track_loss(value)
        self.last_loss = values[-1]
        if interrupted:
            raise KeyboardInterrupt
        return values

    def _next_phase(self) -> None:
        self.phase_index += 1
        self.phase_step = 0
        self.optimizer = None
        self._resumed_optimizer = None
        self._phase_ended = False
        self._phase_models = self.models

    def run(self) -> None:
        """Run the phases from the current position; on KeyboardInterrupt, checkpoint and re-raise.

        Ctrl-C is deferred to the end of the current step (when running in the main thread), so the checkpoint
        written on interrupt is a consistent state; if an interrupt still arrives inside a step before its update,
        the generators are rewound to the step's start so that resuming redraws the same minibatch. Distributed,
        an interrupt of any process stops all of them at the same step.
        """
        with _defer_sigint() as interrupted:
            try:
                self._run(interrupted)
            except (RuntimeError, dist.DistBackendError) as exc:  # e.g. DDP's all-reduce in backward
                if self.dist.active and distributed.is_peer_failure(exc):
                    raise distributed.peer_failed(exc) from None
                raise

    def _run(self, interrupted: Callable[[], bool]) -> None:
        from tqdm.auto import tqdm

        quiet = self.config.quiet or not sys.stderr.isatty() or not self.dist.is_main
        # On CUDA the loss is read back only every few steps (no per-step host synchronisation); callbacks need
        # each step's loss, so they keep the eager path.
        deferred = self.device.type in self.DEFER_ON and not self.callbacks
        bar = tqdm(total=self.total_steps, initial=self.step, disable=quiet, dynamic_ncols=True, leave=False)
        self._rng_at_step_start: dict[int, torch.Tensor] | None = None
        try:
            while self.phase_index < len(self.phases):
                phase = self.phases[self.phase_index]
                if self._phase_ended and self.phase_step >= phase.steps:  # resumed at the end of a finished phase
                    self._next_phase()
                    continue
                if self._phase_ended:  # a finished phase given more steps: its end-of-phase row is redone
                    self.history[:] = [r for r in self.history if r.get("phase") != phase.name]
                    self._phase_ended = False
                bar.set_description(phase.name)
                self._run_phase(phase, interrupted, deferred, bar)
                self._end_phase(phase)
        except KeyboardInterrupt:
            if self._rng_at_step_start is not None:  # interrupted inside a step, before its update was applied
                for s, state in self._rng_at_step_start.items():
                    self.generators[s].set_state(state)
            self.save_checkpoint()
            raise
        finally:
            bar.close()

    def _run_phase(self, phase: Phase, interrupted: Callable[[], bool], deferred: bool, bar: Any) -> None:
        """The remaining steps of ``phase``: train, then log, evaluate and checkpoint on their schedules."""
        cfg = self.config
        source = self._start_phase(phase)
        self._loss_watch = None
        window = _LogWindow()
        pending: list[tuple[int, torch.Tensor, torch.Tensor | bool]] = []  # deferred: (step, loss, flag) unread
        while self.phase_step < phase.steps:
            if deferred:
                step = self._deferred_step(phase, source, interrupted, pending, window)
            else:
                step = self._eager_step(phase, source, interrupted, window)
            bar.update(1)
            if step % cfg.log_every == 0 or self.phase_step == phase.steps:
                mean = window.mean_loss()
                self._log({"step": step, "phase": phase.name, "loss": mean, **window.mean_terms()})
                window.clear()
                bar.set_postfix(loss=f"{mean:.4g}")
                self._watch_growth(step, mean)
            if cfg.eval_every and self.evaluate is not None and step % cfg.eval_every == 0:
                if self.dist.is_main:
                    self._log({"step": step, "phase": phase.name, "eval": self.evaluate(step)})
            if step % cfg.checkpoint_every == 0 and self.phase_step < phase.steps:
                self.save_checkpoint()

    def _eager_step(self, phase: Phase, source: Source, interrupted: Callable[[], bool],
                    window: _LogWindow) -> int:
        """One step whose loss is read at once (checked, tracked, passed to the callbacks); returns the step."""
        if not self.dist.active and interrupted():
            raise KeyboardInterrupt
        self._rng_at_step_start = {s: g.get_state() for s, g in self.generators.items()}
        value, terms, stop = self._train_step(phase, source, self.dist.active and interrupted())
        if stop:
            raise KeyboardInterrupt
        self._rng_at_step_start = None
        if not math.isfinite(value):
            raise self._diverged(value)
        self.phase_step += 1
        self.last_loss = value
        self._track_loss(value)
        window.add(value, terms)
        for cb in self.callbacks:
            cb(self.step, value)
        return self.step

    def _deferred_step(self, phase: Phase, source: Source, interrupted: Callable[[], bool],
                       pending: list[tuple[int, torch.Tensor, torch.Tensor | bool]], window: _LogWindow) -> int:
        """One step whose loss stays on the device until the next log, checkpoint, evaluation or phase end, when
        :meth:`_flush` reads every pending loss at once; returns the step."""
        cfg = self.config
        loss_t, terms, flag_t = self._train_step(phase, source, interrupted(), deferred=True)
        self.phase_step += 1
        step = self.step
        pending.append((step, loss_t, flag_t))
        if (step % cfg.log_every == 0 or self.phase_step == phase.steps or step % cfg.checkpoint_every == 0
                or (cfg.eval_every and step % cfg.eval_every == 0)):
            window.losses.extend(self._flush(pending))
        window.add(None, terms)
        return step

    def _end_phase(self, phase: Phase) -> None:
        """Apply the phase's state change (``update``), log its ``on_end`` row, checkpoint, move on."""
        if phase.update is not None:
            phase.update()
        if phase.on_end is not None:
            row = {"step": self.step, "phase": phase.name, **phase.on_end()}
            self.history.append(row)
            self._log(row)
        self._phase_ended = True
        self.save_checkpoint()
        self._next_phase()


class _LogWindow:
    """The losses and named loss terms since the last logged row."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.terms: dict[str, list[torch.Tensor]] = {}

    def add(self, loss: float | None, terms: dict[str, torch.Tensor]) -> None:
        if loss is not None:
            self.losses.append(loss)
        for key, term in terms.items():
            self.terms.setdefault(key, []).append(term)

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    def mean_terms(self) -> dict[str, float]:
        return {k: float(torch.stack(v).mean()) for k, v in self.terms.items()}

    def clear(self) -> None:
        self.losses.clear()
        self.terms.clear()


class EMAPairs:
    """The tensors of an EMA model beside those of its model, listed once, for ``update(decay)``: ``ema <- decay ema
    + (1 - decay) model`` for parameters and floating buffers (e.g. normalisation statistics or a fitted prior, in
    one multi-tensor ``lerp``), other buffers copied, so that the EMA model is a complete model."""

    def __init__(self, ema: nn.Module, model: nn.Module) -> None:
        self.averaged = list(ema.parameters()), list(model.parameters())
        buffers = list(zip(ema.buffers(), model.buffers(), strict=True))
        floating = [(a, b) for a, b in buffers if b.is_floating_point()]
        self.averaged[0].extend(a for a, _ in floating)
        self.averaged[1].extend(b for _, b in floating)
        self.copied = [(a, b) for a, b in buffers if not b.is_floating_point()]
        if len(self.averaged[0]) != len(self.averaged[1]):
            raise ValueError("an EMA model must have the parameters of its model.")

    def update(self, decay: float) -> None:
        with torch.no_grad():
            if self.averaged[0]:
                torch._foreach_lerp_(self.averaged[0], self.averaged[1], 1.0 - decay)
            for a, b in self.copied:
                a.copy_(b)


@contextlib.contextmanager
def _defer_sigint() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT sets a flag (read through the yielded callable) instead of raising mid-step.

    A second Ctrl-C raises at once, so a user can still break out of a hung step. Outside the main thread signal
    handlers cannot be installed and interrupts keep their default behaviour.
    """
    hits: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)
