"""Reading and writing run files: atomic JSON and safetensors, nothing that executes code on load."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from sbridge.errors import RunDirError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` to a temporary file in the same folder, fsync it, then rename over ``path``.

    A crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Save tensors (moved to CPU, made contiguous) with JSON-encoded ``meta`` in the safetensors header, atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"sbridge": json.dumps(meta or {})}
    _atomic_write(Path(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and the JSON metadata saved by :func:`write_tensors` (CPU tensors)."""
    path = str(path)
    with safe_open(path, framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("sbridge", "{}"))
    return load_file(path), meta


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``prefix.`` to every key."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the keys starting with ``prefix.`` and strip it."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def require_run_dir(path: str | Path) -> Path:
    """Return ``path`` if it holds an sbridge run (a ``config.json``), else raise :class:`RunDirError`."""
    p = Path(path)
    if not p.is_dir():
        raise RunDirError(f"run directory {str(p)!r} does not exist; train one first with 'sbridge train --out {p}'.")
    if not (p / CONFIG_FILE).is_file():
        raise RunDirError(f"{str(p)!r} is not an sbridge run (no {CONFIG_FILE}); "
                          "point to a folder written by 'sbridge train'.")
    return p


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: str | Path, max_step: int, key: str = "step") -> None:
    """Drop rows whose ``key`` exceeds ``max_step`` (logged after the checkpoint a resumed run restarts from)."""
    rows = [r for r in read_jsonl(path) if r.get(key, 0) <= max_step]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
