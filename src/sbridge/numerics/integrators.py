"""Samplers: short, pure functions over drift / velocity callables (k-diffusion style), and their time grids.

* :func:`euler_maruyama` integrates an SDE ``dX = b(X, t) dt + g(t) dW`` along a time grid that may run forward or
  backward; the reverse-time SDE of maths.md §1.1 is integrated backward from ``T`` with ``b = f - g^2 score``.
* :func:`integrate_ode` integrates ``dx/dt = v(x, t)`` (the probability-flow ODE, ``v = f - g^2 score / 2``) with
  fixed-step Euler or Heun, or any adaptive solver of torchdiffeq.
* :func:`time_grid` (uniform in ``t``), :func:`edm_grid` (Karras et al. 2022) and :func:`logsnr_grid` (uniform in
  log-SNR) give the grids; :func:`make_grid` picks one by name.

Every sampler returns ``(x, nfe)``: the end state (or the whole path, shape ``(steps + 1, n, d)``, when
``return_path`` is true) and the number of drift/velocity evaluations, i.e. network evaluations.

The state may be a tensor or a tuple of tensors (an augmented state such as ``(x, logp)``); the field then receives
and returns a tuple of the same structure, every scheme updates the elements together, and a path stacks each element
separately. Sampling runs under :func:`torch.no_grad` unless ``grad=True``, which lets a loss be backpropagated
through the sampler (to the field's parameters or to the initial state).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_memory, check_positive_float, check_positive_int

#: A sampler state: one tensor, or a tuple of tensors integrated together (e.g. ``(x, logp)``).
State = torch.Tensor | tuple[torch.Tensor, ...]
#: A drift or velocity field ``(state, t) -> state-like`` (same structure as the state).
Field = Callable[[Any, float], Any]
#: ``callback(i, t, x)``: called after step ``i`` (0-based) with the time reached and the new state.
Callback = Callable[[int, float, Any], None]

FIXED_STEP_METHODS = ("euler", "heun")
ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
ODE_METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS
GRID_KINDS = ("uniform", "edm", "logsnr")

_MAX_BISECTIONS = 200  # a cap: float64 bisection on [t_min, T] reaches adjacent floats in ~60 halvings


class IsotropicProcess(Protocol):
    """What the noise-level grids need from a reference process (see :class:`sbridge.processes.linear.LinearSDE`)."""

    T: float
    t_min: float

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    def variance(self, t: torch.Tensor) -> torch.Tensor: ...


class CountedField:
    """Wrap a field ``(x, t) -> tensor`` (or tuple of tensors) and count its evaluations."""

    def __init__(self, fn: Field) -> None:
        self.fn = fn
        self.nfe = 0

    def __call__(self, x: Any, t: float) -> Any:
        self.nfe += 1
        return self.fn(x, t)


# ============================================================================================ time grids
def time_grid(t_start: float, t_end: float, steps: int) -> list[float]:
    """``steps + 1`` evenly spaced times from ``t_start`` to ``t_end`` (either order), with exact endpoints."""
    steps = check_positive_int(steps, "steps")
    check_memory((steps + 1) * 32, f"a time grid of {steps:,} steps", "ask for fewer steps (--steps)")
    return [t_start + (t_end - t_start) * i / steps for i in range(steps)] + [float(t_end)]


def log_noise_ratio(process: IsotropicProcess, t: float | torch.Tensor) -> torch.Tensor:
    """``log sigma(t)`` in float64, with ``sigma(t) = std(t) / alpha(t)`` the noise-to-signal std of an isotropic
    process (``sqrt(variance) / exp(log_alpha)``); increasing in ``t``, ``-inf`` where the variance is 0. The log-SNR
    is ``2 log(alpha / std) = -2 log sigma``."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    return 0.5 * torch.log(process.variance(tt)) - process.log_alpha(tt)


def _grid_endpoints(process: IsotropicProcess, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    t0 = float(process.T if t_start is None else t_start)
    t1 = float(process.t_min if t_end is None else t_end)
    for name, t in (("t_start", t0), ("t_end", t1)):
        if not (math.isfinite(t) and 0.0 <= t <= float(process.T)):
            raise ConfigError(f"{name} = {t!r} is outside the process's time interval [0, {process.T}]; pass a time "
                              "in that interval.")
    return t0, t1


def _invert_log_sigma(process: IsotropicProcess, targets: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Times ``t`` in ``[lo, hi]`` with ``log sigma(t) = targets``, by vectorised float64 bisection on the increasing
    function ``log sigma`` (run to float64 resolution: adjacent floats, far below 1e-10)."""
    lo_t = torch.full_like(targets, lo)
    hi_t = torch.full_like(targets, hi)
    for _ in range(_MAX_BISECTIONS):
        mid = 0.5 * (lo_t + hi_t)
        if not bool(((mid > lo_t) & (mid < hi_t)).any()):
            break
        above = log_noise_ratio(process, mid) > targets
        hi_t = torch.where(above, mid, hi_t)
        lo_t = torch.where(above, lo_t, mid)
    return 0.5 * (lo_t + hi_t)


def _grid_from_log_sigma(process: IsotropicProcess, t0: float, t1: float, targets: torch.Tensor) -> list[float]:
    """Map interior targets of ``log sigma`` back to times; endpoints ``t0``, ``t1`` are returned exactly."""
    if t0 == t1:
        return [t0] * (targets.numel() + 2)
    inner = _invert_log_sigma(process, targets, min(t0, t1), max(t0, t1))
    return [t0, *inner.tolist(), t1]


def edm_grid(process: IsotropicProcess, steps: int, *, rho: float = 7.0, t_start: float | None = None,
             t_end: float | None = None) -> list[float]:
    """``steps + 1`` times from ``t_start`` (default ``process.T``) to ``t_end`` (default ``process.t_min``) whose noise
    levels follow the EDM schedule of Karras et al. 2022 (Eq. 5):

        sigma_i = (sigma_0^(1/rho) + i / steps (sigma_N^(1/rho) - sigma_0^(1/rho)))^rho,

    uniform in ``sigma^(1/rho)`` between ``sigma(t_start)`` and ``sigma(t_end)``, where ``sigma(t) = std(t) / alpha(t)``
    is the noise-to-signal std of the isotropic process (:func:`log_noise_ratio`). ``rho = 7`` (EDM's default)
    concentrates the steps at low noise; ``rho = 1`` is uniform in ``sigma``. Each ``sigma_i`` is mapped back to its
    time by bisection on the monotone ``sigma(t)``; the endpoints are exact.
    """
    steps = check_positive_int(steps, "steps")
    rho = check_positive_float(rho, "rho")
    t0, t1 = _grid_endpoints(process, t_start, t_end)
    r0, r1 = (torch.exp(log_noise_ratio(process, t) / rho) for t in (t0, t1))
    frac = torch.arange(1, steps, dtype=torch.float64) / steps
    targets = rho * torch.log(r0 + frac * (r1 - r0))
    return _grid_from_log_sigma(process, t0, t1, targets)


def logsnr_grid(process: IsotropicProcess, steps: int, *, t_start: float | None = None,
                t_end: float | None = None) -> list[float]:
    """``steps + 1`` times from ``t_start`` (default ``process.T``) to ``t_end`` (default ``process.t_min``), uniform
    in the log signal-to-noise ratio ``lambda(t) = 2 log(alpha(t) / std(t))`` (the time variable of DPM-Solver,
    Lu et al. 2022, and of the variational-diffusion view, Kingma et al. 2021), mapped back to times by bisection
    on the monotone ``lambda(t)``; the endpoints are exact. Both endpoints need a positive variance (``t > 0``)."""
    steps = check_positive_int(steps, "steps")
    t0, t1 = _grid_endpoints(process, t_start, t_end)
    l0, l1 = log_noise_ratio(process, t0), log_noise_ratio(process, t1)
    if not (bool(torch.isfinite(l0)) and bool(torch.isfinite(l1))):
        raise ConfigError(f"the log-SNR is infinite at t_start = {t0} or t_end = {t1} (zero variance); start and end "
                          "the logsnr grid at positive times such as process.t_min.")
    frac = torch.arange(1, steps, dtype=torch.float64) / steps
    return _grid_from_log_sigma(process, t0, t1, l0 + frac * (l1 - l0))


def make_grid(kind: str, process: IsotropicProcess | None, steps: int, t_start: float | None = None,
              t_end: float | None = None, *, rho: float = 7.0) -> list[float]:
    """The time grid ``kind`` in :data:`GRID_KINDS` (``"uniform"``: :func:`time_grid`, ``"edm"``: :func:`edm_grid`,
    ``"logsnr"``: :func:`logsnr_grid`) of ``steps + 1`` times from ``t_start`` (default ``process.T``) to ``t_end``
    (default ``process.t_min``). ``process`` may be ``None`` for a uniform grid with both endpoints given."""
    check_choice(kind, GRID_KINDS, "time grid")
    if kind == "uniform":
        if process is None and (t_start is None or t_end is None):
            raise ConfigError("a uniform grid without a process needs both t_start and t_end; pass them or a process.")
        t0 = float(process.T if t_start is None else t_start)  # type: ignore[union-attr]
        t1 = float(process.t_min if t_end is None else t_end)  # type: ignore[union-attr]
        return time_grid(t0, t1, steps)
    if process is None:
        raise ConfigError(f"the {kind!r} grid is defined by a process's noise levels; pass the process.")
    if kind == "edm":
        return edm_grid(process, steps, rho=rho, t_start=t_start, t_end=t_end)
    return logsnr_grid(process, steps, t_start=t_start, t_end=t_end)


# ============================================================================================ state helpers
def _grad_context(grad: bool) -> contextlib.AbstractContextManager[Any]:
    """``torch.enable_grad()`` when ``grad`` (backpropagation through the sampler), else ``torch.no_grad()``."""
    return torch.enable_grad() if grad else torch.no_grad()


def _as_state(x: State | list[torch.Tensor]) -> State:
    return tuple(x) if isinstance(x, list) else x


def _check_structure(x: State, v: Any) -> None:
    if isinstance(x, tuple) and not (isinstance(v, (tuple, list)) and len(v) == len(x)):
        got = f"a tuple of {len(v)}" if isinstance(v, (tuple, list)) else type(v).__name__
        raise ConfigError(f"the state is a tuple of {len(x)} tensors but the field returned {got}; return a tuple "
                          "with one tensor per state element.")


def _step(x: State, v: Any, dt: float) -> State:
    """``x + v * dt`` elementwise over a tuple state."""
    _check_structure(x, v)
    if isinstance(x, tuple):
        return tuple(a + b * dt for a, b in zip(x, v, strict=True))
    return x + v * dt


def _heun_step(x: State, v: Any, v_next: Any, dt: float) -> State:
    """``x + dt / 2 (v + v_next)`` elementwise over a tuple state."""
    _check_structure(x, v_next)
    if isinstance(x, tuple):
        return tuple(a + 0.5 * dt * (b + c) for a, b, c in zip(x, v, v_next, strict=True))
    return x + 0.5 * dt * (v + v_next)


def _first(x: State) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def _stack(path: list[State]) -> State:
    if isinstance(path[0], tuple):
        return tuple(torch.stack([p[k] for p in path]) for k in range(len(path[0])))
    return torch.stack(path)  # type: ignore[arg-type]


def _index(out: State, i: int) -> State:
    return tuple(o[i] for o in out) if isinstance(out, tuple) else out[i]


# ============================================================================================ samplers
def euler_maruyama(drift: Field, diffusion: Callable[[float], float | torch.Tensor], x: State, times: Sequence[float],
                   *, generator: torch.Generator | None = None, return_path: bool = False,
                   noise_last_step: bool = False, callback: Callback | None = None,
                   grad: bool = False) -> tuple[State, int]:
    """Euler–Maruyama: ``x <- x + b(x, t) dt + g(t) sqrt(|dt|) z`` along ``times`` (dt < 0 runs backward in time).

    ``diffusion(t)`` returns ``g(t)`` as a float or a tensor broadcastable to ``x`` (or to its first element). The
    noise of the last step is dropped unless ``noise_last_step`` (the usual final denoising step of SGM samplers: the
    output is the mean of the last transition). For a tuple state ``(x, y, ...)`` the drift returns a tuple of the
    same structure, every element takes the drift step and only the first receives noise. ``callback(i, t, x)``
    runs after each step ``i`` with the time reached and the new state; ``grad=True`` keeps the autograd graph.
    """
    x = _as_state(x)
    field = CountedField(drift)
    with _grad_context(grad):
        path = [x] if return_path else None
        n_steps = len(times) - 1
        for i in range(n_steps):
            t, t_next = times[i], times[i + 1]
            dt = t_next - t
            x = _step(x, field(x, t), dt)
            if i < n_steps - 1 or noise_last_step:
                head = _first(x)
                z = torch.randn(head.shape, generator=generator, device=head.device, dtype=head.dtype)
                head = head + diffusion(t) * abs(dt) ** 0.5 * z
                x = (head, *x[1:]) if isinstance(x, tuple) else head
            if path is not None:
                path.append(x)
            if callback is not None:
                callback(i, t_next, x)
    return (_stack(path) if path is not None else x), field.nfe


def integrate_ode(velocity: Field, x: State, times: Sequence[float], *, method: str = "heun", rtol: float = 1e-5,
                  atol: float = 1e-5, return_path: bool = False, callback: Callback | None = None,
                  grad: bool = False) -> tuple[State, int]:
    """Integrate ``dx/dt = v(x, t)`` along ``times`` with ``method`` in :data:`ODE_METHODS`.

    Fixed-step methods use the grid; adaptive methods (torchdiffeq) choose their own steps to reach ``rtol``/``atol``
    and report the grid points only when ``return_path`` is true. For a tuple state (e.g. ``(x, logp)``) the velocity
    returns a tuple of the same structure and all elements are integrated together. ``callback(i, t, x)`` runs after
    each step ``i`` with the time reached and the new state (adaptive methods: at each grid time ``times[i + 1]``,
    once the solve is done); ``grad=True`` keeps the autograd graph (backpropagation through the solver's operations).
    """
    if method not in ODE_METHODS:
        raise ConfigError(f"unknown ODE method {method!r}; choose one of: {', '.join(ODE_METHODS)}.")
    x = _as_state(x)
    field = CountedField(velocity)
    with _grad_context(grad):
        if method in ADAPTIVE_METHODS:
            return _integrate_adaptive(field, x, times, method, rtol, atol, return_path, callback), field.nfe
        path = [x] if return_path else None
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            dt = t_next - t
            v = field(x, t)
            if method == "euler":
                x = _step(x, v, dt)
            else:  # Heun: trapezoidal corrector on an Euler predictor (2nd order, 2 NFE per step)
                x_pred = _step(x, v, dt)
                x = _heun_step(x, v, field(x_pred, t_next), dt)
            if path is not None:
                path.append(x)
            if callback is not None:
                callback(i, t_next, x)
    return (_stack(path) if path is not None else x), field.nfe


def _integrate_adaptive(field: CountedField, x: State, times: Sequence[float], method: str, rtol: float, atol: float,
                        return_path: bool, callback: Callback | None = None) -> State:
    from torchdiffeq import odeint

    grid = list(times) if (return_path or callback is not None) else [times[0], times[-1]]
    head = _first(x)
    t = torch.tensor(grid, dtype=torch.float64 if head.dtype == torch.float64 else torch.float32, device=head.device)

    def func(s: torch.Tensor, y: State) -> State:
        v = field(y, float(s))
        _check_structure(y, v)
        return tuple(v) if isinstance(y, tuple) else v

    # step_t forces a step to end exactly at the final time: the solver must not evaluate the field beyond it,
    # where a score model is undefined (e.g. t < 0).
    options: dict[str, Any] = {"step_t": t[-1:]}
    if torch.is_grad_enabled():
        # Differentiate the solver with its step sizes held fixed: the step-size controller sees detached errors,
        # so no gradient flows through the accepted step sizes (the field receives t as a float, so the graph would
        # otherwise hold dh/dtheta without the matching dv/dt); the gradient then matches a finite difference of the
        # output up to the solver tolerance.
        options["norm"] = _detached_norm
    out = odeint(func, x, t, method=method, rtol=rtol, atol=atol, options=options)
    if callback is not None:
        for i in range(1, len(grid)):
            callback(i - 1, float(grid[i]), _index(out, i))
    return out if return_path else _index(out, -1)


def _detached_norm(y: State) -> torch.Tensor:
    """torchdiffeq's default error norm (RMS; the max of the RMS over a tuple state) on detached tensors."""
    if isinstance(y, tuple):
        return torch.stack([v.detach().abs().pow(2).mean().sqrt() for v in y]).max()
    return y.detach().abs().pow(2).mean().sqrt()
