"""``sbridge plot``: the plots a run declares (``capabilities().plots``), each drawn from the run's own samples,
paths and training log by one function of :data:`KINDS`. Image data draw image grids instead of point clouds; that
choice follows the data, not the solver."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sbridge.core import io
from sbridge.core.seeds import BRIDGE_SAMPLE_OFFSET
from sbridge.runs.datasets import _checked_data_spec, _reference_and_floor, data_spec, is_image_spec, prior_spec
from sbridge.runs.scoring import _generate, drawn_labels, trained_classes
from sbridge.solvers.base import load
from sbridge.solvers.capabilities import Capabilities
from sbridge.solvers.latent import LATENT_DIR


def plot(run_dir: str | Path, *, n: int = 4_000, steps: int | None = None, ode: bool = False,
         device: str = "auto") -> list[Path]:
    """Write the run's declared plots into ``RUN/plots/``: ``samples.png`` (from the sampler chosen by ``ode``),
    ``trajectories.png`` (the probability-flow ODE when the run has one, whose paths are readable), ``loss.png`` and
    the solver's own (iterations, the learned forward process, objective terms, transport lines, reconstructions)."""
    with warnings.catch_warnings():  # matplotlib's notes on empty or degenerate panels are not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        path = io.require_run_dir(run_dir)
        model = load(path, device=device)
        caps = model.capabilities()
        ctx = _Context(model, path, caps, n, steps, ode or "sde" not in caps.samplers)  # an ODE-only model: its ODE
        return [p for kind in ctx.caps.plots for p in KINDS[kind](ctx)]


@dataclass
class _Context:
    """What every plot kind reads: the model, its run folder and record, the sampler options, and draws shared
    between kinds (made once, on first use)."""

    model: Any
    path: Path
    caps: Capabilities
    n: int
    steps: int | None
    ode: bool
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.path / "plots"

    @cached_property
    def images(self) -> bool:
        return is_image_spec(_checked_data_spec(self.path, "data"))

    @cached_property
    def spec(self) -> dict[str, Any]:
        return data_spec(self.path)

    @cached_property
    def target_spec(self) -> dict[str, Any]:
        """The law the model's output should follow: the second data set of a two-set bridge, else the data."""
        return prior_spec(self.path) or self.spec

    @property
    def title(self) -> str:
        return self.model.label.upper()

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"steps": self.steps} if self.steps is not None else {}

    def rows(self) -> list[dict[str, Any]]:
        """The training log (a latent run's is its latent stage's)."""
        folder = self.path / LATENT_DIR if self.caps.latent else self.path
        return io.read_jsonl(folder / io.METRICS_FILE)

    def bridge_paths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SDE paths between the two ends of a transporting model (``(steps + 1, n, ...)``) and the target sample."""
        if "bridge" not in self.cache:
            target, _ = _reference_and_floor(self.target_spec, self.n)
            paths = _generate(self.model, self.path, min(self.n, target.shape[0]), self.steps, False, "heun", None,
                              return_path=True).cpu()
            self.cache["bridge"] = (paths, target)
        return self.cache["bridge"]

    def held_out(self) -> torch.Tensor:
        if "held_out" not in self.cache:
            self.cache["held_out"] = _reference_and_floor(self.spec, 80)[0]
        return self.cache["held_out"]


def _plots() -> Any:
    from sbridge.runs import plots  # matplotlib: imported only when a plot is drawn

    return plots


# ---- the kinds -------------------------------------------------------------------------------------------------
def _samples(ctx: _Context) -> list[Path]:
    plots = _plots()
    if ctx.images:
        return [_image_samples(ctx)]
    if ctx.caps.transport:
        paths, target = ctx.bridge_paths()
        direction = "transported" if ctx.caps.two_sets else "sampled"
        return [plots.plot_samples(paths[-1], target, ctx.out / "samples.png",
                                   title=f"{ctx.title}: {direction} points vs {ctx.target_spec['name']}")]
    samples = ctx.model.sample(ctx.n, ode=ctx.ode, **ctx.kwargs)
    steps = ctx.model.sample(2, ode=ctx.ode, return_path=True, **ctx.kwargs).shape[0] - 1  # its grid, as drawn
    data, _ = _reference_and_floor(ctx.spec, ctx.n)
    kind = "probability-flow ODE" if ctx.ode else "reverse SDE"
    return [plots.plot_samples(samples.cpu(), data, ctx.out / "samples.png",
                               title=f"{ctx.title} on {ctx.spec['name']} ({kind}, {steps} steps)")]


def _trajectories(ctx: _Context) -> list[Path]:
    plots = _plots()
    if ctx.images:
        return [_image_trajectories(ctx)]
    if ctx.caps.transport:
        paths, _ = ctx.bridge_paths()
        return [plots.plot_trajectories(paths[:, :256], ctx.out / "trajectories.png", title=f"{ctx.title} SDE paths")]
    ode = "ode" in ctx.caps.samplers
    paths = ctx.model.sample(256, ode=ode, return_path=True, **ctx.kwargs).cpu()
    kind = "probability-flow ODE" if ode else "SDE"
    return [plots.plot_trajectories(paths, ctx.out / "trajectories.png",
                                    title=f"{kind} trajectories, prior (grey) to samples (orange)")]


def _loss(ctx: _Context) -> list[Path]:
    return [_plots().plot_loss(ctx.rows(), ctx.out / "loss.png")]


def _iterations(ctx: _Context) -> list[Path]:
    return [_plots().plot_iterations(ctx.rows(), ctx.out / "iterations.png")]


def _variational(ctx: _Context) -> list[Path]:
    return [_plots().plot_variational(ctx.rows(), ctx.out / "variational.png")]


def _forward_backward(ctx: _Context) -> list[Path]:
    if ctx.images:  # a picture of paths in the plane
        return []
    model = ctx.model
    data, _ = _reference_and_floor(ctx.spec, ctx.n)
    forward = model.forward_paths(data[:256].to(model.device), ctx.steps or 100, seed=model.seed + BRIDGE_SAMPLE_OFFSET)
    backward = model.sample(256, return_path=True, **ctx.kwargs)
    return [_plots().plot_forward_backward(forward.cpu(), backward.cpu(), ctx.out / "forward_backward.png",
                                           title=f"{ctx.title}: the learned forward process and sampling")]


def _objective_terms(ctx: _Context) -> list[Path]:
    return [_plots().plot_objective_terms(ctx.rows(), ctx.out / "objective.png")]


def _transport(ctx: _Context) -> list[Path]:
    if ctx.images:  # lines between points of the plane
        return []
    paths, target = ctx.bridge_paths()
    return [_plots().plot_transport(paths[0], paths[-1], target, ctx.out / "transport.png",
                                    title=f"{ctx.spec['name']} -> {ctx.target_spec['name']}")]


def _reconstructions(ctx: _Context) -> list[Path]:
    autoencoder, held_out = ctx.model.autoencoder_run, ctx.held_out()
    recon = autoencoder.reconstruct(held_out[:16]).cpu()
    return [_plots().plot_image_grids([("held-out images", held_out[:16]), ("reconstructions", recon)],
                                      ctx.out / "reconstructions.png", nrow=4,
                                      title=f"autoencoder, d* = {autoencoder.latent_dim}")]


def _interpolations(ctx: _Context) -> list[Path]:
    autoencoder = ctx.model.autoencoder_run
    codes = autoencoder.encode(ctx.held_out()[:12])
    weights = torch.linspace(0, 1, 9, device=codes.device)[:, None, None]
    lines = (1 - weights) * codes[0::2][None] + weights * codes[1::2][None]  # (9, 6, d*)
    decoded = autoencoder.decode(lines.reshape(-1, autoencoder.latent_dim)).cpu()
    decoded = decoded.reshape(9, 6, *autoencoder.event_shape).transpose(0, 1)
    return [_plots().plot_image_rows(decoded, ctx.out / "interpolations.png",
                                     column_labels=[f"{float(w):.2g}" for w in weights.flatten()],
                                     title="decoded straight lines between the codes of two held-out images")]


# ---- image versions of samples and trajectories ------------------------------------------------------------------
def _image_samples(ctx: _Context) -> Path:
    """A grid of samples beside held-out images (one class per column for class-conditional runs)."""
    model, held_out = ctx.model, ctx.held_out()
    label_rows = ctx.caps.cond == "label"
    trained = torch.tensor(trained_classes(model, ctx.path)) if label_rows else None
    count = 8 * len(trained) if label_rows else 64
    cond = {"cond": trained.repeat_interleave(8)} if label_rows else {}
    kind = "probability-flow ODE" if ctx.ode else "SDE"
    samples = model.sample(count, ode=ctx.ode, **ctx.kwargs, **cond).cpu()
    by_class = ", one class per row" if label_rows else ""
    name = f"{ctx.title} (d* = {model.latent_dim})" if ctx.caps.latent else ctx.title
    return _plots().plot_image_grids([("held-out data", held_out[:count]), ("samples", samples)],
                                     ctx.out / "samples.png", title=f"{name} on {ctx.spec['name']} ({kind}{by_class})")


def _image_trajectories(ctx: _Context) -> Path:
    """The sampling trajectory of eight images, nine states each."""
    sub = {"cond": drawn_labels(ctx.model, ctx.path, 8)} if ctx.caps.cond == "label" else {}
    paths = ctx.model.sample(8, return_path=True, **ctx.kwargs, **sub).cpu()  # (steps + 1 [+ 1], 8, C, H, W)
    cols = torch.linspace(0, paths.shape[0] - 1, 9).round().long()
    return _plots().plot_image_rows(paths[cols].transpose(0, 1), ctx.out / "trajectories.png",
                                    column_labels=[f"{int(c)}" for c in cols],
                                    title=f"sampling trajectories (SDE; column = state index, {paths.shape[0] - 1} "
                                          "steps)")


#: Every plot kind a solver may declare (:data:`sbridge.solvers.capabilities.PLOT_KINDS`) and what draws it.
KINDS: dict[str, Callable[[_Context], list[Path]]] = {
    "samples": _samples, "trajectories": _trajectories, "loss": _loss, "iterations": _iterations,
    "variational": _variational, "forward_backward": _forward_backward, "objective_terms": _objective_terms,
    "transport": _transport, "reconstructions": _reconstructions, "interpolations": _interpolations,
}
