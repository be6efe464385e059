"""DSB's IPF in exact arithmetic on Gaussian ends (sbridge.numerics.gaussian_ipf, maths.md §D.7)."""

import pytest
import torch

from sbridge.core.errors import ConfigError
from sbridge.numerics.gaussian_ipf import gaussian_ipf
from sbridge.processes.gaussian import coupling
from sbridge.solvers.dsb import symmetric_schedule


def _errors(steps: int) -> tuple[float, float, float]:
    """Fixed-point errors (forward end's mean, backward end's mean, coupling) on N(-1, 1) -> N(1, 2), sigma = 1."""
    last = gaussian_ipf(-1.0, 1.0, 1.0, 2.0, 1.0, symmetric_schedule(steps), 20)[-1]
    exact = float(coupling(torch.tensor([-1.0]), torch.eye(1), torch.tensor([1.0]), 2 * torch.eye(1), 1.0))
    return abs(float(last.mean1) - 1.0), abs(float(last.mean0) + 1.0), abs(float(last.cross) - exact)


def test_fixed_point_tends_to_the_gaussian_sb_as_the_grid_refines():
    """DSB's kernels keep the variance sigma^2 gamma, so the fixed point is off by O(gamma): the errors of the ends'
    means and of Cov(X0, X1) (against the closed-form SB coupling, §G.2) fall about as 1 / N."""
    coarse, fine = _errors(40), _errors(400)
    assert all(f < 0.01 for f in fine)
    assert all(f < c / 5 for f, c in zip(fine, coarse, strict=True))
    assert coarse[0] > 0.03  # the 40-step grid's bias on this pair is visible: what §D.7 reports


def test_ipf_marginal_errors_fall_over_iterations_and_dimensions_are_independent():
    """IPF from the reference: the forward end's error falls at every iteration; a d-dimensional diagonal pair is d
    copies of the one-dimensional one."""
    history = gaussian_ipf([-0.1, 0.3], [1.0, 0.5], [0.1, -0.2], [1.0, 2.0], 1.0, symmetric_schedule(40), 6)
    errors = [float((h.mean1 - torch.tensor([0.1, -0.2])).abs().sum() + (h.var1 - torch.tensor([1.0, 2.0])).abs().sum())
              for h in history]
    assert all(b < a for a, b in zip(errors[:-1], errors[1:], strict=True))
    single = gaussian_ipf(0.3, 0.5, -0.2, 2.0, 1.0, symmetric_schedule(40), 6)[-1]
    assert torch.allclose(history[-1].cross[1:], single.cross) and torch.allclose(history[-1].var0[1:], single.var0)


def test_first_backward_half_step_reverses_the_reference():
    """From a Brownian reference, the first backward chain started at the forward chain's own end law would return
    to p0; started at p1 = p0 * N(0, sigma^2) it does exactly that here (p0 Gaussian, the reversal is exact)."""
    gammas = symmetric_schedule(40)
    first = gaussian_ipf(0.5, 0.7, 0.5, 1.7, 1.0, gammas, 1)[0]
    assert float(first.mean0) == pytest.approx(0.5, abs=1e-9)
    assert float(first.var0) == pytest.approx(0.7, rel=0.02)  # the O(gamma) variance of the fixed kernels


@pytest.mark.parametrize("kwargs, words", [({"var0": 0.0}, "positive"), ({"mean1": [[1.0]]}, "vector"),
                                           ({"mean0": float("nan")}, "finite")])
def test_bad_moments_are_one_sentence(kwargs, words):
    args = {"mean0": 0.0, "var0": 1.0, "mean1": 0.0, "var1": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=words):
        gaussian_ipf(**args, sigma=1.0, gammas=symmetric_schedule(4), iterations=1)
