"""A user's own data: a folder of images or an .npz of arrays, trained end to end (no mocks)."""

import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from conftest import CONFIGS, run_cli

from cissl.config import load_config
from cissl.data.sources import load_digits_source
from cissl.data.sources.own import load_arrays_source, load_folder_source
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
    source = load_folder_source(root, None)  # split.json records the data's statistics as README says
    assert split["settings"]["mean"] == list(source.mean) and split["settings"]["std"] == list(source.std)
    assert split["settings"]["image_shape"] == [1, 8, 8]  # scikit-learn's digits
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
    # streamed from host memory (data.stream_images=always): the unlabeled pool has no labels and the same pixels
    streamed = prepare_data(own_config("arrays", tmp_path / "mine.npz", "data.stream_images=always"), "cpu")
    rows = torch.tensor([4, 0, 299])
    assert streamed.unlabeled.labels is None and torch.equal(streamed.unlabeled.take(rows)[0],
                                                              data.unlabeled.take(rows)[0])


def test_protocol_keys_do_not_apply_to_own_data(tmp_path):
    with pytest.raises(ConfigError, match="'data.imbalance_ratio': data.dataset=folder takes its labeled"):
        load_config(None, ["data.dataset=folder", "data.imbalance_ratio=10"])
    with pytest.raises(ConfigError, match="data.dataset=arrays"):
        load_config(CONFIGS / "quickstart.yaml", ["data.dataset=arrays"])


def test_bad_folders_are_one_line(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "d")
    from cissl.data.sources.own import IMAGE_SUFFIXES

    suffixes = re.escape(", ".join(IMAGE_SUFFIXES))
    (root / "labeled" / "empty").mkdir()
    with pytest.raises(DataError, match=rf"^labeled class folder .*empty holds no image files \({suffixes}\)$"):
        prepare_data(own_config("folder", root), "cpu")
    (root / "labeled" / "empty").rmdir()
    (root / "test" / "d99").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^test class folder .*d99 holds no image files \({suffixes}\)$"):
        prepare_data(own_config("folder", root), "cpu")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "test" / "d99" / "x.png")
    classes = ", ".join(sorted(p.name for p in (root / "labeled").iterdir()))
    with pytest.raises(DataError, match=rf"^folder data: test classes \['d99'\] have no folder in "
                                        rf"{re.escape(str(root / 'labeled'))} \(classes: {classes}\)$"):
        prepare_data(own_config("folder", root), "cpu")
    (root / "test" / "d99" / "x.png").unlink()
    (root / "test" / "d99").rmdir()
    (root / "test").rmdir()
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(root / "unlabeled" / "big.png")
    with pytest.raises(DataError, match="different sizes \\(8x8, 12x12\\); set data.image_size"):
        prepare_data(own_config("folder", root), "cpu")
    assert prepare_data(own_config("folder", root, "data.image_size=8"), "cpu").image_size == 8
    (root / "unlabeled" / "big.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n broken")
    with pytest.raises(DataError, match=r"^cannot read image .*big.png \(UnidentifiedImageError: "):
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


def small_arrays(rng, n=6, size=8, colour=False, labels=(0, 1, 2, 0, 1, 2)):
    shape = (n, size, size, 3) if colour else (n, size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8), np.array(labels[:n])


@pytest.mark.parametrize("layout", ["grey", "grey_last", "colour_last"])
def test_arrays_reader_takes_channels_last_images(tmp_path, layout):
    """(N, H, W) and (N, H, W, 1) are grey, (N, H, W, 3) colour; each image comes out (C, H, W) with its
    own pixels (channel c of image i at (y, x) is the file's [i, y, x, c])."""
    rng = np.random.default_rng(0)
    x, y = small_arrays(rng, colour=layout == "colour_last")
    u, _ = small_arrays(rng, n=4, colour=layout == "colour_last")
    if layout == "grey_last":
        x, u = x[..., None], u[..., None]
    np.savez(tmp_path / "d.npz", x_labeled=x, y_labeled=y, x_unlabeled=u)
    source = load_arrays_source(tmp_path / "d.npz", None)
    channels = 3 if layout == "colour_last" else 1
    assert source.train.images.shape == (6, channels, 8, 8) and source.unlabeled.images.shape == (4, channels, 8, 8)
    assert source.train.images.flags["C_CONTIGUOUS"]
    def channels_first(images):
        return images.transpose(0, 3, 1, 2) if images.ndim == 4 else images[:, None]

    assert np.array_equal(source.train.images, channels_first(x)) and source.test is None
    pixels = np.concatenate([channels_first(x), channels_first(u)]) / 255.0
    assert np.allclose(source.mean, pixels.mean(axis=(0, 2, 3))) and np.allclose(source.std, pixels.std(axis=(0, 2, 3)))


def test_arrays_reader_class_names_and_test_split(tmp_path):
    """Class names are the file's, else 0..K-1 with K from the largest label of the labeled and test
    labels; the statistics come from the labeled and unlabeled images only; a constant image set's std is
    floored (no division by zero when normalising)."""
    rng = np.random.default_rng(1)
    x, y = small_arrays(rng)
    u = np.full((3, 8, 8), 40, np.uint8)
    t = np.full((2, 8, 8), 255, np.uint8)
    np.savez(tmp_path / "d.npz", x_labeled=np.full_like(x, 40), y_labeled=y.astype(np.uint8), x_unlabeled=u,
             x_test=t, y_test=np.array([3, 0], dtype=np.int32))
    source = load_arrays_source(tmp_path / "d.npz", None)
    assert source.class_names == ["0", "1", "2", "3"] and source.test.labels.tolist() == [3, 0]
    assert source.name == "arrays" and source.train.labels.dtype == source.test.labels.dtype == np.int64
    assert np.array_equal(source.test.images, t[:, None])
    assert source.mean == pytest.approx((40 / 255,)) and source.std == (1e-3,)
    np.savez(tmp_path / "n.npz", x_labeled=x, y_labeled=y, x_unlabeled=u, class_names=np.array(["a", "b", "c"]))
    assert load_arrays_source(tmp_path / "n.npz", None).class_names == ["a", "b", "c"]
    np.savez(tmp_path / "m.npz", x_labeled=x, y_labeled=y, x_unlabeled=u, class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="labels go up to 2 but class_names lists 2 names"):
        load_arrays_source(tmp_path / "m.npz", None)


def test_arrays_reader_sizes_and_resizing(tmp_path):
    rng = np.random.default_rng(2)
    x, y = small_arrays(rng, size=8)
    u, _ = small_arrays(rng, n=3, size=12)
    np.savez(tmp_path / "d.npz", x_labeled=x, y_labeled=y, x_unlabeled=u)
    with pytest.raises(DataError, match=r"holds images of sizes \[\(8, 8\), \(12, 12\)\]; set data.image_size"):
        load_arrays_source(tmp_path / "d.npz", None)
    source = load_arrays_source(tmp_path / "d.npz", 16)
    assert source.train.images.shape == (6, 1, 16, 16) and source.unlabeled.images.shape == (3, 1, 16, 16)
    from cissl.data.sources.stl10 import resize_uint8

    assert np.array_equal(source.unlabeled.images, resize_uint8(u[:, None], 16))
    from cissl.data.sources import load_source

    through_config = load_source(own_config("arrays", tmp_path / "d.npz", "data.image_size=16").data)
    assert np.array_equal(through_config.unlabeled.images, source.unlabeled.images)  # data.image_size reaches it


@pytest.mark.parametrize("change, message", [
    (dict(x_unlabeled=np.zeros((3, 8, 8, 3), np.uint8)), r"mixes grey and colour images \(\[1, 3\] channels\)"),
    (dict(x_unlabeled=np.zeros((3, 8, 8, 2), np.uint8)), r"x_unlabeled in .* must be \(N, H, W\) or \(N, H, W, 1\|3\)"),
    (dict(x_unlabeled=np.zeros((3, 3, 8, 8), np.uint8)), r"1\|3\), got \(3, 3, 8, 8\)"),
    (dict(x_unlabeled=np.zeros((3, 8, 6), np.uint8)), "x_unlabeled in .* holds 8x6 images, not square"),
    (dict(x_unlabeled=np.zeros((0, 8, 8), np.uint8)), "x_unlabeled in .* is empty"),
    (dict(y_labeled=np.array([0, 1, 2, 0, 1, -1])), r"y_labeled in .* must be non-negative integers \(N,\)"),
    (dict(y_labeled=np.zeros((6, 1), np.int64)), r"y_labeled .* integers \(N,\), got int64 \(6, 1\)"),
    (dict(y_labeled=np.zeros(6, np.float32)), "y_labeled in .* must be non-negative integers"),
    (dict(x_test=np.zeros((2, 8, 8), np.uint8)), r"missing \['x_test or y_test'\]"),
    (dict(x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0])), "has 2 x_test images but 1 y_test labels"),
    (dict(class_names=np.array(["a", "b", "c"], dtype=object)), "cannot read .*allow_pickle"),
])
def test_bad_arrays_are_named(tmp_path, change, message):
    """Each wrong part of an .npz is one line naming the key and what is allowed; object arrays are not
    unpickled (an .npz from elsewhere must not run code)."""
    rng = np.random.default_rng(3)
    x, y = small_arrays(rng)
    np.savez(tmp_path / "d.npz", **{**dict(x_labeled=x, y_labeled=y, x_unlabeled=np.zeros((3, 8, 8), np.uint8)),
                                    **change})
    with pytest.raises(DataError, match=f"^arrays data: .*{message}"):
        load_arrays_source(tmp_path / "d.npz", None)
    if message.startswith(("y_", "x_")):  # the key's message names the file
        with pytest.raises(DataError, match=re.escape(str(tmp_path / "d.npz"))):
            load_arrays_source(tmp_path / "d.npz", None)


def test_folder_of_colour_images_reads_each_pixel_and_resizes_as_pil(tmp_path):
    """The folder source on colour images (every other test uses grey digits): RGB files come out
    (3, H, W) with their own pixels; a grey image beside them is read as RGB (its level in every
    channel); data.image_size resizes with PIL's bilinear filter; files that are not images (notes,
    a folder named like one) are passed over."""
    from PIL import Image

    rng = np.random.default_rng(4)
    colour = {name: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for name in ("cat/a", "cat/b", "dog/c")}
    for name, pixels in colour.items():
        (tmp_path / "labeled" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "labeled" / f"{name}.png")
    (tmp_path / "unlabeled" / "more.png").mkdir(parents=True)  # a folder, not an image
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "unlabeled" / "g.png")
    (tmp_path / "unlabeled" / "notes.txt").write_text("not an image")
    source = load_folder_source(tmp_path, None)
    assert source.class_names == ["cat", "dog"] and source.train.labels.tolist() == [0, 0, 1]
    assert source.name == "folder" and source.train.labels.dtype == np.int64
    expected = np.stack([colour[n] for n in ("cat/a", "cat/b", "dog/c")]).transpose(0, 3, 1, 2)
    assert np.array_equal(source.train.images, expected)
    assert source.unlabeled.images.shape == (1, 3, 8, 8)
    assert all(np.array_equal(source.unlabeled.images[0, c], grey) for c in range(3))
    resized = load_folder_source(tmp_path, 5)
    pil = np.asarray(Image.fromarray(colour["dog/c"]).resize((5, 5), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(resized.train.images[2], pil)


def test_sixteen_bit_grey_images_are_scaled_to_eight_bits_and_float_images_refused(tmp_path):
    """A 16-bit grey PNG (Pillow mode I;16) is grey, its values x / 257 rounded (0..65535 -> 0..255): Pillow's
    own conversion clipped every value above 255 to white. Beside an RGB image each channel holds that level.
    A 32-bit float TIFF has no known range: one line naming it."""
    from PIL import Image

    from cissl.data.sources.own import is_grey, read_images

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16" and is_grey([tmp_path / "deep.png"])
    scaled = np.rint(deep / 257.0).astype(np.uint8)
    assert scaled.max() == 245 and read_images([tmp_path / "deep.png"], None, True).tolist() == [[scaled.tolist()]]
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    both = read_images([tmp_path / "deep.png", tmp_path / "colour.png"], None, False)
    assert both.shape == (2, 3, 8, 8) and all(np.array_equal(both[0, c], scaled) for c in range(3))
    half = read_images([tmp_path / "deep.png"], 4, True)[0, 0]  # resized after the scaling, as an 8-bit image
    assert np.array_equal(half, np.asarray(Image.fromarray(scaled).resize((4, 4), Image.BILINEAR)))
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"^cannot read image .*float.tif \(ValueError: 32-bit float pixels have no "
                                        r"known range; save the images with 8 or 16 bits\)$"):
        read_images([tmp_path / "float.tif"], None, False)


def test_folder_images_not_square_and_progress(tmp_path):
    from PIL import Image

    from cissl.data.sources.own import read_images

    files = []
    for i in range(1001):
        files.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(np.full((2, 2), i % 256, np.uint8)).save(files[-1])
    stream = io.StringIO()
    images = read_images(files, None, grey=True, stream=stream)
    assert stream.getvalue() == "[cissl] read 1000/1001 images\n"
    assert images.shape == (1001, 1, 2, 2) and images[1000, 0, 0, 0] == 1000 % 256
    files[999].write_bytes(b"not a png")  # the 1000th: no line claims it read
    stream = io.StringIO()
    with pytest.raises(DataError, match="0999.png"):
        read_images(files, None, grey=True, stream=stream)
    assert stream.getvalue() == ""
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match=r"the images are 4x6, not square; set data.image_size"):
        read_images([tmp_path / "wide.png"], None, grey=True)
    assert read_images([tmp_path / "wide.png"], 3, grey=False).shape == (1, 3, 3, 3)


def test_a_folder_missing_a_part_is_named(tmp_path, monkeypatch):
    from PIL import Image

    with pytest.raises(DataError, match=r"folder data: .*labeled is missing \(data.root must hold labeled/<class>/"):
        load_folder_source(tmp_path, None)
    (tmp_path / "labeled").mkdir()
    (tmp_path / "unlabeled").mkdir()
    with pytest.raises(DataError, match=r"labeled holds no class folders: put each class's images in .*/<class>/"):
        load_folder_source(tmp_path, None)
    (tmp_path / "labeled" / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "labeled" / "a" / "x.png")
    with pytest.raises(DataError, match="folder data: .*unlabeled holds no image files"):
        load_folder_source(tmp_path, None)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as without the images extra
    with pytest.raises(DataError,
                       match=r"^data.dataset=folder reads images with Pillow: pip install 'cissl\[images\]'$"):
        load_folder_source(tmp_path, None)
