"""Image metrics that need no download: a Fréchet distance and a kernel distance in the feature space of a small
classifier trained here, on the same data.

FID (Heusel et al. 2017) compares Gaussians fitted to Inception-v3 features; its weights cannot be downloaded on an
offline machine. :class:`ImageMetrics` computes the same Fréchet distance (and KID, Bińkowski et al. 2018: the
unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``, averaged over subsets) in the penultimate-layer features of
:class:`FeatureClassifier`, a CNN trained deterministically on the data set's training split
(:func:`train_classifier`) and cached in the user's cache folder. The values are called *classifier Fréchet
distance* and *classifier KID*: they are not comparable with published FIDs. Each is reported beside its floor, the
same metric between real training images and held-out test images, and the classifier's test accuracy is stored
with it. Pass ``features=`` (e.g. an Inception feature extractor) to compute a true FID with the same code.

Run ``python -m sbridge.metrics.images --data digits`` to train (or re-train with ``--force``) and print the
classifier's accuracy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sbridge.core import io
from sbridge.core.errors import ConfigError
from sbridge.data import images

#: Bump when the classifier's architecture or training changes: cached classifiers of another version are retrained.
CLASSIFIER_VERSION = 2
#: Width of the classifier's penultimate layer; the features are it and the 64 average-pooled channels of the last
#: convolution, 2 * FEATURE_DIM numbers per image.
FEATURE_DIM = 64


def cache_dir() -> Path:
    """``$SBRIDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sbridge``, else ``~/.cache/sbridge``."""
    if os.environ.get("SBRIDGE_CACHE_DIR"):
        return Path(os.environ["SBRIDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sbridge"


class FeatureClassifier(nn.Module):
    """A small CNN for ``(C, H, W)`` images: two 3x3 conv layers (32, 64 channels; the second of stride 2 for images
    larger than 8x8, and a third stride-2 layer for 28x28), average-pooled to 4x4, a ``FEATURE_DIM``-wide ReLU
    layer and a linear layer to the class logits. :meth:`features` joins the penultimate layer with the last
    convolution's channels averaged over space (mid-level features, as Inception's pool features are), divided by
    ``scale`` (set after training so that a training image's features have mean square 1)."""

    def __init__(self, shape: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        c, h, _ = shape
        layers: list[nn.Module] = [nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(32, 64, 3, padding=1, stride=1 if h <= 8 else 2), nn.ReLU()]
        if h > 16:
            layers += [nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, classes)
        self.register_buffer("scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.convs(x)
        return torch.cat([maps.mean((2, 3)), self.dense(maps)], dim=1) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.convs(x)))


#: Training budget per data set: (epochs, batch size).
_BUDGET = {"digits": (40, 64), "fashion-mnist": (3, 128)}


def train_classifier(dataset: str, *, path: str | Path | None = None, seed: int = 0,
                     progress: bool = False) -> tuple[FeatureClassifier, float]:
    """Train :class:`FeatureClassifier` on the training split of ``dataset`` (Adam, lr 1e-3 with cosine decay,
    fixed seed, one thread: the same weights on every run on one machine; other CPUs' kernels may round
    differently) and return it with its accuracy on the test split."""
    x, y = images.load(dataset, "train", path=path)
    xt, yt = images.load(dataset, "test", path=path)
    epochs, batch = _BUDGET[dataset]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the number of cores
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FeatureClassifier(tuple(x.shape[1:]))
            gen = torch.Generator().manual_seed(seed)
            steps = epochs * math.ceil(x.shape[0] / batch)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            step = 0
            for epoch in range(epochs):
                order = torch.randperm(x.shape[0], generator=gen)
                for i in range(0, x.shape[0], batch):
                    idx = order[i:i + batch]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    step += 1
                if progress:
                    print(f"epoch {epoch + 1}/{epochs}: loss {float(loss):.4f}", flush=True)
        model.eval()
        with torch.no_grad():
            accuracy = float((_batched(model, xt).argmax(1) == yt).float().mean())
            model.scale.fill_(float(_batched(model.features, x).pow(2).mean().sqrt()))
    finally:
        torch.set_num_threads(threads)
    return model, accuracy


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = 2048) -> torch.Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def classifier_path(dataset: str, path: str | Path | None = None) -> Path:
    """The cache file of ``dataset``'s classifier; files read from another folder (``path``) get their own."""
    tag = ""
    if path is not None:
        import hashlib

        tag = "-" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return cache_dir() / "classifiers" / f"{dataset}{tag}-v{CLASSIFIER_VERSION}.safetensors"


def load_classifier(dataset: str, *, path: str | Path | None = None, force: bool = False,
                    progress: bool = False) -> tuple[FeatureClassifier, float]:
    """The cached classifier of ``dataset`` and its test accuracy, trained and cached on first use (or with
    ``force``). The cache holds only tensors and JSON (safetensors): loading it runs no code."""
    file = classifier_path(dataset, path)
    shape = tuple(images.load(dataset, "test", path=path)[0].shape[1:])
    if file.is_file() and not force:
        try:
            tensors, meta = io.read_tensors(file)
            model = FeatureClassifier(shape)
            model.load_state_dict(tensors)
            return model.eval(), float(meta["accuracy"])
        except Exception:  # noqa: BLE001 - a damaged cache is retrained, not reported
            pass
    import sys

    print(f"sbridge: training the feature classifier of {dataset} (once; cached in {file.parent})", file=sys.stderr,
          flush=True)
    model, accuracy = train_classifier(dataset, path=path, progress=progress)
    file.parent.mkdir(parents=True, exist_ok=True)
    io.write_tensors(file, {k: v.contiguous() for k, v in model.state_dict().items()},
                     {"accuracy": accuracy, "dataset": dataset, "version": CLASSIFIER_VERSION})
    return model, accuracy


def _two_sets(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sets must be (n, k) arrays of the same width, got {a.shape} and {b.shape}.")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ConfigError("a Fréchet distance or KID needs at least 2 images in each set; draw more samples.")
    return a, b


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, k)``:
    ``|m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`` (Dowson & Landau 1982), in float64 with
    symmetric eigendecompositions (no complex ``sqrtm``)."""
    a, b = _two_sets(a, b)
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ cb @ root_a)
    cross = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


def kernel_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, *, subsets: int = 10,
                    subset_size: int = 1000, seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the polynomial kernel ``(x.y / k + 1)^3``, averaged over ``subsets`` random
    subsets of ``min(subset_size, n_a, n_b)`` rows of each set (Bińkowski et al. 2018)."""
    a, b = _two_sets(a, b)
    k = a.shape[1]
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / k + 1) ** 3, (y @ y.T / k + 1) ** 3, (x @ y.T / k + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values))


class ImageMetrics:
    """Classifier Fréchet distance and KID for the image data set ``dataset`` (see the module docstring).

    ``features``: a function ``images -> (n, k)`` to use instead of the classifier (e.g. Inception pool features for
    a true FID; then no classifier is trained). ``path``: where the data set's files are (Fashion-MNIST).
    """

    def __init__(self, dataset: str, *, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 path: str | Path | None = None) -> None:
        self.dataset, self.path = dataset, path
        if features is None:
            self.classifier, self.accuracy = load_classifier(dataset, path=path)
            self._features = self.classifier.features
            self.name = "classifier"
        else:
            if not callable(features):
                raise ConfigError("features must be a function images -> (n, k) feature rows.")
            self.classifier, self.accuracy, self._features, self.name = None, None, features, "custom"

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature rows ``(n, k)`` of images ``(n, C, H, W)`` in ``[0, 1]`` (clamped to it first)."""
        return _batched(self._features, x.detach().float().cpu().clamp(0, 1)).reshape(x.shape[0], -1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's labels of images ``x``."""
        if self.classifier is None:
            raise ConfigError("predict needs the built-in classifier; it is not available with custom features.")
        return _batched(self.classifier, x.detach().float().cpu().clamp(0, 1)).argmax(1)

    def compare(self, samples: torch.Tensor, reference: torch.Tensor,
                floor_sample: torch.Tensor | None = None) -> dict[str, Any]:
        """Fréchet distance and KID of ``samples`` to ``reference`` (held-out real images), each beside its floor:
        the same metric between ``floor_sample`` (real training images, as many as ``samples``) and ``reference``."""
        fs, fr = self.features(samples), self.features(reference)
        out: dict[str, Any] = {}
        floor_f = None if floor_sample is None else self.features(floor_sample)
        for name, fn in (("frechet", frechet_distance), ("kid", kernel_distance)):
            out[name] = {"value": fn(fs, fr), "floor": None if floor_f is None else fn(floor_f, fr)}
        out["features"] = self.name
        out["classifier_accuracy"] = self.accuracy
        return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sbridge.metrics.images",
                                     description="train and cache the feature classifier of an image data set")
    parser.add_argument("--data", default="digits", choices=images.DATASETS)
    parser.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--force", action="store_true", help="retrain even when a cached classifier exists")
    args = parser.parse_args(argv)
    _, accuracy = load_classifier(args.data, path=args.data_path, force=args.force, progress=True)
    print(f"{args.data}: test accuracy {accuracy:.4f}; cached at {classifier_path(args.data, args.data_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
