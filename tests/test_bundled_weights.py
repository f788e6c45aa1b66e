"""The shipped weights, with the real numbers: a golden PSNR on a Set5 image."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from drcn_cli.pipeline import upscale_image
from drcn_cli.protocol import evaluate_images
from drcn_cli.registry import KNOWN_WEIGHTS, verify_file
from drcn_cli.weights import BUNDLED_DIR, TINY, bundled_weights, load_weights

SET5 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "Set5"
SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "pattern.png"
BUNDLED = sorted(BUNDLED_DIR.glob("*.safetensors"))


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
    # run 10: 2,925 steps from run 9's file, which had 38,520 behind it
    assert metadata["training_steps"] == "2925" and metadata["training_init"] == "drcn-lite-r9.safetensors"
    assert metadata["training_steps_total"] == "41445"


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/datasets/Set5 is not beside the repo")
def test_golden_psnr_on_butterfly_x3():
    # Measured with `drcn bench -m drcn-lite -d Set5 -d Set14 --precision fp32 --csv` when the weights were
    # exported: 29.222 dB, bicubic 24.035 dB. A change of protocol, resize, colour or model code moves it.
    model, _ = load_weights(bundled_weights("drcn-lite"))
    score = evaluate_images([SET5 / "butterfly.png"], 3, model)
    assert score.psnr == pytest.approx(29.2217, abs=0.005)
    assert score.ssim == pytest.approx(0.93360, abs=0.0005)
