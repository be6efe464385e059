"""Checks on user-supplied tensors and values, shared by every solver, the data module and the CLI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sbridge.errors import ConfigError, DataError


def as_data_tensor(x: Any, *, name: str = "data", dim: int | None = None, event_shape: tuple[int, ...] | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``x`` as a finite float tensor of shape ``(n, *event_shape)``, or raise :class:`DataError`.

    Accepts torch tensors, numpy arrays and nested sequences of any rank >= 2: vectors ``(n, d)``, images
    ``(n, C, H, W)``, sequences ``(n, L, d)``. ``dim`` (vectors) or ``event_shape`` checks the shape of one sample.
    """
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
    return t.to(dtype)


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


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a positive finite float or raise :class:`ConfigError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}.") from None
    if isinstance(value, bool) or not np.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}.")
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
