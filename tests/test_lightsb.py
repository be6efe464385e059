"""Tests for LightSB (maths.md §I): the Gaussian-mixture potential's closed forms against the known plans of the EOT
benchmark (§H), the three covariance forms against each other, the one-component objective against the Gaussian SB
of §G.2, a short fit, exact and simulated transport, runs (save, load, resume, CLI) and bad input.

Closed-form comparisons run in float64 with tolerances of rounding size; Monte-Carlo checks use fixed seeds and state
their bound next to the assertion.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import sbridge
from conftest import cli_train_and_sample
from sbridge.cli import main
from sbridge.core.errors import ConfigError, SBridgeError
from sbridge.data.eot_benchmark import EOTBenchmark
from sbridge.processes.gaussian import coupling
from sbridge.solvers.base import FitData
from sbridge.solvers.lightsb import MixturePotential, gaussian_bridge_scale

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def truth(bench: EOTBenchmark) -> MixturePotential:
    """The benchmark's own potential, as a full-covariance LightSB potential (float64)."""
    return MixturePotential.from_gaussian_potential(bench.potential_weights, bench.potential_means,
                                                    bench.potential_covs, bench.eps)


def solver_at(bench: EOTBenchmark) -> sbridge.LightSB:
    """A LightSB whose forward potential is the benchmark's (float32, as a fitted solver holds it)."""
    solver = sbridge.LightSB(bench.dim, sigma=bench.sigma, components=bench.potential_weights.shape[0],
                             covariance="full", device="cpu")
    state = truth(bench).state_dict()
    solver.models["fwd"].load_state_dict(state)
    solver.ema_models["fwd"].load_state_dict(state)
    return solver


# ---------------------------------------------------------------- 1. closed forms


def test_the_benchmarks_potential_gives_the_benchmarks_plan_and_drift() -> None:
    bench = EOTBenchmark(dim=3, eps=0.5, seed=0)
    pot = truth(bench)
    x = bench.sample_x0(300, gen(0)).double()
    with torch.no_grad():
        mean, cov = pot.plan_moments(x)
        true_mean, true_cov = bench.conditional_moments(x)
        assert torch.allclose(mean, true_mean.to(F64), atol=1e-9) and torch.allclose(cov, true_cov.to(F64), atol=1e-9)
        for t in (0.0, 0.3, 0.7, 0.99):
            assert torch.allclose(pot.drift(x, t), bench.drift(x, t).to(F64), atol=1e-8), t
        times = torch.rand(x.shape[0], generator=gen(1), dtype=F64) * 0.999
        assert torch.allclose(pot.drift(x, times), bench.drift(x, times).to(F64), atol=1e-8)
        # finite at t = 1, where (E[X1 | X_t] - x) / (1 - t) is 0 / 0, and continuous there
        end = pot.drift(x, 1.0)
        assert torch.isfinite(end).all() and torch.allclose(end, pot.drift(x, 1.0 - 1e-9), atol=1e-6)


def test_the_plan_density_integrates_to_one_with_the_plans_mean() -> None:
    # 1-D: quadrature of exp(plan_log_prob) on a fine grid gives mass 1 and the closed-form mean, for each x
    bench = EOTBenchmark(dim=1, eps=0.3, seed=2)
    pot = truth(bench)
    x = torch.tensor([[-2.0], [0.0], [1.5]], dtype=F64)
    grid = torch.linspace(-15.0, 15.0, 60_001, dtype=F64)
    h = float(grid[1] - grid[0])
    with torch.no_grad():
        mean, _ = pot.plan_moments(x)
        for i in range(x.shape[0]):
            density = pot.plan_log_prob(x[i].expand(grid.shape[0], 1), grid[:, None]).exp()
            assert abs(float(density.sum() * h) - 1.0) < 1e-6
            assert abs(float((density * grid).sum() * h) - float(mean[i, 0])) < 1e-6


def _random_diagonal(d: int, k: int, eps: float, seed: int) -> MixturePotential:
    torch.manual_seed(seed)
    pot = MixturePotential(d, k, eps, "diagonal").double()
    with torch.no_grad():
        pot.r.normal_(0.0, 1.5)
        pot.log_s.uniform_(-1.0, 0.5)
        pot.log_alpha_raw.normal_(0.0, eps)
    return pot


def _as_full(matrices: torch.Tensor, like: MixturePotential) -> MixturePotential:
    full = MixturePotential(like.dim, like.components, like.eps, "full").double()
    chol = torch.linalg.cholesky(matrices)
    with torch.no_grad():
        full.r.copy_(like.r)
        full.log_alpha_raw.copy_(like.log_alpha_raw)
        full.log_s.copy_(2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)))
        full.tril.copy_(torch.tril(chol, -1))
    return full


def _assert_same_closed_forms(a: MixturePotential, b: MixturePotential, seed: int) -> None:
    x = torch.randn(64, a.dim, generator=gen(seed), dtype=F64) * 2
    y = torch.randn(64, a.dim, generator=gen(seed + 1), dtype=F64) * 2
    with torch.no_grad():
        assert torch.allclose(a.matrices(), b.matrices(), atol=1e-12)
        for fn in ("log_v", "log_c"):
            assert torch.allclose(getattr(a, fn)(x), getattr(b, fn)(x), atol=1e-9), fn
        assert torch.allclose(a.plan_log_prob(x, y), b.plan_log_prob(x, y), atol=1e-9)
        assert torch.allclose(a.objective(x, y), b.objective(x, y), atol=1e-9)
        for t in (0.0, 0.5, 1.0):
            assert torch.allclose(a.drift(x, t), b.drift(x, t), atol=1e-8), t
        for pa, pb in zip(a.plan_moments(x), b.plan_moments(x), strict=True):
            assert torch.allclose(pa, pb, atol=1e-9)


def test_the_three_covariance_forms_agree_on_the_same_matrices() -> None:
    # diagonal vs its Cholesky form, and low rank vs the Cholesky factor of diag(s) + V V^T: same matrices S_k,
    # so every closed form must agree to rounding
    diag = _random_diagonal(3, 4, 0.7, seed=0)
    _assert_same_closed_forms(diag, _as_full(diag.matrices(), diag), seed=10)
    low = MixturePotential(3, 4, 0.7, "lowrank", rank=2).double()
    with torch.no_grad():
        low.r.copy_(diag.r)
        low.log_alpha_raw.copy_(diag.log_alpha_raw)
        low.log_s.copy_(diag.log_s)
        low.factor.normal_(0.0, 0.5, generator=gen(3))
    _assert_same_closed_forms(low, _as_full(low.matrices(), low), seed=20)


# ---------------------------------------------------------------- 2. the objective


def _gaussian_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    a, b = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([-1.0, 2.0], dtype=F64)
    la = torch.tensor([[1.0, 0.0], [0.6, 0.7]], dtype=F64)
    lb = torch.tensor([[0.8, 0.0], [-0.5, 1.2]], dtype=F64)
    x0 = a + torch.randn(n, 2, generator=g, dtype=F64) @ la.T
    x1 = b + torch.randn(n, 2, generator=g, dtype=F64) @ lb.T
    return x0, x1


def _moment_bridge(x0: torch.Tensor, x1: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = C^T A^{-1}`` and ``r = b - S a`` of the Gaussian SB between the (1/n) moment fits (§I.2, §G.2)."""
    a, b = x0.mean(0), x1.mean(0)
    A = (x0 - a).T @ (x0 - a) / x0.shape[0]
    B = (x1 - b).T @ (x1 - b) / x1.shape[0]
    C = coupling(a, A, b, B, math.sqrt(eps)).to(F64)
    S = C.T @ torch.linalg.inv(A)
    return S, b - S @ a


def test_one_component_minimiser_is_the_gaussian_bridge_of_the_sample_moments() -> None:
    # the one-component objective sees only the two ends' first two moments, so its minimiser on the samples is the
    # Gaussian SB of the moment fits; full-batch L-BFGS finds it to optimiser tolerance
    eps = 0.5
    x0, x1 = _gaussian_pair(3000, seed=0)
    pot = MixturePotential(2, 1, eps, "full").double()
    with torch.no_grad():
        pot.r.copy_(x1[:1])
    opt = torch.optim.LBFGS(pot.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = pot.objective(x0, x1)
        loss.backward()
        return loss

    opt.step(closure)
    S, r = _moment_bridge(x0, x1, eps)
    with torch.no_grad():
        assert torch.allclose(pot.matrices()[0], S, atol=1e-5), (pot.matrices()[0], S)
        assert torch.allclose(pot.r[0], r, atol=1e-5)
        # and its conditional covariance eps S is the coupling's B - C^T A^{-1} C (the product form, §G.2)
        _, cov = pot.plan_moments(x0[:1])
        b = x1.mean(0)
        B = (x1 - b).T @ (x1 - b) / x1.shape[0]
        a = x0.mean(0)
        A = (x0 - a).T @ (x0 - a) / x0.shape[0]
        C = coupling(a, A, b, B, math.sqrt(eps)).to(F64)
        assert torch.allclose(cov[0], B - C.T @ torch.linalg.inv(A) @ C, atol=1e-5)


def test_a_short_fit_moves_the_potential_towards_the_gaussian_bridge() -> None:
    # the solver's own training loop (Adam on independent minibatches): after 1500 steps the fitted S and r are
    # within 0.05 of the moment bridge, from a start (S = I, r at a data point) at least 10x farther away
    eps = 0.5
    x0, x1 = _gaussian_pair(4000, seed=1)
    S, r = _moment_bridge(x0, x1, eps)
    solver = sbridge.LightSB(2, sigma=math.sqrt(eps), components=1, covariance="full", device="cpu", seed=3)
    start = torch.eye(2, dtype=F64)
    solver.fit(x0.float(), x1.float(), steps=1500, batch_size=512, lr=1e-2, lr_schedule="cosine", quiet=True)
    pot = solver.ema_models["fwd"]
    with torch.no_grad():
        err = float((pot.matrices()[0].double() - S).abs().max())
        err_r = float((pot.r[0].double() - r).abs().max())
    assert err < 0.05 and err_r < 0.05, (err, err_r)
    assert float((start - S).abs().max()) > 10 * err
    # the backward potential solves the swapped problem
    S_back, r_back = _moment_bridge(x1, x0, eps)
    back = solver.ema_models["bwd"]
    with torch.no_grad():
        assert float((back.matrices()[0].double() - S_back).abs().max()) < 0.05
        assert float((back.r[0].double() - r_back).abs().max()) < 0.05


# ---------------------------------------------------------------- 3. transport


def test_exact_transport_has_the_plans_conditional_moments() -> None:
    # 20000 exact draws per input: each mean coordinate within 5 standard errors of the closed form, each
    # covariance entry within 5 standard errors (Var of a product <= E[x^4]-ish, bounded here by 3 sd_i sd_j)
    bench = EOTBenchmark(dim=2, eps=0.5, seed=1)
    solver = solver_at(bench)
    inputs = bench.test_inputs(3, seed=4).float()
    n = 20_000
    draws = solver.transport(inputs.repeat_interleave(n, 0)).reshape(3, n, 2).double()
    assert solver.last_nfe == 0
    mean, cov = bench.conditional_moments(inputs)
    for i in range(3):
        sd = cov[i].diagonal().sqrt().double()
        assert ((draws[i].mean(0) - mean[i].double()).abs() < 5 * sd / math.sqrt(n)).all()
        emp = torch.cov(draws[i].T)
        assert ((emp - cov[i].double()).abs() < 5 * 3 * torch.outer(sd, sd) / math.sqrt(n)).all()
    # a seed fixes the draws; another seed gives others
    x = inputs.repeat_interleave(4, 0)
    assert torch.equal(solver.transport(x, seed=7), solver.transport(x, seed=7))
    assert not torch.equal(solver.transport(x, seed=7), solver.transport(x, seed=8))


def test_the_sde_on_the_closed_form_drift_reproduces_the_exact_plan() -> None:
    # 200 Euler-type steps on the closed-form drift from 4000 copies of each input: the mean and variance of the
    # endpoints match the exact plan's to 5 standard errors plus a discretisation allowance of 0.03
    bench = EOTBenchmark(dim=2, eps=0.5, seed=1)
    solver = solver_at(bench)
    inputs = bench.test_inputs(2, seed=5).float()
    n = 4000
    ends = solver.transport(inputs.repeat_interleave(n, 0), steps=200, seed=1).reshape(2, n, 2).double()
    assert solver.last_nfe > 0
    mean, cov = bench.conditional_moments(inputs)
    for i in range(2):
        sd = cov[i].diagonal().sqrt().double()
        assert ((ends[i].mean(0) - mean[i].double()).abs() < 5 * sd / math.sqrt(n) + 0.03).all()
        var = ends[i].var(0)
        assert ((var - cov[i].diagonal().double()).abs() < 5 * math.sqrt(2 / n) * sd**2 + 0.03).all()


# ---------------------------------------------------------------- 4. runs and bad input


def test_a_saved_run_loads_to_the_same_plan_and_a_resumed_fit_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    x0, x1 = _gaussian_pair(2000, seed=2)
    x0, x1 = x0.float(), x1.float()
    opts = {"batch_size": 128, "lr": 1e-2, "lr_schedule": "constant", "quiet": True, "checkpoint_every": 20}
    full = sbridge.LightSB(2, components=3, device="cpu").fit(x0, x1, steps=40, out=tmp_path / "a", **opts)
    loaded = sbridge.load(tmp_path / "a", device="cpu")
    assert isinstance(loaded, sbridge.LightSB) and loaded.components == 3
    probe = x0[:50]
    assert torch.equal(full.transport(probe, seed=1), loaded.transport(probe, seed=1))
    y = full.transport(probe, seed=1)
    assert torch.allclose(full.plan_log_prob(probe, y), loaded.plan_log_prob(probe, y))
    # a fit stopped at step 20 and resumed to 40 ends with the uninterrupted fit's weights
    sbridge.LightSB(2, components=3, device="cpu").fit(x0, x1, steps=20, out=tmp_path / "b", **opts)
    resumed = sbridge.LightSB(2, components=3, device="cpu").fit(x0, x1, steps=40, out=tmp_path / "b", resume=True,
                                                                  **opts)
    for name in ("fwd", "bwd"):
        for key, value in full.models[name].state_dict().items():
            assert torch.equal(value, resumed.models[name].state_dict()[key]), (name, key)


def test_the_cli_trains_samples_and_scores_a_lightsb_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    samples = cli_train_and_sample(out, "lightsb", ["--steps", "300", "--set", "components=8"], 400, capsys)
    # moons lie in [-1.2, 2.2] x [-0.7, 1.2]: exact draws of the learned plan from N(0, I) land around them
    assert -0.6 < samples[:, 0].mean() < 1.6 and -0.5 < samples[:, 1].mean() < 1.0
    code = main(["train", "--method", "lightsb", "--data", "moons", "--set", "components=0", "--quiet",
                 "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "components" in err and "Traceback" not in err


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"components": 0}, "components"),
    ({"covariance": "spherical"}, "covariance"),
    ({"rank": 0}, "rank"),
    ({"scale_init": -1.0}, "scale_init"),
    ({"scale_init": "large"}, "scale_init must be a positive number or 'auto'"),
    ({"cond": {"kind": "label", "classes": 3}}, "no condition"),
    ({"shape": (1, 4, 4)}, "works on vectors"),
])
def test_bad_options_raise_one_sentence(kwargs: dict, needle: str) -> None:
    args = {"dim": 2} if "shape" not in kwargs else {}
    with pytest.raises(ConfigError, match=needle) as info:
        sbridge.LightSB(**args, **kwargs, device="cpu")
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_plan_log_prob_checks_its_rows_and_a_generative_fit_declares_its_samplers() -> None:
    x = torch.randn(200, 2, generator=gen(0))
    solver = sbridge.LightSB(2, components=3, device="cpu").fit(x, steps=20, batch_size=64, quiet=True)
    caps = solver.capabilities()
    assert caps.exact_plan and caps.sample and not caps.two_sets
    with pytest.raises(SBridgeError, match="one point of each end per row"):
        solver.plan_log_prob(x[:3], x[:4])


# ---------------------------------------------------------------- 5. speed paths and training defaults


def test_the_gemm_forms_match_dense_gaussians_for_every_covariance() -> None:
    # log N(y | m_k, eps S_k) and y^T S_k y from the one-GEMM forms (Cholesky inverse, Woodbury) against
    # torch's MultivariateNormal on the dense S_k, for shared means (K, d) and per-point means (n, K, d)
    d, k, eps = 6, 3, 0.3
    y = torch.randn(40, d, generator=gen(0), dtype=F64) * 2
    for covariance in ("full", "lowrank", "diagonal"):
        torch.manual_seed(1)
        pot = MixturePotential(d, k, eps, covariance, rank=2).double()
        with torch.no_grad():
            for p in pot.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen(2), dtype=F64))
        mats = pot.matrices().detach()
        per_point = pot.r[None] + 0.1 * torch.randn(40, k, d, generator=gen(3), dtype=F64)
        for means in (pot.r, per_point):
            dense = torch.distributions.MultivariateNormal(means, eps * mats).log_prob(y[:, None, :])
            assert torch.allclose(pot.component_log_prob(y, means), dense, rtol=1e-10, atol=1e-9), covariance
        assert torch.allclose(pot.quadratic(y), torch.einsum("nd,kde,ne->nk", y, mats, y), rtol=1e-12), covariance


def test_one_direction_trains_one_potential_and_refuses_the_other_way() -> None:
    x0, x1 = _gaussian_pair(1000, seed=3)
    solver = sbridge.LightSB(2, components=2, directions="forward", device="cpu")
    start = {k: v.clone() for k, v in sbridge.LightSB(2, components=2, device="cpu").models["bwd"].state_dict()
             .items()}
    solver.fit(x0.float(), x1.float(), steps=30, batch_size=64, quiet=True)
    moved = any(not torch.equal(v, solver.models["fwd"].state_dict()[k]) for k, v in
                sbridge.LightSB(2, components=2, device="cpu").models["fwd"].state_dict().items() if k != "r")
    assert moved
    for key, value in start.items():
        if key not in ("r", "log_s", "initialised"):  # the means and the scale are set from the data either way
            assert torch.equal(value, solver.models["bwd"].state_dict()[key]), key
    assert solver.transport(x0[:5].float()).shape == (5, 2)
    with pytest.raises(ConfigError, match="directions='forward'.*x1 -> x0"):
        solver.transport(x1[:5].float(), reverse=True)
    with pytest.raises(ConfigError, match="directions"):
        sbridge.LightSB(2, directions="sideways", device="cpu")


def test_the_methods_training_defaults_apply_in_python_and_on_the_command_line() -> None:
    from sbridge.runs.spec import RunSpec

    defaults = sbridge.LightSB.train_defaults
    assert defaults, "LightSB declares its training defaults"
    x = torch.randn(300, 2, generator=gen(4))
    solver = sbridge.LightSB(2, components=2, device="cpu").fit(x, steps=3, batch_size=32, quiet=True)
    for key, value in defaults.items():
        if key not in ("steps", "batch_size"):
            assert getattr(solver.train_config, key) == value, key
    spec = RunSpec.from_dict({"method": "lightsb"})
    assert all(getattr(spec, key) == value for key, value in defaults.items())
    assert RunSpec.from_dict({"method": "lightsb", "lr": 0.5}).lr == 0.5  # a given option wins
    assert RunSpec.from_dict({"method": "sgm"}).lr == RunSpec().lr  # other methods keep the trainer's


def test_auto_covariance_is_full_in_low_dimension_and_low_rank_above() -> None:
    from sbridge.solvers import lightsb

    small = sbridge.LightSB(lightsb.AUTO_FULL_MAX_DIM, device="cpu")
    large = sbridge.LightSB(lightsb.AUTO_FULL_MAX_DIM + 1, device="cpu")
    assert (small.covariance, small.components) == ("full", lightsb.AUTO_FULL_COMPONENTS)
    assert (large.covariance, large.components) == ("lowrank", lightsb.AUTO_LOWRANK_COMPONENTS)
    assert large.models["fwd"].factor.shape == (lightsb.AUTO_LOWRANK_COMPONENTS, lightsb.AUTO_FULL_MAX_DIM + 1,
                                                large.rank)
    # the resolved choice is what a saved run records, so it reloads the same way whatever "auto" becomes
    assert small.options()["covariance"] == "full" and small.options()["components"] == lightsb.AUTO_FULL_COMPONENTS
    assert sbridge.LightSB(4, covariance="auto", components=3, device="cpu").components == 3


@pytest.mark.parametrize(("dim", "eps"), [(3, 0.2), (5, 4.0)])
def test_auto_scale_is_the_gaussian_bridges_and_starts_the_fit(dim: int, eps: float) -> None:
    # one input and one potential component: the plan is the Gaussian SB, whose S = Cov(Y | X) / eps the auto
    # scale estimates (its mean eigenvalue) from the two ends' moments
    bench = EOTBenchmark(dim, eps, seed=1, n_input_components=1, n_potential_components=1)
    truth = MixturePotential.from_gaussian_potential(bench.potential_weights, bench.potential_means,
                                                     bench.potential_covs, eps).matrices().detach()
    expected = float(torch.linalg.eigvalsh(truth[0]).mean())
    x0, x1 = bench.sample_x0(50_000, generator=gen(2)), bench.sample_x1(50_000, generator=gen(3))
    scale = gaussian_bridge_scale(x0, x1, eps)
    assert scale == pytest.approx(expected, rel=0.03)  # moments of 5e4 points: ~1 % error
    solver = sbridge.LightSB(dim, sigma=math.sqrt(eps), components=3, device="cpu")
    solver.before_fit(FitData(x0, x1))
    torch.testing.assert_close(solver.models["fwd"].log_s.detach(), torch.full((3, dim), math.log(scale)))
    backward = float(solver.models["bwd"].log_s[0, 0].detach())
    assert backward == pytest.approx(math.log(gaussian_bridge_scale(x1, x0, eps)))
    fixed = sbridge.LightSB(dim, sigma=math.sqrt(eps), components=3, scale_init=0.5, device="cpu")
    fixed.before_fit(FitData(x0, x1))
    torch.testing.assert_close(fixed.models["fwd"].log_s.detach(), torch.full((3, dim), math.log(0.5)))
    assert gaussian_bridge_scale(x0[:1], x1[:1], eps) == 1.0  # no moments from one point: the paper's S = I
