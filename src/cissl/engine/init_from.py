"""Starting a run's backbone from another, finished run (``train.init_from``): the stage after training
of cRT (classifier re-training on the frozen network of an SSL run).

The parent is a run directory (its newest readable checkpoint) or a checkpoint file. It must have
been trained on the same data and split with the same network: its recorded ``data`` and ``model``
sections and ``train.seed`` must equal this run's (one line naming the first differences otherwise).
Only the backbone's weights and BN statistics are taken (``train.init_weights``: the EMA network, the
one the parent reports, or its training network); the heads keep their fresh initialisation. Both the
training network and its EMA copy start from them. This happens once, at the start; a resumed run
continues from its own checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from cissl.engine.checkpoint import config_differences, first_line, load_checkpoint, load_newest_readable
from cissl.errors import CheckpointError

SAME_AS_PARENT = ("data", "model")


def parent_checkpoint(source: str) -> tuple[Path, dict]:
    """(path, state) of ``train.init_from``: a checkpoint file, or a run directory's newest readable one."""
    path = Path(source)
    if path.is_file():
        return path, load_checkpoint(path)
    if not (path / "checkpoints").is_dir():
        raise CheckpointError(f"train.init_from: {source} is neither a checkpoint file nor a run directory "
                              f"(no checkpoints/ folder)")
    found, state, _ = load_newest_readable(path / "checkpoints")
    if state is None:
        raise CheckpointError(f"train.init_from: run {source} has no checkpoint")
    return found, state


def check_same_data_and_network(state: dict, config, path: Path) -> None:
    if not state.get("config"):
        raise CheckpointError(f"train.init_from: {path} records no config, so its data and network cannot be "
                              f"checked against this run's")
    differ = config_differences(state, config, SAME_AS_PARENT, ("seed",))
    if differ:
        raise CheckpointError(f"train.init_from: {path} was trained on other data or another network: {differ}")


def load_initial_backbone(parts, config) -> tuple[str, str]:
    """Load the parent's backbone into the network and its EMA; returns the parent's algorithm name
    and a line for the log."""
    path, state = parent_checkpoint(config.train.init_from)
    check_same_data_and_network(state, config, path)
    source = state["ema"] if config.train.init_weights == "ema" else state["model"]
    backbone = {key[len("backbone."):]: value for key, value in source.items() if key.startswith("backbone.")}
    try:
        parts.model.backbone.load_state_dict(backbone)
        parts.ema.model.backbone.load_state_dict(backbone)
    except RuntimeError as exc:
        raise CheckpointError(f"train.init_from: {path} does not fit this network: {first_line(exc)}") from None
    parent = state["config"].get("algorithm", {}).get("name", "?")
    return parent, (f"backbone from {path} ({config.train.init_weights} weights of a {parent} run at iteration "
                    f"{state['iteration']}); heads start afresh")
