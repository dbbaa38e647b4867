"""cissl predict and the Python API: predictions on image files equal what cissl evaluate scores."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from helpers import tiny_config

import cissl.api as api
from cissl.errors import ConfigError, DataError
from cissl.evaluation.metrics import confusion_matrix
from cissl.evaluation.predict import Predictions, as_run_images, image_files


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    config = tiny_config("train.iterations=20", "train.eval_every=10", "train.checkpoint_every=10",
                         algorithm="semi")
    api.train(config, out)
    return out


def write_test_images(run_dir, folder):
    """The run's test images as PNG files (lossless), named by index, and their labels."""
    from PIL import Image

    trained = api.load_run(run_dir)._trained
    images, labels = trained.data.test.images.cpu().numpy(), trained.data.test.labels.cpu().numpy()
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    return images, labels


def test_predictions_on_png_files_equal_evaluate(trained_run, tmp_path, capsys):
    """The confusion matrix of `cissl predict` on the test images written as PNGs equals the one
    `cissl evaluate` writes for the same checkpoint (SeMi: the balanced head)."""
    _, labels = write_test_images(trained_run, tmp_path / "images")
    code, out, _ = run_cli(["predict", trained_run, "--images", tmp_path / "images", "--out", tmp_path / "p.csv",
                            "--top-k", "2"], capsys)
    assert code == 0 and "balanced head" in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == len(labels) and set(rows[0]) == {"file", "class1", "prob1", "class2", "prob2"}
    names = api.load_run(trained_run).class_names
    predicted = np.array([names.index(r["class1"]) for r in rows])
    assert all(float(r["prob1"]) >= float(r["prob2"]) for r in rows)
    summary = ", ".join(f"{names[k]} {n}" for k, n in enumerate(np.bincount(predicted, minlength=10)) if n)
    assert f"{len(rows)} images (balanced head of ckpt_00000020.pt): {summary}" in out.splitlines()
    code, _, _ = run_cli(["evaluate", trained_run], capsys)
    evaluated = json.loads((trained_run / "results.json").read_text())["confusion_matrix"]
    assert confusion_matrix(predicted, labels, 10).tolist() == evaluated


def test_python_api_predicts_arrays_and_tensors_alike(trained_run):
    run = api.load_run(trained_run)
    images = run._trained.data.test.images[:16].cpu()
    from_tensor = run.predict(images)
    from_array = run.predict(images.numpy()[:, 0])  # (N, H, W) grey, as an image library gives it
    assert torch.equal(from_tensor.probs, from_array.probs)
    assert from_tensor.probs.shape == (16, 10) and torch.allclose(from_tensor.probs.sum(1), torch.ones(16))
    assert run.head == "balanced" and len(run.class_names) == 10
    assert from_tensor.class_names == run.class_names == [str(k) for k in range(10)]  # digits' names


def test_images_are_brought_to_the_run_layout_by_hand():
    """RGB -> grey by ITU-R 601 luminance; grey -> RGB by repetition; a 16 x 16 image is resized to 8 x 8."""
    rgb = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    grey = as_run_images(rgb, 1, 8)
    assert grey.shape == (1, 1, 8, 8) and int(grey[0, 0, 0, 0]) == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    assert grey.dtype == torch.uint8  # the luminance is rounded back to bytes
    assert as_run_images(np.full((2, 8, 8), 7, dtype=np.uint8), 3, 8).tolist() == np.full((2, 3, 8, 8), 7).tolist()
    assert as_run_images(np.full((1, 16, 16), 9, dtype=np.uint8), 1, 8).tolist() == np.full((1, 1, 8, 8), 9).tolist()


@pytest.mark.parametrize("images, message", [(np.zeros((2, 8, 8), dtype=np.float32), "must be uint8"),
                                             (np.zeros((2, 8), dtype=np.uint8), "must be \\(N, H, W\\)"),
                                             (np.zeros((1, 8, 6), dtype=np.uint8), "must be square")])
def test_bad_images_are_one_line(images, message):
    with pytest.raises(DataError, match=message):
        as_run_images(images, 1, 8)


def test_unreadable_image_files_are_named(trained_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG truncated")
    code, _, err = run_cli(["predict", trained_run, "--images", folder], capsys)
    assert code == 2 and "cannot read image" in err and "b.png" in err and len(err.strip().splitlines()) == 1
    (folder / "b.png").unlink()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(folder / "c.png")
    code, _, err = run_cli(["predict", trained_run, "--images", folder], capsys)
    assert code == 2 and "different sizes (8x8, 16x16)" in err
    code, _, err = run_cli(["predict", trained_run, "--images", tmp_path / "none"], capsys)
    assert code == 2 and "no such file or folder" in err


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "balanced accuracy" in out and "torch.Size([5, 10])" in out
    assert (tmp_path / "runs/api_example/results.json").is_file()
    assert "[('fixmatch', [0, 1], (" in out and (tmp_path / "runs/api_sweep/paired.md").is_file()


def test_one_image_file_an_empty_folder_and_a_cut_image(trained_run, tmp_path, capsys):
    """--images names one file: one CSV row, the same prediction as for that file among others, summarised as
    "1 image" (not "1 images"); a folder without image files and an image whose data is cut short (its
    header reads, so only decoding fails) are one line each."""
    from PIL import Image

    write_test_images(trained_run, tmp_path / "images")
    code, out, _ = run_cli(["predict", trained_run, "--images", tmp_path / "images", "--top-k", "1"], capsys)
    rows = list(csv.DictReader(io.StringIO(out[out.index("file,"):])))
    code, one, _ = run_cli(["predict", trained_run, "--images", tmp_path / "images/0003.png", "--top-k", "1"], capsys)
    single = list(csv.DictReader(io.StringIO(one[one.index("file,"):])))
    assert code == 0 and len(single) == 1 and single[0]["class1"] == rows[3]["class1"]
    assert float(single[0]["prob1"]) == pytest.approx(float(rows[3]["prob1"]), abs=1e-6)
    code, one, _ = run_cli(["predict", trained_run, "--images", tmp_path / "images/0003.png", "--out",
                            tmp_path / "one.csv"], capsys)
    assert code == 0 and one == (f"1 image (balanced head of ckpt_00000020.pt): {single[0]['class1']} 1\n"
                                 f"predictions: {tmp_path / 'one.csv'}\n")
    header = (tmp_path / "one.csv").read_text().splitlines()[0]  # without --top-k: the 3 most probable classes
    assert header == "file,class1,prob1,class2,prob2,class3,prob3"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("no images here")
    code, _, err = run_cli(["predict", trained_run, "--images", tmp_path / "empty"], capsys)
    assert code == 2 and f"--images {tmp_path / 'empty'}: no image files (.png, " in err
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:-30])
    code, _, err = run_cli(["predict", trained_run, "--images", tmp_path / "cut.png"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"cannot read image {tmp_path / 'cut.png'}" in err


def test_a_grey_tensor_without_channel_axis_is_read_as_one_channel():
    images = torch.arange(2 * 8 * 8, dtype=torch.uint8).view(2, 8, 8)
    assert torch.equal(as_run_images(images, 1, 8), images[:, None])


def test_reading_image_files_without_pillow_says_which_extra(tmp_path, monkeypatch):
    import sys

    from cissl.evaluation.predict import read_image_files

    monkeypatch.setitem(sys.modules, "PIL", None)  # as without the images extra
    with pytest.raises(DataError, match=r"^reading image files needs Pillow: pip install 'cissl\[images\]'$"):
        read_image_files([tmp_path / "a.png"])


def test_image_files_are_read_grey_when_every_one_is_with_progress_on_stderr_unless_told(tmp_path, monkeypatch):
    import sys

    from PIL import Image

    from cissl.evaluation import predict

    for name, mode in (("a.png", "L"), ("b.png", "L"), ("c.png", "RGB")):
        Image.new(mode, (4, 4), 200 if mode == "L" else (200, 10, 10)).save(tmp_path / name)
    streams, read = [], predict.read_images
    monkeypatch.setattr(predict, "read_images", lambda *args: streams.append(args[3]) or read(*args))
    grey = predict.read_image_files([tmp_path / "a.png", tmp_path / "b.png"])
    assert grey.shape == (2, 1, 4, 4) and grey.dtype == torch.uint8 and (grey == 200).all()
    mine = io.StringIO()
    colour = predict.read_image_files([tmp_path / "a.png", tmp_path / "c.png"], mine)
    assert colour.shape == (2, 3, 4, 4) and colour[1, :, 0, 0].tolist() == [200, 10, 10]
    assert streams == [sys.stderr, mine]  # where read_images reports every 1000 files


def test_predictions_give_the_argmax_and_the_k_most_probable_classes():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    predictions = Predictions(probs, ["a", "b", "c"])
    assert predictions.labels.tolist() == [1, 0]
    values, classes = predictions.top_k(2)
    assert classes.tolist() == [[1, 2], [0, 2]] and torch.equal(values, torch.tensor([[0.7, 0.2], [0.5, 0.3]]))
    values, classes = predictions.top_k(5)  # more than K: every class, most probable first
    assert classes.tolist() == [[1, 2, 0], [0, 2, 1]] and values.shape == (2, 3)


def test_alpha_is_dropped_and_each_layout_keeps_its_pixels():
    """(N, H, W, 4) arrays lose their alpha channel; an (N, H, W, 3) array and the (N, 3, H, W) tensor of the
    same pixels give the same run images; an RGB tensor feeds a grey run as its luminance; a resize is
    PIL's antialiased bilinear; an image of the run's size is left alone."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((2, 8, 8, 1), 255, dtype=np.uint8)], axis=3)
    channels_first = torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())
    assert torch.equal(as_run_images(rgba, 3, 8), channels_first)
    assert torch.equal(as_run_images(rgb, 3, 8), channels_first)
    assert torch.equal(as_run_images(channels_first, 3, 8), channels_first)
    luminance = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[:, None]
    assert as_run_images(channels_first, 1, 8).tolist() == luminance.astype(np.uint8).tolist()
    assert as_run_images(rgba, 1, 8).tolist() == luminance.astype(np.uint8).tolist()
    from PIL import Image

    grey = rng.integers(0, 256, (1, 24, 24), dtype=np.uint8)
    for size in (8, 6):  # PIL's antialiased bilinear resize, to a rounding step
        pil = np.asarray(Image.fromarray(grey[0]).resize((size, size), Image.BILINEAR), dtype=np.int64)
        assert np.abs(as_run_images(grey, 1, size)[0, 0].numpy().astype(np.int64) - pil).max() <= 1, size
    board = np.kron(np.array([[0, 200], [200, 0]], dtype=np.uint8), np.ones((4, 4), dtype=np.uint8))[None]
    assert as_run_images(board, 1, 8).tolist() == board[:, None].tolist()  # the run's size: left alone


@pytest.mark.parametrize("images, message", [(np.zeros((2, 8, 8, 2), dtype=np.uint8), "1, 3 or 4 channels, got "
                                              "shape \\(2, 8, 8, 2\\)"),
                                             (torch.zeros(2, 5, 8, 8, dtype=torch.uint8), "got shape \\(2, 5, 8, 8\\)"),
                                             (torch.zeros(2, 1, 8, 8), "must be uint8 \\(0..255\\), got float32"),
                                             (np.zeros((1, 8, 6, 3), dtype=np.uint8), "square to be resized to "
                                              "8 x 8, got 8 x 6"),
                                             (np.zeros((1, 6, 8), dtype=np.uint8), "8 x 8, got 6 x 8")])
def test_bad_layouts_name_the_shape_or_the_dtype(images, message):
    with pytest.raises(DataError, match=message):
        as_run_images(images, 1, 8)


def test_image_files_are_the_folders_images_recursively_in_sorted_order(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.TIFF", "notes.txt", "sub/e.npy"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == [
        "a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.TIFF"]
    assert image_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # a file given: taken as it is


def test_predict_uses_the_configs_evaluation_batch_unless_told(trained_run, monkeypatch):
    """Batches of train.eval_batch_size by default, of batch_size when given: the probabilities do not change."""
    import cissl.evaluation.predict as predict_module

    run = api.load_run(trained_run)
    images = run._trained.data.test.images[:40].cpu()
    sizes = []
    real = predict_module.predict

    def recording(model, pool, batch_size, policy):
        sizes.append(batch_size)
        return real(model, pool, batch_size, policy)

    monkeypatch.setattr(predict_module, "predict", recording)
    default, small = run.predict(images), run.predict(images, batch_size=7)
    assert sizes == [run._trained.config.train.eval_batch_size, 7]
    assert torch.allclose(default.probs, small.probs, atol=1e-6)


def test_the_python_api_resumes_evaluates_and_loads_a_chosen_checkpoint(trained_run, tmp_path, monkeypatch):
    """Each function of cissl.api does what its command does: load_run from a named checkpoint (the older
    one predicts with its own weights), predict_files on a folder (the files sorted, the same probabilities
    as the array; its progress on the given stream), evaluate from a checkpoint, resume of a run cut after its
    first checkpoint."""
    import shutil

    from cissl.engine.checkpoint import load_checkpoint

    older = trained_run / "checkpoints/ckpt_00000010.pt"
    newest, first = api.load_run(trained_run), api.load_run(trained_run, checkpoint=older)
    assert first.checkpoint == older and newest.checkpoint == trained_run / "checkpoints/ckpt_00000020.pt"
    assert first.config.train.iterations == 20 and first.config.algorithm.name == "semi"
    images = newest._trained.data.test.images[:12].cpu()
    assert not torch.allclose(first.predict(images).probs, newest.predict(images).probs)
    write_test_images(trained_run, tmp_path / "images")
    files, from_files = newest.predict_files(tmp_path / "images", stream=io.StringIO())
    assert [f.name for f in files[:3]] == ["0000.png", "0001.png", "0002.png"]
    assert torch.allclose(from_files.probs[:12], newest.predict(images).probs, atol=1e-6)
    listed, from_list = newest.predict_files([files[2], str(files[0])], stream=io.StringIO())  # in the list's order
    assert listed == [files[2], files[0]] and torch.allclose(from_list.probs, from_files.probs[[2, 0]], atol=1e-6)
    with pytest.raises(DataError, match="^predict_files: no files or folders given$"):
        newest.predict_files([])
    seen, read = [], api.read_image_files
    monkeypatch.setattr(api, "read_image_files", lambda files, stream=None: seen.append(stream) or read(files, stream))
    progress = io.StringIO()
    newest.predict_files(files[0], stream=progress)
    assert seen == [progress]  # the reader's progress lines (every 1000 files) go to the caller's stream
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    at_ten = api.evaluate(run, checkpoint=run / "checkpoints/ckpt_00000010.pt")
    assert at_ten["checkpoint"] == str(run / "checkpoints/ckpt_00000010.pt")
    assert json.loads((run / "results.json").read_text()) == at_ten
    assert api.evaluate(run)["checkpoint"] == str(run / "checkpoints/ckpt_00000020.pt")
    (run / "checkpoints/ckpt_00000020.pt").unlink()
    (run / "results.json").unlink()
    resumed = api.resume(run)
    assert json.loads((run / "results.json").read_text()) == resumed and resumed["iterations"] == 20
    whole, again = (load_checkpoint(folder / "checkpoints/ckpt_00000020.pt") for folder in (trained_run, run))
    assert all(torch.equal(a, b) for a, b in zip(whole["model"].values(), again["model"].values()))


def test_the_python_api_names_a_config_of_the_wrong_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"^train needs a Config \(cissl.api.load_config\(path, overrides\)\), "
                                          r"got dict$"):
        api.train({"train": {"iterations": 2}}, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^overrides must be a list of 'key=value' strings, e.g. "
                                          r"\['train.iterations=3'\]; got a string$"):
        api.load_config(None, "train.iterations=3")
    assert not (tmp_path / "run").exists()
