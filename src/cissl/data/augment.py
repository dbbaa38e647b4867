"""Batched weak / strong augmentation on any device, with per-sample randomness (spec section 2).

Images enter as uint8 (N, C, H, W) tensors and leave as float32 in [0, 1]. Every op works on a
whole batch with per-sample parameters; the only Python loops run over the 14 RandAugment ops and
the op slots, never over samples. Intermediate images are float tensors holding integer values
0..255 and each op rounds like its PIL counterpart (see :mod:`cissl.data.augment_pil`, the
per-image reference the tests compare against).

- weak (labeled and weak views): horizontal flip (p 0.5; ``horizontal_flip=False``: none, as FixMatch on
  SVHN), then a random crop of size S from the image padded by ``crop_padding`` (reflect by default).
- strong: weak, then RandAugmentMC(n, 10) of FixMatch: ``n`` ops drawn with replacement from
  :data:`OPS`, each with an integer level v uniform in 1..9 and applied with probability 0.5,
  signed ops flipped with probability 0.5; then Cutout (always): a grey (127) square of side L
  with inclusive end coordinates (up to (L+1)^2 px), centre uniform in the image, clipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# FixMatch RandAugmentMC op pool, in its order. Magnitudes for level v in 1..9 (spec section 2).
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
       "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
ENHANCE_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
LEVELS = range(1, 10)


def op_magnitude(op: str, level: int, image_size: int) -> float:
    """The unsigned magnitude of ``op`` at ``level``, computed as FixMatch's RandAugmentMC does."""
    if op in ENHANCE_OPS:
        return float(level) * 0.9 / 10 + 0.05          # factor 0.14 .. 0.86
    if op == "Posterize":
        return int(level * 4 / 10) + 4                  # bits kept 4 .. 7
    if op == "Rotate":
        return int(level * 30 / 10)                     # degrees 3 .. 27
    if op in ("ShearX", "ShearY"):
        return float(level) * 0.3 / 10                  # shear 0.03 .. 0.27
    if op == "Solarize":
        return 256 - int(level * 256 / 10)              # threshold 231 .. 26
    if op in ("TranslateX", "TranslateY"):
        return int(float(level) * 0.3 / 10 * image_size)  # px 0 .. 8 at 32
    return 0.0


# ----------------------------------------------------------------------------- single ops
# Each takes x: float (n, C, H, W) with integer values 0..255 and per-sample parameters (n,).


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend: degenerate + factor * (x - degenerate), truncated, clipped to 0..255."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)
    return out.clamp_(0, 255).floor_()


def grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, integer rounding); identity for one channel."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def brightness(x, factor):
    return _blend(torch.zeros_like(x), x, factor)


def color(x, factor):
    return _blend(grey(x).expand_as(x), x, factor)


def contrast(x, factor):
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    degenerate = torch.floor(mean + 0.5).expand_as(x)
    return _blend(degenerate, x, factor)


def sharpness(x, factor):
    """Blend with PIL's SMOOTH filter (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13; border kept)."""
    c = x.shape[1]
    kernel = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(x, kernel / 13, padding=1, groups=c)
    smooth = torch.floor(smooth.clamp(0, 255) + 0.5)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth[:, :, 1:-1, 1:-1]
    return _blend(degenerate, x, factor)


def posterize(x, bits):
    step = torch.pow(2.0, 8 - bits.to(x.dtype)).view(-1, 1, 1, 1)
    return torch.floor(x / step) * step


def solarize(x, threshold):
    t = threshold.to(x.dtype).view(-1, 1, 1, 1)
    return torch.where(x >= t, 255 - x, x)


def autocontrast(x):
    """Per channel: map [min, max] to [0, 255] as PIL (int(v * scale + offset)); flat channel kept."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    flat = hi <= lo
    # torch.div, not ``255.0 / t`` (which multiplies by a reciprocal and rounds differently from PIL)
    scale = torch.div(torch.full_like(hi, 255.0), torch.where(flat, torch.ones_like(hi), hi - lo))
    offset = -lo * scale
    out = torch.trunc(x.double() * scale + offset).clamp_(0, 255).to(x.dtype)
    return torch.where(flat, x, out)


def equalize(x):
    """PIL ImageOps.equalize per channel: histogram-based LUT."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    nonzero = hist > 0
    last_bin = 255 - torch.flip(nonzero, dims=[1]).long().argmax(dim=1)
    last_count = hist.gather(1, last_bin[:, None]).squeeze(1)
    step = (h * w - last_count) // 255
    identity = (nonzero.sum(dim=1) <= 1) | (step == 0)
    safe_step = torch.where(identity, torch.ones_like(step), step)[:, None]
    before = torch.cumsum(hist, dim=1) - hist  # pixels below each value
    lut = torch.div(safe_step // 2 + before, safe_step, rounding_mode="floor").clamp_(max=255)
    lut = torch.where(identity[:, None], torch.arange(256, device=x.device).expand_as(lut), lut)
    return lut.gather(1, flat).to(x.dtype).reshape(n, c, h, w)


def affine(x, coeffs, fill: float = 0.0):
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST)`` per sample, bit-exact.

    ``coeffs`` (n, 6) is the inverse map as PIL takes it: output pixel (col i, row j) reads input
    column a*(i+.5) + b*(j+.5) + c, row d*(i+.5) + e*(j+.5) + f, rounded down; ``fill`` outside.
    Pillow evaluates this in 16.16 fixed point (coefficients rounded to 1/65536) for images of
    this size, and so does this function, in int64.
    """
    n, c, h, w = x.shape
    k = coeffs.to(torch.float64)

    def fix(v):
        return torch.floor(v * 65536.0 + 0.5).long().view(n, 1, 1)

    a0, a1, a3, a4 = fix(k[:, 0]), fix(k[:, 1]), fix(k[:, 3]), fix(k[:, 4])
    a2 = fix(k[:, 2] + k[:, 0] * 0.5 + k[:, 1] * 0.5)
    a5 = fix(k[:, 5] + k[:, 3] * 0.5 + k[:, 4] * 0.5)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    ix = (a2 + rows * a1 + cols * a0) >> 16
    iy = (a5 + rows * a4 + cols * a3) >> 16
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    index = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return torch.where(inside.view(n, 1, h, w), out, torch.full_like(out, fill))


def rotate_coeffs(degrees: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """PIL ``Image.rotate(deg)`` (counter-clockwise about the centre) as inverse affine coefficients.

    As PIL: the angle is taken mod 360 and cos / sin are rounded to 15 decimals.
    """
    theta = -torch.deg2rad(torch.remainder(degrees.double(), 360.0))
    cos = torch.round(torch.cos(theta), decimals=15)
    sin = torch.round(torch.sin(theta), decimals=15)
    cx, cy = w / 2.0, h / 2.0
    c = cos * (-cx) + sin * (-cy) + cx
    f = -sin * (-cx) + cos * (-cy) + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


def cutout(x, left, top, size: int, fill: float = 127.0):
    """Grey square with inclusive corners (left, top)..(left+size, top+size), clipped (PIL rectangle)."""
    n, _, h, w = x.shape
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    right = torch.clamp(left + size, max=w).view(n, 1, 1)
    bottom = torch.clamp(top + size, max=h).view(n, 1, 1)
    box = ((cols >= left.view(n, 1, 1)) & (cols <= right) & (rows >= top.view(n, 1, 1)) & (rows <= bottom))
    return torch.where(box.unsqueeze(1), torch.full_like(x, fill), x)


def flip_crop(x, flip, off_x, off_y, padding: int, mode: str = "reflect"):
    """Horizontal flip where ``flip``, then a crop at (off_x, off_y) of the padded image, in one gather.

    Padding is symmetric, so flipping before padding equals flipping the padded image.
    """
    n, c, h, w = x.shape
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding), mode=mode)
    pw = w + 2 * padding
    cols = off_x.view(n, 1) + torch.arange(w, device=x.device).view(1, w)          # (n, w)
    cols = torch.where(flip.view(n, 1), pw - 1 - cols, cols)
    rows = off_y.view(n, 1) + torch.arange(h, device=x.device).view(1, h)          # (n, h)
    index = (rows.view(n, h, 1) * pw + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


# ----------------------------------------------------------------------------- the pipeline


class BatchAugment:
    """Weak and strong views of uint8 batches; all randomness from one ``torch.Generator``."""

    def __init__(self, image_size: int, crop_padding: int | None = None, padding_mode: str = "reflect",
                 randaugment_ops: int = 2, randaugment_prob: float = 0.5, cutout: int = 16,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 gather: bool | None = None, horizontal_flip: bool = True):
        self.flip_probability = 0.5 if horizontal_flip else 0.0  # the draw is made either way: same streams
        self.padding = image_size // 8 if crop_padding is None else crop_padding
        self.padding_mode = padding_mode
        self.num_ops = randaugment_ops
        self.prob = randaugment_prob
        self.cutout_size = cutout
        self.device = torch.device(device)
        self.generator = generator or torch.Generator(device=self.device)
        # gather the samples of each op (CPU), or run each op on the whole batch (no host sync)
        self.gather = self.device.type == "cpu" if gather is None else gather
        # magnitude tables indexed by level - 1, computed exactly as the reference does
        self.tables = {op: torch.tensor([op_magnitude(op, v, image_size) for v in LEVELS],
                                        dtype=torch.float64, device=self.device) for op in OPS}

    # random draws --------------------------------------------------------------------------
    def _uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.device)

    def _randint(self, low: int, high: int, shape) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.generator, device=self.device)

    # views ---------------------------------------------------------------------------------
    # Each view is split into its random draws (``draw_*``, from the generator, in a fixed order)
    # and a pure function of the images and those draws (``apply_*``). The pure part has static
    # shapes and no host synchronisation on accelerators, so it can be replayed from a CUDA graph
    # (:class:`cissl.data.augment_graph.GraphedViews`).
    def draw_weak(self, n: int) -> dict[str, torch.Tensor]:
        """Flip flags (n,) and crop offsets (2, n)."""
        flip = self._uniform(n) < self.flip_probability
        return {"flip": flip, "offset": self._randint(0, 2 * self.padding + 1, (2, n))}

    def draw_strong(self, n: int) -> dict[str, torch.Tensor]:
        """The weak draws, then RandAugmentMC's (:meth:`draw_randaugment`), then the Cutout centres."""
        params = self.draw_weak(n)
        params.update(self.draw_randaugment(n))
        if self.cutout_size > 0:
            cx = self._uniform(n)
            params["cutout_centre"] = torch.stack([cx, self._uniform(n)])
        return params

    def _apply_flip_crop(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        offset = params["offset"]
        return flip_crop(images.float(), params["flip"], offset[0], offset[1], self.padding, self.padding_mode)

    def apply_weak(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flip + crop; uint8 in, float [0, 1] out."""
        return self._apply_flip_crop(images, params).div_(255.0)

    def apply_strong(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flip + crop + RandAugmentMC + Cutout; uint8 in, float [0, 1] out."""
        x = self.randaugment(self._apply_flip_crop(images, params), params)
        if self.cutout_size > 0:
            x = self._apply_cutout(x, params["cutout_centre"])
        return x.div_(255.0)

    def weak(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_weak(images, self.draw_weak(images.shape[0]))

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_strong(images, self.draw_strong(images.shape[0]))

    def draw_randaugment(self, n: int) -> dict[str, torch.Tensor]:
        """Per-sample RandAugmentMC draws: op ids, levels 1..9, applied flags, signs; each (num_ops, n)."""
        k = self.num_ops
        return {
            "op": self._randint(0, len(OPS), (k, n)),
            "level": self._randint(1, 10, (k, n)),
            "applied": self._uniform(k * n).view(k, n) < self.prob,
            "negative": self._uniform(k * n).view(k, n) < 0.5,
        }

    def randaugment(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply RandAugmentMC slot by slot, with the draws of :meth:`draw_randaugment`.

        On CPU (``gather``) the samples that drew an op are gathered and processed together; on
        accelerators every op runs on the whole batch and is kept where drawn (no host
        synchronisation, which gathering would need). Both give the same images.
        """
        for slot in range(params["op"].shape[0]):
            for op_id, op in enumerate(OPS):
                if op == "Identity":
                    continue
                chosen = (params["op"][slot] == op_id) & params["applied"][slot]
                magnitude = self.tables[op][params["level"][slot] - 1]
                sign = torch.where(params["negative"][slot], -1.0, 1.0).to(magnitude.dtype)
                if self.gather:
                    rows = torch.nonzero(chosen).squeeze(1)
                    if rows.numel():
                        x[rows] = apply_op(x[rows], op, magnitude[rows], sign[rows])
                else:
                    x = torch.where(chosen.view(-1, 1, 1, 1), apply_op(x, op, magnitude, sign), x)
        return x

    def _apply_cutout(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        half = self.cutout_size / 2.0
        left = torch.clamp(centre[0] * w - half, min=0).long()  # int() of a non-negative float truncates
        top = torch.clamp(centre[1] * h - half, min=0).long()
        return cutout(x, left, top, self.cutout_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def apply_op(x: torch.Tensor, op: str, magnitude: torch.Tensor, sign: torch.Tensor | None = None):
    """Apply one RandAugment op to every image of ``x`` with per-sample magnitude (and sign)."""
    n, _, h, w = x.shape
    if sign is None:
        sign = torch.ones_like(magnitude)
    if op == "AutoContrast":
        return autocontrast(x)
    if op == "Equalize":
        return equalize(x)
    if op == "Identity":
        return x
    if op == "Brightness":
        return brightness(x, magnitude.to(x.dtype))
    if op == "Color":
        return color(x, magnitude.to(x.dtype))
    if op == "Contrast":
        return contrast(x, magnitude.to(x.dtype))
    if op == "Sharpness":
        return sharpness(x, magnitude.to(x.dtype))
    if op == "Posterize":
        return posterize(x, magnitude)
    if op == "Solarize":
        return solarize(x, magnitude)
    value = magnitude * sign
    one, zero = torch.ones_like(value), torch.zeros_like(value)
    if op == "Rotate":
        coeffs = rotate_coeffs(value, w, h)
    elif op == "ShearX":
        coeffs = torch.stack([one, value, zero, zero, one, zero], dim=1)
    elif op == "ShearY":
        coeffs = torch.stack([one, zero, zero, value, one, zero], dim=1)
    elif op == "TranslateX":
        coeffs = torch.stack([one, zero, value, zero, one, zero], dim=1)
    elif op == "TranslateY":
        coeffs = torch.stack([one, zero, zero, zero, one, value], dim=1)
    else:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return affine(x, coeffs)

