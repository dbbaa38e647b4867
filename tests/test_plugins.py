"""Methods in the user's own modules (the config key ``plugins``): registered, trained, saved with the run and
imported again wherever the run is read (a fresh process, a sweep's worker), and every failure one line.
What a test's plugin registers is taken back after it (conftest.py, registries_restored)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO, run_cli
from helpers import FOUR_STEPS, tiny_config

from cissl import api, plugins
from cissl.algorithms import ALGORITHMS, AlgorithmContext
from cissl.config import build, load_config
from cissl.environment import changes, code_of
from cissl.errors import ConfigError
from cissl.models import BACKBONES, register_backbone

TOY = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms import Algorithm, StepOutput, ViewSpec
from cissl.algorithms.components.views import forward_views
from cissl.algorithms.registry import register
from cissl.schema import AlgorithmConfig, option


@dataclass(frozen=True)
class ToyConfig(AlgorithmConfig):
    name: str = option("NAME", help="algorithm name")
    threshold: float = option(0.95, min=0.0, max=1.0, help="toy threshold")


@register("NAME", ToyConfig, summary="a toy pseudo-label method")
class Toy(Algorithm):
    @classmethod
    def views(cls, config):
        return ViewSpec(strong_views=None)

    def step(self, model, batch, iteration):
        views = forward_views(model, batch)
        loss_x = F.cross_entropy(views.labeled_logits["main"], batch.y)
        weak = views.weak_logits["main"]
        confidence, labels = torch.softmax(weak.detach(), dim=1).max(dim=1)
        mask = confidence >= self.config.threshold
        loss_u = (F.cross_entropy(weak, labels, reduction="none") * mask).mean()
        return StepOutput(loss_x + loss_u, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach()}, labels, mask)
'''


def write_toy(path: Path, name: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TOY.replace("NAME", name) + extra)
    return path


def write_setting(folder: Path, plugin_entry: str, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "setting.yaml"
    path.write_text(f"inherit: {CONFIGS / 'quickstart.yaml'}\nplugins: [{plugin_entry}]\nalgorithm:\n"
                    f"  name: {name}\n  threshold: 0.5\n")
    return path


def test_a_method_in_a_plugin_file_trains_and_a_fresh_process_reads_its_run(tmp_path, capsys):
    """The file's path is read from the config file's folder and saved absolute; `cissl evaluate` in a new
    interpreter, started elsewhere, imports it from the run's config.yaml. The run records the file's digest."""
    toy = write_toy(tmp_path / "methods" / "toy.py", "toy_file")
    setting = write_setting(tmp_path / "settings", "../methods/toy.py", "toy_file")
    run = tmp_path / "runs" / "toy"
    code, out, err = run_cli(["train", "--config", setting, *FOUR_STEPS, "--out", run], capsys)
    assert code == 0, err
    config = load_config(run / "config.yaml")
    assert config.plugins == [str(toy)] and config.algorithm.name == "toy_file" and config.algorithm.threshold == 0.5
    results = json.loads((run / "results.json").read_text())
    digest = hashlib.sha256(toy.read_bytes()).hexdigest()[:12]
    assert results["algorithm"] == "toy_file" and results["environments"][-1]["plugins"] == {str(toy): digest}

    fresh = subprocess.run([sys.executable, "-m", "cissl", "evaluate", str(run)], cwd="/", capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert fresh.returncode == 0, fresh.stderr
    assert "toy_file on quickstart" in fresh.stdout


def test_a_sweep_runs_a_plugin_method_in_its_worker_processes(tmp_path):
    """Each worker is a fresh interpreter that gets its job's config pickled: rebuilt there, with the plugin
    imported first."""
    write_toy(tmp_path / "toy.py", "toy_sweep")
    setting = write_setting(tmp_path, "toy.py", "toy_sweep")
    rows = api.sweep(setting, tmp_path / "sweep", seeds=[0, 1], overrides=FOUR_STEPS, workers=2)
    assert [(row["algorithm"], row["seeds"]) for row in rows] == [("toy_sweep", [0, 1])]


def test_a_plugin_module_by_name_and_a_command_line_plugin_path(tmp_path, monkeypatch):
    """A module name is imported as Python imports it; a .py path given as an override is read from the
    working directory and saved absolute."""
    package = tmp_path / "site" / "toy_plugins_pkg"
    write_toy(package / "methods.py", "toy_module")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = tiny_config("plugins=[toy_plugins_pkg.methods]", algorithm="toy_module")
    assert config.plugins == ["toy_plugins_pkg.methods"] and config.algorithm.name == "toy_module"
    assert tiny_config(algorithm="toy_module").plugins == ["toy_plugins_pkg.methods"]  # added by name, too
    source = (package / "methods.py").read_bytes()
    assert plugins.plugin_digests(["toy_plugins_pkg.methods"]) == {
        "toy_plugins_pkg.methods": hashlib.sha256(source).hexdigest()[:12]}
    monkeypatch.setitem(sys.modules, "toy_plugins_pkg_without_file", types.ModuleType("toy_plugins_pkg_without_file"))
    assert plugins.plugin_digests("toy_plugins_pkg_without_file") == {"toy_plugins_pkg_without_file": "unknown"}

    write_toy(tmp_path / "here" / "mine.py", "toy_override")
    monkeypatch.chdir(tmp_path / "here")
    config = tiny_config("plugins=mine.py", "algorithm.name=toy_override")
    assert config.plugins == [str(tmp_path / "here" / "mine.py")]
    assert tiny_config().replace(["plugins=[mine.py]"]).plugins == [str(tmp_path / "here" / "mine.py")]  # in Python
    assert pickle.loads(pickle.dumps(config)) == config


def test_a_config_mapping_imports_its_plugin_files_from_the_working_directory_first(tmp_path, monkeypatch):
    """`config.build` of a plain mapping (a config built in Python): its plugin files are read from the working
    directory, saved absolute and imported before the algorithm section names the method they register."""
    write_toy(tmp_path / "mine" / "toy_mapping.py", "toy_mapping")
    monkeypatch.chdir(tmp_path)
    data = {**tiny_config().to_dict(), "plugins": ["mine/toy_mapping.py"], "algorithm": {"name": "toy_mapping"}}
    config = build(data)
    assert config.algorithm.name == "toy_mapping" and config.plugins == [str(tmp_path / "mine" / "toy_mapping.py")]


def test_a_plugin_given_as_an_override_is_imported_before_the_methods_section_names_its_method(tmp_path):
    """A setting's `methods` section may hold the options of a plugin's method that only the command line's
    `plugins=` brings: the section is validated after that import, not before."""
    toy = write_toy(tmp_path / "toy_methods.py", "toy_methods")
    setting = tmp_path / "setting.yaml"
    setting.write_text(f"inherit: {CONFIGS / 'quickstart.yaml'}\nmethods:\n  toy_methods:\n    threshold: 0.25\n")
    config = load_config(setting, [f"plugins=[{toy}]"], "toy_methods")
    assert config.algorithm.name == "toy_methods" and config.algorithm.threshold == 0.25


def test_a_setting_that_brings_a_plugin_merges_its_method_over_the_parents_options(tmp_path):
    """The parent file sets the plugin method's options; the child, or the command line, brings the plugin and
    the child names the method again: imported before the merge, the method is known and the parent's threshold
    is kept, not reset to the method's default."""
    for name, in_child in (("toy_inherit", True), ("toy_cli", False)):  # in the child, or `plugins=[...]` given
        folder = tmp_path / name
        toy = write_toy(folder / f"{name}.py", name)
        (folder / "parent.yaml").write_text(f"inherit: {CONFIGS / 'quickstart.yaml'}\n"
                                            f"algorithm:\n  name: {name}\n  threshold: 0.5\n")
        (folder / "child.yaml").write_text("inherit: parent.yaml\n" + (f"plugins: [{name}.py]\n" if in_child else "")
                                           + f"algorithm:\n  name: {name}\n")
        overrides = [] if in_child else [f"plugins=[{toy}]"]
        assert load_config(folder / "child.yaml", overrides).algorithm.threshold == 0.5, name


def test_a_config_that_names_a_plugin_method_without_its_plugin_gets_it_added(tmp_path):
    """Another config of the same process imported the plugin (a sweep of several configs): the run's config
    still lists it, so the run can be read again in a process that has not imported it."""
    toy = write_toy(tmp_path / "toy.py", "toy_added")
    tiny_config(f"plugins=[{toy}]", algorithm="toy_added")
    assert tiny_config(algorithm="toy_added").plugins == [str(toy)]
    assert tiny_config(algorithm="fixmatch").plugins == []  # cissl's own methods need none


REFINER = '''
from dataclasses import dataclass

from cissl.algorithms.parts import PseudoLabelRefiner
from cissl.algorithms.registry import REFINERS
from cissl.schema import NamedConfig, option


@dataclass(frozen=True)
class SharpenConfig(NamedConfig):
    name: str = option("toy_sharpen", help="refiner name")


@REFINERS.register("toy_sharpen", SharpenConfig, summary="squares and renormalises p")
class Sharpen(PseudoLabelRefiner):
    def refine(self, probs, views, batch, iteration):
        sharper = probs ** 2
        return sharper / sharper.sum(dim=1, keepdim=True)
'''


def test_a_refiner_of_a_plugin_composes_with_fixmatch_and_brings_its_plugin(tmp_path):
    """A part (here a pseudo-label refiner) registered by a plugin is chosen by name like cissl's own, and a
    config that names it gets its plugin as a method's would."""
    (tmp_path / "sharpen.py").write_text(REFINER)
    config = tiny_config(f"plugins=[{tmp_path / 'sharpen.py'}]", "algorithm.refiner=toy_sharpen", algorithm="fixmatch")
    assert config.algorithm.refiner.name == "toy_sharpen"
    assert api.train(config.replace(FOUR_STEPS), tmp_path / "run", quiet=True)["iterations"] == 4
    again = tiny_config("algorithm.refiner=toy_sharpen", algorithm="fixmatch")
    assert again.plugins == [str(tmp_path / "sharpen.py")]


def test_the_example_plugin_lowers_the_threshold_of_classes_with_fewer_labels(tmp_path, capsys):
    """examples/my_methods.py by hand: tau_k = tau * (N_k / max N) ** power; its setting trains."""
    config = load_config(REPO / "examples/plugin_setting.yaml", FOUR_STEPS)
    assert config.plugins == [str(REPO / "examples/my_methods.py")]
    module = sys.modules[plugins._module_name(REPO / "examples/my_methods.py")]
    assert module.class_thresholds(0.95, (20, 5, 1), 0.5).tolist() == pytest.approx([0.95, 0.475, 0.95 / 20 ** 0.5])
    assert module.class_thresholds(0.95, (20, 5), 0.0).tolist() == pytest.approx([0.95, 0.95])  # FixMatch
    method = module.ClassThresholdFixMatch(config.algorithm, AlgorithmContext(
        num_classes=3, labeled_counts=(20, 5, 1), feature_dim=4, iterations=4, epoch_length=2))
    mask = method.confidence_mask(torch.tensor([0.9, 0.9, 0.3, 0.2]), torch.tensor([0, 1, 2, 2]))
    assert mask.tolist() == [False, True, True, False]  # 0.9 < 0.95; 0.9 >= 0.475; 0.3 >= 0.2124; 0.2 < 0.2124
    code, _, err = run_cli(["train", "--config", REPO / "examples/plugin_setting.yaml", *FOUR_STEPS, "--out",
                            tmp_path / "run"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run/results.json").read_text())["algorithm"] == "fixmatch_class_threshold"


def test_a_backbone_of_a_plugin_trains_under_its_name(tmp_path, capsys):
    """examples/my_methods.py's example_cnn: model.name picks it (unknown names are still refused, naming the
    plugin's among the allowed ones), the run's network is that CNN, and a config naming it gets the plugin."""
    with pytest.raises(ConfigError, match=r"^config key 'model.name': must be one of wrn, resnet50; got "
                                          r"'example_cnn'$"):
        tiny_config("model.name=example_cnn")
    example = str(REPO / "examples/my_methods.py")
    with pytest.raises(ConfigError, match=r"must be one of wrn, resnet50, example_cnn; got 'example_cn'$"):
        tiny_config(f"plugins=[{example}]", "model.name=example_cn")
    assert tiny_config(f"plugins=[{example}]", "model.name=example_cnn").model.name == "example_cnn"
    assert tiny_config("model.name=example_cnn").plugins == [example]
    assert api.registered(example)["backbones"]["example_cnn"] == ("Example plugin backbone: three 3x3 conv blocks "
                                                                   "(32, 64, 128 channels), a 128-d embedding.")
    code, _, err = run_cli(["train", "--config", REPO / "examples/plugin_setting.yaml", *FOUR_STEPS,
                            "model.name=example_cnn", "--algorithm", "fixmatch", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "run/checkpoints/ckpt_00000004.pt", weights_only=True)
    shapes = {key: tuple(value.shape) for key, value in state["model"].items() if key.endswith("weight")}
    # digits are grey: one input channel
    assert shapes == {"backbone.layers.0.weight": (32, 1, 3, 3), "backbone.layers.1.weight": (32,),
                      "backbone.layers.4.weight": (64, 32, 3, 3), "backbone.layers.5.weight": (64,),
                      "backbone.layers.8.weight": (128, 64, 3, 3), "backbone.layers.9.weight": (128,),
                      "heads.main.weight": (10, 128)}


def test_cissl_list_shows_what_a_plugin_registers(tmp_path, capsys, monkeypatch):
    write_toy(tmp_path / "toy.py", "toy_listed")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["list", "--plugins", "toy.py", "--algorithm", "toy_listed"], capsys)
    assert code == 0, err
    assert "  toy_listed" in out and "a toy pseudo-label method" in out
    assert out.split("algorithm.* keys of toy_listed:")[1].split() == [
        "algorithm.name", "toy_listed", "algorithm", "name", "algorithm.threshold", "0.95", "toy", "threshold"]
    register_backbone("toy_bare_net")(lambda model_config, in_channels: None)
    assert api.registered()["backbones"]["toy_bare_net"] == ""  # a builder without docstring: an empty summary


def test_two_plugin_files_of_one_name_in_two_folders_are_two_modules(tmp_path):
    first = write_toy(tmp_path / "a" / "my-toy.v1.py", "toy_a")
    second = write_toy(tmp_path / "b" / "my-toy.v1.py", "toy_b")
    config = tiny_config(f"plugins=[{first}, {second}]", algorithm="toy_b")
    assert config.plugins == [str(first), str(second)] and {"toy_a", "toy_b"} <= set(ALGORITHMS.names())
    assert all(plugins._module_name(path).isidentifier() for path in (first, second))
    # named after the file, so that a class's repr and a traceback say which plugin it came from
    module = f"cissl_plugin_my_toy_v1_{hashlib.sha1(str(first).encode('utf-8')).hexdigest()[:10]}"
    assert plugins._module_name(first) == module and ALGORITHMS.entry("toy_a").target.__module__ == module


def test_a_plugin_reached_through_a_symbolic_link_is_listed_as_the_config_spells_it(tmp_path):
    """The config's path stays as written (made absolute, not resolved); naming its method adds nothing more."""
    write_toy(tmp_path / "real" / "toy.py", "toy_linked")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked = str(tmp_path / "link" / "toy.py")
    assert tiny_config(f"plugins=[{linked}]", algorithm="toy_linked").plugins == [linked]
    assert tiny_config(algorithm="toy_linked").plugins == [linked]
    assert tiny_config(f"plugins=[{tmp_path / 'real' / 'toy.py'}]").plugins == [str(tmp_path / "real" / "toy.py")]


def test_a_plugin_that_fails_is_one_line_and_leaves_nothing_registered(tmp_path):
    broken = write_toy(tmp_path / "broken.py", "toy_broken", extra="\n\nfrom cissl.models import register_backbone\n"
                       "register_backbone('toy_broken_net')(lambda model_config, in_channels: None)\n"
                       "undefined_name + 1\n")
    line = len(broken.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"^config key 'plugins': importing {broken} failed: NameError: name "
                                          rf"'undefined_name' is not defined \({broken}, line {line}\)$"):
        tiny_config(f"plugins=[{broken}]")
    assert "toy_broken" not in ALGORITHMS.names() and "toy_broken_net" not in BACKBONES  # registered before
    with pytest.raises(ValueError, match="^backbone 'wrn' registered twice$"):           # the error: taken back
        register_backbone("wrn")(lambda model_config, in_channels: None)
    write_toy(broken, "toy_broken")  # mended: the same file now imports
    assert tiny_config(f"plugins=[{broken}]", algorithm="toy_broken").algorithm.name == "toy_broken"

    taken = write_toy(tmp_path / "taken.py", "semi")
    with pytest.raises(ConfigError, match=r"importing .*taken.py failed: ValueError: algorithm 'semi' registered "
                                          r"twice"):
        tiny_config(f"plugins=[{taken}]")
    needs = write_toy(tmp_path / "needs.py", "toy_needs", extra="\nimport a_library_not_installed\n")
    with pytest.raises(ConfigError, match=r"importing .*needs.py failed: ModuleNotFoundError: No module named "
                                          r"'a_library_not_installed'"):
        tiny_config(f"plugins=[{needs}]")
    with pytest.raises(ConfigError, match=rf"^config key 'plugins': no such file {tmp_path / 'absent.py'}$"):
        tiny_config(f"plugins=[{tmp_path / 'absent.py'}]")
    with pytest.raises(ConfigError, match=r"^config key 'plugins': cannot import 'no_such_plugin_module' \(No module "
                                          r"named 'no_such_plugin_module'\); give a \.py file, or a module Python "
                                          r"imports here \(installed, or on PYTHONPATH\)$"):
        tiny_config("plugins=[no_such_plugin_module]")
    with pytest.raises(ConfigError, match=r"^config key 'plugins': expected a list of \.py files or module names, "
                                          r"got \[3\]$"):
        tiny_config("plugins=[3]")


def test_a_plugin_is_part_of_the_code_a_run_records():
    """code_of names each plugin's file and digest, so a report sees runs of two versions of a plugin as
    different code, and a resumed run says the plugin changed."""
    before = {"code": "04dd1d228f71", "plugins": {"/work/toy.py": "0123456789ab"}}
    now = {"code": "04dd1d228f71", "plugins": {"/work/toy.py": "ba9876543210"}}
    assert code_of(before) == "04dd1d228f71 + toy.py 0123456789ab"
    assert changes(before, now) == ["code 04dd1d228f71 + toy.py 0123456789ab -> 04dd1d228f71 + toy.py ba9876543210"]
    assert code_of({"code": None, "cissl": "0.1.0"}) == "cissl 0.1.0"
