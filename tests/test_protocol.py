"""One evaluation protocol: training validation and `drcn bench` read, degrade and score a file the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_drcn
from PIL import Image

from drcn_cli.bench import evaluate_images
from drcn_cli.model import DRCN
from drcn_cli.pipeline import InferenceSettings
from drcn_cli.train import prepare_validation, validate


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
    settings = InferenceSettings(torch.device("cpu"))

    bench = evaluate_images([path], scale, model, settings)
    (psnr, ssim), = validate(model, prepare_validation([path], [scale]), settings).values()

    assert psnr == pytest.approx(bench.psnr, abs=1e-9) and ssim == pytest.approx(bench.ssim, abs=1e-12)


def test_both_read_the_image_upright(tmp_path):
    path = save_rotated_photo(tmp_path / "photo.png")
    (item,) = prepare_validation([path], [2])
    assert item.hr.shape[-2:] == (44, 30)  # 30 x 44 stored, turned upright by its EXIF orientation
