"""Reading and writing run files: atomic JSON and safetensors, nothing that executes code on load."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from sbridge.core.errors import RunDirError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"


def atomic_write(path: str | Path, write: Any) -> None:
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
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file written by sbridge; a damaged or unreadable file raises :class:`RunDirError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise RunDirError(f"{str(path)!r} could not be read ({reason}); restore it from a backup or retrain the run "
                          "into a new --out folder.") from None


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a run, checked to be a mapping whose ``solver`` names a method and a sample shape."""
    path = Path(run_dir) / CONFIG_FILE
    cfg = read_json(path)
    fix = "restore it from a backup or retrain the run into a new --out folder."
    if not isinstance(cfg, dict):
        raise RunDirError(f"{str(path)!r} holds a JSON {type(cfg).__name__}, not the mapping sbridge writes; {fix}")
    solver = cfg.get("solver")
    if solver is not None and not (isinstance(solver, dict) and isinstance(solver.get("method"), str)
                                   and ("shape" in solver or "dim" in solver)):
        raise RunDirError(f"{str(path)!r} has no valid 'solver' entry (method and sample shape); {fix}")
    return cfg


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Save tensors (moved to CPU, made contiguous) with JSON-encoded ``meta`` in the safetensors header, atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"sbridge": json.dumps(meta or {})}
    atomic_write(Path(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and the JSON metadata saved by :func:`write_tensors` (CPU tensors). A file that is not a
    complete safetensors file (truncated, random bytes, a pickle or ``torch.save`` file) raises
    :class:`RunDirError` naming it; nothing in the file is ever executed."""
    path = str(path)
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise RunDirError(f"{path!r} cannot be read (permission denied); fix its permissions (e.g. chmod u+r).")
    try:
        with safe_open(path, framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("sbridge", "{}"))
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError / ValueError / JSON errors
        damaged = "truncated, damaged or not a safetensors file"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else damaged
        raise RunDirError(f"{path!r} could not be read ({reason}); delete it and retrain (or resume from the "
                          "checkpoint if only the weights file is damaged).") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path!r} has metadata that sbridge did not write; delete it and retrain.")
    return tensors, meta


def check_layout(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: str | Path,
                 prefixes: tuple[str, ...] = ("model", "ema")) -> None:
    """Raise :class:`RunDirError` with the first difference between the tensors a model expects and those a file
    holds, over the keys under ``prefixes`` (instead of PyTorch's many-line state-dict report)."""
    keep = tuple(p + "." for p in prefixes)
    want = {k: tuple(v.shape) for k, v in expected.items() if k.startswith(keep)}
    have = {k: tuple(v.shape) for k, v in found.items() if k.startswith(keep)}
    fix = "load it with the options it was trained with, or retrain into a new --out folder."
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RunDirError(f"{str(path)!r} does not fit this model: it lacks tensor {missing[0]!r}{more} (written by "
                          f"another method or network?); {fix}")
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise RunDirError(f"{str(path)!r} does not fit this model: it has an unexpected tensor {extra[0]!r}{more} "
                          f"(written by another method or network?); {fix}")
    for key in sorted(want):
        if want[key] != have[key]:
            raise RunDirError(f"{str(path)!r} does not fit this model: tensor {key!r} has shape {list(have[key])} in "
                              f"the file but {list(want[key])} in the model built from config.json; {fix}")


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
    if p.is_file():
        raise RunDirError(f"{str(p)!r} is a file, not a run folder; point to the folder 'sbridge train --out' wrote.")
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
    """The rows of a JSON-lines log; a line that does not parse to a mapping (the torn last line of a killed
    process, or damage) is skipped, so a log never stops a plot or a resume."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            rows.append(row)
    return rows


def truncate_jsonl(path: str | Path, max_step: int, key: str = "step") -> None:
    """Drop rows whose ``key`` exceeds ``max_step`` (logged after the checkpoint a resumed run restarts from)."""
    rows = [r for r in read_jsonl(path) if r.get(key, 0) <= max_step]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
