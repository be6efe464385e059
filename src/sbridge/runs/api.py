"""Operations on run directories, shared by the CLI and by scripts: train, sample, evaluate, plot.

A run directory holds ``config.json`` (solver, training and data settings), ``model.safetensors`` (weights),
``checkpoint.safetensors`` (full training state for ``--resume``), ``metrics.jsonl`` and ``plots/``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sbridge.training import distributed
from sbridge.core import io
from sbridge.metrics import samples as metrics
from sbridge.data import images, toy
from sbridge.core.device import resolve_device, stream_seed
from sbridge.core.errors import ConfigError, DataError, RunDirError
from sbridge.solvers.base import SOLVERS, Solver, load
from sbridge.training.trainer import TrainConfig
from sbridge.core.validation import as_data_tensor, check_choice, check_positive_int, check_seed

#: Offsets added to the training seed for the evaluation reference and noise-floor samples, so that neither
#: overlaps the training data.
REFERENCE_SEED_OFFSET = 1_000
FLOOR_SEED_OFFSET = 2_000


@dataclass
class RunSpec:
    """Everything ``sbridge train`` needs; the keys of a ``--config`` YAML file are these field names."""

    method: str = "sgm"
    data: str = "checkerboard"
    prior: str | None = None
    iterations: int = 0
    n_data: int = 20_000
    steps: int = 5_000
    seed: int = 0
    out: str = "runs/latest"
    device: str = "auto"
    batch_size: int = 512
    lr: float = 1e-3
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 1_000
    eval_every: int = 0
    eval_n: int = 2_000
    loss_growth: str = "warn"
    shards: int = 0
    precision: str = "fp32"
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    solver: dict[str, Any] = field(default_factory=dict)
    class_cond: bool = False
    classes: list[int] | None = None
    data_path: str | None = None
    latent: str | None = None
    latent_dim: int = 0
    ae_steps: int = 3_000

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Build and validate a spec: every value is checked (type and range) before any work is done, so a bad
        option never leaves a half-made run folder behind."""
        if not isinstance(d, dict):
            raise ConfigError(f"the configuration must be a mapping of option: value, got {type(d).__name__}.")
        bad_keys = [k for k in d if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"option name {bad_keys[0]!r} is not a name; options are words such as steps.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in the configuration; valid keys are {sorted(known)}.")
        d = {key: _coerce_number(value, _FIELD_TYPES[key]) for key, value in d.items()}
        for key, value in d.items():
            _check_type(key, value, _FIELD_TYPES[key])
        for key in ("data", "out", "method", "device"):
            if d.get(key) == "":
                raise ConfigError(f"option {key} is empty; give it a value (see 'sbridge train --help').")
        spec = cls(**d)
        check_choice(spec.method, tuple(SOLVERS), "method")
        check_seed(spec.seed)
        check_positive_int(spec.eval_n, "eval_n")
        if spec.resume and spec.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; pass only one of them.")
        resolve_device(spec.device)
        TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, lr_schedule=spec.lr_schedule,
                    ema_decay=spec.ema_decay, grad_clip=spec.grad_clip, checkpoint_every=spec.checkpoint_every,
                    eval_every=spec.eval_every, loss_growth=spec.loss_growth, shards=spec.shards,
                    precision=spec.precision)  # validates the training options
        bad_solver_keys = [k for k in spec.solver if not isinstance(k, str)]
        if bad_solver_keys:
            raise ConfigError(f"solver option name {bad_solver_keys[0]!r} is not a name; solver options are words "
                              "such as sigma.")
        for name in (spec.data, spec.prior):
            if name is not None and not is_data_file(name) and name not in images.DATASETS:
                check_choice(name, toy.DATASETS + images.DATASETS, "dataset")
        _check_image_options(spec)
        if spec.prior is not None and not can_transport(SOLVERS[spec.method]):
            bridges = ", ".join(m for m, c in SOLVERS.items() if can_transport(c))
            raise ConfigError(f"method {spec.method!r} generates from noise and takes no --prior; use a bridge "
                              f"method ({bridges}) to connect two data sets.")
        if isinstance(spec.iterations, bool) or not isinstance(spec.iterations, int) or spec.iterations < 0:
            raise ConfigError(f"iterations must be a non-negative integer (0: the solver's default), got "
                              f"{spec.iterations!r}.")
        check_positive_int(spec.n_data, "n_data")
        if not isinstance(spec.solver, dict):
            raise ConfigError(f"'solver' must be a mapping of solver options, got {spec.solver!r}.")
        return spec


#: The accepted value types of each RunSpec field (YAML and --set give untyped values: check them first).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,), "data": (str,), "prior": (str, type(None)), "iterations": (int,), "n_data": (int,),
    "steps": (int,), "seed": (int,), "out": (str,), "device": (str,), "batch_size": (int,), "lr": (int, float),
    "lr_schedule": (str,), "ema_decay": (int, float), "grad_clip": (int, float), "checkpoint_every": (int,),
    "eval_every": (int,), "eval_n": (int,), "loss_growth": (str,), "shards": (int,), "precision": (str,),
    "quiet": (bool,), "resume": (bool,), "overwrite": (bool,), "solver": (dict,), "class_cond": (bool,),
    "classes": (list, type(None)), "data_path": (str, type(None)), "latent": (str, type(None)), "latent_dim": (int,),
    "ae_steps": (int,),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
               list: "a list", type(None): "empty"}


def _check_image_options(spec: RunSpec) -> None:
    """The options of image data (labels, classes, data path) and of latent runs, checked together."""
    image = spec.data in images.DATASETS
    if not image:
        for key, flag in (("class_cond", "--class-cond"), ("classes", "--classes"), ("data_path", "--data-path")):
            if getattr(spec, key):
                raise ConfigError(f"{flag} applies to the image data sets ({', '.join(images.DATASETS)}), not to "
                                  f"{spec.data!r}; drop it.")
    if spec.classes is not None:
        if not spec.classes or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9
                                   for c in spec.classes):
            raise ConfigError(f"classes must be a non-empty list of labels 0-9, got {spec.classes!r}; e.g. --classes "
                              "0,1,2,3,4.")
    if spec.data_path is not None and spec.data != "fashion-mnist":
        raise ConfigError("--data-path locates the Fashion-MNIST files; the digits ship with scikit-learn. Drop it.")
    if isinstance(spec.latent_dim, bool) or spec.latent_dim < 0:
        raise ConfigError(f"latent_dim must be a positive integer (0: no latent space), got {spec.latent_dim!r}.")
    check_positive_int(spec.ae_steps, "ae_steps")
    latent = spec.latent is not None or (spec.latent_dim and spec.method != "autoencoder")
    if spec.latent is not None and spec.latent_dim:
        raise ConfigError("--latent reuses a trained autoencoder (its latent dimension is fixed) and --latent-dim "
                          "trains a new one; pass only one of them.")
    if latent and (spec.prior is not None or spec.method == "autoencoder" or not can_sample(SOLVERS[spec.method])):
        raise ConfigError(f"a latent run needs a generative method (sgm, vsdm, follmer, ...) and no --prior; "
                          f"{spec.method!r} cannot run in the latent space.")
    if (latent or spec.method == "autoencoder") and not image:
        raise ConfigError(f"the autoencoder decodes into [0, 1] (images); use it with --data "
                          f"{' or '.join(images.DATASETS)}, not {spec.data!r}.")
    if spec.class_cond and spec.method == "autoencoder":
        raise ConfigError("the autoencoder is not conditional; drop --class-cond (condition the latent solver).")


def _coerce_number(value: Any, types: tuple[type, ...]) -> Any:
    """YAML reads ``1e-3`` (no dot) as a string and ``1e3`` as a float: turn such values into the number the
    option expects (an integer only when the value is integral)."""
    if isinstance(value, bool) or not isinstance(value, (str, float)) or str in types:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if int in types and float not in types:
        return int(number) if number.is_integer() and abs(number) < 2**63 else value
    return number if float in types and math.isfinite(number) else value


def _check_type(key: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES[t] for t in types if not (t is int and float in types))
        raise ConfigError(f"option {key} must be {wanted}, got {value!r}.")


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


#: Stream of the sampling seeds of processes other than rank 0 in a distributed ``sample``.
SAMPLE_SHARD_STREAM = 15
#: Seed offset of the second data set of a bridge, so that toy data and prior are independent draws.
PRIOR_SEED_OFFSET = 500


def _data_info(name: str, n: int, seed: int, spec: RunSpec | None = None) -> dict[str, Any]:
    """How a run's data is recorded: a toy set by name, size and seed; a file by path and the SHA-256 of its bytes
    (so a resume notices a file whose contents changed); an image set by name, classes and data folder (all its
    training images)."""
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
    if spec.method == "autoencoder" and spec.latent_dim:
        options["latent_dim"] = spec.latent_dim
    latent = spec.latent is not None or bool(spec.latent_dim and spec.method != "autoencoder")
    autoencoder = _latent_autoencoder(spec, tuple(x.shape[1:])) if latent else None
    shape = (autoencoder.latent_dim,) if autoencoder is not None else tuple(x.shape[1:])
    try:
        solver = cls(shape=shape, seed=spec.seed, device=spec.device, **options)
    except TypeError as exc:
        raise ConfigError(_solver_option_error(spec.method, cls, str(exc))) from None
    common = {"steps": spec.steps, "batch_size": spec.batch_size, "lr": spec.lr, "lr_schedule": spec.lr_schedule,
              "out": out, "resume": spec.resume, "overwrite": spec.overwrite, "quiet": spec.quiet,
              "ema_decay": spec.ema_decay, "grad_clip": spec.grad_clip, "checkpoint_every": spec.checkpoint_every,
              "eval_every": spec.eval_every, "loss_growth": spec.loss_growth, "shards": spec.shards,
              "precision": spec.precision, "callbacks": callbacks}
    prior_info = None if spec.prior is None else _data_info(spec.prior, spec.n_data, spec.seed + PRIOR_SEED_OFFSET)
    prior = None if prior_info is None else load_data(prior_info)
    run_info: dict[str, Any] = {"data": data_info, "prior": prior_info}
    if autoencoder is not None:
        from sbridge.solvers.latent import LatentBridge

        model: Any = LatentBridge(autoencoder, solver, train_autoencoder=spec.latent is None)
        run_info["latent_source"] = None if spec.latent is None else str(Path(spec.latent).resolve())
        common.update(autoencoder_steps=spec.ae_steps,
                      autoencoder_options={k: common[k] for k in ("batch_size", "checkpoint_every", "precision",
                                                                  "shards", "loss_growth", "grad_clip")})
    else:
        model = solver
    evaluate = None
    if spec.eval_every and prior is None and can_sample(model):
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
    from sbridge.solvers.latent import load_autoencoder
    from sbridge.solvers.autoencoder import Autoencoder

    if spec.latent is None:
        return Autoencoder(shape=shape, latent_dim=spec.latent_dim, seed=spec.seed, device=spec.device)
    autoencoder = load_autoencoder(io.require_run_dir(spec.latent), device=spec.device)
    if autoencoder.event_shape != shape:
        raise ConfigError(f"the autoencoder in {spec.latent!r} encodes samples of shape {autoencoder.event_shape}, "
                          f"but {spec.data!r} has shape {shape}; pretrain one on data of this shape.")
    return autoencoder


def training_images(spec: dict[str, Any], n: int) -> torch.Tensor:
    """``n`` random training images of an image data spec (seeded)."""
    train_images = load_images(spec)[0]
    gen = torch.Generator().manual_seed(spec["seed"] + REFERENCE_SEED_OFFSET)
    return train_images[torch.randperm(train_images.shape[0], generator=gen)[:n]]


def _image_scorer(spec: dict[str, Any]) -> Any:
    from sbridge.metrics.images import ImageMetrics

    return ImageMetrics(spec["name"], path=spec.get("data_path"))


def frechet_of(scorer: Any, samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Classifier Fréchet distance of ``samples`` to ``reference``."""
    from sbridge.metrics.images import frechet_distance

    return frechet_distance(scorer.features(samples), scorer.features(reference))


def _solver_option_error(method: str, cls: type, message: str) -> str:
    """One sentence for a solver option the solver does not take (from ``--set``, a YAML ``solver:`` entry or a
    shorthand flag such as ``--sigma``)."""
    found = re.search(r"unexpected keyword argument '(\w+)'", message)
    if found is None:
        return f"invalid solver option for {method!r} ({message}); see help(sbridge.{cls.__name__})."
    name = found.group(1)
    if name in RunSpec.__dataclass_fields__:
        return f"{name} is a training option, not a solver option: pass --{name.replace('_', '-')} instead of --set."
    options = sorted({name for klass in cls.__mro__ if "__init__" in vars(klass)
                      for name, p in inspect.signature(vars(klass)["__init__"]).parameters.items()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
                     - {"self", "dim", "shape", "seed", "device"})
    return f"method {method!r} has no option {name!r}; its options are: {', '.join(options)}."


def can_sample(solver: Any) -> bool:
    """Whether a solver (class or instance) draws new samples from noise (``sample``)."""
    return callable(getattr(solver, "sample", None))


def can_transport(solver: Any) -> bool:
    """Whether a solver (class or instance) pushes points between two data sets (``transport``)."""
    return callable(getattr(solver, "transport", None))


def has_likelihood(solver: Any) -> bool:
    """Whether a solver (class or instance) gives exact log-likelihoods (``log_prob``)."""
    return callable(getattr(solver, "log_prob", None))


def has_elbo(solver: Any) -> bool:
    """Whether a solver (class or instance) defines a path-space bound on its likelihood (``elbo``)."""
    return callable(getattr(solver, "elbo", None))


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
        gen = torch.Generator().manual_seed(spec["seed"] + FLOOR_SEED_OFFSET)
        order = torch.randperm(held_out.shape[0], generator=gen)
        n = min(n, held_out.shape[0] // 2)
        return held_out[order[:n]], held_out[order[held_out.shape[0] - n:]]
    if "path" not in spec:
        return (load_data(spec, n, REFERENCE_SEED_OFFSET), load_data(spec, n, FLOOR_SEED_OFFSET))
    data = load_data(spec)
    n = min(n, data.shape[0] // 2)
    if n < 2:
        raise DataError(f"data file {spec['path']!r} has too few rows to evaluate against; it needs at least 4.")
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(spec["seed"] + FLOOR_SEED_OFFSET))
    return data[order[:n]], data[order[n:2 * n]]


def _generate(solver: Any, run_dir: Path | None, n: int, steps: int | None, ode: bool, method: str, seed: int | None,
              return_path: bool = False, grid: str = "uniform", rows: slice | None = None, label: int | None = None,
              guidance: float = 0.0) -> torch.Tensor:
    """Model samples of the data end (generative runs) or of the second data set: fresh points of the first data
    set transported forward (bridges between two data sets). ``rows``: only this part of the ``n`` (one process's
    share of a distributed draw). Class-conditional runs draw the labels ``0, 1, ..., K - 1, 0, ...`` in turn (or
    ``label`` for all), with classifier-free guidance weight ``guidance``."""
    kwargs: dict[str, Any] = {"steps": steps} if steps is not None else {}
    if not can_sample(solver) and not can_transport(solver):
        raise ConfigError(f"a {solver.method} run neither samples nor transports; use it as the autoencoder of a "
                          "latent run (sbridge train --latent RUN) or evaluate its reconstructions.")
    inner = getattr(solver, "solver", solver)  # a latent run samples with its latent solver
    if grid != "uniform":
        if "grid" not in inspect.signature(inner.sample).parameters:
            raise ConfigError(f"{inner.method} samples on its own time grid; drop --grid {grid}.")
        kwargs["grid"] = grid
    prior = None if run_dir is None else prior_spec(run_dir)
    if prior is not None and not can_transport(solver):
        raise RunDirError(f"{str(run_dir / io.CONFIG_FILE)!r} records a second data set, but {solver.method} does not "
                          "transport between data sets; restore the file or retrain the run.")
    cond_spec = solver.cond_spec
    if (label is not None or guidance) and (cond_spec is None or cond_spec["kind"] != "label"):
        raise ConfigError("--label and --guidance apply to class-conditional runs (trained with --class-cond).")
    if guidance:
        if "guidance" not in inspect.signature(inner.sample).parameters:
            raise ConfigError(f"{inner.method} has no classifier-free guidance; drop --guidance.")
        kwargs["guidance"] = guidance
    if prior is None:
        count = n if rows is None else len(range(n)[rows])
        if cond_spec is not None and cond_spec["kind"] == "label":
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
    # distributed: each process draws a contiguous share with its own seed; the shares are gathered in rank order
    n = check_positive_int(n, "n")
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    base = check_seed(seed) if seed is not None else solver.seed + 1
    local_seed = base if ctx.rank == 0 else stream_seed(base, SAMPLE_SHARD_STREAM, ctx.rank)
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
    if not can_sample(model) and not can_transport(model):
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
        if model.cond_spec is not None and model.cond_spec["kind"] == "label":
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
    discrete value (:func:`sbridge.numerics.likelihood.nats_to_bits_per_dim`). Solvers with a path-space bound add it under
    ``"bound"`` (the negative ELBO, an upper bound on the reverse SDE's NLL; math.md §A.2), on the same points."""
    from sbridge.numerics.likelihood import uniform_dequantize

    if not has_likelihood(solver):
        inner = getattr(solver, "solver", None)
        what = f"this latent run's solver ({inner.method})" if inner is not None else solver.method
        raise ConfigError(f"{what} has no likelihood; drop --nll.")
    x = x.to(solver.device)
    latent = hasattr(solver, "likelihood_dim")
    d = solver.likelihood_dim if latent else solver.dim
    if dequantize is not None and latent:
        raise ConfigError("a latent run's likelihood is a density of the latent codes, which are not quantised; "
                          "drop --dequantize.")
    if dequantize is not None:
        x = uniform_dequantize(x, dequantize, generator=torch.Generator(device=x.device).manual_seed(seed))
    logp = solver.log_prob(x, seed=seed).double().cpu()
    result = {"n": int(x.shape[0]), **_per_dim(logp, d, dequantize), "dequantized": dequantize,
              "nfe": int(solver.last_nfe or 0), "space": "latent" if latent else "data"}
    if has_elbo(solver):  # the bound beside the exact value: -ELBO >= NLL of the SDE sampler
        result["bound"] = _per_dim(solver.elbo(x, seed=seed).double().cpu(), d, dequantize)
    return result


def _per_dim(logp: torch.Tensor, d: int, dequantize: int | None) -> dict[str, float]:
    """``-logp / d`` in nats (mean and standard error over points) and bits per dimension."""
    from sbridge.numerics.likelihood import nats_to_bits_per_dim

    nats = -logp / d
    return {"nats_per_dim": float(nats.mean()), "se": float(nats.std() / math.sqrt(max(nats.shape[0] - 1, 1))),
            "bits_per_dim": float(nats_to_bits_per_dim(logp, d, dequantization_levels=dequantize).mean())}


def plot(run_dir: str | Path, *, n: int = 4_000, steps: int | None = None, ode: bool = False,
         device: str = "auto") -> list[Path]:
    """Write ``plots/samples.png`` (from the sampler chosen by ``ode``), ``plots/trajectories.png`` (always the
    deterministic probability-flow ODE, whose paths are readable) and ``plots/loss.png`` into the run directory."""
    with warnings.catch_warnings():  # matplotlib's notes on empty or degenerate panels are not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return _plot(run_dir, n=n, steps=steps, ode=ode, device=device)


def _plot(run_dir: str | Path, *, n: int, steps: int | None, ode: bool, device: str) -> list[Path]:
    from sbridge.runs import plots

    path = io.require_run_dir(run_dir)
    solver = load(path, device=device)
    if is_image_spec(_checked_data_spec(path, "data")) or not (can_sample(solver) or can_transport(solver)):
        return _plot_images(solver, path, steps, ode)
    if can_transport(solver):
        return _plot_bridge(solver, path, n, steps)
    spec = data_spec(path)
    kwargs = {"steps": steps} if steps is not None else {}
    samples = solver.sample(n, ode=ode, **kwargs)
    paths = solver.sample(256, ode=True, return_path=True, **kwargs).cpu()
    data, _ = _reference_and_floor(spec, n)
    kind = "probability-flow ODE" if ode else "reverse SDE"
    out = path / "plots"
    rows = io.read_jsonl(path / io.METRICS_FILE)
    written = [
        plots.plot_samples(samples.cpu(), data, out / "samples.png",
                           title=f"{solver.method.upper()} on {spec['name']} ({kind}, {paths.shape[0] - 1} steps)"),
        plots.plot_trajectories(paths, out / "trajectories.png",
                                title="probability-flow ODE trajectories, prior (grey) to samples (orange)"),
        plots.plot_loss(rows, out / "loss.png"),
    ]
    if any("A_spectrum" in r for r in rows):  # a run that learns its forward process (VSDM)
        written.append(plots.plot_variational(rows, out / "variational.png"))
        forward = solver.process.simulate(data[:256].to(solver.device), steps or 100, seed=solver.seed + 3)
        backward = solver.sample(256, return_path=True, **kwargs)
        written.append(plots.plot_forward_backward(forward.cpu(), backward.cpu(), out / "forward_backward.png",
                                                   title=f"{solver.method.upper()}: the learned forward process "
                                                         "and sampling"))
    return written


def _plot_bridge(solver: Solver, path: Path, n: int, steps: int | None) -> list[Path]:
    """Bridge runs: samples beside the target, SDE trajectories, transport lines (two data sets) and the
    per-iteration marginal errors."""
    from sbridge.runs import plots

    prior = prior_spec(path)
    target_spec = prior if prior is not None else data_spec(path)
    target, _ = _reference_and_floor(target_spec, n)
    paths = _generate(solver, path, min(n, target.shape[0]), steps, False, "heun", None, return_path=True).cpu()
    direction = "transported" if prior is not None else "sampled"
    out = path / "plots"
    rows = io.read_jsonl(path / io.METRICS_FILE)
    written = [
        plots.plot_samples(paths[-1], target, out / "samples.png",
                           title=f"{solver.method.upper()}: {direction} points vs {target_spec['name']}"),
        plots.plot_trajectories(paths[:, :256], out / "trajectories.png", title=f"{solver.method.upper()} SDE paths"),
        plots.plot_iterations(rows, out / "iterations.png"),
    ]
    if any("prior_loss" in r for r in rows):  # a run whose objective splits into prior loss + drift matching
        written.append(plots.plot_objective_terms(rows, out / "objective.png"))
    if prior is not None:
        written.append(plots.plot_transport(paths[0], paths[-1], target, out / "transport.png",
                                            title=f"{data_spec(path)['name']} -> {target_spec['name']}"))
    return written


def _plot_images(model: Any, path: Path, steps: int | None, ode: bool) -> list[Path]:
    """Image runs: a grid of samples beside real images (one class per row for class-conditional runs), the sampling
    trajectory of a few images, the loss; with an autoencoder (its own run or a latent run's stage) also
    reconstructions of held-out images and decoded interpolations between pairs of codes."""
    from sbridge.runs import plots

    out = path / "plots"
    spec = data_spec(path)
    held_out, _ = _reference_and_floor(spec, 80)
    written = []
    autoencoder = model if not can_sample(model) else getattr(model, "autoencoder", None)
    if can_sample(model):
        kwargs = {"steps": steps} if steps is not None else {}
        label_rows = model.cond_spec is not None and model.cond_spec["kind"] == "label"
        trained = torch.tensor(trained_classes(model, path)) if label_rows else None
        count = 8 * len(trained) if label_rows else 64
        cond = {"cond": trained.repeat_interleave(8)} if label_rows else {}
        inner = getattr(model, "solver", model)
        kind = "probability-flow ODE" if ode else "SDE"
        samples = model.sample(count, ode=ode, **kwargs, **cond).cpu()
        by_class = ", one class per row" if label_rows else ""
        name = f"latent {inner.method.upper()} (d* = {model.latent_dim})" if inner is not model else \
            model.method.upper()
        written.append(plots.plot_image_grids([("held-out data", held_out[:count]), ("samples", samples)],
                                              out / "samples.png", title=f"{name} on {spec['name']} ({kind}"
                                                                         f"{by_class})"))
        sub = {"cond": drawn_labels(model, path, 8)} if label_rows else {}
        paths = model.sample(8, return_path=True, **kwargs, **sub).cpu()  # (steps + 1 [+ 1], 8, C, H, W)
        cols = torch.linspace(0, paths.shape[0] - 1, 9).round().long()
        written.append(plots.plot_image_rows(paths[cols].transpose(0, 1), out / "trajectories.png",
                                             column_labels=[f"{int(c)}" for c in cols],
                                             title=f"sampling trajectories (SDE; column = state index, "
                                                   f"{paths.shape[0] - 1} steps)"))
        rows = io.read_jsonl(_metrics_file(path, model))
        written.append(plots.plot_loss(rows, out / "loss.png"))
    if autoencoder is not None:
        recon = autoencoder.reconstruct(held_out[:16]).cpu()
        written.append(plots.plot_image_grids([("held-out images", held_out[:16]), ("reconstructions", recon)],
                                              out / "reconstructions.png", nrow=4,
                                              title=f"autoencoder, d* = {autoencoder.latent_dim}"))
        codes = autoencoder.encode(held_out[:12])
        weights = torch.linspace(0, 1, 9, device=codes.device)[:, None, None]
        lines = (1 - weights) * codes[0::2][None] + weights * codes[1::2][None]  # (9, 6, d*)
        decoded = autoencoder.decode(lines.reshape(-1, autoencoder.latent_dim)).cpu()
        decoded = decoded.reshape(9, 6, *autoencoder.event_shape).transpose(0, 1)
        written.append(plots.plot_image_rows(decoded, out / "interpolations.png",
                                             column_labels=[f"{float(w):.2g}" for w in weights.flatten()],
                                             title="decoded straight lines between the codes of two held-out images"))
        if not can_sample(model):
            written.append(plots.plot_loss(io.read_jsonl(path / io.METRICS_FILE), out / "loss.png"))
    return written


def _metrics_file(path: Path, model: Any) -> Path:
    """The training log of a run: a latent run's is its latent stage's."""
    from sbridge.solvers.latent import LATENT_DIR

    return path / LATENT_DIR / io.METRICS_FILE if getattr(model, "method", "") == "latent" else path / io.METRICS_FILE
