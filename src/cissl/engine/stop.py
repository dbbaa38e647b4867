"""SIGTERM / SIGINT during training: finish the step, write a checkpoint, stop (pre-emptible machines).

A scheduler that pre-empts a job sends SIGTERM and kills it a little later; Ctrl-C sends SIGINT.
While a run trains, either one only raises a flag; the training loop checks it after each step,
writes a checkpoint of that step and raises :class:`TrainingStopped`, which the command line turns
into one line and exit status 128 + the signal number. A second signal acts at once (the default).
"""

from __future__ import annotations

import signal
import threading


class TrainingStopped(Exception):
    """A run stopped on a signal at the end of a step, after writing its checkpoint (where it has a run directory)."""

    def __init__(self, signal_number: int, message: str, printed_by_this_rank: bool = True):
        super().__init__(message)
        self.signal_number = signal_number
        self.printed_by_this_rank = printed_by_this_rank  # False on DDP ranks other than 0: rank 0 prints it


class StopSignals:
    """A context that turns the first SIGTERM / SIGINT into ``requested`` (the signal's number)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number, frame) -> None:
        self.requested = number
        for sig, handler in self._previous.items():  # a second signal: the usual behaviour
            signal.signal(sig, handler)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
