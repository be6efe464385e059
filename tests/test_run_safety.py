"""Runs never lose or misreport anything: every bad or hostile input gets one sentence and exit code 2 with no
traceback, and leaves the files it touched byte-identical; the run directory is locked; resume checks what it
resumes; damaged files, oversize requests and bad data are refused before any work."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import sbridge
from sbridge.cli import main
from sbridge.core import io
from sbridge.core.errors import ConfigError, DataError, RunDirError, SBridgeError
from sbridge.training import rundir

SMALL = ["--n-data", "400", "--batch-size", "64", "--hidden", "16", "--depth", "1", "--quiet"]


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors exit from inside main, as the command would
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def digest(folder: Path) -> dict[str, str]:
    """Hash of every file of a run (the lock file holds the PID of its last writer and is left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != rundir.LOCK_FILE}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    made = {"sgm": root / "sgm", "dsbm": root / "dsbm", "gsb": root / "gsb"}
    assert main(["train", "--data", "moons", "--steps", "60", "--out", str(made["sgm"]), *SMALL]) == 0
    assert main(["train", "--method", "dsbm", "--data", "moons", "--prior", "circles", "--iterations", "2",
                 "--steps", "40", "--set", "sim_steps=5", "--out", str(made["dsbm"]), *SMALL]) == 0
    assert main(["train", "--method", "gaussian_sb", "--data", "moons", "--prior", "8gaussians", "--out",
                 str(made["gsb"]), "--quiet"]) == 0
    return made


# ---------------------------------------------------------------- the table of bad inputs
def _write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (run / name).write_bytes(data)
    return damage


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 2])
    return damage


def _torch_save(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        torch.save({"w": torch.zeros(3)}, run / name)
    return damage


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        change(cfg)
        (run / "config.json").write_text(json.dumps(cfg))
    return damage


def _sgm_checkpoint_into(run: Path) -> None:
    shutil.copy(run.parent / "sgm_source" / "checkpoint.safetensors", run / "checkpoint.safetensors")


RESUME_SGM = ["train", "--data", "moons", "--steps", "60", "--resume", *SMALL]

#: (id, run to copy, damage, argv after the command's run/out argument is filled in as {run}, words in the message)
CASES: list[tuple[str, str, Callable[[Path], None] | None, list[str], list[str]]] = [
    # nothing lost
    ("overwrite-gaussian-run", "gsb", None, ["train", "--method", "gaussian_sb", "--data", "swissroll", "--prior",
                                            "circles", "--out", "{run}", "--quiet"], ["already holds a run",
                                                                                     "--overwrite"]),
    ("overwrite-sgm-run", "sgm", None, ["train", "--data", "moons", "--steps", "60", "--out", "{run}", *SMALL],
     ["already holds a run"]),
    ("resume-other-data", "sgm", None, [*RESUME_SGM[:2], "swissroll", *RESUME_SGM[3:], "--out", "{run}"],
     ["data.name", "'moons' recorded", "'swissroll' now"]),
    ("resume-other-lr", "sgm", None, [*RESUME_SGM, "--lr", "0.01", "--out", "{run}"], ["train.lr"]),
    ("resume-other-batch", "sgm", None, ["train", "--data", "moons", "--steps", "60", "--resume", "--n-data", "400",
                                         "--batch-size", "32", "--hidden", "16", "--depth", "1", "--quiet", "--out",
                                         "{run}"], ["train.batch_size"]),
    ("resume-other-n-data", "sgm", None, ["train", "--data", "moons", "--steps", "60", "--resume", "--n-data", "300",
                                          "--batch-size", "64", "--hidden", "16", "--depth", "1", "--quiet", "--out",
                                          "{run}"], ["data.n"]),
    ("resume-fewer-steps", "sgm", None, ["train", "--data", "moons", "--steps", "30", "--resume", *SMALL, "--out",
                                         "{run}"], ["already made 60", "--steps 60 or more"]),
    ("resume-saved-only", "gsb", None, ["train", "--method", "gaussian_sb", "--data", "moons", "--prior",
                                        "8gaussians", "--resume", "--out", "{run}", "--quiet"], ["nothing to resume"]),
    ("resume-and-overwrite", "sgm", None, [*RESUME_SGM, "--overwrite", "--out", "{run}"], ["only one of them"]),
    # damaged run files
    ("config-invalid", "sgm", _write("config.json", "{not json"), ["sample", "{run}", "--n", "5"],
     ["config.json", "not valid JSON"]),
    ("config-empty", "sgm", _write("config.json", ""), ["sample", "{run}", "--n", "5"], ["config.json"]),
    ("config-list", "sgm", _write("config.json", "[1, 2]"), ["sample", "{run}", "--n", "5"], ["JSON list"]),
    ("config-no-dim", "sgm", _edit_config(lambda c: c["solver"].pop("shape")), ["sample", "{run}", "--n", "5"],
     ["config.json", "solver"]),
    ("config-bad-option", "sgm", _edit_config(lambda c: c["solver"]["options"].update(cond_drop=7)),
     ["sample", "{run}", "--n", "5"], ["config.json", "cond_drop"]),
    ("weights-truncated", "sgm", _truncate("model.safetensors"), ["sample", "{run}", "--n", "5"],
     ["model.safetensors", "could not be read"]),
    ("weights-random", "sgm", _write("model.safetensors", os.urandom(256)), ["sample", "{run}", "--n", "5"],
     ["model.safetensors"]),
    ("weights-pickle", "sgm", _write("model.safetensors", pickle.dumps({"w": [1.0]})), ["sample", "{run}", "--n", "5"],
     ["model.safetensors"]),
    ("weights-torch-save", "sgm", _torch_save("model.safetensors"), ["sample", "{run}", "--n", "5"],
     ["model.safetensors"]),
    ("checkpoint-truncated", "sgm", _truncate("checkpoint.safetensors"), [*RESUME_SGM, "--steps", "80", "--out",
                                                                         "{run}"], ["checkpoint.safetensors"]),
    ("checkpoint-random", "sgm", _write("checkpoint.safetensors", os.urandom(300)),
     [*RESUME_SGM, "--steps", "80", "--out", "{run}"], ["checkpoint.safetensors"]),
    ("checkpoint-torch-save", "sgm", _torch_save("checkpoint.safetensors"),
     [*RESUME_SGM, "--steps", "80", "--out", "{run}"], ["checkpoint.safetensors"]),
    ("dsbm-resume-from-sgm-checkpoint", "dsbm", _sgm_checkpoint_into,
     ["train", "--method", "dsbm", "--data", "moons", "--prior", "circles", "--iterations", "2", "--steps", "60",
      "--set", "sim_steps=5", "--resume", "--out", "{run}", *SMALL], ["checkpoint.safetensors", "lacks tensor"]),
    ("network-shape-mismatch", "sgm", _edit_config(lambda c: c["solver"]["net"].update(hidden=24)),
     ["sample", "{run}", "--n", "5"], ["has shape", "model built from config.json"]),
    # values
    ("seed-huge", None, None, ["train", "--seed", str(10**23), "--out", "{run}", *SMALL], ["seed", "2^62"]),
    ("device-mps", None, None, ["train", "--device", "mps", "--out", "{run}", *SMALL], ["'mps'", "not supported"]),
    ("device-meta", None, None, ["train", "--device", "meta", "--out", "{run}", *SMALL], ["'meta'"]),
    ("sample-seed-negative", "sgm", None, ["sample", "{run}", "--n", "5", "--seed", "-1"], ["seed"]),
    # oversize requests
    ("sample-n-huge", "sgm", None, ["sample", "{run}", "--n", str(10**12)], ["needs at least", "GiB", "--n"]),
    ("sample-steps-huge", "sgm", None, ["sample", "{run}", "--n", "5", "--steps", str(10**10)],
     ["needs at least", "--steps"]),
    ("n-data-huge", None, None, ["train", "--n-data", str(10**12), "--out", "{run}", "--quiet"],
     ["needs at least", "--n-data"]),
    ("batch-huge", None, None, ["train", "--batch-size", str(10**12), "--out", "{run}", "--quiet", "--steps", "5"],
     ["needs at least", "--batch-size"]),
    # messages naming the right thing
    ("eval-n-zero", None, None, ["train", "--eval-every", "10", "--eval-n", "0", "--out", "{run}", *SMALL],
     ["eval_n"]),
    ("sample-out-txt", "sgm", None, ["sample", "{run}", "--n", "5", "--out", "{run}/x.txt"], [".npy"]),
    # found by driving the CLI with 330 more hostile inputs
    ("resume-without-config", "sgm", lambda run: (run / "config.json").unlink(),
     [*RESUME_SGM, "--lr", "0.5", "--out", "{run}"], ["has no config.json", "--overwrite"]),
    ("resume-empty-folder", None, None, [*RESUME_SGM, "--out", "{run}"], ["holds no run to resume"]),
    ("config-deeply-nested", "sgm", _write("config.json", "[" * 100_000 + "]" * 100_000),
     ["sample", "{run}", "--n", "5"], ["config.json", "not valid JSON"]),
    ("sgm-config-with-a-prior", "sgm", _edit_config(lambda c: c.update(prior={"name": "moons", "n": 300,
                                                                             "seed": 500})),
     ["sample", "{run}", "--n", "5"], ["second data set", "does not transport"]),
    ("sample-bad-device", "sgm", None, ["sample", "{run}", "--n", "5", "--device", "foo"], ["unknown device 'foo'"]),
    ("set-a-training-option", None, None, ["train", "--set", "steps=5", "--out", "{run}", *SMALL],
     ["training option", "--steps"]),
    ("set-an-unknown-option", None, None, ["train", "--method", "dsbm", "--set", "foo=1", "--out", "{run}", *SMALL],
     ["no option 'foo'", "sim_steps"]),
    ("flag-and-set-twice", None, None, ["train", "--set", "hidden=8", "--out", "{run}", *SMALL], ["given twice"]),
    ("argparse-type", None, None, ["train", "--steps", "1.5", "--out", "{run}"], ["invalid int value", "--help"]),
    ("hidden-huge", None, None, ["train", "--hidden", str(10**9), "--out", "{run}", "--quiet"],
     ["needs at least", "hidden"]),
    ("iterations-huge", None, None, ["train", "--method", "dsbm", "--iterations", str(10**9), "--steps",
                                     str(2 * 10**10), "--out", "{run}", "--quiet"], ["needs at least",
                                                                                    "--iterations"]),
    ("sample-a-file", "sgm", None, ["sample", "{run}/config.json", "--n", "5"], ["is a file, not a run folder"]),
    ("dequantize-without-nll", "sgm", None, ["evaluate", "{run}", "--dequantize", "256"], ["add --nll"]),
    ("data-empty-name", None, None, ["train", "--data", "", "--out", "{run}", *SMALL], ["option data is empty"]),
    # VSDM's options (issue 10): schedule, interaction coefficient, admissible set of A
    ("vsdm-beta-order", None, None, ["train", "--method", "vsdm", "--set", "beta_min=2", "--set", "beta_max=1",
                                     "--out", "{run}", *SMALL], ["beta_max (1) must be at least beta_min (2)"]),
    ("vsdm-beta-r", None, None, ["train", "--method", "vsdm", "--set", "beta_r=-1", "--out", "{run}", *SMALL],
     ["beta_r", "beta_min = beta_max"]),
    ("vsdm-zeta", None, None, ["train", "--method", "vsdm", "--set", "zeta=1.5", "--out", "{run}", *SMALL],
     ["zeta must lie in [0, 1]"]),
    ("vsdm-d-not-positive-definite", None, None, ["train", "--method", "vsdm", "--set", "max_rate=0.7", "--out",
                                                  "{run}", *SMALL], ["D = I - 2A stays positive definite"]),
    ("vsdm-a-ema", None, None, ["train", "--method", "vsdm", "--set", "a_ema=1", "--out", "{run}", *SMALL],
     ["a_ema", "[0, 1)"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_sentence_exit_2_and_changes_no_file(case, runs: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    name, source, damage, argv, words = case
    run = tmp_path / "run"
    if source is not None:
        shutil.copytree(runs[source], run)
        shutil.copytree(runs["sgm"], tmp_path / "sgm_source")
    if damage is not None:
        damage(run)
    before = digest(run) if run.exists() else None
    code, _, err = cli(capsys, *[a.replace("{run}", str(run)) for a in argv])
    assert code == 2, (name, err)
    assert "Traceback" not in err and err.startswith("sbridge: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (name, word, err)
    if before is None:
        assert not run.exists() or not rundir.holds_run(run), f"{name} left a half-made run"
    else:
        assert digest(run) == before, f"{name} changed files of the run"


def test_overwrite_replaces_a_run(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "gsb"
    shutil.copytree(runs["gsb"], run)
    assert cli(capsys, "train", "--method", "gaussian_sb", "--data", "swissroll", "--prior", "circles", "--out", run,
               "--quiet", "--overwrite")[0] == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["name"] == "swissroll" and cfg["prior"]["name"] == "circles"


def test_resume_may_extend_the_steps_and_reports_the_true_count(runs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "sgm"
    shutil.copytree(runs["sgm"], run)
    code, out, _ = cli(capsys, "train", "--data", "moons", "--steps", "90", "--resume", *SMALL, "--out", run)
    assert code == 0 and "for 90 steps" in out
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 90
    # a finished DSBM resumed with nothing left to do reports its steps, not "closed form"
    dsbm = tmp_path / "dsbm"
    shutil.copytree(runs["dsbm"], dsbm)
    code, out, _ = cli(capsys, "train", "--method", "dsbm", "--data", "moons", "--prior", "circles", "--iterations",
                       "2", "--steps", "40", "--set", "sim_steps=5", "--resume", "--out", dsbm, *SMALL)
    assert code == 0 and "for 40 steps" in out and "closed form" not in out


def test_stale_temporary_files_are_removed_when_a_run_is_opened(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "sgm"
    shutil.copytree(runs["sgm"], run)
    stale = run / ".checkpoint.safetensors.abc123.tmp"
    stale.write_bytes(b"half a write")
    assert main(["train", "--data", "moons", "--steps", "70", "--resume", *SMALL, "--out", str(run)]) == 0
    assert rundir.temporary_files(run) == []


# ---------------------------------------------------------------- divergence
def test_a_loss_that_explodes_without_nan_warns_or_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", "moons", "--steps", "300", "--lr", "1000", *SMALL]
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "warn")
    assert code == 0 and "sbridge: warning: the loss grew" in err
    rows = [json.loads(r) for r in (tmp_path / "warn" / "metrics.jsonl").read_text().splitlines()]
    assert any("warning" in r for r in rows)
    code, _, err = cli(capsys, *argv, "--loss-growth", "stop", "--out", tmp_path / "stop")
    assert code == 2 and "training stopped" in err and "grew from" in err
    # stopped before the first checkpoint (every 1000 steps): the message says nothing was saved, and nothing was
    assert "no checkpoint had been written yet" in err
    assert not (tmp_path / "stop" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "stop" / "model.safetensors").exists()


# ---------------------------------------------------------------- bad data
def test_bad_data_files_are_refused_and_good_text_files_read(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "complex.npy", rng.normal(size=(50, 2)) + 1j)
    (tmp_path / "bytes.npy").write_bytes(os.urandom(500))
    (tmp_path / "data.dat").write_text("1 2\n3 4\n")
    np.savetxt(tmp_path / "spaces.txt", rng.normal(size=(200, 2)))
    np.save(tmp_path / "one.npy", np.ones((1, 2)))
    (tmp_path / "huge.csv").write_text("1e100,1\n2,3\n")  # finite in float64, inf in float32 (found by fuzzing)
    expected = {"complex.npy": "complex", "bytes.npy": "not a numeric .npy", "data.dat": "unsupported type",
                "huge.csv": "beyond the range of float32"}
    for name, word in expected.items():
        code, _, err = cli(capsys, "train", "--data", tmp_path / name, "--out", tmp_path / f"r_{name}", *SMALL)
        assert code == 2 and word in err and "allow_pickle" not in err and "Traceback" not in err, err
    code, _, err = cli(capsys, "train", "--method", "gaussian_sb", "--data", tmp_path / "one.npy", "--out",
                       tmp_path / "r_one", "--quiet")
    assert code == 2 and "at least 2 points" in err
    code, _, _ = cli(capsys, "train", "--data", tmp_path / "spaces.txt", "--steps", "5", "--out", tmp_path / "r_txt",
                     *SMALL[2:])
    assert code == 0
    cfg = json.loads((tmp_path / "r_txt" / "config.json").read_text())
    assert cfg["data"]["name"] == "spaces"


# ---------------------------------------------------------------- config values
@pytest.mark.parametrize("yaml_text, words", [
    ("solver: 5\n", ["'solver'", "mapping"]),
    ("solver: [1, 2]\n", ["'solver'", "mapping"]),
    ("1: 2\n", ["key 1", "not a name"]),
    ("out: 5\n", ["option out", "a string"]),
    ("resume: 'yes'\n", ["option resume", "true or false"]),
    ("steps: 2.5\n", ["option steps", "an integer"]),
    ("solver: {1: 2}\n", ["solver option name 1"]),
])
def test_bad_config_values_get_their_sentence(yaml_text: str, words: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    out = [] if yaml_text.startswith("out:") else ["--out", tmp_path / "r"]  # the flag would override the file
    code, _, err = cli(capsys, "train", "--config", tmp_path / "c.yaml", *out, "--quiet")
    assert code == 2 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the lock
def test_a_second_writer_is_refused_with_the_holders_pid_and_the_os_releases_a_dead_holder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sbridge.training import rundir; "
         "cm = rundir.locked(sys.argv[1]); cm.__enter__(); print('ready', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        code, _, err = cli(capsys, "train", "--data", "moons", "--steps", "5", "--out", run, *SMALL)
        assert code == 2 and f"being written by process {holder.pid}" in err, err
        with pytest.raises(RunDirError, match="being written"):
            sbridge.SGM(2, hidden=16).fit(torch.randn(50, 2), steps=2, out=run, quiet=True)
        assert not rundir.holds_run(run)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        holder.wait()
    assert cli(capsys, "train", "--data", "moons", "--steps", "5", "--out", run, *SMALL)[0] == 0


def test_two_concurrent_cli_trainings_on_one_folder_leave_one_intact_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sbridge", "train", "--data", "moons", "--steps", "400", "--out", str(run), *SMALL]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / rundir.LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=120)
    first_err = first.communicate(timeout=300)[1]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err, second.stderr)
    loser = second.stderr if second.returncode == 2 else first_err
    assert "being written by process" in loser or "already holds a run" in loser
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # one writer: no interleaved or repeated rows


# ---------------------------------------------------------------- killed and resumed
def test_a_killed_cli_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    argv = ["train", "--data", "moons", "--steps", "2000", "--checkpoint-every", "100", *SMALL]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sbridge", *argv, "--out", str(run)])
    deadline = time.time() + 120
    while not (run / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert io.read_tensors(run / "checkpoint.safetensors")[1]["step"] < 2000  # really killed mid-run
    assert not (run / "model.safetensors").exists()
    (run / ".model.safetensors.deadbeef.tmp").write_bytes(b"torn")  # what a write killed mid-way leaves
    assert main([*argv, "--resume", "--out", str(run)]) == 0
    assert rundir.temporary_files(run) == []
    a = sbridge.load(tmp_path / "whole").ema_models.state_dict()
    b = sbridge.load(run).ema_models.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- Python twins
def test_python_api_twins_raise_sbridge_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    x = torch.randn(100, 2)
    run = tmp_path / "sgm"
    shutil.copytree(runs["sgm"], run)
    with pytest.raises(RunDirError, match="already holds a run"):
        sbridge.SGM(2, hidden=16).fit(x, steps=2, out=run, quiet=True)
    with pytest.raises(RunDirError, match="other settings"):
        sbridge.SGM(2, net={"name": "mlp", "hidden": 16, "depth": 1}).fit(x, steps=60, out=run, resume=True,
                                                                           quiet=True, lr=0.5)
    with pytest.raises(ConfigError, match="seed"):
        sbridge.SGM(2, seed=-1)
    with pytest.raises(ConfigError, match="not supported"):
        sbridge.SGM(2, device="meta")
    with pytest.raises(ConfigError, match="needs at least"):
        sbridge.load(run).sample(10**12)
    with pytest.raises(DataError, match="complex"):
        sbridge.SGM(2).fit(torch.randn(10, 2, dtype=torch.complex64), steps=1)
    with pytest.raises(DataError, match="at least 2 points"):
        sbridge.GaussianSB(2).fit(torch.randn(1, 2))
    (run / "config.json").write_text("[]")
    with pytest.raises(RunDirError, match="JSON list"):
        sbridge.load(run)
    for err in (RunDirError, ConfigError, DataError):
        assert issubclass(err, SBridgeError)


def test_a_path_the_file_system_refuses_gets_a_sentence(runs: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for argv in (["train", "--steps", "2", "--out", blocker / "run", *SMALL],
                 ["sample", runs["sgm"], "--n", "5", "--out", blocker / "s.npy"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and "the file system refused" in err and "a_file" in err and "Traceback" not in err, err
    assert blocker.read_text() == "not a folder"


def test_resume_notices_a_data_file_whose_contents_changed_and_accepts_runs_of_older_versions(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mine.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 2)))
    argv = ["train", "--data", data, "--steps", "20", "--checkpoint-every", "10", *SMALL[2:], "--out", tmp_path / "f"]
    assert cli(capsys, *argv)[0] == 0
    np.save(data, np.random.default_rng(1).normal(size=(300, 2)))  # same shape, other numbers
    code, _, err = cli(capsys, *argv, "--resume", "--steps", "40")
    assert code == 2 and "data.sha256" in err, err
    # a run recorded before a training option existed resumes with that option at its default
    run = tmp_path / "old"
    shutil.copytree(runs["sgm"], run)
    cfg = json.loads((run / "config.json").read_text())
    for key in ("shards", "precision", "loss_growth"):
        cfg["train"].pop(key)
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli(capsys, *RESUME_SGM, "--steps", "70", "--out", run)[0] == 0


def test_files_that_are_not_sbridges_are_never_deleted(runs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "sgm"
    shutil.copytree(runs["sgm"], run)
    (run / ".notes.tmp").write_text("mine")
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "my_figure.png").write_bytes(b"mine")
    assert cli(capsys, *RESUME_SGM, "--steps", "70", "--out", run)[0] == 0
    assert cli(capsys, "train", "--data", "moons", "--steps", "20", *SMALL, "--out", run, "--overwrite")[0] == 0
    assert (run / ".notes.tmp").read_text() == "mine" and (run / "plots" / "my_figure.png").read_bytes() == b"mine"


def test_a_damaged_training_log_neither_stops_a_resume_nor_a_plot(runs: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "sgm"
    shutil.copytree(runs["sgm"], run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": "x", "phase": 5, "loss": "nan"}\n[1,2]\n5\n{"loss": null}\n{"step": 6')
    assert cli(capsys, *RESUME_SGM, "--steps", "70", "--out", run)[0] == 0
    code, _, err = cli(capsys, "plot", run, "--n", "50", "--steps", "5")
    assert code == 0 and err == "", err
    assert all(isinstance(r["step"], int) for r in io.read_jsonl(run / "metrics.jsonl"))


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nsteps: 2e1\nbatch_size: 64\nn_data: 300\nquiet: true\n")
    assert cli(capsys, "train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "r", "--hidden", "16")[0] == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["steps"] == 20
