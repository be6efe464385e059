"""SF2M (maths.md §J): the minibatch couplings against POT, the loss targets against a Gaussian path whose velocity
and score are known, and a fit against the closed-form Gaussian Schrödinger bridge."""

from __future__ import annotations

import math
from pathlib import Path

import ot
import pytest
import torch

import sbridge
from conftest import cli_train_and_sample
from sbridge.cli import main
from sbridge.core.errors import ConfigError
from sbridge.data import toy
from sbridge.metrics import energy_distance
from sbridge.numerics import couplings
from sbridge.processes.gaussian import coupling as gaussian_coupling
from sbridge.solvers.sf2m import ScoreFlowMatching

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_entropic_minibatch_plan_is_sinkhorns_and_tends_to_the_exact_plan() -> None:
    x0 = torch.randn(40, 2, generator=gen(0), dtype=F64)
    x1 = torch.randn(30, 2, generator=gen(1), dtype=F64) * 2 + 3
    cost = torch.cdist(x0, x1).square()
    a, b = torch.full((40,), 1 / 40, dtype=F64), torch.full((30,), 1 / 30, dtype=F64)
    # at a moderate sigma, iterated to convergence, the plan is POT's plain Sinkhorn plan at
    # reg = 2 sigma^2; at the default tolerance it is within a small total variation of it; both have the marginals
    sigma = 1.0
    pot = ot.sinkhorn(a, b, cost, 2 * sigma**2, stopThr=1e-12, numItermax=100_000)
    converged = couplings.plan(x0, x1, sigma, tolerance=1e-9, iterations=20_000)
    assert float((converged - pot).abs().sum()) < 1e-4
    plan = couplings.plan(x0, x1, sigma)
    assert float((plan - pot).abs().sum()) < 2e-2
    for p in (plan, converged):
        assert torch.allclose(p.sum(1), a, atol=1e-12) and torch.allclose(p.sum(0), b, atol=1e-12)
    # at a small sigma whole rows of the plain kernel exp(-C / reg) underflow to 0 (the plain iteration divides by
    # their sums); the plan stays finite, is POT's log-domain Sinkhorn plan, and its cost approaches the exact OT cost
    small = 0.05
    assert bool((torch.exp(-cost / (2 * small**2)).sum(1) == 0).any())
    # (POT's log-domain iteration stops short of 1e-7 here after 20,000 iterations and warns; it is close enough)
    pot_log = ot.sinkhorn(a, b, cost, 2 * small**2, method="sinkhorn_log", stopThr=1e-7,
                       numItermax=20_000)
    tight = couplings.plan(x0, x1, small)
    assert float((couplings.plan(x0, x1, small, tolerance=1e-9, iterations=20_000) - pot_log).abs().sum()) < 2e-3
    assert float((tight - pot_log).abs().sum()) < 5e-2
    exact = couplings.plan(x0, x1, small, "exact")
    assert torch.isfinite(tight).all() and float(tight.min()) >= 0
    assert torch.allclose(tight.sum(1), a, atol=1e-12) and torch.allclose(tight.sum(0), b, atol=1e-12)
    ot_cost = float((exact * cost).sum())
    assert ot_cost - 1e-12 <= float((tight * cost).sum()) <= 1.01 * ot_cost
    assert float((plan * cost).sum()) > 1.05 * ot_cost  # a blurrier plan costs more
    assert torch.allclose(couplings.plan(x0, x1, sigma, "independent"), torch.full((40, 30), 1 / 1200, dtype=F64))
    with pytest.raises(ConfigError, match="coupling"):
        couplings.plan(x0, x1, sigma, "greedy")
    with pytest.raises(ConfigError, match="NaN"):
        couplings.plan(x0.clone().fill_(math.nan), x1, sigma)


def test_absorbing_the_scalings_into_the_potentials_leaves_the_plan_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # with absorption after every check (threshold e^0.01), unequal batch sizes: still POT's plan
    x0 = torch.randn(25, 3, generator=gen(5), dtype=F64)
    x1 = torch.randn(35, 3, generator=gen(6), dtype=F64) + 1
    cost = torch.cdist(x0, x1).square()
    a, b = torch.full((25,), 1 / 25, dtype=F64), torch.full((35,), 1 / 35, dtype=F64)
    pot = ot.sinkhorn(a, b, cost, 0.5, stopThr=1e-12, numItermax=100_000)
    monkeypatch.setattr(couplings, "_ABSORB_AT", 0.01)
    plan, error, used = couplings.sinkhorn(cost, 0.5, iterations=20_000, tolerance=1e-10)
    assert float((plan - pot).abs().sum()) < 1e-4 and error < 1e-10
    with pytest.raises(ConfigError, match="iteration"):
        couplings.sinkhorn(cost, 0.5, iterations=0)


def test_rounding_puts_a_matrix_on_the_marginals_within_twice_its_marginal_error() -> None:
    # Altschuler, Weed & Rigollet (2017), Lemma 7: the rounded matrix is a coupling and moved by at most
    # 2 (|r(P) - a|_1 + |c(P) - b|_1)
    g = gen(4)
    for n, m in ((7, 5), (30, 30)):
        a = torch.rand(n, generator=g, dtype=F64) + 0.1
        a /= a.sum()
        b = torch.rand(m, generator=g, dtype=F64) + 0.1
        b /= b.sum()
        approx = a[:, None] * b[None, :] * (0.7 + 0.6 * torch.rand(n, m, generator=g, dtype=F64))
        rounded = couplings.round_to_marginals(approx, a, b)
        assert float(rounded.min()) >= 0
        assert torch.allclose(rounded.sum(1), a, atol=1e-15) and torch.allclose(rounded.sum(0), b, atol=1e-15)
        bound = 2 * float((approx.sum(1) - a).abs().sum() + (approx.sum(0) - b).abs().sum())
        assert 0 < float((rounded - approx).abs().sum()) <= bound


def test_pairs_are_drawn_with_the_plans_probabilities() -> None:
    x0 = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)
    x1 = torch.tensor([[0.2], [1.1], [2.5]], dtype=F64)
    plan = couplings.plan(x0, x1, 0.6).flatten()
    n = 60_000
    i, j = couplings.pairs(x0, x1, 0.6, "entropic", gen(3), count=n)
    freq = torch.bincount(i * 3 + j, minlength=9).double() / n
    assert (freq - plan).abs().max() < 5 * torch.sqrt(plan * (1 - plan) / n).max()


def test_the_loss_targets_are_the_gaussian_paths_velocity_and_score() -> None:
    # with one point at each end the marginal of the mixture IS the Brownian bridge N(mu_t, sigma_t^2 I), whose
    # velocity and score are closed-form: those two functions make the loss zero, and a velocity off by delta
    # adds |delta|^2
    sigma, a, b = 0.7, torch.tensor([1.0, -2.0]), torch.tensor([-0.5, 3.0])

    def mean(t: torch.Tensor) -> torch.Tensor:
        return (1 - t)[:, None] * a + t[:, None] * b

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        tb = t[:, None]
        return (b - a) + (1 - 2 * tb) / (2 * tb * (1 - tb)) * (x - mean(t))

    def score(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return -(x - mean(t)) / (sigma**2 * t * (1 - t))[:, None]

    loss = ScoreFlowMatching(sigma, t_min=1e-3)
    batch = {"x0": a.expand(512, 2), "x1": b.expand(512, 2)}
    value, terms = loss({"velocity": velocity, "score": score}, batch, gen(0))
    assert float(value) < 1e-8, terms
    delta = torch.tensor([0.3, -0.4])
    shifted, _ = loss({"velocity": lambda x, t, c=None: velocity(x, t) + delta, "score": score}, batch, gen(0))
    assert float(shifted) == pytest.approx(float(delta.square().sum()), rel=1e-4)


def _gaussian_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    x0 = torch.tensor([1.0, -1.0]) + torch.randn(n, 2, generator=g) @ torch.tensor([[0.8, 0.0], [0.3, 0.5]]).T
    x1 = torch.tensor([-1.0, 1.5]) + torch.randn(n, 2, generator=g) @ torch.tensor([[0.6, 0.0], [-0.4, 0.9]]).T
    return x0, x1


def test_a_gaussian_pair_is_transported_to_the_gaussian_bridges_coupling() -> None:
    # a fit between two Gaussians: the SDE's coupling has the closed-form SB cross-covariance and the right end's
    # moments, and the ODE reaches the same end law (tolerances set from a few seeds: minibatch plans at B = 256
    # and 1500 steps leave errors of ~0.05)
    sigma = 1.0
    x0, x1 = _gaussian_pair(20_000, seed=0)
    model = sbridge.SF2M(2, sigma=sigma, hidden=64, depth=3, device="cpu", seed=1)
    model.fit(x0, x1, steps=1500, batch_size=256, lr=2e-3, lr_schedule="cosine", quiet=True)
    probe = x0[:4000]
    ends = model.transport(probe, steps=50, seed=2)
    a, A = x0.double().mean(0), torch.cov(x0.double().T)
    b, B = x1.double().mean(0), torch.cov(x1.double().T)
    C = gaussian_coupling(a, A, b, B, sigma).double()
    joint = torch.cov(torch.cat([probe, ends], 1).double().T)
    assert float(torch.linalg.norm(joint[:2, 2:] - C) / torch.linalg.norm(C)) < 0.15
    assert float((ends.double().mean(0) - b).abs().max()) < 0.1
    assert float(torch.linalg.norm(joint[2:, 2:] - B) / torch.linalg.norm(B)) < 0.15
    flow = model.transport(probe, ode=True, steps=50)
    assert float((flow.double().mean(0) - b).abs().max()) < 0.1
    assert float(torch.linalg.norm(torch.cov(flow.double().T) - B) / torch.linalg.norm(B)) < 0.15
    back = model.transport(x1[:4000], steps=50, reverse=True, seed=3)
    assert float((back.double().mean(0) - a).abs().max()) < 0.1


def test_the_cli_trains_and_samples_an_sf2m_run_and_bad_options_are_one_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = cli_train_and_sample(tmp_path / "run", "sf2m", ["--steps", "200", "--hidden", "32"], 300, capsys)
    # nearer the moons than the N(0, I) prior it starts from (unmoved prior draws would be nearer the prior)
    moons = toy.sample("moons", 300, seed=5)
    prior = torch.randn(300, 2, generator=gen(6))
    drawn = torch.as_tensor(samples, dtype=torch.float32)
    assert float(energy_distance(drawn, moons)) < 0.5 * float(energy_distance(drawn, prior))
    for option, needle in (("coupling=greedy", "coupling"), ("t_min=0.7", "t_min")):
        code = main(["train", "--method", "sf2m", "--data", "moons", "--set", option, "--quiet",
                     "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
    with pytest.raises(ConfigError, match="t_min"):
        sbridge.SF2M(2, t_min=-1.0, device="cpu")
    assert math.isfinite(sbridge.SF2M(2, device="cpu").t_min)
