"""Device selection: explicit, with ``auto`` meaning CUDA when present, else CPU."""

from __future__ import annotations

import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_seed


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` if available else ``cpu``; otherwise ``cpu``, ``cuda`` or ``cuda:N``, checked
    to exist (other backends such as ``mps`` or ``meta`` are not supported)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError, OverflowError):
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} is not supported by sbridge; use 'auto', 'cpu', 'cuda' or "
                          "'cuda:N'.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} was requested but no CUDA GPU is available; use --device cpu "
                              "or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                              "GPU(s), numbered from 0.")
    return dev


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on ``device`` (all randomness in sbridge goes through explicit generators); the seed must
    lie in ``[0, 2^62]``."""
    g = torch.Generator(device=device)
    g.manual_seed(check_seed(seed, maximum=2**64 - 1))
    return g
