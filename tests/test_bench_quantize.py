"""drcn_cli.bench.quantize: the calibration inputs (what the network sees at run time), the calibration of a weights
file, and the check of int8 against fp32 by the protocol, with its largest drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import int8_drcn, write_int8_weights, write_training_images
from PIL import Image

from drcn_cli.bench.datasets import list_images, load_image
from drcn_cli.bench.protocol import evaluate, make_sample
from drcn_cli.bench.quantize import CalibrationCheck, calibration_inputs, check_calibration, make_calibration
from drcn_cli.inference.color import rgb_to_ycbcr
from drcn_cli.inference.int8 import Int8Error, calibrate, calibration_path, load_calibration, runtime_problem
from drcn_cli.inference.pipeline import open_upscaler
from drcn_cli.weights.files import save_weights
from drcn_cli.weights.resolve import sha256_file

needs_runtime = pytest.mark.skipif(runtime_problem() is not None, reason=f"{runtime_problem()}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, ...]:
    """Three smooth RGB images of 64x64 and one grey of 50x50."""
    folder = write_training_images(tmp_path_factory.mktemp("hr"), count=3, size=64)
    grey = np.asarray(Image.open(folder / "img0.png").convert("L"))[:50, :50]
    Image.fromarray(grey).save(folder / "img3.png")
    return list_images(folder)


# -- calibration_inputs -------------------------------------------------------------------------------------------


def test_one_crop_per_image_at_the_scales_in_turn(images):
    inputs = calibration_inputs(images, crop=32)
    assert [tuple(x.shape) for x in inputs] == [(1, 1, 32, 32)] * 4
    assert all(x.dtype == torch.float32 and x.is_contiguous() for x in inputs)
    # smaller than the crop: whole, at the mod-cropped size of each one's scale (x2, x3, x4, then x2 again)
    whole = calibration_inputs(images, crop=96)
    assert [tuple(x.shape[-2:]) for x in whole] == [(64, 64), (63, 63), (64, 64), (50, 50)]
    at_x3 = calibration_inputs(images, scales=(3,), crop=96)
    assert [tuple(x.shape[-2:]) for x in at_x3] == [(63, 63)] * 3 + [(48, 48)]


def test_an_input_is_the_bicubic_upsampled_luminance_of_the_degraded_image(images):
    for path, x, scale in zip(images, calibration_inputs(images, crop=96), (2, 3, 4, 2), strict=True):
        hr = load_image(path)
        y = rgb_to_ycbcr(hr)[:1] if hr.shape[0] == 3 else hr
        h, w = x.shape[-2:]
        # close to the HR luminance (smooth images lose little: 0.008-0.033), further from it two pixels off
        # (0.09-0.12) or from the HR's Cb (0.17)
        error = (x[0, :, :h, :w] - y[:, :h, :w]).abs().mean().item()
        assert error < 0.05, (path.name, scale)
        assert (x[0, :, 2:h, 2:w] - y[:, : h - 2, : w - 2]).abs().mean().item() > 2 * error
        if hr.shape[0] == 3:
            assert (x[0, :, :h, :w] - rgb_to_ycbcr(hr)[1:2, :h, :w]).abs().mean().item() > 3 * error


def test_crops_are_seeded_windows_of_the_whole_inputs(images):
    whole = calibration_inputs(images, crop=96)
    crops = calibration_inputs(images, crop=32)
    for full, crop in zip(whole, crops, strict=True):
        windows = full.unfold(2, 32, 1).unfold(3, 32, 1)[0, 0]  # (rows, columns, 32, 32): every 32x32 window
        assert bool((windows == crop[0, 0]).all(dim=(-2, -1)).any())
    for a, b in zip(crops, calibration_inputs(images, crop=32), strict=True):
        assert torch.equal(a, b)  # the same seed, the same crops
    other = calibration_inputs(images, crop=32, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(crops, other, strict=True))


def test_make_calibration_ties_the_calibration_to_the_weights_file(images, tmp_path):
    path = tmp_path / "tiny.safetensors"
    model = int8_drcn()
    save_weights(model, path)
    info = {"images": "hr: 4 images"}
    made = make_calibration(path, images, info)
    assert made.weights_sha256 == sha256_file(path) and made.info == info
    expected = calibrate(model, calibration_inputs(images), sha256_file(path), info)
    assert made.ranges == expected.ranges
    assert all(torch.equal(made.weights[n][0], expected.weights[n][0]) for n in expected.weights)


# -- the check ----------------------------------------------------------------------------------------------------


def test_the_largest_drops_over_every_cell():
    check = CalibrationCheck({
        ("Set5", 2): (36.00, 0.9500, 35.98, 0.9497),
        ("Set5", 4): (30.00, 0.8500, 29.90, 0.8501),  # the largest PSNR drop
        ("Set14", 3): (29.00, 0.8000, 29.01, 0.7995),  # the largest SSIM drop, with a PSNR gain
    })
    assert check.psnr_drop == pytest.approx(0.10) and check.ssim_drop == pytest.approx(0.0005)
    gains = CalibrationCheck({("Set5", 2): (30.0, 0.90, 30.1, 0.91), ("Set5", 3): (28.0, 0.80, 28.3, 0.82)})
    assert gains.psnr_drop == pytest.approx(-0.1) and gains.ssim_drop == pytest.approx(-0.01)  # the least gain


@needs_runtime
def test_check_scores_fp32_and_int8_by_the_protocol_on_every_set_and_scale(images, tmp_path):
    path = write_int8_weights(tmp_path / "w")
    seen = []
    sets = [("colour", images[:2]), ("grey", images[3:])]
    calibration = load_calibration(calibration_path(path), int8_drcn().config, sha256_file(path))
    check = check_calibration(path, calibration, sets, scales=(2, 3), on_cell=lambda *cell: seen.append(cell))
    assert list(check.cells) == [("colour", 2), ("colour", 3), ("grey", 2), ("grey", 3)]
    assert seen == [(name, scale, cell) for (name, scale), cell in check.cells.items()]
    fp32, int8 = open_upscaler(path, "cpu", "fp32"), open_upscaler(path, "cpu", "int8")
    for (name, scale), cell in check.cells.items():
        samples = [make_sample(load_image(p), scale) for p in dict(sets)[name]]
        a, b = evaluate(samples, fp32)[float(scale)], evaluate(samples, int8)[float(scale)]
        assert cell == (a.psnr, a.ssim, b.psnr, b.ssim)
    assert check.psnr_drop == max(c[0] - c[2] for c in check.cells.values())
    assert abs(check.psnr_drop) < 0.5 and abs(check.ssim_drop) < 0.01


def test_check_refuses_a_calibration_of_other_weights(images, tmp_path):
    path = write_int8_weights(tmp_path / "w")
    calibration = load_calibration(calibration_path(path), int8_drcn().config, sha256_file(path))
    other = tmp_path / "other.safetensors"
    save_weights(int8_drcn(seed=1), other)
    with pytest.raises(Int8Error, match="not for other.safetensors"):
        check_calibration(other, calibration, [("colour", images[:1])], scales=(2,))
