"""VSDM's building blocks (math.md §C): the variational score A and its admissible set, and the SA gradient."""

from __future__ import annotations

import pytest
import torch

from sbridge.errors import ConfigError, DataError
from sbridge.solvers.vsdm import LinearScore, sa_gradient


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_a_starts_at_zero_so_the_reference_is_plain_vp(kind: str) -> None:
    score = LinearScore(3, kind)
    d = score.drift_matrix()
    expected = torch.ones(3) if kind == "diagonal" else torch.eye(3)
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(score(torch.randn(5, 3)), torch.zeros(5, 3))


def test_full_a_has_the_singular_values_it_is_given_and_the_projection_keeps_d_positive_definite() -> None:
    torch.manual_seed(0)
    score = LinearScore(4, "full")
    with torch.no_grad():
        score.singular.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(torch.linalg.svdvals(score.matrix()).sort().values,
                               torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=1e-5, rtol=0)
    x = torch.randn(6, 4)
    torch.testing.assert_close(score(x), x @ score.matrix().T)
    with torch.no_grad():
        score.singular.copy_(torch.tensor([3.0, -2.0, 0.7, 0.1]))  # far outside the admissible set
    d = score.drift_matrix().detach()
    assert float(torch.linalg.eigvalsh(d + d.T).min()) < 0  # not positive definite before the projection
    score.project_()
    d = score.drift_matrix().detach()
    assert float(torch.linalg.eigvalsh(d + d.T).min()) >= 2 * (1 - 2 * score.max_rate) - 1e-5


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
    # with zeta < 1 the constant push (1 - zeta) I remains (math.md §C.4)
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
