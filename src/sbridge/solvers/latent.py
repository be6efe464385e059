"""Latent Schrödinger bridges (Jiao et al. 2024; maths.md §B.1): any solver fitted in the latent space of a
pre-trained autoencoder, sampled there and decoded.

:class:`LatentBridge` is one run with two stages, each a run of its own in a sub-folder:

* ``RUN/autoencoder``: the :class:`~sbridge.solvers.autoencoder.Autoencoder` (trained here, or a pre-trained one
  copied in, so the run does not depend on where that one lives);
* ``RUN/latent``: the solver, fitted to the standardised codes ``(E(x) - m) / s`` of the training data;

and ``RUN/config.json`` tying them together (method ``"latent"``, the latent statistics ``m`` and ``s``, the data).
A run interrupted in either stage resumes there (``resume=True``): a finished autoencoder stage is not retrained.

The latent solver's likelihood, when it has one, is a density of the codes ``E(x)``, in *latent* nats (the
standardisation's Jacobian included): it is not a likelihood of the images.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from sbridge.core import io
from sbridge.core.errors import ConfigError, RunDirError
from sbridge.solvers.autoencoder import Autoencoder
from sbridge.solvers.base import RUN_LOADERS, Solver, load
from sbridge.solvers.capabilities import Capabilities, Declared
from sbridge.training import distributed, rundir

AUTOENCODER_DIR, LATENT_DIR = "autoencoder", "latent"


class LatentBridge(Declared):
    """``autoencoder``: an :class:`Autoencoder` (trained, or trained by :meth:`fit` when ``train_autoencoder``) or the
    path of an autoencoder run. ``solver``: a solver built for vectors of the latent dimension (``dim=latent_dim``),
    e.g. ``sbridge.SGM(dim=8)`` or ``sbridge.SchrodingerFollmer(dim=8)``.

    ``fit(x, cond=...)`` trains the stages; ``sample`` draws latents and decodes them; ``log_prob`` (when the solver
    has one) gives latent nats. ``sbridge.load`` reads the run back.
    """

    method = "latent"

    def __init__(self, autoencoder: Autoencoder | str | Path, solver: Solver, *,
                 train_autoencoder: bool | None = None) -> None:
        if isinstance(autoencoder, (str, Path)):
            autoencoder = load_autoencoder(autoencoder, device=solver.device)
            train_autoencoder = False if train_autoencoder is None else train_autoencoder
        if not isinstance(autoencoder, Autoencoder):
            raise ConfigError(f"autoencoder must be an sbridge.Autoencoder or the path of its run, got "
                              f"{type(autoencoder).__name__}.")
        if not isinstance(solver, Solver) or not solver.capabilities().latent_solver:
            name = getattr(solver, "method", "") or type(solver).__name__
            raise ConfigError(f"solver must be an sbridge solver that generates in a latent space (SGM, VSDM, "
                              f"SchrodingerFollmer, DSBM, ...), got {name}.")
        if solver.event_shape != (autoencoder.latent_dim,):
            raise ConfigError(f"the solver works on shape {solver.event_shape} but the autoencoder's latents have "
                              f"dimension {autoencoder.latent_dim}; build it with dim={autoencoder.latent_dim}.")
        self.autoencoder, self.solver = autoencoder, solver
        #: Whether :meth:`fit` trains the autoencoder first (default: when it has not been trained yet).
        untrained = autoencoder.steps_done is None and not autoencoder.history  # a loaded one has its history
        self.train_autoencoder = untrained if train_autoencoder is None else train_autoencoder
        self.latent_mean = torch.zeros(autoencoder.latent_dim)
        self.latent_std = torch.ones(autoencoder.latent_dim)

    # ---- what it is --------------------------------------------------------------------------------------------
    def _guidance_hint(self) -> str:
        return self.solver._guidance_hint()

    def capabilities(self) -> Capabilities:
        """The latent solver's generative abilities (decoded), with the autoencoder's: it samples as its solver
        does, gives likelihoods of the latent codes when its solver has them, and encodes and decodes. It neither
        transports between data sets nor passes on a path bound."""
        inner = self.solver.capabilities()
        return inner.with_(transport=False, two_sets=False, prior_data=False, path_bound=False,
                           likelihood_space="latent", codec=True, latent=True, latent_solver=False,
                           plots=("samples", "trajectories", "loss", "reconstructions", "interpolations"),
                           diagnostics=inner.diagnostics)

    @property
    def label(self) -> str:
        """``latent <solver>``: its name in messages and plot titles."""
        return f"latent {self.solver.method}"

    @property
    def autoencoder_run(self) -> Autoencoder:
        """The autoencoder stage (what ``codec`` plots encode and decode with)."""
        return self.autoencoder

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.autoencoder.event_shape

    @property
    def dim(self) -> int:
        return self.autoencoder.dim

    @property
    def latent_dim(self) -> int:
        return self.autoencoder.latent_dim

    #: Dimensions of the space the likelihood lives in (per-dimension NLL divides by it).
    @property
    def likelihood_dim(self) -> int:
        return self.latent_dim

    @property
    def device(self) -> torch.device:
        return self.solver.device

    @property
    def seed(self) -> int:
        return self.solver.seed

    @property
    def cond_spec(self) -> dict[str, Any] | None:
        return self.solver.cond_spec

    @property
    def last_nfe(self) -> int | None:
        return self.solver.last_nfe

    @property
    def last_loss(self) -> float | None:
        return self.solver.last_loss

    @property
    def steps_done(self) -> int | None:
        return self.solver.steps_done

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.solver.history

    @property
    def train_config(self) -> Any:
        return self.solver.train_config

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "shape": list(self.event_shape), "latent_dim": self.latent_dim,
                "autoencoder": self.autoencoder.config(), "latent": self.solver.config(),
                "latent_mean": self.latent_mean.tolist(), "latent_std": self.latent_std.tolist()}

    # ---- latent space ------------------------------------------------------------------------------------------
    def encode(self, x: Any) -> torch.Tensor:
        """Standardised codes ``(E(x) - m) / s``: the space the solver works in."""
        z = self.autoencoder.encode(x)
        return (z - self.latent_mean.to(z.device)) / self.latent_std.to(z.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``D(m + s z)`` of standardised codes ``z`` (any leading shape ``(..., latent_dim)``)."""
        lead = z.shape[:-1]
        codes = z.reshape(-1, self.latent_dim) * self.latent_std.to(z.device) + self.latent_mean.to(z.device)
        return self.autoencoder.decode(codes).reshape(*lead, *self.event_shape)

    # ---- training ----------------------------------------------------------------------------------------------
    def fit(self, x: Any, prior: Any = None, *, cond: Any = None, out: str | Path | None = None, resume: bool = False,
            overwrite: bool = False, autoencoder_steps: int | None = None, autoencoder_options: dict | None = None,
            run_info: dict[str, Any] | None = None, evaluate: Any = None, **options: Any) -> LatentBridge:
        """Stage 1 (when :attr:`train_autoencoder`): fit the autoencoder on ``x`` for ``autoencoder_steps`` (its
        default 3,000) with ``autoencoder_options`` (batch size, lr, ...). Stage 2: fit the solver on the
        standardised codes with ``cond`` and ``options`` (the solver's fit options). ``out``: the run folder."""
        if prior is not None:
            raise ConfigError("a latent bridge generates from noise here; it takes no prior data set.")
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; pass only one of them.")
        run_dir = Path(out) if out is not None else None
        ctx = distributed.context()
        with contextlib.ExitStack() as held:
            if run_dir is not None:
                def open_run() -> None:  # rank 0 holds the run's lock through both stages
                    held.enter_context(rundir.locked(run_dir))
                    self._open_run_dir(run_dir, resume, overwrite, run_info)

                distributed.on_main(open_run, ctx)
            self._fit_stages(x, cond, run_dir, resume, autoencoder_steps, autoencoder_options, run_info, evaluate,
                             options)
        return self

    def _fit_stages(self, x: Any, cond: Any, run_dir: Path | None, resume: bool, autoencoder_steps: int | None,
                    autoencoder_options: dict | None, run_info: dict[str, Any] | None, evaluate: Any,
                    options: dict[str, Any]) -> None:
        ctx = distributed.context()
        ae_dir = None if run_dir is None else run_dir / AUTOENCODER_DIR
        quiet = {"quiet": options["quiet"]} if "quiet" in options else {}
        if self.train_autoencoder:
            if resume and ae_dir is not None and (ae_dir / io.WEIGHTS_FILE).is_file():  # stage 1 finished before
                tensors, meta = io.read_tensors(ae_dir / io.WEIGHTS_FILE)
                self.autoencoder.load_weights(tensors, ae_dir / io.WEIGHTS_FILE)
                self.autoencoder.history = list(meta.get("history", []))
            else:
                kwargs = {**quiet, **(autoencoder_options or {})}
                if autoencoder_steps is not None:
                    kwargs["steps"] = autoencoder_steps
                ae_resume = resume and ae_dir is not None and rundir.holds_run(ae_dir)
                self.autoencoder.fit(x, out=ae_dir, resume=ae_resume, run_info=run_info, **kwargs)
            self.train_autoencoder = False
        elif ae_dir is not None and ctx.is_main:
            self.autoencoder.save(ae_dir)
        codes = self.autoencoder.encode(x)
        self.latent_mean, self.latent_std = codes.mean(0).cpu(), codes.std(0).clamp_min(1e-6).cpu()
        if run_dir is not None and ctx.is_main:
            self._write_config(run_dir, run_info)
        latent_dir = None if run_dir is None else run_dir / LATENT_DIR
        latent_resume = resume and latent_dir is not None and rundir.holds_run(latent_dir)
        standardised = (codes - self.latent_mean.to(codes.device)) / self.latent_std.to(codes.device)
        self.solver.fit(standardised, cond=cond, out=latent_dir, resume=latent_resume, run_info=run_info,
                        evaluate=evaluate, **options)

    def _open_run_dir(self, run_dir: Path, resume: bool, overwrite: bool, run_info: dict[str, Any] | None) -> None:
        """Refuse to start over an existing run (its stages included) unless resuming or overwriting it; a resume
        must find a latent run there."""
        stages = (run_dir, run_dir / AUTOENCODER_DIR, run_dir / LATENT_DIR)
        if resume:
            if not (run_dir / io.CONFIG_FILE).is_file():
                raise RunDirError(f"{str(run_dir)!r} holds no latent run to resume; drop --resume to start one "
                                  "there, or point --out to the run you meant.")
            method = (io.read_run_config(run_dir).get("solver") or {}).get("method")
            if method != self.method:
                raise RunDirError(f"{str(run_dir)!r} holds a {method} run, not a latent one; resume it without "
                                  "--latent / --latent-dim, or choose a new --out folder.")
            return
        if any(rundir.holds_run(p) for p in stages):
            if not overwrite:
                raise RunDirError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it, "
                                  "--overwrite to replace it, or choose a new --out folder.")
            for p in stages:
                rundir.clear(p)
        self._write_config(run_dir, run_info)  # marks the folder as a latent run from the first stage on

    def _write_config(self, run_dir: Path, run_info: dict[str, Any] | None) -> None:
        with rundir.locked(run_dir):
            io.write_json(run_dir / io.CONFIG_FILE, {"solver": self.config(), **(run_info or {})})

    def save(self, run_dir: str | Path) -> Path:
        """Write the two stages and the tying ``config.json`` into ``run_dir``."""
        run_dir = Path(run_dir)
        if distributed.context().is_main:
            self.autoencoder.save(run_dir / AUTOENCODER_DIR)
            self.solver.save(run_dir / LATENT_DIR)
            cfg = io.read_json(run_dir / io.CONFIG_FILE) if (run_dir / io.CONFIG_FILE).is_file() else {}
            self._write_config(run_dir, {k: v for k, v in cfg.items() if k != "solver"})
        return run_dir

    # ---- sampling and likelihood -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, return_path: bool = False, **kwargs: Any) -> torch.Tensor:
        """Draw ``n`` latents with the solver's ``sample`` (its keyword arguments: ``steps``, ``ode``, ``cond``,
        ``guidance``, ``seed``, ...) and decode them: ``(n, *event_shape)``, or the decoded path (the solver's
        states, ``(steps + 1, n, *event_shape)``, plus the final denoised state for solvers that add one) with
        ``return_path``."""
        return self.decode(self.solver.sample(n, return_path=return_path, **kwargs))

    def sample_latent(self, n: int, **kwargs: Any) -> torch.Tensor:
        """Standardised latents from the solver, not decoded."""
        return self.solver.sample(n, **kwargs)

    def log_prob(self, x: Any, **kwargs: Any) -> torch.Tensor:
        """The solver's log-density of the codes ``E(x)`` in latent nats (the standardisation's ``-sum log s``
        included), shape ``(n,)``; it raises for a solver without a likelihood."""
        self._require("log_prob", "give exact likelihoods", f"its solver, {self.solver.method}, has none")
        return self.solver.log_prob(self.encode(x), **kwargs) - float(self.latent_std.log().sum())



def load_autoencoder(path: str | Path, device: str | torch.device = "auto", net: Any = None) -> Autoencoder:
    """The autoencoder of a run: an autoencoder run itself, or the ``autoencoder`` stage of a latent run (``net``:
    your own encoder / decoder modules, for a run trained with them)."""
    path = Path(path)
    if (path / AUTOENCODER_DIR / io.CONFIG_FILE).is_file():
        path = path / AUTOENCODER_DIR
    model = load(path, device=device, net=net)
    if not isinstance(model, Autoencoder):
        raise RunDirError(f"{str(path)!r} holds a {model.method} run, not an autoencoder; train one with 'sbridge "
                          "train --method autoencoder' and pass its folder.")
    return model


def load_latent_run(path: Path, cfg: dict[str, Any], device: Any, net: Any = None) -> LatentBridge:
    """Rebuild a :class:`LatentBridge` from its run folder (``sbridge.load`` calls this for method ``"latent"``);
    ``net``: ``{"autoencoder": {"encoder": ..., "decoder": ...}, "latent": module}`` for runs trained with your own
    networks (either key may be left out)."""
    if net is not None and (not isinstance(net, dict) or not set(net) <= {"autoencoder", "latent"}):
        raise ConfigError("for a latent run pass net={'autoencoder': {'encoder': ..., 'decoder': ...}, 'latent': "
                          "module} (either key may be left out).")
    net = net or {}
    solver_cfg = cfg.get("solver") or {}
    try:
        mean = torch.tensor(solver_cfg["latent_mean"], dtype=torch.float32)
        std = torch.tensor(solver_cfg["latent_std"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError):
        raise RunDirError(f"{str(path / io.CONFIG_FILE)!r} lacks valid latent statistics; restore it or retrain the "
                          "run.") from None
    autoencoder = load_autoencoder(path / AUTOENCODER_DIR, device=device, net=net.get("autoencoder"))
    latent = load(path / LATENT_DIR, device=device, net=net.get("latent"))
    bridge = LatentBridge(autoencoder, latent, train_autoencoder=False)
    if mean.shape != (bridge.latent_dim,) or std.shape != mean.shape or not bool((std > 0).all()):
        raise RunDirError(f"{str(path / io.CONFIG_FILE)!r} holds latent statistics of the wrong size; restore it or "
                          "retrain the run.")
    bridge.latent_mean, bridge.latent_std = mean, std
    return bridge


RUN_LOADERS[LatentBridge.method] = load_latent_run
