"""Tests for sbridge.processes.linear: closed-form marginals against simulation, scores, priors and configuration."""

from __future__ import annotations

import math

import pytest
import torch

from sbridge.core.errors import ConfigError, NotPositiveDefiniteError
from sbridge.processes.linear import OU, VE, VP, Brownian, DriftMatrix, LinearSDE, PowerRate, Process, make_process

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")

# One instance of each process; Brownian gets T != 1 and sigma != 1 so that both parameters are exercised.
PROCESSES = [VP(), VE(), Brownian(sigma=1.5, T=2.0, prior="marginal")]
IDS = [p.name for p in PROCESSES]


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def _mean_std(proc: Process, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-coordinate std of X_t | x0 for an isotropic process (its covariance is std^2 I)."""
    mean, cov = proc.marginal(x0, t)
    return mean, cov.std


def _prior_std(proc: Process) -> float:
    mean, cov = proc.prior_moments((1,), torch.zeros(1, 1, dtype=F64))
    assert mean is None
    return float(cov.var.sqrt())


# ---------------------------------------------------------------- closed-form marginal vs Euler-Maruyama


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_closed_form_marginal_matches_euler_maruyama_simulation(proc: Process) -> None:
    """Simulate dX = f dt + g dW from a fixed x0 and compare with X_t | x0 ~ N(alpha(t) x0, std(t)^2 I).

    Bound per coordinate: 4 standard errors (SE of the mean std/sqrt(n), of the std std/sqrt(2n)) plus the
    discretisation bias of Euler-Maruyama, computed exactly from the moment recursion of the same scheme
    (m <- (1 + c dt) m, v <- (1 + c dt)^2 v + g^2 dt). That bias is itself required to be small, so a wrong
    drift or diffusion coefficient cannot hide inside the allowance.
    """
    n_paths, steps = 20_000, 1000
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    dt = proc.T / steps
    record = {100: None, 500: None, 1000: None}  # t = 0.1 T, 0.5 T, T
    gen = torch.Generator().manual_seed(1234)
    x = x0.expand(n_paths, -1).clone()
    m_disc, v_disc = x0.clone(), torch.zeros((), dtype=F64)
    for k in range(steps):
        t = k * dt
        c, g = proc.drift_coef(_t(t)), proc.diffusion(_t(t))
        x = x + proc.drift(x, t) * dt + proc.g(t, x) * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=F64)
        m_disc, v_disc = (1 + c * dt) * m_disc, (1 + c * dt) ** 2 * v_disc + g**2 * dt
        if k + 1 in record:
            record[k + 1] = (x.clone(), m_disc.clone(), v_disc.sqrt())
    for k, (xs, mean_disc, std_disc) in record.items():
        t = k * dt
        mean, std = _mean_std(proc, x0, t)
        std = float(std)
        mean_allow = (mean_disc - mean).abs()
        std_allow = abs(float(std_disc) - std)
        # The scheme has weak order 1, bias ~ C dt with dt = 1e-3 T: it must stay below 1% of the std (and of
        # |mean| + std for the mean); the exact consistency of the coefficients is checked by the quadrature tests.
        assert bool((mean_allow < 0.01 * (mean.abs() + std)).all()), (t, mean_allow)
        assert std_allow < 0.01 * std, (t, std_allow)
        sample_mean, sample_std = xs.mean(0), xs.std(0)
        se_mean, se_std = std / math.sqrt(n_paths), std / math.sqrt(2 * n_paths)
        assert bool(((sample_mean - mean).abs() <= 4 * se_mean + mean_allow).all()), (t, sample_mean, mean)
        assert bool(((sample_std - std).abs() <= 4 * se_std + std_allow).all()), (t, sample_std, std)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_variance_is_the_integral_of_g_squared_over_alpha_squared(proc: Process) -> None:
    # Var(X_t | X_0) = alpha(t)^2 int_0^t g(s)^2 / alpha(s)^2 ds (the docstring's definition), by Simpson's rule on
    # 2000 intervals (error ~1e-10 for these smooth integrands) against the closed form, relative 1e-6.
    for frac in (0.05, 0.3, 1.0):
        t = frac * proc.T
        s = torch.linspace(0.0, t, 2001, dtype=F64)
        f = proc.diffusion(s) ** 2 * torch.exp(-2 * proc.log_alpha(s))
        h = t / 2000
        simpson = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
        expected = torch.exp(2 * proc.log_alpha(_t(t))) * simpson
        assert float(proc.variance(_t(t))) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_log_alpha_is_the_integral_of_the_drift_coefficient(proc: Process) -> None:
    # log alpha(t) = int_0^t c(s) ds; c is linear in t (VP) or zero, so the trapezoid rule is exact up to rounding.
    for frac in (0.1, 0.7, 1.0):
        t = frac * proc.T
        s = torch.linspace(0.0, t, 101, dtype=F64)
        assert float(proc.log_alpha(_t(t))) == pytest.approx(float(torch.trapezoid(proc.drift_coef(s), s)), abs=1e-12)


# ---------------------------------------------------------------- scores, broadcasting, sampling the marginal


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_conditional_score_is_the_gradient_of_the_gaussian_log_density(proc: Process, per_sample_t: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(5, 3, generator=gen, dtype=F64)
    if per_sample_t:
        t = proc.t_min + (proc.T - proc.t_min) * torch.rand(5, generator=gen, dtype=F64)
    else:
        t = 0.37 * proc.T
    xt = (3 * torch.randn(5, 3, generator=gen, dtype=F64)).requires_grad_(True)
    mean, std = _mean_std(proc, x0, t)
    log_density = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(xt).sum()
    (grad,) = torch.autograd.grad(log_density, xt)
    score = proc.conditional_score(xt.detach(), x0, t)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_per_sample_times_broadcast_row_by_row(proc: Process) -> None:
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 2, generator=gen, dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.5, 1.0], dtype=F64) * proc.T
    mean, std = _mean_std(proc, x0, t)
    assert mean.shape == (4, 2) and std.shape == (4, 1)
    for i in range(4):
        mean_i, std_i = _mean_std(proc, x0[i:i + 1], float(t[i]))
        torch.testing.assert_close(mean[i], mean_i[0], rtol=1e-12, atol=0.0)
        torch.testing.assert_close(std[i, 0], std_i, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(proc.std(float(t[i]), like=x0), std_i, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_sample_marginal_returns_mean_plus_std_times_noise(proc: Process) -> None:
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = 0.4 * proc.T
    xt, noise = proc.sample_marginal(x0, t, torch.Generator().manual_seed(1))
    mean, std = _mean_std(proc, x0, t)
    torch.testing.assert_close(xt, mean + std * noise, rtol=0.0, atol=0.0)
    # Same generator seed -> same draw.
    xt2, _ = proc.sample_marginal(x0, t, torch.Generator().manual_seed(1))
    assert torch.equal(xt, xt2)


# ---------------------------------------------------------------- priors


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_prior_sample_has_std_prior_std(proc: Process) -> None:
    # 20k x 3 draws: sample mean within 4 SE (s/sqrt(n)) of 0 and sample std within 4 SE (s/sqrt(2n)) of s.
    n, d, s = 20_000, 3, _prior_std(proc)
    x = proc.prior_sample((n, d), generator=torch.Generator().manual_seed(11), dtype=F64)
    assert x.shape == (n, d) and x.dtype == F64
    assert bool((x.mean(0).abs() <= 4 * s / math.sqrt(n)).all())
    assert bool(((x.std(0) - s).abs() <= 4 * s / math.sqrt(2 * n)).all())


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_prior_log_prob_is_the_isotropic_normal_density(proc: Process) -> None:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * 2
    expected = torch.distributions.Normal(_t(0.0), _t(_prior_std(proc))).log_prob(x).sum(1)
    torch.testing.assert_close(proc.prior_log_prob(x), expected, rtol=1e-12, atol=1e-12)


def test_vp_variance_reaches_one_at_T_and_matches_its_prior() -> None:
    proc = VP()
    T = _t(proc.T)
    # Var(T) = 1 - exp(-int_0^T beta) = 1 - exp(-(beta_min + beta_max) T / 2) = 1 - e^-10.05 ~ 1 - 4.3e-5.
    expected = -math.expm1(-(proc.beta_min + proc.beta_max) * proc.T / 2)
    assert float(proc.variance(T)) == pytest.approx(expected, rel=1e-12)
    assert abs(float(proc.variance(T)) - 1.0) < 1e-4
    assert _prior_std(proc) == 1.0
    # Variance preserving: alpha^2 + Var = 1 at every t, so unit-variance data keeps unit variance.
    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    torch.testing.assert_close(torch.exp(2 * proc.log_alpha(t)) + proc.variance(t), torch.ones_like(t))


def test_ve_and_brownian_priors_match_their_variance_at_T() -> None:
    ve = VE(sigma_min=0.01, sigma_max=10.0)
    # Var(T) = sigma_max^2 - sigma_min^2: the N(0, sigma_max^2) prior is off by sigma_min^2 only.
    assert float(ve.variance(_t(ve.T))) == pytest.approx(10.0**2 - 0.01**2, rel=1e-12)
    assert _prior_std(ve) == 10.0
    bm = Brownian(sigma=1.5, T=2.0, prior="marginal")
    assert float(bm.variance(_t(2.0))) == pytest.approx(1.5**2 * 2.0, rel=1e-12)
    assert _prior_std(bm) ** 2 == pytest.approx(float(bm.variance(_t(2.0))), rel=1e-12)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_t_min_is_small_positive_and_std_is_increasing(proc: Process) -> None:
    assert 0 < proc.t_min < 0.01 * proc.T
    t = torch.linspace(proc.t_min, proc.T, 50, dtype=F64)
    std = proc.variance(t).sqrt()
    assert bool((std > 0).all()) and bool((std[1:] > std[:-1]).all())


# ---------------------------------------------------------------- make_process and config round trip


@pytest.mark.parametrize("name, cls", [("vp", VP), ("ve", VE), ("brownian", Brownian)])
def test_make_process_from_name_gives_the_defaults(name: str, cls: type[Process]) -> None:
    proc = make_process(name)
    assert type(proc) is cls
    assert proc.config() == cls().config()


def test_make_process_from_dict_sets_parameters() -> None:
    proc = make_process({"name": "ve", "sigma_max": 20.0, "T": 2.0})
    assert isinstance(proc, VE)
    assert proc.sigma_max == 20.0 and proc.T == 2.0 and proc.sigma_min == VE().sigma_min
    assert _prior_std(proc) == 20.0


def test_make_process_returns_a_process_unchanged() -> None:
    proc = Brownian(sigma=0.5)
    assert make_process(proc) is proc


@pytest.mark.parametrize("spec", ["nope", "", {"name": "cosine"}, {"beta_min": 0.1}, 3, None, ["vp"]])
def test_make_process_rejects_unknown_names_and_malformed_specs(spec: object) -> None:
    with pytest.raises(ConfigError):
        make_process(spec)  # type: ignore[arg-type]


def test_unknown_process_message_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="vp.*ve.*brownian"):
        make_process("nope")


@pytest.mark.parametrize("spec", [
    {"name": "vp", "beta_min": -1.0},
    {"name": "vp", "beta_max": 0.05},  # below the default beta_min = 0.1
    {"name": "vp", "T": 0.0},
    {"name": "vp", "bogus": 1},
    {"name": "ve", "sigma_min": 5.0, "sigma_max": 1.0},
    {"name": "ve", "sigma_max": float("nan")},
    {"name": "ve", "sigma_min": float("inf")},
    {"name": "brownian", "sigma": 0.0},
    {"name": "brownian", "sigma": "abc"},
    {"name": "brownian", "sigma": True},
    {"name": "brownian", "beta_min": 0.1},
])
def test_make_process_rejects_invalid_parameters(spec: dict) -> None:
    with pytest.raises(ConfigError):
        make_process(spec)


def test_invalid_process_parameters_name_what_is_needed_and_accepted() -> None:
    with pytest.raises(ConfigError, match=r"'linear': it needs schedule; it takes schedule, drift, prior"):
        make_process("linear")
    with pytest.raises(ConfigError, match=r"\['bogus'\] for process 'vp': it takes beta_min, beta_max, T"):
        make_process({"name": "vp", "bogus": 1})


@pytest.mark.parametrize("proc", [*PROCESSES, VP(beta_min=0.05, beta_max=12.0, T=3.0),
                                  VE(sigma_min=0.1, sigma_max=3.0)], ids=[*IDS, "vp-custom", "ve-custom"])
def test_config_round_trips_through_make_process(proc: Process) -> None:
    rebuilt = make_process(proc.config())
    assert type(rebuilt) is type(proc)
    assert rebuilt.config() == proc.config()
    assert rebuilt.t_min == proc.t_min
    t = torch.linspace(proc.t_min, proc.T, 7, dtype=F64)
    assert torch.equal(rebuilt.variance(t), proc.variance(t))
    assert torch.equal(rebuilt.log_alpha(t), proc.log_alpha(t))
    assert torch.equal(rebuilt.diffusion(t), proc.diffusion(t))
    # config() is plain JSON-compatible data (it is stored in config.json).
    import json

    assert json.loads(json.dumps(proc.config())) == proc.config()


# ---------------------------------------------------------------- matrix-valued coefficients (maths.md §C.2, §E.2)
D_FULL = torch.tensor([[1.5, 0.3], [0.3, 0.6]], dtype=F64)  # maths.md §E.2's example


def _matrix_processes() -> dict[str, LinearSDE]:
    sched = PowerRate(0.1, 4.0)
    return {"diagonal": LinearSDE(sched, DriftMatrix("diagonal", [1.5, 0.6])),
            "full-symmetric": LinearSDE(sched, DriftMatrix("full", D_FULL)),
            "full-general": LinearSDE(sched, DriftMatrix("full", [[1.5, 0.3], [-0.2, 0.6]]))}


def _expm_moments(D: torch.Tensor, B: float, x0: torch.Tensor, n_quad: int = 4000) -> tuple[torch.Tensor, ...]:
    """M = expm(-B D / 2) and Sigma = int_0^B expm(-u D / 2) expm(-u D^T / 2) du by Simpson's rule on expm."""
    u = torch.linspace(0.0, B, n_quad + 1, dtype=F64)
    E = torch.linalg.matrix_exp(-0.5 * u[:, None, None] * D)
    f = E @ E.transpose(-1, -2)
    h = B / n_quad
    sigma = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum(0) + 2 * f[2:-1:2].sum(0))
    return x0 @ torch.linalg.matrix_exp(-0.5 * B * D).T, sigma


@pytest.mark.parametrize("name", ["diagonal", "full-symmetric", "full-general"])
def test_matrix_coefficient_marginals_match_expm_quadrature(name: str) -> None:
    # Closed form (eigendecomposition or the matrix fraction) against Simpson quadrature of expm, to 1e-9.
    proc = _matrix_processes()[name]
    D = proc.D.matrix()
    D = torch.diag(D) if D.ndim == 1 else D
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.25]], dtype=F64)
    for t in (0.1, 0.5, 1.0):
        B = float(proc.schedule.integral(_t(t)))
        mean_ref, cov_ref = _expm_moments(D, B, x0)
        mean, cov = proc.marginal(x0, t)
        torch.testing.assert_close(mean, mean_ref, rtol=0, atol=1e-11)
        torch.testing.assert_close(cov.dense(x0)[0], cov_ref, rtol=0, atol=1e-9)


def test_matrix_fraction_matches_the_closed_form_of_maths_e2() -> None:
    # Symmetric D: Sigma = D^{-1} (I - exp(-B D)) (maths.md §E.2), for both code paths, to 1e-13.
    x0 = torch.zeros(1, 2, dtype=F64)
    for symmetric in (True, False):
        proc = LinearSDE(PowerRate(0.1, 4.0), DriftMatrix("full", D_FULL, symmetric=symmetric))
        B = float(proc.schedule.integral(_t(0.7)))
        expected = torch.linalg.inv(D_FULL) @ (torch.eye(2, dtype=F64) - torch.linalg.matrix_exp(-B * D_FULL))
        torch.testing.assert_close(proc.marginal(x0, 0.7)[1].dense(x0)[0], expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["diagonal", "full-general"])
def test_matrix_coefficient_marginals_match_euler_maruyama(name: str) -> None:
    # 20k paths of dX = -beta D X / 2 dt + sqrt(beta) dW from a fixed x0 (1000 steps): sample mean within 4 SE and
    # sample covariance within 4 SE of the closed form plus 1 % for the scheme's O(dt) bias (maths.md §E.2 reports
    # ~3e-3 agreement for the same setting with 200k paths).
    proc = _matrix_processes()[name]
    n, steps = 20_000, 1000
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    gen = torch.Generator().manual_seed(5)
    x = x0.expand(n, -1).clone()
    dt = 1.0 / steps
    for k in range(steps):
        t = k * dt
        x = x + proc.drift(x, t) * dt + proc.g(t, x) * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=F64)
    mean, cov = proc.marginal(x0[None], 1.0)
    cov = cov.dense(x0[None])[0]
    sd = cov.diagonal().sqrt()
    assert bool(((x.mean(0) - mean[0]).abs() <= 4 * sd / math.sqrt(n) + 0.01 * sd).all())
    emp = torch.cov(x.T)
    se = torch.sqrt((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n)  # SE of a Gaussian covariance
    assert bool(((emp - cov).abs() <= 4 * se + 0.01 * torch.outer(sd, sd)).all()), (emp, cov)


@pytest.mark.parametrize("name", ["diagonal", "full-symmetric", "full-general"])
def test_matrix_conditional_score_and_sampling(name: str) -> None:
    # The score is the gradient of the Gaussian log density; x_t = mean + L noise with L L^T = Sigma; the
    # noise-to-score map gives the same score.
    proc = _matrix_processes()[name]
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 2, generator=gen, dtype=F64)
    t = torch.rand(5, generator=gen, dtype=F64) * 0.9 + 0.05
    xt, noise = proc.sample_marginal(x0, t, gen)
    mean, cov = proc.marginal(x0, t)
    dense = cov.dense(x0)
    L = torch.linalg.cholesky(dense)
    torch.testing.assert_close(xt, mean + (L @ noise[..., None])[..., 0], rtol=0, atol=1e-12)
    x = xt.clone().requires_grad_(True)
    logp = torch.distributions.MultivariateNormal(mean, dense).log_prob(x).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(proc.conditional_score(xt, x0, t), grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov.score_from_noise(noise), grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov.log_prob(xt - mean), torch.distributions.MultivariateNormal(mean, dense)
                               .log_prob(xt), rtol=0, atol=1e-10)


def test_diagonal_drift_on_images_acts_per_coordinate() -> None:
    # A per-channel diagonal D on (n, 2, 3, 3) images equals two scalar processes, channel by channel.
    rates = torch.tensor([0.5, 2.0], dtype=F64).reshape(2, 1, 1)
    proc = LinearSDE(PowerRate(0.1, 10.0), DriftMatrix("diagonal", rates))
    x0 = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=F64)
    mean, cov = proc.marginal(x0, t)
    for c, rate in enumerate((0.5, 2.0)):
        scalar = LinearSDE(PowerRate(0.1, 10.0), DriftMatrix("scalar", rate))
        m_c, cov_c = scalar.marginal(x0[:, c], t)
        torch.testing.assert_close(mean[:, c], m_c, rtol=0, atol=1e-14)
        torch.testing.assert_close(cov.var.expand_as(x0)[:, c], cov_c.var.expand_as(m_c), rtol=0, atol=1e-14)
    assert proc.prior_log_prob(x0).shape == (4,)


def test_learned_drift_is_a_parameter_and_a_bad_one_raises_one_sentence() -> None:
    proc = LinearSDE(PowerRate(0.1, 20.0), DriftMatrix("full", D_FULL, learnable=True, symmetric=True),
                     prior="stationary")
    assert [n for n, _ in proc.named_parameters()] == ["D.value"]
    x0 = torch.zeros(3, 2)
    loss = proc.marginal(x0, 0.5)[1].logdet(x0).sum()
    loss.backward()
    assert proc.D.value.grad is not None and bool(torch.isfinite(proc.D.value.grad).all())
    with torch.no_grad():
        proc.D.value.copy_(torch.tensor([[-30.0, 0.0], [0.0, 1.0]]))  # exp(+B * 15) overflows in float32
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        proc.sample_marginal(x0, 1.0)
    with pytest.raises(NotPositiveDefiniteError, match="stationary prior"):
        proc.prior_sample((2, 2))
    diag = LinearSDE(PowerRate(0.1, 20.0), DriftMatrix("diagonal", [-30.0, 1.0]))
    with pytest.raises(NotPositiveDefiniteError):
        diag.marginal(torch.zeros(2, 2), 1.0)


def test_stationary_prior_needs_a_pulling_drift() -> None:
    with pytest.raises(ConfigError, match="prior='marginal'"):
        LinearSDE(PowerRate(), None, prior="stationary")
    ou = OU(sigma=1.3)
    torch.testing.assert_close(ou.marginal(torch.zeros(1, 1), 50.0)[1].var.reshape(()), torch.tensor(1.0))


def test_fitted_prior_matches_the_moments_of_x_T_and_is_saved() -> None:
    # Brownian sigma on [0, 1]: X_T = X_0 + sigma W_1, so mean(X_T) = mean(X_0) and Var = Var(X_0) + sigma^2.
    bm = Brownian(sigma=0.8)
    data = torch.tensor([[1.0, 2.0], [3.0, -2.0], [5.0, 0.0]])
    with pytest.raises(ConfigError, match="fit"):
        bm.prior_sample((2, 2))
    bm.fit_prior(data)
    torch.testing.assert_close(bm.prior_mean, data.mean(0))
    torch.testing.assert_close(bm.prior_var, data.var(0) + 0.64)
    x = bm.prior_sample((40_000, 2), generator=torch.Generator().manual_seed(0))
    se = (data.var(0) + 0.64).sqrt() / math.sqrt(40_000)
    assert bool(((x.mean(0) - data.mean(0)).abs() < 4 * se).all())
    rebuilt = make_process(bm.config())
    rebuilt.load_state_dict(bm.state_dict())
    torch.testing.assert_close(rebuilt.prior_log_prob(x[:5]), bm.prior_log_prob(x[:5]))


@pytest.mark.parametrize("proc", [Brownian(sigma=0.7, prior="marginal"), OU(sigma=1.2), VP()], ids=["bm", "ou", "vp"])
def test_bridge_sample_matches_the_gaussian_conditional(proc: LinearSDE) -> None:
    # X_t | X_0 = a, X_T = b by conditioning the joint Gaussian of (X_t, X_T) given X_0 (built from the marginal and
    # the transition t -> T), against 100k draws: mean within 4 SE, variance within 4 SE.
    n, t = 100_000, 0.3 * proc.T
    a, b = torch.full((n, 1), 0.5, dtype=F64), torch.full((n, 1), -1.0, dtype=F64)
    xs = proc.bridge_sample(a, b, torch.full((n,), t, dtype=F64), torch.Generator().manual_seed(0))
    al_t, al_T = math.exp(float(proc.log_alpha(_t(t)))), math.exp(float(proc.log_alpha(_t(proc.T))))
    v_t, v_T = float(proc.variance(_t(t))), float(proc.variance(_t(proc.T)))
    cov_tT = v_t * al_T / al_t  # Cov(X_t, X_T | X_0)
    mean = al_t * 0.5 + cov_tT / v_T * (-1.0 - al_T * 0.5)
    var = v_t - cov_tT**2 / v_T
    assert abs(float(xs.mean()) - mean) < 4 * math.sqrt(var / n)
    assert abs(float(xs.var()) - var) < 4 * var * math.sqrt(2 / n)


def test_linear_process_config_round_trips_with_its_matrices() -> None:
    import json

    for proc in _matrix_processes().values():
        rebuilt = make_process(json.loads(json.dumps(proc.config())))
        assert type(rebuilt) is LinearSDE and rebuilt.config() == proc.config()
        x0 = torch.ones(2, 2, dtype=F64)
        torch.testing.assert_close(rebuilt.marginal(x0, 0.4)[0], proc.marginal(x0, 0.4)[0], rtol=0, atol=0)


def test_simulated_forward_paths_have_the_closed_form_law_at_t() -> None:
    # full non-symmetric D: Euler-Maruyama paths from x0 end near N(M_T x0, Sigma_T) (mean and covariance, n = 20k)
    D = torch.tensor([[1.5, 0.3], [-0.2, 0.6]], dtype=torch.float64)
    process = LinearSDE({"name": "power", "beta_min": 0.1, "beta_max": 4.0}, {"kind": "full", "value": D}).double()
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(20_000, 2)
    paths = process.simulate(x0, 400, seed=0)
    assert paths.shape == (401, 20_000, 2)
    torch.testing.assert_close(paths[0], x0)
    mean, cov = process.marginal(x0[:1], process.T)
    torch.testing.assert_close(paths[-1].mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(paths[-1].T), cov.dense(x0[:1])[0], atol=0.04, rtol=0)
