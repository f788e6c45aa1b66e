"""drcn_cli.inference.loader: one way to get a model (a name, a path or a module -> ReadyModel), on the resolve
order of drcn_cli.weights.resolve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hubstub import HubStub, point_client_at, skip_retry_sleeps

from drcn_cli.inference import tiling
from drcn_cli.inference.loader import ReadyModel, open_model
from drcn_cli.inference.pipeline import upscale_image
from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights import files, resolve, table
from drcn_cli.weights.resolve import WeightsNotFoundError, split_source
from drcn_cli.weights.table import KnownWeights

REPO = "test-org/drcn-test"


def tiny_model(seed: int = 0) -> DRCN:
    torch.manual_seed(seed)
    net = DRCN(DRCNConfig(features=8, recursions=3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def rng_image(shape=(6, 7, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A stub hub serving tiny.safetensors under the name "tiny"; no bundled files; an empty hub cache."""
    published = tmp_path / "published" / "tiny.safetensors"
    files.save_weights(tiny_model(), published)
    data = published.read_bytes()
    entry = KnownWeights("tiny", "tiny.safetensors", hashlib.sha256(data).hexdigest(), len(data), "F=8", repo_id=REPO)
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(files, "BUNDLED_DIR", bundled)
    monkeypatch.setattr(table, "KNOWN_WEIGHTS", {"tiny": entry})
    monkeypatch.delenv(table.REPO_ID_ENV, raising=False)
    with HubStub() as stub:
        stub.add_file(REPO, "tiny.safetensors", published)
        cache = tmp_path / "hub"
        point_client_at(monkeypatch, stub.endpoint, cache_dir=cache)
        skip_retry_sleeps(monkeypatch)
        yield stub, cache, published, monkeypatch


def test_the_api_finds_a_cached_download(hub):
    stub, cache, published, monkeypatch = hub
    resolve.download_weights("tiny")  # what `drcn download-weights tiny` does
    point_client_at(monkeypatch, stub.endpoint, cache_dir=cache, offline=True)
    requests = len(stub.requests)

    image = rng_image()
    from_cache = upscale_image(image, 2, weights="tiny", device="cpu")

    assert len(stub.requests) == requests  # found in the cache, nothing fetched
    assert np.array_equal(from_cache, upscale_image(image, 2, weights=published, device="cpu"))
    ready = open_model("tiny", "cpu", download=False)
    assert ready.source is not None and cache in ready.source.parents and ready.source.name == "tiny.safetensors"


def test_a_name_neither_bundled_nor_cached_is_downloaded_unless_forbidden(hub):
    stub, cache, published, _ = hub
    with pytest.raises(WeightsNotFoundError, match="download-weights tiny"):
        open_model("tiny", "cpu", download=False)
    messages = []
    ready = open_model("tiny", "cpu", on_download=messages.append)
    assert ready.source is not None and cache in ready.source.parents
    assert len(messages) == 1 and "downloading tiny.safetensors" in messages[0]


def test_an_unknown_name_lists_the_known_ones(hub):
    with pytest.raises(WeightsNotFoundError, match="unknown model 'nope'; known models: tiny"):
        upscale_image(rng_image(), 2, weights="nope")


def test_a_module_passed_in_is_left_untouched():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.embed2.weight

    ready = open_model(model, "cpu", "bf16")
    upscale_image(rng_image(), 2, weights=model, device="cpu", precision="bf16")

    assert ready.network is not model and model.training and not ready.network.training
    assert model.embed2.weight is weight and weight.dtype == torch.float32 and weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ready.network.embed2.weight.dtype == torch.bfloat16  # the copy is the one prepared


def test_ready_model_holds_what_a_run_needs(tmp_path):
    path = tmp_path / "m.safetensors"
    files.save_weights(tiny_model(), path)
    ready = open_model(str(path), "cpu", "auto")
    assert isinstance(ready, ReadyModel) and ready.source == path
    assert ready.device == torch.device("cpu") and ready.precision == "fp32"  # auto on a CPU without bf16 units
    assert ready.network.embed2.weight.is_contiguous(memory_format=torch.channels_last)
    settings = ready.settings(tile=64, recursions=2)
    assert (settings.device, settings.precision, settings.tile, settings.recursions) == (ready.device, "fp32", 64, 2)
    assert open_model(path, "cpu", "fp32").network is ready.network  # a file is loaded once per device/precision


def test_cpu_tiles_are_capped_by_the_caches_in_bf16_and_by_memory_in_fp32():
    cpu, lite = torch.device("cpu"), DRCNConfig(64, 16)
    bf16, fp32 = tiling.auto_tile(lite, cpu, "bf16"), tiling.auto_tile(lite, cpu, "fp32")
    # bf16: one 64-channel window map within the cache budget; fp32 (bound by arithmetic): as memory allows.
    assert (bf16 + 2 * lite.receptive_radius) ** 2 * 64 * 2 <= tiling._CPU_TILE_MAP_BYTES
    assert fp32 >= 1024 > bf16


def test_name_or_path_is_decided_in_one_place(tmp_path):
    existing = tmp_path / "plain"
    existing.write_bytes(b"")
    assert split_source(None) == (None, None)
    assert split_source("drcn-lite") == ("drcn-lite", None)
    assert split_source("w.safetensors") == (None, Path("w.safetensors"))
    assert split_source("runs/best") == (None, Path("runs/best"))
    assert split_source(str(existing)) == (None, existing)
    assert split_source(Path("drcn-lite")) == (None, Path("drcn-lite"))  # a path object is always a path
