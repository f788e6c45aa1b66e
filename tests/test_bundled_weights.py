"""The shipped weights, with the real numbers: golden PSNRs on a crop of a Set5 image (tests/data) and, where the
benchmark datasets are at hand (tests/testdata.py), on the whole image."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from testdata import DATA, datasets_root, needs_datasets

from drcn_cli.bench.protocol import evaluate_images
from drcn_cli.bench.published import published
from drcn_cli.inference.int8 import CALIBRATION_SUFFIX
from drcn_cli.inference.pipeline import open_upscaler, upscale_image
from drcn_cli.weights.files import BUNDLED_DIR, FORMAT, TINY, bundled_weights, load_weights
from drcn_cli.weights.resolve import verify_file
from drcn_cli.weights.table import KNOWN_WEIGHTS

SET5 = datasets_root() / "Set5"
SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "pattern.png"
BUNDLED = sorted(p for p in BUNDLED_DIR.glob("*.safetensors") if not p.name.endswith(CALIBRATION_SUFFIX))


def sample_crop() -> np.ndarray:
    with Image.open(SAMPLE) as image:
        return np.asarray(image.convert("RGB"))[:40, :48]


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_no_bundled_tensor_holds_a_subnormal_or_tiny_value(path):
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            tiny = (tensor != 0) & (tensor.abs() < 1e-10)
            assert not tiny.any(), f"{path.name}: {key} has {int(tiny.sum())} values below 1e-10"


def test_zeroing_tiny_weights_changes_no_8bit_output():
    # A third of the bundled model's weights replaced by random magnitudes below the load threshold (TINY, a third
    # of them subnormal), as dying weights end up in training, against the same weights zeroed, as loading
    # leaves them: the 8-bit output must not move.
    dirty, _ = load_weights(bundled_weights("drcn-lite"))
    clean, _ = load_weights(bundled_weights("drcn-lite"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for noisy, zeroed in zip(dirty.parameters(), clean.parameters(), strict=True):
            chosen = torch.rand(noisy.shape, generator=generator) < 1 / 3
            magnitude = torch.rand(noisy.shape, generator=generator) * TINY
            magnitude[torch.rand(noisy.shape, generator=generator) < 1 / 3] = 1e-40
            sign = torch.where(torch.rand(noisy.shape, generator=generator) < 0.5, -1.0, 1.0)
            noisy[chosen] = (sign * magnitude)[chosen]
            zeroed[chosen] = 0.0
    assert sum(int(((p != 0) & (p.abs() < TINY)).sum()) for p in dirty.parameters()) > 30_000
    image = sample_crop()
    expected = upscale_image(image, 2, weights=clean, device="cpu", precision="fp32")
    assert np.array_equal(upscale_image(image, 2, weights=dirty, device="cpu", precision="fp32"), expected)


def test_bf16_on_the_cpu_stays_within_4_levels_and_50_db_of_fp32():
    # Measured on the sample image: at most 3 levels apart, 60.4 dB (x3, the whole of docs/samples/pattern.png).
    model, _ = load_weights(bundled_weights("drcn-lite"))
    image = sample_crop()
    fp32 = upscale_image(image, 3, weights=model, device="cpu", precision="fp32").astype(np.int32)
    bf16 = upscale_image(image, 3, weights=model, device="cpu", precision="bf16").astype(np.int32)
    difference = np.abs(fp32 - bf16)
    assert difference.max() <= 4
    assert 10 * np.log10(255**2 / max(np.mean(difference**2), 1e-12)) >= 50


def test_default_weights_are_bundled_and_match_the_table():
    path = bundled_weights("drcn-lite")
    assert path is not None
    entry = KNOWN_WEIGHTS["drcn-lite"]
    verify_file(path, entry.sha256, entry.size)
    model, metadata = load_weights(path)
    assert (model.config.features, model.config.recursions) == (64, 16)
    check_training_metadata(metadata, model.config)


def check_training_metadata(metadata: dict, config) -> None:
    """What `drcn train` writes into the weights it exports, whole and consistent with itself and the model. The
    values change with every retrain; none is pinned here but the three scales the model card reports."""
    assert metadata["format"] == FORMAT and metadata["architecture"] == "DRCN"
    shape = (config.features, config.recursions, config.kernel_size)
    assert tuple(int(metadata[key]) for key in ("features", "recursions", "kernel_size")) == shape
    steps = metadata["training_steps"]
    assert steps.isdigit() and int(steps) > 0
    if "training_init" in metadata:  # trained on from other weights: the total counts their steps too
        assert metadata["training_init"].endswith(".safetensors")
        assert metadata["training_steps_total"].isdigit() and int(metadata["training_steps_total"]) > int(steps)
    else:
        assert metadata.get("training_steps_total", steps) == steps
    images = re.search(r"\((\d+) images, Y channel, MATLAB bicubic degradation", metadata["training_data"])
    assert images is not None and int(images[1]) > 0, metadata["training_data"]
    recipe = json.loads(metadata["training_recipe"])
    scales = [float(s) for s in metadata["scales"].split(",")]
    assert scales == recipe["scales"] == [2.0, 3.0, 4.0]
    assert isinstance(recipe["batch_size"], int) and recipe["batch_size"] > 0 and recipe["lr"] > 0
    # "Set5 at step 2925 (PSNR/SSIM on Y, border = scale): x2 37.16 dB / 0.9566, x3 33.18 dB / 0.9160, ..."
    validation = re.fullmatch(r"(\w+) at step (\d+) \(PSNR/SSIM on Y, border = scale\): (.*)", metadata["validation"])
    assert validation is not None and validation[2] == steps, metadata["validation"]  # the exported step's scores
    rows = re.findall(r"x(\d+) (\d+\.\d\d) dB / (0\.\d{4})", validation[3])
    assert ", ".join(f"x{s} {p} dB / {q}" for s, p, q in rows) == validation[3]
    assert [float(s) for s, _, _ in rows] == scales
    psnrs = [float(p) for _, p, _ in rows]
    assert abs(sum(psnrs) / len(psnrs) - float(metadata["val_psnr"])) <= 0.005 + 1e-9  # its mean, to rounding
    for scale, psnr in zip(scales, psnrs, strict=True):  # a trained model is above bicubic
        bicubic = published("Bicubic", validation[1], scale)
        assert bicubic is None or psnr > bicubic.psnr, (scale, psnr)


def test_golden_psnr_on_a_butterfly_crop_x3():
    # tests/data/butterfly_crop.png, the middle 96x96 of Set5's butterfly, by the paper's protocol, fp32. Measured
    # with drcn-lite run 10 (the bundled weights since): 30.4229 dB / 0.94570. Bicubic (no weights involved) gives
    # 24.1196 dB / 0.80499. A change of protocol, resize, colour or model code moves them; a retrain moves the first.
    model, _ = load_weights(bundled_weights("drcn-lite"))
    score = evaluate_images([DATA / "butterfly_crop.png"], 3, open_upscaler(model, "cpu", "fp32"))
    assert score.psnr == pytest.approx(30.4229, abs=0.005)
    assert score.ssim == pytest.approx(0.94570, abs=0.0005)
    bicubic = evaluate_images([DATA / "butterfly_crop.png"], 3)
    assert bicubic.psnr == pytest.approx(24.1196, abs=0.005)
    assert bicubic.ssim == pytest.approx(0.80499, abs=0.0005)


@needs_datasets("Set5")
def test_golden_psnr_on_butterfly_x3():
    # Measured with `drcn bench -m drcn-lite -d Set5 -d Set14 --precision fp32 --csv` when the weights were
    # exported: 29.222 dB, bicubic 24.035 dB. A change of protocol, resize, colour or model code moves it.
    model, _ = load_weights(bundled_weights("drcn-lite"))
    score = evaluate_images([SET5 / "butterfly.png"], 3, open_upscaler(model, "cpu", "fp32"))
    assert score.psnr == pytest.approx(29.2217, abs=0.005)
    assert score.ssim == pytest.approx(0.93360, abs=0.0005)
