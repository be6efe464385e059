"""SB-FBSDE (Chen, Liu & Theodorou, ICLR 2022; maths.md §1.4): a Schrödinger bridge trained by likelihood.

A :class:`~sbridge.solvers.policy.PolicyBridge`: a forward policy ``Z`` and a backward policy ``Z_hat`` over a linear
reference ``dX = f dt + g dW``, sampled by the decode SDE or the probability flow ``dx/dt = f + g (Z - Z_hat) / 2``.

Training (``mode``):

* ``"alternate"`` (the paper's IPF-like scheme): iterations of (a) the backward policy on cached forward trajectories,
  ``E[|Z_hat|^2 / 2 + g div Z_hat + Z . Z_hat]``, then (b) the forward policy on cached backward trajectories,
  ``E[|Z|^2 / 2 + g div Z + Z_hat . Z]`` (Eq. 18-19). Both are :class:`DriftMatching`, the part of the path bound's
  integrand (:func:`~sbridge.numerics.likelihood.path_bound_terms`) that the trained network changes. Works between two
  data sets too.
* ``"joint"``: one phase on the whole negative likelihood bound, whose continuous form is ``-log pi(X_T) + int
  (|Z + Z_hat|^2 / 2 + g div Z_hat - div f) dt``, taken as the exact evidence bound of the discretised forward /
  backward pair along paths that carry gradients to both policies (:class:`PathBound`): a discretised integral
  would let the joint optimum exploit the step size.

The divergences (alternating losses, ``elbo``) are exact up to 16 coordinates and Hutchinson estimates beyond
(``divergence``).
"""

from __future__ import annotations

from typing import Any

import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_positive_int
from sbridge.numerics.integrators import euler_maruyama
from sbridge.solvers.base import FitData
from sbridge.solvers.bridge import Iterated
from sbridge.solvers.capabilities import Capabilities
from sbridge.solvers.policy import DriftMatching, PolicyBridge
from sbridge.training.trainer import Phase, TrainConfig

#: The network a phase of the alternation trains: the decoder in the backward phases, the encoder in the forward.
TRAINS = {"backward": "decoder", "forward": "encoder"}


class SBFBSDE(Iterated, PolicyBridge):
    """SB-FBSDE between data and the prior of ``process`` (generation) or between two data sets.

    ``mode``: ``"alternate"`` or ``"joint"`` (generation only). ``iterations``: alternating iterations (each a backward
    then a forward phase of ``steps // (2 iterations)`` steps; ``joint`` runs ``steps`` steps of one phase);
    ``cache_size`` trajectories per cache, refreshed every ``cache_refresh`` steps. ``process``, ``sim_steps``,
    ``divergence``, ``warm_start``: as for :class:`~sbridge.solvers.policy.PolicyBridge`.
    """

    method = "sbfbsde"
    fit_options = ("iterations", "cache_size", "cache_refresh")
    default_steps = 6000
    default_iterations = 3

    def __init__(self, dim: int | None = None, *, mode: str = "alternate", cache_size: int = 1000,
                 cache_refresh: int = 250, **options: Any) -> None:
        self.mode = check_choice(mode, ("alternate", "joint"), "mode")
        self.cache_size = check_positive_int(cache_size, "cache_size")
        self.cache_refresh = check_positive_int(cache_refresh, "cache_refresh")
        super().__init__(dim, **options)

    def set_option(self, key: str, value: Any) -> None:
        if key in ("cache_size", "cache_refresh"):
            value = check_positive_int(value, key)
        super().set_option(key, value)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "mode": self.mode, "cache_size": self.cache_size,
                "cache_refresh": self.cache_refresh}

    def capabilities(self) -> Capabilities:
        """As a bridge's, with the path bound; joint training is for generation only and logs no iterations."""
        caps = super().capabilities()
        if self.mode != "joint":
            return caps
        return caps.with_(prior_data=False, plots=("samples", "trajectories"), diagnostics=())

    # ---- training --------------------------------------------------------------------------------------------------
    def before_fit(self, data: FitData) -> None:
        if self.mode == "joint" and not self.generative:
            raise ConfigError("joint SB-FBSDE training maximises the likelihood of a prior density, so it needs "
                              "generation (no prior data set); bridge two data sets with mode='alternate'.")
        super().before_fit(data)

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        if self.mode == "joint":
            return [Phase("joint", config.steps, self.path_bound(), data.source(), ("fwd", "bwd"))]
        def loss(direction: str, model: str) -> DriftMatching:
            trains = TRAINS[direction]
            drift = self.decode_drift if trains == "decoder" else self.encode_drift
            return DriftMatching(drift, self.reference.diffusion, trains, self.divergence)

        return self._alternating_phases(
            data, config, lambda n, direction: f"iteration{n + 1}_{direction}", loss,
            lambda direction, data, gen, count: self._simulate_cache(TRAINS[direction], data, gen, count),
            self.sim_steps)

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

