"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over; the last K are kept.

A crash (even SIGKILL) during a write leaves the previous checkpoints intact; the leftover
temporary file is ignored by :func:`latest_checkpoint` and removed by the next save.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from cissl.config import LOCATION_KEYS, flat_keys, name_differences
from cissl.errors import CheckpointError
from cissl.rundir import atomic_write

_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")


def checkpoint_path(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"ckpt_{iteration:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(state: dict, directory: Path, iteration: int, keep: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".ckpt_*.tmp*"):
        stale.unlink(missing_ok=True)
    target = atomic_write(checkpoint_path(directory, iteration), lambda handle: torch.save(state, handle))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def load_newest_readable(directory: Path) -> tuple[Path | None, dict | None, list[str]]:
    """(path, state, why each newer one was skipped) of the newest checkpoint that loads; (None, None, [])
    when there is none; an error when every one is unreadable (a run never restarts from scratch silently)."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path), skipped
        except CheckpointError as exc:
            skipped.append(str(exc))
    if skipped:
        raise CheckpointError(f"no readable checkpoint in {directory}: {skipped[0]}")
    return None, None, []


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; name a checkpoint file (ckpt_<iteration>.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save's archive keeps its directory at the end: a cut file has none
        raise CheckpointError(f"checkpoint {path} is unreadable: not a whole torch.save archive (a file cut short, "
                              f"or another kind of file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or tampered file (torch's advice to unpickle it is left out)
        refused = refused_object(exc)
        if refused:
            raise CheckpointError(f"checkpoint {path} is unreadable: it holds an object other than tensors and plain "
                                  f"values ({refused}); cissl loads checkpoints without running code") from None
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(state, dict) or "iteration" not in state or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a cissl checkpoint (no model / iteration)")
    return state


WEIGHTS_UNPICKLER = "WeightsUnpickler error: "  # the line of torch's weights-only refusal that names the object


def refused_object(exc: BaseException) -> str | None:
    """What torch's weights-only loading refused to unpickle ("Unsupported global: GLOBAL mod.Class was not an
    allowed global by default"), or None for other errors. The rest of torch's message advises loading with
    weights_only=False, i.e. running the file's code: not advice to pass on about a file we did not write."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(WEIGHTS_UNPICKLER):
            return line[len(WEIGHTS_UNPICKLER):].split(". ")[0].rstrip(".")
    return None


DETAIL_CHARS = 300  # of the first detail line that follows a heading
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # terminal bold / colour codes in some torch messages


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (torch's state-dict and unpickling errors run to dozens).
    A first line that only heads its details (ends in ':', as torch's "Error(s) in loading state_dict for
    X:") takes the first detail with it (its first DETAIL_CHARS characters): that one says what is wrong."""
    text = ANSI_STYLE.sub("", str(exc))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
    head, rest = lines[0], lines[1:]
    if head.endswith(":") and rest:
        detail = rest.pop(0)
        head += " " + (detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS] + "...")
    return head + (f" (+{len(rest)} more lines)" if rest else "")


# What makes a run this run: a checkpoint whose recorded values differ here belongs to another run.
IDENTITY_SECTIONS = ("data", "model", "optim", "augment", "algorithm")
IDENTITY_TRAIN_KEYS = ("seed", "iterations", "batch_size", "mu", "strong_views", "epoch_length", "ema_decay")


def config_differences(state: dict, config, sections, train_keys) -> str | None:
    """The values of a checkpoint's recorded config that differ from ``config`` in the given sections and
    ``train`` keys (keys the checkpoint predates, and LOCATION_KEYS, are not compared), as one phrase naming
    the first three, or None when they all agree."""
    recorded = flat_keys(state.get("config") or {})
    current = flat_keys(config.to_dict())
    compared = [key for key in recorded if (key.split(".")[0] in sections or key in {f"train.{k}" for k in train_keys})
                and key not in LOCATION_KEYS]
    differ = [key for key in compared if key in current and recorded[key] != current[key]]
    return name_differences(differ, lambda key: f"{key} {recorded[key]!r} (this run: {current[key]!r})")


def check_checkpoint_belongs(state: dict, config, path) -> None:
    """Refuse a checkpoint written by another run (another algorithm, seed, split or hyperparameter):
    every identity key it records must equal this run's."""
    differ = config_differences(state, config, IDENTITY_SECTIONS, IDENTITY_TRAIN_KEYS)
    if differ:
        raise CheckpointError(f"checkpoint {path} belongs to another run: {differ}")
