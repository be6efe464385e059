"""The run figures: every title and label lies inside the saved figure (a long title is wrapped, not cut off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sbridge.runs import plots  # noqa: E402

LONG = "probability-flow ODE trajectories, prior (grey) to samples (orange), with some more words to be sure"


def _outside(fig: Any) -> bool:
    """Whether anything drawn on ``fig`` (titles, labels, tick labels, legends) leaves the figure (a hundredth of an
    inch of slack)."""
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    box = fig.bbox_inches
    slack = 0.01
    return bool(drawn.x0 < box.x0 - slack or drawn.x1 > box.x1 + slack or drawn.y0 < box.y0 - slack
                or drawn.y1 > box.y1 + slack)


@pytest.fixture
def kept_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions close after saving, kept open for inspection."""
    kept: list[Any] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def test_a_title_wider_than_its_figure_is_wrapped_inside_it(tmp_path: Path, kept_figures: list[Any]) -> None:
    gen = torch.Generator().manual_seed(0)
    paths = torch.randn(11, 200, 2, generator=gen)
    # unwrapped, the title leaves the 5.5-inch figure (so the check below can fail)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.set_title(LONG)
    fig.tight_layout()
    assert _outside(fig)
    plots.plot_trajectories(paths, tmp_path / "trajectories.png", title=LONG)
    plots.plot_samples(paths[-1], paths[0], tmp_path / "samples.png", title=LONG + ", " + LONG)
    plots.plot_loss([{"step": 10 * i, "loss": 1.0 / (i + 1), "phase": "score"} for i in range(20)],
                    tmp_path / "loss.png")
    assert len(kept_figures) == 3
    for fig in kept_figures:
        assert not _outside(fig)
    wrapped = kept_figures[0].axes[0].title.get_text()
    assert "\n" in wrapped and " ".join(wrapped.split()) == " ".join(LONG.split())  # wrapped, no word lost


def test_a_short_title_is_left_as_it_is(tmp_path: Path, kept_figures: list[Any]) -> None:
    paths = torch.randn(5, 50, 2, generator=torch.Generator().manual_seed(1))
    plots.plot_trajectories(paths, tmp_path / "trajectories.png", title="SGM paths")
    assert kept_figures[0].axes[0].title.get_text() == "SGM paths"
