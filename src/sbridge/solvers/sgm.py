"""Score-based generative model (SGM): the baseline and the first IPF iteration of DSB (maths.md §D.1–D.2, §A.3).

The network predicts the noise ``eps`` in ``X_t = M_t X_0 + L_t eps``; the score is ``-L_t^{-T} eps_theta``
(``-eps_theta / std`` for an isotropic reference). Training is one phase of :class:`~sbridge.losses.score.
DenoisingScoreMatching`, simulation-free because ``X_t | X_0`` is known in closed form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.seeds import SAMPLE_OFFSET
from sbridge.core.validation import (
    check_choice,
    check_positive_int,
    check_probability,
    check_sample_request,
    check_seed,
)
from sbridge.losses.score import DenoisingScoreMatching
from sbridge.nets.registry import mlp_shorthand
from sbridge.numerics.integrators import ODE_METHODS, euler_maruyama, integrate_ode, make_grid
from sbridge.numerics.likelihood import mean_path_elbo
from sbridge.processes.linear import LinearSDE, make_process
from sbridge.solvers.base import FitData, Solver
from sbridge.solvers.capabilities import GRIDS, Capabilities
from sbridge.training.trainer import Phase, TrainConfig


class SGM(Solver):
    """Score-based diffusion with any reference process of :mod:`sbridge.processes.linear`.

    ``process``: ``"vp"`` (default), ``"ve"``, ``"brownian"``, ``"ou"`` or a dict of the process parameters (e.g.
    ``{"name": "ve", "sigma_max": 20}``), or a process object. ``hidden``/``depth``/``time_dim`` size the default
    time MLP (shorthand for ``net={"name": "mlp", ...}``). ``cond_drop``: probability of dropping the condition in
    training, which enables classifier-free guidance at sampling (``sample(..., guidance=w)``).
    """

    method = "sgm"
    declared = Capabilities(sample=True, log_prob=True, path_bound=True, guidance=True, samplers=("sde", "ode"),
                            grids=GRIDS, latent_solver=True, plots=("samples", "trajectories", "loss"))

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None,
                 process: str | dict[str, Any] | LinearSDE = "vp", hidden: int | None = None,
                 depth: int | None = None, time_dim: int | None = None, cond: dict[str, Any] | None = None,
                 cond_drop: float = 0.0, net: Any = None, seed: int = 0, device: str | torch.device = "auto") -> None:
        self.reference = make_process(process)
        self.cond_drop = check_probability(cond_drop, "cond_drop")
        net = mlp_shorthand(net, hidden, depth, time_dim)
        super().__init__(dim, shape=shape, cond=cond, net=net, seed=seed, device=device)
        self.reference.to(self.device)

    def options(self) -> dict[str, Any]:
        return {"process": self.reference.config(), "cond_drop": self.cond_drop}

    def capabilities(self) -> Capabilities:
        """As declared; the EDM and log-SNR grids need an isotropic process (they invert its noise level)."""
        caps = super().capabilities()
        return caps if self.reference.isotropic else caps.with_(grids=("uniform",))

    def _build_models(self) -> dict[str, nn.Module]:
        return {"score": self.network("score", time_scale=1000.0 / self.reference.T)}

    # ---- training ----------------------------------------------------------------------------------------------
    @property
    def loss(self) -> DenoisingScoreMatching:
        """The training objective as a public loss object (see :mod:`sbridge.losses.score`)."""
        return DenoisingScoreMatching(self.reference, "score", cond_drop=self.cond_drop if self.cond_spec else 0.0)

    def before_fit(self, data: FitData) -> None:
        if data.x0 is not None:
            self.reference.fit_prior(data.x0)

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        return [Phase("score", config.steps, self.loss, data.source(), ("score",))]

    # ---- model -------------------------------------------------------------------------------------------------
    def score(self, x: torch.Tensor, t: float | torch.Tensor, cond: torch.Tensor | None = None, *,
              ema: bool = True, guidance: float = 0.0) -> torch.Tensor:
        """Learned score ``-L_t^{-T} eps_theta(x, t, cond)``; with ``guidance = w > 0`` the classifier-free guided
        noise ``(1 + w) eps(x, t, c) - w eps(x, t, none)`` (Ho & Salimans 2022)."""
        net = (self.ema_models if ema else self.models)["score"]
        eps = net(x, t, cond)
        if guidance and cond is not None:
            eps = (1 + guidance) * eps - guidance * net(x, t, None)
        return self.reference.covariance(t, x).score_from_noise(eps)

    def reverse_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None,
                      guidance: float = 0.0) -> torch.Tensor:
        """Drift of the reverse-time SDE in forward time, ``f - g^2 score`` (maths.md §1.1)."""
        return self.reference.reverse_drift(x, t, self.score(x, t, cond, guidance=guidance))

    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None,
                 guidance: float = 0.0) -> torch.Tensor:
        """Probability-flow ODE velocity ``f - g^2 score / 2`` (maths.md §1.1)."""
        return self.reference.probability_flow(x, t, self.score(x, t, cond, guidance=guidance))

    def forward_paths(self, x: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
        """Paths of the forward (encode) process from the data points ``x``: ``(steps + 1, n, ...)``."""
        return self.reference.simulate(x, steps, seed=seed)

    # ---- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, steps: int = 100, ode: bool = False, method: str = "heun", grid: str = "uniform",
               cond: Any = None, guidance: float = 0.0, return_path: bool = False, seed: int | None = None,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` samples by integrating the reverse SDE (Euler–Maruyama) or, with ``ode=True``, the
        probability-flow ODE (``method`` in euler/heun or a torchdiffeq adaptive solver) from ``T`` to ``t_min``,
        on the time grid ``grid``: ``"uniform"``, ``"edm"`` (Karras et al. 2022, steps crowded at low noise) or
        ``"logsnr"`` (uniform in log signal-to-noise ratio); see :func:`sbridge.numerics.integrators.make_grid`.

        ``cond``: one condition per sample (or a single one for all) for conditional models; ``guidance``: the
        classifier-free guidance weight. Returns ``(n, *event_shape)``, or the path ``(steps + 1, n, ...)`` with
        ``return_path``; ``self.last_nfe`` holds the number of network evaluations used.
        """
        n, steps = check_positive_int(n, "n"), check_positive_int(steps, "steps")
        check_sample_request(n, steps, self.event_shape, return_path)
        gen = make_generator(self.seed + SAMPLE_OFFSET if seed is None else check_seed(seed), self.device)
        c = self._sampling_condition(cond, n)
        guidance = self.check_guidance(guidance)
        if x_T is None:
            x_T = self.reference.prior_sample((n, *self.event_shape), generator=gen, device=self.device)
        self.ema_models.eval()
        times = make_grid(grid, self.reference, steps)
        nets = 2 if guidance and c is not None else 1
        if ode:
            check_choice(method, ODE_METHODS, "ODE method")
            out, nfe = integrate_ode(lambda x, t: self.velocity(x, t, c, guidance), x_T, times, method=method,
                                     return_path=return_path)
        else:
            out, nfe = euler_maruyama(lambda x, t: self.reverse_drift(x, t, c, guidance),
                                      lambda t: self.reference.g(t, x_T), x_T, times, generator=gen,
                                      return_path=return_path)
        self.last_nfe = nfe * nets
        return out

    def log_prob(self, x: Any, *, cond: Any = None, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 divergence: str = "auto", seed: int = 0) -> torch.Tensor:
        """Exact log-likelihood (nats) of ``x`` under the probability-flow ODE (maths.md §1.1; instantaneous change
        of variables), integrated from ``t_min`` to ``T`` against the prior; shape ``(n,)``."""
        from sbridge.numerics.likelihood import log_prob_ode

        x = self._data(x, "points")
        c = None if cond is None else self._condition(cond, x.shape[0])
        self.ema_models.eval()
        out = log_prob_ode(lambda y, t: self.velocity(y, t, c), x, t0=self.reference.t_min, t1=self.reference.T,
                           prior_log_prob=self.reference.prior_log_prob, method=method, rtol=rtol, atol=atol,
                           divergence=divergence, seed=seed, return_nfe=True)
        logp, self.last_nfe = out
        return logp


    def elbo(self, x: Any, *, cond: Any = None, steps: int = 200, repeats: int = 1, divergence: str = "auto",
             seed: int = 0) -> torch.Tensor:
        """Path-space lower bound on the reverse SDE's log-likelihood (nats, shape ``(n,)``; maths.md §A.2–A.3): the
        encode SDE is the reference process, the decode SDE the learned reverse SDE, so the bound is
        ``E[log pi(X_T)] - int (g^2 |s|^2 / 2 + g^2 div s - div f) dt`` along forward paths from ``x`` (taken as
        ``X_{t_min}``), averaged over ``repeats`` draws of the reference's marginals; see
        :func:`~sbridge.numerics.likelihood.path_bound_terms`.
        It bounds the SDE sampler's density, while :meth:`log_prob` is the probability-flow ODE's: the two agree for
        an exact score and prior."""
        x = self._data(x, "points")
        c = None if cond is None else self._condition(cond, x.shape[0])
        self.ema_models.eval()
        return mean_path_elbo(lambda y, t: self.reference.drift(y, t), lambda y, t: self.reverse_drift(y, t, c),
                              self.reference, x, steps=steps, repeats=repeats, exact_marginals=True,
                              divergence=divergence, seed=seed)
