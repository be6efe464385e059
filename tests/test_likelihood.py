"""Exact likelihood through the probability-flow ODE (sbridge.numerics.likelihood).

With the exact score of a Gaussian data law, the probability-flow ODE of a VP process maps ``p_{t0}`` onto the
exact law ``p_T`` of ``X_T``, so ``log_prob_ode`` with ``log p_T`` as prior must give the analytic ``log p_{t0}`` up to
ODE error; Hutchinson estimates must be unbiased for the exact divergence.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.core.tensors import flat, sum_event
from sbridge.numerics.likelihood import divergence, log_prob_ode, nats_to_bits_per_dim, uniform_dequantize
from sbridge.processes.linear import VP

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def std_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (sum_event(x**2) + x[0].numel() * math.log(2 * math.pi))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


class GaussianSGM:
    """Data ``N(mu, S)`` diffused by a VP process: ``p_t = N(a_t mu, Sigma_t)``, ``Sigma_t = a_t^2 S + var_t I``,
    with exact score ``-Sigma_t^{-1} (x - a_t mu)``. ``S`` and every ``Sigma_t`` share eigenvectors, so the
    probability-flow map from ``t0`` to ``t`` is ``x -> m_t + Sigma_t^{1/2} Sigma_{t0}^{-1/2} (x - m_{t0})``."""

    def __init__(self, proc: VP, mu: torch.Tensor, S: torch.Tensor) -> None:
        self.proc, self.mu, self.S = proc, mu, S
        self.d = mu.numel()

    def moments(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.tensor(t, dtype=F64)
        a, var = self.proc.log_alpha(tt).exp(), self.proc.variance(tt)
        return a * self.mu, a**2 * self.S + var * torch.eye(self.d, dtype=F64)

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        m, cov = self.moments(t)
        return -torch.linalg.solve(cov, (x - m).T).T

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.proc.probability_flow(x, t, self.score(x, t))

    def log_prob(self, x: torch.Tensor, t: float) -> torch.Tensor:
        m, cov = self.moments(t)
        return gaussian_log_prob(x, m, cov)

    def flow_map(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        m0, c0 = self.moments(t_from)
        m1, c1 = self.moments(t_to)
        lam0, U = torch.linalg.eigh(c0)
        lam1 = torch.diagonal(U.T @ c1 @ U)
        A = U @ torch.diag((lam1 / lam0).sqrt()) @ U.T
        return m1 + (x - m0) @ A.T

    def sample(self, n: int, t: float, seed: int) -> torch.Tensor:
        m, cov = self.moments(t)
        z = torch.randn(n, self.d, generator=torch.Generator().manual_seed(seed), dtype=F64)
        return m + z @ torch.linalg.cholesky(cov).T


def check_exact_sgm(model: GaussianSGM) -> dict[str, float]:
    proc = model.proc
    t0, T = proc.t_min, proc.T
    x = model.sample(32, t0, seed=1)
    truth = model.log_prob(x, t0)

    # prior = the exact law of X_T: only the ODE error is left (rtol = atol = 1e-7 gives ~1e-7 nats)
    lp, nfe = log_prob_ode(model.velocity, x, t0=t0, t1=T, prior_log_prob=lambda y: model.log_prob(y, T),
                           rtol=1e-7, atol=1e-7, return_nfe=True)
    assert lp.shape == (32,) and lp.dtype == F64 and not lp.requires_grad
    assert nfe > 0
    err_exact = float((lp - truth).abs().max())
    assert err_exact < 1e-3

    # prior = N(0, I): the only change is the prior term at the (analytic) end point x_T of the flow, a mismatch of
    # size ~ alpha_T |mu| |x_T| with alpha_T = exp(-5.025) = 6.6e-3 for the default VP
    lp_std = log_prob_ode(model.velocity, x, t0=t0, t1=T, prior_log_prob=proc.prior_log_prob, rtol=1e-7, atol=1e-7)
    x_T = model.flow_map(x, t0, T)
    mismatch = proc.prior_log_prob(x_T) - model.log_prob(x_T, T)
    err_mismatch = float((lp_std - truth - mismatch).abs().max())
    assert err_mismatch < 1e-3
    # the mismatch log N(y; 0, I) - log N(y; a mu, a^2 S + (1 - a^2) I) is -a mu.y + O(a^2 (|y|^2 + |mu|^2 + d |S - I|))
    # with a = alpha_T = exp(-5.025) = 6.6e-3 for the default VP, so a^2 = 4.3e-5: 1e-3 covers the second order
    alpha_T = float(proc.log_alpha(torch.tensor(T, dtype=F64)).exp())
    bound = alpha_T * float(model.mu.norm()) * x_T.norm(dim=1) + 1e-3
    assert bool((mismatch.abs() <= bound).all())
    err_std = float((lp_std - truth).abs().max())
    assert err_std < 0.05  # = max |mismatch|: ~0.02 (d = 2) and ~0.04 (d = 3, |mu| = 2.3) for these 32 points
    return {"err_exact_prior": err_exact, "err_vs_mismatch": err_mismatch, "err_std_prior": err_std, "nfe": nfe}


def test_exact_score_isotropic_gaussian_vp() -> None:
    model = GaussianSGM(VP(), torch.tensor([1.0, -0.5], dtype=F64), 0.7**2 * torch.eye(2, dtype=F64))
    check_exact_sgm(model)


def test_exact_score_full_covariance_gaussian_vp() -> None:
    S = torch.tensor([[1.0, 0.6, -0.3], [0.6, 0.8, 0.2], [-0.3, 0.2, 0.5]], dtype=F64)
    assert bool((torch.linalg.eigvalsh(S) > 0).all())
    model = GaussianSGM(VP(), torch.tensor([0.5, -1.0, 2.0], dtype=F64), S)
    check_exact_sgm(model)


def test_log_prob_ode_float32_and_no_graph_leak() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    lp = log_prob_ode(lambda y, t: net(y), x, t0=0.0, t1=0.5, prior_log_prob=std_normal_log_prob)
    assert lp.dtype == torch.float32 and lp.shape == (5,) and not lp.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert not x.requires_grad
    with pytest.raises(ConfigError):
        log_prob_ode(lambda y, t: y, x, t0=0.5, t1=0.5, prior_log_prob=std_normal_log_prob)


# ============================================================================================ divergence
def tanh_field(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, object]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    b = 0.1 * torch.randn(d, generator=g, dtype=F64)

    def field(x: torch.Tensor, t: float) -> torch.Tensor:
        return torch.tanh(x @ W.T + b) * (1 + t) - 0.5 * x

    return W, b, field


def jacobian_trace(fn, x: torch.Tensor, t: float) -> torch.Tensor:
    """Independent reference: the trace of the full Jacobian of each sample."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda y: fn(y.unsqueeze(0), t)[0], xi)
        out.append(torch.diagonal(J.reshape(xi.numel(), xi.numel())).sum())
    return torch.stack(out)


def test_exact_divergence_matches_jacobian_trace() -> None:
    W, b, field = tanh_field(20, seed=3)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(4), dtype=F64)
    value, div = divergence(field, x, 0.3, method="exact")
    torch.testing.assert_close(value, field(x, 0.3))
    # analytic: div = (1 + t) sum_i (1 - tanh^2(W x + b)_i) W_ii - d / 2
    analytic = 1.3 * ((1 - torch.tanh(x @ W.T + b) ** 2) * torch.diagonal(W)).sum(1) - 10.0
    torch.testing.assert_close(div, analytic, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div, jacobian_trace(field, x, 0.3), rtol=1e-12, atol=1e-12)


def test_hutchinson_exact_for_diagonal_jacobian() -> None:
    # Rademacher noise has e_i^2 = 1, so e^T J e = tr J exactly when J is diagonal (an elementwise field)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    field = lambda y, t: torch.sin(y) * (2 + t)  # noqa: E731
    _, exact = divergence(field, x, 0.5, method="exact")
    _, hutch = divergence(field, x, 0.5, method="hutchinson")
    torch.testing.assert_close(hutch, exact, rtol=1e-12, atol=1e-12)


def test_hutchinson_unbiased_for_exact_divergence() -> None:
    d, k = 20, 4000
    _, _, field = tanh_field(d, seed=5)
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(6), dtype=F64)
    _, exact = divergence(field, x, 0.2, method="exact")
    g = torch.Generator().manual_seed(7)
    noise = (2 * torch.randint(0, 2, (k, *x.shape), generator=g) - 1).to(F64)
    # one estimate per noise: e^T J e = sum(e * (e^T J)); the mean over k noises is what divergence() returns
    est = torch.stack([divergence(field, x, 0.2, method="hutchinson", noise=e)[1] for e in noise])   # (k, batch)
    mean, se = est.mean(0), est.std(0) / math.sqrt(k)
    assert bool((se > 1e-3).all())                       # the estimator really is noisy (J is not diagonal)
    assert bool(((mean - exact).abs() < 4 * se).all())
    # divergence() with the stacked noises averages them
    _, stacked = divergence(field, x, 0.2, method="hutchinson", noise=noise)
    torch.testing.assert_close(stacked, mean, rtol=1e-10, atol=1e-10)


def test_hutchinson_log_prob_ode_unbiased() -> None:
    d, seeds = 20, 24
    _, _, field = tanh_field(d, seed=8)
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(9), dtype=F64)
    kw = dict(t0=0.0, t1=1.0, prior_log_prob=std_normal_log_prob, rtol=1e-6, atol=1e-6)
    exact = log_prob_ode(field, x, divergence="exact", **kw)
    # "auto" with d = 20 > exact_max_dim = 16 picks Hutchinson; the same seed gives the same (fixed) noise
    auto = log_prob_ode(field, x, seed=0, **kw)
    torch.testing.assert_close(auto, log_prob_ode(field, x, divergence="hutchinson", seed=0, **kw))
    runs = torch.stack([log_prob_ode(field, x, divergence="hutchinson", seed=s, **kw) for s in range(seeds)])
    mean, sd = runs.mean(0), runs.std(0)
    se = sd / math.sqrt(seeds)
    assert bool((sd > 1e-2).all())                       # different seeds do give different estimates
    assert bool(((mean - exact).abs() < 4 * se).all())
    # averaging 8 fixed noises per run cuts the variance by ~8 (F-test: P(sd8 > sd1) ~ 1e-5 for 24 runs each)
    runs8 = torch.stack([log_prob_ode(field, x, hutchinson_samples=8, seed=100 + s, **kw) for s in range(seeds)])
    assert bool((runs8.std(0) < sd).all())
    assert bool(((runs8.mean(0) - exact).abs() < 4 * runs8.std(0) / math.sqrt(seeds)).all())


# ============================================================================================ event shapes
def test_image_shaped_input_matches_flattened() -> None:
    g = torch.Generator().manual_seed(11)
    kernel = 0.3 * torch.randn(1, 1, 3, 3, generator=g, dtype=F64)

    def image_field(x: torch.Tensor, t: float) -> torch.Tensor:            # (batch, 1, 4, 4)
        return torch.tanh(torch.nn.functional.conv2d(x, kernel, padding=1)) * (1 - t) - 0.3 * x

    def flat_field(x: torch.Tensor, t: float) -> torch.Tensor:             # (batch, 16)
        return flat(image_field(x.reshape(-1, 1, 4, 4), t))

    x = torch.randn(5, 1, 4, 4, generator=g, dtype=F64)
    v_img, div_img = divergence(image_field, x, 0.25)
    v_flat, div_flat = divergence(flat_field, flat(x), 0.25)
    torch.testing.assert_close(flat(v_img), v_flat, rtol=0, atol=0)
    torch.testing.assert_close(div_img, div_flat, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(div_img, jacobian_trace(image_field, x, 0.25), rtol=1e-12, atol=1e-12)

    kw = dict(t0=0.0, t1=1.0, prior_log_prob=std_normal_log_prob, rtol=1e-7, atol=1e-7, return_nfe=True)
    lp_img, nfe_img = log_prob_ode(image_field, x, **kw)       # 16 scalars per sample: "auto" is exact
    lp_flat, nfe_flat = log_prob_ode(flat_field, flat(x), **kw)
    assert lp_img.shape == (5,) and nfe_img == nfe_flat
    torch.testing.assert_close(lp_img, lp_flat, rtol=1e-10, atol=1e-10)
    # "auto" used the exact divergence: the result does not depend on the seed
    torch.testing.assert_close(log_prob_ode(image_field, x, seed=123, **kw)[0], lp_img, rtol=0, atol=0)


def test_divergence_rejects_bad_shapes() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(DataError):
        divergence(lambda y, t: y[:, :2], x, 0.0)
    with pytest.raises(DataError):
        divergence(lambda y, t: y, x, 0.0, method="hutchinson", noise=torch.ones(2, 4))


# ============================================================================================ bits per dimension
def test_bits_per_dim() -> None:
    D = 3 * 8 * 8
    # a uniform density on [0, 1]^D has log p = 0: 8-bit data need exactly 8 bits per dimension
    bpd = nats_to_bits_per_dim(torch.zeros(4, dtype=F64), D, dequantization_levels=256)
    torch.testing.assert_close(bpd, torch.full((4,), 8.0, dtype=F64), rtol=0, atol=1e-12)
    lp = torch.tensor([-100.0, 25.0, 0.0], dtype=F64)
    torch.testing.assert_close(nats_to_bits_per_dim(lp, D), -lp / (D * math.log(2)), rtol=1e-15, atol=0)
    # the same model density measured on the integer scale [0, 256]^D: log p_int = log p - D ln 256
    torch.testing.assert_close(nats_to_bits_per_dim(lp, D, dequantization_levels=256),
                               nats_to_bits_per_dim(lp - D * math.log(256), D), rtol=1e-15, atol=1e-12)


def test_uniform_dequantize() -> None:
    K, n = 256, 20000
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, K, (n,), generator=g)
    x = k.to(F64) / (K - 1)
    y = uniform_dequantize(x, K, generator=g)
    assert bool((y >= 0).all() and (y < 1).all())
    assert torch.equal(torch.floor(y * K).long(), k)                 # each level stays in its own cell
    u = y * K - k
    # U(0, 1): mean 1/2 with standard error sqrt(1/12 / n)
    assert abs(float(u.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    with pytest.raises(DataError):
        uniform_dequantize(x * 2, K)


def test_divergence_create_graph_differentiates_through_the_trace() -> None:
    # div(a tanh(x)) = a sum(1 - tanh^2 x), so d div / d a = sum(1 - tanh^2 x), for both estimators (the Jacobian is
    # diagonal, so Hutchinson with Rademacher noise is exact)
    a = torch.tensor(1.7, dtype=F64, requires_grad=True)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    for method in ("exact", "hutchinson"):
        _, div = divergence(lambda y, t: a * torch.tanh(y), x, 0.0, method=method, create_graph=True)
        (grad,) = torch.autograd.grad(div.sum(), a)
        torch.testing.assert_close(grad, (1 - torch.tanh(x) ** 2).sum(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the path-space bound (ELBO)
def _gaussian_sgm(prior: Any, mean: list[float], var: list[float]) -> Any:
    """An SGM (VP) with the exact noise prediction of N(mean, diag(var)) data and the given prior."""
    from sbridge import SGM
    from sbridge.processes.gaussian import GaussianNoiseOracle
    from sbridge.processes.linear import LinearSDE, PowerRate

    vp = LinearSDE(PowerRate(0.1, 20.0), {"kind": "scalar", "value": 1.0}, prior=prior)  # VP with another prior
    model = SGM(2, process=vp, net=GaussianNoiseOracle(mean, torch.diag(torch.tensor(var))), device="cpu")
    for module in (model.models["score"], model.ema_models["score"]):
        module.bind(model.reference)
    return model


def test_elbo_is_tight_for_an_exact_score_and_prior_and_below_for_a_wrong_prior() -> None:
    # Gaussian data, exact score: with the exact law at T as prior the bound equals log p_{t_min}(x) (to Monte Carlo
    # and discretisation error, ~0.01 nats here), as does the exact ODE likelihood; with a prior 4x too wide the
    # data's mean bound falls clearly below (cross-entropy >= entropy)
    mean, var = [1.0, -2.0], [0.5, 3.0]
    exact = _gaussian_sgm("fitted", mean, var)
    x = torch.tensor(mean) + torch.randn(400, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor(var).sqrt()
    m, v = torch.tensor(mean), torch.tensor(var)

    def law_at(t: float) -> tuple[torch.Tensor, torch.Tensor]:  # N(alpha m, alpha^2 v + sigma^2) per coordinate
        alpha, cov = exact.reference.marginal(torch.ones(1, 2), t)
        return alpha[0] * m, alpha[0] ** 2 * v + cov.var.expand(1, 2)[0]

    prior_mean, prior_var = law_at(exact.reference.T)
    exact.reference.register_buffer("prior_mean", prior_mean)
    exact.reference.register_buffer("prior_var", prior_var)
    mean_0, var_0 = law_at(exact.reference.t_min)
    log_p = torch.distributions.Normal(mean_0, var_0.sqrt()).log_prob(x).sum(1)
    bound = exact.elbo(x, steps=100, repeats=8, seed=1)
    gap = bound - log_p
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / 400**0.5 + 0.02, (float(gap.mean()), float(gap.std()))
    torch.testing.assert_close(exact.log_prob(x[:50]), log_p[:50], atol=2e-3, rtol=0)
    wide = _gaussian_sgm(4.0, mean, var)
    loose = wide.elbo(x, steps=100, repeats=2, seed=1)
    assert float(loose.mean()) < float(log_p.mean()) - 0.3, (float(loose.mean()), float(log_p.mean()))


def test_elbo_checks_its_grid() -> None:
    from sbridge.numerics.likelihood import path_elbo

    x = torch.zeros(3, 2)
    with pytest.raises(ConfigError, match="increasing"):
        path_elbo(lambda y, t: y, lambda y, t: y, VP(), x, [0.5, 0.2])
