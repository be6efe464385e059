"""Every solver's capability record matches what its methods do, in every mode it supports.

For each mode (generative, between two data sets, conditional, latent, and the option-dependent ones such as
Föllmer's case F or SB-FBSDE's joint training) a tiny model is fitted; then every declared capability is called and
checked (finite output of the right shape), and every undeclared one must raise one sentence (an SBridgeError).
"""

from __future__ import annotations

import pytest
import torch

import sbridge
from sbridge.core.errors import SBridgeError
from sbridge.solvers.capabilities import GRIDS, PLOT_KINDS, Capabilities

LABELS = {"kind": "label", "classes": 3}
SMALL = {"hidden": 16, "depth": 1, "device": "cpu"}


def _data(n: int = 64, d: int = 2, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def _labels(n: int = 64) -> torch.Tensor:
    return torch.arange(n) % 3


#: (id, build, fit keyword arguments): each a mode of a solver.
MODES = [
    ("sgm", lambda: sbridge.SGM(2, **SMALL), {}),
    ("sgm-label", lambda: sbridge.SGM(2, cond=LABELS, cond_drop=0.2, **SMALL), {"cond": _labels()}),
    ("vsdm", lambda: sbridge.VSDM(2, stages=2, sa_samples=32, sa_steps=5, **SMALL), {}),
    ("dsb", lambda: sbridge.DSB(2, iterations=1, n_steps=8, cache_size=32, **SMALL), {}),
    ("dsb-two-sets", lambda: sbridge.DSB(2, iterations=1, n_steps=8, cache_size=32, **SMALL),
     {"prior": _data(seed=1, shift=2.0)}),
    ("dsbm", lambda: sbridge.DSBM(2, iterations=2, **SMALL), {}),
    ("dsbm-two-sets", lambda: sbridge.DSBM(2, iterations=2, **SMALL), {"prior": _data(seed=1, shift=2.0)}),
    ("dsbm-label", lambda: sbridge.DSBM(2, iterations=2, cond=LABELS, **SMALL), {"cond": _labels()}),
    ("dsbm-reference", lambda: sbridge.DSBM(2, iterations=2, start="reference", **SMALL),
     {"prior": _data(seed=1, shift=2.0)}),
    ("dsbm-ot-label", lambda: sbridge.DSBM(2, iterations=2, start="ot", cond=LABELS, **SMALL), {"cond": _labels()}),
    ("gaussian_sb", lambda: sbridge.GaussianSB(2, device="cpu"), {}),
    ("gaussian_sb-two-sets", lambda: sbridge.GaussianSB(2, device="cpu"), {"prior": _data(seed=1, shift=2.0)}),
    ("sbfbsde", lambda: sbridge.SBFBSDE(2, iterations=1, sim_steps=5, cache_size=32, **SMALL), {}),
    ("sbfbsde-two-sets", lambda: sbridge.SBFBSDE(2, iterations=1, sim_steps=5, cache_size=32, **SMALL),
     {"prior": _data(seed=1, shift=2.0)}),
    ("sbfbsde-joint", lambda: sbridge.SBFBSDE(2, mode="joint", sim_steps=5, **SMALL), {}),
    ("sbvae", lambda: sbridge.SBVAE(2, stages=2, sim_steps=5, eval_n=32, **SMALL), {}),
    ("sgm-label-no-drop", lambda: sbridge.SGM(2, cond=LABELS, **SMALL), {"cond": _labels()}),
    ("follmer-H", lambda: sbridge.SchrodingerFollmer(2, **SMALL), {}),
    ("follmer-H-label", lambda: sbridge.SchrodingerFollmer(2, cond=LABELS, cond_drop=0.2, **SMALL),
     {"cond": _labels()}),
    ("follmer-F", lambda: sbridge.SchrodingerFollmer(2, case="F", **SMALL), {}),
    ("follmer-H-data-prior", lambda: sbridge.SchrodingerFollmer(2, prior="data", **SMALL), {}),
    ("lightsb", lambda: sbridge.LightSB(2, components=4, covariance="diagonal", device="cpu"), {}),
    ("lightsb-two-sets", lambda: sbridge.LightSB(2, components=4, covariance="full", device="cpu"),
     {"prior": _data(seed=1, shift=2.0)}),
    ("sf2m", lambda: sbridge.SF2M(2, **SMALL), {}),
    ("sf2m-two-sets", lambda: sbridge.SF2M(2, coupling="exact", **SMALL), {"prior": _data(seed=1, shift=2.0)}),
    ("sf2m-label", lambda: sbridge.SF2M(2, cond=LABELS, **SMALL), {"cond": _labels()}),
]


def _images(n: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def _latent(solver: sbridge.Solver) -> sbridge.LatentBridge:
    autoencoder = sbridge.Autoencoder(shape=(1, 4, 4), latent_dim=2, device="cpu")
    return sbridge.LatentBridge(autoencoder, solver)


#: Models that are not fitted on vectors: the autoencoder and latent compositions (on 4x4 "images").
IMAGE_MODES = [
    ("autoencoder", lambda: sbridge.Autoencoder(shape=(1, 4, 4), latent_dim=2, device="cpu"), {}),
    ("latent-sgm", lambda: _latent(sbridge.SGM(2, **SMALL)), {"autoencoder_steps": 4}),
    ("latent-follmer-F", lambda: _latent(sbridge.SchrodingerFollmer(2, case="F", **SMALL)), {"autoencoder_steps": 4}),
]


def _fit(build, kwargs, images: bool = False):
    model = build()
    x = _images() if images else _data()
    return model.fit(x, steps=8, batch_size=16, quiet=True, **kwargs)


def _cond(caps: Capabilities, n: int) -> dict:
    return {"cond": torch.arange(n) % 3} if caps.cond == "label" else {}


def _check_points(out: torch.Tensor, n: int, shape: tuple[int, ...]) -> None:
    assert out.shape == (n, *shape) and torch.isfinite(out).all()


def _check_record(model, caps: Capabilities, shape: tuple[int, ...]) -> None:
    n = 5
    cond = _cond(caps, n)
    steps = {"steps": caps.fixed_steps or 4}
    # sample, with each declared sampler; an undeclared sampler or sample itself raises a sentence
    if caps.sample:
        for sampler in ("sde", "ode"):
            if sampler in caps.samplers:
                _check_points(model.sample(n, ode=sampler == "ode", **steps, **cond), n, shape)
            else:
                with pytest.raises(SBridgeError):
                    model.sample(n, ode=sampler == "ode", **steps, **cond)
        path = model.sample(n, return_path=True, **steps, **cond)
        assert path.shape[1:] == (n, *shape) and path.shape[0] >= steps["steps"] + 1
        if caps.guidance:
            _check_points(model.sample(n, guidance=1.0, **steps, **cond), n, shape)
        else:
            with pytest.raises(SBridgeError, match="does not apply classifier-free guidance"):
                model.sample(n, guidance=1.0, **steps, **cond)
        for grid in caps.grids:
            _check_points(model.sample(n, grid=grid, **steps, **cond) if grid != "uniform" else
                          model.sample(n, **steps, **cond), n, shape)
    else:
        with pytest.raises(SBridgeError, match="does not draw samples"):
            model.sample(n, **steps)
    # transport both ways
    x = torch.randn(n, *shape)
    if caps.transport:
        _check_points(model.transport(x, **steps, **cond), n, shape)
        _check_points(model.transport(x, reverse=True, **steps, **cond), n, shape)
        if caps.fixed_steps is not None:
            with pytest.raises(SBridgeError):
                model.transport(x, steps=caps.fixed_steps + 1, **cond)
    else:
        with pytest.raises(SBridgeError, match="does not transport"):
            model.transport(x)
    # the exact conditional plan: draws without steps, and its density both ways
    if caps.exact_plan:
        _check_points(model.transport(x), n, shape)
        assert model.last_nfe == 0
        for reverse in (False, True):
            logp = model.plan_log_prob(x, model.transport(x, reverse=reverse), reverse=reverse)
            assert logp.shape == (n,) and torch.isfinite(logp).all()
    else:
        with pytest.raises(SBridgeError, match="does not give the density of a conditional plan"):
            model.plan_log_prob(x, x)
    if caps.cond_required and caps.cond is not None:
        with pytest.raises(SBridgeError):
            model.transport(x, **steps) if caps.transport else model.sample(n, **steps)
    # likelihoods
    points = _images(n) if caps.codec else x
    if caps.log_prob:
        logp = model.log_prob(points, rtol=1e-3, atol=1e-3, **cond)
        assert logp.shape == (n,) and torch.isfinite(logp).all()
    else:
        with pytest.raises(SBridgeError, match="does not give exact likelihoods"):
            model.log_prob(points)
    if caps.path_bound:
        bound = model.elbo(points, steps=5, **cond)
        assert bound.shape == (n,) and torch.isfinite(bound).all()
    else:
        with pytest.raises(SBridgeError, match="does not define a path-space"):
            model.elbo(points)
    # the condition it was built for, and the codec
    assert caps.cond == (None if model.cond_spec is None else model.cond_spec["kind"])
    if caps.codec:
        codes = model.encode(_images(n))
        assert codes.shape == (n, model.latent_dim) and model.decode(codes).shape == (n, 1, 4, 4)
    assert set(caps.plots) <= set(PLOT_KINDS) and set(caps.grids) <= set(GRIDS)
    # the declared diagnostics are what the fit logged
    logged = {key for row in model.history for key in row}
    assert set(caps.diagnostics) <= logged, sorted(set(caps.diagnostics) - logged)


@pytest.mark.parametrize(("name", "build", "kwargs"), MODES, ids=[m[0] for m in MODES])
def test_a_solvers_record_is_what_its_methods_do(name, build, kwargs) -> None:
    model = _fit(build, kwargs)
    caps = model.capabilities()
    assert caps.two_sets == ("prior" in kwargs)
    _check_record(model, caps, (2,))
    # a second data set: accepted when declared (the two-set modes above), else one sentence
    if not caps.prior_data:
        with pytest.raises(SBridgeError):
            build().fit(_data(), prior=_data(seed=1), steps=8, batch_size=16, quiet=True)
    # the latent composition: accepted when declared, else one sentence
    if caps.latent_solver:
        _latent(build())
    else:
        with pytest.raises(SBridgeError):
            _latent(build())


@pytest.mark.parametrize(("name", "build", "kwargs"), IMAGE_MODES, ids=[m[0] for m in IMAGE_MODES])
def test_an_autoencoder_or_latent_record_is_what_its_methods_do(name, build, kwargs) -> None:
    model = _fit(build, kwargs, images=True)
    caps = model.capabilities()
    assert caps.codec and caps.latent == name.startswith("latent") and not caps.transport
    _check_record(model, caps, (1, 4, 4))


def test_guidance_without_condition_dropout_is_refused_with_the_reason() -> None:
    # the unconditional prediction that guidance mixes in was never trained when cond_drop = 0
    model = _fit(lambda: sbridge.SGM(2, cond=LABELS, **SMALL), {"cond": _labels()})
    assert not model.capabilities().guidance
    with pytest.raises(SBridgeError, match="trained with cond_drop=0.*retrain with cond_drop > 0"):
        model.sample(5, steps=4, cond=torch.arange(5) % 3, guidance=2.0)
    with pytest.raises(SBridgeError, match="guidance must be a number >= 0"):
        model.sample(5, steps=4, cond=torch.arange(5) % 3, guidance=-1.0)
    assert torch.equal(model.sample(5, steps=4, cond=torch.arange(5) % 3, guidance=0.0),
                       model.sample(5, steps=4, cond=torch.arange(5) % 3))


def test_a_vsdm_record_offers_only_the_grids_its_process_allows() -> None:
    """VSDM's diagonal process is not isotropic: the EDM and log-SNR grids are not declared, and asking raises."""
    model = _fit(lambda: sbridge.VSDM(2, stages=2, sa_samples=32, sa_steps=5, **SMALL), {})
    assert model.capabilities().grids == ("uniform",) and set(sbridge.SGM.declared.grids) == set(GRIDS)
    with pytest.raises(SBridgeError):
        model.sample(5, steps=4, grid="edm")
