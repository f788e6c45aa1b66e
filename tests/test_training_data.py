"""drcn_cli.training.data: luminance loading, degradation, the patch bank and its augmented batches, packs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from drcn_cli.bench.degradation import DataError, downscale, jpeg_roundtrip
from drcn_cli.inference.color import rgb_to_ycbcr
from drcn_cli.inference.resize import imresize
from drcn_cli.training.data import JpegStep, build_patch_bank, degrade, quantize, random_batch, sample_batch
from drcn_cli.training.images import TrainImage, fingerprint, list_images, load_images, load_pack, load_y, save_pack


def _smooth_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    small = (rng.random((max(2, height // 4), max(2, width // 4), 3)) * 255).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def _image(name: str, height: int, width: int, seed: int = 0) -> TrainImage:
    y = torch.from_numpy((np.random.default_rng(seed).random((height, width)) * 200 + 20).astype(np.uint8))
    return TrainImage(name, y)


def test_load_y_matches_matlab_rgb2ycbcr_rounding(tmp_path):
    rgb = _smooth_rgb(np.random.default_rng(1), 20, 24)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    y = load_y(tmp_path / "a.png")
    assert y.dtype == torch.uint8 and y.shape == (20, 24)
    expected = rgb_to_ycbcr(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)[0] * 255
    assert torch.equal(y, torch.floor(expected + 0.5).to(torch.uint8))


def test_load_y_keeps_grey_images_and_drops_alpha(tmp_path):
    grey = (np.arange(30 * 10).reshape(30, 10) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([grey, np.full_like(grey, 7)]), mode="LA").save(tmp_path / "ga.png")
    assert torch.equal(load_y(tmp_path / "g.png"), torch.from_numpy(grey))
    assert torch.equal(load_y(tmp_path / "ga.png"), torch.from_numpy(grey))


def test_unreadable_image_empty_and_missing_folders_raise_data_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_y(tmp_path / "bad.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        list_images(empty)
    with pytest.raises(DataError, match="no such folder"):
        load_images([tmp_path / "missing"])


def test_load_images_names_and_order(tmp_path):
    for name in ("b.png", "a.bmp"):
        Image.fromarray(_smooth_rgb(np.random.default_rng(2), 12, 12)).save(tmp_path / name)
    images = load_images([tmp_path])
    assert [image.name for image in images] == [f"{tmp_path.name}/a.bmp", f"{tmp_path.name}/b.png"]


def test_degrade_is_modcrop_then_8bit_lr_then_bicubic_up():
    hr = torch.rand(50, 47)
    net_input, target = degrade(hr, 3)
    assert target.shape == net_input.shape == (48, 45)
    assert torch.equal(target, hr[:48, :45])
    lr = quantize(imresize(hr[:48, :45], size=(16, 15)))
    assert torch.equal(net_input, imresize(lr, size=(48, 45)))
    unrounded, _ = degrade(hr, 3, quantize_lr=False)
    assert not torch.equal(unrounded, net_input)
    with pytest.raises(DataError, match="too small"):
        degrade(torch.rand(2, 2), 3)


def test_patch_bank_grid_counts_and_layout():
    images = [_image("a", 48, 40, 0), _image("b", 30, 64, 1)]
    bank = build_patch_bank(images, (2.0, 3.0), patch_size=17, stride=8, downscales=(1.0,))
    # x2: a 48x40 -> rows 0..31 step 8 (4) x cols 0..23 (3) = 12; b 30x64 -> 2 x 6 = 12.
    # x3: a 48x39 -> 4 x 3 = 12; b 30x63 -> 2 x 6 = 12.
    assert bank.patches_per_scale() == {2.0: 24, 3.0: 24}
    assert bank.hr.dtype == torch.uint8 and bank.inputs.dtype == torch.float16
    assert bank.hr.numel() == 48 * 40 + 30 * 64 and bank.inputs.shape == (2, bank.hr.numel())
    assert bank.nbytes > 0 and len(bank) == 48


def test_sample_batch_returns_the_degraded_pair_of_a_patch():
    image = _image("a", 48, 40, 3)
    bank = build_patch_bank([image], (3.0,), patch_size=17, stride=8, downscales=(1.0,))
    net_input, target = degrade(image.as_float(), 3.0)
    # Patch 4 of the grid (3 columns per row): row 1, column 1 -> top-left (8, 8).
    x, y = sample_batch(bank, torch.tensor([4]))
    assert x.shape == y.shape == (1, 1, 17, 17) and x.dtype == torch.float32
    assert torch.equal(y[0, 0], target[8:25, 8:25])
    assert torch.equal(x[0, 0], net_input[8:25, 8:25].half().float())


def test_downscaled_copies_are_8bit_images_of_the_resized_hr():
    image = _image("a", 60, 60, 4)
    bank = build_patch_bank([image], (2.0,), patch_size=17, stride=60, downscales=(1.0, 0.6))
    assert len(bank) == 2
    small = quantize(imresize(image.as_float(), 0.6))  # 36x36, one patch at (0, 0)
    _, y = sample_batch(bank, torch.tensor([1]))
    assert torch.equal(y[0, 0], small[:17, :17])


@pytest.mark.parametrize(
    ("transform", "op"),
    [
        (1, lambda t: t.flip(-2)),
        (2, lambda t: t.flip(-1)),
        (4, lambda t: t.transpose(-1, -2)),
        (3, lambda t: t.flip(-1).flip(-2)),
        (7, lambda t: t.transpose(-1, -2).flip(-2).flip(-1)),
    ],
)
def test_augmentation_applies_the_same_dihedral_transform_to_input_and_target(transform, op):
    bank = build_patch_bank([_image("a", 40, 40, 5)], (2.0,), patch_size=17, stride=11, downscales=(1.0,))
    index = torch.tensor([0, 3])
    x0, y0 = sample_batch(bank, index)
    x1, y1 = sample_batch(bank, index, torch.tensor([transform, transform]))
    assert torch.equal(y1, op(y0)) and torch.equal(x1, op(x0))
    assert not torch.equal(y1, y0)


def test_images_smaller_than_a_patch_are_skipped_or_refused():
    bank = build_patch_bank([_image("big", 40, 40), _image("tiny", 10, 10)], (2.0,), 17, 8, (1.0,))
    assert bank.images == 2 and len(bank) == 9  # only the big one: 3 x 3 positions
    with pytest.raises(DataError, match="no 17x17 patch fits"):
        build_patch_bank([_image("tiny", 10, 10)], (2.0,), 17, 8, (1.0,))


def test_random_batch_is_a_function_of_the_generator_seed():
    bank = build_patch_bank([_image("a", 48, 48)], (2.0, 3.0), 17, 8, (1.0,))
    first = random_batch(bank, 16, torch.Generator().manual_seed(7))
    again = random_batch(bank, 16, torch.Generator().manual_seed(7))
    other = random_batch(bank, 16, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert int(first[0].max()) < len(bank) and int(first[1].max()) <= 7
    plain = random_batch(bank, 16, torch.Generator().manual_seed(7), augment=False)
    assert int(plain[1].abs().sum()) == 0


def test_pack_round_trip_and_fingerprint(tmp_path):
    images = [_image("T91/a.png", 20, 30, 1), _image("BSD/b.png", 25, 18, 2)]
    save_pack(tmp_path / ".data" / "pack.npz", images)
    loaded = load_pack(tmp_path / ".data" / "pack.npz")
    assert [i.name for i in loaded] == [i.name for i in images]
    assert all(torch.equal(a.y, b.y) for a, b in zip(loaded, images, strict=True))
    assert fingerprint(loaded) == fingerprint(images)
    changed = [images[0], TrainImage("BSD/b.png", images[1].y.flip(0))]
    assert fingerprint(changed) != fingerprint(images)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="not a drcn training pack"):
        load_pack(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        load_pack(tmp_path / "junk.npz")


# ------------------------------------------------------------------------------------------------ JPEG step


def _rgb_image(name: str, height: int, width: int, seed: int = 0) -> TrainImage:
    rgb = torch.from_numpy(_smooth_rgb(np.random.default_rng(seed), height, width)).permute(2, 0, 1).contiguous()
    y = (quantize(rgb_to_ycbcr(rgb.double() / 255)[0]) * 255).round().to(torch.uint8)
    return TrainImage(name, y, rgb)


def test_jpeg_step_checks_its_options_and_draws_from_its_seed():
    import random

    step = JpegStep((30, 95), clean=0.25, copies=2, seed=5)
    assert [step.draw(random.Random(5)) for _ in range(2)] == [step.draw(random.Random(5))] * 2
    many = [step.draw(random.Random(i)) for i in range(400)]
    clean = sum(q is None for q in many) / len(many)
    assert 0.15 < clean < 0.35 and all(30 <= q <= 95 for q in many if q is not None)
    for bad in ({"qualities": (0, 50)}, {"qualities": (60, 50)}, {"qualities": (30, 95), "clean": 1.5},
                {"qualities": (30, 95), "copies": 0}):  # fmt: skip
        with pytest.raises(DataError):
            JpegStep(**bad)


def test_bank_with_a_jpeg_step_holds_copies_from_the_rgb_and_is_reproducible():
    images = [_rgb_image("a", 48, 56, 1), _rgb_image("b", 40, 44, 2), _image("grey", 40, 40, 3)]
    step = JpegStep((20, 60), clean=0.0, copies=3, seed=7)
    bank = build_patch_bank(images, (2.0, 3.0), patch_size=17, stride=8, downscales=(1.0,), jpeg=step)
    plain = build_patch_bank(images, (2.0, 3.0), patch_size=17, stride=8, downscales=(1.0,))
    assert bank.inputs.shape[0] == 3 * 2 and len(bank) == 3 * len(plain)
    assert bank.patches_per_scale() == {s: 3 * n for s, n in plain.patches_per_scale().items()}
    assert torch.equal(bank.input_row % 2, bank.scale_index)
    # The targets are the same HR luminance; every input differs from the clean one (all copies are JPEG).
    assert torch.equal(bank.hr, plain.hr)
    for row in range(6):
        assert not torch.equal(bank.inputs[row], plain.inputs[row % 2])
    # The JPEG input of image a at x2, copy 0, is the Y of its RGB LR through the drawn quality, bicubic back up.
    import random

    quality = step.draw(random.Random(7))
    _target, lr = downscale(images[0].rgb.float() / 255, 2.0)
    expected = imresize(rgb_to_ycbcr(jpeg_roundtrip(lr, quality))[0], size=(48, 56)).half()
    assert torch.equal(bank.inputs[0, : 48 * 56].view(48, 56), expected)
    again = build_patch_bank(images, (2.0, 3.0), patch_size=17, stride=8, downscales=(1.0,), jpeg=step)
    assert torch.equal(again.inputs, bank.inputs)
    other = build_patch_bank(images, (2.0, 3.0), 17, 8, (1.0,), jpeg=JpegStep((20, 60), 0.0, 3, seed=8))
    assert not torch.equal(other.inputs, bank.inputs)
    index, transform = random_batch(bank, 16, torch.Generator().manual_seed(0))
    net_input, target = sample_batch(bank, index, transform)
    assert net_input.shape == target.shape == (16, 1, 17, 17)


def test_bank_clean_share_one_is_the_clean_degradation_of_the_rgb():
    images = [_rgb_image("a", 48, 56, 1)]
    bank = build_patch_bank(images, (2.0,), 17, 8, (1.0,), jpeg=JpegStep((30, 90), clean=1.0, copies=1))
    _target, lr = downscale(images[0].rgb.float() / 255, 2.0)
    expected = imresize(rgb_to_ycbcr(lr)[0], size=(48, 56)).half()
    assert torch.equal(bank.inputs[0].view(48, 56), expected)


def test_packs_keep_the_colour_and_color_loading(tmp_path):
    Image.fromarray(_smooth_rgb(np.random.default_rng(0), 20, 24)).save(tmp_path / "c.png")
    Image.fromarray(np.full((20, 24), 99, np.uint8)).save(tmp_path / "g.png")
    plain = load_images([tmp_path])
    assert all(image.rgb is None for image in plain)
    images = load_images([tmp_path], color=True)
    assert images[0].rgb.shape == (3, 20, 24) and images[1].rgb is None
    assert all(torch.equal(a.y, b.y) for a, b in zip(images, plain, strict=True))
    save_pack(tmp_path / "p.npz", images)
    back = load_pack(tmp_path / "p.npz")
    assert torch.equal(back[0].rgb, images[0].rgb) and back[1].rgb is None
    assert fingerprint(back) == fingerprint(plain)  # the same pixels' luminance: a resumed run matches


def test_a_pack_goes_through_the_one_writer(tmp_path):
    import os
    import stat

    from drcn_cli.io.atomic import NotRegularFileError

    images = [_image("T91/a.png", 20, 30, 1)]
    os.mkfifo(tmp_path / "pack.npz")
    with pytest.raises(NotRegularFileError, match="is a FIFO"):
        save_pack(tmp_path / "pack.npz", images)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pack.npz").st_mode)
    save_pack(tmp_path / "p.npz", images)
    save_pack(tmp_path / "p.npz", images)  # a regular file is replaced
    assert [i.name for i in load_pack(tmp_path / "p.npz")] == ["T91/a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz", "pack.npz"]  # no temporary left
