"""Tests for sbridge.data.toy: shapes, determinism, scaling, Gaussian moments and validation errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbridge.core.errors import ConfigError
from sbridge.data import toy

TWO_D = [name for name in toy.DATASETS if name != "gaussian"]


@pytest.mark.parametrize("name", toy.DATASETS)
def test_every_dataset_is_finite_float32_n_by_2(name: str) -> None:
    x = toy.sample(name, 257, seed=3)
    assert x.shape == (257, 2)
    assert x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("name", TWO_D)
def test_two_d_sets_stay_in_the_usual_box(name: str) -> None:
    # Every construction keeps its support (before noise) inside [-4, 4]^2; noise of std <= 0.35 cannot push
    # a clear majority of points past |5|.
    x = toy.sample(name, 2000, seed=0)
    assert float((x.abs() > 5.0).float().mean()) < 0.01
    assert float(x.std(dim=0).min()) > 0.5


@pytest.mark.parametrize("name", toy.DATASETS)
def test_same_seed_identical_and_different_seed_different(name: str) -> None:
    a = toy.sample(name, 300, seed=11)
    b = toy.sample(name, 300, seed=11)
    c = toy.sample(name, 300, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_leaves_global_rng_state_untouched() -> None:
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    toy.sample("moons", 100, seed=5)
    toy.sample("gaussian", 100, seed=5, dim=3)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_scale_is_per_axis_multiplier_of_the_same_draw() -> None:
    base = toy.sample("pinwheel", 500, seed=2)
    scaled = toy.sample("pinwheel", 500, seed=2, scale=(2.0, 0.5))
    torch.testing.assert_close(scaled, base * torch.tensor([2.0, 0.5]))
    uniform = toy.sample("pinwheel", 500, seed=2, scale=3.0)
    torch.testing.assert_close(uniform, base * 3.0)


def test_scale_multiplies_per_axis_std_statistically() -> None:
    # Standard normal scaled by f has std f; the sample std has standard error about f / sqrt(2 n).
    n, factors = 20000, np.array([3.0, 0.25])
    x = toy.sample("gaussian", n, seed=7, scale=factors.tolist()).double().numpy()
    std = x.std(axis=0, ddof=1)
    assert np.all(np.abs(std - factors) < 5 * factors / np.sqrt(2 * n))


@pytest.mark.parametrize("bad", [(1.0, 2.0, 3.0), [], (1.0, -1.0), 0.0, float("nan")])
def test_bad_scale_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="scale"):
        toy.sample("moons", 10, scale=bad)


def test_gaussian_defaults_to_standard_normal_in_dim() -> None:
    x = toy.sample("gaussian", 4000, seed=1, dim=5).double()
    assert x.shape == (4000, 5)
    # Mean of each coordinate has standard error 1 / sqrt(n).
    assert float(x.mean(0).abs().max()) < 5 / np.sqrt(4000)


def test_gaussian_mean_and_cov_match_within_standard_errors() -> None:
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]])
    n = 20000
    x = toy.sample("gaussian", n, seed=4, mean=mean, cov=cov).double().numpy()
    mean_se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * mean_se)
    # For a Gaussian, Var(X_i X_j) (centred) = S_ii S_jj + S_ij^2, giving the standard error of each cov entry.
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(np.cov(x, rowvar=False) - cov) < 5 * cov_se)


def test_non_positive_definite_cov_raises() -> None:
    with pytest.raises(ConfigError, match="positive definite"):
        toy.sample("gaussian", 10, cov=[[1.0, 2.0], [2.0, 1.0]])


def test_non_symmetric_cov_raises() -> None:
    with pytest.raises(ConfigError, match="symmetric"):
        toy.sample("gaussian", 10, cov=[[1.0, 0.5], [0.0, 1.0]])


def test_gaussian_dimension_mismatch_raises() -> None:
    with pytest.raises(ConfigError, match="disagree"):
        toy.sample("gaussian", 10, mean=[0.0, 0.0, 0.0], cov=np.eye(2))
    with pytest.raises(ConfigError, match="disagree"):
        toy.sample("gaussian", 10, mean=[0.0, 0.0], dim=3)


def test_gaussian_options_rejected_for_other_sets() -> None:
    with pytest.raises(ConfigError, match="gaussian"):
        toy.sample("moons", 10, dim=3)


def test_unknown_name_raises_with_name_in_message() -> None:
    with pytest.raises(ConfigError, match="donut"):
        toy.sample("donut", 10)
    with pytest.raises(ConfigError, match="donut"):
        toy.describe("donut")


@pytest.mark.parametrize("bad_n", [0, -3, 2.5, True])
def test_n_must_be_positive_int(bad_n: object) -> None:
    with pytest.raises(ConfigError, match="n must be"):
        toy.sample("moons", bad_n)


def test_checkerboard_points_lie_on_one_colour() -> None:
    x = toy.sample("checkerboard", 4000, seed=9).double().numpy()
    assert np.all(np.abs(x) <= 4.0)
    cells = np.floor(x / 2.0).astype(int)
    parity = cells.sum(axis=1) % 2
    assert np.all(parity == parity[0])
    # All 8 squares of that colour are visited (each gets ~1/8 of the points).
    assert len({tuple(c) for c in cells}) == 8


def test_describe_is_one_line_for_every_dataset() -> None:
    for name in toy.DATASETS:
        text = toy.describe(name)
        assert text and "\n" not in text
