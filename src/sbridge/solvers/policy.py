"""The policy bridges of SB-FBSDE and SB-VAE (maths.md §1.4, §A): a forward policy ``Z`` (network ``"fwd"``) and a
backward policy ``Z_hat`` (network ``"bwd"``) over a linear reference ``dX = f dt + g dW`` (VP, VE or Brownian;
:mod:`sbridge.processes.linear`), and the losses both train with.

* forward (*encode*) SDE ``dX = (f + g Z) dt + g dW`` from the data;
* backward (*decode*) SDE ``dX = (f - g Z_hat) dt + g dW_bar`` from the prior, and Nelson's relation
  ``Z + Z_hat = g grad log p_t`` gives the probability flow ``dx/dt = f + g (Z - Z_hat) / 2``.

``Z_hat = g s`` with ``s = -net_bwd(x, t) / std(t)`` (``std`` of the reference's transition): the parametrisation of
SGM, so an SGM run's weights warm-start the backward policy, and with ``Z = 0`` the backward policy *is* a score
model. The forward policy is the network's output itself. The path bound (``elbo``) is
:func:`~sbridge.numerics.likelihood.path_bound_terms` along encode paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError
from sbridge.core.tensors import expand_as_batch, sum_event
from sbridge.core.validation import check_choice, check_positive_int
from sbridge.losses.base import Batch, Terms
from sbridge.numerics.integrators import time_grid
from sbridge.numerics.likelihood import DIVERGENCE_METHODS, divergence, mean_path_elbo, rademacher
from sbridge.numerics.likelihood import divergence_method as choose_divergence
from sbridge.processes.linear import LinearSDE, make_process
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver

#: A policy's drift in forward time from the given models: ``drift(models, x, t, cond)``.
Drift = Callable[[Mapping[str, nn.Module], torch.Tensor, Any, Any], torch.Tensor]


def _drift_and_div(drift: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, method: str,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A drift and its divergence at ``x``, differentiable (``create_graph``) for training."""
    method = choose_divergence(method, x[0].numel())
    noise = (rademacher(tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device)
             if method == "hutchinson" else None)
    return divergence(lambda y, _t: drift(y), x, 0.0, method=method, noise=noise, create_graph=True)


class DriftMatching:
    """Drift matching of one network on cached states of the other direction (maths.md §A.2, §1.4):

        E[ |F - B|^2 / (2 g^2) + sign * div(trained drift) ]  over rows ``batch = {"x", "t", "other"}``,

    where ``F`` and ``B`` are the encode and decode drifts in forward time, ``other`` the cached drift of the frozen
    direction and ``sign = -1`` when the trained network is the decoder ``B`` (states from forward paths), ``+1``
    when it is the encoder ``F`` (states from backward paths, the same bound read in reverse time). Up to terms the
    trained network does not change this is SB-FBSDE's backward (Eq. 18) or forward (Eq. 19) policy loss; for a
    decoder ``B = f - g^2 s`` over a fixed reference it is implicit score matching weighted by ``g^2``.
    """

    def __init__(self, drift: Drift, diffusion: Callable[[torch.Tensor], torch.Tensor], trains: str,
                 divergence: str = "auto") -> None:
        self.drift, self.diffusion, self.divergence = drift, diffusion, divergence
        self.trains = check_choice(trains, ("encoder", "decoder"), "trained direction")

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x, t, other, cond = batch["x"], batch["t"], batch["other"], batch.get("cond")
        value, div = _drift_and_div(lambda y: self.drift(models, y, t, cond), x, self.divergence, generator)
        g2 = self.diffusion(t) ** 2
        sign = -1.0 if self.trains == "decoder" else 1.0
        integrand = 0.5 * sum_event((value - other) ** 2) / g2 + sign * div
        return integrand.mean(), {}


class _EncoderSteps:
    """Encode steps on a fixed grid: the reference's exact transition plus ``(F - f) dt`` (:meth:`LinearSDE.step`),
    with each step's moments and the decoder step's variance ``g(t_{n+1})^2 dt`` computed once."""

    def __init__(self, encode: Drift, decode: Drift, process: LinearSDE, times: list[float]) -> None:
        self.encode, self.decode, self.reference, self.times = encode, decode, process, times
        self.moments = [process.step_moments(t, t_next) for t, t_next in zip(times[:-1], times[1:], strict=True)]
        self.decoder_var = [float(process.diffusion(torch.tensor(t_next, dtype=torch.float64))) ** 2 * (t_next - t)
                            for t, t_next in zip(times[:-1], times[1:], strict=True)]

    def step(self, models: Mapping[str, nn.Module], x: torch.Tensor, n: int, cond: Any,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_{n+1}, noise)`` from ``X_n = x``."""
        t, t_next = self.times[n], self.times[n + 1]
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        extra = self.encode(models, x, tt, cond) - self.reference.drift(x, tt)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.reference.step(x, t, t_next, z, extra=extra, moments=self.moments[n]), z


class PathBound(_EncoderSteps):
    """The negative evidence bound of the discretised encoder / decoder pair, trained end to end (maths.md §A.2 with
    ``N = len(times) - 1`` latent steps, a hierarchical VAE):

        -log q(x_0) <= E[ -log pi(X_N) - sum_n ( log p(X_n | X_{n+1}) - log e(X_{n+1} | X_n) ) ],

    with the encoder step ``e`` — the reference's exact transition plus ``(F - f) dt`` (:meth:`LinearSDE.step`) —
    and the decoder step ``p(x_n | x_{n+1}) = N(x_{n+1} - B(x_{n+1}, t_{n+1}) dt, g(t_{n+1})^2 dt)``, the
    Euler–Maruyama step the sampler takes. Its continuous-time limit is the path bound ``-log pi(X_T) + int (|F -
    B|^2 / (2 g^2) - div B) dt``; unlike a discretisation of that integral it is a true bound on the likelihood of
    the sampler at every step size, so joint training of both networks cannot push it below the data's entropy by
    exploiting the discretisation, and it needs no divergence. The paths keep the graph: the gradient trains the
    encoder through the paths and the decoder through its steps. SB-FBSDE's joint likelihood training; SB-VAE's
    objective (prior loss + drift matching) while the encoder trains.
    """

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x, cond = batch["x"], batch.get("cond")
        d = x[0].numel()
        log_ratio = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for n, t_next in enumerate(self.times[1:]):
            x_next, z = self.step(models, x, n, cond, generator)
            dt, var = t_next - self.times[n], self.decoder_var[n]
            b = self.decode(models, x_next, torch.full((x.shape[0],), t_next, dtype=x.dtype, device=x.device), cond)
            u = (x - x_next + b * dt) / var**0.5
            log_ratio = (log_ratio - 0.5 * sum_event(u**2) + 0.5 * sum_event(z**2)
                         + 0.5 * d * math.log(float(self.moments[n][1]) / var))
            x = x_next
        prior = -self.reference.prior_log_prob(x)
        return (prior - log_ratio).mean(), {"prior_nll": prior.mean().detach(), "steps": -log_ratio.mean().detach()}


class DecoderSteps(_EncoderSteps):
    """The decoder's part of :class:`PathBound` with the encoder frozen: encode paths simulated without gradients
    from ``batch["x"]``, one random step per path, and the Gaussian regression ``|x_n - x_{n+1} + B(x_{n+1},
    t_{n+1}) dt|^2 / (2 g^2 dt)`` of the decoder step (scaled by the number of steps, so that it matches the bound's
    sum). Cheap: no gradient through the paths and no divergence (a DSB-like mean matching)."""

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x, cond = batch["x"], batch.get("cond")
        k = torch.randint(len(self.times) - 1, (x.shape[0],), generator=generator, device=x.device)
        lo = torch.zeros_like(x)
        hi = torch.zeros_like(x)
        with torch.no_grad():
            for n in range(len(self.times) - 1):
                x_next, _ = self.step(models, x, n, cond, generator)
                pick = (k == n).reshape(-1, *([1] * (x.ndim - 1)))
                lo, hi = torch.where(pick, x, lo), torch.where(pick, x_next, hi)
                x = x_next
        times = torch.tensor(self.times, dtype=x.dtype, device=x.device)
        t_next, dt = times[k + 1], times[k + 1] - times[k]
        b = self.decode(models, hi, t_next, cond)
        var = expand_as_batch(self.reference.diffusion(t_next) ** 2 * dt, x)
        loss = 0.5 * sum_event((lo - hi + b * expand_as_batch(dt, x)) ** 2 / var)
        return (len(self.times) - 1) * loss.mean(), {}


class PolicyBridge(BridgeSolver):
    """A bridge of two policies over the linear reference ``process`` (see the module docstring), with its path
    bound. ``process``: ``"vp"`` (default), ``"ve"``, ``"brownian"`` or a dict / process object as for
    :class:`~sbridge.SGM` (isotropic processes). ``sim_steps``: steps of the simulated paths; ``divergence``:
    ``"auto"``, ``"exact"`` or ``"hutchinson"``. ``warm_start``: the folder of an SGM run with the same process and
    network, whose score network initialises the backward policy. Subclasses give the training (``phases``)."""

    declared = BridgeSolver.declared.with_(path_bound=True)
    owns_reference = True  # its process may hold a fitted prior

    def __init__(self, dim: int | None = None, *, process: str | dict[str, Any] | LinearSDE = "vp",
                 sim_steps: int = 50, divergence: str = "auto", warm_start: str | None = None,
                 **options: Any) -> None:
        self._process = make_process(process)
        if not self._process.isotropic:
            raise ConfigError(f"{type(self).__name__} needs an isotropic reference (vp, ve, brownian or a scalar "
                              f"drift); got a {self._process.D.kind} drift matrix.")
        self.sim_steps = check_positive_int(sim_steps, "sim_steps")
        self.divergence = divergence if divergence == "auto" else check_choice(divergence, DIVERGENCE_METHODS,
                                                                              "divergence")
        self.warm_start = None if warm_start is None else str(warm_start)
        super().__init__(dim, **options)

    def options(self) -> dict[str, Any]:
        return {"process": self.reference.config(), "sim_steps": self.sim_steps, "divergence": self.divergence,
                "warm_start": self.warm_start, **super().options()}

    def _make_reference(self) -> LinearSDE:
        return self._process

    def _build_models(self) -> dict[str, nn.Module]:
        return {name: self.network(name, time_scale=1000.0 / self.reference.T) for name in self.model_names}

    # ---- the time span: the backward policy divides by std(t), which vanishes at t = 0 ----------------------------
    def _time_span(self) -> tuple[float, float]:
        return self.reference.t_min, self.reference.T

    # ---- the policies ---------------------------------------------------------------------------------------------
    def encode_drift(self, models: Mapping[str, nn.Module], x: torch.Tensor, t: Any, cond: Any = None
                     ) -> torch.Tensor:
        """``F = f + g Z``: the forward SDE's drift with the networks ``models`` (training or EMA)."""
        return self.reference.drift(x, t) + self.reference.g(t, x) * models["fwd"](x, t, cond)

    def decode_drift(self, models: Mapping[str, nn.Module], x: torch.Tensor, t: Any, cond: Any = None
                     ) -> torch.Tensor:
        """``B = f - g Z_hat = f - g^2 s`` with ``s = -net_bwd / std``: the backward SDE's drift in forward time."""
        return self.reference.drift(x, t) - self.reference.g(t, x) ** 2 * self.decoder_score(models, x, t, cond)

    def decoder_score(self, models: Mapping[str, nn.Module], x: torch.Tensor, t: Any, cond: Any = None
                      ) -> torch.Tensor:
        """``s = Z_hat / g = -net_bwd(x, t) / std(t)``, SGM's noise parametrisation."""
        return -models["bwd"](x, t, cond) / self.reference.std(t, x)

    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_drift(self.ema_models, x, t, cond)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        return -self.decode_drift(self.ema_models, x, t, cond)

    # ---- training ----------------------------------------------------------------------------------------------
    def before_fit(self, data: FitData) -> None:
        if self.warm_start is not None:
            self._warm_start_from(self.warm_start)

    def _warm_start_from(self, run: str) -> None:
        """Copy the score network of an SGM run with the same process and network into the backward policy."""
        from sbridge.solvers.base import load
        from sbridge.solvers.sgm import SGM

        sgm = load(run, device=self.device)
        if not isinstance(sgm, SGM) or type(sgm) is not SGM:
            raise ConfigError(f"warm_start must name an SGM run; {run!r} holds a {sgm.method} run.")
        if sgm.reference.config() != self.reference.config() or sgm.net_config != self.net_config:
            raise ConfigError(f"the SGM run {run!r} has another process or network than this "
                              f"{type(self).__name__}; train it with the same --process and network options.")
        self.models["bwd"].load_state_dict(sgm.ema_models["score"].state_dict())
        self.ema_models["bwd"].load_state_dict(sgm.ema_models["score"].state_dict())

    def path_bound(self) -> PathBound:
        """The negative evidence bound of the discretised pair as a loss object (see :class:`PathBound`)."""
        return PathBound(self.encode_drift, self.decode_drift, self.reference, self._sim_times())

    def _sim_times(self) -> list[float]:
        """The simulation grid: ``sim_steps`` uniform steps across :meth:`_time_span` (a grid crowded near the data
        end leaves steps near ``T`` too long for Euler–Maruyama where a VP reference's ``beta`` is largest)."""
        t0, t1 = self._time_span()
        return time_grid(t0, t1, self.sim_steps)

    # ---- the bound ---------------------------------------------------------------------------------------------
    def elbo(self, x: Any, *, cond: Any = None, steps: int = 200, repeats: int = 1, divergence: str = "auto",
             seed: int = 0) -> torch.Tensor:
        """Path-space lower bound on the backward SDE's log-likelihood (nats, shape ``(n,)``; maths.md §1.4, §A.2):
        ``E[log pi(X_T)] - int (|Z + Z_hat|^2 / 2 + g div Z_hat - div f) dt`` along forward-SDE paths from ``x``
        (taken as ``X_{t_min}``, :meth:`_time_span`) on ``steps`` steps, averaged over ``repeats`` paths
        (:func:`~sbridge.numerics.likelihood.mean_path_elbo`)."""
        self._require_generative("path_bound", "define a path-space likelihood bound")
        x = self._data(x, "points")
        c = self._bridge_condition(cond, x.shape[0])
        self.ema_models.eval()
        return mean_path_elbo(lambda y, t: self.encode_drift(self.ema_models, y, t, c),
                              lambda y, t: self.decode_drift(self.ema_models, y, t, c), self.reference, x,
                              steps=steps, repeats=repeats, divergence=divergence, seed=seed)
