"""What the ranks of a torchrun run agree on: actions whose outcome (or one-line error) every rank
hears (:func:`run_on_main`, :func:`in_turns`), and checks that every rank holds the same data and
state (:func:`check_same_data` once the data is read, :func:`check_ranks_agree` before every checkpoint),
each as one line naming the first rank and the parts that differ."""

from __future__ import annotations

import hashlib

import torch

from cissl import distributed
from cissl.engine.launch import torchrun_launch
from cissl.errors import CisslError, DataError, PrintedByAnotherRank, for_this_rank


class RanksDiverged(CisslError):
    """The ranks of a DDP run no longer hold the same weights or method state."""


def in_turns(action):
    """``action()`` on every rank in three turns: rank 0, then the first process of each other node,
    then the rest, each turn ending when every rank is through it. For reading a data set that may
    have to be downloaded: one process per node fetches and extracts it (one in all where the nodes
    share the folder) and the others find it there, instead of N processes writing the same files at
    once. An error in a turn stops every rank after that turn: the first rank that met one raises it,
    the others a copy that it prints."""
    launch = torchrun_launch()
    mine = 0 if distributed.is_main() else 1 if launch is None or launch.local_rank == 0 else 2
    result = None
    for turn in range(3):
        error = None
        if turn == mine:
            try:
                result = action()
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it before any stops
                error = exc
        messages = distributed.gather_objects(None if error is None else str(error))
        failed = [rank for rank, message in enumerate(messages) if message is not None]
        if failed:
            if error is not None and failed[0] == distributed.rank():
                raise error
            raise PrintedByAnotherRank(messages[failed[0]])
    return result


def run_on_main(action):
    """``action()`` on rank 0 only; its result, or its one-line error, on every rank."""
    outcome = None
    if distributed.is_main():
        try:
            outcome = ("ok", action())
        except CisslError as exc:
            outcome = ("error", exc)
    kind, value = distributed.broadcast_from_main(outcome)
    if kind == "error":
        raise for_this_rank(value, distributed.is_main())
    return value


def fingerprint(tensors) -> str:
    """A digest of tensors' values (nested dicts / lists of tensors and numbers)."""
    digest = hashlib.sha256()

    def visit(value):
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          if value.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(str(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        else:
            digest.update(repr(value).encode())

    visit(tensors)
    return digest.hexdigest()


def rank_that_differs(parts: dict) -> tuple[int, list[str]] | None:
    """The first rank whose ``parts`` (name -> state) differ from rank 0's, with the names that differ
    (the same answer on every rank), or None."""
    if distributed.world_size() == 1:
        return None
    mine = {name: fingerprint(state) for name, state in parts.items()}
    every = distributed.gather_objects(mine)
    for other, prints in enumerate(every[1:], start=1):
        differ = [name for name in mine if prints[name] != every[0][name]]
        if differ:
            return other, differ
    return None


def check_ranks_agree(parts: dict, iteration: int) -> None:
    """Every rank holds the same ``parts`` (name -> state), else one line naming the first that differs."""
    found = rank_that_differs(parts)
    if found:
        other, differ = found
        raise RanksDiverged(f"at iteration {iteration} rank {other} and rank 0 hold different {', '.join(differ)}: "
                            f"the ranks no longer train one model (a method that updates its state from its "
                            f"own rows only? see docs/algorithms.md, 'Distributed training')")


def check_same_data(parts: dict, data_config) -> None:
    """Every rank read the same data (``parts``: name -> what identifies it, see
    :func:`cissl.engine.data.data_identity`): a node whose copy under ``data.root`` differs (another
    version, a damaged file) would otherwise train on other images than rank 0 believes."""
    found = rank_that_differs(parts)
    if found:
        other, differ = found
        message = (f"distributed launch: rank {other} read other data than rank 0 from data.root "
                   f"{data_config.root!r} ({', '.join(differ)} differ); every node must read the same copy "
                   f"of {data_config.dataset}")
        raise for_this_rank(DataError(message), distributed.is_main())
