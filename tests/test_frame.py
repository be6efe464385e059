"""The shared frame: any event shape, injected networks, conditions, loss objects in a hand-written loop, exact
likelihoods of solvers, and capability-based dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sbridge
from sbridge import DSB, DSBM, SBFBSDE, SBVAE, SGM, VSDM, GaussianSB
from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.processes.linear import VP
from sbridge.training.sources import TensorSource

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- loss objects from a user's own loop


def test_a_loss_object_in_a_hand_written_loop_gives_the_weights_of_fit() -> None:
    # The ten-line loop of the README, with the trainer's rules (Adam, clipping at 1, EMA off), reproduces fit.
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    steps, batch, lr = 20, 32, 1e-3
    fitted = SGM(2, hidden=16, depth=1, seed=3).fit(data, steps=steps, batch_size=batch, lr=lr, quiet=True,
                                                       ema_decay=0.0)
    model = SGM(2, hidden=16, depth=1, seed=3)
    loss_fn, source = model.loss, TensorSource(x=data)
    opt = torch.optim.Adam(model.models.parameters(), lr=lr)
    gen = make_generator(3, torch.device("cpu"))
    for _ in range(steps):
        loss, _ = loss_fn(model.models, source.batch(batch, gen), gen)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.models.parameters(), 1.0)
        opt.step()
    for key, value in fitted.models.state_dict().items():
        torch.testing.assert_close(model.models.state_dict()[key], value, rtol=0, atol=0)


# ---------------------------------------------------------------- any event shape


@pytest.mark.parametrize("make", [
    lambda: SGM(shape=(1, 4, 4), hidden=32, depth=1),
    lambda: DSBM(shape=(1, 4, 4), hidden=32, depth=1, iterations=2),
    lambda: DSB(shape=(1, 4, 4), hidden=32, depth=1, iterations=1, n_steps=10, cache_size=64),
    lambda: VSDM(shape=(1, 4, 4), hidden=32, depth=1, stages=2, sa_samples=64, sa_steps=10),
    lambda: SBFBSDE(shape=(1, 4, 4), hidden=32, depth=1, mode="joint", sim_steps=5),
    lambda: SBVAE(shape=(1, 4, 4), hidden=32, depth=1, stages=2, sim_steps=5, eval_n=64),
], ids=["sgm", "dsbm", "dsb", "vsdm", "sbfbsde", "sbvae"])
def test_every_learned_solver_fits_and_samples_on_image_shaped_data(make) -> None:
    # (n, 1, 4, 4) data: 2 x 2 blocks at -1 / +1. Training lowers the loss below its first logged value and the
    # samples keep the event shape with finite values.
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(512, 1, 4, 4, generator=g) < 0.5, -1.0, 1.0) + 0.1 * torch.randn(512, 1, 4, 4,
                                                                                              generator=g)
    model = make()
    losses: list[float] = []
    model.fit(x, steps=200, batch_size=64, lr=2e-3, quiet=True, callbacks=(lambda step, loss: losses.append(loss),))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first
    s = model.sample(16, steps=10) if not isinstance(model, DSB) else model.sample(16)
    assert s.shape == (16, 1, 4, 4) and bool(torch.isfinite(s).all())


def test_unet_sgm_on_digits_learns_and_samples_images() -> None:
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:400], dtype=torch.float32)[:, None] / 8.0 - 1.0  # (n, 1, 8, 8)
    model = SGM(shape=(1, 8, 8), net={"name": "unet", "channels": 16, "channel_mults": [1, 2]}, seed=0)
    assert model.config()["net"]["name"] == "unet"
    losses: list[float] = []
    model.fit(digits, steps=400, batch_size=32, lr=2e-3, quiet=True, callbacks=(lambda s, v: losses.append(v),))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    s = model.sample(64, steps=50)
    # the data lie in [-1, 1]: nearly all sampled pixels do too (an untrained model's samples spread far wider)
    assert s.shape == (64, 1, 8, 8) and bool(torch.isfinite(s).all())
    assert float((s.abs() <= 1.5).float().mean()) > 0.95


def test_unet_config_round_trips_through_save_and_load(tmp_path) -> None:
    model = SGM(shape=(1, 8, 8), net={"name": "unet", "channels": 8, "channel_mults": [1, 2]}, seed=1)
    model.fit(torch.randn(32, 1, 8, 8), steps=2, batch_size=8, quiet=True)
    model.save(tmp_path / "r")
    loaded = sbridge.load(tmp_path / "r")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded.ema_models["score"](x, 0.3), model.ema_models["score"](x, 0.3))


def test_a_custom_network_is_used_and_needed_to_load(tmp_path) -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, t, cond=None):
            t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
            return self.lin(torch.cat([x, t[:, None]], 1))

    net = Tiny()
    model = SGM(2, net=net).fit(torch.randn(64, 2), steps=3, batch_size=8, quiet=True, out=tmp_path / "r")
    assert model.models["score"] is net
    with pytest.raises(sbridge.SBridgeError, match="custom network"):
        sbridge.load(tmp_path / "r")
    loaded = sbridge.load(tmp_path / "r", net=Tiny())
    torch.testing.assert_close(loaded.models["score"].lin.weight, net.lin.weight)


# ---------------------------------------------------------------- conditions


def test_conditional_sgm_puts_each_label_on_its_mode() -> None:
    # Four labelled Gaussian modes (std 0.15) at (+-2, +-2); at least 95 % of samples drawn for a label fall nearest
    # its own mode, with and without guidance.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    labels = torch.randint(4, (4000,), generator=g)
    x = centres[labels] + 0.15 * torch.randn(4000, 2, generator=g)
    model = SGM(2, cond={"kind": "label", "classes": 4}, cond_drop=0.1, hidden=64, seed=0)
    model.fit(x, cond=labels, steps=1500, batch_size=256, lr=2e-3, quiet=True)
    for guidance in (0.0, 1.0):
        for k in range(4):
            s = model.sample(200, steps=50, ode=True, cond=k, guidance=guidance)
            nearest = torch.cdist(s, centres).argmin(1)
            assert float((nearest == k).float().mean()) >= 0.95, (k, guidance)


def test_condition_errors_are_one_sentence() -> None:
    x = torch.randn(10, 2)
    with pytest.raises(ConfigError, match="conditional"):
        SGM(2, cond={"kind": "label", "classes": 3}).fit(x, steps=1, quiet=True)
    with pytest.raises(ConfigError, match="without a condition"):
        SGM(2).fit(x, cond=torch.zeros(10), steps=1, quiet=True)
    with pytest.raises(sbridge.SBridgeError, match=r"\[0, 3\)"):
        SGM(2, cond={"kind": "label", "classes": 3}).fit(x, cond=torch.full((10,), 5), steps=1, quiet=True)


# ---------------------------------------------------------------- exact likelihoods


class _ExactScoreNet(nn.Module):
    """The exact noise prediction of VP for data N(mu, s^2 I): eps = -std * score."""

    def __init__(self, proc: VP, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.proc, self.mu, self.s = proc, mu, s

    def forward(self, x, t, cond=None):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        a = self.proc.log_alpha(t).exp()[:, None]
        var = self.proc.variance(t)[:, None]
        score = -(x - a * self.mu) / (a**2 * self.s**2 + var)
        return -var.sqrt() * score


def test_sgm_log_prob_with_the_exact_score_is_the_analytic_density() -> None:
    proc, mu, s = VP(), torch.tensor([1.0, -0.5], dtype=torch.float64), 0.7
    model = SGM(2, process=proc, net=_ExactScoreNet(proc, mu, s))
    model.models.double()
    model.ema_models = model.models
    x = mu + s * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logp = model.log_prob(x, rtol=1e-7, atol=1e-7)
    t0 = torch.tensor(proc.t_min, dtype=torch.float64)
    a, var = float(proc.log_alpha(t0).exp()), float(proc.variance(t0))
    exact = torch.distributions.Normal(a * mu, math.sqrt(a**2 * s**2 + var)).log_prob(x).sum(1)
    # the only error besides the ODE's is the prior N(0, I) in place of p_T (alpha_T |mu| ~ 7e-3 of a shift)
    assert float((logp - exact).abs().max()) < 0.05
    assert model.last_nfe > 0


def test_sgm_sample_on_the_edm_grid_beats_the_uniform_grid_on_sharp_data() -> None:
    # Exact score of N(mu, 0.1^2 I), 10 Euler steps of the probability flow: the EDM grid (steps crowded at low noise,
    # where this flow is stiff) ends closer to the exact p_{t_min} than the uniform grid, in mean and std. Measured:
    # error 0.066 uniform, 0.041 EDM (ratio 1.6; Monte-Carlo error ~1e-3).
    proc, mu, s = VP(), torch.tensor([1.0, -0.5], dtype=torch.float64), 0.1
    model = SGM(2, process=proc, net=_ExactScoreNet(proc, mu, s))
    model.models.double()
    model.ema_models = model.models
    x_T = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0 = torch.tensor(proc.t_min, dtype=torch.float64)
    a, sd = float(proc.log_alpha(t0).exp()), math.sqrt(float(proc.log_alpha(t0).exp()) ** 2 * s**2
                                                        + float(proc.variance(t0)))
    errors = {}
    for grid in ("uniform", "edm"):
        y = model.sample(20_000, steps=10, ode=True, method="euler", grid=grid, x_T=x_T)
        errors[grid] = float((y.mean(0) - a * mu).abs().max() + (y.std(0) - sd).abs().max())
    assert errors["uniform"] > 1.3 * errors["edm"], errors


def test_gaussian_sb_log_prob_is_the_density_of_its_fitted_gaussian() -> None:
    # Generative GaussianSB between N(a, A) (fitted) and N(0, I): its probability flow maps N(0, I) onto N(a, A), so
    # log_prob is the fitted Gaussian density, to the ODE's tolerance.
    g = torch.Generator().manual_seed(0)
    L = torch.tensor([[1.0, 0.0], [0.6, 0.5]])
    data = torch.tensor([0.5, -1.0]) + torch.randn(4000, 2, generator=g) @ L.T
    model = GaussianSB(2).fit(data)
    m = model.moments
    x = data[:20].double()
    exact = torch.distributions.MultivariateNormal(m.mean0, m.cov0).log_prob(x)
    logp = model.log_prob(x.float(), rtol=1e-6, atol=1e-6)
    assert float((logp.double() - exact).abs().max()) < 2e-3


# ---------------------------------------------------------------- dispatch on capabilities


def test_capabilities_not_classes() -> None:
    caps = SGM.declared
    assert caps.sample and not caps.transport and caps.log_prob
    for cls in (DSB, DSBM, GaussianSB):
        caps = cls.declared
        assert caps.sample and caps.transport and caps.log_prob


def test_bridges_sample_by_the_probability_flow_too() -> None:
    # For the exact Gaussian bridge, ODE transport of N(a, A) reaches N(b, B): mean and covariance within 4 SE.
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(20_000, 2, generator=g) * 0.5 + 1.0
    x1 = torch.randn(20_000, 2, generator=g) * torch.tensor([1.5, 0.7]) - 2.0
    model = GaussianSB(2, sigma=0.8).fit(x0, prior=x1)
    y = model.transport(x0[:5000], ode=True, steps=50).double()
    se = torch.tensor([1.5, 0.7], dtype=torch.float64) / math.sqrt(5000)
    assert bool(((y.mean(0) - model.moments.mean1).abs() < 4 * se + 1e-3).all())
    assert bool(((y.std(0) - model.moments.cov1.diagonal().sqrt()).abs() < 4 * se + 1e-2).all())


@pytest.mark.parametrize("make", [lambda: DSBM(2, cond={"kind": "label", "classes": 4}, hidden=64, iterations=2,
                                               sim_steps=30, seed=0),
                                  lambda: DSB(2, cond={"kind": "label", "classes": 4}, hidden=64, iterations=2,
                                              n_steps=20, cache_refresh=100, seed=0),
                                  lambda: SBFBSDE(2, cond={"kind": "label", "classes": 4}, hidden=64, iterations=2,
                                                  sim_steps=20, cache_refresh=100, seed=0)])
def test_conditional_bridges_put_each_label_on_its_mode(make) -> None:
    # The labelled four-mode mixture of the SGM test, bridged to N(0, I): at least 95 % of the points sampled (SDE)
    # and transported back (ODE) for a label fall nearest its own mode.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    labels = torch.randint(4, (4000,), generator=g)
    x = centres[labels] + 0.15 * torch.randn(4000, 2, generator=g)
    model = make().fit(x, cond=labels, steps=2000, batch_size=256, lr=2e-3, quiet=True)
    for k in range(4):
        for ode in (False, True):
            s = model.sample(200, steps=20, ode=ode, cond=k)
            nearest = torch.cdist(s, centres).argmin(1)
            assert float((nearest == k).float().mean()) >= 0.95, (k, ode)
    with pytest.raises(ConfigError, match="conditional"):
        model.sample(10)
    with pytest.raises(ConfigError, match="two data sets"):
        make().fit(x, prior=x, cond=labels, steps=2, quiet=True)
