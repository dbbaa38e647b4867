"""Per-image PIL reference of the augmentations in :mod:`cissl.data.augment` (needs Pillow).

This is the FixMatch-family recipe written image by image with PIL, as the field's code bases
run it; the batched implementation is tested against it op by op. Not used for training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from cissl.data.augment import op_magnitude


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 (C, H, W) -> PIL image (L or RGB)."""
    if image.shape[0] == 1:
        return Image.fromarray(image[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")


def from_pil(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def pil_op(img: Image.Image, op: str, level: int, negative: bool = False) -> Image.Image:
    """One RandAugmentMC op at integer ``level`` (1..9), as FixMatch applies it."""
    size = img.size[0]
    m = op_magnitude(op, level, size)
    signed = -m if negative else m
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Identity":
        return img
    if op == "Brightness":
        return ImageEnhance.Brightness(img).enhance(m)
    if op == "Color":
        return ImageEnhance.Color(img).enhance(m)
    if op == "Contrast":
        return ImageEnhance.Contrast(img).enhance(m)
    if op == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(m)
    if op == "Posterize":
        return ImageOps.posterize(img, int(m))
    if op == "Solarize":
        return ImageOps.solarize(img, int(m))
    if op == "Rotate":
        return img.rotate(signed)
    if op == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, signed, 0, 0, 1, 0))
    if op == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, signed, 1, 0))
    if op == "TranslateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, signed, 0, 1, 0))
    if op == "TranslateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, signed))
    raise ValueError(f"unknown op {op!r}")


def pil_flip_crop(image: np.ndarray, flip: bool, off_x: int, off_y: int, padding: int,
                  mode: str = "reflect") -> np.ndarray:
    """Flip (PIL) then pad and crop (numpy, as torchvision's RandomCrop pads) a (C, H, W) image."""
    img = to_pil(image)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    array = from_pil(img)
    _, h, w = array.shape
    np_mode = "reflect" if mode == "reflect" else "constant"
    padded = np.pad(array, ((0, 0), (padding, padding), (padding, padding)), mode=np_mode)
    return padded[:, off_y:off_y + h, off_x:off_x + w]


def pil_cutout(img: Image.Image, center_x: float, center_y: float, size: int) -> Image.Image:
    """FixMatch's CutoutAbs with a given centre: grey (127) rectangle, inclusive corners."""
    img = img.copy()
    w, h = img.size
    x0 = int(max(0, center_x - size / 2.0))
    y0 = int(max(0, center_y - size / 2.0))
    x1 = int(min(w, x0 + size))
    y1 = int(min(h, y0 + size))
    fill = 127 if img.mode == "L" else (127, 127, 127)
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill)
    return img
