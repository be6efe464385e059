"""Tests for the SGM solver: what it learns, sampling options, persistence and user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sbridge
from sbridge import SGM, SOLVERS
from sbridge.core import io
from sbridge.core.errors import ConfigError, DataError, RunDirError, SBridgeError
from sbridge.data import toy
from sbridge.metrics import samples as metrics

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN = [1.0, -1.0]
COV = [[1.0, 0.6], [0.6, 0.8]]  # correlation 0.6 / sqrt(0.8) ~ 0.67: clearly non-diagonal


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_gaussian_fit(s: torch.Tensor, mean_tol: float, cov_tol: float, corr_tol: float) -> None:
    mean, cov = torch.tensor(MEAN), torch.tensor(COV)
    s_cov = torch.cov(s.T)
    corr = s_cov[0, 1] / (s_cov[0, 0] * s_cov[1, 1]).sqrt()
    assert bool(torch.isfinite(s).all())
    assert float((s.mean(0) - mean).abs().max()) < mean_tol, s.mean(0)
    assert float((s_cov - cov).abs().max()) < cov_tol, s_cov
    assert abs(float(corr) - 0.6 / math.sqrt(0.8)) < corr_tol, corr


# ---------------------------------------------------------------- what SGM learns (trained once per module)


@pytest.fixture(scope="module")
def gaussian_sgm(single_thread: None) -> SGM:
    x = toy.sample("gaussian", 10_000, seed=0, mean=MEAN, cov=COV)
    return SGM(2, hidden=64, seed=0).fit(x, steps=1500, batch_size=256, quiet=True)


@pytest.mark.parametrize("ode, steps", [(False, 100), (True, 50)], ids=["sde", "ode"])
def test_sgm_recovers_the_mean_and_covariance_of_a_correlated_gaussian(gaussian_sgm: SGM, ode: bool,
                                                                      steps: int) -> None:
    # 4000 samples: SE of a mean ~0.016, of a covariance entry <= ~0.025, of the correlation ~0.009. Tolerances
    # are ~4 SE plus a model-error budget for a 1500-step MLP: mean 0.1, covariance entries 0.15, correlation 0.08.
    # A model that ignored the correlation (corr 0) or the scale (N(0, I)) fails every one of them.
    s = gaussian_sgm.sample(4000, steps=steps, ode=ode, seed=1)
    assert s.shape == (4000, 2) and s.dtype == torch.float32
    check_gaussian_fit(s, mean_tol=0.1, cov_tol=0.15, corr_tol=0.08)
    assert gaussian_sgm.last_nfe == (2 * steps if ode else steps)


def test_sgm_with_the_ve_process_recovers_the_gaussian() -> None:
    # Smaller check (1500 steps): same statistics, looser budget (mean 0.15, covariance 0.2, correlation 0.1) as the
    # VE reverse dynamics start from N(0, 10^2) and are stiffer to integrate with few steps.
    x = toy.sample("gaussian", 10_000, seed=0, mean=MEAN, cov=COV)
    model = SGM(2, process="ve", hidden=64, seed=0).fit(x, steps=1500, batch_size=256, quiet=True)
    assert model.reference.name == "ve" and model.reference.prior == 100.0
    for ode, steps in ((False, 200), (True, 50)):
        check_gaussian_fit(model.sample(4000, steps=steps, ode=ode, seed=1), mean_tol=0.15, cov_tol=0.2, corr_tol=0.1)


@pytest.fixture(scope="module")
def eight_gaussians() -> dict[str, torch.Tensor]:
    return {"train": toy.sample("8gaussians", 10_000, seed=0), "reference": toy.sample("8gaussians", 2000, seed=1),
            "floor": toy.sample("8gaussians", 2000, seed=2)}


@pytest.fixture(scope="module")
def eight_sgm(single_thread: None, eight_gaussians: dict[str, torch.Tensor]) -> SGM:
    return SGM(2, hidden=64, seed=0).fit(eight_gaussians["train"], steps=3000, batch_size=256, lr=2e-3, quiet=True)


@pytest.mark.parametrize("ode", [False, True], ids=["sde", "ode"])
def test_sgm_on_8gaussians_is_closer_than_blurred_data_and_far_better_than_untrained(
        eight_sgm: SGM, eight_gaussians: dict[str, torch.Tensor], ode: bool) -> None:
    """Rule: energy distance to a held-out reference below that of the data with every mode twice as wide
    (component std 0.35 -> 0.7, same centres and weights), and below 1/1000 of the untrained model's.

    The blurred baseline is what a model that finds the 8 modes but not their width would get; it sits several
    times above the noise floor (two independent data draws), so passing means resolving the modes.
    """
    reference, floor_ref = eight_gaussians["reference"], eight_gaussians["floor"]
    n = reference.shape[0]
    samples = eight_sgm.sample(n, steps=100, ode=ode, seed=1)
    result = metrics.evaluate(samples, reference, floor_ref, metrics=["energy"])["energy"]
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(3)) * math.sqrt(0.7**2 - 0.35**2)
    blurred = metrics.energy_distance(toy.sample("8gaussians", n, seed=4) + noise, reference)
    untrained = metrics.energy_distance(SGM(2, hidden=64, seed=0).sample(n, steps=100, ode=ode, seed=1), reference)
    assert blurred > 2 * result["floor"]  # the baseline is itself clearly distinguishable from the data
    assert result["value"] < blurred, (result, blurred)
    # The stated multiple of the noise floor: within 3x of what two independent data draws of this size score.
    assert result["value"] < 3 * result["floor"], result
    assert result["value"] < 1e-3 * untrained, (result, untrained)


def test_sgm_on_8gaussians_covers_every_mode(eight_sgm: SGM) -> None:
    # Assign samples to the nearest of the 8 centres: each mode must get 1/8 of the mass within +-0.05
    # (binomial SE for 4000 samples is 0.005, so this tolerates model error but not a dropped or doubled mode),
    # and almost every sample must lie within 3 component stds (3 x 0.35) of its centre.
    s = eight_sgm.sample(4000, steps=100, seed=2)
    angles = torch.arange(8) * (math.pi / 4)
    centres = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], dim=1)
    dist = torch.cdist(s, centres)
    nearest = dist.argmin(1)
    shares = torch.bincount(nearest, minlength=8).float() / s.shape[0]
    assert bool(((shares - 1 / 8).abs() < 0.05).all()), shares
    assert float((dist.min(1).values < 3 * 0.35).float().mean()) > 0.95


# ---------------------------------------------------------------- sampling options


@pytest.fixture(scope="module")
def tiny_run(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[SGM, Path]:
    run_dir = tmp_path_factory.mktemp("sgm") / "run"
    x = toy.sample("moons", 1000, seed=0)
    model = SGM(2, process={"name": "ve", "sigma_max": 5.0}, hidden=32, depth=2, time_dim=16, seed=3)
    model.fit(x, steps=30, batch_size=64, out=run_dir, quiet=True)
    return model, run_dir


@pytest.mark.parametrize("ode, method", [(False, "heun"), (True, "euler"), (True, "heun"), (True, "dopri5")])
def test_sample_return_path_shape_and_last_nfe(tiny_run: tuple[SGM, Path], ode: bool, method: str) -> None:
    model, _ = tiny_run
    steps, n = 9, 16
    path = model.sample(n, steps=steps, ode=ode, method=method, seed=5, return_path=True)
    nfe_path = model.last_nfe
    end = model.sample(n, steps=steps, ode=ode, method=method, seed=5)
    assert path.shape == (steps + 1, n, 2)
    assert bool(torch.isfinite(path).all())
    if method == "dopri5":
        torch.testing.assert_close(path[-1], end, rtol=1e-3, atol=1e-3)
        assert model.last_nfe > 0
    else:
        assert torch.equal(path[-1], end)
        expected = 2 * steps if (ode and method == "heun") else steps
        assert nfe_path == model.last_nfe == expected


def test_last_nfe_is_none_before_sampling() -> None:
    assert SGM(2, hidden=8, depth=1).last_nfe is None


def test_sampling_is_reproducible_per_seed_and_uses_no_global_rng(tiny_run: tuple[SGM, Path]) -> None:
    model, _ = tiny_run
    state = torch.random.get_rng_state()
    a, b = model.sample(32, steps=10, seed=1), model.sample(32, steps=10, seed=1)
    c = model.sample(32, steps=10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.sample(32, steps=10), model.sample(32, steps=10))  # default seed is fixed too
    assert torch.equal(torch.random.get_rng_state(), state)


def test_x_T_overrides_the_prior_draw(tiny_run: tuple[SGM, Path]) -> None:
    model, _ = tiny_run
    x_T = model.reference.prior_sample((8, 2), generator=torch.Generator().manual_seed(11))
    path = model.sample(8, steps=5, ode=True, x_T=x_T, return_path=True)
    assert torch.equal(path[0], x_T)


def test_fitting_and_construction_do_not_touch_the_global_rng() -> None:
    state = torch.random.get_rng_state()
    SGM(2, hidden=16, depth=1, seed=4).fit(toy.sample("moons", 200, seed=0), steps=3, batch_size=16, quiet=True)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_input_type_does_not_change_training() -> None:
    # A float64 numpy array, a nested list and a float32 tensor of the same values train to identical weights.
    x = toy.sample("moons", 200, seed=0)
    runs = [SGM(2, hidden=16, depth=1, seed=4).fit(data, steps=5, batch_size=16, quiet=True)
            for data in (x, x.double().numpy(), x.tolist())]
    assert state_equal(runs[0].models, runs[1].models) and state_equal(runs[0].models, runs[2].models)


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_weights_and_samples(tiny_run: tuple[SGM, Path]) -> None:
    model, run_dir = tiny_run
    assert {"config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl"} <= {
        p.name for p in run_dir.iterdir()}
    loaded = sbridge.load(run_dir)
    assert type(loaded) is SGM
    assert loaded.config() == model.config()
    assert loaded.reference.name == "ve" and loaded.reference.sigma_max == 5.0
    assert loaded.train_config == model.train_config
    assert state_equal(loaded.ema_models, model.ema_models)
    assert state_equal(loaded.models, model.models)
    assert not state_equal(loaded.ema_models, SGM.from_config(model.config()).ema_models)  # trained, not re-initialised
    for ode in (False, True):
        assert torch.equal(loaded.sample(64, steps=20, ode=ode, seed=7), model.sample(64, steps=20, ode=ode, seed=7))


def test_save_into_a_new_folder_and_load(tiny_run: tuple[SGM, Path], tmp_path: Path) -> None:
    model, _ = tiny_run
    out = model.save(tmp_path / "copy")
    assert json.loads((out / "config.json").read_text())["solver"] == model.config()
    assert state_equal(sbridge.load(out).ema_models, model.ema_models)


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize("data, error, hint", [
    (torch.zeros(10, 3), DataError, r"shape \(n, 2\)"),
    (torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), DataError, "remove or impute"),
    (torch.tensor([[0.0, float("inf")]]), DataError, "remove or impute"),
    (np.zeros((4, 5, 2)), DataError, r"samples of shape \(5, 2\).*pass data of shape \(n, 2\)"),
    (np.zeros(6), DataError, "reshape it"),
    (np.zeros((0, 2)), DataError, "at least one sample"),
    ([["a", "b"]], DataError, r"pass a float array"),
])
def test_bad_training_data_raises_a_data_error_naming_the_fix(data: object, error: type, hint: str) -> None:
    model = SGM(2, hidden=8, depth=1)
    with pytest.raises(error, match=hint) as info:
        model.fit(data, steps=1, quiet=True)
    assert isinstance(info.value, SBridgeError)


@pytest.mark.parametrize("kwargs, hint", [
    ({"n": 0}, "positive integer"),
    ({"n": -5}, "positive integer"),
    ({"n": 4, "steps": 0}, "positive integer"),
    ({"n": 4, "ode": True, "method": "rk4"}, "choose one of"),
])
def test_bad_sampling_arguments_raise_config_error(kwargs: dict, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        SGM(2, hidden=8, depth=1).sample(**kwargs)


@pytest.mark.parametrize("kwargs", [{"dim": 0}, {"dim": 2, "process": "nope"}, {"dim": 2, "seed": -1},
                                    {"dim": 2, "seed": 1.5}, {"dim": 2, "device": "tpu"}, {"dim": 2, "hidden": 0},
                                    {"dim": 2, "process": {"name": "vp", "beta_min": -1}}])
def test_bad_constructor_arguments_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SGM(**kwargs)


@pytest.mark.parametrize("kwargs, hint", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
                                          ({"bogus": 1}, "unknown option")])
def test_bad_fit_options_raise_config_error(kwargs: dict, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        SGM(2, hidden=8, depth=1).fit(toy.sample("moons", 50, seed=0), quiet=True, **kwargs)


def test_fitting_into_an_existing_run_without_resume_raises_and_keeps_it(tiny_run: tuple[SGM, Path]) -> None:
    model, run_dir = tiny_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    fresh = SGM(2, process={"name": "ve", "sigma_max": 5.0}, hidden=32, depth=2, time_dim=16, seed=3)
    with pytest.raises(RunDirError, match="--resume"):
        fresh.fit(toy.sample("moons", 100, seed=0), steps=5, out=run_dir, quiet=True)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resuming_with_different_options_raises(tiny_run: tuple[SGM, Path]) -> None:
    _, run_dir = tiny_run
    other = SGM(2, process={"name": "ve", "sigma_max": 5.0}, hidden=64, depth=2, time_dim=16, seed=3)
    with pytest.raises(RunDirError, match=r"other settings \(solver\.net\.hidden: 32 recorded, 64 now; "
                                          r"train\.batch_size: 64 recorded, 512 now\)"):
        other.fit(toy.sample("moons", 100, seed=0), steps=5, out=run_dir, resume=True, quiet=True)


def test_load_rejects_folders_that_are_not_runs(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        sbridge.load(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not an sbridge run"):
        sbridge.load(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunDirError):
        sbridge.load(tmp_path / "file.txt")


def test_load_rejects_unknown_methods_missing_weights_and_mismatched_weights(tiny_run: tuple[SGM, Path],
                                                                            tmp_path: Path) -> None:
    model, run_dir = tiny_run
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    io.write_json(unknown / "config.json", {"solver": {"method": "dsb9000", "dim": 2}})
    with pytest.raises(RunDirError, match="unknown method"):
        sbridge.load(unknown)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    io.write_json(no_weights / "config.json", {"solver": model.config(), "train": None})
    with pytest.raises(RunDirError, match="no weights"):
        sbridge.load(no_weights)
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["solver"]["net"]["hidden"] = 48
    io.write_json(mismatched / "config.json", cfg)
    (mismatched / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    with pytest.raises(RunDirError, match=r"tensor '[\w.]+' has shape \[32\] in the file but \[48\]"):
        sbridge.load(mismatched)


def test_subclassing_sgm_does_not_replace_the_registered_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOLVERS, "sgm", SOLVERS["sgm"])  # restored after the test whatever the subclass does

    class CustomSGM(SGM):
        pass

    assert SOLVERS["sgm"] is SGM
