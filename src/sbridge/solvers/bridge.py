"""Shared machinery of the solvers that learn a bridge between two distributions on ``[0, 1]``.

A bridge has a forward drift (``x0 -> x1``, integrated in forward time) and a backward drift (``x1 -> x0``,
written in reverse time ``s = 1 - t``: ``dY_s = b(Y_s, 1 - s) ds + sigma dB_s``), both with the noise ``sigma`` of
the reference process (Brownian ``dX = sigma dW``, sigma^2 per unit time, maths.md §G.1). Nelson's relation
``f + b = sigma^2 grad log p_t`` gives the probability-flow velocity ``(f - b) / 2``, so bridges transport and
sample by SDE or ODE. ``transport`` pushes samples either way; ``sample`` draws the Gaussian prior and transports it
back to the data; ``log_prob`` integrates the ODE's divergence (generative bridges).

``fit(x0, prior=None)`` bridges data to ``N(0, I)`` (generation); ``fit(x0, prior=x1)`` bridges two data sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError, UnknownOptionError
from sbridge.core.seeds import (
    BRIDGE_PRIOR_OFFSET,
    BRIDGE_SAMPLE_OFFSET,
    CACHE_STREAM,
    MONITOR_STREAM,
    TRANSPORT_OFFSET,
    stream_seed,
)
from sbridge.core.validation import (
    check_choice,
    check_memory,
    check_positive_float,
    check_positive_int,
    check_sample_request,
    check_seed,
)
from sbridge.metrics import samples as metrics
from sbridge.nets.registry import mlp_shorthand
from sbridge.numerics.integrators import ODE_METHODS, euler_maruyama, integrate_ode, time_grid
from sbridge.processes.linear import Brownian, LinearSDE
from sbridge.solvers.base import FitData, Solver
from sbridge.solvers.capabilities import Capabilities
from sbridge.training.sources import RefreshingSource
from sbridge.training.trainer import Phase, TrainConfig, split_steps


class BridgeSolver(Solver):
    """Base of the bridge solvers. Subclasses implement :meth:`forward_drift`, :meth:`backward_drift`, ``phases``
    and :meth:`_make_reference` (the reference process, whose noise and prior the sampler reads); the options most
    bridges share come from :class:`BrownianReference` (``sigma``) and :class:`Iterated` (``iterations``)."""

    model_names = ("fwd", "bwd")
    fit_options: tuple[str, ...] = ()
    owns_reference = False  # rebuilt from the options and the fit's mode
    declared = Capabilities(sample=True, transport=True, prior_data=True, log_prob=True, cond_required=True,
                            samplers=("sde", "ode"), grids=("uniform",), latent_solver=True,
                            plots=("samples", "trajectories", "iterations"),
                            diagnostics=("iteration", "energy_x1", "energy_x0"))
    #: Points per side used to report the distance of each end to its target after every outer iteration.
    monitor_n = 1000

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, hidden: int | None = None,
                 depth: int | None = None, time_dim: int | None = None, net: Any = None,
                 cond: dict[str, Any] | None = None, seed: int = 0, device: str | torch.device = "auto",
                 **unknown: Any) -> None:
        if unknown:
            raise UnknownOptionError(type(self).__name__, sorted(unknown)[0])
        self.generative = True  # set by fit: False once fitted between two data sets
        super().__init__(dim, shape=shape, cond=cond, net=mlp_shorthand(net, hidden, depth, time_dim), seed=seed,
                         device=device)

    def options(self) -> dict[str, Any]:
        return {}

    @property
    def reference(self) -> LinearSDE:
        """The reference process (built once per value of ``generative``)."""
        if getattr(self, "_reference_for", None) != self.generative:
            self._reference, self._reference_for = self._make_reference().to(self.device), self.generative
        return self._reference

    def _make_reference(self) -> LinearSDE:
        raise NotImplementedError

    def capabilities(self) -> Capabilities:
        """As declared while generative; once fitted between two data sets it transports between them and has no
        prior to sample from or to measure likelihoods against."""
        caps = super().capabilities()
        if self.generative:
            return caps
        return caps.with_(sample=False, log_prob=False, path_bound=False, two_sets=True,
                          plots=(*caps.plots, "transport"))

    # ---- drifts ------------------------------------------------------------------------------------------------
    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Drift of the forward SDE ``dX = f(X, t) dt + sigma dW`` (x0 -> x1)."""
        return self.ema_models["fwd"](x, t, cond)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Drift ``b(x, t)`` of the backward SDE in reverse time: ``Y_{s+ds} = Y_s + b(Y_s, 1 - s) ds + sigma dB``."""
        return self.ema_models["bwd"](x, t, cond)

    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Probability-flow velocity ``(f - b) / 2``: Nelson's ``f + b = sigma^2 grad log p_t`` in
        ``f - sigma^2 grad log p_t / 2`` (maths.md §1.1)."""
        return 0.5 * (self.forward_drift(x, t, cond) - self.backward_drift(x, t, cond))

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _prepare(self, x: Any, prior: Any, cond: Any) -> FitData:
        x0 = self._data(x)
        c = self._condition(cond, x0.shape[0])
        if prior is None:
            self.generative = True
            gen = make_generator(self.seed + BRIDGE_PRIOR_OFFSET, self.device)
            x1 = self._prior_draw(tuple(x0.shape), gen)
        else:
            if c is not None:
                raise ConfigError("conditional bridges between two data sets are not supported yet (the second set "
                                  "would need its own conditions); fit a conditional bridge from data to noise "
                                  "(prior=None) or drop cond.")
            self.generative = False
            x1 = self._data(prior, "prior data")
        return FitData(x0, x1, cond=c)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "generative": self.generative}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "auto", net: Any = None) -> Solver:
        solver = super().from_config(cfg, device=device, net=net)
        solver.generative = cfg.get("generative", True)
        return solver

    # ---- transport and sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def transport(self, x: Any, *, steps: int | None = None, reverse: bool = False, ode: bool = False,
                  method: str = "heun", cond: Any = None, return_path: bool = False,
                  seed: int | None = None) -> torch.Tensor:
        """Push samples of one end to the other: ``x0 -> x1`` forward, or ``x1 -> x0`` with ``reverse=True``, by
        Euler–Maruyama (``steps`` steps, 100 by default, noise kept at every step) or, with ``ode=True``, the
        probability-flow ODE (``method``: euler, heun or an adaptive torchdiffeq solver). ``cond``: the condition of
        each point (or one for all) for a conditional bridge. Returns ``(n, *event_shape)`` or the path
        ``(steps + 1, n, ...)``; ``self.last_nfe`` holds the network evaluations."""
        x = self._data(x, "points to transport")
        c = self._bridge_condition(cond, x.shape[0])
        gen = make_generator(self.seed + TRANSPORT_OFFSET if seed is None else seed, self.device)
        self.ema_models.eval()
        times = self._grid(steps, reverse)
        if ode:
            check_choice(method, ODE_METHODS, "ODE method")
            out, nfe = integrate_ode(lambda y, t: self.velocity(y, t, c), x, times, method=method,
                                     return_path=return_path)
            self.last_nfe = 2 * nfe
            return out
        drift = (lambda y, t: -self.backward_drift(y, t, c)) if reverse else (lambda y, t: self.forward_drift(y, t, c))
        out, nfe = euler_maruyama(drift, self._diffusion, x, times, generator=gen, return_path=return_path,
                                  noise_last_step=True)
        self.last_nfe = nfe
        return out

    def _bridge_condition(self, cond: Any, n: int) -> torch.Tensor | None:
        """Conditions for ``n`` points; a conditional bridge has no "no condition" mode, so ``cond`` is required."""
        return self._condition(None, n) if cond is None else self._sampling_condition(cond, n)

    def _grid(self, steps: int | None, reverse: bool) -> list[float]:
        """Times of the integration grid: ``steps`` (default 100) uniform steps across :meth:`_time_span` (reversed
        for ``reverse``)."""
        steps = 100 if steps is None else check_positive_int(steps, "steps")
        t0, t1 = self._time_span()
        return time_grid(t1, t0, steps) if reverse else time_grid(t0, t1, steps)

    # ---- what the sampler reads from the reference ------------------------------------------------------------
    def _time_span(self) -> tuple[float, float]:
        """The times of the data end and of the prior (or second data set) end: ``[0, T]`` of the reference."""
        return 0.0, self.reference.T

    def _diffusion(self, t: float) -> float | torch.Tensor:
        """``g(t)``, the noise of the reference (:meth:`LinearSDE.diffusion_at`)."""
        return self.reference.diffusion_at(t, self.device)

    def _prior_draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Draw the prior of a generative bridge: the reference's."""
        return self.reference.prior_sample(shape, generator=generator, device=self.device)

    def _prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the reference's prior, shape ``(batch,)``."""
        return self.reference.prior_log_prob(x)

    def _require_generative(self, ability: str = "sample", what: str = "draw samples from noise") -> None:
        self._require(ability, what, "it was fitted between two data sets, so it has no prior; use "
                      "transport(x1, reverse=True) on points of the second data set")

    @torch.no_grad()
    def sample(self, n: int, *, steps: int | None = None, ode: bool = False, method: str = "heun",
               cond: Any = None, guidance: float = 0.0, return_path: bool = False,
               seed: int | None = None) -> torch.Tensor:
        """Draw ``n`` points of the data end: the reference's prior transported backward (generative bridges);
        ``cond``: one condition per sample, or one for all, for a conditional bridge (no bridge declares
        classifier-free guidance: a nonzero ``guidance`` raises)."""
        self._require_generative()
        self.check_guidance(guidance)
        gen = make_generator(self.seed + BRIDGE_SAMPLE_OFFSET if seed is None else check_seed(seed), self.device)
        n = check_positive_int(n, "n")
        check_sample_request(n, 100 if steps is None else check_positive_int(steps, "steps"), self.event_shape,
                             return_path)
        z = self._prior_draw((n, *self.event_shape), gen)
        # the transport noise needs its own stream: reusing ``seed`` would make its first increment equal ``z``
        noise_seed = None if seed is None else seed + TRANSPORT_OFFSET
        return self.transport(z, steps=steps, reverse=True, ode=ode, method=method, cond=cond,
                              return_path=return_path, seed=noise_seed)

    def log_prob(self, x: Any, *, cond: Any = None, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 divergence: str = "auto", seed: int = 0) -> torch.Tensor:
        """Exact log-likelihood (nats) of data points under the bridge's probability-flow ODE, integrated across
        :meth:`_time_span` against the reference's prior (generative bridges only); shape
        ``(n,)``."""
        from sbridge.numerics.likelihood import log_prob_ode

        self._require_generative("log_prob", "give exact likelihoods")
        x = self._data(x, "points")
        c = self._bridge_condition(cond, x.shape[0])
        self.ema_models.eval()
        t0, t1 = self._time_span()
        logp, self.last_nfe = log_prob_ode(lambda y, t: self.velocity(y, t, c), x, t0=t0, t1=t1,
                                           prior_log_prob=self._prior_log_prob, method=method, rtol=rtol,
                                           atol=atol, divergence=divergence, seed=seed, return_nfe=True)
        return logp

    # ---- alternating fits on trajectory caches (DSB, SB-FBSDE) -------------------------------------------------
    def _alternating_phases(self, data: FitData, config: TrainConfig, name: Callable[[int, str], str],
                            loss: Callable[[str, str], Any],
                            simulate: Callable[[str, FitData, torch.Generator, int], dict[str, torch.Tensor]],
                            monitor_steps: int) -> list[Phase]:
        """IPF's alternation (maths.md §D.3): per outer iteration a ``"backward"`` then a ``"forward"`` phase of
        ``steps // (2 iterations)`` steps, each training one network (``bwd``, then ``fwd``) with ``loss(direction,
        model)`` on a cache of ``cache_size`` trajectories of the frozen other direction, ``simulate(direction,
        data, generator, count)``, rebuilt every ``cache_refresh`` steps from the stream ``(CACHE_STREAM, iteration,
        half)``; each forward phase ends with the marginal errors of :meth:`_monitor`."""
        per_half = split_steps(config.steps, 2 * self.iterations, "2 x iterations")
        phases = []
        for n in range(self.iterations):
            for half, direction in enumerate(("backward", "forward")):
                model = "bwd" if direction == "backward" else "fwd"
                # built lazily at its first batch, i.e. when the phase starts and the other direction is final
                source = RefreshingSource(lambda gen, count, direction=direction: simulate(direction, data, gen, count),
                                          self.cache_size, self.cache_refresh,
                                          stream_seed(self.seed, CACHE_STREAM, n, half), self.device)
                on_end = (lambda n=n: self._monitor(n + 1, data, monitor_steps)) if direction == "forward" else None
                phases.append(Phase(name(n, direction), per_half, loss(direction, model), source=source, train=(model,),
                                    on_end=on_end))
        return phases

    def _cache_starts(self, direction: str, data: FitData, count: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Where a cache's trajectories start, with their conditions: ``count`` data points drawn with replacement
        for forward paths (``"backward"`` phases train on them), else points of the second data set, or draws of
        the prior for a generative bridge."""
        ends = data.x0 if direction == "backward" else data.x1
        idx = torch.randint(ends.shape[0], (count,), generator=generator, device=ends.device)
        start, c = ends[idx], None if data.cond is None else data.cond[idx]
        if direction == "forward" and self.generative:
            start = self._prior_draw(tuple(start.shape), generator)
        return start, c

    # ---- monitoring --------------------------------------------------------------------------------------------
    def _monitor(self, iteration: int, data: FitData, steps: int) -> dict[str, Any]:
        """Energy distance of each transported end to its target on ``monitor_n`` points (maths.md §D.5: IPF's
        marginal errors should shrink with the iterations)."""
        x0, x1 = data.x0, data.x1
        n = min(self.monitor_n, x0.shape[0], x1.shape[0])
        c = None if data.cond is None else data.cond[:n]
        result: dict[str, Any] = {"iteration": iteration}
        if "fwd" in self.trained_directions:
            to_x1 = self.transport(x0[:n], steps=steps, cond=c,
                                   seed=stream_seed(self.seed, MONITOR_STREAM, iteration, 0))
            result["energy_x1"] = metrics.energy_distance(to_x1.flatten(1).cpu(), x1[-n:].flatten(1).cpu())
        if "bwd" in self.trained_directions:
            to_x0 = self.transport(x1[:n], steps=steps, reverse=True, cond=c,
                                   seed=stream_seed(self.seed, MONITOR_STREAM, iteration, 1))
            result["energy_x0"] = metrics.energy_distance(to_x0.flatten(1).cpu(), x0[-n:].flatten(1).cpu())
        return result

    @property
    def trained_directions(self) -> tuple[str, ...]:
        """The directions a fit trains, ``"fwd"`` (x0 -> x1) and ``"bwd"``: both, for most bridges."""
        return ("fwd", "bwd")


class BrownianReference:
    """Mixin of the bridges over Brownian motion ``sigma W`` on ``[0, 1]`` (maths.md §G.1): the option ``sigma``
    and the reference, with the prior ``N(0, I)`` of a generative fit (:meth:`_generative_reference` may replace
    it, e.g. DSB's Ornstein–Uhlenbeck)."""

    def __init__(self, *args: Any, sigma: float = 1.0, **options: Any) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        super().__init__(*args, **options)

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma, **super().options()}

    def _make_reference(self) -> LinearSDE:
        return self._generative_reference() if self.generative else Brownian(self.sigma, T=1.0, prior="marginal")

    def _generative_reference(self) -> LinearSDE:
        """Brownian motion toward the prior ``N(0, I)``."""
        return Brownian(self.sigma, T=1.0, prior=1.0)


class Iterated:
    """Mixin of the solvers trained in outer iterations (IPF, IMF, SB-FBSDE's alternation): the option ``iterations``,
    which ``fit`` may also set (``default_iterations`` when not given)."""

    fit_options = ("iterations",)
    default_iterations = 6

    def __init__(self, *args: Any, iterations: int | None = None, **options: Any) -> None:
        self.set_option("iterations", self.default_iterations if iterations is None else iterations)
        super().__init__(*args, **options)

    def set_option(self, key: str, value: Any) -> None:
        if key == "iterations":
            value = check_positive_int(value, "iterations")
            check_memory(5000 * value, f"{value:,} outer iterations", "choose fewer --iterations")
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "iterations": self.iterations}
