"""A run directory opened for writing: one writer at a time, nothing overwritten by accident, no stale files.

Every fit that writes a run holds :func:`locked` and passes :func:`check_new_run` (``Solver.fit``), so every solver,
present and coming, gets the same guarantees:

* **one writer**: an exclusive ``flock`` on ``RUN/.lock`` is held while a process writes the run; a second writer is
  refused with a sentence naming the holder's PID. The operating system releases the lock when the process ends,
  however it ends (a killed process never leaves a stale lock);
* **no silent overwrite**: a folder that already holds a run (config, weights, checkpoint or training log) is
  refused unless the fit resumes it or ``overwrite=True`` (``--overwrite``) clears it first;
* **no stale temporary files**: the ``.*.tmp`` files a killed atomic write can leave behind are removed once the
  lock is held (no other writer can be making them then).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sbridge.core import io
from sbridge.core.errors import RunDirError

LOCK_FILE = ".lock"
#: Files whose presence means a folder holds a run.
RUN_FILES = (io.CONFIG_FILE, io.WEIGHTS_FILE, io.CHECKPOINT_FILE, io.METRICS_FILE)

_held: dict[Path, tuple[int, int]] = {}  # resolved run dir -> (lock file descriptor, re-entry count)


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds any file of a run."""
    return any((path / name).exists() for name in RUN_FILES)


#: Files sbridge writes atomically into a run (their temporary files are ``.NAME.XXXX.tmp``).
WRITTEN_FILES = (*RUN_FILES, "evaluation.json", "samples.npy")
#: Plots ``sbridge plot`` writes into ``RUN/plots``.
PLOT_FILES = ("samples.png", "trajectories.png", "loss.png", "iterations.png", "transport.png", "variational.png",
              "reconstructions.png", "interpolations.png")


def temporary_files(path: Path) -> list[Path]:
    """Temporary files left by sbridge's interrupted atomic writes (``.NAME.XXXX.tmp`` for a file NAME it writes);
    other files, even hidden ``.tmp`` ones of the user, are not sbridge's and are never listed."""
    if not path.is_dir():
        return []
    prefixes = tuple(f".{name}." for name in WRITTEN_FILES)
    return sorted(p for p in path.glob(".*.tmp") if p.is_file() and p.name.startswith(prefixes))


def _lock_holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _acquire(path: Path) -> None:
    key = path.resolve()
    if key in _held:  # this process already writes the run (e.g. fit then save): re-enter
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run without the lock rather than refuse to run
        _held[key] = (fd, 1)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirError(f"{str(path)!r} is being written by {_lock_holder(lock_path)}; wait for it to finish or "
                          "choose another --out folder.") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    os.fsync(fd)
    _held[key] = (fd, 1)


def _release(path: Path) -> None:
    key = path.resolve()
    fd, count = _held[key]
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    del _held[key]
    os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[Path]:
    """Hold the run's exclusive lock for the block (re-entrant within a process) and clear stale temporary files."""
    p = Path(path)
    _acquire(p)
    try:
        for tmp in temporary_files(p):
            tmp.unlink(missing_ok=True)
        yield p
    finally:
        _release(p)


def check_new_run(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over an existing one unless resuming it or overwriting it (then clear it first).

    Call with the lock held."""
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite replaces it; pass only one of them.")
    if resume or not holds_run(path):
        return
    if not overwrite:
        raise RunDirError(f"{str(path)!r} already holds a run; pass --resume to continue it, --overwrite to replace "
                          "it, or choose a new --out folder.")
    clear(path)


def clear(path: Path) -> None:
    """Delete a run's files (config, weights, checkpoint, training log, its plots, samples) before overwriting it;
    files that sbridge did not write are left alone."""
    for name in WRITTEN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in PLOT_FILES:
        (path / "plots" / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (path / "plots").rmdir()  # only if it is now empty


#: Settings a resumed run may change: they do not alter the result of the steps already made.
RESUMABLE_CHANGES = ("train.steps", "train.quiet", "train.checkpoint_every", "train.eval_every", "train.log_every",
                     "train.loss_growth")
#: Parts of ``config.json`` that describe how a run's result is made.
COMPARED_SECTIONS = ("solver", "train", "data", "prior")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def resume_differences(recorded: dict[str, Any], requested: dict[str, Any],
                       defaults: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The settings (dotted keys, with both values) in which ``requested`` differs from the ``recorded`` config of
    the run being resumed, over :data:`COMPARED_SECTIONS`, ignoring :data:`RESUMABLE_CHANGES`. ``defaults`` fill
    keys a run recorded before they existed (e.g. a training option added in a later version)."""
    requested = json.loads(json.dumps(requested))  # tuples -> lists, as recorded
    recorded = dict(recorded)
    for section, values in (defaults or {}).items():
        if isinstance(recorded.get(section), dict):
            recorded[section] = {**values, **recorded[section]}
    old = _flatten({k: recorded.get(k) for k in COMPARED_SECTIONS if k in recorded or k in requested})
    new = _flatten({k: requested.get(k) for k in COMPARED_SECTIONS if k in recorded or k in requested})
    keys = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    return [f"{k}: {old.get(k)!r} recorded, {new.get(k)!r} now" for k in keys]
