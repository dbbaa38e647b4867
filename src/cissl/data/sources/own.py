"""A user's own data, whose labeled / unlabeled / test parts are given rather than drawn by the
long-tailed protocol: a folder of image files (``data.dataset=folder``) or numpy arrays in an
``.npz`` file (``data.dataset=arrays``).

Folder (``data.root``)::

    labeled/<class>/*.png|jpg|...   a few labeled images per class (class names: the folder names)
    unlabeled/**/*.png|jpg|...      many images without labels
    test/<class>/*                  optional; else a seeded, stratified share of the labeled images
                                    (``data.test_fraction``) is held out, stated in split.json

Arrays (``data.root`` is the ``.npz`` file): ``x_labeled`` uint8 (N, H, W) or (N, H, W, C),
``y_labeled`` int (N,), ``x_unlabeled``, optionally ``x_test`` / ``y_test`` and ``class_names``.

Images are brought to one size (``data.image_size``, needed when they differ) and one channel count
(grey if every image is grey, else RGB); the per-channel mean / std come from the labeled and
unlabeled training images and are recorded in split.json.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet, channel_statistics
from cissl.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow opens 16-bit PNG / TIFF grey in these
GREY_MODES = ("L", "1", *SIXTEEN_BIT_MODES)


def eight_bit(image):
    """A Pillow image whose values fit uint8: 16-bit grey scaled from 0..65535 to 0..255 (x / 257, rounded, as
    a bit-depth reduction; Pillow's convert("L") clips every value above 255 to white). Float images ("F")
    have no known range and are refused."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        raise ValueError("32-bit float pixels have no known range; save the images with 8 or 16 bits")
    return image


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(files: list[Path], size: int | None, grey: bool, stream=None) -> np.ndarray:
    """uint8 (N, C, H, W) of image files (Pillow), resized to ``size`` when given; progress on ``stream``
    every 1000 files."""
    from PIL import Image

    arrays = []
    for i, path in enumerate(files, start=1):
        try:
            with Image.open(path) as image:
                image.load()
                image = eight_bit(image).convert("L" if grey else "RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(image))
        except Exception as exc:  # truncated, not an image, unreadable
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from None
        if stream is not None and i % 1000 == 0:  # once the i-th is read
            print(f"[cissl] read {i}/{len(files)} images", file=stream, flush=True)
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"the images have different sizes ({', '.join(f'{h}x{w}' for h, w in shapes)}); set "
                        f"data.image_size to resize them to one")
    if shapes and shapes[0][0] != shapes[0][1]:
        raise DataError(f"the images are {shapes[0][0]}x{shapes[0][1]}, not square; set data.image_size")
    stacked = np.stack(arrays)
    return stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)


def is_grey(files: list[Path]) -> bool:
    from PIL import Image

    for path in files:
        try:
            with Image.open(path) as image:
                if image.mode not in GREY_MODES:
                    return False
        except Exception as exc:
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from None
    return True


def _class_folders(folder: Path, role: str) -> dict[str, list[Path]]:
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = _files(sub)
        if not files:
            raise DataError(f"{role} class folder {sub} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        classes[sub.name] = files
    if not classes:
        raise DataError(f"{folder} holds no class folders: put each class's images in {folder}/<class>/")
    return classes


def require_pillow() -> None:
    """Raise a ``DataError`` naming the extra to install when Pillow (the folder reader's images) is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("data.dataset=folder reads images with Pillow: pip install 'cissl[images]'") from None


def load_folder_source(root: str | Path, image_size: int | None) -> DataSource:
    require_pillow()
    root = Path(root)
    for part in ("labeled", "unlabeled"):
        if not (root / part).is_dir():
            raise DataError(f"folder data: {root / part} is missing (data.root must hold labeled/<class>/ and "
                            f"unlabeled/)")
    labeled = _class_folders(root / "labeled", "labeled")
    names = list(labeled)
    unlabeled_files = _files(root / "unlabeled")
    if not unlabeled_files:
        raise DataError(f"folder data: {root / 'unlabeled'} holds no image files")
    test = _class_folders(root / "test", "test") if (root / "test").is_dir() else None
    if test is not None and set(test) - set(names):
        raise DataError(f"folder data: test classes {sorted(set(test) - set(names))} have no folder in "
                        f"{root / 'labeled'} (classes: {', '.join(names)})")
    every = [f for files in labeled.values() for f in files] + unlabeled_files
    every += [f for files in (test or {}).values() for f in files]
    grey = is_grey(every)
    read = lambda files: read_images(files, image_size, grey)  # noqa: E731
    label_of = {name: k for k, name in enumerate(names)}

    def labeled_set(classes: dict[str, list[Path]]) -> ImageSet:
        files = [f for files in classes.values() for f in files]
        labels = np.concatenate([np.full(len(files), label_of[name]) for name, files in classes.items()])
        return ImageSet(read(files), labels)

    return _with_statistics("folder", labeled_set(labeled), ImageSet(read(unlabeled_files), None),
                            None if test is None else labeled_set(test), names)


def load_arrays_source(path: str | Path, image_size: int | None) -> DataSource:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"arrays data: cannot read {path} ({exc}); data.root must be an .npz file") from None
    missing = [key for key in ("x_labeled", "y_labeled", "x_unlabeled") if key not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise DataError(f"arrays data: {path} needs x_labeled, y_labeled, x_unlabeled (and x_test with y_test); "
                        f"missing {missing or ['x_test or y_test']}; it has {sorted(arrays)}")
    images = {key: _channels_first(arrays[key], key, path) for key in ("x_labeled", "x_unlabeled", "x_test")
              if key in arrays}
    channels = {a.shape[1] for a in images.values()}
    if len(channels) > 1:
        raise DataError(f"arrays data: {path} mixes grey and colour images ({sorted(channels)} channels)")
    sizes = {a.shape[2:] for a in images.values()}
    if image_size is None and len(sizes) > 1:
        raise DataError(f"arrays data: {path} holds images of sizes {sorted(sizes)}; set data.image_size")
    if image_size is not None:
        from cissl.data.sources.stl10 import resize_uint8

        images = {key: resize_uint8(a, image_size) for key, a in images.items()}
    labels = {key: _labels(arrays[key], key, path) for key in ("y_labeled", "y_test") if key in arrays}
    for x, y in (("x_labeled", "y_labeled"), ("x_test", "y_test")):
        if x in images and len(images[x]) != len(labels[y]):
            raise DataError(f"arrays data: {path} has {len(images[x])} {x} images but {len(labels[y])} {y} labels")
    k = int(max(int(y.max()) for y in labels.values())) + 1
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else [str(i) for i in range(k)]
    if len(names) < k:
        raise DataError(f"arrays data: {path} labels go up to {k - 1} but class_names lists {len(names)} names")
    test = ImageSet(images["x_test"], labels["y_test"]) if "x_test" in images else None
    return _with_statistics("arrays", ImageSet(images["x_labeled"], labels["y_labeled"]),
                            ImageSet(images["x_unlabeled"], None), test, names)


def _channels_first(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"arrays data: {key} in {path} must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"arrays data: {key} in {path} must be (N, H, W) or (N, H, W, 1|3), got {array.shape}")
    if array.shape[2] != array.shape[3]:
        raise DataError(f"arrays data: {key} in {path} holds {array.shape[2]}x{array.shape[3]} images, not square")
    if len(array) == 0:
        raise DataError(f"arrays data: {key} in {path} is empty")
    return np.ascontiguousarray(array)


def _labels(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (len(array) and array.min() < 0):
        raise DataError(f"arrays data: {key} in {path} must be non-negative integers (N,), got {array.dtype} "
                        f"{array.shape}")
    return array.astype(np.int64)


def _with_statistics(name: str, labeled: ImageSet, unlabeled: ImageSet, test: ImageSet | None,
                     class_names: list[str]) -> DataSource:
    """The source, with the per-channel mean / std of its labeled and unlabeled images (in [0, 1])."""
    mean, std = channel_statistics(labeled.images, unlabeled.images)
    std = tuple(max(v, 1e-3) for v in std)  # a constant image set: no division by zero
    return DataSource(name, labeled, test, class_names, mean, std, unlabeled=unlabeled)
