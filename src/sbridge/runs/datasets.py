"""The data of a run: toy sets, data files and image sets by the spec recorded in ``config.json``, and the evaluation
reference and noise-floor samples drawn apart from the training data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from sbridge.core import io
from sbridge.core.errors import DataError, RunDirError
from sbridge.core.seeds import FLOOR_DATA_OFFSET, REFERENCE_DATA_OFFSET
from sbridge.core.validation import as_data_tensor
from sbridge.data import images, toy

DATA_FILE_SUFFIXES = (".npy", ".csv", ".txt")


def is_data_file(name: str) -> bool:
    """Whether ``--data`` names a file rather than a toy set: a supported suffix (``.npy``; ``.csv`` comma-separated;
    ``.txt`` separated by whitespace), any other suffix (refused with the list), or a path that exists."""
    name = str(name)
    return name not in toy.DATASETS and (bool(Path(name).suffix) or "/" in name or Path(name).exists())


def read_data_file(path: str | Path) -> torch.Tensor:
    """Read an ``(n, d)`` array from ``.npy``, comma-separated ``.csv`` or whitespace-separated ``.txt``; the type,
    shape and finiteness are checked. Pickled ``.npy`` files are never loaded."""
    import numpy as np

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise DataError(f"data file {str(p)!r} has an unsupported type {suffix or '(no suffix)'!r}; save it as .npy, "
                        ".csv (comma-separated) or .txt (whitespace-separated), or name a toy data set.")
    if p.is_dir():
        raise DataError(f"data file {str(p)!r} is a folder; pass a .npy, .csv or .txt file.")
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist; pass a .npy, .csv or .txt file or a toy data set name.")
    if not os.access(p, os.R_OK):
        raise DataError(f"data file {str(p)!r} cannot be read (permission denied); fix its permissions.")
    try:
        if suffix == ".npy":
            array = np.load(p, allow_pickle=False)
        else:
            with warnings.catch_warnings():  # an empty file: reported below as empty data, not as a numpy warning
                warnings.simplefilter("ignore", UserWarning)
                array = np.loadtxt(p, delimiter="," if suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        if suffix == ".npy":
            reason = "it is not a numeric .npy array: damaged, or holding Python objects"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sep = "" if suffix == ".npy" else (" with comma-separated rows" if suffix == ".csv" else
                                           " with whitespace-separated rows")
        raise DataError(f"data file {str(p)!r} could not be read ({reason}); save a numeric (n, d) array"
                        f"{sep} (numpy.save for .npy).") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise DataError(f"data file {str(p)!r} does not hold numbers; save a numeric (n, d) array.")
    return as_data_tensor(array, name=f"data file {str(p)!r}")


def is_image_spec(spec: dict[str, Any] | None) -> bool:
    """Whether a recorded data spec names an image data set."""
    return spec is not None and spec.get("kind") == "images"


def load_images(spec: dict[str, Any], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of an image data spec (``split`` ``"train"`` or ``"test"``)."""
    return images.load(spec["name"], split, classes=spec.get("classes"), path=spec.get("data_path"))


def load_data(spec: dict[str, Any], n: int | None = None, seed_offset: int = 0) -> torch.Tensor:
    """The data a run was trained on (``seed_offset`` 0) or fresh draws from the same law (toy sets only)."""
    if is_image_spec(spec):
        return load_images(spec)[0]
    if "path" in spec:
        return read_data_file(spec["path"])
    return toy.sample(spec["name"], n or spec["n"], seed=spec["seed"] + seed_offset)


def _data_info(name: str, n: int, seed: int, spec: Any = None) -> dict[str, Any]:
    """How a run's data is recorded: a toy set by name, size and seed; a file by path and the SHA-256 of its bytes
    (so a resume notices a file whose contents changed); an image set by name, classes and data folder (all its
    training images). ``spec``: the :class:`~sbridge.runs.spec.RunSpec` (its ``classes`` and ``data_path``)."""
    if name in images.DATASETS:
        classes = None if spec is None or spec.classes is None else sorted(set(spec.classes))
        folder = None if spec is None or spec.data_path is None else str(Path(spec.data_path).resolve())
        info = {"name": name, "kind": "images", "classes": classes, "data_path": folder, "seed": seed}
        return {**info, "n": int(load_images(info)[0].shape[0])}
    if is_data_file(name):
        return {"name": Path(name).stem, "path": str(Path(name).resolve()), "seed": seed, "sha256": _file_digest(name)}
    return {"name": name, "n": n, "seed": seed}


def _file_digest(path: str | Path) -> str | None:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None  # reading the file reports the problem with its own sentence
    return digest.hexdigest()


def _checked_data_spec(run_dir: Path, key: str) -> dict[str, Any] | None:
    spec = io.read_run_config(run_dir).get(key)
    valid = spec is None or (isinstance(spec, dict) and isinstance(spec.get("name"), str)
                             and isinstance(spec.get("seed"), int)
                             and (isinstance(spec.get("path"), str) or isinstance(spec.get("n"), int)))
    if not valid:
        raise RunDirError(f"{str(run_dir / io.CONFIG_FILE)!r} has an invalid {key!r} entry; restore the file or "
                          "retrain the run into a new --out folder.")
    return spec


def prior_spec(run_dir: Path) -> dict[str, Any] | None:
    """The second data set of a bridge run, or None for a generative run."""
    return _checked_data_spec(run_dir, "prior")


def data_spec(run_dir: Path) -> dict[str, Any]:
    spec = _checked_data_spec(run_dir, "data")
    if not spec:
        raise RunDirError(f"{str(run_dir)!r} does not record its data set, so it cannot be evaluated against it; "
                          "train it with 'sbridge train --data NAME'.")
    return spec


def training_images(spec: dict[str, Any], n: int) -> torch.Tensor:
    """``n`` random training images of an image data spec (seeded)."""
    train_images = load_images(spec)[0]
    gen = torch.Generator().manual_seed(spec["seed"] + REFERENCE_DATA_OFFSET)
    return train_images[torch.randperm(train_images.shape[0], generator=gen)[:n]]


def _reference_and_floor(spec: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent data samples of size ``n``: the evaluation reference and the noise-floor sample.

    Toy sets draw fresh points with seeds that do not overlap the training data. A data file is shuffled and split
    into two disjoint halves (``n`` shrinks to half the file when the file is small); they are not held out from
    training, so the comparison measures fit, not generalisation. Image sets: the reference and the floor sample
    are two disjoint halves of the held-out test split (``n`` shrinks to half its size): training images are not a
    fair floor, because the feature classifier was trained on them and sees them differently
    (:func:`training_images`).
    """
    if is_image_spec(spec):  # two disjoint halves of the held-out test split
        held_out = load_images(spec, "test")[0]
        gen = torch.Generator().manual_seed(spec["seed"] + FLOOR_DATA_OFFSET)
        order = torch.randperm(held_out.shape[0], generator=gen)
        n = min(n, held_out.shape[0] // 2)
        return held_out[order[:n]], held_out[order[held_out.shape[0] - n:]]
    if "path" not in spec:
        return (load_data(spec, n, REFERENCE_DATA_OFFSET), load_data(spec, n, FLOOR_DATA_OFFSET))
    data = load_data(spec)
    n = min(n, data.shape[0] // 2)
    if n < 2:
        raise DataError(f"data file {spec['path']!r} has too few rows to evaluate against; it needs at least 4.")
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(spec["seed"] + FLOOR_DATA_OFFSET))
    return data[order[:n]], data[order[n:2 * n]]
