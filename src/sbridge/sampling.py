"""Samplers: short, pure functions over drift / velocity callables (k-diffusion style).

* :func:`euler_maruyama` integrates an SDE ``dX = b(X, t) dt + g(t) dW`` along a time grid that may run forward or
  backward; the reverse-time SDE of math.md §1.1 is integrated backward from ``T`` with ``b = f - g^2 score``.
* :func:`integrate_ode` integrates ``dx/dt = v(x, t)`` (the probability-flow ODE, ``v = f - g^2 score / 2``) with
  fixed-step Euler or Heun, or any adaptive solver of torchdiffeq.

Every function returns ``(x, nfe)``: the end state (or the whole path, shape ``(steps + 1, n, d)``, when
``return_path`` is true) and the number of drift/velocity evaluations, i.e. network evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sbridge.errors import ConfigError
from sbridge.validation import check_positive_int

Field = Callable[[torch.Tensor, float], torch.Tensor]

FIXED_STEP_METHODS = ("euler", "heun")
ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
ODE_METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS


class CountedField:
    """Wrap a field ``(x, t) -> tensor`` and count its evaluations."""

    def __init__(self, fn: Field) -> None:
        self.fn = fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        return self.fn(x, t)


def time_grid(t_start: float, t_end: float, steps: int) -> list[float]:
    """``steps + 1`` evenly spaced times from ``t_start`` to ``t_end`` (either order)."""
    steps = check_positive_int(steps, "steps")
    return [t_start + (t_end - t_start) * i / steps for i in range(steps + 1)]


@torch.no_grad()
def euler_maruyama(drift: Field, diffusion: Callable[[float], float], x: torch.Tensor, times: list[float], *,
                   generator: torch.Generator | None = None, return_path: bool = False,
                   noise_last_step: bool = False) -> tuple[torch.Tensor, int]:
    """Euler–Maruyama: ``x <- x + b(x, t) dt + g(t) sqrt(|dt|) z`` along ``times`` (dt < 0 runs backward in time).

    The noise of the last step is dropped unless ``noise_last_step`` (the usual final denoising step of SGM
    samplers: the output is the mean of the last transition).
    """
    field = CountedField(drift)
    path = [x] if return_path else None
    n_steps = len(times) - 1
    for i in range(n_steps):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t
        x = x + field(x, t) * dt
        if i < n_steps - 1 or noise_last_step:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + diffusion(t) * abs(dt) ** 0.5 * z
        if path is not None:
            path.append(x)
    return (torch.stack(path) if path is not None else x), field.nfe


@torch.no_grad()
def integrate_ode(velocity: Field, x: torch.Tensor, times: list[float], *, method: str = "heun",
                  rtol: float = 1e-5, atol: float = 1e-5, return_path: bool = False) -> tuple[torch.Tensor, int]:
    """Integrate ``dx/dt = v(x, t)`` along ``times`` with ``method`` in :data:`ODE_METHODS`.

    Fixed-step methods use the grid; adaptive methods (torchdiffeq) choose their own steps to reach ``rtol``/``atol``
    and report the grid points only when ``return_path`` is true.
    """
    if method not in ODE_METHODS:
        raise ConfigError(f"unknown ODE method {method!r}; choose one of: {', '.join(ODE_METHODS)}.")
    field = CountedField(velocity)
    if method in ADAPTIVE_METHODS:
        return _integrate_adaptive(field, x, times, method, rtol, atol, return_path), field.nfe
    path = [x] if return_path else None
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        dt = t_next - t
        v = field(x, t)
        if method == "euler":
            x = x + v * dt
        else:  # Heun: trapezoidal corrector on an Euler predictor (2nd order, 2 NFE per step)
            x_pred = x + v * dt
            x = x + 0.5 * dt * (v + field(x_pred, t_next))
        if path is not None:
            path.append(x)
    return (torch.stack(path) if path is not None else x), field.nfe


def _integrate_adaptive(field: CountedField, x: torch.Tensor, times: list[float], method: str, rtol: float,
                        atol: float, return_path: bool) -> torch.Tensor:
    from torchdiffeq import odeint

    grid = times if return_path else [times[0], times[-1]]
    t = torch.tensor(grid, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    # step_t forces a step to end exactly at the final time: the solver must not evaluate the field beyond it,
    # where a score model is undefined (e.g. t < 0).
    out = odeint(lambda s, y: field(y, float(s)), x, t, method=method, rtol=rtol, atol=atol,
                 options={"step_t": t[-1:]})
    return out if return_path else out[-1]
