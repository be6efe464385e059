"""Score-based generative model (SGM): the baseline and the first IPF iteration of DSB (math.md §D.1–D.2, §A.3).

The network predicts the noise ``eps`` in ``X_t = alpha(t) X_0 + std(t) eps``; the score is ``-eps_theta / std``.
Minimising ``E ||eps_theta(X_t, t) - eps||^2`` is denoising score matching with weight ``lambda(t) = std(t)^2``
(Vincent 2011; Ho et al. 2020), simulation-free because ``X_t | X_0`` is known in closed form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sbridge.device import make_generator
from sbridge.networks import TimeMLP
from sbridge.processes import Process, make_process
from sbridge.sampling import ODE_METHODS, euler_maruyama, integrate_ode, time_grid
from sbridge.solvers.base import Solver
from sbridge.validation import check_choice, check_positive_int


class SGM(Solver):
    """Score-based diffusion with a VP, VE or Brownian reference.

    ``process``: ``"vp"`` (default), ``"ve"``, ``"brownian"`` or a dict of the process parameters
    (e.g. ``{"name": "ve", "sigma_max": 20}``); ``hidden``/``depth``/``time_dim`` size the :class:`TimeMLP`.
    """

    method = "sgm"

    def __init__(self, dim: int, *, process: str | dict[str, Any] | Process = "vp", hidden: int = 128,
                 depth: int = 3, time_dim: int = 64, seed: int = 0, device: str | torch.device = "auto") -> None:
        self.process = make_process(process)
        self.hidden, self.depth, self.time_dim = hidden, depth, time_dim
        super().__init__(dim, seed=seed, device=device)

    def options(self) -> dict[str, Any]:
        return {"process": self.process.config(), "hidden": self.hidden, "depth": self.depth,
                "time_dim": self.time_dim}

    def _build(self) -> nn.Module:
        return TimeMLP(self.dim, hidden=self.hidden, depth=self.depth, time_dim=self.time_dim,
                       time_scale=1000.0 / self.process.T)

    # ---- training ----------------------------------------------------------------------------------------------
    def _make_loss(self, data: torch.Tensor, batch_size: int):
        proc, n = self.process, data.shape[0]

        def loss(generator: torch.Generator) -> torch.Tensor:
            idx = torch.randint(n, (batch_size,), generator=generator, device=data.device)
            x0 = data[idx]
            t = proc.t_min + (proc.T - proc.t_min) * torch.rand(batch_size, generator=generator, device=data.device)
            xt, eps = proc.sample_marginal(x0, t, generator)
            return ((self.net(xt, t) - eps) ** 2).sum(dim=1).mean()

        return loss

    # ---- model -------------------------------------------------------------------------------------------------
    def score(self, x: torch.Tensor, t: float | torch.Tensor, *, ema: bool = True) -> torch.Tensor:
        """Learned score ``grad log p_t(x) = -eps_theta(x, t) / std(t)``."""
        net = self.ema_net if ema else self.net
        return -net(x, t) / self.process.std(t, like=x)

    def reverse_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Drift of the reverse-time SDE in forward time, ``f - g^2 score`` (math.md §1.1)."""
        g = self.process.g(t, x)
        return self.process.drift(x, t) - g**2 * self.score(x, t)

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Probability-flow ODE velocity ``f - g^2 score / 2`` (math.md §1.1)."""
        g = self.process.g(t, x)
        return self.process.drift(x, t) - 0.5 * g**2 * self.score(x, t)

    # ---- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, steps: int = 100, ode: bool = False, method: str = "heun",
               return_path: bool = False, seed: int | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` samples by integrating the reverse SDE (Euler–Maruyama) or, with ``ode=True``, the
        probability-flow ODE (``method`` in euler/heun or a torchdiffeq adaptive solver) from ``T`` to ``t_min``.

        Returns ``(n, dim)``, or the path ``(steps + 1, n, dim)`` with ``return_path``; ``self.last_nfe`` holds the
        number of network evaluations used.
        """
        n, steps = check_positive_int(n, "n"), check_positive_int(steps, "steps")
        gen = make_generator(self.seed + 1 if seed is None else seed, self.device)
        if x_T is None:
            x_T = self.process.prior_sample(n, self.dim, generator=gen, device=self.device)
        self.ema_net.eval()
        times = time_grid(self.process.T, self.process.t_min, steps)
        if ode:
            check_choice(method, ODE_METHODS, "ODE method")
            out, nfe = integrate_ode(self.velocity, x_T, times, method=method, return_path=return_path)
        else:
            out, nfe = euler_maruyama(self.reverse_drift, lambda t: float(self.process.g(t, x_T[:1]).squeeze()),
                                      x_T, times, generator=gen, return_path=return_path)
        self.last_nfe = nfe
        return out
