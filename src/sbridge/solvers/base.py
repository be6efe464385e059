"""The shared base of every solver: shapes, conditions, named networks, fitting through the trainer, save and load.

A solver subclass declares ``method`` and implements

* ``_build_models()``: its named networks (built from the ``net`` spec, or the modules a user passed in);
* ``phases(data, config)``: its fit as a list of :class:`~sbridge.training.Phase` objects, each with a public loss
  object (usable from a hand-written loop);
* what it can do afterwards: ``sample`` (draw from the model), ``transport`` (push points between two data sets),
  ``log_prob`` (exact likelihood). Runs and the CLI dispatch on these capabilities, never on the class.

Everything about runs, checkpoints and weights lives here.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sbridge.core import io
from sbridge.core.device import make_generator, resolve_device
from sbridge.core.errors import ConfigError, RunDirError
from sbridge.core.validation import (
    as_condition,
    as_data_tensor,
    check_batch_memory,
    check_event_shape,
    check_seed,
)
from sbridge.nets.embeddings import check_condition_spec
from sbridge.nets.registry import make_network, network_config
from sbridge.processes.linear import LinearSDE
from sbridge.solvers.capabilities import Capabilities, Declared
from sbridge.training import distributed, rundir
from sbridge.training.sources import LoaderSource, Source, TensorSource
from sbridge.training.trainer import Callback, Phase, TrainConfig, Trainer

SOLVERS: dict[str, type[Solver]] = {}
#: Run kinds that are not a single solver (a latent bridge: two stages in sub-folders), by method: ``(path, config,
#: device, net) -> model``.
RUN_LOADERS: dict[str, Any] = {}


@dataclass
class FitData:
    """The validated inputs of a fit: ``x0`` (data end), ``x1`` (second data set or ``None``), ``cond`` (conditions
    aligned with ``x0`` or ``None``), or a ``loader`` source when the data came as a ``DataLoader``."""

    x0: torch.Tensor | None
    x1: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    loader: Source | None = None

    def source(self) -> Source:
        """Minibatches of ``x`` (and ``cond``) for single-data-set solvers."""
        return self.loader if self.loader is not None else TensorSource(x=self.x0, cond=self.cond)


class Solver(Declared):
    """Base class.

    ``dim`` (vectors) or ``shape`` (any event shape, e.g. ``(1, 28, 28)``): the shape of one sample.
    ``cond``: ``None``, ``{"kind": "label", "classes": K}`` or ``{"kind": "vector", "dim": k}``.
    ``net``: a network name (``"mlp"``, ``"unet"``), a config dict (``{"name": "mlp", "hidden": 256}``) or an
    ``nn.Module`` with ``forward(x, t, cond=None)``; two-network solvers also take a dict of modules by name.
    ``seed``: fixes initialisation, minibatches and sampling noise.
    """

    method: ClassVar[str] = ""
    #: Names of the networks this solver trains (keys of ``models`` and ``ema_models``).
    model_names: ClassVar[tuple[str, ...]] = ("score",)
    #: Options of the constructor that ``fit(...)`` may also set (e.g. the number of outer iterations).
    fit_options: ClassVar[tuple[str, ...]] = ()
    default_steps: ClassVar[int] = 5000
    #: Training options (:class:`~sbridge.training.TrainConfig` fields) the method trains best with where they
    #: differ from the trainer's defaults; ``fit`` and ``sbridge train`` use them for every option not given.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: The reference process the solver diffuses with (a ``LinearSDE``; ``None`` for solvers without one).
    reference: LinearSDE | None = None
    #: Whether :attr:`reference` holds state to save with the weights (a fitted prior, VSDM's ``A``); a reference
    #: rebuilt from the solver's options (the bridges' Brownian motion) is not saved.
    owns_reference: ClassVar[bool] = True
    #: What the class can do in its default mode; :meth:`capabilities` refines it for one instance and its fit.
    declared: ClassVar[Capabilities] = Capabilities()
    #: Probability of training without the condition (classifier-free guidance needs it above 0: the guided
    #: prediction mixes in the unconditional one). Solvers with guidance take it as an option.
    cond_drop: float = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):  # only classes that declare a method register; subclasses of them do not
            SOLVERS[cls.method] = cls

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None,
                 cond: dict[str, Any] | None = None, net: Any = None, seed: int = 0,
                 device: str | torch.device = "auto") -> None:
        self.event_shape = check_event_shape(dim, shape)
        self.dim = int(torch.Size(self.event_shape).numel())
        self.cond_spec = check_condition_spec(cond)
        self.seed = check_seed(seed)
        self.device = resolve_device(device)
        self._custom_net = net if isinstance(net, (nn.Module, dict)) and not _is_config(net) else None
        self.net_config = None if self._custom_net is not None else network_config(net, self.event_shape)
        with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.models = nn.ModuleDict(self._build_models()).to(self.device)
        self.ema_models: nn.ModuleDict = copy.deepcopy(self.models).requires_grad_(False)
        self.train_config: TrainConfig | None = None
        self.last_nfe: int | None = None
        self.last_loss: float | None = None
        self.steps_done: int | None = None  # training steps the last fit ended at (after a resume: in total)
        self.history: list[dict[str, Any]] = []

    # ---- to implement ------------------------------------------------------------------------------------------
    def _build_models(self) -> dict[str, nn.Module]:
        """The named networks; the default builds one network per name in ``model_names``."""
        return {name: self.network(name) for name in self.model_names}

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments beyond ``dim``/``shape``/``cond``/``net``/``seed``/``device``."""
        return {}

    # ---- capabilities ------------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """What this solver can do now (after its fit): :attr:`declared` with the condition it was built for.
        Solvers whose abilities depend on their options or on how they were fitted extend this."""
        kind = None if self.cond_spec is None else self.cond_spec["kind"]
        guidance = self.declared.guidance and kind is not None and self.cond_drop > 0
        return self.declared.with_(cond=kind, guidance=guidance)

    def _guidance_hint(self) -> str:
        if self.declared.guidance and self.cond_spec is None:
            return "guidance needs a conditional model"
        if self.declared.guidance and self.cond_drop == 0:
            return ("it was trained with cond_drop=0, so the unconditional prediction that guidance mixes in is "
                    "untrained: retrain with cond_drop > 0, e.g. 0.1")
        return ""

    @property
    def likelihood_dim(self) -> int:
        """Dimensions of the space :meth:`log_prob` is a density on (per-dimension NLL divides by it)."""
        return self.dim

    @property
    def label(self) -> str:
        """The model's name in messages and plot titles (its method)."""
        return self.method

    # ---- networks ----------------------------------------------------------------------------------------------
    def network(self, name: str, **overrides: Any) -> nn.Module:
        """The network called ``name``: the user's module when one was passed in, else built from ``net_config``
        (``overrides`` adjust the config, e.g. a time scale matched to the process)."""
        if self._custom_net is not None:
            if isinstance(self._custom_net, dict):
                if name not in self._custom_net:
                    raise ConfigError(f"net must name every network of {self.method!r}: {list(self.model_names)}; "
                                      f"{name!r} is missing.")
                return self._custom_net[name]
            return self._custom_net if len(self.model_names) == 1 else copy.deepcopy(self._custom_net)
        cfg = {**self.net_config, **{k: v for k, v in overrides.items() if k not in self.net_config}}
        return make_network(cfg, self.event_shape, self.cond_spec)

    # ---- configuration -----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        net = self.net_config if self.net_config is not None else {"name": "custom"}
        return {"method": self.method, "shape": list(self.event_shape), "cond": self.cond_spec, "net": net,
                "seed": self.seed, "options": self.options()}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "auto", net: Any = None) -> Solver:
        if (cfg.get("net") or {}).get("name") == "custom" and net is None:
            raise RunDirError("this run was trained with a custom network; rebuild it with "
                              "sbridge.load(path, net=your_module).")
        shape = cfg.get("shape")
        return cls(shape=tuple(shape) if shape is not None else (cfg["dim"],), cond=cfg.get("cond"),
                   net=net if net is not None else cfg.get("net"), seed=cfg.get("seed", 0), device=device,
                   **cfg.get("options", {}))

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _data(self, x: Any, name: str = "training data") -> torch.Tensor:
        return as_data_tensor(x, name=name, event_shape=self.event_shape).to(self.device)

    def _prepare(self, x: Any, prior: Any, cond: Any) -> FitData:
        """Validate the fit's inputs (subclasses taking a second data set override this)."""
        if prior is not None:
            raise ConfigError(f"{type(self).__name__} generates from noise and takes no prior data set; use a bridge "
                              "solver (dsb, dsbm, gaussian_sb) to connect two data sets.")
        if isinstance(x, torch.utils.data.DataLoader):
            return FitData(None, loader=LoaderSource(x, self.device))
        x0 = self._data(x)
        return FitData(x0, cond=self._condition(cond, x0.shape[0]))

    def _condition(self, cond: Any, n: int) -> torch.Tensor | None:
        if cond is None:
            if self.cond_spec is not None:
                raise ConfigError(f"this {self.method} model is conditional ({self.cond_spec}); pass cond=... "
                                  "with one condition per sample.")
            return None
        if self.cond_spec is None:
            raise ConfigError(f"this {self.method} model was built without a condition; create it with "
                              "cond={'kind': 'label', 'classes': K} or {'kind': 'vector', 'dim': k}.")
        return as_condition(cond, n, self.cond_spec).to(self.device)

    def _sampling_condition(self, cond: Any, n: int) -> torch.Tensor | None:
        """Conditions for ``n`` samples: ``None`` for an unconditional model, "no condition" rows when ``cond`` is
        omitted, one condition repeated for all, or one per sample."""
        if self.cond_spec is None and cond is None:
            return None
        if cond is None:
            label = self.cond_spec["kind"] == "label"
            return torch.full((n,) if label else (n, self.cond_spec["dim"]), -1 if label else float("nan"),
                              device=self.device)
        c = torch.as_tensor(cond)
        single = c.ndim == 0 or (self.cond_spec is not None and self.cond_spec["kind"] == "vector" and c.ndim == 1)
        return self._condition(c.unsqueeze(0).expand(n, *c.shape) if single else c, n)

    # ---- training ----------------------------------------------------------------------------------------------
    def fit(self, x: Any, prior: Any = None, *, cond: Any = None, out: str | Path | None = None,
            resume: bool = False, overwrite: bool = False, callbacks: tuple[Callback, ...] = (),
            evaluate: Any = None, run_info: dict[str, Any] | None = None, **options: Any) -> Solver:
        """Train on data ``x`` of shape ``(n, *event_shape)`` (or a ``DataLoader``); returns ``self``.

        ``prior``: a second data set (bridge solvers). ``cond``: one condition per sample (conditional models).
        ``out``: a run directory for checkpoints, metrics and the final weights, locked while this fit writes it.
        A folder that already holds a run is refused unless ``resume=True`` (continue from its checkpoint, with the
        same settings: see :func:`sbridge.training.rundir.resume_differences`) or ``overwrite=True`` (replace it).
        ``evaluate(step) -> dict`` is logged every ``eval_every`` steps. ``run_info`` is stored in the run's
        ``config.json`` beside the solver settings (e.g. the data spec). Other keyword arguments: the solver's
        :attr:`fit_options` and :class:`~sbridge.training.trainer.TrainConfig` fields.

        Distributed: when a ``torch.distributed`` process group of more than one process is initialised (``torchrun``
        with the CLI, or your own ``init_process_group``), every process calls ``fit`` with the same arguments and
        the fit is data-parallel (:mod:`sbridge.training.distributed`); rank 0 alone writes ``out``.
        """
        train_keys = set(TrainConfig.__dataclass_fields__)
        for key in [k for k in options if k in self.fit_options]:
            self.set_option(key, options.pop(key))
        unknown = sorted(set(options) - train_keys)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for {type(self).__name__}.fit; valid options are "
                              f"{sorted(train_keys | set(self.fit_options))}.")
        cfg = TrainConfig.from_dict({"steps": self.default_steps, **self.train_defaults, **options})
        run_dir = Path(out) if out is not None else None
        if resume and run_dir is None:
            raise ConfigError("resume=True needs the run directory to resume from; pass out=... (--out).")
        data = self._prepare(x, prior, cond)
        self.train_config = cfg
        check_batch_memory(cfg.batch_size, self.event_shape)
        self.before_fit(data)
        self.history = []
        trainer = Trainer(self.models, self.ema_models, self.phases(data, cfg), cfg,
                          generator=make_generator(self.seed, self.device), run_dir=run_dir, evaluate=evaluate,
                          callbacks=callbacks, history=self.history, extra_state=self.extra_tensors,
                          load_extra_state=self.load_extra_tensors, seed=self.seed)
        ctx = distributed.context()
        with contextlib.ExitStack() as held:
            if run_dir is not None:
                def open_run() -> None:  # rank 0 locks and checks; a refusal stops every rank with its sentence
                    held.enter_context(rundir.locked(run_dir))
                    self._open_run_dir(run_dir, resume, overwrite, run_info)

                distributed.on_main(open_run, ctx)
                if resume:
                    trainer.resume()
                if ctx.is_main:
                    self.write_config(run_dir, run_info)  # only once the run directory and the resume are accepted
            trainer.run()
            self.last_loss = trainer.last_loss
            self.steps_done = trainer.step
            if run_dir is not None and ctx.is_main:
                self.save(run_dir)
        distributed.barrier(ctx)
        return self

    def set_option(self, key: str, value: Any) -> None:
        """Set a fit option (one of :attr:`fit_options`); subclasses validate their own."""
        setattr(self, key, value)

    def before_fit(self, data: FitData) -> None:
        """Hook run once the data are validated, before training (e.g. fitting a data-dependent prior)."""

    def _open_run_dir(self, run_dir: Path, resume: bool, overwrite: bool, run_info: dict[str, Any] | None) -> None:
        """With the run's lock held: refuse to start over an existing run, and check that a resume continues the
        run recorded there with the same settings."""
        rundir.check_new_run(run_dir, resume=resume, overwrite=overwrite)
        if not resume:
            return
        if not rundir.holds_run(run_dir):
            raise RunDirError(f"{str(run_dir)!r} holds no run to resume; drop --resume to start one there, or point "
                              "--out to the run you meant.")
        if not (run_dir / io.CONFIG_FILE).is_file():
            raise RunDirError(f"{str(run_dir)!r} has no {io.CONFIG_FILE}, so what it would resume cannot be checked; "
                              "restore the file, or pass --overwrite to start the run again.")
        recorded = io.read_run_config(run_dir)
        requested = {"solver": self.config(), "train": self.train_config.to_dict() if self.train_config else None,
                     **(run_info or {})}
        diff = rundir.resume_differences(recorded, requested, defaults={"train": TrainConfig().to_dict()})
        if diff:
            shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise RunDirError(f"{str(run_dir)!r} was trained with other settings ({shown}); resume with the recorded "
                              "ones (only the number of steps and the logging options may change), or choose a new "
                              "--out folder.")
        if not (run_dir / io.CHECKPOINT_FILE).is_file() and (run_dir / io.WEIGHTS_FILE).is_file():
            raise RunDirError(f"{str(run_dir)!r} holds final weights but no training checkpoint, so it cannot be "
                              "resumed; pass --overwrite to retrain it or choose a new --out folder.")

    def write_config(self, run_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json``: the solver config, the training config and any ``extra`` (e.g. the data spec)."""
        path = Path(run_dir) / io.CONFIG_FILE
        cfg = io.read_json(path) if path.is_file() else {}
        cfg.update({"solver": self.config(), "train": self.train_config.to_dict() if self.train_config else None})
        cfg.update(extra or {})
        io.write_json(path, cfg)

    # ---- persistence -------------------------------------------------------------------------------------------
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """State outside the networks saved with the weights: by default the buffers of the solver's
        :attr:`reference` when it owns them (a fitted prior's moments, VSDM's ``A``)."""
        return dict(self.reference.state_dict()) if self.owns_reference and self.reference is not None else {}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`extra_tensors`."""
        if tensors and self.owns_reference and self.reference is not None:
            self.reference.load_state_dict(tensors)
            self.reference.to(self.device)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``config.json`` and the weights ``model.safetensors`` into ``run_dir`` (under the run's lock)."""
        run_dir = Path(run_dir)
        if not distributed.context().is_main:  # distributed: rank 0 writes, the others hold the same weights
            return run_dir
        with rundir.locked(run_dir):
            self.write_config(run_dir)
            io.write_tensors(run_dir / io.WEIGHTS_FILE, self.weight_tensors(), {"history": self.history})
        return run_dir

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """Raw and EMA weights and extra state as one flat dict (``model.*``, ``ema.*``, ``extra.*``): the layout of
        every weights file and of the training checkpoint."""
        return {**io.prefixed("model", self.models.state_dict()), **io.prefixed("ema", self.ema_models.state_dict()),
                **io.prefixed("extra", self.extra_tensors())}

    def load_weights(self, tensors: dict[str, torch.Tensor], path: str | Path = "the weights") -> None:
        """Inverse of :meth:`weight_tensors` (also reads training checkpoints, which share the layout); a file of
        another layout raises :class:`RunDirError` naming its first differing tensor."""
        io.check_layout(self.weight_tensors(), tensors, path, prefixes=("model", "ema", "extra"))
        self.models.load_state_dict(io.unprefixed("model", tensors))
        self.ema_models.load_state_dict(io.unprefixed("ema", tensors))
        self.load_extra_tensors(io.unprefixed("extra", tensors))


def _is_config(net: Any) -> bool:
    return isinstance(net, dict) and "name" in net and not any(isinstance(v, nn.Module) for v in net.values())


def load(run_dir: str | Path, device: str | torch.device = "auto", net: Any = None) -> Solver:
    """Rebuild a solver from a run directory (``config.json`` + weights); never executes code from the files.

    Uses ``model.safetensors`` when present, else the training checkpoint (a run interrupted before its end).
    ``net``: the module(s) of a run trained with a custom network.
    """
    path = io.require_run_dir(run_dir)
    device = resolve_device(device)  # a bad --device is the caller's mistake, not the run's
    cfg = io.read_run_config(path)
    solver_cfg = cfg.get("solver") or {}
    method = solver_cfg.get("method")
    if method in RUN_LOADERS:
        return RUN_LOADERS[method](path, cfg, device, net)
    if method not in SOLVERS:
        raise RunDirError(f"{str(path)!r} names an unknown method {method!r}; it was written by another version of "
                          "sbridge or edited by hand.")
    try:
        solver = SOLVERS[method].from_config(solver_cfg, device=device, net=net)
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        reason = str(exc).rstrip(".") if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        raise RunDirError(f"{str(path / io.CONFIG_FILE)!r} holds solver settings sbridge cannot build ({reason}); "
                          "restore it from a backup or retrain the run into a new --out folder.") from None
    if cfg.get("train"):
        try:
            solver.train_config = TrainConfig.from_dict(cfg["train"])
        except (ConfigError, TypeError) as exc:
            raise RunDirError(f"{str(path / io.CONFIG_FILE)!r} holds invalid training settings ({exc}); restore it "
                              "or retrain the run into a new --out folder.") from None
    weights = path / io.WEIGHTS_FILE
    if not weights.is_file():
        weights = path / io.CHECKPOINT_FILE
    if not weights.is_file():
        raise RunDirError(f"{str(path)!r} has no weights yet ({io.WEIGHTS_FILE}); train it first or resume training.")
    tensors, meta = io.read_tensors(weights)
    solver.load_weights(tensors, weights)
    solver.history = list(meta.get("history", []))
    solver.models.to(solver.device)
    solver.ema_models.to(solver.device)
    return solver
