"""Tests for the closed-form Gaussian Schrödinger bridge (sbridge.processes.gaussian; maths.md §G, §E.3).

Every formula is checked against something computed independently: POT's Sinkhorn plan, scipy's sqrtm, finite
differences, autograd, Euler-Maruyama / Heun simulation or a matrix ODE. Monte-Carlo tolerances are 5 standard
errors (SE of a Gaussian sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)) plus an allowance for the time
discretisation where there is one; the random seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import scipy.linalg as sla
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.processes.gaussian import GaussianBridge, LinearGaussianBridge, coupling, gaussian_kl, sinkhorn_reg

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, d, generator=g, dtype=F64)
    return X @ X.T / d + 0.3 * torch.eye(d, dtype=F64)


def _vec(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64)


A2 = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=F64)
B2 = torch.tensor([[0.7, -0.3], [-0.3, 1.1]], dtype=F64)
a2 = torch.tensor([0.5, -1.0], dtype=F64)
b2 = torch.tensor([-1.0, 2.0], dtype=F64)
A3, B3, a3, b3 = _spd(3, 1), _spd(3, 2), _vec(3, 3), _vec(3, 4)


def _emp_cov(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    uc, vc = u - u.mean(0), v - v.mean(0)
    return uc.T @ vc / (u.shape[0] - 1)


def _cov_se(Suu: torch.Tensor, Svv: torch.Tensor, Suv: torch.Tensor, n: int) -> torch.Tensor:
    """Standard error of each entry of an empirical cross-covariance of Gaussian vectors (n samples)."""
    return torch.sqrt((torch.outer(torch.diagonal(Suu), torch.diagonal(Svv)) + Suv**2) / n)


def _assert_cov(emp: torch.Tensor, true: torch.Tensor, se: torch.Tensor, extra: float = 0.0) -> None:
    err = (emp - true).abs()
    tol = 5 * se + extra
    assert bool((err <= tol).all()), f"max excess {float((err - tol).max()):.3g}; err={err}, tol={tol}"


def _assert_mean(emp: torch.Tensor, true: torch.Tensor, S: torch.Tensor, n: int, extra: float = 0.0) -> None:
    tol = 5 * torch.sqrt(torch.diagonal(S) / n) + extra
    assert bool(((emp - true).abs() <= tol).all()), f"mean {emp} vs {true}, tol {tol}"


# ------------------------------------------------------------------------------------------------------------
# 1. The coupling is the entropic-OT plan computed by POT
# ------------------------------------------------------------------------------------------------------------
def _grid_gaussian(m: np.ndarray, S: np.ndarray, n_side: int, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform grid in whitened coordinates with Gaussian weights: a discretisation of N(m, S).

    The trapezoid rule is spectrally accurate for Gaussian integrands, so the EOT plan between two such grids
    converges very fast to the continuous plan (measured: ~1e-7 in 1-D with 400 points, ~3e-6 in 2-D with 20x20).
    """
    d = len(m)
    u = np.linspace(-half_width, half_width, n_side)
    U = np.stack(np.meshgrid(*([u] * d), indexing="ij"), -1).reshape(-1, d)
    w = np.exp(-0.5 * (U**2).sum(1))
    return m + U @ np.linalg.cholesky(S).T, w / w.sum()


def _pot_cross_cov(m0, S0, m1, S1, sigma, n_side, half_width) -> np.ndarray:
    X, wx = _grid_gaussian(m0, S0, n_side, half_width)
    Y, wy = _grid_gaussian(m1, S1, n_side, half_width)
    X, wx, Y, wy = (torch.as_tensor(v) for v in (X, wx, Y, wy))
    P = ot.sinkhorn(wx, wy, ot.dist(X, Y), reg=sinkhorn_reg(sigma), method="sinkhorn_log",
                    stopThr=1e-10, numItermax=5000)
    assert float((P.sum(1) - wx).abs().max()) < 1e-9  # Sinkhorn converged: the plan has the right marginals
    return ((X - wx @ X).T @ P @ (Y - wy @ Y)).numpy()


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_coupling_matches_pot_sinkhorn_1d(sigma: float) -> None:
    # 400-point grid over +-6 std; measured discretisation error ~6e-8, tolerance 1e-5 (C ~ 0.6-0.8).
    cc = _pot_cross_cov(np.array([0.3]), np.array([[1.5]]), np.array([-1.0]), np.array([[0.6]]), sigma, 400, 6.0)
    C = coupling(0.3, 1.5, -1.0, 0.6, sigma)
    assert abs(cc.item() - C.item()) < 1e-5


def test_coupling_matches_pot_sinkhorn_2d() -> None:
    # 20x20 grid over +-5 std per marginal; the non-symmetric C (C_12 != C_21) is reproduced to ~3e-6; tol 5e-5.
    sigma = 0.7
    cc = _pot_cross_cov(a2.numpy(), A2.numpy(), b2.numpy(), B2.numpy(), sigma, 20, 5.0)
    C = coupling(a2, A2, b2, B2, sigma).numpy()
    assert abs(C[0, 1] - C[1, 0]) > 0.01  # the test would notice a transposed C
    np.testing.assert_allclose(cc, C, atol=5e-5)


def test_sinkhorn_reg_mapping() -> None:
    assert sinkhorn_reg(0.5) == 0.5
    assert sinkhorn_reg(2.0) == 8.0


# ------------------------------------------------------------------------------------------------------------
# 2. Closed forms of C and their limits
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.1, 0.7, 3.0])
def test_coupling_two_forms_agree(sigma: float) -> None:
    # §G.2: 1/2 (A^{1/2} D A^{-1/2} - s^2 I) == (AB + s^4/4 I)^{1/2} - s^2/2 I (principal sqrt by scipy); both are
    # exact, so agreement is at round-off level (tol 1e-10).
    C = coupling(a3, A3, b3, B3, sigma).numpy()
    s2 = sigma**2
    other = sla.sqrtm(A3.numpy() @ B3.numpy() + s2**2 / 4 * np.eye(3)).real - s2 / 2 * np.eye(3)
    np.testing.assert_allclose(C, other, atol=1e-10)
    # And it solves the quadratic matrix equation C^2 + s^2 C = AB derived from the Schrödinger product form.
    np.testing.assert_allclose(C @ C + s2 * C, A3.numpy() @ B3.numpy(), atol=1e-10)


def test_coupling_schrodinger_product_form() -> None:
    # The EOT plan has density phi(x) exp(-|x-y|^2/(2 s^2)) psi(y): its joint precision has off-diagonal block
    # -I/s^2 exactly (tol 1e-9), and the joint covariance is positive definite.
    sigma = 0.8
    C = coupling(a3, A3, b3, B3, sigma)
    joint = torch.cat([torch.cat([A3, C], 1), torch.cat([C.T, B3], 1)], 0)
    assert float(torch.linalg.eigvalsh(joint).min()) > 0
    prec = torch.linalg.inv(joint)
    torch.testing.assert_close(prec[:3, 3:], -torch.eye(3, dtype=F64) / sigma**2, atol=1e-9, rtol=0)


def test_coupling_1d_formula() -> None:
    # 1-D: c = sqrt(ab + s^4/4) - s^2/2 with variances a, b. maths.md §E.3 quotes 1.70544 for standard deviations 1, 2
    # (variances 1, 4) and sigma = 0.8.
    for va, vb, s in [(1.0, 4.0, 0.8), (0.3, 2.5, 0.2), (2.0, 0.5, 1.7)]:
        expected = math.sqrt(va * vb + s**4 / 4) - s**2 / 2
        assert abs(coupling(0.0, va, 1.0, vb, s).item() - expected) < 1e-13
    assert abs(coupling(0.0, 1.0, 0.0, 4.0, 0.8).item() - 1.70544) < 1e-5


def test_coupling_limits() -> None:
    A, B = A3.numpy(), B3.numpy()
    Ah = sla.sqrtm(A).real
    C_ot = Ah @ sla.sqrtm(Ah @ B @ Ah).real @ np.linalg.inv(Ah)  # Monge coupling cross-covariance (§G.2)
    # sigma -> 0: C_sigma = C_OT + O(sigma^2); with sigma = 1e-4 the gap is ~1e-8 (tol 1e-6).
    np.testing.assert_allclose(coupling(a3, A3, b3, B3, 1e-4).numpy(), C_ot, atol=1e-6)
    # sigma -> infinity: C -> 0 like AB / sigma^2 (expansion of (AB + s^4/4)^{1/2}); relative O(1/sigma^4) error.
    for s in [30.0, 1e3]:
        C = coupling(a3, A3, b3, B3, s).numpy()
        assert np.abs(C).max() < 2 * np.abs(A @ B).max() / s**2
        np.testing.assert_allclose(s**2 * C, A @ B, atol=10 / s**4 * np.abs(A @ B @ A @ B).max() + 1e-9)


# ------------------------------------------------------------------------------------------------------------
# 3. Drift: covariance ODE, symmetry, and the transition matrix reproduces the coupling (deterministic)
# ------------------------------------------------------------------------------------------------------------
def test_covariance_ode_and_symmetric_drift() -> None:
    # Sigma_t is quadratic in t, so a central difference is exact up to round-off (~1e-11 at h = 1e-5); tol 1e-7.
    sigma = 0.6
    br = GaussianBridge(a3, A3, b3, B3, sigma)
    h = 1e-5
    for t in [0.0 + h, 0.2, 0.5, 0.8, 1.0 - h]:
        dS = (br.cov(t + h) - br.cov(t - h)) / (2 * h)
        M = br.drift_matrix(t)
        S = br.cov(t)
        torch.testing.assert_close(dS, M @ S + S @ M.T + sigma**2 * torch.eye(3, dtype=F64), atol=1e-7, rtol=0)
        # The SB drift is a gradient field (sigma^2 grad log phi_t), so M_t is symmetric: M_t is then the symmetric
        # Lyapunov solution of maths.md §E.3.
        torch.testing.assert_close(M, M.T, atol=1e-12, rtol=0)
        # drift(t, x) = (b - a) + M_t (x - mu_t)
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
        torch.testing.assert_close(br.drift(x, t), (b3 - a3) + (x - br.mean(t)) @ M.T, atol=1e-12, rtol=0)


def _mix_cross(br: GaussianBridge, s: float, t: float) -> torch.Tensor:
    """Cov(X_s, X_t) for s <= t under the mixture of Brownian bridges X_t = (1-t) X0 + t X1 + sigma * bridge (§G.3)."""
    C = br.C
    return ((1 - s) * (1 - t) * br.A + (1 - s) * t * C + s * (1 - t) * C.T + s * t * br.B
            + br.sigma**2 * s * (1 - t) * torch.eye(br.dim, dtype=F64))


def _transition(br, s: float, t: float, steps: int = 400) -> torch.Tensor:
    """Phi(t, s) solving dPhi/du = M_u Phi, Phi(s) = I, by classical RK4 (global error O(h^4) ~ 1e-10)."""
    Phi = torch.eye(br.dim, dtype=F64)
    h = (t - s) / steps
    for k in range(steps):
        u = s + k * h
        k1 = br.drift_matrix(u) @ Phi
        k2 = br.drift_matrix(u + h / 2) @ (Phi + h / 2 * k1)
        k3 = br.drift_matrix(u + h / 2) @ (Phi + h / 2 * k2)
        k4 = br.drift_matrix(u + h) @ (Phi + h * k3)
        Phi = Phi + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return Phi


def test_drift_transition_reproduces_coupling_and_bridge_mixture() -> None:
    # For the linear SDE dX = f dt + sigma dW, Cov(X_t, X_s) = Phi(t, s) Sigma_s. With s = 0, t = 1 this must be
    # C^T = Cov(X1, X0): the drift transports the SB *coupling*, not only the marginals. With 0 < s < t < 1 it must
    # equal the covariance of the mixture of Brownian bridges (§G.3), which is the Markov property of the SB.
    sigma = 0.6
    br = GaussianBridge(a3, A3, b3, B3, sigma)
    torch.testing.assert_close(_transition(br, 0.0, 1.0) @ A3, br.C.T, atol=1e-8, rtol=0)
    s, t = 0.3, 0.8
    torch.testing.assert_close(_transition(br, s, t) @ br.cov(s), _mix_cross(br, s, t).T, atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# 4. Euler-Maruyama simulation of the SB SDE
# ------------------------------------------------------------------------------------------------------------
def _euler_maruyama(br, n: int, steps: int, seed: int, diffusion, save_at: float | None = None):
    g = torch.Generator().manual_seed(seed)
    x0 = br.a + torch.randn(n, br.dim, generator=g, dtype=F64) @ torch.linalg.cholesky(br.A).T
    x, dt, saved = x0.clone(), 1.0 / steps, None
    for k in range(steps):
        t = k * dt
        if save_at is not None and abs(t - save_at) < dt / 2:
            saved = x.clone()
        x = x + br.drift(x, t) * dt + diffusion(t) * math.sqrt(dt) * torch.randn(n, br.dim, generator=g, dtype=F64)
    return x0, x, saved


def test_euler_maruyama_reaches_target_and_coupling() -> None:
    # 20k paths, 1000 steps: MC SE ~ 0.01; EM bias O(dt) = O(1e-3), allowance 5e-3.
    sigma, n = 0.8, 20_000
    br = GaussianBridge(a2, A2, b2, B2, sigma)
    x0, x1, _ = _euler_maruyama(br, n, 1000, seed=11, diffusion=lambda t: sigma)
    _assert_mean(x1.mean(0), b2, B2, n, extra=5e-3)
    _assert_cov(_emp_cov(x1, x1), B2, _cov_se(B2, B2, B2, n), extra=5e-3)
    _assert_cov(_emp_cov(x0, x1), br.C, _cov_se(A2, B2, br.C, n), extra=5e-3)
    # The independent coupling (C = 0) or the OT coupling would be rejected: C differs from both by > 0.1 here.
    assert float(br.C.abs().max()) > 0.3


# ------------------------------------------------------------------------------------------------------------
# 5. Exact path sampling, score, probability flow
# ------------------------------------------------------------------------------------------------------------
def test_sample_path_marginals_and_joint_law() -> None:
    sigma, n, steps = 0.9, 20_000, 10
    br = GaussianBridge(a2, A2, b2, B2, sigma)
    paths = br.sample_path(n, steps, generator=torch.Generator().manual_seed(5))
    assert paths.shape == (steps + 1, n, 2) and paths.dtype == F64
    # Endpoints: (X0, X1) ~ coupling. Intermediate marginals: N(mu_t, Sigma_t). Pure MC error: 5 SE.
    _assert_cov(_emp_cov(paths[0], paths[-1]), br.C, _cov_se(A2, B2, br.C, n))
    for k in [3, 7]:
        t = k / steps
        _assert_mean(paths[k].mean(0), br.mean(t), br.cov(t), n)
        _assert_cov(_emp_cov(paths[k], paths[k]), br.cov(t), _cov_se(br.cov(t), br.cov(t), br.cov(t), n))
    # Joint law across times (sequential exactness, not only marginals): Cov(X_s, X_t) of the bridge mixture.
    cross = _mix_cross(br, 0.3, 0.7)
    _assert_cov(_emp_cov(paths[3], paths[7]), cross, _cov_se(br.cov(0.3), br.cov(0.7), cross, n))
    # One-step increments: Var(X_0.4 - X_0.3) = S_0.4 + S_0.3 - K - K^T with K = Cov(X_0.3, X_0.4). A sampler that
    # drew each time independently from its marginal would give S_0.4 + S_0.3, about 20x larger here.
    inc = paths[4] - paths[3]
    K = _mix_cross(br, 0.3, 0.4)
    true_inc = br.cov(0.4) + br.cov(0.3) - K - K.T
    _assert_cov(_emp_cov(inc, inc), true_inc, _cov_se(true_inc, true_inc, true_inc, n))


def test_sample_coupling_and_conditional() -> None:
    br = GaussianBridge(a2, A2, b2, B2, 0.5)
    n = 40_000
    x0, x1 = br.sample_coupling(n, generator=torch.Generator().manual_seed(2))
    _assert_mean(x0.mean(0), a2, A2, n)
    _assert_mean(x1.mean(0), b2, B2, n)
    _assert_cov(_emp_cov(x0, x0), A2, _cov_se(A2, A2, A2, n))
    _assert_cov(_emp_cov(x1, x1), B2, _cov_se(B2, B2, B2, n))
    _assert_cov(_emp_cov(x0, x1), br.C, _cov_se(A2, B2, br.C, n))
    # Conditional law: regression residual of X1 on X0 has covariance B - C^T A^{-1} C (exact algebra check too).
    mean, cov = br.conditional(x0)
    resid = x1 - mean
    _assert_mean(resid.mean(0), torch.zeros(2, dtype=F64), cov, n)
    _assert_cov(_emp_cov(resid, resid), cov, _cov_se(cov, cov, cov, n))
    m1, _ = br.conditional(a2)
    torch.testing.assert_close(m1, b2, atol=1e-12, rtol=0)


def test_score_matches_autograd_and_kl() -> None:
    br = GaussianBridge(a3, A3, b3, B3, 0.7)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64, requires_grad=True)
    for t in [0.0, 0.35, 1.0]:
        logp = torch.distributions.MultivariateNormal(br.mean(t), br.cov(t)).log_prob(x).sum()
        (grad,) = torch.autograd.grad(logp, x)
        torch.testing.assert_close(br.score(x, t), grad, atol=1e-10, rtol=0)
        v, f, bwd = br.velocity(x, t), br.drift(x, t), br.backward_drift(x, t)
        torch.testing.assert_close(v, f - 0.5 * 0.49 * grad, atol=1e-10, rtol=0)
        torch.testing.assert_close(bwd, 0.49 * grad - f, atol=1e-10, rtol=0)  # reverse-time drift
    # KL helper against torch.distributions (exact, tol 1e-10), and zero at the truth.
    m, S = b3 + 0.1, B3 + 0.2 * torch.eye(3, dtype=F64)
    ref = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(m, S),
                                            torch.distributions.MultivariateNormal(br.mean(0.4), br.cov(0.4)))
    assert abs(br.kl_marginal(0.4, m, S) - float(ref)) < 1e-10
    assert abs(gaussian_kl(m.numpy(), S.numpy(), br.mean(0.4), br.cov(0.4)) - float(ref)) < 1e-10
    assert abs(br.kl_marginal(0.6, br.mean(0.6), br.cov(0.6))) < 1e-12


def test_probability_flow_velocity_reaches_target() -> None:
    # Heun with 200 steps: the flow is linear, so the O(h^2) = 2.5e-5 error is negligible against the MC SE ~0.01.
    br = GaussianBridge(a2, A2, b2, B2, 0.8)
    n, steps = 20_000, 200
    g = torch.Generator().manual_seed(3)
    x = a2 + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(A2).T
    h = 1.0 / steps
    for k in range(steps):
        t = k * h
        v1 = br.velocity(x, t)
        v2 = br.velocity(x + h * v1, t + h)
        x = x + h / 2 * (v1 + v2)
    _assert_mean(x.mean(0), b2, B2, n, extra=1e-4)
    _assert_cov(_emp_cov(x, x), B2, _cov_se(B2, B2, B2, n), extra=1e-4)
    # Deterministic version: the covariance ODE dS/dt = V S + S V^T with V the velocity's linear part ends at B.
    S = A2.clone()
    for k in range(steps):
        t = k * h
        V1 = br.drift_matrix(t) + 0.5 * 0.64 * torch.linalg.inv(br.cov(t))
        V2 = br.drift_matrix(t + h) + 0.5 * 0.64 * torch.linalg.inv(br.cov(t + h))
        S1 = S + h * (V1 @ S + S @ V1.T)
        S = S + h / 2 * (V1 @ S + S @ V1.T + V2 @ S1 + S1 @ V2.T)
    torch.testing.assert_close(S, B2, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# 6. General linear reference (§G.5)
# ------------------------------------------------------------------------------------------------------------
def test_linear_bridge_reduces_to_brownian() -> None:
    # c = 0, g = sigma: tau = 1, xi = sigma^2 t, r = t, rbar = 1 - t, so every quantity must agree to round-off.
    sigma = 0.7
    br = GaussianBridge(a3, A3, b3, B3, sigma)
    lin = LinearGaussianBridge(a3, A3, b3, B3, c=lambda t: 0.0, g=lambda t: sigma)
    assert abs(lin.sigma_star - sigma) < 1e-14
    torch.testing.assert_close(lin.C, br.C, atol=1e-12, rtol=0)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in [0.0, 0.13, 0.5, 0.92, 1.0]:
        torch.testing.assert_close(lin.mean(t), br.mean(t), atol=1e-12, rtol=0)
        torch.testing.assert_close(lin.cov(t), br.cov(t), atol=1e-12, rtol=0)
        torch.testing.assert_close(lin.drift_matrix(t), br.drift_matrix(t), atol=1e-11, rtol=0)
        torch.testing.assert_close(lin.drift(x, t), br.drift(x, t), atol=1e-11, rtol=0)
        torch.testing.assert_close(lin.velocity(x, t), br.velocity(x, t), atol=1e-11, rtol=0)


def _vp(beta):
    return (lambda t: -0.5 * beta(t)), (lambda t: math.sqrt(beta(t)))


def test_linear_schedule_quadrature() -> None:
    # Constant beta: tau = exp(-beta t/2), xi = exp(beta t) - 1. Linear beta(t) = b0 + b1 t:
    # int c = -(b0 t + b1 t^2/2)/2, xi = exp(b0 t + b1 t^2/2) - 1, since g^2 tau^{-2} = beta exp(int beta)
    # = d/dt exp(int beta). Tol 1e-12.
    c, g = _vp(lambda t: 1.0)
    lin = LinearGaussianBridge(a2, A2, b2, B2, c, g)
    for t in [0.0, 0.3, 0.77, 1.0]:
        assert abs(lin.tau(t) - math.exp(-0.5 * t)) < 1e-12
        assert abs(lin.xi(t) - math.expm1(t)) < 1e-12
    c, g = _vp(lambda t: 0.1 + 3.9 * t)
    lin = LinearGaussianBridge(a2, A2, b2, B2, c, g)
    for t in [0.0, 0.3, 0.77, 1.0]:
        B_t = 0.1 * t + 1.95 * t**2
        assert abs(lin.tau(t) - math.exp(-0.5 * B_t)) < 1e-12
        assert abs(lin.xi(t) - math.expm1(B_t)) < 1e-12 * math.exp(B_t)


@pytest.mark.parametrize("beta", [lambda t: 1.0, lambda t: 0.1 + 3.9 * t], ids=["beta_const", "beta_linear"])
def test_linear_bridge_closed_form_identities(beta) -> None:
    # Deterministic checks of §G.5: endpoints, the covariance ODE (FD, tol 1e-6), symmetric drift matrix, the
    # product form of the coupling with sigma_star^2 = tau1 xi1, and Phi(1, 0) A = C^T (RK4, tol 1e-8).
    c, g = _vp(beta)
    lin = LinearGaussianBridge(a3, A3, b3, B3, c, g)
    torch.testing.assert_close(lin.cov(0.0), A3, atol=1e-12, rtol=0)
    torch.testing.assert_close(lin.cov(1.0), B3, atol=1e-12, rtol=0)
    torch.testing.assert_close(lin.mean(1.0), b3, atol=1e-12, rtol=0)
    h = 1e-5
    for t in [h, 0.25, 0.6, 1.0 - h]:
        dS = (lin.cov(t + h) - lin.cov(t - h)) / (2 * h)
        M, S = lin.drift_matrix(t), lin.cov(t)
        torch.testing.assert_close(dS, M @ S + S @ M.T + g(t) ** 2 * torch.eye(3, dtype=F64), atol=1e-6, rtol=0)
        torch.testing.assert_close(M, M.T, atol=1e-11, rtol=0)
        dm = (lin.mean(t + h) - lin.mean(t - h)) / (2 * h)
        torch.testing.assert_close(lin.drift(lin.mean(t).unsqueeze(0), t)[0], dm, atol=1e-6, rtol=0)
    tau1, xi1 = lin.tau(1.0), lin.xi(1.0)
    assert abs(lin.sigma_star**2 - tau1 * xi1) < 1e-12
    joint = torch.cat([torch.cat([A3, lin.C], 1), torch.cat([lin.C.T, B3], 1)], 0)
    # Reference transition N(tau1 x0, tau1^2 xi1 I): cross term x0.x1 / (tau1 xi1) -> precision block -I/(tau1 xi1).
    torch.testing.assert_close(torch.linalg.inv(joint)[:3, 3:], -torch.eye(3, dtype=F64) / (tau1 * xi1),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(_transition(lin, 0.0, 1.0) @ A3, lin.C.T, atol=1e-8, rtol=0)


@pytest.mark.parametrize("beta", [lambda t: 1.0, lambda t: 0.1 + 3.9 * t], ids=["beta_const", "beta_linear"])
def test_linear_bridge_euler_maruyama(beta) -> None:
    # EM of dX = f dt + g dW from N(a, A) with 10k paths (runtime) and 1000 steps: 5 SE + 5e-3 discretisation
    # allowance. A 20% error in the noise term of S_t, or sigma_star^2 off by 30%, fails this test.
    c, g = _vp(beta)
    lin = LinearGaussianBridge(a2, A2, b2, B2, c, g)
    n = 10_000
    x0, x1, x_half = _euler_maruyama(lin, n, 1000, seed=21, diffusion=g, save_at=0.5)
    _assert_mean(x1.mean(0), b2, B2, n, extra=5e-3)
    _assert_cov(_emp_cov(x1, x1), B2, _cov_se(B2, B2, B2, n), extra=5e-3)
    _assert_cov(_emp_cov(x0, x1), lin.C, _cov_se(A2, B2, lin.C, n), extra=5e-3)
    S_half = lin.cov(0.5)
    _assert_mean(x_half.mean(0), lin.mean(0.5), S_half, n, extra=5e-3)
    _assert_cov(_emp_cov(x_half, x_half), S_half, _cov_se(S_half, S_half, S_half, n), extra=5e-3)


def test_linear_bridge_sample_path() -> None:
    # The generic exact path sampler (scaled Brownian bridge in the clock xi) against the closed-form marginal.
    c, g = _vp(lambda t: 0.1 + 3.9 * t)
    lin = LinearGaussianBridge(a2, A2, b2, B2, c, g)
    n = 20_000
    paths = lin.sample_path(n, 4, generator=torch.Generator().manual_seed(9))
    S = lin.cov(0.5)
    _assert_mean(paths[2].mean(0), lin.mean(0.5), S, n)
    _assert_cov(_emp_cov(paths[2], paths[2]), S, _cov_se(S, S, S, n))


# ------------------------------------------------------------------------------------------------------------
# 7. Bad input
# ------------------------------------------------------------------------------------------------------------
def _one_sentence(exc: pytest.ExceptionInfo) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith("."), msg


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((a2, torch.ones(2, 3), b2, B2), "square"),
        ((a2, torch.tensor([[1.0, 0.5], [0.0, 1.0]]), b2, B2), "not symmetric"),
        ((a2, A2, b2, torch.tensor([[1.0, 2.0], [2.0, 1.0]])), "not positive definite"),
        ((a3, A2, b2, B2), "same dimension"),
        ((a3, A3, b2, B2), "different dimensions"),
        ((a2, A2, b2, [[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
        ((a2, A2, "abc", B2), "numeric"),
    ],
)
def test_bad_marginals_raise_data_error(args, match: str) -> None:
    with pytest.raises(DataError, match=match) as exc:
        GaussianBridge(*args, sigma=1.0)
    _one_sentence(exc)
    with pytest.raises(DataError, match=match):
        coupling(*args, sigma=1.0)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), "x"])
def test_bad_sigma_raises_config_error(sigma) -> None:
    with pytest.raises(ConfigError, match="sigma") as exc:
        GaussianBridge(a2, A2, b2, B2, sigma=sigma)
    _one_sentence(exc)
    with pytest.raises(ConfigError, match="sigma"):
        sinkhorn_reg(sigma)


def test_bad_time_and_points() -> None:
    br = GaussianBridge(a2, A2, b2, B2, 1.0)
    for t in [-0.1, 1.5, float("nan"), "half", None]:
        with pytest.raises(ConfigError, match=r"t must be") as exc:
            br.mean(t)
        _one_sentence(exc)
        with pytest.raises(ConfigError):
            br.drift(torch.zeros(3, 2), t)
    with pytest.raises(DataError, match="features") as exc:
        br.drift(torch.zeros(3, 3), 0.5)
    _one_sentence(exc)
    with pytest.raises(DataError, match="NaN"):
        br.score(torch.full((2, 2), float("nan")), 0.5)
    with pytest.raises(DataError, match="reshape it"):
        br.velocity(np.zeros(2), 0.5)
    with pytest.raises(ConfigError, match="steps"):
        br.sample_path(10, 0)
    with pytest.raises(DataError, match="dimension"):
        br.kl_marginal(0.5, a3, A3)


def test_bad_linear_reference() -> None:
    with pytest.raises(ConfigError, match="no noise") as exc:
        LinearGaussianBridge(a2, A2, b2, B2, c=lambda t: 0.0, g=lambda t: 0.0)
    _one_sentence(exc)
    with pytest.raises(ConfigError, match="functions of time"):
        LinearGaussianBridge(a2, A2, b2, B2, c=0.0, g=lambda t: 1.0)
    with pytest.raises(ConfigError, match="finite"):
        LinearGaussianBridge(a2, A2, b2, B2, c=lambda t: float("nan"), g=lambda t: 1.0)
