"""One training loop for every solver.

A solver hands the loop its network, an EMA copy, and a ``loss_fn(generator) -> scalar tensor`` that draws its own
minibatch and noise from ``generator``. The loop owns everything else: Adam, EMA (``torch.optim.swa_utils``),
gradient clipping, a progress bar, periodic evaluation, a NaN/Inf guard, atomic checkpoints and exact resume.

Exact resume: the checkpoint holds weights, EMA weights, optimizer state, the generator state and the step, so a
run interrupted at step k and resumed ends with the same weights as an uninterrupted run (on the same device).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from sbridge import io
from sbridge.errors import ConfigError, RunDirError, TrainingDivergedError
from sbridge.validation import check_choice, check_positive_float, check_positive_int

#: ``constant``, or ``cosine``: cosine decay from ``lr`` to ``lr / 100`` over the run (Loshchilov & Hutter 2017).
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Hyper-parameters of the shared training loop."""

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

    def __post_init__(self) -> None:
        self.steps = check_positive_int(self.steps, "steps")
        self.batch_size = check_positive_int(self.batch_size, "batch_size")
        self.lr = check_positive_float(self.lr, "lr")
        self.grad_clip = check_positive_float(self.grad_clip, "grad_clip")
        self.checkpoint_every = check_positive_int(self.checkpoint_every, "checkpoint_every")
        self.log_every = check_positive_int(self.log_every, "log_every")
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
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


LossFn = Callable[[torch.Generator], torch.Tensor]
Callback = Callable[[int, float], None]


class Trainer:
    """Runs ``config.steps`` optimisation steps of ``loss_fn`` on ``net``, keeping ``ema_net`` as its EMA.

    ``run_dir``: where checkpoints and ``metrics.jsonl`` go (``None`` keeps everything in memory).
    ``evaluate(step) -> dict``: called every ``config.eval_every`` steps; its result is logged.
    ``callbacks``: called as ``cb(step, loss)`` after every step (used for tests and custom logging).
    """

    def __init__(self, net: nn.Module, ema_net: nn.Module, loss_fn: LossFn, config: TrainConfig, *,
                 generator: torch.Generator, run_dir: str | Path | None = None,
                 evaluate: Callable[[int], dict[str, Any]] | None = None,
                 callbacks: tuple[Callback, ...] = (), prefix: str = "") -> None:
        self.net, self.ema_net, self.loss_fn, self.config = net, ema_net, loss_fn, config
        self.generator = generator
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.evaluate, self.callbacks = evaluate, callbacks
        self.prefix = prefix
        self.optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
        self.step = 0
        self.last_loss = math.nan

    # ---- state -------------------------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to resume, as flat tensors plus JSON metadata."""
        opt = self.optimizer.state_dict()
        tensors = {**io.prefixed("model", self.net.state_dict()), **io.prefixed("ema", self.ema_net.state_dict())}
        for idx, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        tensors["rng"] = self.generator.get_state()
        meta = {"step": self.step, "param_groups": opt["param_groups"], "last_loss": self.last_loss}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.net.load_state_dict(io.unprefixed("model", tensors))
        self.ema_net.load_state_dict(io.unprefixed("ema", tensors))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in io.unprefixed("optim", tensors).items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng"])
        self.step = int(meta["step"])
        self.last_loss = float(meta.get("last_loss", math.nan))

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / f"{self.prefix}{io.CHECKPOINT_FILE}" if self.run_dir is not None else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            tensors, meta = self.state_tensors()
            io.write_tensors(self.checkpoint_path, tensors, meta)

    def resume(self) -> bool:
        """Load the checkpoint in ``run_dir`` if there is one; returns whether it did."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        try:
            tensors, meta = io.read_tensors(path)
            self.load_state(tensors, meta)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise RunDirError(f"checkpoint {str(path)!r} does not match this model ({exc}); resume with the same "
                              "method and options, or start a new --out folder.") from None
        io.truncate_jsonl(self.run_dir / io.METRICS_FILE, self.step)
        return True

    # ---- loop --------------------------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if self.run_dir is not None:
            io.append_jsonl(self.run_dir / io.METRICS_FILE, row)

    def _train_step(self) -> float:
        self.net.train()
        loss = self.loss_fn(self.generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        update = get_ema_multi_avg_fn(self.ema_decay(self.step))
        update(list(self.ema_net.parameters()), list(self.net.parameters()), None)
        return value

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based); a pure function of the step, so resuming reproduces it."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return cfg.lr
        floor = cfg.lr / 100
        return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * step / cfg.steps))

    def ema_decay(self, step: int) -> float:
        """EMA decay with warm-up, ``min(decay, (1 + k) / (10 + k))``: early averages do not drag in the
        untrained initial weights (the schedule of TensorFlow's ExponentialMovingAverage with num_updates)."""
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def _diverged(self, value: float) -> TrainingDivergedError:
        where = (f"the last good checkpoint (step {self._last_checkpoint_step}) is kept in {self.checkpoint_path}"
                 if self.checkpoint_path is not None and self._last_checkpoint_step is not None
                 else "the weights from the last good step are kept")
        return TrainingDivergedError(f"training stopped at step {self.step + 1}: the loss became {value}; {where}; "
                                     "lower the learning rate (--lr) or check the data scale.")

    def run(self) -> None:
        """Train from ``self.step`` to ``config.steps``; on KeyboardInterrupt, checkpoint and re-raise.

        Ctrl-C is deferred to the end of the current step (when running in the main thread), so the checkpoint
        written on interrupt is a consistent state; if an interrupt still arrives inside a step before its update,
        the generator is rewound to the step's start so that resuming redraws the same minibatch.
        """
        with _defer_sigint() as interrupted:
            self._run(interrupted)

    def _run(self, interrupted: Callable[[], bool]) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        quiet = cfg.quiet or not sys.stderr.isatty()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=quiet, desc=self.prefix.rstrip("_") or "train",
                   dynamic_ncols=True, leave=False)
        self._last_checkpoint_step = self.step if self.checkpoint_path and self.checkpoint_path.is_file() else None
        running: list[float] = []
        rng_at_step_start = None
        try:
            while self.step < cfg.steps:
                if interrupted():
                    raise KeyboardInterrupt
                rng_at_step_start = self.generator.get_state()
                value = self._train_step()
                rng_at_step_start = None
                if not math.isfinite(value):
                    raise self._diverged(value)
                self.step += 1
                self.last_loss = value
                running.append(value)
                bar.update(1)
                for cb in self.callbacks:
                    cb(self.step, value)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean = sum(running) / len(running)
                    running.clear()
                    bar.set_postfix(loss=f"{mean:.4g}")
                    self._log({"step": self.step, "loss": mean})
                if cfg.eval_every and self.evaluate is not None and self.step % cfg.eval_every == 0:
                    self._log({"step": self.step, "eval": self.evaluate(self.step)})
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                    self._last_checkpoint_step = self.step
        except KeyboardInterrupt:
            if rng_at_step_start is not None:  # interrupted inside _train_step, before its update was applied
                self.generator.set_state(rng_at_step_start)
            self.save_checkpoint()
            raise
        finally:
            bar.close()


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
