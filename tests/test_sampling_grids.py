"""Tests for the time grids of sbridge.numerics.integrators (uniform, EDM, log-SNR) and the sampler options: callbacks,
backpropagation through the sampler (grad=True), tuple (augmented) states and tensor-valued diffusions.

Everything is deterministic (float64, fixed seeds or quantile points): the grids are checked against their defining
property (uniform spacing in sigma^(1/rho) or in log-SNR), the samplers against exact flows, finite differences and
separately computed integrals.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbridge.core.errors import ConfigError
from sbridge.numerics.integrators import (
    GRID_KINDS,
    edm_grid,
    euler_maruyama,
    integrate_ode,
    log_noise_ratio,
    logsnr_grid,
    make_grid,
    time_grid,
)
from sbridge.processes.linear import VE, VP

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
PROCESSES = {"vp": VP, "ve": VE}


def tensor(times: list[float]) -> torch.Tensor:
    return torch.tensor(times, dtype=F64)


def assert_grid_shape(times: list[float], t_start: float, t_end: float, steps: int) -> None:
    """steps + 1 Python floats, exact endpoints, strictly monotone from t_start to t_end."""
    assert len(times) == steps + 1
    assert all(isinstance(t, float) for t in times)
    assert times[0] == t_start and times[-1] == t_end
    gaps = tensor(times).diff()
    assert bool((gaps < 0).all()) if t_end < t_start else bool((gaps > 0).all())


def assert_uniform(values: torch.Tensor, atol: float = 1e-8) -> None:
    """``values`` are evenly spaced from their first to their last entry, to ``atol``."""
    n = values.numel() - 1
    expected = values[0] + (values[-1] - values[0]) * torch.arange(n + 1, dtype=F64) / n
    torch.testing.assert_close(values, expected, rtol=0.0, atol=atol)


# ---------------------------------------------------------------- grids


ENDPOINTS = [(None, None), ("t_min", "T"), (0.9, 0.05), (0.02, 0.6)]


def resolve(process, t: float | str | None) -> float | None:
    return getattr(process, t) if isinstance(t, str) else t


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("steps", [1, 2, 10, 37])
@pytest.mark.parametrize("rho", [7.0, 3.0, 1.0])
@pytest.mark.parametrize("ends", ENDPOINTS)
def test_edm_grid_is_uniform_in_sigma_to_the_one_over_rho(name: str, steps: int, rho: float, ends) -> None:
    process = PROCESSES[name]()
    t_start, t_end = (resolve(process, t) for t in ends)
    times = edm_grid(process, steps, rho=rho, t_start=t_start, t_end=t_end)
    assert_grid_shape(times, process.T if t_start is None else t_start,
                      process.t_min if t_end is None else t_end, steps)
    assert_uniform(torch.exp(log_noise_ratio(process, tensor(times)) / rho))
    assert make_grid("edm", process, steps, t_start, t_end, rho=rho) == times


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("steps", [1, 2, 10, 37])
@pytest.mark.parametrize("ends", ENDPOINTS)
def test_logsnr_grid_is_uniform_in_log_snr(name: str, steps: int, ends) -> None:
    process = PROCESSES[name]()
    t_start, t_end = (resolve(process, t) for t in ends)
    times = logsnr_grid(process, steps, t_start=t_start, t_end=t_end)
    assert_grid_shape(times, process.T if t_start is None else t_start,
                      process.t_min if t_end is None else t_end, steps)
    t = tensor(times)
    log_snr = 2 * (process.log_alpha(t) - 0.5 * torch.log(process.variance(t)))  # 2 log(alpha / std), from scratch
    assert_uniform(log_snr)
    assert make_grid("logsnr", process, steps, t_start, t_end) == times


@pytest.mark.parametrize("name", PROCESSES)
def test_noise_ratio_is_std_over_alpha(name: str) -> None:
    process = PROCESSES[name]()
    t = torch.linspace(process.t_min, process.T, 50, dtype=F64)
    sigma = process.variance(t).sqrt() / process.log_alpha(t).exp()
    torch.testing.assert_close(log_noise_ratio(process, t).exp(), sigma, rtol=1e-12, atol=0.0)


def test_make_grid_uniform_defaults_to_the_process_interval() -> None:
    process = VP()
    assert make_grid("uniform", process, 8) == time_grid(process.T, process.t_min, 8)
    assert make_grid("uniform", None, 4, 0.0, 1.0) == time_grid(0.0, 1.0, 4)
    assert_grid_shape(make_grid("uniform", process, 8), process.T, process.t_min, 8)


def test_edm_grid_may_end_at_zero_noise_but_logsnr_grid_may_not() -> None:
    # sigma(0) = 0 for VE (zero variance at t = 0): sigma^(1/rho) = 0 is a valid end point, log-SNR = +inf is not.
    process = VE()
    times = edm_grid(process, 6, t_end=0.0)
    assert_grid_shape(times, process.T, 0.0, 6)
    assert_uniform(torch.exp(log_noise_ratio(process, tensor(times)) / 7.0))
    with pytest.raises(ConfigError, match="log-SNR"):
        logsnr_grid(process, 6, t_end=0.0)


@pytest.mark.parametrize("kind", ["karras", "Uniform", "", "linear"])
def test_unknown_grid_kind_raises_a_config_error_listing_the_choices(kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_grid(kind, VP(), 10)
    message = str(info.value)
    assert all(k in message for k in GRID_KINDS)
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


@pytest.mark.parametrize("call", [
    lambda p: edm_grid(p, 0), lambda p: logsnr_grid(p, -1), lambda p: edm_grid(p, 5, rho=0.0),
    lambda p: edm_grid(p, 5, t_start=2.0), lambda p: logsnr_grid(p, 5, t_end=-0.1),
])
def test_grid_arguments_are_validated(call) -> None:
    with pytest.raises(ConfigError):
        call(VP())


# ---------------------------------------------------------------- a better grid helps


class Gaussian1D:
    """Data N(m, s^2) under VP: exact probability-flow velocity and exact flow map (affine, quantile to quantile)."""

    def __init__(self, m: float, s: float) -> None:
        self.proc, self.m, self.s = VP(), m, s

    def alpha(self, t: float) -> float:
        return math.exp(float(self.proc.log_alpha(torch.tensor(t, dtype=F64))))

    def V(self, t: float) -> float:
        return self.alpha(t) ** 2 * self.s**2 + float(self.proc.variance(torch.tensor(t, dtype=F64)))

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        score = -(x - self.alpha(t) * self.m) / self.V(t)
        return self.proc.drift(x, t) - 0.5 * self.proc.g(t, x) ** 2 * score

    def flow(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """x_to = m_to + (s_to / s_from) (x_from - m_from), the exact PF-ODE map between the Gaussian marginals."""
        return self.alpha(t_to) * self.m + math.sqrt(self.V(t_to) / self.V(t_from)) * (x - self.alpha(t_from) * self.m)

    def euler_error(self, kind: str, steps: int) -> float:
        """W2 distance between the law of Euler's output and the exact push-forward, sqrt(dmean^2 + dstd^2), from
        2001 fixed normal quantiles as prior points (the Euler map is affine too, so this is deterministic)."""
        n = 2001
        x = torch.special.ndtri((torch.arange(n, dtype=F64) + 0.5) / n).unsqueeze(1)
        T, t_min = self.proc.T, self.proc.t_min
        out, _ = integrate_ode(self.velocity, x, make_grid(kind, self.proc, steps), method="euler")
        exact = self.flow(x, T, t_min)
        return math.hypot(float(out.mean() - exact.mean()), float(out.std() - exact.std()))


def test_edm_grid_beats_the_uniform_grid_for_euler_on_the_probability_flow() -> None:
    # N(2, 0.5^2), 10 Euler steps. Measured W2 errors: uniform 5.80e-2, edm 4.98e-2 (ratio 1.16), logsnr 7.39e-2
    # (ratio 0.78: worse). The gain is modest here because with s = 0.5 the flow does its work at moderate noise
    # (t in 0.1..0.5), not at the low noise where the EDM grid puts its steps; EDM's smaller error is a much smaller
    # mean error (2.6e-3 vs 5.6e-2) against a larger std error (5.0e-2 vs 1.3e-2).
    g = Gaussian1D(2.0, 0.5)
    uniform, edm = g.euler_error("uniform", 10), g.euler_error("edm", 10)
    assert uniform / edm > 1.1, (uniform, edm)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_noise_level_grids_beat_the_uniform_grid_on_sharp_data(steps: int) -> None:
    # N(2, 0.1^2): the flow is stiff at low noise, where both grids concentrate their steps. Measured ratios
    # uniform / edm = 3.9, 2.3, 2.2 and uniform / logsnr = 3.1, 3.3, 3.3 for 5, 10, 20 steps.
    g = Gaussian1D(2.0, 0.1)
    uniform = g.euler_error("uniform", steps)
    assert uniform / g.euler_error("edm", steps) > 2.0
    assert uniform / g.euler_error("logsnr", steps) > 2.5


# ---------------------------------------------------------------- callback


def linear_field(x: torch.Tensor, t: float) -> torch.Tensor:
    return -x * (1.0 + t)


@pytest.mark.parametrize("method", ["em", "euler", "heun", "dopri5"])
def test_callback_sees_every_step_with_the_grid_times_and_the_final_state(method: str) -> None:
    steps = 7
    times = edm_grid(VP(), steps)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    seen: list[tuple[int, float, torch.Tensor]] = []

    def callback(i: int, t: float, x: torch.Tensor) -> None:
        seen.append((i, t, x.clone()))

    if method == "em":
        out, _ = euler_maruyama(linear_field, lambda t: 0.3, x0, times, generator=torch.Generator().manual_seed(1),
                                callback=callback)
        path, _ = euler_maruyama(linear_field, lambda t: 0.3, x0, times, generator=torch.Generator().manual_seed(1),
                                 return_path=True)
    else:
        out, _ = integrate_ode(linear_field, x0, times, method=method, callback=callback)
        path, _ = integrate_ode(linear_field, x0, times, method=method, return_path=True)
    assert [i for i, _, _ in seen] == list(range(steps))
    assert [t for _, t, _ in seen] == times[1:]
    assert torch.equal(seen[-1][2], out)
    for k, (_, _, x) in enumerate(seen):  # the state after step k is the path's point k + 1
        torch.testing.assert_close(x, path[k + 1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- grad


class Field(torch.nn.Module):
    """v(x, t) = -theta x + c sin(x) t (nonlinear, two parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return -self.theta * x + self.c * torch.sin(x) * t


def run(method: str, field: Field, x0: torch.Tensor, grad: bool) -> torch.Tensor:
    times = time_grid(1.0, 0.01, 12)
    if method == "em":
        out, _ = euler_maruyama(field, lambda t: 0.2 + 0.1 * t, x0, times, grad=grad,
                                generator=torch.Generator().manual_seed(3))
    else:
        out, _ = integrate_ode(field, x0, times, method=method, grad=grad, rtol=1e-9, atol=1e-9)
    return out


@pytest.mark.parametrize("method", ["em", "euler", "heun", "dopri5"])
def test_grad_true_backpropagates_through_the_sampler(method: str) -> None:
    field = Field()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    loss = run(method, field, x0, grad=True).mean()
    d_theta, d_c = torch.autograd.grad(loss, [field.theta, field.c])
    for param, analytic in ((field.theta, d_theta), (field.c, d_c)):
        eps = 1e-6
        with torch.no_grad():
            param += eps
            up = float(run(method, field, x0, grad=False).mean())
            param -= 2 * eps
            down = float(run(method, field, x0, grad=False).mean())
            param += eps
        fd = (up - down) / (2 * eps)
        assert abs(float(analytic) - fd) <= 1e-4 * max(1.0, abs(fd)), (method, float(analytic), fd)


@pytest.mark.parametrize("method", ["em", "euler", "heun", "dopri5"])
def test_grad_false_builds_no_graph(method: str) -> None:
    field = Field()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64, requires_grad=True)
    assert not run(method, field, x0, grad=False).requires_grad
    assert run(method, field, x0, grad=True).requires_grad


def test_grad_reaches_the_initial_state() -> None:
    # dx/dt = -a x is linear: the flow from 1 to 0 multiplies by exp(a); Heun's one-step factor is 1 + h a + (h a)^2/2.
    a, steps = 0.8, 10
    x0 = torch.ones(3, 1, dtype=F64, requires_grad=True)
    out, _ = integrate_ode(lambda x, t: -a * x, x0, time_grid(1.0, 0.0, steps), method="heun", grad=True)
    (grad,) = torch.autograd.grad(out.sum(), x0)
    h = 1.0 / steps
    torch.testing.assert_close(grad, torch.full_like(x0, (1 + h * a + (h * a) ** 2 / 2) ** steps))


# ---------------------------------------------------------------- tuple (augmented) state


def v_of(x: torch.Tensor, t: float) -> torch.Tensor:
    return -x


def f_of(x: torch.Tensor, t: float) -> torch.Tensor:
    return (x**2).sum(1) + math.cos(t)


def pair(state: tuple[torch.Tensor, torch.Tensor], t: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, _ = state
    return v_of(x, t), f_of(x, t)


@pytest.mark.parametrize("method", ["euler", "heun", "dopri5"])
def test_tuple_state_integrates_x_as_alone_and_y_as_the_integral_of_f(method: str) -> None:
    t0, t1, steps = 1.0, 0.001, 40
    times = time_grid(t0, t1, steps)
    x0 = torch.randn(32, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    y0 = torch.zeros(32, dtype=F64)
    kw = {"method": method, "rtol": 1e-9, "atol": 1e-9}
    (x, y), nfe = integrate_ode(pair, (x0, y0), times, **kw)
    alone, nfe_alone = integrate_ode(v_of, x0, times, **kw)
    assert x.shape == x0.shape and y.shape == y0.shape
    if method == "dopri5":
        # The adaptive steps now also control y's error, so x agrees with the lone run to the tolerance. The exact
        # solution is x(t) = x0 exp(-(t - t0)): y = |x0|^2 (1 - exp(-2 (t1 - t0))) / 2 + sin(t1) - sin(t0).
        torch.testing.assert_close(x, alone, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(x, x0 * math.exp(-(t1 - t0)), rtol=1e-7, atol=1e-7)
        exact_y = (x0**2).sum(1) * (1 - math.exp(-2 * (t1 - t0))) / 2 + math.sin(t1) - math.sin(t0)
        torch.testing.assert_close(y, exact_y, rtol=1e-7, atol=1e-7)
        return
    assert torch.equal(x, alone) and nfe == nfe_alone
    # y is the scheme's quadrature of f along the path of x alone: left rectangles (Euler), or the trapezoid over
    # the current point and Heun's predictor.
    path, _ = integrate_ode(v_of, x0, times, method=method, return_path=True)
    expected = torch.zeros_like(y0)
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        dt = t_next - t
        if method == "euler":
            expected = expected + f_of(path[i], t) * dt
        else:
            expected = expected + 0.5 * dt * (f_of(path[i], t) + f_of(path[i] + v_of(path[i], t) * dt, t_next))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["em", "euler", "heun", "dopri5"])
def test_tuple_state_paths_stack_each_element(method: str) -> None:
    steps = 6
    times = time_grid(1.0, 0.0, steps)
    x0, y0 = torch.randn(10, 2, dtype=F64), torch.zeros(10, dtype=F64)
    if method == "em":
        (xs, ys), _ = euler_maruyama(pair, lambda t: 0.5, (x0, y0), times, return_path=True)
    else:
        (xs, ys), _ = integrate_ode(pair, (x0, y0), times, method=method, return_path=True)
    assert xs.shape == (steps + 1, 10, 2) and ys.shape == (steps + 1, 10)
    assert torch.equal(xs[0], x0) and torch.equal(ys[0], y0)


def test_euler_maruyama_tuple_state_adds_noise_to_the_first_element_only() -> None:
    times = time_grid(1.0, 0.0, 25)
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    y0 = torch.zeros(50, dtype=F64)
    (x, y), nfe = euler_maruyama(pair, lambda t: 0.4, (x0, y0), times, generator=torch.Generator().manual_seed(7),
                                 noise_last_step=True)
    path, nfe_alone = euler_maruyama(v_of, lambda t: 0.4, x0, times, generator=torch.Generator().manual_seed(7),
                                     noise_last_step=True, return_path=True)
    assert torch.equal(x, path[-1]) and nfe == nfe_alone == 25
    steps = zip(times[:-1], times[1:], strict=True)
    expected = sum(f_of(path[i], t) * (t_next - t) for i, (t, t_next) in enumerate(steps))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_field_returning_the_wrong_structure_raises_a_config_error() -> None:
    x0 = (torch.zeros(4, 2, dtype=F64), torch.zeros(4, dtype=F64))
    with pytest.raises(ConfigError, match="tuple"):
        integrate_ode(lambda s, t: -s[0], x0, time_grid(1.0, 0.0, 3), method="euler")


# ---------------------------------------------------------------- tensor diffusion


def test_euler_maruyama_accepts_a_tensor_diffusion() -> None:
    # Zero drift, same noise: with g = (c, 2c) per coordinate the increments are (1, 2) times those of g = c, and a
    # constant tensor (c, c) reproduces the float exactly.
    times, c = time_grid(0.0, 1.0, 20), 0.3
    x0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(8), dtype=F64)

    def em(g) -> torch.Tensor:
        out, _ = euler_maruyama(lambda x, t: torch.zeros_like(x), g, x0, times, noise_last_step=True,
                                generator=torch.Generator().manual_seed(9))
        return out

    scalar = em(lambda t: c)
    assert torch.equal(em(lambda t: torch.tensor([c, c], dtype=F64)), scalar)
    per_coord = em(lambda t: torch.tensor([c, 2 * c], dtype=F64))
    torch.testing.assert_close(per_coord - x0, (scalar - x0) * torch.tensor([1.0, 2.0], dtype=F64),
                               rtol=1e-12, atol=1e-12)
