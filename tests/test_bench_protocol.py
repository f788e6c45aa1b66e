"""One evaluation protocol: training validation and `drcn bench` read, degrade and score a file the same way."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_drcn
from PIL import Image

from drcn_cli.bench.protocol import evaluate, evaluate_images
from drcn_cli.inference.pipeline import open_upscaler
from drcn_cli.model import DRCN
from drcn_cli.training.setup import prepare_validation


@pytest.fixture(scope="module")
def model() -> DRCN:
    return random_drcn()


def save_rotated_photo(path, height=30, width=44):
    """A JPEG-free (lossless) photo whose EXIF says "rotate 90 degrees" (orientation 6), as cameras write."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 128 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    pixels = np.clip(np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 4, (height, width, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("scale", [2, 3])
def test_validation_and_bench_give_the_same_score_on_the_same_file(model, tmp_path, scale):
    path = save_rotated_photo(tmp_path / "photo.png")
    upscaler = open_upscaler(model, "cpu", "fp32")

    bench = evaluate_images([path], scale, upscaler)
    (score,) = evaluate(prepare_validation([path], [scale]), upscaler).values()

    assert score == bench


def test_both_read_the_image_upright(tmp_path):
    path = save_rotated_photo(tmp_path / "photo.png")
    (item,) = prepare_validation([path], [2])
    assert item.hr.shape[-2:] == (44, 30)  # 30 x 44 stored, turned upright by its EXIF orientation


def test_the_bench_runner_scores_as_training_validation_does(model, tmp_path):
    from drcn_cli.bench.datasets import Dataset
    from drcn_cli.bench.runner import run_bench

    path = save_rotated_photo(tmp_path / "photo.png")
    upscaler = open_upscaler(model, "cpu", "fp32")
    report = run_bench([Dataset("one", tmp_path, (path,), "folder")], (2, 3), upscaler)
    validation = evaluate(prepare_validation([path], [2, 3]), upscaler)
    assert [(r.scale, r.psnr, r.ssim) for r in report.images] == [
        (int(scale), score.psnr, score.ssim) for scale, score in validation.items()
    ]


def test_a_fractional_scale_crops_to_whole_pixels_and_scores_with_a_rounded_up_border(model, tmp_path):
    path = save_rotated_photo(tmp_path / "photo.png")
    (sample,) = prepare_validation([path], [2.5])
    assert sample.lr.shape[-2:] == (17, 12) and sample.hr.shape[-2:] == (42, 30)  # 44 x 30 upright
    (score,) = evaluate([sample], open_upscaler(model, "cpu", "fp32")).values()
    assert 10 < score.psnr < 60 and 0 < score.ssim <= 1
