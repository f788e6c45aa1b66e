"""The shipped weights, with the real numbers: a golden PSNR on a Set5 image."""

from pathlib import Path

import pytest

from drcn_cli.bench import evaluate_images
from drcn_cli.registry import KNOWN_WEIGHTS, verify_file
from drcn_cli.weights import bundled_weights, load_weights

SET5 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "Set5"


def test_default_weights_are_bundled_and_match_the_table():
    path = bundled_weights("drcn-lite")
    assert path is not None
    entry = KNOWN_WEIGHTS["drcn-lite"]
    verify_file(path, entry.sha256, entry.size)
    model, metadata = load_weights(path)
    assert (model.config.features, model.config.recursions) == (64, 16)
    assert (metadata["training_steps"], metadata["training_steps_total"]) == ("3200", "5400")


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/datasets/Set5 is not beside the repo")
def test_golden_psnr_on_butterfly_x3():
    # Measured with `drcn bench -m drcn-lite -d Set5 --csv` when the weights were exported: 27.638 dB,
    # bicubic 24.035 dB. A change of protocol, resize, colour or model code moves it.
    model, _ = load_weights(bundled_weights("drcn-lite"))
    score = evaluate_images([SET5 / "butterfly.png"], 3, model)
    assert score.psnr == pytest.approx(27.6384, abs=0.005)
    assert score.ssim == pytest.approx(0.91157, abs=0.0005)
