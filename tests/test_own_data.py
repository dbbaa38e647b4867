"""A user's own data: a folder of images or an .npz of arrays, trained end to end (no mocks)."""

import json

import numpy as np
import pytest
from conftest import CONFIGS, run_cli

from cissl.config import load_config
from cissl.data.sources import load_digits_source
from cissl.engine.data import prepare_data
from cissl.engine.run import start_run
from cissl.errors import ConfigError, DataError

LABELED = [12, 9, 7, 5, 4, 3, 3, 2, 2, 2]  # per digit: long-tailed, as a user's few labels might be
SHORT = ["model.depth=10", "model.widen=1", "train.iterations=6", "train.batch_size=8", "train.eval_every=3",
         "train.checkpoint_every=3", "train.report_last=1", "train.device=cpu", "augment.cutout=4"]


def digits_parts(seed=0):
    source = load_digits_source()
    images, labels = source.train.images[:, 0], source.train.labels
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    labeled = np.concatenate([order[labels[order] == k][:n] for k, n in enumerate(LABELED)])
    unlabeled = np.setdiff1d(order, labeled)[:300]
    return images, labels, labeled, unlabeled, source


def write_folder(root, with_test=False):
    from PIL import Image

    images, labels, labeled, unlabeled, source = digits_parts()
    for i in labeled:
        (root / "labeled" / f"d{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "labeled" / f"d{labels[i]}" / f"{i}.png")
    (root / "unlabeled").mkdir(parents=True)
    for i in unlabeled:
        Image.fromarray(images[i]).save(root / "unlabeled" / f"{i}.png")
    if with_test:
        for j, (image, label) in enumerate(zip(source.test.images[:, 0][:100], source.test.labels[:100])):
            (root / "test" / f"d{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "test" / f"d{label}" / f"{j}.png")
    return root


def own_config(dataset, root, *overrides, algorithm="fixmatch"):
    return load_config(None, [f"data.dataset={dataset}", f"data.root={root}", *SHORT, *overrides], algorithm)


def test_folder_trains_to_results_with_a_stated_hold_out(tmp_path):
    root = write_folder(tmp_path / "mydata")
    results = start_run(own_config("folder", root), tmp_path / "run", quiet=True)
    split = json.loads((tmp_path / "run/split.json").read_text())
    assert split["settings"]["test"] == "held out: test_fraction 0.2 of each class"
    assert split["settings"]["class_names"] == [f"d{k}" for k in range(10)]
    held = [int(np.floor(0.2 * n)) for n in LABELED]
    assert len(split["test_indices"]) == sum(held) and split["labeled_counts"] == [n - h for n, h in zip(LABELED, held)]
    assert len(split["unlabeled_indices"]) == 300 and split["unlabeled_counts"] is None
    assert len(split["settings"]["mean"]) == 1 and results["iterations"] == 6
    assert sum(map(sum, results["confusion_matrix"])) == sum(held)


def test_folder_with_its_own_test_set_and_predict_equals_evaluate(tmp_path, capsys):
    root = write_folder(tmp_path / "mydata", with_test=True)
    start_run(own_config("folder", root, algorithm="semi"), tmp_path / "run", quiet=True)
    split = json.loads((tmp_path / "run/split.json").read_text())
    assert split["settings"]["test"] == "given" and split["test_indices"] == []
    code, _, err = run_cli(["predict", tmp_path / "run", "--images", root / "test", "--out", tmp_path / "p.csv"],
                           capsys)
    assert code == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    predicted = [line.split(",")[1] for line in rows]
    truth = [line.split(",")[0].split("/test/")[1].split("/")[0] for line in rows]
    names = [f"d{k}" for k in range(10)]
    confusion = np.zeros((10, 10), dtype=int)
    for t, p in zip(truth, predicted):
        confusion[names.index(t), names.index(p)] += 1
    code, _, _ = run_cli(["evaluate", tmp_path / "run"], capsys)
    assert code == 0
    assert confusion.tolist() == json.loads((tmp_path / "run/results.json").read_text())["confusion_matrix"]


def test_arrays_train_to_results(tmp_path):
    images, labels, labeled, unlabeled, source = digits_parts()
    np.savez(tmp_path / "mine.npz", x_labeled=images[labeled], y_labeled=labels[labeled],
             x_unlabeled=images[unlabeled], x_test=source.test.images[:, 0], y_test=source.test.labels,
             class_names=np.array([f"digit {k}" for k in range(10)]))
    results = start_run(own_config("arrays", tmp_path / "mine.npz"), tmp_path / "run", quiet=True)
    assert sum(map(sum, results["confusion_matrix"])) == len(source.test.labels)
    data = prepare_data(own_config("arrays", tmp_path / "mine.npz"), "cpu")
    assert data.class_names[3] == "digit 3" and data.split.labeled_counts == LABELED


def test_protocol_keys_do_not_apply_to_own_data(tmp_path):
    with pytest.raises(ConfigError, match="'data.imbalance_ratio': data.dataset=folder takes its labeled"):
        load_config(None, ["data.dataset=folder", "data.imbalance_ratio=10"])
    with pytest.raises(ConfigError, match="data.dataset=arrays"):
        load_config(CONFIGS / "quickstart.yaml", ["data.dataset=arrays"])


def test_bad_folders_are_one_line(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "d")
    (root / "labeled" / "empty").mkdir()
    with pytest.raises(DataError, match="labeled class folder .*empty holds no image files"):
        prepare_data(own_config("folder", root), "cpu")
    (root / "labeled" / "empty").rmdir()
    (root / "test" / "d99").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "test" / "d99" / "x.png")
    with pytest.raises(DataError, match=r"test classes \['d99'\] have no folder"):
        prepare_data(own_config("folder", root), "cpu")
    (root / "test" / "d99" / "x.png").unlink()
    (root / "test" / "d99").rmdir()
    (root / "test").rmdir()
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(root / "unlabeled" / "big.png")
    with pytest.raises(DataError, match="different sizes \\(8x8, 12x12\\); set data.image_size"):
        prepare_data(own_config("folder", root), "cpu")
    assert prepare_data(own_config("folder", root, "data.image_size=8"), "cpu").image_size == 8
    (root / "unlabeled" / "big.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n broken")
    with pytest.raises(DataError, match="cannot read image .*big.png"):
        prepare_data(own_config("folder", root), "cpu")
    (root / "unlabeled" / "big.png").unlink()
    with pytest.raises(ConfigError, match="'train.batch_size': 64 labeled images per step, but the split holds"):
        prepare_data(own_config("folder", root, "train.batch_size=64"), "cpu")


def test_bad_arrays_are_one_line(tmp_path):
    images, labels, labeled, unlabeled, _ = digits_parts()
    np.savez(tmp_path / "a.npz", x_labeled=images[labeled].astype(np.float32), y_labeled=labels[labeled],
             x_unlabeled=images[unlabeled])
    with pytest.raises(DataError, match="x_labeled in .*a.npz must be uint8"):
        prepare_data(own_config("arrays", tmp_path / "a.npz"), "cpu")
    np.savez(tmp_path / "b.npz", x_labeled=images[labeled], y_labeled=labels[labeled][:-1],
             x_unlabeled=images[unlabeled])
    with pytest.raises(DataError, match="has 49 x_labeled images but 48 y_labeled labels"):
        prepare_data(own_config("arrays", tmp_path / "b.npz"), "cpu")
    np.savez(tmp_path / "c.npz", x_labeled=images[labeled], y_labeled=labels[labeled])
    with pytest.raises(DataError, match="needs x_labeled, y_labeled, x_unlabeled"):
        prepare_data(own_config("arrays", tmp_path / "c.npz"), "cpu")
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read .*d.npz"):
        prepare_data(own_config("arrays", tmp_path / "d.npz"), "cpu")


def test_the_example_runs_the_whole_path(tmp_path):
    """examples/own_folder.py: build the folder, train, report, predict (a short run)."""
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "examples/own_folder.py"), "--out", str(tmp_path),
                             "--iterations", "6"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "balanced accuracy on the test folder" in result.stdout and "| own_data | semi | 0 |" in result.stdout
    assert "digit_9 test images predicted as" in result.stdout
    assert (tmp_path / "runs/semi/seed0/results.json").is_file()
