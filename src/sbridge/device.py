"""Device selection: explicit, with ``auto`` meaning CUDA when present, else CPU."""

from __future__ import annotations

import torch

from sbridge.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` if available else ``cpu``; otherwise the named device, checked to exist."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto.")
    return dev


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on ``device`` (all randomness in sbridge goes through explicit generators)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
