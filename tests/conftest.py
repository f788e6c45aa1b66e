"""Helpers shared by several test modules (importable as `from conftest import ...`: tests/ is on the path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_training_images(folder: Path, count: int = 3, size: int = 48, seed: int = 0) -> Path:
    """``count`` smooth random RGB images of size x size (bicubic-enlarged noise, so they have structure)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = (rng.random((size // 4, size // 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def random_drcn(features: int = 8, recursions: int = 3, seed: int = 0, spread: float = 0.05):
    """A small DRCN, its initial weights shaken by ``spread``, in eval mode: for tests where weights do not matter."""
    import torch

    from drcn_cli.model import DRCN, DRCNConfig

    torch.manual_seed(seed)
    net = DRCN(DRCNConfig(features=features, recursions=recursions))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(spread * torch.randn_like(p))
    return net.eval()


def int8_drcn(seed: int = 0):
    """A tiny DRCN (F=8, D=3) for the int8 tests: gentle random weights (spread 0.02: int8's own error stays well
    below what a wrong bias or scale costs) and ensemble weights that favour the later recursions (0.02, 0.12,
    0.87), so that each depth gives its own output and a recursion weighed wrongly shows."""
    import torch

    net = random_drcn(seed=seed, spread=0.02)
    with torch.no_grad():
        net.ensemble_logits.copy_(torch.tensor([-2.0, 0.0, 2.0]))
    return net


def smooth_luma(height: int, width: int, seed: int = 0):
    """(1, 1, height, width) float32 in [0, 1]: bicubic-enlarged seeded noise, a network input with structure."""
    import torch
    from torch.nn import functional as F

    small = torch.rand(1, 1, height // 4 + 1, width // 4 + 1, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def int8_inputs():
    """The calibration inputs of :func:`write_int8_weights`: three smooth 40x36 maps (seeds 0, 1, 2)."""
    return [smooth_luma(40, 36, seed) for seed in range(3)]


def write_int8_weights(folder: Path, name: str = "tiny", info: dict[str, str] | None = None, seed: int = 0) -> Path:
    """:func:`int8_drcn` saved as ``folder/NAME.safetensors`` with its int8 calibration beside it (made from
    :func:`int8_inputs`, ``info`` recorded); returns the weights path."""
    from drcn_cli.inference.int8 import calibrate, calibration_path, save_calibration
    from drcn_cli.weights.files import save_weights
    from drcn_cli.weights.resolve import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    model = int8_drcn(seed)
    save_weights(model, path)
    save_calibration(calibrate(model, int8_inputs(), sha256_file(path), info), calibration_path(path))
    return path


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test on one torch thread: the inputs are tiny, and on a 2-core machine running other jobs several
    threads contend badly (small GEMMs 10-100x slower). Tests that set the count restore it themselves."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """precision 'auto' resolves the same on every test host: as on a CPU without bf16 units (fp32). Tests of
    the bf16 choice patch the capability back on; tests of the bf16 path ask for bf16 explicitly."""
    from drcn_cli.inference import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A tiny DRCN (F=8, D=3, initial weights) saved as safetensors: for CLI tests where weights don't matter."""
    import torch

    from drcn_cli.model import DRCN, DRCNConfig
    from drcn_cli.weights.files import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(DRCN(DRCNConfig(features=8, recursions=3)), path)
    return str(path)


@pytest.fixture
def bundled_pair(tmp_path, monkeypatch):
    """drcn-lite and drcn-lite-photo bundled as two different tiny models."""
    import torch

    from drcn_cli.model import DRCN, DRCNConfig
    from drcn_cli.weights import files as weights_module

    folder = tmp_path / "bundled"
    folder.mkdir()
    for seed, name in enumerate(("drcn-lite", "drcn-lite-photo")):
        torch.manual_seed(seed)
        model = DRCN(DRCNConfig(features=8, recursions=3))
        with torch.no_grad():
            model.recon2.weight.mul_(4.0 * (seed + 1))  # outputs far enough apart to tell the models by them
        weights_module.save_weights(model, folder / f"{name}.safetensors")
    monkeypatch.setattr(weights_module, "BUNDLED_DIR", folder)
    return folder


def animation_bytes(fmt, frames, durations, **options):
    """The bytes of an animation of ``frames`` (RGBA arrays) saved by Pillow with ``durations`` (ms); GIF: palette
    frames with index 0 transparent and disposal 2, WebP lossless. The animation tests of io and the CLI share it."""
    buffer = io.BytesIO()
    if fmt == "GIF":
        images = []
        for rgba in frames:
            image = Image.fromarray(np.ascontiguousarray(rgba[:, :, :3])).quantize(15, dither=Image.Dither.NONE)
            indices = np.asarray(image) + 1
            indices[rgba[:, :, 3] == 0] = 0
            frame = Image.fromarray(indices.astype(np.uint8), "P")
            frame.putpalette([0, 0, 0, *image.getpalette()[:45]])
            images.append(frame)
        options = {"transparency": 0, "disposal": 2, "optimize": False, **options}
    else:
        images = [Image.fromarray(rgba) for rgba in frames]
        options = {"lossless": True, **options} if fmt == "WEBP" else options
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], duration=durations, **options)
    return buffer.getvalue()
