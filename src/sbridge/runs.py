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

from sbridge import distributed, io, metrics
from sbridge.data import toy
from sbridge.device import resolve_device, stream_seed
from sbridge.errors import ConfigError, DataError, RunDirError
from sbridge.solvers.base import SOLVERS, Solver, load
from sbridge.training import TrainConfig
from sbridge.validation import as_data_tensor, check_choice, check_positive_int, check_seed

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
            if name is not None and not is_data_file(name):
                check_choice(name, toy.DATASETS, "dataset")
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
    "quiet": (bool,), "resume": (bool,), "overwrite": (bool,), "solver": (dict,),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
               type(None): "empty"}


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


def load_data(spec: dict[str, Any], n: int | None = None, seed_offset: int = 0) -> torch.Tensor:
    """The data a run was trained on (``seed_offset`` 0) or fresh draws from the same law (toy sets only)."""
    if "path" in spec:
        return read_data_file(spec["path"])
    return toy.sample(spec["name"], n or spec["n"], seed=spec["seed"] + seed_offset)


#: Stream of the sampling seeds of processes other than rank 0 in a distributed ``sample``.
SAMPLE_SHARD_STREAM = 15
#: Seed offset of the second data set of a bridge, so that toy data and prior are independent draws.
PRIOR_SEED_OFFSET = 500


def _data_info(name: str, n: int, seed: int) -> dict[str, Any]:
    """How a run's data is recorded: a toy set by name, size and seed; a file by path and the SHA-256 of its bytes
    (so a resume notices a file whose contents changed)."""
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


def train(spec: RunSpec, callbacks: tuple = ()) -> Solver:
    """Build the solver named by ``spec``, train it on its toy data set and write the run directory."""
    out = Path(spec.out)
    data_info = _data_info(spec.data, spec.n_data, spec.seed)
    x = load_data(data_info)
    cls = SOLVERS[spec.method]
    options = dict(spec.solver)
    if spec.iterations:
        if "iterations" not in cls.fit_options:
            raise ConfigError(f"method {spec.method!r} has no outer iterations; drop --iterations.")
        options["iterations"] = spec.iterations
    try:
        solver = cls(shape=tuple(x.shape[1:]), seed=spec.seed, device=spec.device, **options)
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
    evaluate = None
    if spec.eval_every and prior is None and can_sample(solver):
        reference, _ = _reference_and_floor(data_info, spec.eval_n)

        def evaluate(step: int) -> dict[str, Any]:
            samples = solver.sample(spec.eval_n)
            return {"energy": {"value": metrics.energy_distance(samples.flatten(1), reference.flatten(1))}}

    solver.fit(x, prior=prior, evaluate=evaluate, run_info=run_info, **common)
    return solver


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
    training, so the comparison measures fit, not generalisation.
    """
    if "path" not in spec:
        return (load_data(spec, n, REFERENCE_SEED_OFFSET), load_data(spec, n, FLOOR_SEED_OFFSET))
    data = load_data(spec)
    n = min(n, data.shape[0] // 2)
    if n < 2:
        raise DataError(f"data file {spec['path']!r} has too few rows to evaluate against; it needs at least 4.")
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(spec["seed"] + FLOOR_SEED_OFFSET))
    return data[order[:n]], data[order[n:2 * n]]


def _generate(solver: Solver, run_dir: Path, n: int, steps: int | None, ode: bool, method: str, seed: int | None,
              return_path: bool = False, grid: str = "uniform", rows: slice | None = None) -> torch.Tensor:
    """Model samples of the data end (generative runs) or of the second data set: fresh points of the first data
    set transported forward (bridges between two data sets). ``rows``: only this part of the ``n`` (one process's
    share of a distributed draw)."""
    kwargs: dict[str, Any] = {"steps": steps} if steps is not None else {}
    if grid != "uniform":
        if "grid" not in inspect.signature(solver.sample).parameters:
            raise ConfigError(f"{solver.method} samples on its own time grid; drop --grid {grid}.")
        kwargs["grid"] = grid
    prior = prior_spec(run_dir)
    if prior is not None and not can_transport(solver):
        raise RunDirError(f"{str(run_dir / io.CONFIG_FILE)!r} records a second data set, but {solver.method} does not "
                          "transport between data sets; restore the file or retrain the run.")
    if prior is None:
        count = n if rows is None else len(range(n)[rows])
        return solver.sample(count, ode=ode, method=method, seed=seed, return_path=return_path, **kwargs)
    source, _ = _reference_and_floor(data_spec(run_dir), n)
    if rows is not None:
        source = source[rows]
    return solver.transport(source, seed=seed, return_path=return_path, ode=ode, method=method, **kwargs)


def sample(run_dir: str | Path, n: int, *, steps: int | None = None, ode: bool = False, method: str = "heun",
           grid: str = "uniform", seed: int | None = None, device: str = "auto",
           return_path: bool = False) -> tuple[torch.Tensor, int]:
    """Load a run and draw ``n`` samples (see :func:`_generate`); returns ``(samples, nfe)``."""
    path = io.require_run_dir(run_dir)
    solver = load(path, device=device)
    ctx = distributed.context()
    if not ctx.active or return_path:
        x = _generate(solver, path, n, steps, ode, method, seed, return_path, grid)
        return x.cpu(), int(solver.last_nfe or 0)
    # distributed: each process draws a contiguous share with its own seed; the shares are gathered in rank order
    n = check_positive_int(n, "n")
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    base = check_seed(seed) if seed is not None else solver.seed + 1
    local_seed = base if ctx.rank == 0 else stream_seed(base, SAMPLE_SHARD_STREAM, ctx.rank)
    x = _generate(solver, path, n, steps, ode, method, local_seed, False, grid, rows=slice(lo, hi))
    parts = distributed.all_gather_objects(x.cpu(), ctx)
    return torch.cat(parts), int(solver.last_nfe or 0)


def evaluate(run_dir: str | Path, n: int = 5_000, *, steps: int | None = None, ode: bool = False,
             method: str = "heun", grid: str = "uniform", seed: int | None = None, device: str = "auto",
             metric_names: list[str] | None = None, nll: bool = False, nll_n: int = 1_000,
             dequantize: int | None = None) -> dict[str, Any]:
    """Score ``n`` model samples against fresh data, each metric beside its noise floor.

    For a bridge between two data sets the samples are fresh points of the first set transported forward, scored
    against fresh points of the second; the result also holds the mean squared displacement of the transport
    beside that of a random pairing (an optimal-transport-like bridge moves points much less).

    ``nll=True`` adds the exact negative log-likelihood of ``nll_n`` fresh data points
    (:func:`negative_log_likelihood`).
    """
    path = io.require_run_dir(run_dir)
    prior = prior_spec(path)
    target = prior if prior is not None else data_spec(path)
    if nll and prior is not None:
        raise ConfigError("--nll needs a generative run (data to noise); a bridge between two data sets has no "
                          "likelihood of its own.")
    samples, nfe = sample(path, n, steps=steps, ode=ode, method=method, grid=grid, seed=seed, device=device)
    reference, floor = _reference_and_floor(target, n)
    samples = samples[: reference.shape[0]]
    result = {"run": str(path), "data": target["name"], "n": int(samples.shape[0]), "steps": steps, "ode": ode,
              "sampler": method if ode else "euler_maruyama", "nfe": nfe,
              "metrics": metrics.evaluate(samples, reference, floor, metrics=metric_names)}
    if prior is not None:
        source, _ = _reference_and_floor(data_spec(path), n)
        source = source[: samples.shape[0]]
        result["source"] = data_spec(path)["name"]
        result["displacement"] = {"transport": float(((samples - source) ** 2).sum(1).mean()),
                                  "random_pairing": float(((reference[: source.shape[0]] - source) ** 2).sum(1).mean())}
    if nll:
        points, _ = _reference_and_floor(target, check_positive_int(nll_n, "nll_n"))
        result["nll"] = negative_log_likelihood(load(path, device=device), points, dequantize=dequantize)
    return result


def negative_log_likelihood(solver: Solver, x: torch.Tensor, *, dequantize: int | None = None,
                            seed: int = 0) -> dict[str, Any]:
    """Exact NLL of the points ``x`` under ``solver.log_prob`` (probability-flow ODE, dopri5 at 1e-5): the mean in
    nats per dimension with its standard error over points, and in bits per dimension. With ``dequantize = K`` the
    points are images in ``[0, 1]`` with ``K`` levels: they are uniformly dequantised first and bits/dim is the
    discrete value (:func:`sbridge.likelihood.nats_to_bits_per_dim`). Solvers with a path-space bound add it under
    ``"bound"`` (the negative ELBO, an upper bound on the reverse SDE's NLL; math.md §A.2), on the same points."""
    from sbridge.likelihood import uniform_dequantize

    if not has_likelihood(solver):
        raise ConfigError(f"{solver.method} has no likelihood; drop --nll.")
    x = x.to(solver.device)
    if dequantize is not None:
        x = uniform_dequantize(x, dequantize, generator=torch.Generator(device=x.device).manual_seed(seed))
    logp = solver.log_prob(x, seed=seed).double().cpu()
    result = {"n": int(x.shape[0]), **_per_dim(logp, solver.dim, dequantize), "dequantized": dequantize,
              "nfe": int(solver.last_nfe or 0)}
    if has_elbo(solver):  # the bound beside the exact value: -ELBO >= NLL of the SDE sampler
        result["bound"] = _per_dim(solver.elbo(x, seed=seed).double().cpu(), solver.dim, dequantize)
    return result


def _per_dim(logp: torch.Tensor, d: int, dequantize: int | None) -> dict[str, float]:
    """``-logp / d`` in nats (mean and standard error over points) and bits per dimension."""
    from sbridge.likelihood import nats_to_bits_per_dim

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
    from sbridge import plot as plots

    path = io.require_run_dir(run_dir)
    solver = load(path, device=device)
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
    from sbridge import plot as plots

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
