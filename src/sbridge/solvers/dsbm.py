"""Diffusion Schrödinger Bridge Matching (Shi, De Bortoli, Campbell, Doucet, NeurIPS 2023): iterative Markovian
fitting (IMF) with a Brownian-bridge reference.

Each outer iteration takes the current coupling ``(X0, X1)``, samples the reference bridge between its pairs,
``X_t = (1 - t) X0 + t X1 + sigma sqrt(t (1 - t)) Z``, and regresses one direction's drift on it — the Markovian
projection of the mixture of bridges:

* forward: ``f(x, t) = (E[X1 | X_t = x] - x) / (1 - t)`` (math.md §G.4), trained as
  ``E || X_t + (1 - t) f(X_t, t) - X1 ||^2``;
* backward (reverse time): ``b(x, t) = (E[X0 | X_t = x] - x) / t``, trained as ``E || X_t + t b(X_t, t) - X0 ||^2``.

Both losses are the drift regressions weighted by ``(1 - t)^2`` and ``t^2``, which have the same minimiser and keep
the targets' variance bounded near the ends. The trained direction then re-couples the data by simulation
(forward from the ``X0`` data, or backward from the ``X1`` data), and the next iteration trains the other direction.
The first coupling is the independent one, ``p0 x p1`` (DSBM-IMF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sbridge.errors import ConfigError
from sbridge.solvers.bridge import NET_KEYS, BridgeSolver
from sbridge.training import Callback, Trainer
from sbridge.validation import check_positive_int


class DSBM(BridgeSolver):
    """Bridge matching between data and ``N(0, I)`` or between two data sets. ``sigma``: reference noise."""

    method = "dsbm"

    def fit(self, x: Any, prior: Any = None, *, iterations: int = 6, steps: int = 6000, batch_size: int = 512,
            lr: float = 1e-3, sim_steps: int = 50, out: str | Path | None = None, resume: bool = False,
            quiet: bool = False, callbacks: tuple[Callback, ...] = (), run_info: dict[str, Any] | None = None,
            **train_options: Any) -> DSBM:
        """Run ``iterations`` IMF iterations (alternating forward, backward, ...), ``steps // iterations`` training
        steps each; ``sim_steps`` Euler–Maruyama steps re-couple the data after each. Returns ``self``."""
        iterations = check_positive_int(iterations, "iterations")
        if iterations < 2:
            raise ConfigError(f"iterations must be at least 2 so that both directions are trained, got {iterations}.")
        per_iteration = check_positive_int(steps, "steps") // iterations
        if per_iteration < 1:
            raise ConfigError(f"steps ({steps}) must be at least iterations ({iterations}).")
        state = self._start_fit(x, prior, phase_steps=per_iteration, batch_size=batch_size, lr=lr, quiet=quiet,
                                out=out, resume=resume, run_info=run_info, train_options=train_options)
        x0, x1, cfg, gen = state.x0, state.x1, state.config, state.generator
        if state.start == 0:
            c0, c1 = x0, x1[torch.randint(x1.shape[0], (x0.shape[0],), generator=gen, device=self.device)]
        else:  # resuming: rebuild the coupling of the last completed iteration (its simulation seed is fixed)
            c0, c1 = self._recouple(state.start - 1, x0, x1, sim_steps)
        for k in range(state.start, iterations):
            direction = "forward" if k % 2 == 0 else "backward"
            key = NET_KEYS[direction]
            trainer = Trainer(self.net[key], self.ema_net[key], self._loss(c0, c1, direction, batch_size),
                              cfg, generator=gen, callbacks=callbacks, prefix=f"{direction}_{k + 1}_")
            trainer.run()
            self.last_loss = trainer.last_loss
            c0, c1 = self._recouple(k, x0, x1, sim_steps)
            row = {**self._monitor(k + 1, x0, x1, sim_steps), "trained": direction, "loss": trainer.last_loss}
            self._end_iteration(state, k + 1, row)
        if state.run_dir is not None:
            self.save(state.run_dir)
        return self

    def _recouple(self, k: int, x0: torch.Tensor, x1: torch.Tensor,
                  sim_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The coupling after iteration ``k``: its trained direction (forward on even k) simulated from its data."""
        if k % 2 == 0:
            return x0, self._chunked_transport(x0, sim_steps, reverse=False, seed=self.seed + 100 + k)
        return self._chunked_transport(x1, sim_steps, reverse=True, seed=self.seed + 100 + k), x1

    def _chunked_transport(self, x: torch.Tensor, steps: int, *, reverse: bool, seed: int,
                           chunk: int = 8192) -> torch.Tensor:
        parts = [self.transport(x[i:i + chunk], steps=steps, reverse=reverse, seed=seed + i)
                 for i in range(0, x.shape[0], chunk)]
        return torch.cat(parts)

    def _loss(self, c0: torch.Tensor, c1: torch.Tensor, direction: str, batch_size: int):
        net, sigma, n = self.net[NET_KEYS[direction]], self.sigma, c0.shape[0]

        def loss(generator: torch.Generator) -> torch.Tensor:
            idx = torch.randint(n, (batch_size,), generator=generator, device=c0.device)
            a, b = c0[idx], c1[idx]
            t = torch.rand(batch_size, 1, generator=generator, device=c0.device)
            z = torch.randn(a.shape, generator=generator, device=c0.device)
            xt = (1 - t) * a + t * b + sigma * (t * (1 - t)).sqrt() * z
            if direction == "forward":
                residual = xt + (1 - t) * net(xt, t[:, 0]) - b
            else:
                residual = xt + t * net(xt, t[:, 0]) - a
            return (residual**2).sum(dim=1).mean()

        return loss
