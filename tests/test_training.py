"""Tests for the shared training loop: exact resume, NaN guard, atomic checkpoints, metrics, config and EMA."""

from __future__ import annotations

import copy
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sbridge
from sbridge import SGM
from sbridge.core import io
from sbridge.core.errors import ConfigError, RunDirError, TrainingDivergedError
from sbridge.data import toy
from sbridge.training.trainer import Phase, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("single_thread")

MODEL = {"hidden": 32, "depth": 2, "time_dim": 16, "seed": 5}
N = 22  # interruption step: not a multiple of log_every or checkpoint_every, so the interrupt handler saves it
FIT = {"steps": 2 * N, "batch_size": 64, "log_every": 10, "quiet": True}


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return toy.sample("8gaussians", 1000, seed=0)


class Interrupt:
    """Callback raising KeyboardInterrupt (as Ctrl-C would) once training reaches ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def runs(single_thread: None, data: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run A: uninterrupted 2N steps. Run B: interrupted at step N (a copy of the folder is kept), then resumed
    by a fresh model with the same arguments."""
    root = tmp_path_factory.mktemp("training")
    a = SGM(2, **MODEL).fit(data, out=root / "a", **FIT)
    with pytest.raises(KeyboardInterrupt):
        SGM(2, **MODEL).fit(data, out=root / "b", checkpoint_every=5, callbacks=(Interrupt(N),), **FIT)
    shutil.copytree(root / "b", root / "b_interrupted")
    b = SGM(2, **MODEL).fit(data, out=root / "b", resume=True, checkpoint_every=5, **FIT)
    return {"a": a, "b": b, "dir_a": root / "a", "dir_b": root / "b", "dir_interrupted": root / "b_interrupted"}


# ---------------------------------------------------------------- exact resume


def test_interrupted_and_resumed_run_ends_with_exactly_the_same_weights(runs: dict) -> None:
    a, b = runs["a"], runs["b"]
    assert state_equal(a.models.state_dict(), b.models.state_dict())
    assert state_equal(a.ema_models.state_dict(), b.ema_models.state_dict())
    assert a.last_loss == b.last_loss
    # The final checkpoints agree on everything, optimizer moments and generator state included.
    ckpt_a, meta_a = io.read_tensors(runs["dir_a"] / "checkpoint.safetensors")
    ckpt_b, meta_b = io.read_tensors(runs["dir_b"] / "checkpoint.safetensors")
    assert any(k.startswith("optim.") for k in ckpt_a) and "rng" in ckpt_a
    assert state_equal(ckpt_a, ckpt_b)
    assert meta_a == meta_b and meta_a["step"] == 2 * N


def test_the_interrupt_checkpoint_holds_step_N_and_differs_from_the_end(runs: dict) -> None:
    tensors, meta = io.read_tensors(runs["dir_interrupted"] / "checkpoint.safetensors")
    assert meta["step"] == N
    assert finite(tensors)
    assert not (runs["dir_interrupted"] / "model.safetensors").exists()  # the run did not finish
    final = runs["b"].ema_models.state_dict()
    assert not state_equal(io.unprefixed("ema", tensors), final)  # resuming really trained further


def test_load_of_an_interrupted_run_falls_back_to_its_checkpoint(runs: dict) -> None:
    tensors, _ = io.read_tensors(runs["dir_interrupted"] / "checkpoint.safetensors")
    loaded = sbridge.load(runs["dir_interrupted"])
    assert state_equal(loaded.ema_models.state_dict(), io.unprefixed("ema", tensors))
    assert state_equal(loaded.models.state_dict(), io.unprefixed("model", tensors))


def test_resuming_a_finished_run_changes_nothing(runs: dict, data: torch.Tensor, tmp_path: Path) -> None:
    run_dir = tmp_path / "a"
    shutil.copytree(runs["dir_a"], run_dir)
    again = SGM(2, **MODEL).fit(data, out=run_dir, resume=True, **FIT)
    assert state_equal(again.models.state_dict(), runs["a"].models.state_dict())
    assert state_equal(again.ema_models.state_dict(), runs["a"].ema_models.state_dict())


def test_resume_without_a_checkpoint_trains_from_scratch(runs: dict, data: torch.Tensor, tmp_path: Path) -> None:
    # a run killed before its first checkpoint holds only its config: resuming starts it again, and nothing is lost
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.json").write_bytes((runs["dir_a"] / "config.json").read_bytes())
    fresh = SGM(2, **MODEL).fit(data, out=tmp_path / "new", resume=True, **FIT)
    assert state_equal(fresh.ema_models.state_dict(), runs["a"].ema_models.state_dict())


def test_resume_refuses_a_folder_without_a_run_or_without_its_config(runs: dict, data: torch.Tensor,
                                                                     tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="holds no run to resume"):
        SGM(2, **MODEL).fit(data, out=tmp_path / "typo", resume=True, **FIT)
    shutil.copytree(runs["dir_a"], tmp_path / "noconfig")
    (tmp_path / "noconfig" / "config.json").unlink()
    with pytest.raises(RunDirError, match="has no config.json"):
        SGM(2, **MODEL).fit(data, out=tmp_path / "noconfig", resume=True, lr=0.5, **FIT)


class Crash:
    """Callback raising a hard error (not KeyboardInterrupt: no checkpoint is written on the way out)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, loss: float) -> None:
        if step == self.at:
            raise RuntimeError("power cut")


def test_resume_after_a_crash_restarts_from_the_last_periodic_checkpoint(runs: dict, data: torch.Tensor,
                                                                         tmp_path: Path) -> None:
    # Checkpoints every 7 steps, log rows every 5: a crash at step 32 leaves checkpoint 28 and rows up to step 30.
    # Resuming drops the rows logged after the checkpoint (no duplicated steps) and ends exactly like run A.
    run_dir, options = tmp_path / "crash", {**FIT, "checkpoint_every": 7, "log_every": 5}
    with pytest.raises(RuntimeError, match="power cut"):
        SGM(2, **MODEL).fit(data, out=run_dir, callbacks=(Crash(32),), **options)
    assert io.read_tensors(run_dir / "checkpoint.safetensors")[1]["step"] == 28
    assert [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl")][-1] == 30
    resumed = SGM(2, **MODEL).fit(data, out=run_dir, resume=True, **options)
    assert state_equal(resumed.models.state_dict(), runs["a"].models.state_dict())
    assert state_equal(resumed.ema_models.state_dict(), runs["a"].ema_models.state_dict())
    assert [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl")] == [*range(5, 2 * N, 5), 2 * N]


def wrap_loss(model: SGM, wrapper: Callable[[Any], Any]) -> None:
    """Replace the loss object of every phase of ``model``'s fits by ``wrapper(loss)``."""
    phases = model.phases

    def patched(data: Any, config: TrainConfig) -> list:
        out = phases(data, config)
        for phase in out:
            phase.loss = wrapper(phase.loss)
        return out

    model.phases = patched  # type: ignore[method-assign]


class InterruptInsideLoss:
    """Make the loss raise KeyboardInterrupt on call ``at`` after drawing its minibatch and noise, as a Ctrl-C
    during the forward pass (where most of a step's time goes) would."""

    def __init__(self, loss: Any, at: int) -> None:
        self.loss, self.at, self.calls = loss, at, 0

    def __call__(self, models: Any, batch: Any, generator: torch.Generator) -> Any:
        self.calls += 1
        value = self.loss(models, batch, generator)
        if self.calls == self.at:
            raise KeyboardInterrupt
        return value


def test_interrupt_inside_a_step_also_resumes_exactly(runs: dict, data: torch.Tensor, tmp_path: Path) -> None:
    model = SGM(2, **MODEL)
    wrap_loss(model, lambda loss: InterruptInsideLoss(loss, N + 1))
    with pytest.raises(KeyboardInterrupt):
        model.fit(data, out=tmp_path / "c", checkpoint_every=5, **FIT)
    assert io.read_tensors(tmp_path / "c" / "checkpoint.safetensors")[1]["step"] == N
    resumed = SGM(2, **MODEL).fit(data, out=tmp_path / "c", resume=True, checkpoint_every=5, **FIT)
    assert state_equal(resumed.models.state_dict(), runs["a"].models.state_dict())


# ---------------------------------------------------------------- metrics and files


def test_metrics_jsonl_has_one_finite_loss_row_per_log_interval(runs: dict) -> None:
    rows = io.read_jsonl(runs["dir_a"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 44]  # every log_every steps and at the end
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert rows[-1]["loss"] != rows[0]["loss"]


def test_metrics_of_the_resumed_run_match_outside_the_interrupted_window(runs: dict) -> None:
    # Rows are truncated to the checkpoint step on resume: no duplicates, steps increasing. Rows whose averaging
    # window does not contain the interruption (steps 21..30) are bit-identical to the uninterrupted run's.
    rows_a = {r["step"]: r["loss"] for r in io.read_jsonl(runs["dir_a"] / "metrics.jsonl")}
    steps_b = [r["step"] for r in io.read_jsonl(runs["dir_b"] / "metrics.jsonl")]
    rows_b = {r["step"]: r["loss"] for r in io.read_jsonl(runs["dir_b"] / "metrics.jsonl")}
    assert steps_b == sorted(set(steps_b)) and steps_b[-1] == 2 * N
    for step in (10, 20, 40, 44):
        assert rows_b[step] == rows_a[step]


def test_run_folders_hold_no_leftover_temporary_files(runs: dict) -> None:
    for key in ("dir_a", "dir_b", "dir_interrupted"):
        names = sorted(p.name for p in runs[key].iterdir())
        assert not [n for n in names if n.endswith(".tmp") or (n.startswith(".") and n != ".lock")], names
        assert {"config.json", "checkpoint.safetensors", "metrics.jsonl"} <= set(names)


def test_a_failed_write_keeps_the_previous_file_and_no_temporary_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.safetensors"
    io.write_tensors(path, {"w": torch.ones(3)}, {"step": 1})

    def torn_write(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a file")  # a crash halfway through writing
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_tensors(path, {"w": torch.zeros(3)}, {"step": 2})
    tensors, meta = io.read_tensors(path)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


def test_callbacks_see_every_step_once_with_its_loss(data: torch.Tensor) -> None:
    seen: list[tuple[int, float]] = []
    model = SGM(2, **MODEL).fit(data, steps=7, batch_size=32, quiet=True, callbacks=(lambda s, v: seen.append((s, v)),))
    assert [s for s, _ in seen] == list(range(1, 8))
    assert all(math.isfinite(v) for _, v in seen) and seen[-1][1] == model.last_loss


# ---------------------------------------------------------------- NaN / Inf guard


def make_loss_diverge(model: SGM, at: int, bad: float) -> None:
    """Make the ``at``-th loss evaluation (training step ``at``) return ``bad``."""

    def wrapper(loss: Any) -> Any:
        calls = [0]

        def wrapped(models: Any, batch: Any, generator: torch.Generator) -> Any:
            calls[0] += 1
            value, terms = loss(models, batch, generator)
            return (value * bad if calls[0] >= at else value), terms

        return wrapped

    wrap_loss(model, wrapper)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(data: torch.Tensor, tmp_path: Path,
                                                                     bad: float) -> None:
    k, every = 13, 5
    model = SGM(2, **MODEL)
    make_loss_diverge(model, k, bad)
    with pytest.raises(TrainingDivergedError) as info:
        model.fit(data, steps=30, batch_size=64, checkpoint_every=every, out=tmp_path / "run", quiet=True)
    message = str(info.value)
    assert re.search(rf"\bstep {k}\b", message), message
    assert "step 10" in message and "--lr" in message  # names the kept checkpoint and the fix
    tensors, meta = io.read_tensors(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == (k - 1) // every * every == 10
    assert finite(tensors)
    # The checkpoint is exactly the state after 10 good steps (same seed, same minibatches).
    reference = SGM(2, **MODEL).fit(data, steps=10, batch_size=64, quiet=True)
    assert state_equal(io.unprefixed("model", tensors), reference.models.state_dict())
    assert state_equal(io.unprefixed("ema", tensors), reference.ema_models.state_dict())
    # The bad step did not touch the weights in memory either.
    assert finite(model.models.state_dict()) and finite(model.ema_models.state_dict())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_divergence_before_any_checkpoint_says_so(data: torch.Tensor) -> None:
    model = SGM(2, **MODEL)
    make_loss_diverge(model, 3, float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"step 3\b.*last good step"):
        model.fit(data, steps=10, batch_size=64, quiet=True)


# ---------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize("options", [
    {"steps": 0}, {"steps": -5}, {"steps": 2.5}, {"steps": True}, {"batch_size": 0}, {"lr": -1.0}, {"lr": 0.0},
    {"lr": float("nan")}, {"ema_decay": 1.5}, {"ema_decay": 1.0}, {"ema_decay": -0.1}, {"ema_decay": float("nan")},
    {"grad_clip": -1.0}, {"checkpoint_every": 0}, {"log_every": -1}, {"eval_every": -1}, {"eval_every": 1.5},
])
def test_train_config_rejects_invalid_values(options: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**options)


def test_train_config_rejects_unknown_options_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"\['bogus'\].*batch_size"):
        TrainConfig.from_dict({"steps": 10, "bogus": 1})


def test_train_config_round_trips_through_a_dict() -> None:
    cfg = TrainConfig(steps=7, batch_size=3, lr=0.01, ema_decay=0.5, eval_every=2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(lr="0.01").lr == 0.01  # numeric strings (e.g. '1e-3' read from YAML) become floats


@pytest.mark.parametrize("value", ["abc", None])
def test_train_config_rejects_non_numeric_ema_decay_with_config_error(value: object) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(ema_decay=value)  # type: ignore[arg-type]


def test_train_config_stores_a_numeric_string_ema_decay_as_float(data: torch.Tensor) -> None:
    assert isinstance(TrainConfig(ema_decay="0.99").ema_decay, float)  # type: ignore[arg-type]
    SGM(2, **MODEL).fit(data, steps=2, batch_size=16, quiet=True, ema_decay="0.99")


# ---------------------------------------------------------------- EMA with warm-up


def test_ema_decay_schedule_warms_up_to_the_configured_decay() -> None:
    trainer = _trainer(lambda models, batch, g: (torch.zeros(()), {}), TrainConfig(ema_decay=0.999))
    decays = [trainer.ema_decay(k) for k in range(20_000)]
    assert decays[0] == pytest.approx(1 / 10) and decays[1] == pytest.approx(2 / 11)
    assert all(d1 <= d2 for d1, d2 in zip(decays, decays[1:], strict=False))
    assert decays[-1] == 0.999 and max(decays) == 0.999


@pytest.mark.parametrize("decay", [0.999, 0.0])
def test_ema_follows_its_update_rule_from_the_first_step(decay: float) -> None:
    # ema_k = d_k ema_{k-1} + (1 - d_k) net_k with d_k = trainer.ema_decay(k - 1) and ema_0 = the initial weights.
    # With d_0 = min(decay, 1/10), the first average keeps only 1/10 of the untrained weights (none when decay=0).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Linear(3, 2).double()
    ema = copy.deepcopy(net).requires_grad_(False)

    def loss_fn(models: Any, batch: Any, generator: torch.Generator) -> Any:
        x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
        return ((models["m"](x) - 1.0) ** 2).mean(), {}

    expected = [p.detach().clone() for p in net.parameters()]
    seen: list[int] = []

    def check(step: int, loss: float) -> None:
        nonlocal expected
        d = min(decay, step / (9 + step))  # trainer.ema_decay(step - 1)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, net.parameters(), strict=True)]
        for e, q in zip(expected, ema.parameters(), strict=True):
            torch.testing.assert_close(q, e, rtol=1e-12, atol=1e-14)
        seen.append(step)

    trainer = _trainer(loss_fn, TrainConfig(steps=3, ema_decay=decay, quiet=True), net=net, ema=ema, steps=3,
                       callbacks=(check,))
    assert [trainer.ema_decay(k) for k in range(3)] == [min(decay, (1 + k) / (10 + k)) for k in range(3)]
    trainer.run()
    assert seen == [1, 2, 3]
    if decay == 0.0:
        assert state_equal(ema.state_dict(), net.state_dict())
    else:
        assert not state_equal(ema.state_dict(), net.state_dict())


def test_resume_from_a_checkpoint_that_does_not_fit_the_model_raises_run_dir_error(data: torch.Tensor,
                                                                                   tmp_path: Path) -> None:
    # config.json matches the model but the checkpoint holds another network's tensors (e.g. copied by hand).
    SGM(2, **MODEL).fit(data, steps=2, batch_size=16, out=tmp_path / "run", quiet=True)
    SGM(2, **{**MODEL, "hidden": 16}).fit(data, steps=2, batch_size=16, out=tmp_path / "other", quiet=True)
    shutil.copy(tmp_path / "other" / "checkpoint.safetensors", tmp_path / "run" / "checkpoint.safetensors")
    with pytest.raises(RunDirError, match=r"checkpoint\.safetensors' does not fit this model: tensor '[\w.]+' has "
                                          r"shape \[16\] in the file but \[32\]"):
        SGM(2, **MODEL).fit(data, steps=4, batch_size=16, out=tmp_path / "run", resume=True, quiet=True)


def test_cosine_schedule_decays_from_lr_to_one_hundredth_and_is_a_function_of_the_step() -> None:
    cfg = TrainConfig(steps=1000, lr=2e-3, lr_schedule="cosine")
    trainer = _trainer(lambda models, batch, g: (torch.zeros(()), {}), cfg, steps=cfg.steps)
    phase = trainer.phases[0]
    lrs = [trainer.lr_at(phase, k) for k in range(cfg.steps)]
    assert lrs[0] == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(2e-5, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert lrs[500] == pytest.approx((2e-3 + 2e-5) / 2)  # half-way the cosine is at the mid-point
    constant = _trainer(lambda models, batch, g: (torch.zeros(()), {}), TrainConfig(lr=0.1))
    assert {constant.lr_at(constant.phases[0], k) for k in range(0, 5000, 97)} == {0.1}


def test_unknown_lr_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


class _NoData:
    def batch(self, batch_size: int, generator: torch.Generator) -> dict:
        return {}


def _trainer(loss: Any, cfg: TrainConfig, *, net: nn.Module | None = None, ema: nn.Module | None = None,
             steps: int = 5000, callbacks: tuple = ()) -> Trainer:
    """A one-phase trainer of a single model ``m`` on a loss that draws its own data."""
    net = net if net is not None else nn.Linear(1, 1)
    ema = ema if ema is not None else copy.deepcopy(net)
    phase = Phase("p", steps, loss, _NoData(), ("m",))
    return Trainer(nn.ModuleDict({"m": net}), nn.ModuleDict({"m": ema}), [phase], cfg,
                   generator=torch.Generator().manual_seed(1), callbacks=callbacks)


def test_logsumexp_and_softmax_match_torchs_over_hundreds_of_nats() -> None:
    from sbridge.core.tensors import logsumexp, softmax

    x = (torch.randn(64, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 300
         ).requires_grad_()
    ours = logsumexp(x, dim=1)
    assert torch.allclose(ours, torch.logsumexp(x, dim=1), rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert torch.allclose(grad, torch.softmax(x, dim=1), atol=1e-30)
    assert torch.allclose(softmax(x, dim=1), torch.softmax(x, dim=1), atol=1e-30)
    assert torch.equal(logsumexp(torch.full((2, 3), -math.inf), dim=1), torch.full((2,), -math.inf))


def test_grad_clip_zero_turns_clipping_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda params, norm: calls.append(norm) or real(params, norm))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    for clip, expected in ((0.0, 0), (2.5, 5)):
        calls.clear()
        sbridge.SGM(2, device="cpu").fit(x, steps=5, batch_size=32, grad_clip=clip, quiet=True)
        assert len(calls) == expected and all(c == clip for c in calls)
