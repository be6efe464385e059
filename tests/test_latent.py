"""Latent bridges and images (issue 12): autoencoders, LatentBridge runs (save, load, exact resume, a killed run),
the classifier Fréchet distance and KID (closed form, floor, noise, blur), a latent SGM on digits near the floor,
class-conditional sampling, the CLI's image options and errors."""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import sbridge
from sbridge.cli import main
from sbridge.core import io
from sbridge.core.errors import ConfigError
from sbridge.data import images
from sbridge.metrics.images import ImageMetrics, frechet_distance, kernel_distance, train_classifier
from sbridge.runs.datasets import _reference_and_floor
from sbridge.runs.scoring import drawn_labels
from sbridge.solvers.capabilities import CapabilityError

pytestmark = pytest.mark.usefixtures("single_thread")
DIGITS = {"name": "digits", "kind": "images", "classes": None, "data_path": None, "seed": 0, "n": 1197}


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- autoencoders
@pytest.mark.parametrize("net,shape", [("mlp", (1, 8, 8)), ({"name": "conv", "channels": 8}, (1, 16, 16))])
def test_autoencoder_reconstruction_error_falls_and_decodes_into_the_unit_range(net: object, shape: tuple) -> None:
    if shape == (1, 8, 8):
        x = images.digits("train")[0]
    else:  # blurred blobs: a structured image set of another size, for the convolutional pair
        g = torch.Generator().manual_seed(0)
        x = F.avg_pool2d(F.interpolate(torch.rand(600, 1, 4, 4, generator=g), size=16, mode="bilinear"), 3, 1, 1)
    ae = sbridge.Autoencoder(shape=shape, latent_dim=6, net=net, device="cpu")
    before = ae.reconstruction_error(x)
    ae.fit(x, steps=300, batch_size=128, quiet=True)
    after = ae.reconstruction_error(x)
    assert after < 0.3 * before, (before, after)
    decoded = ae.decode(torch.randn(50, 6) * 3)
    assert decoded.shape == (50, *shape) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    assert ae.encode(x[:7]).shape == (7, 6)


def test_autoencoder_errors() -> None:
    with pytest.raises(ConfigError, match="convolutional autoencoder needs images"):
        sbridge.Autoencoder(dim=5, net="conv")
    with pytest.raises(ConfigError, match="not conditional"):
        sbridge.Autoencoder(shape=(1, 8, 8), cond={"kind": "label", "classes": 10})
    with pytest.raises(ConfigError, match="dim=4"):
        sbridge.LatentBridge(sbridge.Autoencoder(shape=(1, 8, 8), latent_dim=4), sbridge.SGM(dim=3))


# ---------------------------------------------------------------- latent runs
@pytest.fixture(scope="module")
def digits_train(single_thread: None) -> tuple[torch.Tensor, torch.Tensor]:
    return images.digits("train")


def small_latent(seed: int = 0) -> sbridge.LatentBridge:
    ae = sbridge.Autoencoder(shape=(1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": 64}, seed=seed,
                             device="cpu")
    return sbridge.LatentBridge(ae, sbridge.SGM(dim=4, hidden=32, depth=2, seed=seed, device="cpu",
                                                cond={"kind": "label", "classes": 10}))


def test_latent_run_saves_loads_and_resumes_exactly(digits_train: tuple, tmp_path: Path) -> None:
    x, y = digits_train
    opts = {"autoencoder_steps": 60, "batch_size": 64, "quiet": True, "checkpoint_every": 20}
    whole = small_latent().fit(x, cond=y, steps=80, out=tmp_path / "whole", **opts)
    samples = whole.sample(20, cond=torch.arange(20) % 10, seed=5)
    assert samples.shape == (20, 1, 8, 8) and 0 <= float(samples.min()) and float(samples.max()) <= 1
    back = sbridge.load(tmp_path / "whole", device="cpu")
    assert isinstance(back, sbridge.LatentBridge) and back.latent_dim == 4
    assert torch.equal(back.sample(20, cond=torch.arange(20) % 10, seed=5), samples)
    # stopped after 40 latent steps, then resumed to 80: the same weights as one run of 80
    part = small_latent().fit(x, cond=y, steps=40, out=tmp_path / "part", **opts)
    assert part.steps_done == 40
    resumed = small_latent().fit(x, cond=y, steps=80, out=tmp_path / "part", resume=True, **opts)
    a, b = whole.solver.ema_models.state_dict(), resumed.solver.ema_models.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(sbridge.SBridgeError, match="already holds a run"):
        small_latent().fit(x, cond=y, steps=10, out=tmp_path / "whole", **opts)


def test_latent_log_prob_is_the_solvers_density_of_the_codes(digits_train: tuple) -> None:
    x, y = digits_train
    lb = small_latent()
    lb.solver = sbridge.SGM(dim=4, hidden=16, depth=1, device="cpu")
    lb.fit(x[:300], steps=30, autoencoder_steps=30, batch_size=64, quiet=True)
    codes = lb.autoencoder.encode(x[:5])
    z = (codes - lb.latent_mean) / lb.latent_std
    expected = lb.solver.log_prob(z) - lb.latent_std.log().sum()  # change of variables of the standardisation
    assert torch.allclose(lb.log_prob(x[:5]), expected, atol=1e-4)
    lb.solver = sbridge.SchrodingerFollmer(dim=4, case="F", device="cpu")  # no likelihood: nor has the latent run
    assert not lb.capabilities().log_prob
    with pytest.raises(CapabilityError, match="latent follmer.*likelihoods"):
        lb.log_prob(x[:5])


def test_a_latent_run_killed_in_the_autoencoder_stage_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    argv = ["train", "--data", "digits", "--latent-dim", "4", "--ae-steps", "1500", "--steps", "60",
            "--checkpoint-every", "50", "--batch-size", "64", "--hidden", "16", "--depth", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sbridge", *argv, "--out", str(run)])
    deadline = time.time() + 120
    while not (run / "autoencoder" / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "autoencoder" / "model.safetensors").exists()  # really killed in stage 1
    assert main([*argv, "--resume", "--out", str(run)]) == 0
    a, b = sbridge.load(tmp_path / "whole", device="cpu"), sbridge.load(run, device="cpu")
    for ma, mb in ((a.autoencoder.ema_models, b.autoencoder.ema_models), (a.solver.ema_models, b.solver.ema_models)):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- image metrics
def test_frechet_distance_matches_the_gaussian_closed_form_and_kid_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 1.0, 2.0], [1.0, 2.0, 0.5], size=(200_000, 3))
    b = rng.normal([0.5, 1.0, 2.0], [2.0, 2.0, 1.0], size=(200_000, 3))
    exact = 0.25 + (1 - 2) ** 2 + 0 + (0.5 - 1) ** 2  # |dm|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 for diagonal covs
    assert math.isclose(frechet_distance(a, b), exact, rel_tol=0.02)
    same = kernel_distance(a[:4000], a[4000:8000], subsets=20, subset_size=500)
    other = kernel_distance(a[:4000], b[:4000], subsets=20, subset_size=500)
    assert abs(same) < 0.05 * other


@pytest.fixture(scope="module")
def digit_metrics(single_thread: None) -> ImageMetrics:
    return ImageMetrics("digits")


def test_the_classifier_is_accurate_and_deterministic(digit_metrics: ImageMetrics) -> None:
    assert digit_metrics.accuracy > 0.93
    again, accuracy = train_classifier("digits")
    assert accuracy == digit_metrics.accuracy
    cached = digit_metrics.classifier.state_dict()
    assert all(torch.equal(cached[k], v) for k, v in again.state_dict().items())


def test_frechet_is_near_its_floor_for_held_out_images_and_large_for_noise_and_blur(
        digit_metrics: ImageMetrics) -> None:
    reference, floor_sample = _reference_and_floor(DIGITS, 300)
    floor = digit_metrics.compare(floor_sample, reference)["frechet"]["value"]
    other_split, _ = _reference_and_floor({**DIGITS, "seed": 7}, 300)  # another draw of held-out images
    held_out = digit_metrics.compare(other_split, reference)["frechet"]["value"]
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(floor_sample, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert held_out < 2 * floor
    assert digit_metrics.compare(noise, reference)["frechet"]["value"] > 20 * floor
    assert digit_metrics.compare(blurred, reference)["frechet"]["value"] > 5 * floor
    custom = ImageMetrics("digits", features=lambda x: x.flatten(1))  # a user's extractor: same code, its features
    assert custom.compare(noise, reference)["frechet"]["value"] > custom.compare(floor_sample, reference)[
        "frechet"]["value"]


# ---------------------------------------------------------------- the CLI on images
def test_cli_latent_sgm_on_digits_is_near_the_floor_and_follows_its_labels(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ae, lat = tmp_path / "ae", tmp_path / "lat"
    code, _, err = cli(capsys, "train", "--method", "autoencoder", "--data", "digits", "--latent-dim", "8",
                       "--steps", "1500", "--batch-size", "128", "--out", ae, "--quiet")
    assert code == 0, err
    code, out, _ = cli(capsys, "evaluate", ae, "--json")
    mse = json.loads(out)["reconstruction_mse"]
    assert mse["held_out"] < 0.03
    code, _, err = cli(capsys, "train", "--data", "digits", "--latent", ae, "--class-cond", "--set", "cond_drop=0.1",
                       "--steps", "2000", "--batch-size", "256", "--out", lat, "--quiet")
    assert code == 0, err
    code, out, err = cli(capsys, "evaluate", lat, "--n", "300", "--json")
    result = json.loads(out)
    fd = result["metrics"]["frechet"]
    assert fd["value"] < 3 * fd["floor"], fd  # measured: ~1.0x the floor (pixel SGM of the same budget: ~1.4x)
    assert result["label_accuracy"] > 0.8
    code, out, err = cli(capsys, "evaluate", lat, "--n", "300", "--label", "3")
    assert code == 0 and "classifier trained on digits" in out and "not FIDs" in out, err
    code, out, err = cli(capsys, "plot", lat, "--steps", "20")
    assert code == 0, err
    for name in ("samples", "trajectories", "reconstructions", "interpolations", "loss"):
        assert (lat / "plots" / f"{name}.png").is_file()
    pretrained, reused = sbridge.load(ae).ema_models.state_dict(), sbridge.load(lat).autoencoder.ema_models.state_dict()
    assert all(torch.equal(pretrained[k], reused[k]) for k in pretrained)  # --latent reuses it, never retrains it
    code, _, err = cli(capsys, "sample", ae, "--n", "4")
    assert code == 2 and "neither samples" in err
    code, _, err = cli(capsys, "evaluate", ae, "--nll")
    assert code == 2 and "reconstruction error only" in err
    code, _, err = cli(capsys, "train", "--data", "digits", "--latent-dim", "4", "--resume", "--out", ae, "--quiet")
    assert code == 2 and "not a latent one" in err  # a resume never writes a latent run over another run
    code, _, err = cli(capsys, "sample", lat, "--n", "4", "--label", "11")
    assert code == 2 and "0..9" in err
    assert io.read_run_config(lat)["solver"]["method"] == "latent"


@pytest.mark.parametrize("argv,message", [
    (["--data", "moons", "--class-cond"], "image data sets"),
    (["--data", "digits", "--data-path", "/tmp"], "Fashion-MNIST"),
    (["--data", "digits", "--classes", "1,x"], "--classes"),
    (["--data", "digits", "--classes", "3,12"], "labels 0-9"),
    (["--data", "digits", "--latent", "somewhere", "--latent-dim", "4"], "only one of them"),
    (["--data", "digits", "--method", "dsbm", "--prior", "moons", "--latent-dim", "4"], "latent"),
    (["--data", "digits", "--method", "autoencoder", "--class-cond"], "not conditional"),
    (["--data", "fashion-mnist", "--data-path", "/nonexistent"], "Fashion-MNIST was not found"),
    (["--data", "moons", "--method", "autoencoder"], "decodes into [0, 1]"),
    (["--data", "moons", "--latent-dim", "2"], "decodes into [0, 1]"),
])
def test_cli_image_option_errors(argv: list[str], message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "train", *argv, "--steps", "2", "--out", tmp_path / "r", "--quiet")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_pixel_sgm_on_images_and_its_label_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "train", "--data", "digits", "--classes", "0-2", "--steps", "20", "--batch-size", "32",
                       "--set", "net={name: unet, channels: 8, channel_mults: [1, 2]}", "--out", tmp_path / "p",
                       "--quiet")
    assert code == 0, err
    cfg = io.read_run_config(tmp_path / "p")
    assert cfg["data"]["classes"] == [0, 1, 2] and cfg["solver"]["shape"] == [1, 8, 8]
    assert cfg["data"]["n"] == int(sum((images.digits("train")[1] == c).sum() for c in (0, 1, 2)))
    code, _, err = cli(capsys, "evaluate", tmp_path / "p", "--n", "50", "--guidance", "1")
    assert code == 2 and "class-conditional" in err
    code, _, err = cli(capsys, "train", "--data", "digits", "--classes", "3,5", "--class-cond", "--steps", "4",
                       "--batch-size", "16", "--set", "net={name: mlp, hidden: 8, depth: 1}", "--out",
                       tmp_path / "c", "--quiet")
    assert code == 0, err
    model = sbridge.load(tmp_path / "c")
    assert drawn_labels(model, tmp_path / "c", 5).tolist() == [3, 5, 3, 5, 3]  # only the trained classes
    code, _, err = cli(capsys, "sample", tmp_path / "c", "--n", "4", "--label", "4")
    assert code == 2 and "3, 5" in err


def test_image_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "demo", "--images", "--steps", "300", "--out", tmp_path / "demo", "--quiet")
    assert code == 0, err
    result = json.loads((tmp_path / "demo" / "evaluation.json").read_text())
    fd = result["sde"]["metrics"]["frechet"]
    assert 0 < fd["floor"] and math.isfinite(fd["value"]) and "not FID" in out
    assert (tmp_path / "demo" / "plots" / "samples.png").is_file()
    code, _, err = cli(capsys, "demo", "--data", "fashion-mnist", "--out", tmp_path / "x")
    assert code == 2 and "--images" in err


def test_a_users_own_encoder_and_decoder(tmp_path: Path) -> None:
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    dec = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 8, 8)))
    ae = sbridge.Autoencoder(shape=(1, 8, 8), latent_dim=3, net={"encoder": enc, "decoder": dec}, device="cpu")
    x = images.digits("test")[0]
    before = ae.reconstruction_error(x)
    ae.fit(x, steps=100, batch_size=64, quiet=True, out=tmp_path / "own")
    assert ae.reconstruction_error(x) < before
    with pytest.raises(sbridge.SBridgeError, match="custom network"):
        sbridge.load(tmp_path / "own")
    back = sbridge.load(tmp_path / "own", net={"encoder": copy.deepcopy(enc), "decoder": copy.deepcopy(dec)})
    assert torch.allclose(back.encode(x[:5]), ae.encode(x[:5]))
    with pytest.raises(ConfigError, match="two networks"):
        sbridge.Autoencoder(shape=(1, 8, 8), net=enc)
