"""SB-FBSDE and SB-VAE (maths.md §1.4, §A): the special cases of the drift matching, the prior-loss estimator, the
closed-form Gaussian coupling, warm start, early stopping, exact resume and the user errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import sbridge
from sbridge import SBFBSDE, SBVAE, SGM
from sbridge.core.errors import ConfigError
from sbridge.core.tensors import sum_event
from sbridge.data import toy
from sbridge.numerics.likelihood import divergence
from sbridge.processes.gaussian import GaussianBridge, GaussianNoiseOracle, LinearGaussianBridge, gaussian_kl
from sbridge.solvers.policy import DriftMatching

SMALL = {"hidden": 32, "depth": 2, "device": "cpu"}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter (the zero-initialised last layer too) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return module


def test_with_no_encoder_the_drift_matching_is_weighted_denoising_score_matching_up_to_a_constant() -> None:
    # maths.md §A.3: u = 0, decoder P1 (B = f - g^2 s): the drift-matching integrand E[g^2 |s|^2 / 2 + g^2 div s]
    # differs from E[g^2 |s - grad log p_{t|0}|^2 / 2] by a constant that no network changes. Two random decoders on
    # the same samples: the difference of the differences has mean 0 (within 4 standard errors, n = 100k).
    model = SBVAE(2, **SMALL)
    process = model.reference
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x0 = toy.sample("moons", n, seed=0)
    t = 0.1 + 0.9 * torch.rand(n, generator=g)  # the identity holds at every t; away from 0 its variance is small
    xt, noise = process.sample_marginal(x0, t, generator=g)
    target = process.conditional_score(xt, x0, t)
    other = process.drift(xt, t)  # the encoder's drift with u = 0
    gaps = []
    for seed in (1, 2):
        _randomise(model.models["bwd"], seed)
        loss = DriftMatching(model.decode_drift, model.reference.diffusion, "decoder", "exact")
        ism = []
        for i in range(0, n, 20_000):
            sl = slice(i, i + 20_000)
            value, div = divergence(lambda y, _t, sl=sl: model.decode_drift(model.models, y, t[sl]), xt[sl], 0.0)
            g2 = process.diffusion(t[sl]) ** 2
            ism.append(0.5 * sum_event((value - other[sl]) ** 2) / g2 - div)
            # the loss object gives the same mean as the explicit integrand
            batch = {"x": xt[sl], "t": t[sl], "other": other[sl]}
            assert float(loss(model.models, batch, g)[0].detach()) == pytest.approx(float(ism[-1].mean()), rel=1e-4)
        with torch.no_grad():
            s = model.decoder_score(model.models, xt, t)
            dsm = 0.5 * process.diffusion(t) ** 2 * sum_event((s - target) ** 2)
        gaps.append((torch.cat(ism), dsm))
    (ism_a, dsm_a), (ism_b, dsm_b) = gaps
    diff = (ism_a - dsm_a) - (ism_b - dsm_b)
    se = float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean())) < 4 * se, (float(diff.mean()), se)
    assert abs(float(ism_a.mean() - ism_b.mean())) > 25 * se  # the two decoders' losses do differ


def test_decoder_p2_drift_matching_is_sbfbsde_backward_loss() -> None:
    # maths.md §A.3: with B = f - g Z_hat (P2) the integrand |F - B|^2 / (2 g^2) - div B equals SB-FBSDE's backward
    # loss |Z_hat|^2 / 2 + g div Z_hat + Z . Z_hat plus |Z|^2 / 2 - div f, which no decoder changes
    model = SBVAE(2, decoder="P2", **SMALL)
    _randomise(model.models["fwd"], 3)
    _randomise(model.models["bwd"], 4)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0.05, 0.95, 64)
    other = model.encode_drift(model.models, x, t)
    matching = DriftMatching(model.decode_drift, model.reference.diffusion, "decoder", "exact")
    loss, _ = matching(model.models, {"x": x, "t": t, "other": other}, None)
    g = model.reference.diffusion(t)
    z = model.models["fwd"](x, t).detach()
    zhat, div_zhat = divergence(lambda y, _t: g[:, None] * model.decoder_score(model.models, y, t), x, 0.0)
    beta = model.reference.beta(t)
    div_f = -0.5 * beta * 2  # f = -beta x / 2 in 2-D
    expected = (0.5 * sum_event(zhat**2) + g * div_zhat + sum_event(z * zhat) + 0.5 * sum_event(z**2) - div_f)
    assert float(loss.detach()) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_prior_loss_along_the_encode_sde_is_the_closed_form_kl_plus_the_data_entropy() -> None:
    # maths.md §A.4: u = 0 and the exact decoder (the Gaussian oracle) on N(m, diag(v)) data under VP: the estimate
    # -E log pi(X_T) - int E[div f + g^2 |grad log p_t|^2 / 2] dt is KL(p_T || N(0, I)) + H(data), and the drift
    # matching is 0 (to Monte-Carlo and Euler-Maruyama error)
    mean, var = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    model = SBVAE(2, sim_steps=400, device="cpu",
                  net={"fwd": _Zero(), "bwd": GaussianNoiseOracle(mean, torch.diag(var))})
    for module in (model.models["bwd"], model.ema_models["bwd"]):
        module.bind(model.reference)
    x = mean + var.sqrt() * torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    terms = model.objective_terms(x, seed=1)
    alpha, cov = model.reference.marginal(torch.ones(1, 2), model.reference.T)
    law_T = (alpha[0] * mean, torch.diag(alpha[0] ** 2 * var + cov.var.expand(1, 2)[0]))
    kl = gaussian_kl(*law_T, torch.zeros(2), torch.eye(2))
    entropy = float(0.5 * torch.log(2 * math.pi * math.e * var).sum())
    assert terms["prior_loss"] == pytest.approx(kl + entropy, abs=0.1), (terms, kl + entropy)
    assert abs(terms["drift_matching"]) < 0.1, terms


class _Zero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x) + 0 * self.dummy


def test_sbfbsde_recovers_the_gaussian_bridge_coupling_between_two_data_sets() -> None:
    # data to data under Brownian motion (sigma = 1): N(a, A) -> N(b, B) in 2-D, alternating SB-FBSDE; the
    # forward transport's cross-covariance against the closed form C_sigma (maths.md §G.2). Measured: 3 iterations
    # give a mean error 0.16 and a coupling error 0.056, 5 iterations 0.05 and 0.074; the marginal errors fall every
    # iteration.
    a, A = torch.tensor([-1.0, 0.5]), torch.tensor([[1.0, 0.4], [0.4, 0.6]])
    b, B = torch.tensor([1.5, -0.5]), torch.tensor([[0.5, -0.2], [-0.2, 1.2]])
    g = torch.Generator().manual_seed(0)
    x0 = a + torch.randn(6000, 2, generator=g) @ torch.linalg.cholesky(A).T
    x1 = b + torch.randn(6000, 2, generator=g) @ torch.linalg.cholesky(B).T
    bridge = GaussianBridge(a, A, b, B, sigma=1.0)
    model = SBFBSDE(2, process={"name": "brownian", "sigma": 1.0}, iterations=4, sim_steps=30, hidden=64, depth=2,
                    seed=0, device="cpu")
    model.fit(x0, prior=x1, steps=4800, batch_size=256, lr=2e-3, quiet=True)
    ends = [r["energy_x1"] + r["energy_x0"] for r in model.history if "iteration" in r]
    assert all(later < earlier for earlier, later in zip(ends, ends[1:], strict=False)), ends
    y = model.transport(x0[:4000], steps=60, seed=3).double()
    src = x0[:4000].double()
    cross = (src - src.mean(0)).T @ (y - y.mean(0)) / 4000
    err = float((cross - bridge.C).norm() / bridge.C.norm())
    assert float((y.mean(0) - b.double()).norm()) < 0.15, y.mean(0)
    assert float((torch.cov(y.T) - B.double()).norm()) < 0.15, torch.cov(y.T)
    assert err < 0.12, (err, cross, bridge.C)


def test_sbvae_recovers_the_closed_form_coupling_of_a_gaussian_to_the_prior() -> None:
    # generation: N(m, S) -> N(0, I) under a gentle VP reference (beta 0.1 -> 2, which alone leaves X_T ~ N(0.59 m,
    # 0.35 S + 0.65 I)); SB-VAE (P2) trained on its bound, against LinearGaussianBridge under the same reference.
    # Measured (seed 0): coupling error 0.077, KL(X_T || N(0, I)) 0.018, KL(samples || data) 0.083; the longer
    # benchmark runs reach 0.03-0.05 (benchmarks/bench_likelihood.py).
    m, S = torch.tensor([1.5, -1.0]), torch.tensor([[1.0, 0.5], [0.5, 1.5]])
    x0 = m + torch.randn(8000, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(S).T
    bridge = LinearGaussianBridge(m, S, torch.zeros(2), torch.eye(2), c=lambda t: -0.5 * (0.1 + 1.9 * t),
                                  g=lambda t: math.sqrt(0.1 + 1.9 * t))
    model = SBVAE(2, process={"name": "vp", "beta_min": 0.1, "beta_max": 2.0}, decoder="P2", stages=4, sim_steps=10,
                  hidden=32, depth=2, device="cpu")
    model.fit(x0, steps=1200, batch_size=256, lr=3e-3, quiet=True)
    ends = model.transport(x0[:5000], steps=60, seed=3).double()
    src = x0[:5000].double()
    cross = (src - src.mean(0)).T @ (ends - ends.mean(0)) / 5000
    assert float((cross - bridge.C).norm() / bridge.C.norm()) < 0.15, cross
    assert gaussian_kl(ends.mean(0), torch.cov(ends.T), torch.zeros(2), torch.eye(2)) < 0.05
    s = model.sample(5000, steps=60, seed=4).double()
    assert gaussian_kl(s.mean(0), torch.cov(s.T), m, S) < 0.15


def test_sbfbsde_with_no_forward_policy_is_the_warm_started_sgm(tmp_path: Path) -> None:
    x = toy.sample("moons", 800, seed=0)
    sgm = SGM(2, **SMALL, seed=1).fit(x, steps=100, batch_size=64, quiet=True, out=tmp_path / "sgm")
    model = SBFBSDE(2, warm_start=str(tmp_path / "sgm"), **SMALL)
    model.before_fit(model._prepare(x, None, None))
    for k, w in sgm.ema_models["score"].state_dict().items():
        torch.testing.assert_close(model.ema_models["bwd"].state_dict()[k], w)
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(2))
    by_sgm = sgm.sample(300, steps=20, ode=True, x_T=z)
    by_sb = model.transport(z, steps=20, reverse=True, ode=True)
    torch.testing.assert_close(by_sb, by_sgm, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="another process or network"):
        SBFBSDE(2, warm_start=str(tmp_path / "sgm"), hidden=16, depth=1, device="cpu").before_fit(
            model._prepare(x, None, None))


@pytest.mark.parametrize("cls, options", [(SBFBSDE, {"iterations": 2, "cache_size": 200, "cache_refresh": 7}),
                                          (SBFBSDE, {"mode": "joint", "sim_steps": 5}),
                                          (SBVAE, {"stages": 3, "sim_steps": 5, "eval_n": 100, "stop_tol": 1e9,
                                                   "stop_patience": 1})])
def test_exact_resume_in_the_middle_of_a_phase(tmp_path: Path, cls: type, options: dict) -> None:
    x = toy.sample("moons", 400, seed=0)
    opts = {"hidden": 16, "depth": 1, "seed": 1, "device": "cpu", **options}
    fit = {"steps": 24, "batch_size": 32, "quiet": True, "checkpoint_every": 5}
    whole = cls(2, **opts).fit(x, out=tmp_path / "whole", **fit)

    def stop(step: int, loss: float) -> None:
        if step == 19:  # SB-FBSDE: in the second forward phase; SB-VAE: in stage 3, after the encoder stopped
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cls(2, **opts).fit(x, out=tmp_path / "cut", callbacks=(stop,), **fit)
    resumed = cls(2, **opts).fit(x, out=tmp_path / "cut", resume=True, **fit)
    for k, w in whole.ema_models.state_dict().items():
        torch.testing.assert_close(resumed.ema_models.state_dict()[k], w, atol=0, rtol=0)
    loaded = sbridge.load(tmp_path / "whole")
    torch.testing.assert_close(loaded.sample(20, steps=5, seed=2), whole.sample(20, steps=5, seed=2))


def test_sbvae_freezes_its_encoder_when_the_prior_loss_plateaus_and_logs_both_terms() -> None:
    # stop_tol huge: the prior loss "plateaus" at the first check (after stage 2 with patience 1); from then on the
    # encoder's weights stay as they were while the decoder keeps training
    x = toy.sample("moons", 600, seed=0)
    model = SBVAE(2, stages=4, sim_steps=5, eval_n=200, stop_tol=1e9, stop_patience=1, hidden=16, depth=1,
                  device="cpu")
    snapshots = []
    model.fit(x, steps=40, batch_size=32, quiet=True,
              callbacks=(lambda step, loss: snapshots.append((step, [p.detach().clone() for p in
                                                                      model.models.parameters()])),))
    rows = [r for r in model.history if "prior_loss" in r]
    assert [r["stage"] for r in rows] == [1, 2, 3, 4]
    assert [r["encoder"] for r in rows] == ["training"] + ["stopped after stage 2"] * 3
    for r in rows:
        assert r["nll_bound"] == pytest.approx(r["prior_loss"] + r["drift_matching"])
    n_fwd = len(list(model.models["fwd"].parameters()))
    fwd = {step: params[:n_fwd] for step, params in snapshots}
    bwd = {step: params[n_fwd:] for step, params in snapshots}
    assert not all(torch.equal(p, q) for p, q in zip(fwd[10], fwd[20], strict=True))  # trained before the stop
    # frozen after stage 2 (at its moving average: raw and EMA weights agree from then on)
    assert all(torch.equal(p, q) for p, q in zip(fwd[21], fwd[40], strict=True))
    for p, q in zip(model.models["fwd"].parameters(), model.ema_models["fwd"].parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert not all(torch.equal(p, q) for p, q in zip(bwd[21], bwd[40], strict=True))  # the decoder goes on


@pytest.mark.parametrize("make, words", [
    (lambda: SBFBSDE(2, mode="ipf", device="cpu"), "mode"),
    (lambda: SBFBSDE(2, process={"name": "linear", "schedule": {"name": "constant", "beta": 1.0},
                                 "drift": {"kind": "diagonal", "value": [1.0, 2.0]}}, device="cpu"), "isotropic"),
    (lambda: SBVAE(2, decoder="P3", device="cpu"), "decoder parametrisation"),
    (lambda: SBVAE(2, stop_tol=-1, device="cpu"), "stop_tol"),
    (lambda: SBVAE(2, mode="joint", device="cpu"), "no option 'mode'"),
    (lambda: SBFBSDE(2, mode="joint", device="cpu").fit(toy.sample("moons", 100), prior=toy.sample("circles", 100),
                                                         steps=2, quiet=True), "needs generation"),
    (lambda: SBVAE(2, device="cpu").fit(toy.sample("moons", 100), prior=toy.sample("circles", 100), steps=2,
                                        quiet=True), "generates from noise"),
])
def test_user_errors_are_sentences(make, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make()


def test_sbfbsde_with_a_ve_reference_samples_its_prior_and_bounds_its_likelihood() -> None:
    # VE: the prior is N(0, sigma_max^2 I) (sigma_max = 10), what sample() starts from; the path bound of a short
    # joint fit is finite, and the negative bound is at least the data's entropy (Gibbs) up to 4 standard errors
    x = toy.sample("gaussian", 2000, seed=0)  # N(0, I_2): entropy 0.5 log(2 pi e) per dimension
    model = SBFBSDE(2, process="ve", mode="joint", sim_steps=10, hidden=16, depth=1, device="cpu")
    model.fit(x, steps=40, batch_size=64, quiet=True)
    prior = model._prior_draw((50_000, 2), torch.Generator().manual_seed(0))
    assert float(prior.var()) == pytest.approx(100.0, rel=0.02)
    bound = -model.elbo(x[:500], steps=100) / 2
    entropy = 0.5 * math.log(2 * math.pi * math.e)
    assert bool(torch.isfinite(bound).all()) and float(bound.mean()) > entropy - 4 * float(bound.std()) / math.sqrt(500)


def test_conditional_sbvae_separates_its_labels() -> None:
    # the labelled four-mode mixture of test_frame, generated per label by a short SB-VAE fit (P1): most samples of
    # each label fall nearest its own mode (>= 90 %)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    labels = torch.randint(4, (4000,), generator=g)
    x = centres[labels] + 0.15 * torch.randn(4000, 2, generator=g)
    model = SBVAE(2, cond={"kind": "label", "classes": 4}, stages=3, sim_steps=10, eval_n=200, hidden=64, seed=0,
                  device="cpu")
    model.fit(x, cond=labels, steps=900, batch_size=256, lr=2e-3, quiet=True)
    for k in range(4):
        s = model.sample(200, steps=20, cond=k)
        assert float((torch.cdist(s, centres).argmin(1) == k).float().mean()) >= 0.9, k
