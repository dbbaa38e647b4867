"""Batched augmentation against the per-image PIL reference (spec section 2)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from cissl.data.augment import OPS, BatchAugment, apply_op, cutout, flip_crop, op_magnitude
from cissl.data.augment_pil import from_pil, pil_cutout, pil_flip_crop, pil_op, to_pil


def random_images(n, channels, size=32, seed=0):
    """Half noise, half smooth gradients (so histogram ops see both flat and spread images); the first
    quarter's noise holds a black and a white block (so every clamp at 0 and 255 is reached), the first
    image's top row colours whose grey level sits on PIL's rounding edge, the last image one flat grey."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, size, size)).astype(np.uint8)
    images[: n // 4, :, 2:12, 2:12] = 0
    images[: n // 4, :, 18:28, 18:28] = 255
    ramp = np.linspace(-60, 60, size)[None, None, :, None] * rng.normal(1, 0.5, (n // 2, 1, 1, 1))
    images[n // 2:] = np.clip(rng.normal(128, 40, (n // 2, channels, 1, 1)) + ramp, 0, 255).astype(np.uint8)
    if channels == 3:  # 19595 r + 38470 g + 7471 b = 32767 (mod 65536): one more in the rounding moves the level
        images[0, :, 0, :] = np.tile([[0, 0, 1], [62, 183, 63], [229, 27, 230]], size)[:, :size]  # (r, g, b) columns
    images[-1] = 77
    return images


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_pil_at_every_level(op, channels):
    images = random_images(16, channels)
    x = torch.from_numpy(images).float()
    for level in range(1, 10):
        for negative in (False, True):
            magnitude = torch.full((16,), float(op_magnitude(op, level, 32)), dtype=torch.float64)
            sign = torch.full((16,), -1.0 if negative else 1.0, dtype=torch.float64)
            ours = apply_op(x.clone(), op, magnitude, sign).numpy()
            reference = np.stack([from_pil(pil_op(to_pil(im), op, level, negative)) for im in images])
            # tolerance: exact. The batched ops replicate PIL's integer rounding and its 16.16
            # fixed-point affine sampling, so even geometric ops agree on every pixel.
            assert np.array_equal(ours, reference), (op, level, negative)


def test_equalize_of_few_level_images_matches_pil():
    """PIL leaves an image whose pixels outside its top level number under 255 as it is (step 0), also
    with several levels, and stretches a two-level image with 255 or more in the lower level to 0 and 255.
    32 x 32 images, one channel: 1000 at 200 + 24 at 30 (step 0); 512 at 100 + 512 at 150 (step 2); 600 at
    255 + 424 at 40 (step 1)."""
    images = np.zeros((3, 1, 32, 32), dtype=np.uint8)
    images[0].flat[:] = [200] * 1000 + [30] * 24
    images[1, :, :, :16], images[1, :, :, 16:] = 100, 150
    images[2].flat[:] = [255] * 600 + [40] * 424
    ours = apply_op(torch.from_numpy(images).float(), "Equalize", torch.ones(3, dtype=torch.float64)).numpy()
    reference = np.stack([from_pil(pil_op(to_pil(im), "Equalize", 1, False)) for im in images])
    assert np.array_equal(ours, reference)
    assert np.array_equal(ours[0], images[0]) and set(np.unique(ours[1])) == {0, 255}


def test_magnitude_table_matches_spec():
    assert [round(op_magnitude("Brightness", v, 32), 2) for v in (1, 9)] == [0.14, 0.86]
    assert [op_magnitude("Posterize", v, 32) for v in range(1, 10)] == [4, 4, 5, 5, 6, 6, 6, 7, 7]
    assert [op_magnitude("Rotate", v, 32) for v in (1, 9)] == [3, 27]
    assert [op_magnitude("Solarize", v, 32) for v in (1, 9)] == [231, 26]
    assert [op_magnitude("TranslateX", v, 32) for v in (1, 9)] == [0, 8]
    assert op_magnitude("ShearX", 9, 32) == pytest.approx(0.27)


@pytest.mark.parametrize("size", [32, 64])
def test_every_ops_magnitude_at_every_level_is_the_specs(size):
    """The spec's table (section 2), written here in integer arithmetic where it floors, for all 14 ops
    at every level: the op tests compare ours with PIL at op_magnitude's values, so only this test sees
    a wrong magnitude."""
    spec = {"AutoContrast": lambda v: 0, "Equalize": lambda v: 0, "Identity": lambda v: 0,
            "Posterize": lambda v: 4 + 4 * v // 10, "Rotate": lambda v: 3 * v,
            "Solarize": lambda v: 256 - 256 * v // 10,
            **{op: (lambda v: 0.05 + 0.09 * v) for op in ("Brightness", "Color", "Contrast", "Sharpness")},
            **{op: (lambda v: 0.03 * v) for op in ("ShearX", "ShearY")},
            **{op: (lambda v: 3 * v * size // 100) for op in ("TranslateX", "TranslateY")}}
    assert sorted(spec) == sorted(OPS)
    for op, magnitude in spec.items():
        expected = [magnitude(v) for v in range(1, 10)]
        assert [op_magnitude(op, v, size) for v in range(1, 10)] == pytest.approx(expected), op


@pytest.mark.parametrize("padding", [4, 1])  # 4: 32 px images' default (image_size // 8)
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_flip_crop_matches_reference(mode, padding):
    images = random_images(12, 3)
    rng = np.random.default_rng(1)
    flips = rng.random(12) < 0.5
    offsets = rng.integers(0, 2 * padding + 1, (2, 12))
    ours = flip_crop(torch.from_numpy(images).float(), torch.from_numpy(flips), torch.from_numpy(offsets[0]),
                     torch.from_numpy(offsets[1]), padding, mode).numpy()
    for i, image in enumerate(images):
        ref = pil_flip_crop(image, bool(flips[i]), int(offsets[0, i]), int(offsets[1, i]), padding, mode)
        assert np.array_equal(ours[i], ref)


def test_cutout_geometry_matches_reference():
    images = random_images(6, 3)
    centers = [(0.0, 0.0), (31.9, 31.9), (16.0, 16.0), (3.3, 20.7), (8.0, 8.0), (25.5, 2.2)]
    cx = torch.tensor([c[0] for c in centers])
    cy = torch.tensor([c[1] for c in centers])
    left = torch.clamp(cx - 8, min=0).long()
    top = torch.clamp(cy - 8, min=0).long()
    ours = cutout(torch.from_numpy(images).float(), left, top, 16).numpy()
    for i, image in enumerate(images):
        ref = from_pil(pil_cutout(to_pil(image), centers[i][0], centers[i][1], 16))
        assert np.array_equal(ours[i], ref)
    grey = (ours[2] == 127).all(axis=0)
    assert grey.sum() >= 17 * 17  # inclusive corners: 17 x 17 when not clipped


def test_randaugment_applies_drawn_ops_like_per_image_pil():
    images = random_images(64, 3, seed=4)
    aug = BatchAugment(32, generator=torch.Generator().manual_seed(0))
    params = aug.draw_randaugment(64)
    ours = aug.randaugment(torch.from_numpy(images).float(), params).numpy()
    for i, image in enumerate(images):
        img = to_pil(image)
        for slot in range(2):
            if params["applied"][slot, i]:
                img = pil_op(img, OPS[params["op"][slot, i]], int(params["level"][slot, i]),
                             bool(params["negative"][slot, i]))
        assert np.array_equal(ours[i], from_pil(img)), i


def test_randaugment_draw_frequencies():
    """Ops uniform over the 14 (with replacement), levels uniform over 1..9, each applied w.p. 0.5."""
    aug = BatchAugment(32, generator=torch.Generator().manual_seed(123))
    params = aug.draw_randaugment(20_000)
    ops = torch.bincount(params["op"].flatten(), minlength=14).numpy()
    levels = torch.bincount(params["level"].flatten(), minlength=10).numpy()[1:]
    assert chisquare(ops).pvalue > 0.001
    assert chisquare(levels).pvalue > 0.001
    applied = params["applied"].float().mean().item()
    assert abs(applied - 0.5) < 0.01
    # an op is applied in a given strong view with probability 1 - (1 - 0.5/14)^2
    applied_ops = torch.where(params["applied"], params["op"], torch.full_like(params["op"], 14))
    per_view = torch.stack([(applied_ops == k).any(dim=0) for k in range(14)]).float().mean(dim=1)
    expected = 1 - (1 - 0.5 / 14) ** 2
    assert torch.all((per_view - expected).abs() < 0.01)
    assert abs(params["negative"].float().mean().item() - 0.5) < 0.01  # each op's sign: either, w.p. 1/2


@pytest.mark.parametrize("padding", [None, 2])
def test_weak_draw_frequencies(padding):
    """Flipped w.p. 1/2; crop offsets uniform over 0 .. 2 x padding in each direction (padding: image
    size / 8 by default), the two directions drawn apart."""
    aug = BatchAugment(32, crop_padding=padding, generator=torch.Generator().manual_seed(7))
    params = aug.draw_weak(20_000)
    assert abs(params["flip"].float().mean().item() - 0.5) < 0.01
    pad = 4 if padding is None else padding
    assert params["offset"].shape == (2, 20_000) and int(params["offset"].min()) == 0
    for offsets in params["offset"]:
        counts = torch.bincount(offsets, minlength=2 * pad + 1).numpy()
        assert len(counts) == 2 * pad + 1 and chisquare(counts).pvalue > 0.001
    assert not torch.equal(params["offset"][0], params["offset"][1])


def test_without_horizontal_flip_no_view_is_mirrored_and_every_other_draw_is_the_same():
    """augment.horizontal_flip=false (FixMatch on SVHN): the flip flags are all false; the flip is still drawn,
    so the crop offsets and RandAugment draws (and every later draw of the stream) are those of the default."""
    flipping, still = (BatchAugment(32, generator=torch.Generator().manual_seed(3), horizontal_flip=flip)
                       for flip in (True, False))
    a, b = flipping.draw_strong(1000), still.draw_strong(1000)
    assert a["flip"].any() and not b["flip"].any()
    assert all(torch.equal(a[key], b[key]) for key in a if key != "flip")
    images = torch.from_numpy(random_images(8, 3))
    params = still.draw_weak(8)
    expected = np.stack([pil_flip_crop(im, False, int(x), int(y), 4, "reflect") for im, x, y in
                         zip(images.numpy(), params["offset"][0], params["offset"][1])])
    assert np.array_equal(still.apply_weak(images, params).mul(255).round().byte().numpy(), expected)


def test_the_crop_padding_mode_reaches_the_views():
    """augment.padding_mode=constant pads with zeros (FixMatch's default, reflect, mirrors the border)."""
    images = torch.full((4, 1, 8, 8), 200, dtype=torch.uint8)
    for mode, border in (("constant", 0.0), ("reflect", 200 / 255)):
        aug = BatchAugment(8, crop_padding=2, padding_mode=mode, generator=torch.Generator().manual_seed(0))
        params = {"flip": torch.zeros(4, dtype=torch.bool), "offset": torch.zeros(2, 4, dtype=torch.long)}
        view = aug.apply_weak(images, params)  # offset 0: the top two rows and left two columns are padding
        assert torch.all(view[:, :, :2, :] == border) and torch.all(view[:, :, 2:, 2:] == 200 / 255)


def test_views_shapes_ranges_and_independence():
    images = torch.from_numpy(random_images(32, 3))
    aug = BatchAugment(32, generator=torch.Generator().manual_seed(0))
    weak = aug.weak(images)
    s1, s2 = aug.strong(images), aug.strong(images)
    assert weak.dtype == torch.float32 and weak.shape == images.shape
    assert weak.min() >= 0 and s1.max() <= 1
    assert not torch.equal(s1, s2)  # independent draws per view


def test_same_seed_same_views():
    images = torch.from_numpy(random_images(8, 1, size=28))
    a = BatchAugment(28, cutout=14, generator=torch.Generator().manual_seed(5))
    b = BatchAugment(28, cutout=14, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.strong(images), b.strong(images))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_fixed_params():
    images = random_images(32, 3)
    x = torch.from_numpy(images).float()
    for op in OPS:
        magnitude = torch.full((32,), float(op_magnitude(op, 7, 32)), dtype=torch.float64)
        sign = -torch.ones(32, dtype=torch.float64)
        cpu = apply_op(x.clone(), op, magnitude, sign)
        gpu = apply_op(x.cuda(), op, magnitude.cuda(), sign.cuda()).cpu()
        assert torch.equal(cpu, gpu), op


def test_gather_and_masked_paths_give_the_same_images():
    """The accelerator path (whole-batch ops kept where drawn) equals the CPU gather path."""
    images = random_images(48, 3, seed=9)
    gather = BatchAugment(32, generator=torch.Generator().manual_seed(2), gather=True)
    masked = BatchAugment(32, generator=torch.Generator().manual_seed(2), gather=False)
    params = gather.draw_randaugment(48)
    a = gather.randaugment(torch.from_numpy(images).float(), params)
    b = masked.randaugment(torch.from_numpy(images).float(), params)
    assert torch.equal(a, b)


def test_graphed_views_need_a_cuda_device():
    from cissl.data.augment_graph import GraphedViews

    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        GraphedViews(BatchAugment(32))


@pytest.mark.parametrize("cutout_size, channels", [(16, 3), (5, 1), (1, 3), (0, 3)])
def test_whole_views_match_the_per_image_reference(cutout_size, channels):
    """BatchAugment's weak and strong views end to end, from its own draws, against the per-image
    reference: flip and crop, then (strong) the drawn RandAugment ops and FixMatch's CutoutAbs at the
    drawn centre (x0 = centre x width - size / 2, floored at 0), scaled to [0, 1]. Cutout sizes 1 and 0:
    a 2x2 square, and none (no centre drawn)."""
    def scaled(uint8_image):  # the views' [0, 1] scale, in their float32
        return torch.from_numpy(np.array(uint8_image)).float().div(255.0).numpy()

    images = random_images(24, channels, seed=5)
    aug = BatchAugment(32, cutout=cutout_size, generator=torch.Generator().manual_seed(2))
    weak_params = aug.draw_weak(24)
    weak = aug.apply_weak(torch.from_numpy(images), weak_params).numpy()
    params = aug.draw_strong(24)
    assert ("cutout_centre" in params) == (cutout_size > 0)
    strong = aug.apply_strong(torch.from_numpy(images), params).numpy()
    for i, image in enumerate(images):
        offset = weak_params["offset"][:, i]
        reference = pil_flip_crop(image, bool(weak_params["flip"][i]), int(offset[0]), int(offset[1]), 4)
        assert np.array_equal(weak[i], scaled(reference)), i
        offset = params["offset"][:, i]
        img = to_pil(np.ascontiguousarray(pil_flip_crop(image, bool(params["flip"][i]), int(offset[0]),
                                                        int(offset[1]), 4)))
        for slot in range(2):
            if params["applied"][slot, i]:
                img = pil_op(img, OPS[params["op"][slot, i]], int(params["level"][slot, i]),
                             bool(params["negative"][slot, i]))
        if cutout_size:
            centre = params["cutout_centre"][:, i]
            img = pil_cutout(img, float(centre[0]) * 32, float(centre[1]) * 32, cutout_size)
        assert np.array_equal(strong[i], scaled(from_pil(img))), i


def test_an_unknown_op_is_named():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^unknown op 'Blur'; known: AutoContrast, "):
        apply_op(x, "Blur", torch.ones(1))
    with pytest.raises(ValueError, match=r"^unknown op 'Blur'$"):
        pil_op(to_pil(np.zeros((1, 4, 4), dtype=np.uint8)), "Blur", 5)
