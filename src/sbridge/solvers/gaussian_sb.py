"""The closed-form Schrödinger bridge between Gaussian fits of the two ends (math.md §G), as a solver.

``GaussianSB().fit(x0, prior=x1)`` estimates the means and covariances of both samples and uses the exact bridge
between ``N(a, A)`` and ``N(b, B)`` for the Brownian reference ``sigma W``: exact for Gaussian data (the oracle in
tests), and a cheap moment-matching baseline otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sbridge.gaussian import GaussianBridge
from sbridge.solvers.bridge import BridgeSolver


class _Moments(nn.Module):
    """Buffers holding the fitted means and covariances, so that save/load goes through safetensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for end in ("0", "1"):
            self.register_buffer(f"mean{end}", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer(f"cov{end}", torch.eye(dim, dtype=torch.float64))


class GaussianSB(BridgeSolver):
    """Exact Gaussian Schrödinger bridge fitted from sample moments. ``sigma``: reference noise (sigma^2 per unit
    time; POT's ``reg = 2 sigma^2``)."""

    method = "gaussian_sb"

    def __init__(self, dim: int, *, sigma: float = 1.0, seed: int = 0, device: str | torch.device = "auto") -> None:
        self._bridge: GaussianBridge | None = None
        super().__init__(dim, sigma=sigma, seed=seed, device=device)

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _build(self) -> nn.Module:
        return _Moments(self.dim)

    def fit(self, x: Any, prior: Any = None, *, out: str | Path | None = None, run_info: dict[str, Any] | None = None,
            **_: Any) -> GaussianSB:
        """Estimate ``(a, A)`` from ``x`` and ``(b, B)`` from ``prior`` (``N(0, I)`` exactly when ``prior`` is None)."""
        x0, x1 = self._endpoints(x, prior)
        for net in (self.net, self.ema_net):
            net.mean0.copy_(x0.double().mean(0))
            net.cov0.copy_(torch.cov(x0.double().T).reshape(self.dim, self.dim))
            if self.generative:
                net.mean1.zero_()
                net.cov1.copy_(torch.eye(self.dim, dtype=torch.float64))
            else:
                net.mean1.copy_(x1.double().mean(0))
                net.cov1.copy_(torch.cov(x1.double().T).reshape(self.dim, self.dim))
        self._bridge = None
        if out is not None:
            self._prepare_run_dir(Path(out), False, run_info)
            self.save(out)
        return self

    @property
    def bridge(self) -> GaussianBridge:
        """The closed-form bridge between the fitted moments (built on first use)."""
        if self._bridge is None:
            m = self.ema_net
            self._bridge = GaussianBridge(m.mean0.cpu(), m.cov0.cpu(), m.mean1.cpu(), m.cov1.cpu(), sigma=self.sigma)
        return self._bridge

    def forward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """``f(t, x) = (b - a) + S_t^T Sigma_t^{-1} (x - mu_t)`` (math.md §G.4)."""
        return self.bridge.drift(t, x.cpu().double()).to(x)

    def backward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Reverse-time drift ``sigma^2 grad log p_t - f`` (math.md §1.1, §G.4)."""
        return (-self.bridge.backward_drift(t, x.cpu().double())).to(x)
