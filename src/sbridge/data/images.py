"""Image data sets, all offline: scikit-learn's 8x8 digits and Fashion-MNIST from Debian's ``dataset-fashion-mnist``
package (files in the IDX format of LeCun et al.). Images come as float32 tensors ``(n, 1, H, W)`` in ``[0, 1]``
with int64 labels."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sbridge.core.errors import DataError
from sbridge.core.validation import check_choice

#: Where Debian's ``dataset-fashion-mnist`` package puts the four IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not): two zero bytes, a type code, the number of dimensions, the sizes as
    big-endian 32-bit integers, then the values."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"could not read the IDX file {str(path)!r} ({exc}).") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataError(f"{str(path)!r} is not an IDX file (it does not start with the IDX magic number).")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{str(path)!r} is truncated or damaged: its header announces shape {shape}.")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _select(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    if classes is None:
        return images, labels
    keep = torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))
    if not bool(keep.any()):
        raise DataError(f"no images of the classes {list(classes)}; the labels run from 0 to {int(labels.max())}.")
    return images[keep], labels[keep]


#: The digits have no official split: a fixed permutation puts this many of the 1,797 images in the test split.
DIGITS_TEST_SIZE = 600
SPLITS = ("train", "test", "all")


def digits(split: str = "all", *, classes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits, ``(n, 1, 8, 8)`` in ``[0, 1]`` (pixel counts 0..16 divided by 16),
    with their labels 0..9. ``split``: ``"all"``, or a fixed train (1,197) / test (600) split drawn by a seeded
    permutation; ``classes`` keeps only those labels."""
    check_choice(split, SPLITS, "split")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits come with scikit-learn; install it with: pip install 'sbridge[images]'.") from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    if split != "all":
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
        keep = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
        images, labels = images[keep.sort().values], labels[keep.sort().values]
    return _select(images, labels, classes)


def fashion_mnist(split: str = "train", *, path: str | Path | None = None, classes: Sequence[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training or 10,000 test images ``(n, 1, 28, 28)`` in
    ``[0, 1]`` with labels 0..9 (:data:`FASHION_MNIST_CLASSES`), read from ``path`` (default: Debian's package
    folder :data:`FASHION_MNIST_DIR`); ``classes`` keeps only those labels."""
    check_choice(split, ("train", "test"), "split")
    folder = FASHION_MNIST_DIR if path is None else Path(path)
    prefix = "train" if split == "train" else "t10k"
    files = {}
    for part, kind in (("images", "idx3"), ("labels", "idx1")):
        found = [folder / f"{prefix}-{part}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        found = [f for f in found if f.is_file()]
        if not found:
            where = ("install Debian's package with: apt-get install -y dataset-fashion-mnist" if path is None
                     else "pass path= the folder holding the four IDX files")
            raise DataError(f"Fashion-MNIST was not found: {str(folder)!r} has no {prefix}-{part}-{kind}-ubyte(.gz); "
                            f"{where}.")
        files[part] = found[0]
    images = read_idx(files["images"])
    labels = read_idx(files["labels"])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"the Fashion-MNIST files in {str(folder)!r} do not match: images {images.shape}, labels "
                        f"{labels.shape}.")
    tensor = torch.tensor(np.array(images), dtype=torch.float32)[:, None] / 255.0
    return _select(tensor, torch.tensor(np.array(labels), dtype=torch.int64), classes)


#: Image data sets by name (``--data``): each is ``load(split, classes=..., path=...)``.
DATASETS = ("digits", "fashion-mnist")


def load(name: str, split: str = "train", *, classes: Sequence[int] | None = None, path: str | Path | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the data set ``name`` (:data:`DATASETS`), ``split`` ``"train"`` or ``"test"``;
    ``path``: where Fashion-MNIST's files are (default: Debian's package folder)."""
    check_choice(name, DATASETS, "image data set")
    if name == "digits":
        if path is not None:
            raise DataError("the digits ship with scikit-learn and take no data path; drop --data-path.")
        return digits(split, classes=classes)
    return fashion_mnist(split, path=path, classes=classes)
