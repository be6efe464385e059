"""SB-FBSDE (Chen, Liu & Theodorou, ICLR 2022; maths.md §1.4): a Schrödinger bridge trained by likelihood.

Over a linear reference ``dX = f dt + g dW`` (VP, VE or Brownian; :mod:`sbridge.processes.linear`), the bridge has a
forward policy ``Z`` (network ``"fwd"``) and a backward policy ``Z_hat`` (network ``"bwd"``):

* forward SDE ``dX = (f + g Z) dt + g dW`` from the data (the *encode* SDE of maths.md §A);
* backward SDE ``dX = (f - g Z_hat) dt + g dW_bar`` from the prior (the *decode* SDE), and Nelson's relation
  ``Z + Z_hat = g grad log p_t`` gives the probability flow ``dx/dt = f + g (Z - Z_hat) / 2``.

``Z_hat = g s`` with ``s = -net_bwd(x, t) / std(t)`` (``std`` of the reference's transition): the parametrisation of
SGM, so an SGM run's weights warm-start the backward policy, and with ``Z = 0`` the backward policy *is* a score
model. The forward policy is the network's output itself.

Training (``mode``):

* ``"alternate"`` (the paper's IPF-like scheme): stages of (a) the backward policy on cached forward trajectories,
  ``E[|Z_hat|^2 / 2 + g div Z_hat + Z . Z_hat]``, then (b) the forward policy on cached backward trajectories,
  ``E[|Z|^2 / 2 + g div Z + Z_hat . Z]`` (Eq. 18-19). Both are :class:`DriftMatching`, the part of the path bound's
  integrand (:func:`~sbridge.numerics.likelihood.path_elbo`) that the trained network changes. Works between two
  data sets too.
* ``"joint"``: one phase on the whole negative likelihood bound, whose continuous form is ``-log pi(X_T) + int
  (|Z + Z_hat|^2 / 2 + g div Z_hat - div f) dt``, taken as the exact evidence bound of the discretised forward /
  backward pair along paths that carry gradients to both policies (:class:`PathBound`): a discretised integral
  would let the joint optimum exploit the step size.

The divergences (alternating losses, ``elbo``) are exact up to 16 coordinates and Hutchinson estimates beyond
(``divergence``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.core.tensors import expand_as_batch, sum_event
from sbridge.core.validation import check_choice, check_positive_int, check_seed
from sbridge.losses.base import Batch, Terms
from sbridge.numerics.integrators import euler_maruyama, time_grid
from sbridge.numerics.likelihood import DIVERGENCE_METHODS, divergence, elbo_grid, rademacher
from sbridge.numerics.likelihood import divergence_method as choose_divergence
from sbridge.processes.linear import LinearSDE, make_process
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import BridgeSolver
from sbridge.solvers.capabilities import Capabilities
from sbridge.training.trainer import Phase, TrainConfig

#: The network a phase of the alternation trains: the decoder in the backward phases, the encoder in the forward.
TRAINS = {"backward": "decoder", "forward": "encoder"}

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


def bound_along_paths(encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], process: LinearSDE,
                      x: torch.Tensor, times: list[float], *, divergence_method: str = "auto",
                      generator: torch.Generator | None = None, create_graph: bool = False,
                      score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                      ) -> dict[str, torch.Tensor]:
    """Per-sample terms of the path bound along one encode path from each row of ``x`` (maths.md §A.2, §A.4):

    * ``"prior_nll"``: ``-log pi(X_T)``;
    * ``"drift"``: ``int (|F - B|^2 / (2 g^2) - div B) dt``, so that ``prior_nll + drift`` is the negative path
      bound of :func:`sbridge.numerics.likelihood.path_elbo`;
    * ``"entropy"`` (when ``score``, an estimate of ``grad log p_t``, is given): ``int (div F + g^2 |score|^2 / 2)
      dt``, the entropy production of the encode SDE, so that ``prior_nll - entropy`` is the prior loss
      ``KL(p_T || pi)`` plus the data's entropy.

    ``encode(x, t)`` and ``decode(x, t)`` are the drifts in forward time, ``t`` a ``(batch,)`` tensor. The path
    takes :meth:`LinearSDE.step` (the reference exactly, the rest of ``F`` by Euler), the integrals the trapezoid
    rule. ``create_graph=True`` keeps the graph through the paths and the divergences (training); else the terms
    are detached.
    """
    t0 = torch.full((x.shape[0],), times[0], dtype=x.dtype, device=x.device)

    def integrands(state: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        method = choose_divergence(divergence_method, state[0].numel())
        noise = (rademacher(tuple(state.shape), generator=generator, dtype=state.dtype, device=state.device)
                 if method == "hutchinson" else None)
        b, div_b = divergence(lambda y, _t: decode(y, tt), state, 0.0, method=method, noise=noise,
                              create_graph=create_graph)
        g2 = expand_as_batch(process.diffusion(tt), state) ** 2
        if score is None:
            with torch.set_grad_enabled(create_graph):
                f = encode(state, tt)
            return f, 0.5 * sum_event((f - b) ** 2 / g2) - div_b, None
        f, div_f = divergence(lambda y, _t: encode(y, tt), state, 0.0, method=method, noise=noise,
                              create_graph=create_graph)
        with torch.no_grad():
            s = score(state, tt)
        return f, 0.5 * sum_event((f - b) ** 2 / g2) - div_b, div_f + 0.5 * sum_event(g2 * s**2)

    state = x if create_graph else x.detach()
    f, drift_h, entropy_h = integrands(state, t0)
    drift = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    entropy = torch.zeros_like(drift)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        dt = t_next - t
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        state = process.step(state, t, t_next, z, extra=f - process.drift(state, t))
        f_next, drift_next, entropy_next = integrands(state, torch.full_like(t0, t_next))
        drift = drift + 0.5 * dt * (drift_h + drift_next)
        if entropy_h is not None:
            entropy = entropy + 0.5 * dt * (entropy_h + entropy_next)
        f, drift_h, entropy_h = f_next, drift_next, entropy_next
    out = {"prior_nll": -process.prior_log_prob(state), "drift": drift}
    if score is not None:
        out["entropy"] = entropy
    return out if create_graph else {k: v.detach() for k, v in out.items()}


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


class SBFBSDE(BridgeSolver):
    """SB-FBSDE between data and the prior of ``process`` (generation) or between two data sets.

    ``process``: the reference, ``"vp"`` (default), ``"ve"``, ``"brownian"`` or a dict / process object as for
    :class:`~sbridge.SGM` (isotropic processes). ``mode``: ``"alternate"`` or ``"joint"`` (generation only).
    ``iterations``: alternating stages (each a backward then a forward phase of ``steps // (2 iterations)`` steps;
    ``joint`` runs ``steps`` steps of one phase). ``sim_steps``: Euler–Maruyama steps of the simulated paths;
    ``cache_size`` trajectories per cache, refreshed every ``cache_refresh`` steps; ``divergence``: ``"auto"``,
    ``"exact"`` or ``"hutchinson"``. ``warm_start``: the folder of an SGM run with the same process and network,
    whose score network initialises the backward policy.
    """

    method = "sbfbsde"
    fit_options = ("iterations", "cache_size", "cache_refresh")
    declared = BridgeSolver.declared.with_(path_bound=True)
    owns_reference = True  # its process may hold a fitted prior
    default_steps = 6000
    default_iterations = 3

    def __init__(self, dim: int | None = None, *, process: str | dict[str, Any] | LinearSDE = "vp",
                 mode: str = "alternate", sim_steps: int = 50, cache_size: int = 1000, cache_refresh: int = 250,
                 divergence: str = "auto", warm_start: str | None = None, **options: Any) -> None:
        self._process = make_process(process)
        if not self._process.isotropic:
            raise ConfigError("SB-FBSDE needs an isotropic reference (vp, ve, brownian or a scalar drift); "
                              f"got a {self._process.D.kind} drift matrix.")
        self.mode = check_choice(mode, ("alternate", "joint"), "mode")
        self.sim_steps = check_positive_int(sim_steps, "sim_steps")
        self.cache_size = check_positive_int(cache_size, "cache_size")
        self.cache_refresh = check_positive_int(cache_refresh, "cache_refresh")
        self.divergence = divergence if divergence == "auto" else check_choice(divergence, DIVERGENCE_METHODS,
                                                                              "divergence")
        self.warm_start = None if warm_start is None else str(warm_start)
        if "sigma" in options:
            raise ConfigError(f"{type(self).__name__} takes its noise from its reference process; instead of sigma "
                              "pass process={'name': 'brownian', 'sigma': ...} (or a vp / ve process).")
        super().__init__(dim, **options)
        self.reference.to(self.device)

    def set_option(self, key: str, value: Any) -> None:
        if key in ("cache_size", "cache_refresh"):
            value = check_positive_int(value, key)
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {"process": self.reference.config(), "mode": self.mode, "iterations": self.iterations,
                "sim_steps": self.sim_steps, "cache_size": self.cache_size, "cache_refresh": self.cache_refresh,
                "divergence": self.divergence, "warm_start": self.warm_start}

    def capabilities(self) -> Capabilities:
        """As a bridge's, with the path bound; joint training is for generation only and logs no iterations."""
        caps = super().capabilities()
        if self.mode != "joint":
            return caps
        return caps.with_(prior_data=False, plots=("samples", "trajectories"), diagnostics=())

    def _build_models(self) -> dict[str, nn.Module]:
        return {name: self.network(name, time_scale=1000.0 / self.reference.T) for name in self.model_names}

    # ---- the reference ------------------------------------------------------------------------------------------
    def _make_reference(self) -> LinearSDE:
        return self._process

    def _time_span(self) -> tuple[float, float]:
        return self.reference.t_min, self.reference.T

    def _diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        return self.reference.diffusion(torch.as_tensor(t, dtype=torch.float32, device=self.device))

    def _prior_draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return self.reference.prior_sample(shape, generator=generator, device=self.device)

    def _prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference.prior_log_prob(x)

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

    # ---- training --------------------------------------------------------------------------------------------------
    def before_fit(self, data: FitData) -> None:
        if self.mode == "joint" and not self.generative:
            raise ConfigError("joint SB-FBSDE training maximises the likelihood of a prior density, so it needs "
                              "generation (no prior data set); bridge two data sets with mode='alternate'.")
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
            raise ConfigError(f"the SGM run {run!r} has another process or network than this SB-FBSDE; train it "
                              "with the same --process and network options.")
        self.models["bwd"].load_state_dict(sgm.ema_models["score"].state_dict())
        self.ema_models["bwd"].load_state_dict(sgm.ema_models["score"].state_dict())

    def _sim_times(self) -> list[float]:
        """The simulation grid: ``sim_steps`` uniform steps across :meth:`_time_span` (a grid crowded near the data
        end leaves steps near ``T`` too long for Euler–Maruyama where a VP reference's ``beta`` is largest)."""
        t0, t1 = self._time_span()
        return time_grid(t0, t1, self.sim_steps)

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        if self.mode == "joint":
            return [Phase("joint", config.steps, self.path_bound(), data.source(), ("fwd", "bwd"))]
        def loss(direction: str, model: str) -> DriftMatching:
            trains = TRAINS[direction]
            drift = self.decode_drift if trains == "decoder" else self.encode_drift
            return DriftMatching(drift, self.reference.diffusion, trains, self.divergence)

        return self._alternating_phases(
            data, config, lambda n, direction: f"stage{n + 1}_{direction}", loss,
            lambda direction, data, gen, count: self._simulate_cache(TRAINS[direction], data, gen, count),
            self.sim_steps)

    def path_bound(self) -> PathBound:
        """The joint objective as a loss object (see :class:`PathBound`)."""
        return PathBound(self.encode_drift, self.decode_drift, self.reference, self._sim_times())

    @torch.no_grad()
    def _simulate_cache(self, trains: str, data: FitData, generator: torch.Generator,
                        count: int | None = None) -> dict[str, torch.Tensor]:
        """States of ``count`` paths of the frozen direction (EMA networks) at every grid time, with that direction's
        drift there: forward paths from the data to train the decoder, backward paths from the prior end (or the
        second data set) to train the encoder."""
        m = self.cache_size if count is None else count
        times = self._sim_times()
        start, c = self._cache_starts("backward" if trains == "decoder" else "forward", data, m, generator)
        if trains == "decoder":
            grid, field = times, (lambda y, t: self.encode_drift(self.ema_models, y, t, c))
        else:
            grid, field = times[::-1], (lambda y, t: self.decode_drift(self.ema_models, y, t, c))
        path, _ = euler_maruyama(field, self._diffusion, start, grid, generator=generator, return_path=True)
        xs, ts, others = [], [], []
        for x, t in zip(path, grid, strict=True):
            xs.append(x)
            ts.append(torch.full((m,), t, device=x.device))
            others.append(field(x, t))
        cache = {"x": torch.cat(xs), "t": torch.cat(ts), "other": torch.cat(others)}
        if c is not None:
            cache["cond"] = c.repeat(len(grid), *([1] * (c.ndim - 1)))
        return cache

    # ---- the bound ---------------------------------------------------------------------------------------------
    def elbo(self, x: Any, *, cond: Any = None, steps: int = 200, repeats: int = 1, divergence: str = "auto",
             seed: int = 0) -> torch.Tensor:
        """Path-space lower bound on the backward SDE's log-likelihood (nats, shape ``(n,)``; maths.md §1.4, §A.2):
        ``E[log pi(X_T)] - int (|Z + Z_hat|^2 / 2 + g div Z_hat - div f) dt`` along forward-SDE paths from ``x``
        (taken as ``X_{t_min}``) on ``steps`` steps (:func:`sbridge.numerics.likelihood.elbo_grid`), averaged over
        ``repeats`` paths (:func:`bound_along_paths`)."""
        self._require_generative("path_bound", "define a path-space likelihood bound")
        x = self._data(x, "points")
        c = self._bridge_condition(cond, x.shape[0])
        self.ema_models.eval()
        t0, t1 = self._time_span()
        times = elbo_grid(t0, t1, check_positive_int(steps, "steps"))
        gen = make_generator(check_seed(seed), self.device)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(check_positive_int(repeats, "repeats")):
            terms = bound_along_paths(lambda y, t: self.encode_drift(self.ema_models, y, t, c),
                                      lambda y, t: self.decode_drift(self.ema_models, y, t, c), self.reference, x,
                                      times, divergence_method=divergence, generator=gen)
            total -= terms["prior_nll"] + terms["drift"]
        return total / repeats
