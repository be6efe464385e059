"""Shared machinery of the solvers that learn a bridge between two distributions on ``[0, 1]``.

A bridge has a forward drift (``x0 -> x1``, integrated in forward time) and a backward drift (``x1 -> x0``,
written in reverse time ``s = 1 - t``: ``dY_s = b(Y_s, 1 - s) ds + sigma dB_s``), both with the reference noise
``sigma`` of the Brownian reference ``dX = sigma dW`` (sigma^2 per unit time, math.md §G.1). ``transport`` pushes
samples either way with Euler–Maruyama; ``sample`` draws the Gaussian prior and transports it back to the data.

``fit(x0, prior=None)`` bridges data to ``N(0, I)`` (generation); ``fit(x0, prior=x1)`` bridges two data sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sbridge import io, metrics
from sbridge.device import make_generator
from sbridge.errors import ConfigError
from sbridge.networks import TimeMLP
from sbridge.sampling import euler_maruyama, time_grid
from sbridge.solvers.base import Solver
from sbridge.training import TrainConfig
from sbridge.validation import as_data_tensor, check_positive_float, check_positive_int


@dataclass
class FitState:
    """What an iterative bridge fit carries from one outer iteration to the next."""

    x0: torch.Tensor
    x1: torch.Tensor
    config: TrainConfig
    run_dir: Path | None
    generator: torch.Generator
    start: int = 0  #: outer iterations already completed (non-zero when resuming)


#: Keys of the two drift networks in ``net`` / ``ema_net`` (``nn.ModuleDict`` reserves the name ``forward``).
NET_KEYS = {"forward": "fwd", "backward": "bwd"}


class BridgeSolver(Solver):
    """Base of the bridge solvers. Subclasses implement :meth:`forward_drift`, :meth:`backward_drift` and ``fit``."""

    #: Points per side used to report the distance of each end to its target after every outer iteration.
    monitor_n = 1000

    def __init__(self, dim: int, *, sigma: float = 1.0, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 seed: int = 0, device: str | torch.device = "auto") -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        self.hidden, self.depth, self.time_dim = hidden, depth, time_dim
        self.generative = True  # set by fit: False once fitted between two data sets
        self.history: list[dict[str, Any]] = []
        super().__init__(dim, seed=seed, device=device)

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "hidden": self.hidden, "depth": self.depth, "time_dim": self.time_dim}

    def _build(self) -> nn.Module:
        def mlp() -> TimeMLP:
            return TimeMLP(self.dim, hidden=self.hidden, depth=self.depth, time_dim=self.time_dim)

        return nn.ModuleDict({NET_KEYS["forward"]: mlp(), NET_KEYS["backward"]: mlp()})

    # ---- drifts ------------------------------------------------------------------------------------------------
    def forward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Drift of the forward SDE ``dX = f(X, t) dt + sigma dW`` (x0 -> x1)."""
        return self.ema_net["fwd"](x, t)

    def backward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Drift ``b(x, t)`` of the backward SDE in reverse time: ``Y_{s+ds} = Y_s + b(Y_s, 1 - s) ds + sigma dB``."""
        return self.ema_net["bwd"](x, t)

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _endpoints(self, x: Any, prior: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = as_data_tensor(x, name="training data", dim=self.dim).to(self.device)
        if prior is None:
            self.generative = True
            gen = make_generator(self.seed + 2, self.device)
            x1 = torch.randn(x0.shape, generator=gen, device=self.device)
        else:
            self.generative = False
            x1 = as_data_tensor(prior, name="prior data", dim=self.dim).to(self.device)
        return x0, x1

    def config(self) -> dict[str, Any]:
        return {**super().config(), "generative": self.generative}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "auto") -> Solver:
        solver = super().from_config(cfg, device=device)
        solver.generative = cfg.get("generative", True)
        return solver

    def _start_fit(self, x: Any, prior: Any, *, phase_steps: int, batch_size: int, lr: float, quiet: bool,
                   out: Any, resume: bool, run_info: dict[str, Any] | None,
                   train_options: dict[str, Any]) -> FitState:
        """Shared set-up of an iterative fit: endpoints, the per-phase training config, the run directory and the
        generator. ``phase_steps`` is the number of training steps of one half-step / IMF iteration.

        With ``resume`` and a checkpoint in ``out``, the weights, generator, history and the number of completed
        outer iterations are restored from it (checkpoints are written after every outer iteration), so the
        resumed fit ends exactly where an uninterrupted one would.
        """
        x0, x1 = self._endpoints(x, prior)
        cfg = TrainConfig.from_dict({"steps": phase_steps, "batch_size": batch_size, "lr": lr, "quiet": quiet,
                                     **train_options})
        self.train_config = cfg
        run_dir = Path(out) if out is not None else None
        if resume and run_dir is None:
            raise ConfigError("resume=True needs the run directory to resume from; pass out=... (--out).")
        if run_dir is not None:
            self._prepare_run_dir(run_dir, resume, run_info)
        self.history = []
        state = FitState(x0, x1, cfg, run_dir, make_generator(self.seed, self.device))
        if resume and (run_dir / io.CHECKPOINT_FILE).is_file():
            tensors, meta = io.read_tensors(run_dir / io.CHECKPOINT_FILE)
            self.load_weights(tensors)
            state.generator.set_state(tensors["rng"])
            self.history = meta["history"]
            state.start = int(meta["iteration"])
            io.truncate_jsonl(run_dir / io.METRICS_FILE, state.start, key="iteration")
        return state

    def _end_iteration(self, state: FitState, iteration: int, row: dict[str, Any]) -> None:
        """Log an outer iteration's row and checkpoint the state after it (atomically)."""
        if state.run_dir is None:
            return
        io.append_jsonl(state.run_dir / io.METRICS_FILE, row)
        tensors = {**self.weight_tensors(), "rng": state.generator.get_state()}
        io.write_tensors(state.run_dir / io.CHECKPOINT_FILE, tensors, {"iteration": iteration, "history": self.history})

    # ---- transport and sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def transport(self, x: Any, *, steps: int | None = None, reverse: bool = False, return_path: bool = False,
                  seed: int | None = None) -> torch.Tensor:
        """Push samples of one end to the other: ``x0 -> x1`` with the forward SDE, or ``x1 -> x0`` with
        ``reverse=True`` (Euler–Maruyama with ``steps`` steps, 100 by default, noise kept at every step). Returns
        ``(n, d)`` or the path ``(steps + 1, n, d)``; ``self.last_nfe`` holds the network evaluations used."""
        x = as_data_tensor(x, name="points to transport", dim=self.dim).to(self.device)
        gen = make_generator(self.seed + 1 if seed is None else seed, self.device)
        self.ema_net.eval()
        times = self._grid(steps, reverse)
        drift = (lambda y, t: -self.backward_drift(y, t)) if reverse else self.forward_drift
        out, nfe = euler_maruyama(drift, lambda t: self.sigma, x, times, generator=gen, return_path=return_path,
                                  noise_last_step=True)
        self.last_nfe = nfe
        return out

    def _grid(self, steps: int | None, reverse: bool) -> list[float]:
        """Times of the Euler–Maruyama grid: ``steps`` (default 100) uniform steps from 0 to 1 (or 1 to 0)."""
        steps = 100 if steps is None else check_positive_int(steps, "steps")
        return time_grid(1.0, 0.0, steps) if reverse else time_grid(0.0, 1.0, steps)

    @torch.no_grad()
    def sample(self, n: int, *, steps: int | None = None, ode: bool = False, return_path: bool = False,
               seed: int | None = None, **_: Any) -> torch.Tensor:
        """Draw ``n`` points of the data end: ``N(0, I)`` prior transported backward (generative bridges only)."""
        if ode:
            raise ConfigError(f"{type(self).__name__} samples with its SDE only; drop --ode / ode=True.")
        if not self.generative:
            raise ConfigError("this bridge was fitted between two data sets, so it has no prior to sample from; "
                              "use transport(x1, reverse=True) on points of the second data set.")
        gen = make_generator(self.seed + 3 if seed is None else seed, self.device)
        z = torch.randn((check_positive_int(n, "n"), self.dim), generator=gen, device=self.device)
        # the transport noise needs its own stream: reusing ``seed`` would make its first increment equal ``z``
        noise_seed = None if seed is None else seed + 1
        return self.transport(z, steps=steps, reverse=True, return_path=return_path, seed=noise_seed)

    # ---- monitoring --------------------------------------------------------------------------------------------
    def _monitor(self, iteration: int, x0: torch.Tensor, x1: torch.Tensor, steps: int) -> dict[str, Any]:
        """Energy distance of each transported end to its target on ``monitor_n`` points (math.md §D.5: IPF's
        marginal errors should shrink with the iterations)."""
        n = min(self.monitor_n, x0.shape[0], x1.shape[0])
        to_x1 = self.transport(x0[:n], steps=steps, seed=self.seed + 10 + iteration)
        to_x0 = self.transport(x1[:n], steps=steps, reverse=True, seed=self.seed + 20 + iteration)
        row = {"iteration": iteration, "energy_x1": metrics.energy_distance(to_x1.cpu(), x1[-n:].cpu()),
               "energy_x0": metrics.energy_distance(to_x0.cpu(), x0[-n:].cpu())}
        self.history.append(row)
        return row
