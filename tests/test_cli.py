"""The command line end to end: train -> sample -> evaluate -> plot, config files, and every user error giving one
sentence on stderr, no traceback, and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sbridge.cli import main

SMALL = ["--steps", "60", "--n-data", "500", "--batch-size", "128", "--hidden", "32", "--depth", "2", "--quiet"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_a_complete_run(trained_run: Path) -> None:
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["solver"]["method"] == "sgm" and cfg["solver"]["net"]["hidden"] == 32
    assert cfg["data"] == {"name": "moons", "n": 500, "seed": 0}
    assert cfg["train"]["steps"] == 60
    for name in ("model.safetensors", "checkpoint.safetensors", "metrics.jsonl"):
        assert (trained_run / name).is_file()


def test_sample_writes_npy_with_requested_shape(trained_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.npy"
    code, stdout, _ = run(capsys, "sample", trained_run, "--n", 300, "--steps", 10, "--ode", "--out", out)
    assert code == 0 and "20 network evaluations" in stdout  # Heun: 2 evaluations per step
    x = np.load(out)
    assert x.shape == (300, 2) and np.isfinite(x).all()


def test_evaluate_json_reports_each_metric_with_its_floor(trained_run: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "evaluate", trained_run, "--n", 400, "--steps", 20, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert set(result["metrics"]) == {"energy", "mmd", "sliced_w2", "w2"}
    for m in result["metrics"].values():
        assert set(m) == {"value", "floor"} and m["floor"] >= 0
    assert result["nfe"] == 20 and result["n"] == 400


def test_plot_writes_pngs(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "plot", trained_run, "--n", 300, "--steps", 10)
    assert code == 0
    for name in ("samples.png", "trajectories.png", "loss.png"):
        png = trained_run / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_sets_options_and_flags_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: sgm\ndata: circles\nsteps: 40\nn_data: 300\nbatch_size: 64\nhidden: 16\ndepth: 1\n"
                   "quiet: true\nsolver:\n  process: ve\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "30", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["steps"] == 30  # the flag wins over the file
    assert saved["data"]["name"] == "circles"
    assert saved["solver"]["options"]["process"]["name"] == "ve"
    assert saved["solver"]["net"]["hidden"] == 16


def test_train_on_a_data_file_and_resume(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(400, 3)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "d.npy"), "--out", str(out), "--batch-size", "64", "--hidden", "16",
            "--quiet"]
    assert main([*args, "--steps", "20"]) == 0
    assert main([*args, "--steps", "40", "--resume"]) == 0
    assert json.loads((out / "config.json").read_text())["solver"]["shape"] == [3]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--method", "nope", "--out", "{tmp}/a"], "unknown method 'nope'"),
        (["train", "--data", "nope", "--out", "{tmp}/a"], "unknown dataset 'nope'"),
        (["train", "--steps", "0", "--out", "{tmp}/a", "--quiet"], "steps must be a positive integer"),
        (["train", "--lr", "-1", "--out", "{tmp}/a", "--quiet", "--n-data", "100"], "lr must be a positive number"),
        (["train", "--config", "{tmp}/missing.yaml"], "does not exist"),
        (["train", "--config", "{tmp}/bad.yaml"], "unknown option(s) ['colour']"),
        (["train", "--process", "xx", "--out", "{tmp}/a"], "unknown process 'xx'"),
        (["train", "--data", "{tmp}/nan.npy", "--out", "{tmp}/a"], "contains NaN or Inf"),
        (["train", "--data", "{tmp}/1d.npy", "--out", "{tmp}/a"], "needs a batch dimension"),
        (["train", "--data", "{tmp}/absent.npy", "--out", "{tmp}/a"], "does not exist"),
        (["sample", "{tmp}"], "is not an sbridge run"),
        (["evaluate", "{tmp}/nowhere"], "does not exist"),
        (["plot", "{tmp}"], "is not an sbridge run"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(argv: list[str], needle: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("colour: blue\n")
    bad = np.zeros((10, 2))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "1d.npy", np.zeros(4))
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert err.startswith("sbridge: error: ") and err.count("\n") == 1


def test_training_into_an_existing_run_needs_resume(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--data", "moons", "--out", trained_run, *SMALL)
    assert code == 2 and "--resume" in err


def test_demo_runs_end_to_end_with_few_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--out", out, "--steps", 100, "--quiet")
    assert code == 0
    assert "noise floor" in stdout and str(out / "plots" / "samples.png") in stdout
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["ode"]["ode"] is True and evaluation["sde"]["nfe"] == 100


def test_bridge_between_two_data_sets_trains_evaluates_and_plots(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bridge"
    assert run(capsys, "train", "--method", "dsbm", "--data", "moons", "--prior", "8gaussians", "--iterations", 2,
               "--steps", 40, "--n-data", 400, "--batch-size", 64, "--hidden", 16, "--depth", 1, "--quiet",
               "--out", out)[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prior"]["name"] == "8gaussians" and cfg["solver"]["generative"] is False
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 300, "--steps", 10, "--json")
    result = json.loads(stdout)
    assert code == 0 and result["data"] == "8gaussians" and result["source"] == "moons"
    assert result["displacement"]["transport"] > 0 and result["displacement"]["random_pairing"] > 0
    code, stdout, _ = run(capsys, "plot", out, "--n", 200, "--steps", 10)
    assert code == 0 and (out / "plots" / "transport.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "iteration" in r] == [1, 2]
    # one loss row per phase; between two data sets DSBM starts from the reference coupling, backward first
    assert [r["phase"] for r in rows if "loss" in r] == ["backward_1", "forward_2"]


def test_closed_form_gaussian_bridge_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gsb"
    assert run(capsys, "train", "--method", "gaussian_sb", "--data", "gaussian", "--quiet", "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 500, "--steps", 50, "--json")
    result = json.loads(stdout)
    # Generative closed-form bridge to N(0, I) from Gaussian data: samples are Gaussian data up to sampling error.
    assert code == 0 and result["metrics"]["energy"]["value"] < 5 * result["metrics"]["energy"]["floor"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--prior", "moons", "--out", "{tmp}/a"], "takes no --prior"),
        (["train", "--method", "dsbm", "--prior", "nope", "--out", "{tmp}/a"], "unknown dataset 'nope'"),
        (["train", "--method", "dsbm", "--iterations", "1", "--steps", "10", "--n-data", "50", "--quiet",
          "--out", "{tmp}/a"], "iterations must be at least 2"),
        (["train", "--method", "dsbm", "--process", "vp", "--out", "{tmp}/a", "--n-data", "50"],
         "method 'dsbm' has no option 'process'; its options are: cond, coupling_size, depth, hidden, iterations, net, "
         "sigma, sim_steps, start, time_dim."),
    ],
)
def test_bridge_user_errors_exit_2(argv: list[str], needle: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and needle in err and "Traceback" not in err


def test_generative_dsb_run_samples_on_its_own_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dsb"
    assert run(capsys, "train", "--method", "dsb", "--data", "moons", "--iterations", 1, "--steps", 20,
               "--n-data", 200, "--batch-size", 32, "--hidden", 8, "--depth", 1, "--quiet", "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "sample", out, "--n", 50, "--out", tmp_path / "s.npy")
    assert code == 0 and "40 network evaluations" in stdout  # the default 40-step DSB grid, one drift per step
    code, _, err = run(capsys, "sample", out, "--n", 50, "--steps", 7)
    assert code == 2 and "n_steps=40" in err


def test_evaluate_nll_of_the_exact_gaussian_bridge_is_the_gaussian_entropy(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # GaussianSB fitted to N(0, I_2) data: the exact NLL of fresh N(0, I) points is the entropy 0.5 log(2 pi e)
    # nats/dim, up to the fit's sampling error (n = 20000) and 4 standard errors of the 1000-point mean.
    out = tmp_path / "g"
    assert run(capsys, "train", "--method", "gaussian_sb", "--data", "gaussian", "--out", out, "--quiet")[0] == 0
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 500, "--nll", "--json")
    assert code == 0
    nll = json.loads(stdout)["nll"]
    entropy = 0.5 * np.log(2 * np.pi * np.e)
    assert nll["n"] == 1000 and abs(nll["nats_per_dim"] - entropy) < 4 * nll["se"] + 0.01, nll
    assert abs(nll["bits_per_dim"] - nll["nats_per_dim"] / np.log(2)) < 1e-9


def test_sampler_grid_and_nll_errors(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "sample", trained_run, "--n", 100, "--steps", 10, "--ode", "--grid", "edm",
                          "--out", tmp_path / "s.npy")
    assert code == 0 and np.isfinite(np.load(tmp_path / "s.npy")).all()
    code, _, err = run(capsys, "sample", trained_run, "--n", 10, "--grid", "cosine")
    assert code == 2 and "unknown time grid 'cosine'" in err and "Traceback" not in err
    bridge = tmp_path / "b"
    assert main(["train", "--method", "gaussian_sb", "--data", "moons", "--prior", "circles", "--out", str(bridge),
                 "--quiet"]) == 0
    code, _, err = run(capsys, "evaluate", bridge, "--n", 100, "--nll")
    assert code == 2 and "generative run" in err
    code, _, err = run(capsys, "evaluate", bridge, "--n", 100, "--grid", "edm")
    assert code == 2 and "own time grid" in err


def test_evaluate_nll_reports_the_path_bound_beside_the_exact_value(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # any model's expected NLL, and so its negative ELBO, is at least the data's entropy (Gibbs' inequality):
    # N(0, I_2) data, 0.5 log(2 pi e) nats/dim; a short SGM run comes close with both
    out = tmp_path / "sgm"
    assert run(capsys, "train", "--data", "gaussian", "--steps", 300, "--hidden", 32, "--depth", 2, "--quiet",
               "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 300, "--nll", "--nll-n", 400, "--json")
    assert code == 0
    nll = json.loads(stdout)["nll"]
    entropy = 0.5 * np.log(2 * np.pi * np.e)
    bound = nll["bound"]
    assert bound["nats_per_dim"] > entropy - 4 * bound["se"] and nll["nats_per_dim"] > entropy - 4 * nll["se"]
    assert bound["nats_per_dim"] < entropy + 0.3 and nll["nats_per_dim"] < entropy + 0.3, nll
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 300, "--nll", "--nll-n", 100)
    assert code == 0 and "negative ELBO" in stdout


@pytest.mark.parametrize("method, options", [("sbfbsde", ["--set", "sim_steps=5", "--set", "cache_size=64"]),
                                             ("sbvae", ["--set", "sim_steps=5", "--set", "stages=2", "--set",
                                                        "eval_n=50"])])
def test_likelihood_trained_bridges_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    method: str, options: list[str]) -> None:
    out = tmp_path / method
    assert run(capsys, "train", "--method", method, "--data", "moons", "--steps", 20, "--n-data", 300,
               "--batch-size", 32, "--hidden", 16, "--depth", 1, *options, "--quiet", "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "evaluate", out, "--n", 200, "--steps", 10, "--nll", "--nll-n", 50, "--json")
    result = json.loads(stdout)
    assert code == 0 and math.isfinite(result["nll"]["nats_per_dim"]) and math.isfinite(
        result["nll"]["bound"]["nats_per_dim"])
    assert result["metrics"]["energy"]["value"] > 0
    code, stdout, _ = run(capsys, "plot", out, "--n", 200, "--steps", 5)
    assert code == 0 and "samples.png" in stdout
    assert ("objective.png" in stdout) == (method == "sbvae")  # SB-VAE's prior loss and drift matching per stage
