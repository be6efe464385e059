"""``sbridge train``: build the solver a spec names (in an autoencoder's latent space when asked), train it on its
data and write the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbridge.core import io
from sbridge.core.errors import ConfigError
from sbridge.core.seeds import PRIOR_DATA_OFFSET
from sbridge.metrics import samples as metrics
from sbridge.runs.datasets import (
    _data_info,
    _reference_and_floor,
    is_image_spec,
    load_data,
    load_images,
)
from sbridge.runs.scoring import _generate, _image_scorer, frechet_of
from sbridge.runs.spec import RunSpec, _solver_option_error
from sbridge.solvers.base import SOLVERS


def train(spec: RunSpec, callbacks: tuple = ()) -> Any:
    """Build the solver named by ``spec`` (in the latent space of an autoencoder with ``latent`` / ``latent_dim``),
    train it on its data set and write the run directory."""
    out = Path(spec.out)
    data_info = _data_info(spec.data, spec.n_data, spec.seed, spec)
    x = load_data(data_info)
    labels = load_images(data_info)[1] if spec.class_cond else None
    cls = SOLVERS[spec.method]
    options = dict(spec.solver)
    if spec.iterations:
        if "iterations" not in cls.fit_options:
            raise ConfigError(f"method {spec.method!r} has no outer iterations; drop --iterations.")
        options["iterations"] = spec.iterations
    if spec.class_cond:
        options.setdefault("cond", {"kind": "label", "classes": 10})
    if cls.declared.codec and spec.latent_dim:
        options["latent_dim"] = spec.latent_dim
    latent = spec.latent is not None or bool(spec.latent_dim and not cls.declared.codec)
    autoencoder = _latent_autoencoder(spec, tuple(x.shape[1:])) if latent else None
    shape = (autoencoder.latent_dim,) if autoencoder is not None else tuple(x.shape[1:])
    try:
        solver = cls(shape=shape, seed=spec.seed, device=spec.device, **options)
    except TypeError as exc:
        raise ConfigError(_solver_option_error(spec.method, cls, exc)) from None
    common = {**spec.train_options(), "out": out, "resume": spec.resume, "overwrite": spec.overwrite,
              "callbacks": callbacks}
    prior_info = None if spec.prior is None else _data_info(spec.prior, spec.n_data, spec.seed + PRIOR_DATA_OFFSET)
    prior = None if prior_info is None else load_data(prior_info)
    run_info: dict[str, Any] = {"data": data_info, "prior": prior_info}
    if autoencoder is not None:
        from sbridge.solvers.latent import LatentBridge

        model: Any = LatentBridge(autoencoder, solver, train_autoencoder=spec.latent is None)
        run_info["latent_source"] = None if spec.latent is None else str(Path(spec.latent).resolve())
        common.update(autoencoder_steps=spec.ae_steps,
                      autoencoder_options={k: common[k] for k in ("batch_size", "checkpoint_every", "precision",
                                                                  "log_every", "shards", "loss_growth", "grad_clip")})
    else:
        model = solver
    evaluate = None
    if spec.eval_every and prior is None and model.capabilities().sample:
        reference, _ = _reference_and_floor(data_info, spec.eval_n)
        scorer = _image_scorer(data_info) if is_image_spec(data_info) else None

        def evaluate(step: int) -> dict[str, Any]:
            samples = _generate(model, None, spec.eval_n, None, False, "heun", None)
            if scorer is not None:
                return {"frechet": {"value": frechet_of(scorer, samples, reference)}}
            return {"energy": {"value": metrics.energy_distance(samples.flatten(1), reference.flatten(1))}}

    if labels is not None:
        common["cond"] = labels
    model.fit(x, prior=prior, evaluate=evaluate, run_info=run_info, **common)
    return model


def _latent_autoencoder(spec: RunSpec, shape: tuple[int, ...]) -> Any:
    """The autoencoder of a latent run: loaded from ``spec.latent`` (its event shape checked against the data) or a
    new one of ``spec.latent_dim`` to be trained as the run's first stage."""
    from sbridge.solvers.autoencoder import Autoencoder
    from sbridge.solvers.latent import load_autoencoder

    if spec.latent is None:
        return Autoencoder(shape=shape, latent_dim=spec.latent_dim, seed=spec.seed, device=spec.device)
    autoencoder = load_autoencoder(io.require_run_dir(spec.latent), device=spec.device)
    if autoencoder.event_shape != shape:
        raise ConfigError(f"the autoencoder in {spec.latent!r} encodes samples of shape {autoencoder.event_shape}, "
                          f"but {spec.data!r} has shape {shape}; pretrain one on data of this shape.")
    return autoencoder
