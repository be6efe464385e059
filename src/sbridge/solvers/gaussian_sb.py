"""The closed-form Schrödinger bridge between Gaussian fits of the two ends (maths.md §G), as a solver.

``GaussianSB().fit(x0, prior=x1)`` estimates the means and covariances of both samples and uses the exact bridge
between ``N(a, A)`` and ``N(b, B)`` for the Brownian reference ``sigma W``: exact for Gaussian data (the oracle in
tests), and a cheap moment-matching baseline otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sbridge.core.errors import ConfigError, DataError
from sbridge.processes.gaussian import GaussianBridge
from sbridge.solvers.bridge import BridgeSolver, BrownianReference
from sbridge.training import distributed, rundir
from sbridge.training.trainer import TrainConfig


class Moments(nn.Module):
    """Buffers holding the fitted means and covariances, so that save/load goes through safetensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for end in ("0", "1"):
            self.register_buffer(f"mean{end}", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer(f"cov{end}", torch.eye(dim, dtype=torch.float64))


class GaussianSB(BrownianReference, BridgeSolver):
    """Exact Gaussian Schrödinger bridge fitted from sample moments. ``sigma``: reference noise (sigma^2 per unit
    time; POT's ``reg = 2 sigma^2``). Vectors only: the covariances are full ``(d, d)`` matrices."""

    method = "gaussian_sb"
    model_names = ()  # no network: the fitted moments are its whole state
    fit_options = ()
    declared = BridgeSolver.declared.with_(cond_required=False, closed_form=True, latent_solver=False,
                                           plots=("samples", "trajectories"), diagnostics=())

    def __init__(self, dim: int | None = None, *, shape: tuple[int, ...] | None = None, sigma: float = 1.0,
                 seed: int = 0, device: str | torch.device = "auto", net: Any = None,
                 cond: dict[str, Any] | None = None) -> None:
        if cond is not None:
            raise ConfigError("GaussianSB is one closed-form bridge between two Gaussian fits and takes no condition; "
                              "fit one GaussianSB per condition, or use dsbm/dsb for a conditional bridge.")
        self._bridge: GaussianBridge | None = None
        super().__init__(dim, shape=shape, sigma=sigma, net=net, cond=cond, seed=seed, device=device)
        if len(self.event_shape) != 1:
            raise ConfigError(f"GaussianSB works on vectors (n, d); got event shape {self.event_shape}: flatten the "
                              "data first.")
        #: The fitted means ``mean0, mean1`` and covariances ``cov0, cov1`` (float64), saved with the run.
        self.moments = Moments(self.dim).to(self.device)

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"moments.{k}": v for k, v in self.moments.state_dict().items()}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            self.moments.load_state_dict({k.removeprefix("moments."): v for k, v in tensors.items()})
            self._bridge = None

    def fit(self, x: Any, prior: Any = None, *, out: str | Path | None = None, overwrite: bool = False,
            run_info: dict[str, Any] | None = None, **options: Any) -> GaussianSB:
        """Estimate ``(a, A)`` from ``x`` and ``(b, B)`` from ``prior`` (``N(0, I)`` exactly when ``prior`` is None).

        The fit is closed-form: training options are not used, and any other keyword is an error.
        """
        if options.pop("resume", False):
            raise ConfigError("GaussianSB is fitted in closed form and has nothing to resume; drop --resume.")
        ignored = set(TrainConfig.__dataclass_fields__) | {"callbacks", "evaluate"}
        unknown = sorted(set(options) - ignored)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for GaussianSB.fit; it takes the data, prior=, out=.")
        data = self._prepare(x, prior, None)
        for name, points in (("the training data", data.x0), ("the prior data", data.x1)):
            if points.shape[0] < 2:
                raise DataError(f"GaussianSB estimates a covariance from each data set and needs at least 2 points; "
                                f"{name} has {points.shape[0]}.")
        x0, x1 = data.x0.double(), data.x1.double()
        m = self.moments
        m.mean0.copy_(x0.mean(0))
        m.cov0.copy_(torch.cov(x0.T).reshape(self.dim, self.dim))
        if self.generative:
            m.mean1.zero_()
            m.cov1.copy_(torch.eye(self.dim, dtype=torch.float64))
        else:
            m.mean1.copy_(x1.mean(0))
            m.cov1.copy_(torch.cov(x1.T).reshape(self.dim, self.dim))
        self._bridge = None
        if out is not None and distributed.context().is_main:
            with rundir.locked(out):
                self._open_run_dir(Path(out), False, overwrite, run_info)
                self.write_config(out, run_info)
                self.save(out)
        return self

    @property
    def bridge(self) -> GaussianBridge:
        """The closed-form bridge between the fitted moments (built on first use)."""
        if self._bridge is None:
            m = self.moments
            self._bridge = GaussianBridge(m.mean0.cpu(), m.cov0.cpu(), m.mean1.cpu(), m.cov1.cpu(), sigma=self.sigma)
        return self._bridge

    def forward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``f(t, x) = (b - a) + S_t^T Sigma_t^{-1} (x - mu_t)`` (maths.md §G.4)."""
        return self.bridge.drift(x.cpu().double(), t).to(x)

    def backward_drift(self, x: torch.Tensor, t: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse-time drift ``sigma^2 grad log p_t - f`` (maths.md §1.1, §G.4)."""
        return self.bridge.backward_drift(x.cpu().double(), t).to(x)
