"""Tests for sbridge.data.eot_benchmark (maths.md §H) and the BW2-UVP / cBW2-UVP metrics in sbridge.metrics.samples.

The benchmark's plan is checked against an independent solver (POT's Sinkhorn with reg = 2 eps, §G.1), against
an Euler-Maruyama simulation of its own SB drift, against quadrature and autograd of the h-transform, and, for one
Gaussian input and one potential component, against the Gaussian closed form of §G.2. All random draws use fixed
seeds; Monte-Carlo tolerances are stated next to each assertion.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.data.eot_benchmark import EOTBenchmark
from sbridge.metrics import samples as metrics
from sbridge.processes.gaussian import coupling

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def bench2(single_thread: None) -> EOTBenchmark:
    return EOTBenchmark(dim=2, eps=0.5, seed=0)


# ---------------------------------------------------------------- 1. optimality against POT's Sinkhorn


def sinkhorn_projection_error(bench: EOTBenchmark, n: int, reg: float, seed: int) -> tuple[float, float]:
    """Sinkhorn between x ~ P0 and an independent y ~ P1: (mean |E_sk[y|x] - E*[y|x]|^2 / mean tr Cov*(y|x),
    max |Cov_sk(x, y) - Cov(x, E*[y|x])|) over the n sampled x."""
    g = gen(seed)
    x = bench.sample_x0(n, g).double().numpy()
    y = bench.sample_x1(n, g).double().numpy()
    weights = np.full(n, 1.0 / n)
    plan = ot.sinkhorn(weights, weights, ot.dist(x, y), reg=reg, numItermax=20_000, stopThr=1e-8)
    mean, cov = bench.conditional_moments(x)
    mean = mean.double().numpy()
    barycentric = n * plan @ y
    cond_var = float(np.trace(cov.double().numpy(), axis1=1, axis2=2).mean())
    err = float(((barycentric - mean) ** 2).sum(1).mean()) / cond_var
    cross_sk = x.T @ plan @ y - np.outer(x.mean(0), y.mean(0))
    cross_true = (x - x.mean(0)).T @ (mean - mean.mean(0)) / n
    return err, float(np.abs(cross_sk - cross_true).max())


@pytest.mark.parametrize("dim", [1, 2])
def test_sinkhorn_plan_matches_the_known_conditional_mean_and_cross_covariance(dim: int) -> None:
    # eps = 0.25 (sigma = 0.5), POT reg = 2 eps (§G.1). The empirical Sinkhorn plan on 1000 + 1000 points has MC
    # error: over 12 seeds its barycentric projection had relative squared error 0.011 (D=1) / 0.018 (D=2) on
    # average and at most 0.036, and its cross-covariance was within 0.05 of Cov(x, E*[y|x]).
    bench = EOTBenchmark(dim, eps=0.25, seed=0)
    err, cross_err = sinkhorn_projection_error(bench, 1000, reg=2 * bench.eps, seed=100)
    assert err < 0.06
    assert cross_err < 0.1


def test_sinkhorn_with_the_right_reg_is_closest_to_the_known_plan(bench2: EOTBenchmark) -> None:
    # Only reg = 2 eps gives the plan of §H; reg = eps (mistaking POT's reg for sigma^2) and reg = 4 eps do not.
    # Over 12 seeds the ratio below was at most 0.37 (mean errors 0.009 vs 0.038 and 0.076).
    errors = {reg: sinkhorn_projection_error(bench2, 1000, reg=reg * bench2.eps, seed=7)[0] for reg in (1, 2, 4)}
    assert errors[2] < 0.6 * min(errors[1], errors[4])


# ---------------------------------------------------------------- 2. marginals and conditional moments


def expected_energy_floor(reference: torch.Tensor, n: int) -> float:
    """Mean V-statistic energy distance between n and len(reference) draws of one law: E|X - X'| (1/n + 1/m)."""
    sub = reference[:2000].double()
    return float(torch.cdist(sub, sub).mean()) * 2000 / 1999 * (1 / n + 1 / reference.shape[0])


def test_plan_marginals_match_sample_x0_and_sample_x1(bench2: EOTBenchmark) -> None:
    # Energy distance against a larger independent reference, below 6x its mean under equality (the statistic is a
    # weighted sum of chi-squares; over 30 seeds its maximum was 3.4x the mean). P0 vs P1 scores ~30x the mean.
    n = 1500
    x, y = bench2.sample_plan(n, gen(1))
    big_x0, big_x1 = bench2.sample_x0(5000, gen(2)), bench2.sample_x1(5000, gen(3))
    for sample, reference in ((x, big_x0), (y, big_x1)):
        assert metrics.energy_distance(sample, reference) < 6 * expected_energy_floor(reference, n)
    assert metrics.energy_distance(x, big_x1) > 20 * expected_energy_floor(big_x1, n)


def test_conditional_samples_have_the_analytic_moments(bench2: EOTBenchmark) -> None:
    x = bench2.test_inputs(4, seed=3)
    k = 20_000
    samples = bench2.sample_conditional(x, k, gen(8)).double()
    mean, cov = bench2.conditional_moments(x)
    mean, cov = mean.double(), cov.double()
    centred = samples - mean[:, None, :]
    # Mean: 5 standard errors sqrt(Cov_jj / k).
    se_mean = (torch.diagonal(cov, dim1=1, dim2=2) / k).sqrt()
    assert bool(((samples.mean(1) - mean).abs() < 5 * se_mean).all())
    # Covariance entries (about the known mean): 5 standard errors of the mean of the products.
    products = centred[:, :, :, None] * centred[:, :, None, :]
    se_cov = products.std(1) / math.sqrt(k)
    assert bool(((products.mean(1) - cov).abs() < 5 * se_cov).all())


def test_shapes_and_dtypes(bench2: EOTBenchmark) -> None:
    x, y = bench2.sample_plan(7, gen(0))
    assert x.shape == y.shape == (7, 2) and x.dtype == y.dtype == torch.float32
    assert bench2.sample_x0(5).shape == (5, 2) and bench2.sample_x1(5).dtype == torch.float32
    assert bench2.sample_conditional(x, 3, gen(1)).shape == (7, 3, 2)
    mean, cov = bench2.conditional_moments(x)
    assert mean.shape == (7, 2) and cov.shape == (7, 2, 2) and cov.dtype == torch.float32
    assert bench2.drift(x, 0.3).shape == (7, 2) and bench2.drift(x, 0.3).dtype == torch.float32
    assert bench2.drift(x.double(), 0.3).dtype == F64
    assert bench2.test_inputs(11, seed=2).shape == (11, 2)
    assert 0.5 < bench2.x1_var() < 20.0


# ---------------------------------------------------------------- 3. the SB drift


def test_euler_maruyama_of_the_drift_reproduces_the_plan() -> None:
    # dX = drift dt + sqrt(eps) dW, 200 steps, from 8 fixed inputs (1000 paths each) and from 1500 draws of P0.
    # eps = 0.1 (the benchmark's smallest). With the clock reversed in h (eps t instead of eps (1 - t)) the
    # conditional mean of the first input is off by about 9 standard errors; the true drift stays within 2.2.
    bench = EOTBenchmark(dim=2, eps=0.1, seed=0)
    eps, steps, k, m = bench.eps, 200, 1000, 8
    fixed = bench.test_inputs(m, seed=1).double()
    g = gen(11)
    start = torch.cat([fixed.repeat_interleave(k, 0), bench.sample_x0(1500, g).double()])
    x, dt = start.clone(), 1.0 / steps
    for i in range(steps):
        x = x + bench.drift(x, i * dt) * dt + math.sqrt(eps * dt) * torch.randn(x.shape, generator=g, dtype=F64)
    ends = x[: m * k].reshape(m, k, 2)
    mean, cov = bench.conditional_moments(fixed)
    mean, cov = mean.double(), cov.double()
    # E[X1 | X0 = x] and Cov[X1 | X0 = x]: 5 standard errors (the Euler bias at 200 steps is far smaller).
    se_mean = (torch.diagonal(cov, dim1=1, dim2=2) / k).sqrt()
    assert bool(((ends.mean(1) - mean).abs() < 5 * se_mean).all())
    centred = ends - mean[:, None, :]
    products = centred[:, :, :, None] * centred[:, :, None, :]
    assert bool(((products.mean(1) - cov).abs() < 5 * products.std(1) / math.sqrt(k)).all())
    # Marginal: the endpoints from X0 ~ P0 are distributed as P1.
    reference = bench.sample_x1(5000, gen(12))
    assert metrics.energy_distance(x[m * k:], reference) < 6 * expected_energy_floor(reference, 1500)


def test_drift_is_eps_times_autograd_of_log_h_and_accepts_per_sample_times(bench2: EOTBenchmark) -> None:
    x = bench2.sample_x0(50, gen(3)).double().requires_grad_(True)
    t = torch.linspace(0.0, 1.0, 50, dtype=F64)
    (grad,) = torch.autograd.grad(bench2.log_h(x, t).sum(), x)
    drift = bench2.drift(x.detach(), t)
    torch.testing.assert_close(drift, bench2.eps * grad, rtol=1e-10, atol=1e-10)
    for i in (0, 17, 49):
        torch.testing.assert_close(bench2.drift(x.detach()[i:i + 1], float(t[i])), drift[i:i + 1])
    torch.testing.assert_close(bench2.drift(x.detach(), t[:, None]), drift)


def test_drift_at_time_zero_is_conditional_mean_minus_x(bench2: EOTBenchmark) -> None:
    # eps grad log h(0, x) = eps grad log int N(y | x, eps I) f(y) dy = E*[y | x] - x exactly.
    x = bench2.sample_x0(200, gen(4)).double()
    mean, _ = bench2.conditional_moments(x)
    torch.testing.assert_close(bench2.drift(x, 0.0), mean.double() - x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [0.0, 0.5, 0.95])
def test_h_transform_formula_against_quadrature_in_1d(t: float) -> None:
    # h(t, x) = int N(y | x, eps (1 - t)) f(y) dy with f = h(1, .), evaluated on a fine grid and differentiated by
    # autograd: checks that the Gaussian convolution sum_k p_k N(x | mu_k, Sigma_k + eps (1 - t)) is right.
    bench = EOTBenchmark(1, eps=0.25, seed=4)
    grid = torch.linspace(-15.0, 15.0, 30_001, dtype=F64)
    step = float(grid[1] - grid[0])
    f = torch.exp(bench.log_h(grid[:, None], 1.0))
    x = torch.linspace(-3.0, 3.0, 13, dtype=F64).requires_grad_(True)
    var = bench.eps * (1.0 - t)
    kernel = torch.exp(-((grid[None, :] - x[:, None]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    log_h_quad = torch.log((kernel * f[None, :]).sum(1) * step)
    (grad_quad,) = torch.autograd.grad(log_h_quad.sum(), x)
    xs = x.detach()[:, None]
    torch.testing.assert_close(bench.log_h(xs, t), log_h_quad.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(bench.drift(xs, t)[:, 0], bench.eps * grad_quad, rtol=0, atol=1e-7)


# ---------------------------------------------------------------- 4. Gaussian special case ties §H to §G


@pytest.mark.parametrize("dim", [1, 3])
def test_single_component_case_is_the_gaussian_eot_coupling(dim: int) -> None:
    bench = EOTBenchmark(dim, eps=0.7, seed=2, n_input_components=1, n_potential_components=1)
    a, A = bench.input_means[0], bench.input_covs[0]
    eye = torch.eye(dim, dtype=F64)
    # The conditional mean is affine: read b = m(a) and the gain G (m(a + e_j) - m(a) = G e_j) from the benchmark.
    points = torch.cat([a[None], a[None] + eye])
    means, covs = bench.conditional_moments(points)
    means, cond_cov = means.double(), covs[0].double()
    gain = (means[1:] - means[0]).T  # column j = G e_j
    b = means[0]
    B = cond_cov + gain @ A @ gain.T
    C_bench = A @ gain.T  # Cov(X0, X1) = Cov(X0, G X0)
    C_closed = coupling(a, A, b, B, sigma=math.sqrt(bench.eps))
    torch.testing.assert_close(C_bench, C_closed, rtol=1e-4, atol=1e-4)
    # §G.2 conditional covariance B - C^T A^{-1} C equals the benchmark's (constant) conditional covariance.
    torch.testing.assert_close(B - C_closed.T @ torch.linalg.solve(A, C_closed), cond_cov, rtol=1e-4, atol=1e-4)
    # And the sampled plan has that cross-covariance (5 standard errors of each entry, n = 20000).
    n = 20_000
    x, y = bench.sample_plan(n, gen(9))
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    products = x[:, :, None] * y[:, None, :]
    assert bool(((products.mean(0) - C_closed).abs() < 5 * products.std(0) / math.sqrt(n)).all())


# ---------------------------------------------------------------- 5. metrics


def test_bw2_squared_matches_pot_and_scipy() -> None:
    # POT returns BW2 (not squared); scipy's sqrtm gives an independent matrix square root.
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    for d in (1, 3, 5):
        m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
        G1, G2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        S1, S2 = G1 @ G1.T + 0.1 * np.eye(d), G2 @ G2.T + 0.1 * np.eye(d)
        ours = float(metrics._bw2_squared(*(torch.from_numpy(v) for v in (m1, S1, m2, S2))))
        root = np.real(sqrtm(S1))
        scipy_value = float(((m1 - m2) ** 2).sum() + np.trace(S1) + np.trace(S2)
                            - 2 * np.trace(np.real(sqrtm(root @ S2 @ root))))
        pot_value = float(ot.gaussian.bures_wasserstein_distance(m1, m2, S1, S2)) ** 2
        assert ours == pytest.approx(scipy_value, rel=1e-8, abs=1e-10)
        assert ours == pytest.approx(pot_value, rel=1e-6, abs=1e-8)


def test_bw2_uvp_floor_and_shift() -> None:
    n, shift = 5000, torch.tensor([0.6, -0.3], dtype=F64)
    scale = torch.tensor([[1.0, 0.0], [0.5, 0.7]], dtype=F64)
    target = torch.randn(n, 2, generator=gen(0), dtype=F64) @ scale.T
    other = torch.randn(n, 2, generator=gen(1), dtype=F64) @ scale.T
    var = float(torch.trace(torch.cov(target.T)))
    # Exact: same covariance, so BW2^2 is the squared mean shift.
    assert metrics.bw2_uvp(target + shift, target) == pytest.approx(100 * float(shift @ shift) / var, rel=1e-9)
    assert metrics.bw2_uvp(target, target) == pytest.approx(0.0, abs=1e-9)
    # Floor: two independent samples of one law score about 100 (2 tr S / n + O(1/n)) / tr S ~ 0.05 here.
    floor = metrics.bw2_uvp(other, target)
    assert 0.0 < floor < 0.3
    # A shifted independent sample: 100 |shift|^2 / var up to the floor and the cross term 2 shift . (m1 - m2).
    expected = 100 * float(shift @ shift) / var
    assert metrics.bw2_uvp(other + shift, target) == pytest.approx(expected, abs=0.1 * expected)


def test_cbw2_uvp_of_the_true_plan_is_at_its_floor_and_a_shift_adds_the_closed_form(bench2: EOTBenchmark) -> None:
    m, k = 100, 1000
    x = bench2.test_inputs(m, seed=0)
    means, covs = bench2.conditional_moments(x)
    samples = bench2.sample_conditional(x, k, gen(21)).double()
    x1_var = bench2.x1_var()
    value = metrics.cbw2_uvp(samples, means, covs, x1_var)
    # Floor of the true plan with k samples per input: the mean error alone gives 100 E tr Cov(Y|X) / (k x1_var);
    # the covariance error adds a comparable amount.
    mean_floor = 100 * float(torch.einsum("nii->n", covs.double()).mean()) / (k * x1_var)
    assert 0.0 < value < 4 * mean_floor
    assert value < 0.5
    # A biased plan (every conditional mean shifted by s): the value grows by exactly
    # 100 / x1_var * (|s|^2 + 2 s . mean_i(mhat_i - m_i)); the cross term is below 5 standard errors.
    shift = torch.tensor([0.4, 0.3], dtype=F64)
    shifted = metrics.cbw2_uvp(samples + shift, means, covs, x1_var)
    closed = 100 * float(shift @ shift) / x1_var
    se_cross = 2 * float(shift.norm()) * math.sqrt(float(torch.einsum("nii->n", covs.double()).mean()) / (k * m))
    assert abs(shifted - value - closed) < 5 * 100 * se_cross / x1_var
    assert shifted == pytest.approx(closed, rel=0.1)


def test_metric_shape_errors() -> None:
    good = torch.randn(4, 10, 2, generator=gen(0))
    means, covs = torch.zeros(4, 2), torch.eye(2).expand(4, 2, 2)
    with pytest.raises(DataError):
        metrics.cbw2_uvp(good[0], means, covs, 1.0)  # (k, d) instead of (m, k, d)
    with pytest.raises(DataError):
        metrics.cbw2_uvp(good[:, :1], means, covs, 1.0)  # k = 1 sample per input
    with pytest.raises(DataError):
        metrics.cbw2_uvp(good, means[:3], covs, 1.0)
    with pytest.raises(DataError):
        metrics.cbw2_uvp(good, means, covs[:, :1], 1.0)
    with pytest.raises(DataError):
        metrics.cbw2_uvp(good * float("nan"), means, covs, 1.0)
    with pytest.raises(ConfigError):
        metrics.cbw2_uvp(good, means, covs, 0.0)
    with pytest.raises(DataError):
        metrics.bw2_uvp(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(DataError):
        metrics.bw2_uvp(torch.randn(1, 2), torch.randn(10, 2))
    with pytest.raises(DataError):
        metrics.bw2_uvp(torch.randn(10, 2), torch.ones(10, 2))  # zero target variance


def test_cbw2_uvp_from_moments_is_zero_at_the_truth_and_equals_the_sampled_score_on_sample_moments() -> None:
    bench = EOTBenchmark(dim=3, eps=0.5, seed=1)
    inputs = bench.test_inputs(6, seed=3)
    mean, cov = bench.conditional_moments(inputs)
    var = bench.x1_var()
    assert metrics.cbw2_uvp_from_moments(mean, cov, mean, cov, var) == pytest.approx(0.0, abs=1e-10)
    draws = bench.sample_conditional(inputs, 50, generator=gen(1)).double()
    centred = draws - draws.mean(1, keepdim=True)
    sample_cov = torch.einsum("mkd,mke->mde", centred, centred) / 49
    assert metrics.cbw2_uvp_from_moments(draws.mean(1), sample_cov, mean, cov, var) == pytest.approx(
        metrics.cbw2_uvp(draws, mean, cov, var), rel=1e-6)
    # a shift by delta in every conditional mean adds 100 |delta|^2 / var
    delta = torch.full((3,), 0.2, dtype=mean.dtype)
    assert metrics.cbw2_uvp_from_moments(mean + delta, cov, mean, cov, var) == pytest.approx(
        100 * float(delta.square().sum()) / var, rel=1e-6)
    with pytest.raises(DataError, match="pred_covs"):
        metrics.cbw2_uvp_from_moments(mean, cov[:, :2], mean, cov, var)


# ---------------------------------------------------------------- 6. determinism and validation


def test_same_seed_gives_identical_benchmark_and_samples() -> None:
    a, b, c = EOTBenchmark(3, 0.3, seed=5), EOTBenchmark(3, 0.3, seed=5), EOTBenchmark(3, 0.3, seed=6)
    for name in ("input_weights", "input_means", "input_covs", "potential_weights", "potential_means",
                 "potential_covs", "plan_covs"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.potential_means, c.potential_means)
    for left, right in zip(a.sample_plan(100, gen(1)), b.sample_plan(100, gen(1)), strict=True):
        assert torch.equal(left, right)
    assert torch.equal(a.test_inputs(50, seed=1), b.test_inputs(50, seed=1))
    assert not torch.equal(a.test_inputs(50, seed=1), a.test_inputs(50, seed=2))
    assert not torch.equal(a.test_inputs(50, seed=1), a.sample_x0(50, gen(1)))
    assert a.x1_var() == b.x1_var()


@pytest.mark.parametrize("kwargs", [
    {"dim": 0, "eps": 1.0}, {"dim": -2, "eps": 1.0}, {"dim": 1.5, "eps": 1.0}, {"dim": True, "eps": 1.0},
    {"dim": 2, "eps": 0.0}, {"dim": 2, "eps": -0.1}, {"dim": 2, "eps": float("nan")}, {"dim": 2, "eps": "a"},
    {"dim": 2, "eps": float("inf")}, {"dim": 2, "eps": 1.0, "seed": -1},
    {"dim": 2, "eps": 1.0, "n_input_components": 0}, {"dim": 2, "eps": 1.0, "n_potential_components": 0},
])
def test_invalid_configuration_raises_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EOTBenchmark(**kwargs)


def test_invalid_inputs_raise(bench2: EOTBenchmark) -> None:
    with pytest.raises(DataError):
        bench2.conditional_moments(torch.zeros(3, 5))
    with pytest.raises(DataError):
        bench2.drift(torch.full((2, 2), float("nan")), 0.5)
    with pytest.raises(DataError):
        bench2.drift(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ConfigError):
        bench2.drift(torch.zeros(2, 2), 1.5)
    with pytest.raises(ConfigError):
        bench2.sample_conditional(torch.zeros(2, 2), 0)
    with pytest.raises(ConfigError):
        bench2.sample_x0(0)


def test_sampling_in_chunks_draws_the_same_points(monkeypatch: pytest.MonkeyPatch) -> None:
    from sbridge.data import eot_benchmark

    bench = EOTBenchmark(dim=3, eps=0.5, seed=2)
    inputs = bench.test_inputs(9)
    whole = bench.sample_plan(500, generator=gen(4))
    whole_conditional = bench.sample_conditional(inputs, 4, generator=gen(5))
    monkeypatch.setattr(eot_benchmark, "_CHUNK_ELEMENTS", 7 * 5 * 3)  # 7 rows per chunk, the last one short
    chunked = bench.sample_plan(500, generator=gen(4))
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    monkeypatch.setattr(eot_benchmark, "_CHUNK_ELEMENTS", 1)  # one row per chunk
    assert torch.equal(bench.sample_conditional(inputs, 4, generator=gen(5)), whole_conditional)


# ---------------------------------------------------------------- 7. the isotropic family (the published kind)


@pytest.mark.parametrize(("dim", "eps", "std"), [(2, 0.1, 0.25), (16, 1.0, 0.5), (64, 0.1, 4.0), (64, 10.0, 1.0)])
def test_isotropic_family_has_grid_means_and_the_published_cells_covariances(dim: int, eps: float,
                                                                            std: float) -> None:
    bench = EOTBenchmark(dim, eps, seed=3, family="isotropic")
    eye = torch.eye(dim, dtype=F64)
    assert bench.input_weights.shape == (3,) and bench.potential_weights.shape == (5,)
    torch.testing.assert_close(bench.input_covs, 0.25 * eye.expand(3, -1, -1))
    torch.testing.assert_close(bench.potential_covs, std**2 * eye.expand(5, -1, -1))
    # every coordinate of the means is a permutation of the grid spacing * (j - (k - 1) / 2)
    for means, spacing in ((bench.input_means, 2.0), (bench.potential_means, 1.0)):
        k = means.shape[0]
        grid = spacing * (torch.arange(k, dtype=F64) - (k - 1) / 2)
        torch.testing.assert_close(torch.sort(means, dim=0).values, grid[:, None].expand(-1, dim))
    for weights in (bench.input_weights, bench.potential_weights):
        assert float(weights.min()) > 0 and float(weights.sum()) == pytest.approx(1.0)
    # the plan's components are isotropic: (1/eps + 1/std^2)^{-1} I
    torch.testing.assert_close(bench.plan_covs, eye.expand(5, -1, -1) / (1 / eps + 1 / std**2))
    other = EOTBenchmark(dim, eps, seed=3, family="isotropic")
    assert torch.equal(other.potential_means, bench.potential_means) and other.x1_var() == bench.x1_var()
    assert not torch.equal(EOTBenchmark(dim, eps, seed=4, family="isotropic").potential_means, bench.potential_means)


def test_isotropic_family_plan_is_a_diagonal_lightsb_potential() -> None:
    # the reason for the family: a diagonal LightSB potential holds its plan exactly (not so for rotated pairs)
    from sbridge.solvers.lightsb import MixturePotential

    bench = EOTBenchmark(16, 0.1, seed=0, family="isotropic")
    full = MixturePotential.from_gaussian_potential(bench.potential_weights, bench.potential_means,
                                                    bench.potential_covs, bench.eps)
    diagonal = MixturePotential(16, 5, bench.eps, "diagonal").double()
    with torch.no_grad():
        diagonal.r.copy_(full.r)
        diagonal.log_alpha_raw.copy_(full.log_alpha_raw)
        diagonal.log_s.copy_(torch.log(torch.diagonal(full.matrices(), dim1=-2, dim2=-1)))
    torch.testing.assert_close(diagonal.matrices(), full.matrices())
    x = bench.test_inputs(200).double()
    mean, cov = diagonal.plan_moments(x)
    true_mean, true_cov = bench.conditional_moments(x)
    torch.testing.assert_close(mean.float(), true_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cov.float(), true_cov, rtol=1e-4, atol=1e-5)
    rotated = EOTBenchmark(16, 0.1, seed=0)
    s = MixturePotential.from_gaussian_potential(rotated.potential_weights, rotated.potential_means,
                                                 rotated.potential_covs, rotated.eps).matrices().detach()
    off_diagonal = s - torch.diag_embed(torch.diagonal(s, dim1=-2, dim2=-1))
    assert float(off_diagonal.abs().max()) > 0.05  # rotated pairs need full (or low-rank) maps


@pytest.mark.parametrize(("dim", "eps"), [(3, 0.1), (16, 0.5), (64, 0.01)])
def test_isotropic_family_outside_the_published_cells_is_refused(dim: int, eps: float) -> None:
    with pytest.raises(ConfigError, match="published cells"):
        EOTBenchmark(dim, eps, family="isotropic")
    with pytest.raises(ConfigError, match="family"):
        EOTBenchmark(2, 0.1, family="round")
