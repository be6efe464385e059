"""The latent bridge of Jiao et al. on [0, 1] (maths.md §B.2): closed-form denoisers of Gaussian data drive the sampler
of both cases to the data law; training recovers it; save/load; errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sbridge
from sbridge.core.errors import ConfigError
from sbridge.solvers.follmer import BridgeRegression, marginal, reference_for

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN = torch.tensor([1.0, -2.0])
ROOT = torch.tensor([[1.0, 0.5], [0.0, 0.6]])
COV = ROOT @ ROOT.T


def gaussian_data(n: int, seed: int = 0) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) @ ROOT.T


class GaussianOracle(nn.Module):
    """The exact network output for data N(MEAN, COV): the posterior mean E[Y | X_t] (case F) or the noise
    (X_t - E[Y | X_t]) / sqrt(tau (1 - t)) (case H), from the Gaussian conditioning formula."""

    def __init__(self, case: str, tau: float) -> None:
        super().__init__()
        self.case, self.tau = case, tau
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = float(torch.as_tensor(t).reshape(-1)[0])
        eye = torch.eye(2)
        if self.case == "F":
            if t == 0:
                return MEAN.expand_as(x)
            gain = t * COV @ torch.linalg.inv(t * t * COV + self.tau * t * (1 - t) * eye)
            return MEAN + (x - t * MEAN) @ gain.T
        var = self.tau * (1 - t)
        posterior = MEAN + (x - MEAN) @ (COV @ torch.linalg.inv(COV + var * eye)).T
        return (x - posterior) / math.sqrt(var)


def oracle_solver(case: str, tau: float = 2.0) -> sbridge.SchrodingerFollmer:
    sf = sbridge.SchrodingerFollmer(2, case=case, tau=tau, net=GaussianOracle(case, tau), device="cpu")
    sf.before_fit(sbridge.solvers.base.FitData(gaussian_data(20_000)))
    return sf


@pytest.mark.parametrize("case,ode", [("F", False), ("H", False), ("H", True)])
def test_exact_denoisers_carry_nu_to_the_data_law(case: str, ode: bool) -> None:
    sf = oracle_solver(case)
    x = sf.sample(20_000, steps=200, ode=ode, seed=1)
    assert torch.linalg.vector_norm(x.mean(0) - MEAN) < 0.03
    assert torch.linalg.matrix_norm(torch.cov(x.T) - COV) < 0.05
    assert sf.last_nfe == (401 if ode else 201)  # per step one evaluation (Heun: two), then the final denoising


def test_case_h_log_prob_is_the_density_of_the_early_stopped_state() -> None:
    sf = oracle_solver("H")
    sf.nu_state["prior_mean"] = MEAN  # nu's exact moments for Gaussian data: N(MEAN, COV + tau I)
    sf.nu_state["prior_chol"] = torch.linalg.cholesky(COV + 2.0 * torch.eye(2))
    x = gaussian_data(20, seed=3)
    cov_T = COV + 2.0 * sf.delta * torch.eye(2)  # X_T = Y + sqrt(tau delta) Z
    exact = torch.distributions.MultivariateNormal(MEAN, cov_T).log_prob(x)
    assert torch.allclose(sf.log_prob(x), exact, atol=2e-3)
    assert not oracle_solver("F").capabilities().log_prob
    with pytest.raises(ConfigError, match="does not give exact likelihoods"):
        oracle_solver("F").log_prob(x)


def test_the_marginals_are_the_closed_forms() -> None:
    y, z, t = torch.ones(4, 2), torch.ones(4, 2), torch.full((4,), 0.25)
    ref = reference_for(2.0)
    assert torch.allclose(marginal("F", y, t, z, ref), torch.full((4, 2), 0.25 + math.sqrt(2 * 0.25 * 0.75)))
    assert torch.allclose(marginal("H", y, t, z, ref), torch.full((4, 2), 1 + math.sqrt(2 * 0.75)))


@pytest.mark.parametrize("case", ["F", "H"])
@pytest.mark.parametrize("weighting", ["uniform", "paper"])
def test_the_regression_loss_is_smallest_at_the_exact_denoiser(case: str, weighting: str) -> None:
    loss = BridgeRegression(case, reference_for(2.0), 0.99, weighting)
    y = {"x": gaussian_data(50_000)}
    exact, _ = loss({"drift": GaussianOracle(case, 2.0)}, y, torch.Generator().manual_seed(0))

    class Shifted(GaussianOracle):
        def forward(self, x, t, cond=None):  # noqa: ANN001, ANN201
            return super().forward(x, t, cond) + 0.1

    worse, _ = loss({"drift": Shifted(case, 2.0)}, y, torch.Generator().manual_seed(0))
    assert exact < worse


@pytest.mark.parametrize("case", ["F", "H"])
def test_training_recovers_a_gaussian(case: str) -> None:
    sf = sbridge.SchrodingerFollmer(2, case=case, tau=2.0, hidden=64, device="cpu", seed=0)
    sf.fit(gaussian_data(4_000), steps=1_500, batch_size=256, lr=2e-3, quiet=True)
    x = sf.sample(10_000, steps=100)
    assert torch.linalg.vector_norm(x.mean(0) - MEAN) < 0.15
    assert torch.linalg.matrix_norm(torch.cov(x.T) - COV) < 0.25


def test_save_load_round_trip_with_stored_points(tmp_path) -> None:  # noqa: ANN001
    sf = sbridge.SchrodingerFollmer(2, prior="data", hidden=16, device="cpu")
    sf.fit(gaussian_data(300), steps=20, batch_size=64, quiet=True, out=tmp_path / "run")
    back = sbridge.load(tmp_path / "run", device="cpu")
    assert back.nu_state["prior_points"].shape == (300, 2)
    assert torch.equal(back.sample(50, seed=3), sf.sample(50, seed=3))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="case"):
        sbridge.SchrodingerFollmer(2, case="G")
    with pytest.raises(ConfigError, match="delta"):
        sbridge.SchrodingerFollmer(2, delta=0.0)
    with pytest.raises(ConfigError, match="takes no prior"):
        sbridge.SchrodingerFollmer(2, case="F", prior="data")
    loader = torch.utils.data.DataLoader(gaussian_data(32), batch_size=8)
    with pytest.raises(ConfigError, match="DataLoader"):
        sbridge.SchrodingerFollmer(2, device="cpu").fit(loader, steps=1, quiet=True)
    with pytest.raises(ConfigError, match="single point"):
        sbridge.SchrodingerFollmer(2, case="F", device="cpu").sample(4, ode=True)
