"""Image data sets (issue 12 groundwork): scikit-learn's digits and Fashion-MNIST from Debian's package."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sbridge.core.errors import ConfigError, DataError
from sbridge.data.images import FASHION_MNIST_DIR, digits, fashion_mnist, read_idx


def test_digits_are_the_sklearn_images_scaled_to_the_unit_interval() -> None:
    x, y = digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # pixel counts 0..16 over 16
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x3, y3 = digits(classes=[3, 8])
    assert set(y3.tolist()) == {3, 8} and x3.shape[0] == 183 + 174


def _write_idx(path: Path, values: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, values.ndim]) + np.array(values.shape, dtype=">u4").tobytes()
    raw = header + values.astype(values.dtype.newbyteorder(">") if values.dtype.itemsize > 1 else values.dtype
                                 ).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_round_trip_and_damage_is_named(tmp_path: Path, compress: bool) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([7, 3], dtype=np.uint8)
    ext = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", images, 0x08, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", labels, 0x08, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}"), images)
    x, y = fashion_mnist("test", path=tmp_path)
    assert y.tolist() == [7, 3]
    torch.testing.assert_close(x[:, 0], torch.tensor(images, dtype=torch.float32) / 255.0)
    floats = np.array([[1.5, -2.0]], dtype=np.float64)
    _write_idx(tmp_path / "f.idx", floats, 0x0E, False)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="truncated or damaged"):
        read_idx(tmp_path / "bad.idx")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(__file__)


def test_a_missing_fashion_mnist_names_the_package_or_the_path(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="folder holding the four IDX files"):
        fashion_mnist("train", path=tmp_path)
    monkeypatch.setattr("sbridge.data.images.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist("train")
    with pytest.raises(ConfigError, match="split"):
        fashion_mnist("validation")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(.ci/run installs it)")
def test_fashion_mnist_from_the_debian_package() -> None:
    x, y = fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    shoes, labels = fashion_mnist("test", classes=[5, 7, 9])
    assert shoes.shape[0] == 3000 and set(labels.tolist()) == {5, 7, 9}
