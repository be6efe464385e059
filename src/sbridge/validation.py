"""Checks on user-supplied tensors and values, shared by every solver, the data module and the CLI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sbridge.errors import ConfigError, DataError


def as_data_tensor(x: Any, *, name: str = "data", dim: int | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``x`` as a finite 2-D float tensor of shape ``(n, d)``, or raise :class:`DataError`.

    Accepts torch tensors, numpy arrays and nested sequences. ``dim`` checks the number of columns.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} could not be read as a numeric array ({exc}); "
                            "pass a float array of shape (n, d).") from None
    if t.ndim != 2:
        raise DataError(f"{name} has shape {tuple(t.shape)} but must be 2-D (n, d); "
                        "reshape it to (n_samples, n_features).")
    if t.shape[0] == 0:
        raise DataError(f"{name} is empty; pass at least one sample.")
    if dim is not None and t.shape[1] != dim:
        raise DataError(f"{name} has {t.shape[1]} features but the model expects dim={dim}; "
                        f"pass data of shape (n, {dim}).")
    if not t.is_floating_point():
        t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise DataError(f"{name} contains NaN or Inf in {bad} row(s); remove or impute them before training.")
    return t.to(dtype)


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
