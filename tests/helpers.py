"""Small, fast configs and fixed fakes for engine and algorithm tests."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import torch
from conftest import CONFIGS

from cissl.config import load_config
from cissl.models import ModelOutput


def logged_records(run_dir) -> list[dict]:
    """Every record a run wrote to its metrics.jsonl (train, eval and generation lines), in order."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# a 4-step run of a WRN-10-1 on the quickstart setting, evaluated and checkpointed at steps 2 and 4 (overrides
# for a command line or load_config)
FOUR_STEPS = ["model.depth=10", "model.widen=1", "train.iterations=4", "train.batch_size=16", "train.eval_every=2",
              "train.checkpoint_every=2", "train.device=cpu", "train.report_last=1", "train.eval_batch_size=500"]


def tiny_config(*overrides: str, algorithm: str | None = None):
    """digits-LT with a WRN-10-1, for tests that train a few steps."""
    base = ["model.depth=10", "model.widen=1", "train.iterations=20", "train.batch_size=16",
            "train.eval_every=10", "train.log_every=5", "train.checkpoint_every=10", "train.device=cpu",
            "train.eval_batch_size=500", "train.report_last=1"]
    return load_config(CONFIGS / "quickstart.yaml", base + list(overrides), algorithm)


# A `cissl bench throughput` result with the fields format_table reads (one DDP rank of two)
TIMED = {"algorithm": "semi", "setting": "", "model": "WRN-28-2", "image_shape": [3, 32, 32], "precision": "fp32",
         "channels_last": True, "compile_mode": None, "cuda_graphs": False, "fused_sgd": False, "device": "cpu",
         "rounds": 3, "steps_per_round": 3, "steps_timed": 9, "images_per_step": 320, "floor_s": 0.5,
         "augment_s": 0.05, "augment_fraction": 0.0909, "step_s": 0.55, "ratio": 1.1, "images_per_s": 581.8,
         "it_per_s": 1.818, "ddp_ranks": 2}


# Overrides under which every term of a method runs within a short run (20 steps, epochs of 2-10).
# EVERY_ROW: at quickstart's threshold 0.95 no unlabeled row of a fresh net is confident in 20 steps, so the
# unlabeled loss of most methods would never run; with 10 classes the top probability is at least 0.1, so
# at threshold 0.1 every row takes part (and no float difference can flip a mask).
EVERY_ROW = "algorithm.threshold=0.1"
# SeMi's OHEML, EA and PLCE run from epoch E_w + 1 (strict: spec 5.0), so from step 2 with epochs of 2
# (quickstart's epochs of 50 would leave them off for a whole short run)
SEMI = ["algorithm.warmup_epochs=0", "algorithm.bank.decay_step=2", "train.epoch_length=2"]
# DARP: solves at steps 5, 11, 17 (the CUDA sync test checks steps 6-9, between two solves)
DARP = ["algorithm.refiner.warmup_fraction=0.1", "algorithm.refiner.period=6"]
DASO = ["algorithm.refiner.pretrain_fraction=0.2", "algorithm.refiner.dist_update_period=2", EVERY_ROW]
ACTIVE_TERMS = {
    "semi": SEMI,
    "semi_paper": SEMI,
    "fixmatch_darp": DARP,
    "fixmatch_la_darp": DARP,
    "fixmatch_daso": DASO,
    "fixmatch_la_daso": DASO,
    "fixmatch_abc_daso": [*DASO, "algorithm.aux_head.threshold=0.0"],
    "acr": ["algorithm.est_epoch=0", "train.epoch_length=2", EVERY_ROW],  # the adaptive estimate from step 2 on
    "fixmatch_abc": ["algorithm.aux_head.threshold=0.0"],  # the head's unlabeled term from the first step
    "fixmatch_la": [EVERY_ROW],
    "fixmatch_crest": [EVERY_ROW],
    "fixmatch_crest_plus": [EVERY_ROW],
    "fixmatch_la_crest_plus": [EVERY_ROW],
    "fixmatch_saw": ["train.epoch_length=5", EVERY_ROW],   # class weights from the pool after every epoch
    "fixmatch_adsh": ["train.epoch_length=5"],  # thresholds from the pool after every epoch
    "fixmatch_tras": ["algorithm.warmup_epochs=0", EVERY_ROW],  # the student learns from the first step
    "fixmatch_seval": ["data.val_per_class=5", "algorithm.fit_every=3", EVERY_ROW],  # fits on the validation split
    # co-learning half the run
    "fixmatch_cossl": ["algorithm.pretrain_fraction=0.5", "algorithm.warmup_epochs=1", EVERY_ROW],
}


class ScriptedStop:
    """Stands in for ``cissl.engine.stop.StopSignals`` (set it as ``cissl.engine.trainer.StopSignals``): the
    trainer's check after each step finds a SIGTERM whenever ``when()`` is true."""

    def __init__(self, when):
        self.when = when

    def __call__(self) -> "ScriptedStop":  # the trainer enters StopSignals()
        return self

    def __enter__(self) -> "ScriptedStop":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @property
    def requested(self):
        return signal.SIGTERM if self.when() else None


class FixedLogitsModel(torch.nn.Module):
    """A 'model' whose logits for each input row are given by a lookup on the row's first pixel."""

    def __init__(self, table: torch.Tensor, feature_dim: int = 4, heads=("main",)):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.feature_dim = feature_dim
        self.heads = heads

    def forward(self, x):
        rows = x[:, 0, 0, 0].round().long()
        logits = self.table[rows]
        features = torch.nn.functional.pad(logits, (0, max(0, self.feature_dim - logits.shape[1])))
        features = features[:, :self.feature_dim]
        return ModelOutput(features, {name: logits for name in self.heads})


def id_images(ids, size=2):
    """Images whose first pixel carries an integer id (for FixedLogitsModel)."""
    x = torch.zeros(len(ids), 1, size, size)
    x[:, 0, 0, 0] = torch.as_tensor(ids, dtype=torch.float32)
    return x


def uninterrupted_and_resumed(config, folder, last: int, dropped=None) -> tuple[dict, dict]:
    """The final checkpoints (iteration ``last``) of a run straight through and of the same run cut short
    (its checkpoints at ``dropped`` iterations, default just ``last``, and results.json removed, as if it
    had stopped after the one before) and resumed."""
    from cissl.engine.checkpoint import load_checkpoint
    from cissl.engine.run import resume_run, start_run

    start_run(config, folder / "whole", quiet=True)
    start_run(config, folder / "cut", quiet=True)
    for step in dropped or (last,):
        (folder / f"cut/checkpoints/ckpt_{step:08d}.pt").unlink()
    (folder / "cut/results.json").unlink()
    resume_run(folder / "cut", quiet=True)
    return (load_checkpoint(folder / f"whole/checkpoints/ckpt_{last:08d}.pt"),
            load_checkpoint(folder / f"cut/checkpoints/ckpt_{last:08d}.pt"))


def assert_tables_well_formed(text: str, separator: str = "---", where: str = "") -> int:
    """Outside code blocks, every markdown table (a block of lines starting with '|') has a header, a
    separator row of cells matching ``separator`` (a regex; the docs allow ':' for alignment) and as many
    cells in every row (an escaped '\\|' is no cell border); returns the number of tables."""
    tables = 0
    for block in re.findall(r"(?:^\|.*\n)+", re.sub(r"```.*?```", "", text, flags=re.S) + "\n", re.M):
        rows = block.splitlines()
        widths = {len(re.split(r"(?<!\\)\|", row.strip())) for row in rows}
        assert len(rows) >= 2 and len(widths) == 1, f"{where}{rows[:3]}"
        cells = rows[1].strip().strip("|").split("|")
        assert all(re.fullmatch(separator, cell) for cell in cells), f"{where}{rows[:2]}"
        tables += 1
    return tables


def saved_figures(monkeypatch, module) -> dict:
    """The matplotlib figures ``module`` (cissl.evaluation.plots or report_pages) saves, by file stem, kept
    for the test to read after they are written and closed."""
    figures: dict = {}
    save = module._save

    def keep(fig, path, plt):
        figures[path.stem] = fig
        return save(fig, path, plt)

    monkeypatch.setattr(module, "_save", keep)
    return figures


def record_axes_calls(monkeypatch, *names: str) -> dict[str, list]:
    """What each matplotlib ``Axes.<name>`` call (plot, bar, imshow, ...) drew, call by call: its first two
    positional arguments as lists and its ``label`` keyword; the drawing itself still happens."""
    import matplotlib.axes
    import numpy as np

    drawn: dict[str, list] = {name: [] for name in names}
    for name in names:
        real = getattr(matplotlib.axes.Axes, name)

        def spy(ax, *args, _real=real, _name=name, **kwargs):
            drawn[_name].append([np.asarray(a).tolist() for a in args[:2]] + ([kwargs["label"]] if "label" in kwargs
                                                                               else []))
            return _real(ax, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, spy)
    return drawn


def parser_commands(parser, prefix: str = "") -> dict:
    """Every runnable command of an argparse parser, as 'name' or 'name sub', with its (sub)parser."""
    found = {}
    for action in parser._subparsers._group_actions:  # argparse keeps its subcommands only there
        for name, sub in action.choices.items():
            found |= parser_commands(sub, f"{prefix}{name} ") if sub._subparsers else {f"{prefix}{name}": sub}
    return found
