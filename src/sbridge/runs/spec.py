"""What ``sbridge train`` is asked to do: the run specification (CLI flags or a YAML file), checked whole before any
work starts."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from sbridge.core.device import resolve_device
from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_positive_int, check_seed
from sbridge.data import images, toy
from sbridge.runs.datasets import is_data_file
from sbridge.solvers.base import SOLVERS
from sbridge.training.trainer import TrainConfig


@dataclass
class RunSpec(TrainConfig):
    """Everything ``sbridge train`` needs; the keys of a ``--config`` YAML file are these field names: the training
    options of :class:`~sbridge.training.TrainConfig` (inherited, so each is written once and validated by it) and
    the run's own below."""

    method: str = "sgm"
    data: str = "checkerboard"
    prior: str | None = None
    iterations: int = 0
    n_data: int = 20_000
    seed: int = 0
    out: str = "runs/latest"
    device: str = "auto"
    eval_n: int = 2_000
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
        method = d.get("method", cls.method)
        if isinstance(method, str) and method in SOLVERS:  # the method's own training defaults, for options not given
            d = {**SOLVERS[method].train_defaults, **d}
        for key, value in d.items():
            _check_type(key, value, _FIELD_TYPES[key])
        for key in ("data", "out", "method", "device"):
            if d.get(key) == "":
                raise ConfigError(f"option {key} is empty; give it a value (see 'sbridge train --help').")
        spec = cls(**d)  # TrainConfig validates the training options
        check_choice(spec.method, tuple(SOLVERS), "method")
        check_seed(spec.seed)
        check_positive_int(spec.eval_n, "eval_n")
        if spec.resume and spec.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; pass only one of them.")
        resolve_device(spec.device)
        bad_solver_keys = [k for k in spec.solver if not isinstance(k, str)]
        if bad_solver_keys:
            raise ConfigError(f"solver option name {bad_solver_keys[0]!r} is not a name; solver options are words "
                              "such as sigma.")
        for name in (spec.data, spec.prior):
            if name is not None and not is_data_file(name) and name not in images.DATASETS:
                check_choice(name, toy.DATASETS + images.DATASETS, "dataset")
        _check_image_options(spec)
        if spec.prior is not None and not SOLVERS[spec.method].declared.prior_data:
            bridges = ", ".join(m for m, c in SOLVERS.items() if c.declared.prior_data)
            raise ConfigError(f"method {spec.method!r} generates from noise and takes no --prior; use a bridge "
                              f"method ({bridges}) to connect two data sets.")
        if isinstance(spec.iterations, bool) or not isinstance(spec.iterations, int) or spec.iterations < 0:
            raise ConfigError(f"iterations must be a non-negative integer (0: the solver's default), got "
                              f"{spec.iterations!r}.")
        check_positive_int(spec.n_data, "n_data")
        if not isinstance(spec.solver, dict):
            raise ConfigError(f"'solver' must be a mapping of solver options, got {spec.solver!r}.")
        return spec

    def train_options(self) -> dict[str, Any]:
        """The training options, as ``fit`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(TrainConfig)}


#: The value types an annotation accepts (YAML and --set give untyped values: they are checked first); a float
#: option takes an integer too.
_ANNOTATION_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "str | None": (str, type(None)),
    "dict[str, Any]": (dict,), "list[int] | None": (list, type(None)),
}
#: The accepted value types of each RunSpec field, read from the fields' annotations.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {f.name: _ANNOTATION_TYPES[str(f.type)] for f in fields(RunSpec)}


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
    declared = SOLVERS[spec.method].declared
    latent = spec.latent is not None or (spec.latent_dim and not declared.codec)
    if spec.latent is not None and spec.latent_dim:
        raise ConfigError("--latent reuses a trained autoencoder (its latent dimension is fixed) and --latent-dim "
                          "trains a new one; pass only one of them.")
    if latent and (spec.prior is not None or not declared.latent_solver):
        raise ConfigError(f"a latent run needs a generative method (sgm, vsdm, follmer, ...) and no --prior; "
                          f"{spec.method!r} cannot run in the latent space.")
    if (latent or declared.codec) and not image:
        raise ConfigError(f"the autoencoder decodes into [0, 1] (images); use it with --data "
                          f"{' or '.join(images.DATASETS)}, not {spec.data!r}.")
    if spec.class_cond and declared.codec:
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


def _solver_option_error(method: str, cls: type, error: TypeError) -> str:
    """One sentence for a solver option the solver does not take (from ``--set``, a YAML ``solver:`` entry or a
    shorthand flag such as ``--sigma``): an :class:`UnknownOptionError` or Python's own ``TypeError``."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    name = getattr(error, "name", None) or (found.group(1) if found else None)
    if name is None:
        return f"invalid solver option for {method!r} ({error}); see help(sbridge.{cls.__name__})."
    if name in RunSpec.__dataclass_fields__:
        return f"{name} is a training option, not a solver option: pass --{name.replace('_', '-')} instead of --set."
    options = sorted({name for klass in cls.__mro__ if "__init__" in vars(klass)
                      for name, p in inspect.signature(vars(klass)["__init__"]).parameters.items()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
                     - {"self", "dim", "shape", "seed", "device"})
    return f"method {method!r} has no option {name!r}; its options are: {', '.join(options)}."
