"""Shared fixtures for the sbridge test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a test module with one intra-op thread, then restore the previous setting.

    The networks in the tests are tiny (2-D data, hidden width <= 128): one thread is as fast as two for them and
    far faster when the CPU cores are shared with other jobs. Opt in with ``pytest.mark.usefixtures``; module-scoped
    fixtures that train models should request it too, so that it is active before they run.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Cache the image-metric classifiers in a folder of this test session, never in the user's cache."""
    import os

    previous = os.environ.get("SBRIDGE_CACHE_DIR")
    os.environ["SBRIDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SBRIDGE_CACHE_DIR", None)
        else:
            os.environ["SBRIDGE_CACHE_DIR"] = previous


def cli_train_and_sample(out: Path, method: str, options: list[str], n: int,
                         capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    """Train a ``sbridge train --method method --data moons`` run in ``out`` (2,000 points, quiet) and return ``n``
    points drawn by ``sbridge sample``, after checking both commands succeed and the draws are finite."""
    from sbridge.cli import main

    assert main(["train", "--method", method, "--data", "moons", "--n-data", "2000", *options, "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--n", str(n), "--out", str(out.parent / "s.npy")]) == 0
    samples = np.load(out.parent / "s.npy")
    assert samples.shape == (n, 2) and np.isfinite(samples).all()
    return samples
