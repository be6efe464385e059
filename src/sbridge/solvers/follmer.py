"""The latent Schrödinger bridge of Jiao et al. (2024) on ``[0, 1]`` with a Brownian reference ``dX = sqrt(tau) dW``:
its two closed-form cases (maths.md §B.2), a regression loss and early stopping at ``T = 1 - delta``.

* **Case H** (heat-flow reversal, the default): ``nu = mu * N(0, tau I)``, so the bridge is the time reversal of the
  heat flow started at the data, ``X_t = Y + sqrt(tau (1 - t)) Z`` with ``Y ~ mu``, drift
  ``v_t(x) = tau grad log q_{1-t}(x)``. We believe this is the paper's case: its summary describes the latent SDE as
  transporting "a Gaussian-convolved encoder distribution" to the encoder's target and stops early before ``t = 1``,
  where this drift becomes the (singular) data score; this is an inference from the abstract and summaries, not a
  check of the paper's Eq. (1).
* **Case F** (Schrödinger–Föllmer): ``nu = delta_0``, ``X_t = t Y + sqrt(tau t (1 - t)) Z``, drift
  ``v_t(x) = (E[Y | X_t = x] - x) / (1 - t)`` (Huang et al. 2021).

Both drifts are ``v_t(x) = (D(x, t) - x) / (1 - t)`` with the denoiser ``D(x, t) = E[Y | X_t = x]``, and the paper's
regression ``min_v int_0^T E||v(X_t, t) - (Y - X_t) / (1 - t)||^2 dt`` is ``E||D - Y||^2 / (1 - t)^2``. The network
predicts ``Y`` (case F) or ``Z`` (case H: ``D = x - sqrt(tau (1 - t)) net``); ``weighting="paper"`` trains with the
paper's weights, ``"uniform"`` (default) with equal weight on every ``t`` of the network's own target (same
minimiser for each ``t``, bounded weights near ``T``). The "paper" weights are derived from the regression of
maths.md §B.2; the paper's exact loss display is not verified (maths.md §F).

Case H needs draws from ``nu``, which depends on the data: ``prior="gaussian"`` draws ``N(m, C + tau I)`` with the
data's mean and covariance (exact for Gaussian data, and close when ``tau`` dominates ``C``); ``prior="data"`` draws
``Y + sqrt(tau) Z`` from stored training points (exact for the empirical law, memorising it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.core.seeds import SAMPLE_OFFSET
from sbridge.core.tensors import flat, sum_event
from sbridge.core.validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_sample_request,
    check_seed,
)
from sbridge.losses.base import Batch, Terms
from sbridge.nets.embeddings import drop_condition
from sbridge.nets.registry import mlp_shorthand
from sbridge.numerics.integrators import euler_maruyama, integrate_ode, time_grid
from sbridge.processes.linear import ConstantRate, DenseCovariance, LinearSDE
from sbridge.solvers.base import FitData, Solver
from sbridge.solvers.capabilities import Capabilities
from sbridge.training.trainer import Phase, TrainConfig

CASES = ("H", "F")
WEIGHTINGS = ("uniform", "paper")
PRIORS = ("gaussian", "data")


def reference_for(tau: float) -> LinearSDE:
    """The reference ``dX = sqrt(tau) dW`` on ``[0, 1]`` (a constant rate ``tau``: Brownian motion of variance
    ``tau`` per unit time). Built from the rate ``tau`` itself rather than as ``Brownian(sqrt(tau))``, whose rate
    ``sqrt(tau)**2`` can differ from ``tau`` in the last bit."""
    return LinearSDE(ConstantRate(tau, 1.0), None, prior="marginal")


def marginal(case: str, y: torch.Tensor, t: torch.Tensor, z: torch.Tensor, reference: LinearSDE) -> torch.Tensor:
    """``X_t`` of the bridge given its end ``Y`` (maths.md §B.2), from the reference's closed forms: the Brownian
    bridge from 0 to ``Y``, ``t Y + sqrt(tau t (1 - t)) Z`` (F), or the heat flow from ``Y`` read backward,
    ``Y + sqrt(tau (1 - t)) Z`` (H); ``t`` is ``(batch,)``."""
    if case == "F":
        mean, std = reference.bridge_moments(torch.zeros_like(y), y, t)
        return mean + std * z
    mean, cov = reference.marginal(y, 1 - t)
    return mean + cov.mul_sqrt(z)


class BridgeRegression:
    """The regression loss of the latent bridge (maths.md §B.2, §B.4) as a loss object: ``t ~ U[0, T]``, ``X_t`` from
    :func:`marginal`, and the squared error of the network's target (``Y`` for case F, ``Z`` for case H), with the
    paper's weights ``1 / (1 - t)^2`` (F) and ``tau / (1 - t)`` (H) under ``weighting="paper"``."""

    def __init__(self, case: str, reference: LinearSDE, t_end: float, weighting: str = "uniform",
                 model: str = "drift", cond_drop: float = 0.0) -> None:
        self.case, self.reference, self.t_end, self.weighting, self.model = case, reference, t_end, weighting, model
        self.tau = reference.schedule.value
        self.cond_drop = cond_drop

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        y = batch["x"]
        n = y.shape[0]
        t = self.t_end * torch.rand(n, generator=generator, device=y.device)
        z = torch.randn(y.shape, generator=generator, device=y.device)
        cond = batch.get("cond")
        if cond is not None and self.cond_drop > 0:
            cond = drop_condition(cond, torch.rand(n, generator=generator, device=y.device) < self.cond_drop)
        out = models[self.model](marginal(self.case, y, t, z, self.reference), t, cond)
        err = sum_event((out - (y if self.case == "F" else z)) ** 2)
        if self.weighting == "paper":
            err = err / (1 - t) ** 2 if self.case == "F" else err * self.tau / (1 - t)
        return err.mean(), {}


class SchrodingerFollmer(Solver):
    """The latent bridge of Jiao et al. 2024 on ``[0, 1]`` (see the module docstring).

    ``case``: ``"H"`` (default) or ``"F"``. ``tau``: the reference's variance per unit time. ``delta``: early
    stopping, the sampler runs to ``T = 1 - delta``. ``weighting``: ``"uniform"`` or ``"paper"``. ``prior`` (case H):
    ``"gaussian"`` or ``"data"``. ``denoise``: return ``D(X_T, T)`` (the posterior mean at the last step) instead of
    ``X_T``. ``cond_drop``: condition dropout for classifier-free guidance.
    """

    method = "follmer"
    model_names = ("drift",)
    owns_reference = False  # rebuilt from tau
    declared = Capabilities(sample=True, log_prob=True, guidance=True, samplers=("sde", "ode"), grids=("uniform",),
                            latent_solver=True, plots=("samples", "trajectories", "loss"))

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, case: str = "H",
                 tau: float = 4.0, delta: float = 1e-3, weighting: str = "uniform", prior: str = "gaussian",
                 denoise: bool = True, cond: dict[str, Any] | None = None, cond_drop: float = 0.0,
                 hidden: int | None = None, depth: int | None = None, net: Any = None, seed: int = 0,
                 device: str | torch.device = "auto") -> None:
        self.case = check_choice(str(case).upper(), CASES, "case")
        self.tau = check_positive_float(tau, "tau")
        #: The reference ``sqrt(tau) W`` (no state of its own: rebuilt from ``tau``).
        self.reference = reference_for(self.tau)
        self.delta = check_probability(delta, "delta")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta (early stopping, T = 1 - delta) must lie strictly between 0 and 1, got {delta}.")
        self.weighting = check_choice(weighting, WEIGHTINGS, "weighting")
        self.prior = check_choice(prior, PRIORS, "prior")
        if self.case == "F" and self.prior != "gaussian":
            raise ConfigError("case F starts from the point 0, so it takes no prior; drop prior= (it applies to case "
                              "H).")
        if not isinstance(denoise, bool):
            raise ConfigError(f"denoise must be true or false, got {denoise!r}.")
        self.denoise = denoise
        self.cond_drop = check_probability(cond_drop, "cond_drop")
        super().__init__(dim, shape=shape, cond=cond, net=mlp_shorthand(net, hidden, depth, None), seed=seed,
                         device=device)
        self.reference.to(self.device)
        d = self.dim
        #: nu's moments (case H, prior="gaussian": mean, Cholesky factor of C + tau I) and stored points
        #: (prior="data"), set by fit and saved with the weights
        self.nu_state = {"prior_mean": torch.zeros(d), "prior_chol": torch.eye(d) * math.sqrt(1 + self.tau),
                         "prior_points": torch.zeros(0, d)}

    @property
    def t_end(self) -> float:
        """``T = 1 - delta``, where sampling stops."""
        return 1.0 - self.delta

    def options(self) -> dict[str, Any]:
        return {"case": self.case, "tau": self.tau, "delta": self.delta, "weighting": self.weighting,
                "prior": self.prior, "denoise": self.denoise, "cond_drop": self.cond_drop}

    def _build_models(self) -> dict[str, nn.Module]:
        return {"drift": self.network("drift", time_scale=1000.0)}

    # ---- training ----------------------------------------------------------------------------------------------
    @property
    def loss(self) -> BridgeRegression:
        return BridgeRegression(self.case, self.reference, self.t_end, self.weighting,
                                cond_drop=self.cond_drop if self.cond_spec else 0.0)

    def before_fit(self, data: FitData) -> None:
        if self.case != "H":
            return
        if data.x0 is None:
            raise ConfigError("case H draws nu from the data's moments (or points), which a DataLoader does not give "
                              "up front; pass the data as a tensor, or use case='F'.")
        y = flat(data.x0).double()
        cov = torch.atleast_2d(torch.cov(y.T)) if y.shape[0] > 1 else torch.zeros(y.shape[1], y.shape[1])
        cov = cov + self.tau * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
        self.nu_state = {"prior_mean": y.mean(0).float().cpu(), "prior_chol": torch.linalg.cholesky(cov).float().cpu(),
                         "prior_points": flat(data.x0).cpu() if self.prior == "data" else torch.zeros(0, self.dim)}

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        return [Phase("drift", config.steps, self.loss, data.source(), ("drift",))]

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.nu_state.items()}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            self.nu_state = {k: tensors[k].cpu() for k in self.nu_state}

    def load_weights(self, tensors: dict[str, torch.Tensor], path: Any = "the weights") -> None:
        # the stored points of prior="data" have as many rows as the training data: adopt the file's size
        key = "extra.prior_points"
        if key in tensors:
            self.nu_state["prior_points"] = torch.zeros(tensors[key].shape)
        super().load_weights(tensors, path)

    # ---- model -------------------------------------------------------------------------------------------------
    def denoiser(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None, guidance: float = 0.0
                 ) -> torch.Tensor:
        """``D(x, t) = E[Y | X_t = x]`` from the EMA network, with classifier-free guidance ``(1 + w) D(c) - w D()``."""
        net = self.ema_models["drift"]
        out = net(x, t, cond)
        if guidance and cond is not None:
            out = (1 + guidance) * out - guidance * net(x, t, None)
        if self.case == "F":
            return out
        return x - math.sqrt(self.tau * (1 - t)) * out

    def drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None, guidance: float = 0.0
              ) -> torch.Tensor:
        """The bridge's drift ``v_t(x) = (D(x, t) - x) / (1 - t)`` (maths.md §B.2, both cases)."""
        return (self.denoiser(x, t, cond, guidance) - x) / (1 - t)

    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None, guidance: float = 0.0
                 ) -> torch.Tensor:
        """Probability-flow velocity of case H, ``v - tau grad log p_t / 2 = v / 2`` (there ``v = tau grad log
        p_t``)."""
        return 0.5 * self.drift(x, t, cond, guidance)

    def prior_sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws of ``X_0 ~ nu``: zeros (case F), ``N(m, C + tau I)`` or stored points plus ``sqrt(tau) Z``."""
        shape = (n, *self.event_shape)
        if self.case == "F":
            return torch.zeros(shape, device=self.device)
        z = torch.randn(n, self.dim, generator=generator, device=self.device)
        points = self.nu_state["prior_points"]
        if self.prior == "data" and points.shape[0]:
            idx = torch.randint(points.shape[0], (n,), generator=generator, device=self.device)
            return (points.to(self.device)[idx] + math.sqrt(self.tau) * z).reshape(shape)
        mean, chol = self.nu_state["prior_mean"].to(self.device), self.nu_state["prior_chol"].to(self.device)
        return (mean + z @ chol.T).reshape(shape)

    def capabilities(self) -> Capabilities:
        """Case F starts from a point: no ODE (a flow cannot spread it) and no density; ``prior="data"`` has no
        density to start the likelihood from either."""
        caps = super().capabilities()
        if self.case == "F":
            caps = caps.with_(samplers=("sde",))
        return caps.with_(log_prob=False) if self.case == "F" or self.prior == "data" else caps

    # ---- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, steps: int = 100, ode: bool = False, method: str = "heun", cond: Any = None,
               guidance: float = 0.0, return_path: bool = False, seed: int | None = None) -> torch.Tensor:
        """Euler–Maruyama on a uniform grid of ``[0, T]`` from ``X_0 ~ nu`` (maths.md §B.1 step 4); ``ode=True``
        integrates the probability-flow ODE instead (case H only: case F starts from a point). With ``denoise``
        the last state is replaced by ``D(X_T, T)``. Returns ``(n, *event_shape)`` or the path."""
        n, steps = check_positive_int(n, "n"), check_positive_int(steps, "steps")
        check_sample_request(n, steps, self.event_shape, return_path)
        if ode and "ode" not in self.capabilities().samplers:
            raise ConfigError("case F starts from a single point, which a deterministic flow cannot spread; sample "
                              "it with the SDE (drop --ode).")
        gen = make_generator(self.seed + SAMPLE_OFFSET if seed is None else check_seed(seed), self.device)
        c = self._sampling_condition(cond, n)
        guidance = self.check_guidance(guidance)
        self.ema_models.eval()
        x = self.prior_sample(n, gen)
        times = time_grid(0.0, self.t_end, steps)
        if ode:
            out, nfe = integrate_ode(lambda y, t: self.velocity(y, t, c, guidance), x, times, method=method,
                                     return_path=return_path)
        else:
            out, nfe = euler_maruyama(lambda y, t: self.drift(y, t, c, guidance), self.reference.diffusion_at, x,
                                      times, generator=gen, return_path=return_path)
        if self.denoise:
            last = self.denoiser(out[-1] if return_path else out, self.t_end, c, guidance)
            out = torch.cat([out, last[None]]) if return_path else last
            nfe += 1
        self.last_nfe = nfe * (2 if guidance and c is not None else 1)
        return out

    # ---- likelihood --------------------------------------------------------------------------------------------
    def log_prob(self, x: Any, *, cond: Any = None, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 divergence: str = "auto", seed: int = 0) -> torch.Tensor:
        """The exact log-density (nats, ``(n,)``) of ``X_T`` — the early-stopped state, before the final denoising —
        under case H's probability-flow ODE from the Gaussian ``nu`` (instantaneous change of variables,
        :func:`sbridge.numerics.likelihood.log_prob_ode`, in the reversed time ``s = 1 - t``). Not declared (it
        raises) for case F (a point start has no density) and for ``prior="data"``."""
        from sbridge.numerics.likelihood import log_prob_ode

        self._require("log_prob", "give exact likelihoods", "case F and prior='data' start from no density")
        x = self._data(x, "points")
        c = None if cond is None else self._condition(cond, x.shape[0])
        mean, chol = self.nu_state["prior_mean"].to(self.device), self.nu_state["prior_chol"].to(self.device)

        nu = DenseCovariance(chol @ chol.T, "nu's covariance C + tau I")

        def prior_log_prob(y: torch.Tensor) -> torch.Tensor:
            return nu.log_prob(flat(y) - mean)

        self.ema_models.eval()
        logp, self.last_nfe = log_prob_ode(lambda y, s: -self.velocity(y, 1.0 - s, c), x, t0=self.delta, t1=1.0,
                                           prior_log_prob=prior_log_prob, method=method, rtol=rtol, atol=atol,
                                           divergence=divergence, seed=seed, return_nfe=True)
        return logp
