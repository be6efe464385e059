"""docs/architecture.md's worked solver, run as written: a new method in one block of code learns, round-trips
through a run directory and trains from the command line without any other change."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sbridge
from sbridge.cli import main
from sbridge.core.errors import ConfigError
from sbridge.solvers.base import SOLVERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def straight_flow():
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/architecture.md lost its worked example"
    namespace: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    yield namespace["StraightFlow"]
    SOLVERS.pop("straight_flow", None)


def test_the_documented_solver_learns_a_gaussian(straight_flow, tmp_path: Path) -> None:
    # Data N((3, -2), diag(0.5^2, 1.5^2)): 2000 ODE samples match the mean within 0.15 and each std within 15 %.
    g = torch.Generator().manual_seed(0)
    std = torch.tensor([0.5, 1.5])
    x = torch.tensor([3.0, -2.0]) + std * torch.randn(8000, 2, generator=g)
    model = straight_flow(2, net={"name": "mlp", "hidden": 64})
    model.fit(x, steps=1500, batch_size=256, lr=2e-3, quiet=True, out=tmp_path / "sf")
    y = model.sample(2000, steps=20)
    assert bool(((y.mean(0) - torch.tensor([3.0, -2.0])).abs() < 0.15).all()), y.mean(0)
    assert bool(((y.std(0) / std - 1).abs() < 0.15).all()), y.std(0)
    loaded = sbridge.load(tmp_path / "sf")
    assert type(loaded) is straight_flow
    torch.testing.assert_close(loaded.sample(100, steps=5, seed=3), model.sample(100, steps=5, seed=3))
    with pytest.raises(ConfigError, match="ODE only"):
        model.sample(10, ode=False)
    caps = model.capabilities()
    assert caps.sample and caps.samplers == ("ode",) and not caps.transport and not caps.log_prob
    with pytest.raises(ConfigError, match="does not transport"):
        model.transport(x[:5])
    with pytest.raises(ConfigError, match="does not give exact likelihoods"):
        model.log_prob(x[:5])


def test_the_documented_solver_trains_and_samples_from_the_cli(straight_flow, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--method", "straight_flow", "--data", "gaussian", "--steps", "300", "--n-data", "2000",
                 "--set", "net={name: mlp, hidden: 32}", "--out", str(out), "--quiet"]) == 0
    assert main(["sample", str(out), "--n", "500", "--ode", "--steps", "10", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (500, 2) and abs(s.mean()) < 0.3 and 0.7 < s.std() < 1.3
    assert main(["sample", str(out), "--n", "10"]) == 2
    assert "ODE only" in capsys.readouterr().err
    assert main(["plot", str(out), "--n", "200", "--steps", "5"]) == 0
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["loss.png", "samples.png", "trajectories.png"]
