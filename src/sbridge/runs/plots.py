"""Figures (PNG) for a run: samples beside data, sampling trajectories, the loss curve. Needs matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sbridge.core.errors import SBridgeError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SBridgeError("plotting needs matplotlib; install it with: pip install 'sbridge[plot]'.") from None
    return plt


def _limits(*clouds: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    pts = torch.cat([c[:, :2] for c in clouds])
    lo, hi = pts.quantile(0.001, dim=0), pts.quantile(0.999, dim=0)
    pad = 0.05 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def _finish_plane(ax: Any, clouds: tuple[torch.Tensor, ...], title: str) -> None:
    """Equal-aspect axes framing ``clouds``, a legend and a title."""
    xlim, ylim = _limits(*clouds)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=6, fontsize=8)
    ax.set_title(title)


def plot_samples(samples: torch.Tensor, data: torch.Tensor, path: str | Path, *, title: str = "") -> Path:
    """Scatter the data and the model's samples side by side (first two coordinates), sharing axes."""
    plt = _pyplot()
    xlim, ylim = _limits(samples, data)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data"), (axes[1], samples, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue" if name == "data" else "tab:orange")
        ax.set_title(f"{name} (n={len(pts)})")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_trajectories(paths: torch.Tensor, path: str | Path, *, n_lines: int = 64, title: str = "") -> Path:
    """Draw sampling paths ``(steps + 1, n, d)``: start points (prior) grey, end points orange, lines between."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ends = paths[-1]
    ax.scatter(paths[0, :, 0], paths[0, :, 1], s=1, color="0.7", label="start (prior)")
    ax.scatter(ends[:, 0], ends[:, 1], s=1.5, color="tab:orange", label="end (samples)")
    for i in range(min(n_lines, paths.shape[1])):
        ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.6, alpha=0.6, color="tab:blue")
    _finish_plane(ax, (paths[0], ends), title or "sampling trajectories")
    return _save(fig, path)


def plot_loss(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss (log scale) against step, from ``metrics.jsonl`` rows; evaluation rows on a second axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if loss:
        ax.plot(*zip(*loss, strict=True), color="tab:blue", label="training loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    evals = [(r["step"], r["eval"]["energy"]["value"]) for r in rows if "energy" in r.get("eval", {})]
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=True), "o-", color="tab:orange", label="energy distance (EMA model)")
        ax2.set_ylabel("energy distance")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("training curve")
    return _save(fig, path)


def plot_transport(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, path: str | Path, *,
                   n_lines: int = 300, title: str = "") -> Path:
    """Transport lines ``x -> y`` over both marginals: source points (blue), transported points (orange), fresh
    target points (grey, behind)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(target[:, 0], target[:, 1], s=1, color="0.75", label="target data")
    for i in range(min(n_lines, x.shape[0])):
        ax.plot([x[i, 0], y[i, 0]], [x[i, 1], y[i, 1]], lw=0.4, alpha=0.4, color="0.3")
    ax.scatter(x[:, 0], x[:, 1], s=1.5, color="tab:blue", label="source")
    ax.scatter(y[:, 0], y[:, 1], s=1.5, color="tab:orange", label="transported")
    _finish_plane(ax, (x, y, target), title or "transport")
    return _save(fig, path)


def plot_iterations(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Energy distance of each transported end to its target after every outer (IPF / IMF) iteration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r for r in rows if "iteration" in r]
    if its:
        ax.plot([r["iteration"] for r in its], [r["energy_x1"] for r in its], "o-", label="forward end (x1)")
        ax.plot([r["iteration"] for r in its], [r["energy_x0"] for r in its], "s-", label="backward end (x0)")
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("energy distance to target")
    ax.legend(fontsize=8)
    ax.set_title("marginal error per iteration")
    return _save(fig, path)


def plot_variational(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """VSDM's stages: the spectrum of ``A`` (its diagonal, or singular values; quantiles for many entries) and the
    prior mismatch ``KL(forward law at T || prior)`` after every stochastic-approximation update."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    stages = [r for r in rows if "A_spectrum" in r]
    if stages:
        x = [r["stage"] for r in stages]
        spectra = list(zip(*(r["A_spectrum"] for r in stages), strict=True))
        for k, values in enumerate(spectra):
            left.plot(x, values, "-", lw=1, color=plt.cm.viridis(k / max(len(spectra) - 1, 1)))
        if all("prior_kl" in r for r in stages):
            right.plot(x, [max(r["prior_kl"], 1e-6) for r in stages], "o-")
            right.set_yscale("log")
    left.set_xlabel("stage")
    left.set_ylabel("entries / singular values of A")
    left.set_title("variational score A")
    right.set_xlabel("stage")
    right.set_ylabel("KL(law at T || prior), nats")
    right.set_title("prior mismatch")
    return _save(fig, path)


def plot_forward_backward(forward: torch.Tensor, backward: torch.Tensor, path: str | Path, *, n_lines: int = 24,
                          title: str = "") -> Path:
    """Paths ``(steps + 1, n, d)`` of the forward process from data to ``T`` (left) and of the reverse SDE from the
    prior back to data (right), on shared axes: with a learned forward process (VSDM) the left panel shows what
    ``A`` does to the data, the right one how sampling undoes it."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    for ax, paths, name, start, end in ((axes[0], forward, "forward: data to T", "data", "at T"),
                                        (axes[1], backward, "reverse SDE: prior to data", "prior", "samples")):
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=1.5, color="tab:blue", label=start)
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=1.5, color="tab:orange", label=end)
        for i in range(min(n_lines, paths.shape[1])):
            ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.5, alpha=0.5, color="0.4")
        _finish_plane(ax, (forward[0], forward[-1], backward[0], backward[-1]), name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_objective_terms(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """SB-VAE's two terms per stage (maths.md §A.2): the prior loss (``KL(p_T || prior)`` plus the data's entropy)
    and the drift matching, with the stage where the encoder stopped."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    stages = [r for r in rows if "prior_loss" in r]
    x = [r["stage"] for r in stages]
    left.plot(x, [r["prior_loss"] for r in stages], "o-", color="tab:blue")
    right.plot(x, [r["drift_matching"] for r in stages], "o-", color="tab:orange")
    stopped = [r["stage"] for r in stages if r.get("encoder", "training") != "training"]
    for ax in (left, right):
        if stopped:
            ax.axvline(stopped[0], color="0.5", ls="--", lw=1, label=f"encoder stopped after stage {stopped[0]}")
            ax.legend(fontsize=8)
        ax.set_xlabel("stage")
    left.set_ylabel("nats (up to the data entropy)")
    left.set_title("prior loss")
    right.set_ylabel("nats")
    right.set_title("drift matching")
    return _save(fig, path)


#: How far a title may reach, as a fraction of its figure's width (a suptitle) or of its axes' (an axes title).
_TITLE_SPAN = 0.96


def _titles(fig: Any) -> list[tuple[Any, float]]:
    """The figure's non-empty titles, each with the width in pixels it has to fit in."""
    width = fig.bbox.width
    found = [(ax.title, min(width, ax.bbox.width / _TITLE_SPAN)) for ax in fig.axes]
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib keeps the suptitle's Text here (no public accessor)
    if suptitle is not None:
        found.append((suptitle, width))
    return [(text, span * _TITLE_SPAN) for text, span in found if text.get_text()]


def fit_titles(fig: Any) -> None:
    """Wrap every title wider than the room it has (:func:`_titles`) onto more lines, at spaces, until it fits
    (``tight_layout`` then makes room for the extra lines): a long title is never cut off at the figure's edge."""
    import textwrap

    renderer = fig.canvas.get_renderer()
    for text, room in _titles(fig):
        words = " ".join(text.get_text().split())
        chars = len(words)
        while text.get_window_extent(renderer).width > room and chars > 8:
            chars = max(8, int(chars * 0.85))
            text.set_text(textwrap.fill(words, chars, break_long_words=False))


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fit_titles(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _tile(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images ``(n, C, H, W)`` in ``[0, 1]`` tiled into one ``(rows * (H + 1) - 1, nrow * (W + 1) - 1)`` array with
    one-pixel gutters of intensity 0 (the first channel; grey images)."""
    x = images.detach().float().cpu().clamp(0, 1)[:, 0]
    n, h, w = x.shape
    rows = -(-n // nrow)
    canvas = torch.zeros(rows * (h + 1) - 1, nrow * (w + 1) - 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = x[i]
    return canvas


def plot_image_grids(grids: list[tuple[str, torch.Tensor]], path: str | Path, *, nrow: int = 8,
                     title: str = "") -> Path:
    """Panels of image grids side by side, e.g. ``[("data", real), ("samples", generated)]``; each panel tiles its
    ``(n, C, H, W)`` images ``nrow`` per row (black on white, like ink)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.4), squeeze=False)
    for ax, (name, images) in zip(axes[0], grids, strict=True):
        ax.imshow(1 - _tile(images, nrow), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_image_rows(rows: torch.Tensor, path: str | Path, *, row_label: str = "",
                    column_labels: list[str] | None = None, title: str = "") -> Path:
    """A table of images ``(r, c, C, H, W)``: one row per sequence (a sampling trajectory, an interpolation, an
    image and its reconstruction), columns labelled by ``column_labels``."""
    plt = _pyplot()
    r, c = rows.shape[:2]
    fig, ax = plt.subplots(figsize=(0.9 * c + 1, 0.9 * r + 1))
    ax.imshow(1 - _tile(rows.reshape(r * c, *rows.shape[2:]), c), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    h, w = rows.shape[-2:]
    if column_labels:
        ax.set_xticks([(w + 1) * j + (w - 1) / 2 for j in range(c)], column_labels, fontsize=7)
        ax.tick_params(length=0)
    else:
        ax.set_xticks([])
    ax.set_yticks([])
    if row_label:
        ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
