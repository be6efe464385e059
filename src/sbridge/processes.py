"""Reference SDEs with closed-form Gaussian transition kernels.

Each process is a forward SDE ``dX = f(X, t) dt + g(t) dW`` on ``[0, T]`` (data at ``t = 0``, prior at ``t = T``)
whose conditional law given ``X_0`` is Gaussian and isotropic: ``X_t | X_0 ~ N(alpha(t) X_0, std(t)^2 I)``.
That closed form is what makes denoising score matching simulation-free (math.md §1.1, §D.1–D.2).

Time ``t`` is a float or a ``(batch,)`` tensor; per-sample scalars are broadcast over the trailing dimensions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from sbridge.errors import ConfigError
from sbridge.validation import check_choice, check_positive_float


def _as_time(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a tensor on ``like``'s device/dtype, shaped to broadcast against ``like`` (batch first)."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class Process(ABC):
    """A linear reference SDE with isotropic Gaussian marginals given ``X_0``."""

    name: str = ""
    T: float = 1.0
    #: Smallest time used in training and as the end point of sampling, where the score blows up as std -> 0.
    t_min: float = 1e-3

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The parameters that rebuild this process through :func:`make_process`."""

    @abstractmethod
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """``c(t)`` in the linear drift ``f(x, t) = c(t) x``."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)``: the diffusion coefficient."""

    @abstractmethod
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t) = int_0^t c(s) ds``: the log of the mean scaling of ``X_t | X_0``."""

    @abstractmethod
    def variance(self, t: torch.Tensor) -> torch.Tensor:
        """``Var(X_t | X_0)`` per coordinate: ``alpha(t)^2 int_0^t g(s)^2 / alpha(s)^2 ds``."""

    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior ``N(0, prior_std^2 I)`` used at ``t = T``."""

    # ---- derived quantities, shared by every process -------------------------------------------------------
    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Forward drift ``f(x, t) = c(t) x``."""
        return self.drift_coef(_as_time(t, x)) * x

    def g(self, t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``g(t)`` shaped to broadcast against ``like``."""
        return self.diffusion(_as_time(t, like))

    def std(self, t: float | torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """Standard deviation of ``X_t | X_0``."""
        t = _as_time(t, like) if like is not None else torch.as_tensor(t, dtype=torch.float32)
        return self.variance(t).sqrt()

    def marginal(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of ``X_t | X_0 = x0``: ``(alpha(t) x0, std(t))`` (std broadcastable)."""
        tt = _as_time(t, x0)
        return self.log_alpha(tt).exp() * x0, self.variance(tt).sqrt()

    def sample_marginal(self, x0: torch.Tensor, t: float | torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``X_t ~ N(alpha x0, std^2 I)``; returns ``(x_t, noise)`` with ``x_t = mean + std * noise``."""
        mean, std = self.marginal(x0, t)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + std * noise, noise

    def conditional_score(self, xt: torch.Tensor, x0: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_{t|0}(x | x0) = -(x - alpha x0) / std^2`` (the denoising score-matching target)."""
        mean, std = self.marginal(x0, t)
        return -(xt - mean) / std**2

    def prior_sample(self, n: int, dim: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``n`` points from the prior ``N(0, prior_std^2 I)``."""
        return self.prior_std() * torch.randn((n, dim), generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the prior at ``x`` (shape ``(batch,)``)."""
        s = self.prior_std()
        d = x[0].numel()
        return -0.5 * (x.flatten(1) ** 2).sum(1) / s**2 - d * math.log(s) - 0.5 * d * math.log(2 * math.pi)


class VP(Process):
    """Variance-preserving SDE: ``f = -beta(t) x / 2``, ``g = sqrt(beta(t))``, ``beta`` linear in t (Song et al. 2021).

    ``alpha(t) = exp(-int_0^t beta / 2)``, ``Var = 1 - alpha^2``; the prior is ``N(0, I)``.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        self.beta_min = check_positive_float(beta_min, "beta_min")
        self.beta_max = check_positive_float(beta_max, "beta_max")
        self.T = check_positive_float(T, "T")
        if self.beta_max < self.beta_min:
            raise ConfigError(f"beta_max ({beta_max}) must be at least beta_min ({beta_min}).")
        self.t_min = 1e-3 * self.T

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t).sqrt()

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        # int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / (2T)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def prior_std(self) -> float:
        return 1.0


class VE(Process):
    """Variance-exploding SDE: ``f = 0``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^(t/T)``,
    ``g = sigma(t) sqrt(2 log(sigma_max / sigma_min) / T)`` (Song et al. 2021).

    ``Var(X_t | X_0) = sigma(t)^2 - sigma_min^2`` exactly; the prior is ``N(0, sigma_max^2 I)``, which covers data
    whose spread is well below ``sigma_max``.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, T: float = 1.0) -> None:
        self.sigma_min = check_positive_float(sigma_min, "sigma_min")
        self.sigma_max = check_positive_float(sigma_max, "sigma_max")
        self.T = check_positive_float(T, "T")
        if self.sigma_max <= self.sigma_min:
            raise ConfigError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min}).")
        self.t_min = 1e-3 * self.T

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) ** 2 - self.sigma_min**2

    def prior_std(self) -> float:
        return self.sigma_max


class Brownian(Process):
    """Scaled Brownian motion ``dX = sigma dW``: ``Var(X_t | X_0) = sigma^2 t`` (sigma^2 is variance per unit time).

    Its "prior" is the law at ``T`` started from the origin, ``N(0, sigma^2 T I)``; it matches the true ``X_T`` only
    when ``sigma^2 T`` dwarfs the data spread. Bridges between two data sets (math.md §G) use it as the reference.
    """

    name = "brownian"

    def __init__(self, sigma: float = 1.0, T: float = 1.0) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        self.T = check_positive_float(T, "T")
        self.t_min = 1e-3 * self.T

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "T": self.T}

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma**2 * t

    def prior_std(self) -> float:
        return self.sigma * math.sqrt(self.T)


PROCESSES: dict[str, type[Process]] = {"vp": VP, "ve": VE, "brownian": Brownian}


def make_process(spec: str | dict[str, Any] | Process) -> Process:
    """Build a process from its name (``"vp"``, ``"ve"``, ``"brownian"``), a config dict, or return it unchanged."""
    if isinstance(spec, Process):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"process must be a name or a dict with a 'name' key, got {spec!r}.")
    params = dict(spec)
    name = check_choice(params.pop("name"), tuple(PROCESSES), "process")
    try:
        return PROCESSES[name](**params)
    except TypeError:
        raise ConfigError(f"invalid parameters {sorted(params)} for process {name!r}; "
                          f"see sbridge.processes.{PROCESSES[name].__name__}.") from None
