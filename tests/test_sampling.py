"""Tests for sbridge.numerics.integrators with an exact score (no network).

Data N(m, s^2 I) under the VP process has the Gaussian marginals p_t = N(alpha m, (alpha^2 s^2 + var) I), so the
score is known in closed form, -(x - alpha m) / V(t) with V = alpha^2 s^2 + var. The reverse drift f - g^2 score and
the probability-flow velocity f - g^2 score / 2 are then affine in x, every scheme maps Gaussians to Gaussians,
and the law of each discrete scheme's output can be computed exactly by a moment recursion. That gives two checks:
samples against the exact law of the scheme (statistical error only), and the scheme's law against p_{t_min}
(discretisation error, which must be small).
"""

from __future__ import annotations

import math

import pytest
import torch

from sbridge.core.errors import ConfigError
from sbridge.metrics import samples as metrics
from sbridge.numerics.integrators import ODE_METHODS, euler_maruyama, integrate_ode, time_grid
from sbridge.processes.linear import VP

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
N = 20_000  # samples for moment checks: SE of a mean s/sqrt(N), of a std s/sqrt(2N)
K = 4.0  # standard errors allowed per statistic (two-sided p ~ 6e-5 each under a correct sampler)


class GaussianVP:
    """VP process with data N(m, s^2 I): exact marginals, score, reverse drift and probability-flow velocity."""

    def __init__(self, m: tuple[float, ...] = (1.0, -2.0), s: float = 0.5) -> None:
        self.proc = VP()
        self.m = torch.tensor(m, dtype=F64)
        self.s = s
        self.dim = len(m)

    def alpha(self, t: float) -> float:
        return math.exp(float(self.proc.log_alpha(torch.tensor(t, dtype=F64))))

    def V(self, t: float) -> float:
        return self.alpha(t) ** 2 * self.s**2 + float(self.proc.variance(torch.tensor(t, dtype=F64)))

    def mu(self, t: float) -> torch.Tensor:
        return self.alpha(t) * self.m

    def g(self, t: float) -> float:
        return float(self.proc.diffusion(torch.tensor(t, dtype=F64)))

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return -(x - self.mu(t)) / self.V(t)

    def reverse_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.proc.drift(x, t) - self.proc.g(t, x) ** 2 * self.score(x, t)

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.proc.drift(x, t) - 0.5 * self.proc.g(t, x) ** 2 * self.score(x, t)

    def sample(self, t: float, n: int, seed: int) -> torch.Tensor:
        """Exact draws from p_t."""
        z = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
        return self.mu(t) + math.sqrt(self.V(t)) * z

    def flow(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """The exact probability-flow map between Gaussian marginals (per-coordinate affine, quantile-preserving)."""
        return self.mu(t_to) + math.sqrt(self.V(t_to) / self.V(t_from)) * (x - self.mu(t_from))

    # ---- exact law of the discrete schemes ----------------------------------------------------------------------
    def _affine(self, t: float, lam: float) -> tuple[float, torch.Tensor]:
        """drift = A x + B for  f - lam g^2 score  (lam = 1: reverse SDE, lam = 1/2: probability flow)."""
        c, g2, V = float(self.proc.drift_coef(torch.tensor(t, dtype=F64))), self.g(t) ** 2, self.V(t)
        return c + lam * g2 / V, -lam * g2 * self.mu(t) / V

    def scheme_map(self, method: str, times: list[float], noise_last_step: bool = False):
        """(a, b, q): the scheme maps x to a x + b + N(0, q) per coordinate."""
        lam = 1.0 if method == "em" else 0.5
        a, b, q = 1.0, torch.zeros(self.dim, dtype=F64), 0.0
        n_steps = len(times) - 1
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            dt = t_next - t
            A1, B1 = self._affine(t, lam)
            if method == "heun":
                A2, B2 = self._affine(t_next, lam)
                P, Q = 1 + 0.5 * dt * (A1 + A2 + A2 * A1 * dt), 0.5 * dt * (B1 + A2 * B1 * dt + B2)
            else:  # euler and euler_maruyama
                P, Q = 1 + A1 * dt, B1 * dt
            a, b, q = P * a, P * b + Q, P * P * q
            if method == "em" and (i < n_steps - 1 or noise_last_step):
                q += self.g(t) ** 2 * abs(dt)
        return a, b, q

    def scheme_law(self, method: str, times: list[float], mean0: torch.Tensor, var0: float, **kw):
        """Mean (per coordinate) and std of the scheme's output for input N(mean0, var0 I)."""
        a, b, q = self.scheme_map(method, times, **kw)
        return a * mean0 + b, math.sqrt(a * a * var0 + q)


@pytest.fixture(scope="module")
def gvp() -> GaussianVP:
    return GaussianVP()


def prior(gvp: GaussianVP, n: int = N, seed: int = 0) -> torch.Tensor:
    return gvp.proc.prior_sample((n, gvp.dim), generator=torch.Generator().manual_seed(seed), dtype=F64)


def check_moments(x: torch.Tensor, law_mean: torch.Tensor, law_std: float, target_mean: torch.Tensor,
                  target_std: float, rel_disc: float) -> None:
    """Samples within K SE of the scheme's exact law; that law within ``rel_disc`` of the target p_{t_min}.

    Equivalently |sample - target| <= K SE + (discretisation bias), with the bias bounded by rel_disc.
    """
    n = x.shape[0]
    assert bool(((x.mean(0) - law_mean).abs() <= K * law_std / math.sqrt(n)).all()), (x.mean(0), law_mean)
    assert bool(((x.std(0) - law_std).abs() <= K * law_std / math.sqrt(2 * n)).all()), (x.std(0), law_std)
    assert bool(((law_mean - target_mean).abs() <= rel_disc * (target_mean.abs() + target_std)).all())
    assert abs(law_std - target_std) <= rel_disc * target_std


# ---------------------------------------------------------------- reverse SDE


def test_euler_maruyama_reverse_sde_from_the_prior_reproduces_the_data_marginal(gvp: GaussianVP) -> None:
    # Includes the prior mismatch N(0, 1) vs p_T (alpha(T) ~ 0.0066); the exact scheme law accounts for it and the
    # total bias must stay below 1% (weak order 1 with 500 steps; the SDE also forgets its initial law).
    steps, t_min = 500, gvp.proc.t_min
    times = time_grid(gvp.proc.T, t_min, steps)
    x, nfe = euler_maruyama(gvp.reverse_drift, gvp.g, prior(gvp), times, generator=torch.Generator().manual_seed(1))
    assert nfe == steps
    assert x.shape == (N, 2) and x.dtype == F64
    law_mean, law_std = gvp.scheme_law("em", times, torch.zeros(2, dtype=F64), 1.0)
    check_moments(x, law_mean, law_std, gvp.mu(t_min), math.sqrt(gvp.V(t_min)), rel_disc=0.01)


def test_euler_maruyama_forward_in_time_matches_the_closed_form_marginal(gvp: GaussianVP) -> None:
    # dt > 0: the forward SDE dX = f dt + g dW from a fixed x0, with noise on every step (noise_last_step=True).
    proc, steps, t_end = gvp.proc, 500, 0.5
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    times = time_grid(0.0, t_end, steps)
    x, nfe = euler_maruyama(proc.drift, gvp.g, x0.expand(N, 2).clone(), times,
                            generator=torch.Generator().manual_seed(2), noise_last_step=True)
    assert nfe == steps
    mean, cov = proc.marginal(x0, t_end)
    std = cov.std
    # Exact law of the scheme: m <- (1 + c dt) m, v <- (1 + c dt)^2 v + g^2 dt.
    law_mean, law_var = x0.clone(), 0.0
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        p = 1 + float(proc.drift_coef(torch.tensor(t, dtype=F64))) * (t_next - t)
        law_mean, law_var = p * law_mean, p * p * law_var + gvp.g(t) ** 2 * (t_next - t)
    check_moments(x, law_mean, math.sqrt(law_var), mean, float(std), rel_disc=0.01)


def test_noise_last_step_adds_exactly_one_gaussian_increment(gvp: GaussianVP) -> None:
    # Same generator seed: the first steps - 1 noise draws coincide, so the difference of the two outputs is the
    # last increment g(t_last) sqrt(|dt|) z: mean 0 and std g sqrt(|dt|) within K SE.
    steps = 20
    times = time_grid(gvp.proc.T, gvp.proc.t_min, steps)
    x = prior(gvp, seed=5)
    without, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(9))
    with_, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(9),
                              noise_last_step=True)
    diff = with_ - without
    scale = gvp.g(times[-2]) * math.sqrt(abs(times[-1] - times[-2]))
    assert bool((diff.mean(0).abs() <= K * scale / math.sqrt(N)).all())
    assert bool(((diff.std(0) - scale).abs() <= K * scale / math.sqrt(2 * N)).all())


# ---------------------------------------------------------------- probability-flow ODE


@pytest.mark.parametrize("method, steps, rel_disc", [
    ("euler", 500, 0.01),  # first order: bias ~ C h, below 1% at h = 1/500
    ("heun", 100, 0.002),  # second order: bias ~ C h^2, well below 0.2% at h = 1/100
    ("dopri5", 100, 0.001),  # adaptive, rtol = atol = 1e-5: 100x the requested tolerance
])
def test_probability_flow_ode_transports_p_T_to_the_data_marginal(gvp: GaussianVP, method: str, steps: int,
                                                                  rel_disc: float) -> None:
    # Start from exact draws of p_T: the ODE carries any mismatch of its initial law to the end (unlike the SDE,
    # which forgets it), so starting from p_T isolates the integration error.
    t_min, T = gvp.proc.t_min, gvp.proc.T
    times = time_grid(T, t_min, steps)
    x, _ = integrate_ode(gvp.velocity, gvp.sample(T, N, seed=0), times, method=method)
    assert x.shape == (N, 2) and x.dtype == F64
    target_mean, target_std = gvp.mu(t_min), math.sqrt(gvp.V(t_min))
    if method == "dopri5":  # no closed-form scheme law: the law is p_{t_min} itself, up to the solver tolerance
        law_mean, law_std = target_mean, target_std
        n = x.shape[0]
        mean_bound = K * law_std / math.sqrt(n) + rel_disc * (law_mean.abs() + law_std)
        assert bool(((x.mean(0) - law_mean).abs() <= mean_bound).all())
        assert bool(((x.std(0) - law_std).abs() <= K * law_std / math.sqrt(2 * n) + rel_disc * law_std).all())
    else:
        law_mean, law_std = gvp.scheme_law(method, times, gvp.mu(T), gvp.V(T))
        check_moments(x, law_mean, law_std, target_mean, target_std, rel_disc=rel_disc)


def test_probability_flow_from_the_prior_carries_only_the_small_prior_mismatch(gvp: GaussianVP) -> None:
    # From the N(0, I) prior the exact flow ends at N(mu - a alpha(T) m, a^2) with a = sqrt(V(t_min) / V(T)); with
    # alpha(T) ~ 0.0066 that is within 1% of p_{t_min}. Heun with 100 steps must reproduce its exact scheme law.
    t_min, T = gvp.proc.t_min, gvp.proc.T
    times = time_grid(T, t_min, 100)
    x, _ = integrate_ode(gvp.velocity, prior(gvp), times, method="heun")
    law_mean, law_std = gvp.scheme_law("heun", times, torch.zeros(2, dtype=F64), 1.0)
    check_moments(x, law_mean, law_std, gvp.mu(t_min), math.sqrt(gvp.V(t_min)), rel_disc=0.01)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_fixed_step_ode_is_exactly_the_scheme_map(gvp: GaussianVP, method: str) -> None:
    # The velocity is affine, so the integrator must output a x + b with (a, b) from the recursion (float64).
    times = time_grid(gvp.proc.T, gvp.proc.t_min, 40)
    x = prior(gvp, n=500, seed=3)
    out, _ = integrate_ode(gvp.velocity, x, times, method=method)
    a, b, q = gvp.scheme_map(method, times)
    assert q == 0.0
    torch.testing.assert_close(out, a * x + b, rtol=1e-9, atol=1e-9)


def test_dopri5_matches_the_exact_flow_map_pointwise(gvp: GaussianVP) -> None:
    # Pointwise, not only in law: dopri5 at rtol = atol = 1e-5 lands within 1e-3 of the exact flow of each point.
    times = time_grid(gvp.proc.T, gvp.proc.t_min, 10)
    x = prior(gvp, n=500, seed=4)
    out, nfe = integrate_ode(gvp.velocity, x, times, method="dopri5")
    assert float((out - gvp.flow(x, gvp.proc.T, gvp.proc.t_min)).abs().max()) < 1e-3
    assert nfe > 0


def test_heun_is_more_accurate_than_euler_and_both_converge_at_their_order(gvp: GaussianVP) -> None:
    # Same input points, exact reference = the exact flow map. The error in the final std (and pointwise) is
    # smaller for Heun at equal steps; halving h divides the error by ~2 (Euler, order 1) and ~4 (Heun, order 2).
    x = gvp.sample(gvp.proc.T, 4000, seed=6)
    exact = gvp.flow(x, gvp.proc.T, gvp.proc.t_min)

    def errors(method: str, steps: int) -> tuple[float, float]:
        out, _ = integrate_ode(gvp.velocity, x, time_grid(gvp.proc.T, gvp.proc.t_min, steps), method=method)
        return float((out.std(0) - exact.std(0)).abs().max()), float((out - exact).pow(2).sum(1).mean().sqrt())

    for steps in (25, 50):
        (std_euler, rms_euler), (std_heun, rms_heun) = errors("euler", steps), errors("heun", steps)
        assert std_heun < std_euler
        assert rms_heun < rms_euler
    ratio_euler = errors("euler", 100)[1] / errors("euler", 200)[1]
    ratio_heun = errors("heun", 100)[1] / errors("heun", 200)[1]
    assert 1.6 < ratio_euler < 2.4, ratio_euler
    assert 3.2 < ratio_heun < 4.8, ratio_heun


# ---------------------------------------------------------------- ODE vs SDE


def test_ode_and_sde_samplers_agree_in_distribution(gvp: GaussianVP) -> None:
    n, t_min = 1500, gvp.proc.t_min
    times = time_grid(gvp.proc.T, t_min, 200)
    sde, _ = euler_maruyama(gvp.reverse_drift, gvp.g, prior(gvp, n, seed=10), times,
                            generator=torch.Generator().manual_seed(11))
    ode, _ = integrate_ode(gvp.velocity, prior(gvp, n, seed=12), times, method="heun")
    # Moments: the two independent sample means/stds differ by at most K combined SE plus both discretisation
    # biases (each < 1% of the scale, as the tests above establish).
    s = math.sqrt(gvp.V(t_min))
    bias = 0.01 * (gvp.mu(t_min).abs() + s)
    assert bool(((sde.mean(0) - ode.mean(0)).abs() <= K * s * math.sqrt(2 / n) + 2 * bias).all())
    assert bool(((sde.std(0) - ode.std(0)).abs() <= K * s * math.sqrt(1 / n) + 2 * 0.01 * s).all())
    # Energy distance: compare with its null distribution between independent exact draws of p_{t_min} of the same
    # size (20 pairs, fixed seeds). Threshold: null mean + 4 null sds.
    null = torch.tensor([metrics.energy_distance(gvp.sample(t_min, n, 100 + 2 * i), gvp.sample(t_min, n, 101 + 2 * i))
                         for i in range(20)])
    threshold = float(null.mean() + 4 * null.std())
    assert metrics.energy_distance(sde, ode) < threshold
    # The threshold has power: a 10% error in the std (a poor sampler) is rejected.
    wrong = gvp.mu(t_min) + 1.1 * (gvp.sample(t_min, n, 99) - gvp.mu(t_min))
    assert metrics.energy_distance(sde, wrong) > threshold


# ---------------------------------------------------------------- NFE, paths, determinism, grids, errors


@pytest.mark.parametrize("method, per_step", [("euler", 1), ("heun", 2)])
def test_fixed_step_nfe_counts(gvp: GaussianVP, method: str, per_step: int) -> None:
    calls = []

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        calls.append(t)
        return gvp.velocity(x, t)

    for steps in (1, 7, 30):
        calls.clear()
        _, nfe = integrate_ode(velocity, prior(gvp, 10), time_grid(1.0, 1e-3, steps), method=method)
        assert nfe == per_step * steps == len(calls)


def test_euler_maruyama_and_adaptive_nfe_count_the_actual_calls(gvp: GaussianVP) -> None:
    calls = []

    def counted(field):
        def wrapped(x: torch.Tensor, t: float) -> torch.Tensor:
            calls.append(t)
            return field(x, t)
        return wrapped

    _, nfe = euler_maruyama(counted(gvp.reverse_drift), gvp.g, prior(gvp, 10), time_grid(1.0, 1e-3, 17),
                            generator=torch.Generator().manual_seed(0))
    assert nfe == 17 == len(calls)
    calls.clear()
    _, nfe = integrate_ode(counted(gvp.velocity), prior(gvp, 10), time_grid(1.0, 1e-3, 17), method="dopri5")
    assert nfe == len(calls) > 0
    # The solver must not evaluate the field outside [t_min, T] (the score is undefined below t_min).
    assert min(calls) >= 1e-3 - 1e-12 and max(calls) <= 1.0 + 1e-12


@pytest.mark.parametrize("method", ["em", "euler", "heun", "dopri5"])
def test_return_path_shape_and_end_points(gvp: GaussianVP, method: str) -> None:
    steps, n = 12, 64
    times = time_grid(1.0, 1e-3, steps)
    x = prior(gvp, n, seed=8)

    def run(return_path: bool) -> torch.Tensor:
        if method == "em":
            out, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(4),
                                    return_path=return_path)
        else:
            out, _ = integrate_ode(gvp.velocity, x, times, method=method, return_path=return_path)
        return out

    path, end = run(True), run(False)
    assert path.shape == (steps + 1, n, 2)
    assert torch.equal(path[0], x)
    if method == "dopri5":  # the adaptive solver stops at every grid point on the path: same end to tolerance
        torch.testing.assert_close(path[-1], end, rtol=1e-3, atol=1e-3)
    else:
        assert torch.equal(path[-1], end)


@pytest.mark.parametrize("method", ["euler", "heun", "dopri5"])
def test_ode_is_deterministic_and_leaves_its_input_untouched(gvp: GaussianVP, method: str) -> None:
    x = prior(gvp, 200, seed=13)
    x_copy = x.clone()
    times = time_grid(1.0, 1e-3, 20)
    first, _ = integrate_ode(gvp.velocity, x, times, method=method)
    second, _ = integrate_ode(gvp.velocity, x.clone(), times, method=method)
    assert torch.equal(first, second)
    assert torch.equal(x, x_copy)
    assert not torch.equal(first, x)


def test_euler_maruyama_is_reproducible_for_a_seed_and_varies_across_seeds(gvp: GaussianVP) -> None:
    times, x = time_grid(1.0, 1e-3, 20), prior(gvp, 100, seed=14)
    a, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(1))
    b, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(1))
    c, _ = euler_maruyama(gvp.reverse_drift, gvp.g, x, times, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("t_start, t_end, steps", [(1.0, 1e-3, 100), (0.0, 1.0, 7), (2.5, 0.0, 1), (1e-3, 1.0, 33)])
def test_time_grid_endpoints_and_even_spacing(t_start: float, t_end: float, steps: int) -> None:
    times = time_grid(t_start, t_end, steps)
    assert len(times) == steps + 1
    assert times[0] == t_start
    assert times[-1] == pytest.approx(t_end, rel=1e-12, abs=1e-15)
    gaps = torch.tensor(times[1:], dtype=F64) - torch.tensor(times[:-1], dtype=F64)
    torch.testing.assert_close(gaps, torch.full_like(gaps, (t_end - t_start) / steps), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_time_grid_rejects_non_positive_integer_steps(steps: object) -> None:
    with pytest.raises(ConfigError):
        time_grid(1.0, 0.0, steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["rk4", "Euler", "", "em"])
def test_unknown_ode_method_raises_config_error_listing_the_choices(gvp: GaussianVP, method: str) -> None:
    with pytest.raises(ConfigError, match="heun") as info:
        integrate_ode(gvp.velocity, prior(gvp, 4), time_grid(1.0, 1e-3, 4), method=method)
    assert all(m in str(info.value) for m in ODE_METHODS)
