"""The shared base of every solver: configuration, devices, fitting through the shared loop, save and load.

A solver subclass declares ``method`` and implements ``_build`` (its networks), ``_make_loss`` (the loss closure the
training loop minimises) and the sampling it supports. Everything about runs, checkpoints and weights lives here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sbridge import io
from sbridge.device import make_generator, resolve_device
from sbridge.errors import ConfigError, RunDirError
from sbridge.training import Callback, TrainConfig, Trainer
from sbridge.validation import as_data_tensor, check_positive_int

SOLVERS: dict[str, type[Solver]] = {}


class Solver:
    """Base class. ``dim``: data dimension; ``seed``: fixes initialisation, minibatches and sampling noise."""

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):  # only classes that declare a method register; subclasses of them do not
            SOLVERS[cls.method] = cls

    def __init__(self, dim: int, *, seed: int = 0, device: str | torch.device = "auto") -> None:
        self.dim = check_positive_int(dim, "dim")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
        self.seed = seed
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.net: nn.Module = self._build().to(self.device)
        self.ema_net: nn.Module = copy.deepcopy(self.net).requires_grad_(False)
        self.train_config: TrainConfig | None = None
        self.last_nfe: int | None = None

    # ---- to implement ------------------------------------------------------------------------------------------
    def _build(self) -> nn.Module:
        raise NotImplementedError

    def _make_loss(self, data: torch.Tensor, batch_size: int):  # -> LossFn
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments beyond ``dim``/``seed``/``device`` that rebuild this solver."""
        return {}

    # ---- configuration -----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "seed": self.seed, "options": self.options()}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "auto") -> Solver:
        return cls(cfg["dim"], seed=cfg.get("seed", 0), device=device, **cfg.get("options", {}))

    # ---- training ----------------------------------------------------------------------------------------------
    def fit(self, x: Any, *, steps: int = 5000, batch_size: int = 512, lr: float = 1e-3, out: str | Path | None = None,
            resume: bool = False, quiet: bool = False, callbacks: tuple[Callback, ...] = (),
            evaluate: Any = None, run_info: dict[str, Any] | None = None, **train_options: Any) -> Solver:
        """Train on data ``x`` of shape ``(n, dim)`` for ``steps`` steps; returns ``self``.

        ``out``: a run directory for checkpoints, metrics and the final weights; with ``resume=True`` training
        continues from the checkpoint found there. ``evaluate(step) -> dict`` is logged every ``eval_every`` steps.
        ``run_info`` is stored in the run's ``config.json`` beside the solver settings (e.g. the data spec).
        Remaining keyword arguments go to :class:`~sbridge.training.TrainConfig`.
        """
        data = as_data_tensor(x, name="training data", dim=self.dim).to(self.device)
        cfg = TrainConfig.from_dict({"steps": steps, "batch_size": batch_size, "lr": lr, "quiet": quiet,
                                     **train_options})
        self.train_config = cfg
        run_dir = Path(out) if out is not None else None
        if run_dir is not None:
            self._prepare_run_dir(run_dir, resume, run_info)
        trainer = Trainer(self.net, self.ema_net, self._make_loss(data, cfg.batch_size), cfg,
                          generator=make_generator(self.seed, self.device), run_dir=run_dir, evaluate=evaluate,
                          callbacks=callbacks)
        if resume:
            trainer.resume()
        trainer.run()
        self.last_loss = trainer.last_loss
        if run_dir is not None:
            self.save(run_dir)
        return self

    def _prepare_run_dir(self, run_dir: Path, resume: bool, run_info: dict[str, Any] | None) -> None:
        cfg_path = run_dir / io.CONFIG_FILE
        if cfg_path.is_file():
            existing = io.read_json(cfg_path).get("solver")
            if resume and existing != self.config():
                raise RunDirError(f"{str(run_dir)!r} holds a run with a different model ({existing}); resume with the "
                                  "same options or choose a new --out folder.")
            if not resume and (run_dir / io.CHECKPOINT_FILE).exists():
                raise RunDirError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it or choose a new "
                                  "--out folder.")
        self.write_config(run_dir, run_info)

    def write_config(self, run_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json``: the solver config, the training config and any ``extra`` (e.g. the data spec)."""
        path = Path(run_dir) / io.CONFIG_FILE
        cfg = io.read_json(path) if path.is_file() else {}
        cfg.update({"solver": self.config(), "train": self.train_config.to_dict() if self.train_config else None})
        cfg.update(extra or {})
        io.write_json(path, cfg)

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> Path:
        """Write ``config.json`` and the sampling (EMA) weights ``model.safetensors`` into ``run_dir``."""
        run_dir = Path(run_dir)
        self.write_config(run_dir)
        io.write_tensors(run_dir / io.WEIGHTS_FILE, self.weight_tensors())
        return run_dir

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """Raw and EMA weights as one flat dict (``model.*``, ``ema.*``), the layout of every weights file."""
        return {**io.prefixed("model", self.net.state_dict()), **io.prefixed("ema", self.ema_net.state_dict())}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`weight_tensors` (also reads training checkpoints, which share the layout)."""
        self.net.load_state_dict(io.unprefixed("model", tensors))
        self.ema_net.load_state_dict(io.unprefixed("ema", tensors))


def load(run_dir: str | Path, device: str | torch.device = "auto") -> Solver:
    """Rebuild a solver from a run directory (``config.json`` + weights); never executes code from the files.

    Uses ``model.safetensors`` when present, else the training checkpoint (a run interrupted before its end).
    """
    path = io.require_run_dir(run_dir)
    cfg = io.read_json(path / io.CONFIG_FILE)
    solver_cfg = cfg.get("solver") or {}
    method = solver_cfg.get("method")
    if method not in SOLVERS:
        raise RunDirError(f"{str(path)!r} names an unknown method {method!r}; it was written by another version of "
                          "sbridge or edited by hand.")
    solver = SOLVERS[method].from_config(solver_cfg, device=device)
    if cfg.get("train"):
        solver.train_config = TrainConfig.from_dict(cfg["train"])
    weights = path / io.WEIGHTS_FILE
    if not weights.is_file():
        weights = path / io.CHECKPOINT_FILE
    if not weights.is_file():
        raise RunDirError(f"{str(path)!r} has no weights yet ({io.WEIGHTS_FILE}); train it first or resume training.")
    tensors, _ = io.read_tensors(weights)
    try:
        solver.load_weights(tensors)
    except RuntimeError as exc:
        raise RunDirError(f"weights in {str(weights)!r} do not match config.json ({exc}).") from None
    solver.net.to(solver.device)
    solver.ema_net.to(solver.device)
    return solver
