"""VSDM's building blocks (maths.md §C): the variational score A and its admissible set, and the SA gradient."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.optimize import brentq

import sbridge
from sbridge import SGM, VSDM
from sbridge.core.errors import ConfigError, DataError
from sbridge.data import toy
from sbridge.processes.gaussian import GaussianNoiseOracle, LinearGaussianBridge, gaussian_kl
from sbridge.solvers.vsdm import LinearScore, sa_gradient


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_a_starts_at_zero_so_the_reference_is_plain_vp(kind: str) -> None:
    score = LinearScore(3, kind)
    d = score.drift_matrix()
    expected = torch.ones(3) if kind == "diagonal" else torch.eye(3)
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(score(torch.randn(5, 3)), torch.zeros(5, 3))


def test_full_a_factors_and_the_projection_keeps_d_positive_definite() -> None:
    torch.manual_seed(0)
    score = LinearScore(4, "full")
    q = torch.linalg.qr(torch.randn(4, 4)).Q
    with torch.no_grad():
        score.iterate.copy_(q @ torch.diag(torch.tensor([0.1, -0.2, 0.3, -0.4])) @ q.T)
    u, s, v = score.factors()
    torch.testing.assert_close(s, torch.tensor([0.4, 0.3, 0.2, 0.1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, score.matrix(), atol=1e-5, rtol=0)
    x = torch.randn(6, 4)
    torch.testing.assert_close(score(x), x @ score.matrix().T)
    # far outside the admissible set: a symmetric part with eigenvalues 3 and -9, a large rotation
    rotation = q[:, :1] @ q[:, 1:2].T - q[:, 1:2] @ q[:, :1].T
    far = q @ torch.diag(torch.tensor([3.0, -9.0, 0.7, 0.1])) @ q.T + 8 * rotation
    score.iterate.zero_()
    score.step_(-far, lr=1.0)
    d = score.drift_matrix().detach()
    sym = torch.linalg.eigvalsh(0.5 * (score.matrix() + score.matrix().T))
    assert float(sym.max()) == pytest.approx(score.max_rate, abs=1e-5)
    assert float(sym.min()) == pytest.approx(-5.0, abs=1e-5)  # MAX_CONTRACTION
    assert float(torch.linalg.eigvalsh(d + d.T).min()) >= 2 * (1 - 2 * score.max_rate) - 1e-5
    skew = 0.5 * (score.matrix() - score.matrix().T)
    assert float(torch.linalg.matrix_norm(skew, ord=2)) == pytest.approx(5.0, rel=1e-5)
    # the eigenvalues inside the set (0.7 -> clamped to max_rate, 0.1 kept) keep their eigenvectors
    torch.testing.assert_close(q[:, 3] @ score.matrix() @ q[:, 3], torch.tensor(0.1), atol=1e-5, rtol=0)


def test_the_moving_average_of_a_is_what_the_process_reads() -> None:
    score = LinearScore(2, "diagonal", ema=0.75)
    score.step_(torch.tensor([-0.4, 0.4]), lr=1.0)  # iterate (0.4, -0.4); average a quarter of it
    torch.testing.assert_close(score.iterate.detach(), torch.tensor([0.4, -0.4]))
    torch.testing.assert_close(score.matrix(), torch.tensor([0.1, -0.1]))
    score.step_(torch.zeros(2), lr=1.0)
    torch.testing.assert_close(score.matrix(), torch.tensor([0.175, -0.175]))
    torch.testing.assert_close(score.drift_matrix(), torch.tensor([0.65, 1.35]))
    with pytest.raises(ConfigError, match="a_ema"):
        LinearScore(2, ema=1.0)


def test_diagonal_projection_and_errors() -> None:
    score = LinearScore(3, "diagonal", max_rate=0.4)
    score.step_(torch.tensor([-10.0, 0.0, 100.0]), lr=1.0)  # a = (10, 0, -100) before the projection
    torch.testing.assert_close(score.matrix(), torch.tensor([0.4, 0.0, -5.0]))
    assert bool((score.drift_matrix() > 0).all())
    with pytest.raises(ConfigError, match="max_rate must lie in \\(0, 1/2\\)"):
        LinearScore(3, max_rate=0.5)
    with pytest.raises(ConfigError, match="kind of A"):
        LinearScore(3, kind="banded")


def test_sa_gradient_is_the_closed_form_of_its_sample_moments() -> None:
    # scores of N(0, Sigma) at states with sample second moments S_n: the gradient is
    # sum_n beta_n dt_n (-Sigma^{-1} S_n + zeta I) exactly (to float precision).
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    prec = torch.linalg.inv(sigma)
    xs = torch.randn(4, 300, 2, generator=g, dtype=torch.float64) * torch.tensor([1.5, 0.7], dtype=torch.float64)
    scores = -xs @ prec.T
    betas, dts = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64)
    zeta = 0.75
    expected = sum(b * dt * (-prec @ (x.T @ x / x.shape[0]) + zeta * torch.eye(2, dtype=torch.float64))
                   for b, dt, x in zip(betas, dts, xs, strict=True))
    torch.testing.assert_close(sa_gradient(xs, scores, betas, dts, zeta), expected)
    torch.testing.assert_close(sa_gradient(xs, scores, betas, dts, zeta, kind="diagonal"), torch.diagonal(expected))


def test_sa_gradient_vanishes_when_backward_and_forward_marginals_agree() -> None:
    # Stein's identity E[grad log rho(x) x^T] = -I: with zeta = 1, states drawn from rho and rho's exact score, the
    # gradient is zero up to Monte-Carlo error (n = 200,000: entries within 5 standard errors, ~0.02).
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=torch.float64)
    x = torch.randn(1, 200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    grad = sa_gradient(x, -x @ torch.linalg.inv(sigma).T, torch.ones(1, dtype=torch.float64),
                       torch.ones(1, dtype=torch.float64), zeta=1.0)
    assert float(grad.abs().max()) < 0.02, grad
    # with zeta < 1 the constant push (1 - zeta) I remains (maths.md §C.4)
    grad = sa_gradient(x, -x @ torch.linalg.inv(sigma).T, torch.ones(1, dtype=torch.float64),
                       torch.ones(1, dtype=torch.float64), zeta=0.75)
    torch.testing.assert_close(grad, -0.25 * torch.eye(2, dtype=torch.float64), atol=0.02, rtol=0)


def test_sa_gradient_checks_its_inputs() -> None:
    x = torch.zeros(3, 4, 2)
    with pytest.raises(DataError, match="times, batch, dim"):
        sa_gradient(x, torch.zeros(3, 4, 3), torch.ones(3), torch.ones(3), 1.0)
    with pytest.raises(DataError, match="one value per grid time"):
        sa_gradient(x, x, torch.ones(2), torch.ones(3), 1.0)
    with pytest.raises(ConfigError, match="zeta must lie in \\[0, 1\\]"):
        sa_gradient(x, x, torch.ones(3), torch.ones(3), 1.5)


# ---------------------------------------------------------------- the solver
def _oracle(model: VSDM) -> VSDM:
    """Bind ``model``'s oracle network (and its EMA copy) to the model's own, changing, process."""
    for module in (model.models["score"], model.ema_models["score"]):
        module.bind(model.reference)
    return model


def test_the_gaussian_oracle_is_the_exact_score_under_a_vp_process() -> None:
    # data N(0, v) under VP: the marginal is N(0, alpha^2 v + sigma^2), score -x / (alpha^2 v + sigma^2)
    v, x, t = 4.0, torch.linspace(-3, 3, 7).reshape(-1, 1), 0.3
    model = _oracle(VSDM(1, beta_min=0.1, beta_max=10.0, net=GaussianNoiseOracle([0.0], [[v]]), device="cpu"))
    alpha, cov = model.reference.marginal(torch.ones_like(x), t)
    expected = -x / (alpha**2 * v + cov.var)
    torch.testing.assert_close(model.score(x, t), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="bind"):
        GaussianNoiseOracle([0.0], [[v]])(x, t)


def test_sa_moves_a_to_the_analytic_optimum_of_a_gaussian_problem() -> None:
    # Data N(0, 4), constant beta = 2 on [0, 1], fixed prior N(0, 1), zeta = 1, exact scores: A moves until the
    # forward law at T is the prior, e^{-2D} 4 + (1 - e^{-2D}) / D = 1, i.e. a* = (1 - D*) / 2 = -0.1545. Measured:
    # a = -0.168 with 50 Euler-Maruyama steps per SA update, -0.160 with 200 (the bias is the O(1/N) discretisation).
    v, beta = 4.0, 2.0
    d_star = brentq(lambda d: math.exp(-beta * d) * v + (1 - math.exp(-beta * d)) / d - 1, 0.5, 5)
    a_star = (1 - d_star) / 2
    model = _oracle(VSDM(1, beta_min=beta, beta_max=beta, zeta=1.0, prior=1.0, stages=40, sa_lr=0.3,
                         sa_samples=4000, sa_steps=50, net=GaussianNoiseOracle([0.0], [[v]]), device="cpu"))
    x = 2 * torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    model.fit(x, steps=40, batch_size=64, quiet=True)
    assert abs(float(model.A[0]) - a_star) < 0.03, (float(model.A[0]), a_star)
    assert model.history[0]["stage"] == 1 and len(model.history) == 40  # A starts at 0, 0.15 away from a*
    # the logged prior mismatch KL(law at T || prior) falls to ~0 as A reaches its fixed point
    kl = [r["prior_kl"] for r in model.history]
    assert kl[-1] < 0.01 and kl[-1] < kl[0] / 3, kl
    assert model.history[-1]["A_spectrum"] == pytest.approx([float(model.A[0])])


def test_vsdm_with_a_frozen_at_zero_is_sgm_under_the_same_schedule() -> None:
    x = toy.sample("moons", 500, seed=0)
    net = {"name": "mlp", "hidden": 32, "depth": 2}
    fit = {"steps": 60, "batch_size": 64, "lr": 2e-3, "quiet": True}
    vsdm = VSDM(2, beta_min=0.1, beta_max=20.0, beta_r=1.0, sa_lr=0.0, stages=1, net=net, seed=3, device="cpu")
    sgm = SGM(2, process="vp", net=net, seed=3, device="cpu")
    vsdm.fit(x, **fit)
    sgm.fit(x, **fit)
    assert vsdm.last_loss == pytest.approx(sgm.last_loss, rel=1e-5)
    for k, w in sgm.ema_models.state_dict().items():
        torch.testing.assert_close(vsdm.ema_models.state_dict()[k], w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vsdm.A, torch.zeros(2))


@pytest.mark.parametrize("extra", [{}, {"a_kind": "full", "a_pieces": 3, "a_ema": 0.5}])
def test_vsdm_saves_loads_and_resumes_exactly_in_the_middle_of_a_stage(tmp_path: Path, extra: dict) -> None:
    x = toy.sample("gaussian", 800, seed=0, cov=[[1.0, 0.0], [0.0, 16.0]])
    opts = {"net": {"name": "mlp", "hidden": 16, "depth": 1}, "stages": 3, "sa_samples": 200, "sa_steps": 10,
            "sa_lr": 0.2, "seed": 1, "device": "cpu", **extra}
    fit = {"steps": 30, "batch_size": 64, "quiet": True, "checkpoint_every": 5}
    whole = VSDM(2, **opts).fit(x, out=tmp_path / "whole", **fit)
    assert float(whole.A.abs().max()) > 0  # A did move

    def stop(step: int, loss: float) -> None:
        if step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        VSDM(2, **opts).fit(x, out=tmp_path / "cut", callbacks=(stop,), **fit)
    resumed = VSDM(2, **opts).fit(x, out=tmp_path / "cut", resume=True, **fit)
    torch.testing.assert_close(resumed.A, whole.A, atol=0, rtol=0)
    torch.testing.assert_close(resumed.A_scale, whole.A_scale, atol=0, rtol=0)
    loaded = sbridge.load(tmp_path / "whole")
    torch.testing.assert_close(loaded.A, whole.A, atol=0, rtol=0)
    torch.testing.assert_close(loaded.A_scale, whole.A_scale, atol=0, rtol=0)
    torch.testing.assert_close(loaded.sample(50, steps=5, seed=2), whole.sample(50, steps=5, seed=2))


@pytest.mark.parametrize("options, words", [
    ({"zeta": 1.5}, "zeta must lie in [0, 1]"),
    ({"beta_min": 1.0, "beta_max": 0.5}, "beta_max (0.5) must be at least beta_min"),
    ({"max_rate": 0.6}, "max_rate must lie in (0, 1/2)"),
    ({"sa_lr": -1}, "sa_lr must be a non-negative number"),
    ({"a_kind": "full", "shape": (1, 2, 2)}, "a full A acts on vectors"),
])
def test_vsdm_option_errors_are_sentences(options: dict, words: str) -> None:
    dim = None if "shape" in options else 2
    with pytest.raises(ConfigError) as err:
        VSDM(dim, **options)
    assert words in str(err.value)


def test_prior_mismatch_is_the_gaussian_kl_for_full_and_diagonal_a() -> None:
    # With A = 0 (VP, constant beta = 1) and a fixed N(0, 1) prior, the law at T of N(m, diag(s^2)) data is
    # N(alpha m, alpha^2 s^2 + 1 - alpha^2), alpha = e^{-1/2}: its KL to N(0, I) in closed form, for both kinds.
    alpha2 = math.exp(-1.0)
    m, s2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64)
    x = m + s2.sqrt() * torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    var = alpha2 * s2 + 1 - alpha2
    exact = float(0.5 * (var + alpha2 * m**2 - 1 - torch.log(var)).sum())
    for kind in ("diagonal", "full"):
        model = VSDM(2, beta_min=1.0, beta_max=1.0, prior=1.0, a_kind=kind, device="cpu")
        model.reference.double()
        assert model.prior_mismatch(x) == pytest.approx(exact, rel=0.02, abs=2e-3), kind


def test_a_vsdm_run_plots_its_variational_stages(tmp_path: Path) -> None:
    from sbridge.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", "vsdm", "--data", "spiral", "--steps", "30", "--n-data", "500", "--hidden",
                 "16", "--depth", "1", "--set", "stages=3", "--set", "sa_samples=100", "--set", "sa_steps=10",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["plot", str(run), "--n", "200", "--steps", "5"]) == 0
    assert (run / "plots" / "variational.png").stat().st_size > 10_000
    assert (run / "plots" / "forward_backward.png").stat().st_size > 10_000


def _transport_coupling(model: VSDM, n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward-SDE paths from the prior: (states at t = 0, states at the middle grid time, Cov(X_0, X_T))."""
    path = model.sample(n, steps=steps, return_path=True, seed=5).double()
    x0, xT = path[-1], path[0]
    cross = (x0 - x0.mean(0)).T @ (xT - xT.mean(0)) / n
    return x0, path[steps // 2], cross


def test_gaussian_check_vsdm_moves_its_transport_toward_the_closed_form_bridge() -> None:
    # maths.md §C.7 with centred data: N(0, [[1, 1], [1, 5]]) -> N(0, I) under constant beta = 1 (the reference alone
    # leaves X_T ~ N(0, [[1, .37], [.37, 2.5]]), far from the prior). Exact scores (the oracle network) isolate what
    # the SA on a full A does: VSDM's backward transport from the fixed N(0, I) prior, zeta = 1, is compared with
    # the closed-form SB under the same reference (LinearGaussianBridge). Measured: coupling error 0.31 with A = 0,
    # 0.068 after the SA; KL of the generated law to the data 0.079 -> 0.0016; of the t = 1/2 marginal 0.034 -> 0.012.
    cov = torch.tensor([[1.0, 1.0], [1.0, 5.0]])
    bridge = LinearGaussianBridge([0.0, 0.0], cov, [0.0, 0.0], torch.eye(2), c=lambda t: -0.5, g=lambda t: 1.0)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(cov).T
    errors = {}
    for stages, sa_lr in ((1, 0.0), (20, 0.3)):
        model = _oracle(VSDM(2, beta_min=1.0, beta_max=1.0, a_kind="full", zeta=1.0, prior=1.0, stages=stages,
                             sa_lr=sa_lr, sa_samples=2000, sa_steps=50, net=GaussianNoiseOracle([0.0, 0.0], cov),
                             device="cpu"))
        model.fit(x, steps=stages, batch_size=64, quiet=True)
        x0, mid, cross = _transport_coupling(model, 20_000, 50)
        errors[sa_lr] = (float((cross - bridge.C).norm() / bridge.C.norm()),
                         gaussian_kl(x0.mean(0), torch.cov(x0.T), torch.zeros(2), cov),
                         gaussian_kl(mid.mean(0), torch.cov(mid.T), bridge.mean(0.5), bridge.cov(0.5)))
    (c_ref, kl0_ref, mid_ref), (c_vsdm, kl0_vsdm, mid_vsdm) = errors[0.0], errors[0.3]
    assert c_ref > 0.2 and c_vsdm < 0.1, errors
    assert kl0_vsdm < 0.01 < kl0_ref and mid_vsdm < mid_ref / 2, errors


# ---------------------------------------------------------------- the time-varying scale A_t = h_k A
def _scaled_process(kind: str, scales: list[float]) -> tuple[VSDM, torch.Tensor]:
    model = VSDM(2, beta_min=0.5, beta_max=4.0, a_kind=kind, a_pieces=len(scales), device="cpu")
    a = torch.tensor([0.3, -0.8]) if kind == "diagonal" else torch.tensor([[0.3, 0.4], [-0.2, -0.8]])
    model.variational.iterate.copy_(a)
    model.variational.scale_iterate.copy_(torch.tensor(scales))
    model.reference.double()
    return model, a


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_piecewise_scaled_a_has_the_marginals_of_its_simulated_process(kind: str) -> None:
    # A_t = h_k A on three pieces (0.5, 1.5, 0): the composed closed form against 20k Euler-Maruyama paths at times
    # inside each piece (standard error ~0.01), continuous across the edges
    model, _ = _scaled_process(kind, [0.5, 1.5, 0.0])
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(20_000, 2)
    paths = model.reference.simulate(x0, 600, seed=0)
    for i in (100, 300, 500, 600):
        t = i / 600
        mean, cov = model.reference.marginal(x0[:1], t)
        torch.testing.assert_close(paths[i].mean(0), mean[0], atol=0.04, rtol=0)
        torch.testing.assert_close(torch.cov(paths[i].T), cov.dense(x0[:1])[0], atol=0.05, rtol=0)
    before = model.reference.marginal(x0[:1], 1 / 3 - 1e-9)
    after = model.reference.marginal(x0[:1], 1 / 3 + 1e-9)
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[1].dense(x0[:1]), after[1].dense(x0[:1]))


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_a_scale_of_ones_is_the_time_invariant_process(kind: str) -> None:
    model, a = _scaled_process(kind, [1.0, 1.0, 1.0, 1.0])
    plain = VSDM(2, beta_min=0.5, beta_max=4.0, a_kind=kind, device="cpu")
    plain.variational.iterate.copy_(a)
    plain.reference.double()
    x = torch.randn(7, 2, dtype=torch.float64)
    t = torch.tensor([0.001, 0.1, 0.25, 0.5, 0.6, 0.99, 1.0], dtype=torch.float64)
    for (m1, c1), (m2, c2) in [(model.reference.marginal(x, t), plain.reference.marginal(x, t))]:
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(c1.dense(x), c2.dense(x))
    torch.testing.assert_close(model.reference.drift(x, t), plain.reference.drift(x, t))


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_sa_gradients_of_a_and_its_scale_are_the_autograd_gradients_of_the_sa_loss(kind: str) -> None:
    # L(A, h) = sum_n beta_n dt_n E[ |h_k A x|^2 / 2 + (h_k A x)^T (s - h_k A_cur x) + zeta h_k tr A ] (maths.md §C.4
    # with A_t = h_k A), differentiated at the current (A, h): the solver's closed form must match autograd
    model, a = _scaled_process(kind, [0.5, 1.5, 0.8])
    g = torch.Generator().manual_seed(0)
    n_times, zeta = 6, 0.7
    xs = torch.randn(n_times, 50, 2, generator=g, dtype=torch.float64)
    scores = torch.randn(n_times, 50, 2, generator=g, dtype=torch.float64)
    times = torch.linspace(0.05, 0.95, n_times, dtype=torch.float64)
    betas = torch.linspace(1.0, 3.0, n_times, dtype=torch.float64)
    dts = torch.full((n_times,), 0.1, dtype=torch.float64)
    terms = sa_gradient(xs, scores, betas, dts, zeta, kind, per_time=True)
    grad, scale_grad = model._sa_step_gradients(terms, times)
    A = a.double().clone().requires_grad_(True)
    h = model.A_scale.double().clone().requires_grad_(True)
    k = model.variational.piece_of(times, 1.0)
    full_a = (torch.diag(A) if kind == "diagonal" else A)
    loss = 0.0
    for n in range(n_times):
        At, At_now = h[k[n]] * full_a, (h[k[n]] * full_a).detach()
        ax = xs[n] @ At.T
        phi = scores[n] - xs[n] @ At_now.T
        loss = loss + betas[n] * dts[n] * ((0.5 * (ax**2).sum(1) + (ax * phi).sum(1)).mean() + zeta * torch.trace(At))
    loss.backward()
    torch.testing.assert_close(grad, A.grad)
    torch.testing.assert_close(scale_grad, h.grad)


def test_vsdm_learns_a_time_varying_scale_that_removes_the_prior_mismatch() -> None:
    # the 1-D problem above (data N(0, 4), beta = 2, fixed N(0, 1) prior, zeta = 1, exact scores) with A_t = h_k A
    # on 4 pieces: the SA moves A and the scales until the forward law at T is the prior
    model = _oracle(VSDM(1, beta_min=2.0, beta_max=2.0, zeta=1.0, prior=1.0, stages=40, sa_lr=0.3, sa_samples=4000,
                         sa_steps=40, a_pieces=4, net=GaussianNoiseOracle([0.0], [[4.0]]), device="cpu"))
    x = 2 * torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    start = model.prior_mismatch(x)  # A = 0
    model.fit(x, steps=40, batch_size=64, quiet=True)
    kl = [r["prior_kl"] for r in model.history]
    assert start > 0.03 and max(kl[-5:]) < start / 10, (start, kl)
    scales = model.history[-1]["A_scale"]
    assert len(scales) == 4 and max(abs(h - 1) for h in scales) > 5e-4, scales  # moved (slowly: <A, G_k> is small)
