"""The run directory's layout, and atomic writes (the one place either is defined).

A run directory holds::

    config.yaml      the resolved config
    split.json       the labeled / unlabeled / validation indices
    metrics.jsonl    training records and evaluations, one JSON object per line
    checkpoints/     ckpt_<iteration>.pt, the newest few
    results.json     the run's summary, once it has finished (or been re-evaluated)
    plots/           figures of `cissl plot`
    unlabeled_distribution.json   the pool's estimated class counts (`cissl estimate-distribution`)
    tensorboard/     with train.tensorboard
    .lock            the writer's lock (an OS lock on it; the file itself may stay)

Every file cissl writes whole is written to a temporary file beside the target, flushed, fsynced and
renamed over it, so a crash (even SIGKILL) leaves either the old file or the new one, never a part.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from cissl.errors import CisslError

CONFIG = "config.yaml"
SPLIT = "split.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
UNLABELED_DISTRIBUTION = "unlabeled_distribution.json"
LOCK = ".lock"  # held by the one process that writes the run (see RunDir.exclusive)


class RunDir:
    """Paths of one run directory's files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / CONFIG
        self.split = self.path / SPLIT
        self.metrics = self.path / METRICS
        self.results = self.path / RESULTS
        self.checkpoints = self.path / CHECKPOINTS
        self.plots = self.path / PLOTS
        self.tensorboard = self.path / TENSORBOARD
        self.unlabeled_distribution = self.path / UNLABELED_DISTRIBUTION

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run directory's writer lock: one training, resume or evaluation at a time. An OS
        lock (flock): the kernel releases it when its process dies, even by SIGKILL, so a stale lock file
        never blocks a resume."""
        handle = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise CisslError(f"run directory {self} is in use by another cissl process"
                             f"{f' (pid {owner})' if owner else ''}; wait for it to end or choose another "
                             f"--out") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file, fsync it, rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # its folder is a file, say: then there is no temporary file either
            pass
        cause = _os_error_in(exc)
        if cause is not None:  # a full disk, a quota, a read-only file system: one line, the old file intact
            raise CisslError(f"cannot write {path}: {cause.strerror or cause}; the previous version, if any, "
                             f"is intact") from None
        if isinstance(exc, OSError) and exc.filename in (str(tmp), str(path)):  # the path itself: a folder
            # of that name, a missing folder or a file on the way, no permission
            raise CisslError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    fsync_directory(path.parent)
    return path


def ensure_folder(path: Path) -> Path:
    """``path`` as a folder, created with its parents where missing; one line when it cannot be (a file of that
    name or on the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CisslError(f"{path} is a file, not a folder; choose a folder") from None
    except OSError as exc:
        raise CisslError(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    return path


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def _os_error_in(exc: BaseException) -> OSError | None:
    """The storage error (disk full, quota, read-only, I/O) in an exception's chain; torch wraps a
    failed write in a RuntimeError. Other errors (e.g. of a download feeding the write) pass as they are."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Path, data: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent))
