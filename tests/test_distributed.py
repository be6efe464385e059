"""Data-parallel training on torch.distributed (gloo, two processes started by torch.multiprocessing.spawn with a
file:// rendezvous: no ports). Each worker writes what it saw to a JSON file the test reads back."""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sbridge
from sbridge.core import io
from sbridge.core.errors import SBridgeError
from sbridge.data import toy
from sbridge.nets.mlp import TimeMLP

MODEL = {"net": {"name": "mlp", "hidden": 32, "depth": 2}, "seed": 0, "device": "cpu"}
FIT = {"batch_size": 64, "lr": 2e-3, "quiet": True, "log_every": 10, "checkpoint_every": 10}


def data() -> torch.Tensor:
    return toy.sample("moons", 600, seed=0)


def make(method: str) -> sbridge.Solver:
    if method == "sgm":
        return sbridge.SGM(2, **MODEL)
    return sbridge.DSBM(2, sigma=1.0, iterations=2, sim_steps=10, **MODEL)


def fit_args(method: str) -> dict:
    prior = toy.sample("circles", 600, seed=1) if method == "dsbm" else None
    return {"prior": prior, **FIT}


def _stop_at(step: int):
    def callback(s: int, loss: float) -> None:
        if s == step:
            raise KeyboardInterrupt
    return callback


class NanAfter(nn.Module):
    """A time MLP whose output turns NaN from its 26th training call on — only on rank ``rank`` when distributed
    (``rank=None``: on every process)."""

    def __init__(self, rank: int | None = None) -> None:
        super().__init__()
        self.net = TimeMLP(2, hidden=16, depth=1)
        self.calls, self.rank = 0, rank

    def forward(self, x, t, cond=None):
        out = self.net(x, t, cond)
        if self.training:
            self.calls += 1
            here = self.rank is None or (dist.is_initialized() and dist.get_rank() == self.rank)
            if here and self.calls > 25:
                out = out * float("nan")
        return out


def _task(name: str, rank: int, out: Path) -> dict:
    x = data()
    if name in ("sgm", "dsbm"):
        model = make(name).fit(x, steps=40, out=out / "run", **fit_args(name), shards=2)
        return {"steps": model.steps_done}
    if name.startswith("interrupt_"):
        method = name.split("_")[1]
        try:
            make(method).fit(x, steps=40, out=out / "run", callbacks=(_stop_at(25),), **fit_args(method), shards=2)
        except KeyboardInterrupt:
            pass
        return {}
    if name.startswith("resume_"):
        method = name.split("_")[1]
        model = make(method).fit(x, steps=40, out=out / "run", resume=True, **fit_args(method), shards=2)
        return {"steps": model.steps_done}
    if name == "die":
        def die(step: int, loss: float) -> None:
            if step == 15 and rank == 1:
                os._exit(3)  # a crash with no clean-up: its peer must notice and stop with a sentence
        started = time.time()
        try:
            sbridge.SGM(2, **MODEL).fit(x, steps=400, out=out / "run", callbacks=(die,), **FIT)
        except SBridgeError as exc:
            return {"error": str(exc), "kind": type(exc).__name__, "seconds": time.time() - started}
        return {"error": None}
    if name == "sample":
        from sbridge.runs.scoring import sample
        x, _ = sample(out / "model", 40, steps=20, device="cpu")
        return {"x": x.tolist()}
    if name == "nan":
        try:
            sbridge.SGM(2, net=NanAfter(rank=1), seed=0, device="cpu").fit(x, steps=40, out=out / "run", **FIT)
        except SBridgeError as exc:
            return {"error": str(exc), "kind": type(exc).__name__}
        return {"error": None}
    raise ValueError(name)


def _worker(rank: int, world: int, init_file: str, name: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _task(name, rank, Path(out))
    except Exception:  # report instead of dying silently, so the test shows the cause
        result = {"crash": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    result["gloo_threads_left"] = _gloo_threads()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (Linux: /proc/self/task/*/comm)."""
    tasks = Path("/proc/self/task")
    names = [p.joinpath("comm").read_text().strip() for p in tasks.iterdir()] if tasks.is_dir() else []
    return [n for n in names if n.startswith(("gloo", "pt_gloo"))]


def spawn(name: str, out: Path, world: int = 2) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    fd, init_file = tempfile.mkstemp(prefix="sbridge_dist_", dir=out)
    os.close(fd)
    os.unlink(init_file)  # the rendezvous file must not exist yet
    mp.spawn(_worker, args=(world, init_file, name, str(out)), nprocs=world, join=True)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for r in results:
        assert "crash" not in r, r["crash"]
    return results


def ema_weights(run: Path) -> dict[str, torch.Tensor]:
    return sbridge.load(run).ema_models.state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = ema_weights(a), ema_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-5, msg=k)


@pytest.mark.parametrize("method", ["sgm", "dsbm"])
def test_two_processes_match_one_process_on_the_same_shards(method: str, tmp_path: Path) -> None:
    # Two processes with B/2 each (shard 0 and shard 1) end with the weights of one process drawing the same two
    # shards of B/2 in turn: DDP's averaged gradient is the gradient of the whole batch. DSBM's phase-2 coupling is
    # simulated in chunks shared out over the processes and gathered.
    results = spawn(method, tmp_path / "two")
    assert [r["steps"] for r in results] == [40, 40]
    make(method).fit(data(), steps=40, out=tmp_path / "one", **fit_args(method), shards=2)
    assert_same_weights(tmp_path / "two" / "run", tmp_path / "one")
    # ... and genuinely differs from a one-shard run (the comparison can fail)
    make(method).fit(data(), steps=40, out=tmp_path / "plain", **fit_args(method))
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "plain", tmp_path / "one")


def test_rank_zero_alone_writes(tmp_path: Path) -> None:
    results = spawn("sgm", tmp_path)
    # destroying the process group ends gloo's threads (none is left to abort the process at interpreter exit)
    assert [r["gloo_threads_left"] for r in results] == [[], []]
    run = tmp_path / "run"
    rows = io.read_jsonl(run / "metrics.jsonl")
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [10, 20, 30, 40]  # one row per logged step, not one per process
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.safetensors", "config.json",
                                                     "metrics.jsonl", "model.safetensors"]
    assert int((run / ".lock").read_text()) != os.getpid()  # written by a spawned rank, not the test process


@pytest.mark.parametrize("method", ["sgm", "dsbm"])
def test_an_interrupted_two_process_run_resumes_exactly_on_two_or_one_process(method: str, tmp_path: Path) -> None:
    spawn(method, tmp_path / "whole")
    spawn(f"interrupt_{method}", tmp_path / "cut")
    meta = io.read_tensors(tmp_path / "cut" / "run" / "checkpoint.safetensors")[1]
    assert meta["step"] == 25 and meta["shards"] == 2
    # the checkpoint also serves a one-process resume: copy it before resuming on two processes
    (tmp_path / "cut1").mkdir()
    for f in (tmp_path / "cut" / "run").iterdir():
        if f.is_file() and f.name != ".lock":
            (tmp_path / "cut1" / f.name).write_bytes(f.read_bytes())
    assert [r["steps"] for r in spawn(f"resume_{method}", tmp_path / "cut")] == [40, 40]
    assert_same_weights(tmp_path / "cut" / "run", tmp_path / "whole" / "run", atol=0)
    one = make(method).fit(data(), steps=40, out=tmp_path / "cut1", resume=True, **fit_args(method), shards=2)
    assert one.steps_done == 40
    assert_same_weights(tmp_path / "cut1", tmp_path / "whole" / "run", atol=1e-6)


@pytest.mark.parametrize("method", ["sgm", "gaussian"])
def test_a_two_process_sample_gathers_the_one_process_draw_and_a_distinct_share(method: str, tmp_path: Path) -> None:
    # Rank 0 draws with the seed a single process uses (a bridge's prior and noise streams included), rank 1 with a
    # seed of its own; both processes receive the whole sample in rank order.
    if method == "sgm":
        sbridge.SGM(2, **MODEL).fit(data(), steps=20, out=tmp_path / "model", **FIT)
    else:
        sbridge.GaussianSB(2, seed=0, device="cpu").fit(data(), out=tmp_path / "model", quiet=True)
    from sbridge.runs.scoring import sample
    single, _ = sample(tmp_path / "model", 20, steps=20, device="cpu")
    results = spawn("sample", tmp_path)
    gathered = [torch.tensor(r["x"]) for r in results]
    assert gathered[0].shape == (40, 2) and torch.equal(gathered[0], gathered[1])
    torch.testing.assert_close(gathered[0][:20], single, atol=1e-6, rtol=0)
    assert (gathered[0][20:] - single).abs().min() > 1e-4  # rank 1's share is not a repeat of rank 0's


def test_a_nan_on_one_rank_stops_both_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    results = spawn("nan", tmp_path)
    for r in results:
        assert r["kind"] == "TrainingDivergedError", r
        assert "training stopped at step 26" in r["error"] and "step 20" in r["error"], r
    meta = io.read_tensors(tmp_path / "run" / "checkpoint.safetensors")[1]
    assert meta["step"] == 20
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_shards_must_divide_the_batch_and_be_a_multiple_of_the_processes() -> None:
    with pytest.raises(SBridgeError, match="divisible by the number of shards"):
        sbridge.SGM(2, **MODEL).fit(data(), steps=2, batch_size=63, shards=2, quiet=True)


def test_bf16_autocast_runs_on_cpu_and_the_loss_falls() -> None:
    # The noise-prediction loss starts near E|eps|^2 = 2 (two dimensions); under bf16 it falls like under fp32.
    bf16 = sbridge.SGM(2, **MODEL).fit(data(), steps=300, batch_size=128, lr=3e-3, precision="bf16", quiet=True)
    fp32 = sbridge.SGM(2, **MODEL).fit(data(), steps=300, batch_size=128, lr=3e-3, quiet=True)
    assert bf16.last_loss < 1.2 and abs(bf16.last_loss - fp32.last_loss) < 0.3, (bf16.last_loss, fp32.last_loss)


# ---------------------------------------------------------------- the deferred (CUDA) path, exercised on CPU
def test_the_deferred_path_reads_losses_every_few_steps_with_the_same_result(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA the trainer reads the loss back only at log, checkpoint and phase-end steps; forced on here, it
    # gives the weights and the log of the per-step path, and still stops on a NaN with the last good checkpoint.
    eager = sbridge.SGM(2, **MODEL).fit(data(), steps=40, out=tmp_path / "eager", **FIT)
    monkeypatch.setattr(sbridge.training.trainer.Trainer, "DEFER_ON", ("cpu", "cuda"))
    deferred = sbridge.SGM(2, **MODEL).fit(data(), steps=40, out=tmp_path / "deferred", **FIT)
    assert_same_weights(tmp_path / "eager", tmp_path / "deferred", atol=0)
    assert deferred.last_loss == eager.last_loss
    assert io.read_jsonl(tmp_path / "eager" / "metrics.jsonl") == io.read_jsonl(tmp_path / "deferred" / "metrics.jsonl")
    with pytest.raises(SBridgeError, match="training stopped at step 26.*step 20"):
        sbridge.SGM(2, net=NanAfter(), seed=0, device="cpu").fit(data(), steps=40, out=tmp_path / "nan", **FIT)
    assert io.read_tensors(tmp_path / "nan" / "checkpoint.safetensors")[1]["step"] == 20


def test_a_dead_rank_makes_the_other_stop_with_a_sentence_in_bounded_time(tmp_path: Path) -> None:
    fd, init_file = tempfile.mkstemp(prefix="sbridge_dist_", dir=tmp_path)
    os.close(fd)
    os.unlink(init_file)
    ctx = mp.start_processes(_worker, args=(2, init_file, "die", str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=180)
    assert [p.exitcode for p in ctx.processes] == [0, 3]
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert result.get("kind") == "PeerError", result
    assert "another process of this distributed run stopped" in result["error"] and result["seconds"] < 150
    meta = io.read_tensors(tmp_path / "run" / "checkpoint.safetensors")[1]
    assert meta["step"] == 10  # the last checkpoint before the crash is kept


def test_dsb_with_two_shards_in_one_process_resumes_exactly(tmp_path: Path) -> None:
    # DSB's cache refreshes every cache_refresh *steps*, however many shards a process draws per step.
    x, prior = data(), toy.sample("circles", 600, seed=1)
    opts = {"net": MODEL["net"], "seed": 0, "device": "cpu", "iterations": 1, "n_steps": 10, "cache_size": 200,
            "cache_refresh": 7}
    fit = {**FIT, "prior": prior, "shards": 2}
    sbridge.DSB(2, **opts).fit(x, steps=40, out=tmp_path / "whole", **fit)
    with pytest.raises(KeyboardInterrupt):
        sbridge.DSB(2, **opts).fit(x, steps=40, out=tmp_path / "cut", callbacks=(_stop_at(13),), **fit)
    sbridge.DSB(2, **opts).fit(x, steps=40, out=tmp_path / "cut", resume=True, **fit)
    assert_same_weights(tmp_path / "cut", tmp_path / "whole", atol=0)
