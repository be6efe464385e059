"""Sampling and evaluation of a run folder: draws from what the run declares it can do (samples from noise, or
transport between its two data sets), each metric beside its noise floor, likelihoods and their bounds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sbridge.core import io
from sbridge.core.errors import ConfigError, RunDirError
from sbridge.core.seeds import SAMPLE_SHARD_STREAM, stream_seed
from sbridge.core.validation import check_choice, check_positive_int, check_seed
from sbridge.metrics import samples as metrics
from sbridge.runs.datasets import (
    _checked_data_spec,
    _reference_and_floor,
    data_spec,
    is_image_spec,
    load_data,
    prior_spec,
    training_images,
)
from sbridge.solvers.base import Solver, load
from sbridge.solvers.capabilities import GRIDS
from sbridge.training import distributed


def _image_scorer(spec: dict[str, Any]) -> Any:
    from sbridge.metrics.images import ImageMetrics

    return ImageMetrics(spec["name"], path=spec.get("data_path"))


def frechet_of(scorer: Any, samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Classifier Fréchet distance of ``samples`` to ``reference``."""
    from sbridge.metrics.images import frechet_distance

    return frechet_distance(scorer.features(samples), scorer.features(reference))


def _generate(solver: Any, run_dir: Path | None, n: int, steps: int | None, ode: bool, method: str, seed: int | None,
              return_path: bool = False, grid: str = "uniform", rows: slice | None = None, label: int | None = None,
              guidance: float = 0.0) -> torch.Tensor:
    """Model samples of the data end (generative runs) or of the second data set: fresh points of the first data
    set transported forward (bridges between two data sets). ``rows``: only this part of the ``n`` (one process's
    share of a distributed draw). Class-conditional runs draw the labels ``0, 1, ..., K - 1, 0, ...`` in turn (or
    ``label`` for all), with classifier-free guidance weight ``guidance``."""
    kwargs: dict[str, Any] = {"steps": steps} if steps is not None else {}
    caps = solver.capabilities()
    if not caps.sample and not caps.transport:
        raise ConfigError(f"a {solver.label} run neither samples nor transports; use it as the autoencoder of a "
                          "latent run (sbridge train --latent RUN) or evaluate its reconstructions.")
    if grid != "uniform":
        check_choice(grid, GRIDS, "time grid")
        if grid not in caps.grids:
            raise ConfigError(f"{solver.label} samples on its own time grid; drop --grid {grid}.")
        kwargs["grid"] = grid
    prior = None if run_dir is None else prior_spec(run_dir)
    if prior is not None and not caps.two_sets:
        raise RunDirError(f"{str(run_dir / io.CONFIG_FILE)!r} records a second data set, but {solver.label} does not "
                          "transport between data sets; restore the file or retrain the run.")
    if (label is not None or guidance) and caps.cond != "label":
        raise ConfigError("--label and --guidance apply to class-conditional runs (trained with --class-cond).")
    if guidance:
        kwargs["guidance"] = solver.check_guidance(guidance)
    if prior is None:
        count = n if rows is None else len(range(n)[rows])
        if caps.cond == "label":
            first = 0 if rows is None else range(n)[rows].start
            kwargs["cond"] = drawn_labels(solver, run_dir, count, label, first)
        return solver.sample(count, ode=ode, method=method, seed=seed, return_path=return_path, **kwargs)
    source, _ = _reference_and_floor(data_spec(run_dir), n)
    if rows is not None:
        source = source[rows]
    return solver.transport(source, seed=seed, return_path=return_path, ode=ode, method=method, **kwargs)


def drawn_labels(solver: Any, run_dir: Path | None, count: int, label: int | None = None,
                 first: int = 0) -> torch.Tensor:
    """The labels a class-conditional run samples with: ``label`` for all, else the classes it was trained on
    (its data spec's ``classes``, or all of them) in turn, starting at position ``first``."""
    trained = trained_classes(solver, run_dir)
    if label is not None:
        if label not in trained:
            raise ConfigError(f"--label must be one of the classes this run was trained on ({_ranges(trained)}), got "
                              f"{label}.")
        return torch.full((count,), label)
    return torch.tensor(trained)[torch.arange(first, first + count) % len(trained)]


def trained_classes(solver: Any, run_dir: Path | None) -> list[int]:
    """The labels a class-conditional run was trained on: its data spec's ``classes``, or all of them."""
    spec = None if run_dir is None else _checked_data_spec(run_dir, "data")
    return (spec or {}).get("classes") or list(range(solver.cond_spec["classes"]))


def _ranges(labels: list[int]) -> str:
    return f"{labels[0]}..{labels[-1]}" if labels == list(range(labels[0], labels[-1] + 1)) else ", ".join(
        map(str, labels))


def sample(run_dir: str | Path, n: int, *, steps: int | None = None, ode: bool = False, method: str = "heun",
           grid: str = "uniform", seed: int | None = None, device: str = "auto",
           return_path: bool = False, label: int | None = None, guidance: float = 0.0) -> tuple[torch.Tensor, int]:
    """Load a run and draw ``n`` samples (see :func:`_generate`); returns ``(samples, nfe)``."""
    path = io.require_run_dir(run_dir)
    solver = load(path, device=device)
    ctx = distributed.context()
    labels = {"label": label, "guidance": guidance}
    if not ctx.active or return_path:
        x = _generate(solver, path, n, steps, ode, method, seed, return_path, grid, **labels)
        return x.cpu(), int(solver.last_nfe or 0)
    # distributed: each process draws a contiguous share with its own seed; the shares are gathered in rank order.
    # Rank 0 draws with the seed a single process would use (``seed``, or the solver's own default when None), so
    # its share is the single-process draw; the other ranks' seeds are hashed from it.
    n = check_positive_int(n, "n")
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    seed = None if seed is None else check_seed(seed)
    base = solver.seed if seed is None else seed
    local_seed = seed if ctx.rank == 0 else stream_seed(base, SAMPLE_SHARD_STREAM, ctx.rank)
    x = _generate(solver, path, n, steps, ode, method, local_seed, False, grid, rows=slice(lo, hi), **labels)
    parts = distributed.all_gather_objects(x.cpu(), ctx)
    return torch.cat(parts), int(solver.last_nfe or 0)


def evaluate(run_dir: str | Path, n: int = 5_000, *, steps: int | None = None, ode: bool = False,
             method: str = "heun", grid: str = "uniform", seed: int | None = None, device: str = "auto",
             metric_names: list[str] | None = None, nll: bool = False, nll_n: int = 1_000,
             dequantize: int | None = None, label: int | None = None, guidance: float = 0.0) -> dict[str, Any]:
    """Score ``n`` model samples against fresh data, each metric beside its noise floor.

    For a bridge between two data sets the samples are fresh points of the first set transported forward, scored
    against fresh points of the second; the result also holds the mean squared displacement of the transport
    beside that of a random pairing (an optimal-transport-like bridge moves points much less).

    Image runs are scored by the classifier Fréchet distance and KID (:mod:`sbridge.metrics.images`) against held-out
    test images, beside the same metrics of real training images; class-conditional runs add the fraction of samples
    the classifier assigns to the label they were drawn with. An autoencoder run reports its reconstruction error.

    ``nll=True`` adds the exact negative log-likelihood of ``nll_n`` fresh data points
    (:func:`negative_log_likelihood`).
    """
    path = io.require_run_dir(run_dir)
    prior = prior_spec(path)
    target = prior if prior is not None else data_spec(path)
    if nll and prior is not None:
        raise ConfigError("--nll needs a generative run (data to noise); a bridge between two data sets has no "
                          "likelihood of its own.")
    model = load(path, device=device)
    caps = model.capabilities()
    if not caps.sample and not caps.transport:
        if nll or label is not None or guidance or ode or metric_names:
            raise ConfigError("an autoencoder run is evaluated by its reconstruction error only; drop --nll, --label, "
                              "--guidance, --ode and the metric list.")
        return _evaluate_autoencoder(model, path, target, n)
    reference, floor = _reference_and_floor(target, n)
    if is_image_spec(target):
        n = min(n, reference.shape[0])  # no more samples than held-out images
    samples, nfe = sample(path, n, steps=steps, ode=ode, method=method, grid=grid, seed=seed, device=device,
                          label=label, guidance=guidance)
    samples = samples[: reference.shape[0]]
    result = {"run": str(path), "data": target["name"], "n": int(samples.shape[0]), "steps": steps, "ode": ode,
              "sampler": method if ode else "euler_maruyama", "nfe": nfe}
    if is_image_spec(target):
        if metric_names:
            raise ConfigError("image runs are scored by the classifier Fréchet distance and KID; drop the metric list.")
        scorer = _image_scorer(target)
        scores = scorer.compare(samples, reference, floor)
        result["metrics"] = {k: scores[k] for k in ("frechet", "kid")}
        seen = scorer.compare(training_images(target, samples.shape[0]), reference)
        result["training_images"] = {k: seen[k]["value"] for k in ("frechet", "kid")}
        result["features"] = scores["features"]
        result["classifier_accuracy"] = scores["classifier_accuracy"]
        if caps.cond == "label":
            drawn = drawn_labels(model, path, samples.shape[0], label)
            result["label_accuracy"] = float((scorer.predict(samples) == drawn).float().mean())
    else:
        result["metrics"] = metrics.evaluate(samples, reference, floor, metrics=metric_names)
    if prior is not None:
        source, _ = _reference_and_floor(data_spec(path), n)
        source = source[: samples.shape[0]]
        result["source"] = data_spec(path)["name"]
        result["displacement"] = {"transport": float(((samples - source) ** 2).sum(1).mean()),
                                  "random_pairing": float(((reference[: source.shape[0]] - source) ** 2).sum(1).mean())}
    if nll:
        points, _ = _reference_and_floor(target, check_positive_int(nll_n, "nll_n"))
        result["nll"] = negative_log_likelihood(model, points, dequantize=dequantize)
    return result


def _evaluate_autoencoder(model: Any, path: Path, spec: dict[str, Any], n: int) -> dict[str, Any]:
    """Reconstruction error (per-pixel MSE) of held-out data beside that of training data."""
    reference, _ = _reference_and_floor(spec, n)
    seen = training_images(spec, reference.shape[0]) if is_image_spec(spec) else load_data(spec)[:n]
    return {"run": str(path), "data": spec["name"], "n": int(reference.shape[0]), "latent_dim": model.latent_dim,
            "reconstruction_mse": {"held_out": model.reconstruction_error(reference),
                                   "training": model.reconstruction_error(seen)}}


def negative_log_likelihood(solver: Solver, x: torch.Tensor, *, dequantize: int | None = None,
                            seed: int = 0) -> dict[str, Any]:
    """Exact NLL of the points ``x`` under ``solver.log_prob`` (probability-flow ODE, dopri5 at 1e-5): the mean in
    nats per dimension with its standard error over points, and in bits per dimension. With ``dequantize = K`` the
    points are images in ``[0, 1]`` with ``K`` levels: they are uniformly dequantised first and bits/dim is the
    discrete value (:func:`sbridge.numerics.likelihood.nats_to_bits_per_dim`). Solvers with a path-space bound add it
    under ``"bound"`` (the negative ELBO, an upper bound on the reverse SDE's NLL; maths.md §A.2), on the same
    points."""
    from sbridge.numerics.likelihood import uniform_dequantize

    caps = solver.capabilities()
    if not caps.log_prob:
        raise ConfigError(f"{solver.label} has no likelihood; drop --nll.")
    x = x.to(solver.device)
    latent = caps.likelihood_space == "latent"
    d = solver.likelihood_dim
    if dequantize is not None and latent:
        raise ConfigError("a latent run's likelihood is a density of the latent codes, which are not quantised; "
                          "drop --dequantize.")
    if dequantize is not None:
        x = uniform_dequantize(x, dequantize, generator=torch.Generator(device=x.device).manual_seed(seed))
    logp = solver.log_prob(x, seed=seed).double().cpu()
    result = {"n": int(x.shape[0]), **_per_dim(logp, d, dequantize), "dequantized": dequantize,
              "nfe": int(solver.last_nfe or 0), "space": "latent" if latent else "data"}
    if caps.path_bound:  # the bound beside the exact value: -ELBO >= NLL of the SDE sampler
        result["bound"] = _per_dim(solver.elbo(x, seed=seed).double().cpu(), d, dequantize)
    return result


def _per_dim(logp: torch.Tensor, d: int, dequantize: int | None) -> dict[str, float]:
    """``-logp / d`` in nats (mean and standard error over points) and bits per dimension."""
    from sbridge.numerics.likelihood import nats_to_bits_per_dim

    nats = -logp / d
    return {"nats_per_dim": float(nats.mean()), "se": float(nats.std() / math.sqrt(max(nats.shape[0] - 1, 1))),
            "bits_per_dim": float(nats_to_bits_per_dim(logp, d, dequantization_levels=dequantize).mean())}
