"""Checks on user-supplied tensors and values, shared by every solver, the data module and the CLI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sbridge.core.errors import ConfigError, DataError


def as_data_tensor(x: Any, *, name: str = "data", dim: int | None = None, event_shape: tuple[int, ...] | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``x`` as a finite float tensor of shape ``(n, *event_shape)``, or raise :class:`DataError`.

    Accepts torch tensors, numpy arrays and nested sequences of any rank >= 2: vectors ``(n, d)``, images
    ``(n, C, H, W)``, sequences ``(n, L, d)``. ``dim`` (vectors) or ``event_shape`` checks the shape of one sample.
    """
    if (isinstance(x, torch.Tensor) and x.is_complex()) or (isinstance(x, np.ndarray) and np.iscomplexobj(x)):
        raise DataError(f"{name} holds complex numbers; pass real values (e.g. stack the real and imaginary parts "
                        "as separate features).")
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} could not be read as a numeric array ({exc}); "
                            "pass a float array of shape (n, d) or (n, *event_shape).") from None
    if event_shape is None and dim is not None:
        event_shape = (dim,)
    if t.ndim < 2:
        raise DataError(f"{name} has shape {tuple(t.shape)} but needs a batch dimension and at least one more, "
                        "(n, d) or (n, *event_shape); reshape it, e.g. x.reshape(-1, 1) for scalars.")
    if t.shape[0] == 0:
        raise DataError(f"{name} is empty; pass at least one sample.")
    if any(s == 0 for s in t.shape[1:]):
        raise DataError(f"{name} has samples of shape {tuple(t.shape[1:])}, which hold no values; pass data of "
                        "shape (n, d) with d >= 1.")
    if event_shape is not None and tuple(t.shape[1:]) != tuple(event_shape):
        if len(event_shape) == 1 and t.ndim == 2:
            raise DataError(f"{name} has {t.shape[1]} features but the model expects dim={event_shape[0]}; "
                            f"pass data of shape (n, {event_shape[0]}).")
        raise DataError(f"{name} has samples of shape {tuple(t.shape[1:])} but the model expects "
                        f"{tuple(event_shape)}; pass data of shape (n, {', '.join(map(str, event_shape))}).")
    if not t.is_floating_point():
        t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).sum())
        raise DataError(f"{name} contains NaN or Inf in {bad} sample(s); remove or impute them before training.")
    out = t.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise DataError(f"{name} has values beyond the range of {str(dtype).removeprefix('torch.')} (largest "
                        f"|x| = {float(t.abs().max()):.3g}); rescale the data, e.g. standardise each feature.")
    return out


def check_event_shape(dim: Any, shape: Any) -> tuple[int, ...]:
    """The shape of one sample from ``dim`` (vectors) or ``shape`` (any rank); exactly one must be given."""
    if (dim is None) == (shape is None):
        raise ConfigError("give the shape of one sample as dim=d (vectors) or shape=(C, H, W) etc., not both.")
    if shape is None:
        return (check_positive_int(dim, "dim"),)
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ConfigError(f"shape must be a tuple of positive integers, got {shape!r}.") from None
    if not dims:
        raise ConfigError("shape must have at least one dimension, e.g. (2,) or (1, 28, 28).")
    return tuple(check_positive_int(s, "each entry of shape") for s in dims)


def as_condition(c: Any, n: int, spec: dict[str, Any]) -> torch.Tensor:
    """Return conditions for ``n`` samples as a tensor: ``(n,)`` int64 labels in ``[0, classes)`` (``-1``: none) or
    ``(n, dim)`` float32 vectors (``NaN`` rows: none), or raise :class:`DataError`."""
    t = c.detach() if isinstance(c, torch.Tensor) else torch.as_tensor(np.asarray(c))
    if t.shape[:1] != (n,):
        raise DataError(f"cond has {t.shape[0] if t.ndim else 0} entries but there are {n} samples; pass one "
                        "condition per sample.")
    if spec["kind"] == "label":
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise DataError("label conditions must be integers; pass class indices, not floats.")
        t = t.reshape(n).long()
        if bool(((t < -1) | (t >= spec["classes"])).any()):
            raise DataError(f"labels must lie in [0, {spec['classes']}) (or -1 for none); got values from "
                            f"{int(t.min())} to {int(t.max())}.")
        return t
    t = t.reshape(n, -1).to(torch.float32)
    if t.shape[1] != spec["dim"]:
        raise DataError(f"condition vectors have {t.shape[1]} entries but the model expects {spec['dim']}.")
    return t


def as_float64(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` (any shape) as a finite float64 CPU tensor, detached, or raise :class:`DataError`."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} could not be read as a numeric array ({exc}); pass a float array.") from None
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} contains NaN or Inf; pass finite values.")
    return t


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as a positive int or raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_nonnegative_int(value: Any, name: str) -> int:
    """Return ``value`` as an int >= 0 or raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


#: Seeds are stored in 64-bit generators; the run's derived seeds add small offsets, so this is the largest seed.
MAX_SEED = 2**62


def check_seed(value: Any, name: str = "seed", maximum: int = MAX_SEED) -> int:
    """Return ``value`` as an int in ``[0, maximum]`` (user seeds: ``2^62``, leaving room for the offsets of derived
    streams below the ``2^64`` a torch generator takes) or raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= maximum:
        bound = {MAX_SEED: "2^62", 2**64 - 1: "2^64 - 1"}.get(maximum, str(maximum))
        raise ConfigError(f"{name} must be an integer from 0 to {bound}, got {value!r}.")
    return int(value)


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a positive finite float or raise :class:`ConfigError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}.") from None
    if isinstance(value, bool) or not np.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}.")
    return v


def check_nonnegative_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float ``>= 0`` or raise :class:`ConfigError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not np.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}.")
    return v


def check_choice(value: Any, choices: list[str] | tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``choices`` or raise :class:`ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}.")
    return value


def check_probability(value: Any, name: str) -> float:
    """Return ``value`` as a float in ``[0, 1)`` or raise :class:`ConfigError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not 0.0 <= v < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}.")
    return v


# ============================================================================================ request sizes
#: Bytes of one Python float in a list (the float object and its pointer): the cost of a time grid per step.
_LIST_FLOAT_BYTES = 32


def physical_memory() -> int | None:
    """Total physical memory of this machine in bytes, or ``None`` where the OS does not say."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Refuse, before allocating anything, a request whose lower-bound memory ``nbytes`` exceeds this machine's
    physical memory: one sentence with both figures and the ``fix``."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise ConfigError(f"{what} needs at least {_gib(nbytes)} of memory but this machine has {_gib(total)}; {fix}.")


def check_sample_request(n: int, steps: int, event_shape: tuple[int, ...], return_path: bool = False) -> None:
    """Memory lower bound of drawing ``n`` samples in ``steps`` steps: the state, its noise and drift (and the whole
    path with ``return_path``), float32, plus the time grid."""
    numel = int(torch.Size(event_shape).numel())
    states = (steps + 1 if return_path else 0) + 3
    check_memory(n * numel * 4 * states + (steps + 1) * _LIST_FLOAT_BYTES,
                 f"sampling {n:,} points of shape {tuple(event_shape)} in {steps:,} steps",
                 "ask for fewer points (--n) or steps (--steps), or draw them in several calls")


def check_batch_memory(batch_size: int, event_shape: tuple[int, ...]) -> None:
    """Memory lower bound of one training minibatch: the batch, its noise, the noised batch and the target."""
    numel = int(torch.Size(event_shape).numel())
    check_memory(batch_size * numel * 4 * 4, f"a minibatch of {batch_size:,} samples of shape {tuple(event_shape)}",
                 "lower --batch-size")
