"""Tests for sbridge.metrics.samples against closed forms, exact identities and statistical bounds with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sbridge.core.errors import ConfigError, DataError
from sbridge.metrics import samples as metrics


def normal(n: int, d: int, seed: int, shift: float | list[float] = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) + torch.as_tensor(shift, dtype=torch.float64)


def folded_normal_mean(mu: np.ndarray | float, sigma: float) -> np.ndarray | float:
    """E|Z| for Z ~ N(mu, sigma^2)."""
    return sigma * np.sqrt(2 / np.pi) * np.exp(-np.square(mu) / (2 * sigma**2)) + mu * (1 - 2 * norm.cdf(-mu / sigma))


# ---------------------------------------------------------------- energy distance and MMD


def test_energy_and_mmd_same_law_near_zero_and_much_smaller_than_shifted() -> None:
    x, x2, shifted = normal(600, 2, 0), normal(600, 2, 1), normal(600, 2, 2, shift=[1.0, 0.0])
    for metric in (metrics.energy_distance, metrics.mmd):
        same, different = metric(x, x2), metric(x, shifted)
        assert different > 0
        assert abs(same) < 0.1 * different


def test_energy_distance_matches_1d_gaussian_closed_form() -> None:
    # X ~ N(0,1), Y ~ N(mu,1): E|X-X'| = E|Y-Y'| = 2/sqrt(pi), E|X-Y| = folded-normal mean of N(mu, 2).
    mu, n = 1.0, 3000
    # The V-statistic's within terms are (n-1)/n times the unbiased ones: E[estimate] = exact + 2 E|X-X'| / n.
    exact = 2 * folded_normal_mean(mu, math.sqrt(2)) - 2 * (2 / math.sqrt(math.pi)) * (1 - 1 / n)
    estimate = metrics.energy_distance(normal(n, 1, 3), normal(n, 1, 4, shift=mu))
    # Hoeffding projection: estimate - exact ~ (2/n) sum [a(X_i) - c(X_i)] + (same for Y, equal variance by
    # symmetry) with a(x) = E|x - Y| and c(x) = E|x - X'|; its variance is computed by Gauss-Hermite quadrature.
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    h = folded_normal_mean(nodes - mu, 1.0) - folded_normal_mean(nodes, 1.0)
    var_h = float(weights @ h**2 - (weights @ h) ** 2)
    std_error = 2 * math.sqrt(var_h * 2 / n)
    assert abs(estimate - exact) < 5 * std_error


def test_mmd_matches_gaussian_closed_form_over_replicates() -> None:
    # For X ~ N(0, I_d), Y ~ N(mu, I_d) and k = exp(-|a-b|^2 / (2 h^2)):
    # E k(X,X') = (h^2/(h^2+2))^(d/2) and E k(X,Y) = (h^2/(h^2+2))^(d/2) exp(-|mu|^2 / (2 (h^2+2))).
    d, mu, bandwidths = 2, np.array([1.5, 0.0]), (0.5, 1.0, 2.0)
    n = 300
    exact = sum(2 * (h**2 / (h**2 + 2)) ** (d / 2) * (1 - math.exp(-mu @ mu / (2 * (h**2 + 2)))) for h in bandwidths)
    # V-statistic bias: each within term includes its n diagonal entries k(a, a) = 1 per bandwidth, so
    # E[estimate] = exact + 2 sum_h (1 - E k_h(X, X')) / n.
    exact += sum(2 * (1 - (h**2 / (h**2 + 2)) ** (d / 2)) / n for h in bandwidths)
    reps = [metrics.mmd(normal(n, d, 10 + r), normal(n, d, 50 + r, shift=mu.tolist()), bandwidths)
            for r in range(12)]
    # After the bias correction, the replicate mean is within a few standard errors of the closed form.
    assert abs(np.mean(reps) - exact) < 4 * np.std(reps, ddof=1) / math.sqrt(len(reps))


def test_energy_and_mmd_match_naive_full_matrix_formula_when_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = normal(70, 3, 5), normal(55, 3, 6, shift=0.3)
    dxy, dxx, dyy = torch.cdist(x, y), torch.cdist(x, x), torch.cdist(y, y)
    energy = 2 * dxy.mean() - dxx.mean() - dyy.mean()
    k = lambda dist: torch.exp(-dist**2 / 2.0)  # noqa: E731 - single bandwidth h = 1
    mmd = k(dxx).mean() + k(dyy).mean() - 2 * k(dxy).mean()
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 128)  # forces several blocks per matrix
    assert metrics.energy_distance(x, y) == pytest.approx(float(energy), rel=1e-9)
    assert metrics.mmd(x, y, bandwidths=(1.0,)) == pytest.approx(float(mmd), rel=1e-9)


def test_energy_and_mmd_are_never_negative_and_floor_scales_as_one_over_n() -> None:
    # V-statistics are distances between empirical measures: >= 0. Between two samples of one law the expected
    # energy distance is E|X-X'| (1/n + 1/m), so quadrupling n divides it by about 4.
    small = [metrics.energy_distance(normal(200, 2, 70 + r), normal(200, 2, 90 + r)) for r in range(8)]
    large = [metrics.energy_distance(normal(800, 2, 70 + r), normal(800, 2, 90 + r)) for r in range(8)]
    assert min(small + large) >= 0
    assert 2.5 < np.mean(small) / np.mean(large) < 6.0
    assert metrics.mmd(normal(100, 2, 1), normal(100, 2, 2)) >= 0


def test_mmd_rejects_bad_bandwidths_and_single_rows() -> None:
    x = normal(10, 2, 0)
    with pytest.raises(ConfigError, match="bandwidth"):
        metrics.mmd(x, x, bandwidths=(1.0, -1.0))
    with pytest.raises(ConfigError, match="bandwidths"):
        metrics.mmd(x, x, bandwidths=())
    with pytest.raises(DataError, match="at least 2"):
        metrics.energy_distance(x[:1], x)


# ---------------------------------------------------------------- Wasserstein distances


def test_w2_and_sliced_w2_equal_sorted_formula_in_1d() -> None:
    # In 1-D with equal sizes the optimal coupling matches order statistics, and sliced W2 has only +-1 directions.
    x, y = normal(300, 1, 7), normal(300, 1, 8, shift=0.5) * 2
    exact = math.sqrt(float(((x.sort(0).values - y.sort(0).values) ** 2).mean()))
    assert metrics.w2(x, y) == pytest.approx(exact, rel=1e-9)
    assert metrics.sliced_w2(x, y, n_projections=8) == pytest.approx(exact, rel=1e-9)


def test_w2_between_translated_gaussians_approaches_shift() -> None:
    a, b, n = np.array([0.0, 0.0]), np.array([4.0, 2.0]), 1500
    x, x2 = normal(n, 2, 20, shift=a.tolist()), normal(n, 2, 21, shift=a.tolist())
    y = x2 + torch.as_tensor(b - a)
    value, noise, shift = metrics.w2(x, y), metrics.w2(x, x2), float(np.linalg.norm(b - a))
    # Exact sandwich: W2 >= |mean difference| and, by the triangle inequality, W2(x, y) <= W2(x, x2) + |b - a|.
    assert value >= float((x.mean(0) - y.mean(0)).norm()) - 1e-9
    assert value <= noise + shift + 1e-9
    # Hence |W2 - |b-a|| <= W2(x, x2), the sampling bias. For 2-D samples it shrinks like C sqrt(log n / n)
    # (sqrt(log n / n) = 0.07 at n = 1500); requiring it below 15% of |b-a| = 4.5 leaves room for C up to ~9.
    assert abs(value - shift) <= noise < 0.15 * shift


def test_w2_subsamples_deterministically_and_handles_unequal_sizes() -> None:
    x, y = normal(400, 2, 30), normal(250, 2, 31, shift=1.0)
    assert metrics.w2(x, y, max_samples=100, seed=3) == metrics.w2(x, y, max_samples=100, seed=3)
    # Duplicating every point leaves the empirical measure unchanged.
    assert metrics.w2(y, torch.cat([y, y])) == pytest.approx(0.0, abs=1e-6)
    assert metrics.sliced_w2(y, torch.cat([y, y])) == pytest.approx(0.0, abs=1e-6)


def test_sliced_w2_self_zero_and_translation_matches_average_projection() -> None:
    d, n_proj = 2, 256
    x, v = normal(500, d, 40), torch.tensor([3.0, -1.0], dtype=torch.float64)
    assert metrics.sliced_w2(x, x) == pytest.approx(0.0, abs=1e-9)
    # For a translation, W2^2 along theta is exactly <theta, v>^2, with mean |v|^2 / d over the sphere. In 2-D
    # <theta, v>^2 = |v|^2 cos^2(phi) has variance |v|^4 / 8, so the Monte-Carlo mean has SE |v|^2 / sqrt(8 K).
    sw2_sq = metrics.sliced_w2(x, x + v, n_projections=n_proj, seed=1) ** 2
    v_sq = float(v @ v)
    assert abs(sw2_sq - v_sq / d) < 5 * v_sq / math.sqrt(8 * n_proj)


# ---------------------------------------------------------------- validation and evaluate


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_mismatched_dimensions_raise(name: str) -> None:
    with pytest.raises(DataError, match="features"):
        metrics.METRICS[name](normal(10, 2, 0), normal(10, 3, 1))


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_nan_input_raises(name: str) -> None:
    x = normal(10, 2, 0)
    x[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        metrics.METRICS[name](x, normal(10, 2, 1))


def test_evaluate_reports_value_and_floor_for_every_metric() -> None:
    reference, floor_ref, samples = normal(300, 2, 60), normal(300, 2, 61), normal(300, 2, 62, shift=[1.5, 0.0])
    result = metrics.evaluate(samples.numpy(), reference, floor_ref)
    assert set(result) == set(metrics.METRICS)
    for name, scores in result.items():
        assert set(scores) == {"value", "floor"}
        assert scores["floor"] < scores["value"], name
    subset = metrics.evaluate(samples, reference, floor_ref, metrics=["energy"])
    assert list(subset) == ["energy"]
    assert subset["energy"] == pytest.approx(result["energy"])


def test_evaluate_rejects_row_mismatch_and_unknown_metric() -> None:
    reference, samples = normal(50, 2, 0), normal(50, 2, 1)
    with pytest.raises(DataError, match="same number of rows"):
        metrics.evaluate(samples, reference, normal(40, 2, 2))
    with pytest.raises(ConfigError, match="kl"):
        metrics.evaluate(samples, reference, normal(50, 2, 2), metrics=["kl"])


# ---------------------------------------------------------------- path metrics
def _half_circles(k: int, n: int = 3) -> torch.Tensor:
    """``n`` copies of the half circle (cos pi s, sin pi s), s in [0, 1], at ``k + 1`` uniform points."""
    s = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    arc = torch.stack([torch.cos(math.pi * s), torch.sin(math.pi * s)], dim=1)
    return arc[:, None, :].expand(k + 1, n, 2).clone()


def test_path_metrics_of_straight_paths_are_their_closed_forms() -> None:
    # straight lines from random starts to random ends at constant speed over t in [0, 2]: straightness 1, gap 0,
    # kinetic energy |x1 - x0|^2 / T; at non-uniform speed the chord/arc ratio stays 1 while the gap grows.
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(50, 2, generator=g, dtype=torch.float64), torch.randn(50, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 2, 11, dtype=torch.float64)
    paths = x0 + (t / 2)[:, None, None] * (x1 - x0)
    assert metrics.path_straightness(paths) == pytest.approx(1.0, abs=1e-12)
    assert metrics.straightness_gap(paths, t) == pytest.approx(0.0, abs=1e-20)
    assert metrics.kinetic_energy(paths, t) == pytest.approx(float(((x1 - x0) ** 2).sum(1).mean()) / 2, rel=1e-12)
    uneven = x0 + ((t / 2) ** 2)[:, None, None] * (x1 - x0)
    assert metrics.path_straightness(uneven) == pytest.approx(1.0, abs=1e-12)
    assert metrics.straightness_gap(uneven, t) > 0.05


def test_path_metrics_of_a_half_circle_converge_to_their_closed_forms() -> None:
    # chord/arc -> 2/pi, gap -> pi^2 - 4, kinetic energy over t in [0, 1] -> pi^2, with discretisation error O(1/K^2)
    errors = []
    for k in (50, 100):
        paths = _half_circles(k)
        errors.append((abs(metrics.path_straightness(paths) - 2 / math.pi),
                       abs(metrics.straightness_gap(paths) - (math.pi**2 - 4)),
                       abs(metrics.kinetic_energy(paths) - math.pi**2)))
    assert max(errors[1]) < 2e-3
    assert all(e1 < e0 / 3 for e0, e1 in zip(*errors, strict=True))  # second-order convergence


def test_path_metrics_reject_bad_paths() -> None:
    with pytest.raises(DataError, match="steps \\+ 1, n"):
        metrics.path_straightness(torch.zeros(5, 2))
    with pytest.raises(DataError, match="distinct values"):
        metrics.kinetic_energy(torch.zeros(3, 4, 2), times=[0.0, 0.0, 1.0])
    with pytest.raises(DataError, match="NaN"):
        metrics.straightness_gap(torch.full((3, 4, 2), float("nan")))


# ---- Gaussian-fit KL ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("d", "n"), [(3, 10), (5, 50), (40, 400)])
def test_gaussian_fit_kl_bias_is_the_mean_kl_of_fits_to_the_truth(d: int, n: int) -> None:
    """The Wishart closed form against 4,000 replicate fits of n draws of N(0, I): within 4 standard errors."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(4000, n, d, generator=g, dtype=torch.float64)
    mean, centred = x.mean(1), x - x.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / (n - 1)
    logdet = 2.0 * torch.log(torch.linalg.cholesky(cov).diagonal(dim1=1, dim2=2)).sum(-1)
    kl = 0.5 * (cov.diagonal(dim1=1, dim2=2).sum(-1) + (mean**2).sum(-1) - d - logdet)
    bias = metrics.gaussian_fit_kl_bias(n, d)
    assert abs(float(kl.mean()) - bias) < 4 * float(kl.std()) / 4000**0.5
    assert bias == pytest.approx(d * (d + 3) / (4 * n), rel=0.25)  # its leading order


def test_gaussian_fit_kl_debiased_is_near_zero_for_the_truth_and_recovers_a_known_kl() -> None:
    """d = 40, n = 10^5: the truth scores |KL| < 1e-3 debiased (about 5 standard errors; the raw floor is 4.3e-3); a
    mean shift delta and a scale change s of one coordinate give KL = |delta|^2 / 2 + (s^2 - 1 - 2 log s) / 2 within
    the same margin."""
    d, n = 40, 100_000
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    cov = torch.diag(a**2)
    raw = metrics.gaussian_fit_kl(z * a, torch.zeros(d), cov, debias=False)
    assert raw > 3e-3
    assert abs(metrics.gaussian_fit_kl(z * a, torch.zeros(d), cov)) < 1e-3
    shift, s = 0.1, 1.1
    y = z * a
    y[:, 0] = y[:, 0] * s + shift * a[0]
    expected = 0.5 * shift**2 + 0.5 * (s**2 - 1 - 2 * math.log(s))
    assert metrics.gaussian_fit_kl(y, torch.zeros(d), cov) == pytest.approx(expected, abs=1e-3)


def test_gaussian_fit_kl_rejects_too_few_rows() -> None:
    with pytest.raises(DataError, match="more than 3 rows"):
        metrics.gaussian_fit_kl(torch.randn(3, 3), torch.zeros(3), torch.eye(3))
    with pytest.raises(DataError, match="more than 4 samples"):
        metrics.gaussian_fit_kl_bias(4, 4)
