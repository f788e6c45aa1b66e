"""drcn_cli.inference.int8: the calibration (made, saved, loaded, refused when it does not fit), the int8 network
against the fp32 one, and int8 through open_model and the tiled pipeline; last, the bundled calibrations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import int8_drcn, int8_inputs, smooth_luma, write_int8_weights
from safetensors import safe_open
from safetensors.torch import save
from testdata import DATA

from drcn_cli.bench.datasets import load_image
from drcn_cli.bench.protocol import evaluate, make_sample
from drcn_cli.errors import ConfigError
from drcn_cli.inference import int8, loader
from drcn_cli.inference.device import resolve_precision
from drcn_cli.inference.int8 import (
    QUALITY_BOUND,
    QUANTIZED,
    Int8Calibration,
    Int8Error,
    Int8Network,
    calibrate,
    calibration_path,
    load_calibration,
    runtime_problem,
    save_calibration,
)
from drcn_cli.inference.loader import open_model
from drcn_cli.inference.pipeline import open_upscaler
from drcn_cli.inference.tiling import auto_tile, tile_plan
from drcn_cli.io.atomic import OutputExistsError
from drcn_cli.model import DRCNConfig
from drcn_cli.weights import files
from drcn_cli.weights.files import save_weights
from drcn_cli.weights.resolve import sha256_file

needs_runtime = pytest.mark.skipif(runtime_problem() is not None, reason=f"{runtime_problem()}")

CONFIG = DRCNConfig(features=8, recursions=3)
# int8 against fp32 on the tiny model (conftest.int8_drcn) and its calibration inputs: measured 0.0016 mean and
# 0.017 largest absolute difference. Graphs broken on purpose measured far above (mean): the int8 convs' biases
# dropped 0.017, a bias divided by the output's scale instead of the input's 0.010, the residual quantized in steps
# of range/255 instead of range/127 0.013, the weight scales of the output channels in reverse order 0.008, the
# ensemble weights reversed 0.017, the residual's zero point 0 instead of 128 0.21, a recursion left out 0.11. The
# fp32 outputs of two different depths differ by at least 0.0085.
MEAN_TOLERANCE = 0.004
MAX_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def model():
    return int8_drcn()


@pytest.fixture(scope="module")
def calibration(model) -> Int8Calibration:
    return calibrate(model, int8_inputs(), "ab" * 32, {"images": "three smooth maps"})


@pytest.fixture(scope="module")
def network(model, calibration) -> Int8Network:
    if (problem := runtime_problem()) is not None:
        pytest.skip(problem)
    return Int8Network(model, calibration)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """tiny.safetensors with its calibration beside it."""
    return write_int8_weights(tmp_path_factory.mktemp("int8"))


# -- the calibration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights,expected",
    [("w/drcn-lite.safetensors", "w/drcn-lite.int8.safetensors"), ("tiny.safetensors", "tiny.int8.safetensors"),
     ("a.b/model.pt", "a.b/model.pt.int8.safetensors"),
     ("x.safetensors.safetensors", "x.safetensors.int8.safetensors")],
)
def test_the_calibration_lives_beside_the_weights(weights, expected):
    assert calibration_path(weights) == Path(expected)
    assert calibration_path(Path(weights)) == Path(expected)


def test_calibration_holds_int8_weights_per_channel_scales_and_the_ranges_of_every_map(model, calibration):
    assert calibration.weights_sha256 == "ab" * 32 and calibration.info == {"images": "three smooth maps"}
    assert set(calibration.weights) == set(QUANTIZED)
    for name, (q, scales) in calibration.weights.items():
        conv = getattr(model, name)
        assert q.dtype == torch.int8 and q.shape == conv.weight.shape and int(q.abs().max()) <= 127
        assert scales.dtype == torch.float32 and scales.shape == (conv.weight.shape[0],) and bool((scales > 0).all())
        # one scale per output channel: that channel's largest weight at 127 steps
        torch.testing.assert_close(scales, conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127)
    assert {name: len(values) for name, values in calibration.ranges.items()} == {
        "embed2": 1, "recursive": 3, "recon1": 3, "recon2": 3
    }
    assert all(v > 0 for values in calibration.ranges.values() for v in values)
    again = calibrate(model, int8_inputs(), "ab" * 32)
    assert again.ranges == calibration.ranges
    assert all(torch.equal(again.weights[n][0], calibration.weights[n][0]) for n in QUANTIZED)


def test_calibration_needs_an_input(model):
    with pytest.raises(Int8Error, match="at least one image"):
        calibrate(model, [], "ab" * 32)


def test_save_and_load_give_the_same_calibration(calibration, tmp_path):
    path = tmp_path / "tiny.int8.safetensors"
    save_calibration(calibration, path)
    loaded = load_calibration(path, CONFIG, "ab" * 32)
    assert loaded.weights_sha256 == calibration.weights_sha256
    assert loaded.ranges == calibration.ranges and loaded.info == calibration.info
    for name in QUANTIZED:
        assert torch.equal(loaded.weights[name][0], calibration.weights[name][0])
        assert torch.equal(loaded.weights[name][1], calibration.weights[name][1])
    with pytest.raises(OutputExistsError):
        save_calibration(calibration, path)
    save_calibration(calibration, path, overwrite=True)


def test_a_calibration_for_other_weights_is_refused_naming_them(calibration, tmp_path):
    path = tmp_path / "tiny.int8.safetensors"
    save_calibration(calibration, path)
    with pytest.raises(Int8Error, match="made for other weights") as caught:
        load_calibration(path, CONFIG, "cd" * 32)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "sha256 abababababab..." in message and "drcn quantize" in message


def rewrite(path: Path, tensors=None, metadata=None) -> None:
    """The calibration at ``path`` written again with some tensors or metadata entries replaced (None: removed)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        found = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  # safe_open has no iteration
    for entries, changes in ((found, tensors or {}), (meta, metadata or {})):
        for key, value in changes.items():
            if value is None:
                entries.pop(key)
            else:
                entries[key] = value
    path.write_bytes(save(found, metadata=meta))


def ranges_with(**changed):
    ranges = {"embed2": [1.0], "recursive": [1.0, 1.0, 1.0], "recon1": [1.0, 1.0, 1.0], "recon2": [0.5, 0.5, 0.5]}
    return json.dumps({**ranges, **changed})


def scale_with(value):
    scales = torch.full((8,), 0.01)
    scales[3] = value
    return scales


@pytest.mark.parametrize(
    "tensors,metadata,message",
    [
        (None, {"format": "gguf"}, "not an int8 calibration of format 1"),
        (None, {"version": "2"}, "not an int8 calibration of format 1"),
        (None, {"ranges": "{not json"}, "damaged calibration metadata"),
        (None, {"ranges": None}, "damaged calibration metadata"),
        (None, {"ranges": json.dumps({"embed2": 1.0})}, "damaged calibration metadata"),
        (None, {"info": "[1, 2]"}, "damaged calibration metadata"),
        (None, {"ranges": ranges_with(recon2=[0.5, 0.5])}, "the ranges of recon2 do not fit a network of D=3"),
        (None, {"ranges": ranges_with(recursive=[1.0, -1.0, 1.0])}, "the ranges of recursive do not fit"),
        (None, {"ranges": ranges_with(recon1=[1.0, float("inf"), 1.0])}, "the ranges of recon1 do not fit"),
        (None, {"ranges": ranges_with(embed2=[])}, "the ranges of embed2 do not fit"),
        ({"recon1.weight": torch.zeros(4, 8, 3, 3, dtype=torch.int8)}, None, "recon1 does not fit a network of F=8"),
        ({"recursive.weight": torch.zeros(8, 8, 5, 5, dtype=torch.int8)}, None, "recursive does not fit"),
        ({"recon2.weight": torch.zeros(1, 8, 3, 3)}, None, "recon2 does not fit"),  # float, not int8
        ({"recursive.weight": None}, None, "recursive does not fit"),
        ({"recon1.scale": torch.full((4,), 0.01)}, None, "recon1 does not fit"),
        ({"recon1.scale": None}, None, "recon1 does not fit"),
        ({"recursive.scale": scale_with(0.0)}, None, "recursive.scale holds values that are not positive and finite"),
        ({"recon1.scale": scale_with(-0.01)}, None, "recon1.scale holds values that are not positive"),
        ({"recursive.scale": scale_with(float("nan"))}, None, "recursive.scale holds values that are not positive"),
        ({"recon1.scale": scale_with(float("inf"))}, None, "recon1.scale holds values that are not positive"),
    ],
)
def test_a_damaged_calibration_is_refused_saying_what_does_not_fit(calibration, tmp_path, tensors, metadata, message):
    path = tmp_path / "tiny.int8.safetensors"
    save_calibration(calibration, path)
    rewrite(path, tensors, metadata)
    with pytest.raises(Int8Error, match=message) as caught:
        load_calibration(path, CONFIG, "ab" * 32)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "config,message",
    [(DRCNConfig(features=16, recursions=3), "recursive does not fit a network of F=16"),
     (DRCNConfig(features=8, recursions=4), "the ranges of recursive do not fit a network of D=4")],
)
def test_a_calibration_for_another_shape_of_network_is_refused(calibration, tmp_path, config, message):
    path = tmp_path / "tiny.int8.safetensors"
    save_calibration(calibration, path)
    with pytest.raises(Int8Error, match=message):
        load_calibration(path, config, "ab" * 32)


@pytest.mark.parametrize("content", [None, b"", b"not a calibration at all", b"\xff" * 64])
def test_a_missing_file_or_one_that_is_not_safetensors_is_refused(tmp_path, content):
    path = tmp_path / "tiny.int8.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Int8Error, match="not an int8 calibration"):
        load_calibration(path, CONFIG, "ab" * 32)


@pytest.mark.parametrize(
    "info,within",
    [({}, False), ({"psnr_drop": "0.0100"}, False), ({"psnr_drop": "0.0100", "ssim_drop": "0.00010"}, True),
     ({"psnr_drop": f"{QUALITY_BOUND[0]}", "ssim_drop": f"{QUALITY_BOUND[1]}"}, True),
     ({"psnr_drop": "0.0501", "ssim_drop": "0.00010"}, False), ({"psnr_drop": "0.0100", "ssim_drop": "0.00051"}, False),
     ({"psnr_drop": "nan", "ssim_drop": "0.0001"}, False), ({"psnr_drop": "?", "ssim_drop": "0.0001"}, False),
     ({"psnr_drop": "0.0000", "ssim_drop": "0.00000"}, True)],
)
def test_within_bound_reads_the_recorded_drops(calibration, info, within):
    assert Int8Calibration("ab" * 32, calibration.weights, calibration.ranges, info).within_bound() is within


def test_runtime_problem_names_what_is_missing_and_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for missing, message in [({"onnxruntime"}, "int8 needs onnxruntime: pip install 'drcn[int8]'"),
                             ({"onnx", "onnxruntime"}, "int8 needs onnx and onnxruntime: pip install 'drcn[int8]'")]:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, m=missing: None if name in m else real(name))
        assert runtime_problem() == message
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert runtime_problem() is None


# -- the int8 network ---------------------------------------------------------------------------------------------


@needs_runtime
@pytest.mark.parametrize("recursions", [None, 1, 2, 3])
def test_int8_follows_the_fp32_network_at_every_depth(model, network, recursions):
    for x in int8_inputs():
        with torch.no_grad():
            expected = model(x, recursions)
            others = [model(x, k) for k in (1, 2, 3) if k != (recursions or 3)]
        y = network(x, recursions)
        assert y.dtype == torch.float32 and y.shape == x.shape
        difference = (y - expected).abs()
        assert difference.mean().item() <= MEAN_TOLERANCE and difference.max().item() <= MAX_TOLERANCE
        # the tolerance tells the depths apart: any other depth's fp32 output is further from int8's
        assert all((y - other).abs().mean().item() > 2 * MEAN_TOLERANCE for other in others)


@needs_runtime
def test_int8_follows_fp32_on_an_input_it_was_not_calibrated_on(model, network):
    x = smooth_luma(30, 44, seed=7) * 0.8 + 0.1  # within the calibration's range of values
    with torch.no_grad():
        expected = model(x)
    assert (network(x) - expected).abs().mean().item() <= MEAN_TOLERANCE


@needs_runtime
@pytest.mark.parametrize("context", [(0, 0), (3, 0), (0, 5), (4, 6), (7, 7)])
def test_context_rows_are_cut_from_the_whole_window(network, context):
    x = smooth_luma(40, 36, seed=1)
    top, bottom = context
    assert torch.equal(network(x, None, context), network(x)[:, :, top : 40 - bottom])
    assert torch.equal(network(x, 2, context), network(x, 2)[:, :, top : 40 - bottom])


@needs_runtime
def test_weights_given_as_uint8_give_the_same_output(network):
    # the form for x86 CPUs without VNNI (int8.signed_weights_exact): the same values, another kernel
    unsigned = Int8Network(network.model, network.calibration, signed_weights=False)
    x = smooth_luma(40, 36, seed=5)
    assert torch.equal(unsigned(x), Int8Network(network.model, network.calibration, signed_weights=True)(x))


@pytest.mark.parametrize(("machine", "flags", "exact"), [
    ("x86_64", "fpu avx2 avx512f avx512_vnni", True), ("x86_64", "fpu avx2 avx_vnni", True),
    ("x86_64", "fpu avx2 fma", False), ("aarch64", "fp asimd", True),
])
def test_signed_weights_only_where_the_products_are_exact(monkeypatch, tmp_path, machine, flags, exact):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr(int8.platform, "machine", lambda: machine)
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert int8.signed_weights_exact() is exact


@needs_runtime
def test_a_batch_gives_each_image_its_own_result(network):
    x = torch.cat([smooth_luma(24, 20, seed) for seed in (3, 4)])
    y = network(x)
    assert torch.equal(y[:1], network(x[:1])) and torch.equal(y[1:], network(x[1:]))


@needs_runtime
def test_bad_depths_and_contexts_are_refused(network):
    x = smooth_luma(16, 16)
    for recursions in (0, 4, -1):
        with pytest.raises(ValueError, match="recursions must be in 1..3"):
            network(x, recursions)
    for context in ((8, 8), (-1, 0), (0, 16), (20, 0)):
        with pytest.raises(ValueError, match="context rows"):
            network(x, None, context)


def test_the_network_needs_the_runtime(model, calibration, monkeypatch):
    monkeypatch.setattr(int8, "runtime_problem", lambda: "int8 needs onnxruntime: pip install 'drcn[int8]'")
    with pytest.raises(Int8Error, match=r"int8 needs onnxruntime: pip install 'drcn\[int8\]'"):
        Int8Network(model, calibration)


# -- int8 through open_model and the pipeline ---------------------------------------------------------------------


@needs_runtime
def test_open_model_runs_the_calibration_beside_the_weights(calibrated):
    ready = open_model(calibrated, "cpu", "int8")
    assert isinstance(ready.network, Int8Network)
    assert (ready.device, ready.precision, ready.source, ready.reason) == (torch.device("cpu"), "int8", calibrated, "")
    assert ready.config == CONFIG
    assert ready.network.calibration.weights_sha256 == sha256_file(calibrated)


def test_open_model_without_a_calibration_says_to_run_drcn_quantize(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_weights(int8_drcn(), path)
    with pytest.raises(Int8Error, match="drcn quantize") as caught:
        open_model(path, "cpu", "int8")
    assert "tiny.safetensors has no int8 calibration (tiny.int8.safetensors beside it)" in str(caught.value)


def test_open_model_without_the_runtime_says_so(calibrated, monkeypatch):
    monkeypatch.setattr(loader, "runtime_problem", lambda: "int8 needs onnxruntime: pip install 'drcn[int8]'")
    with pytest.raises(Int8Error) as caught:
        open_model(calibrated, "cpu", "int8")
    assert str(caught.value) == "int8 needs onnxruntime: pip install 'drcn[int8]'"


@needs_runtime
def test_open_model_refuses_a_calibration_made_for_other_weights(tmp_path):
    path = write_int8_weights(tmp_path)
    save_weights(int8_drcn(seed=1), path)  # the weights changed after the calibration was made
    with pytest.raises(Int8Error, match="made for other weights"):
        open_model(path, "cpu", "int8")


def test_int8_needs_a_weights_file_not_a_module():
    with pytest.raises(Int8Error, match="not a module"):
        open_model(int8_drcn(), "cpu", "int8")


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_int8_runs_on_the_cpu_only(device):
    with pytest.raises(ConfigError, match="int8 runs on the CPU only"):
        resolve_precision("int8", torch.device(device))
    assert resolve_precision("int8", torch.device("cpu")) == "int8"


@needs_runtime
def test_weights_behind_a_symbolic_link_find_the_calibration_beside_the_link(tmp_path):
    # As in the hub cache, where snapshots/REV/NAME.safetensors links to blobs/SHA256: `drcn quantize` writes the
    # calibration beside the name it loaded (snapshots/REV/NAME.int8.safetensors), where int8 runs look for it.
    blob = tmp_path / "blobs" / "3f2a9c"
    blob.parent.mkdir()
    model = int8_drcn()
    save_weights(model, blob)
    link = tmp_path / "snapshots" / "main" / "tiny.safetensors"
    link.parent.mkdir(parents=True)
    try:
        os.symlink(blob, link)
    except (OSError, NotImplementedError):
        pytest.skip("no symbolic links here")
    save_calibration(calibrate(model, int8_inputs(), sha256_file(blob)), calibration_path(link))
    ready = open_model(link, "cpu", "int8")
    assert ready.precision == "int8" and ready.source == link


def test_int8_plans_whole_windows_where_fp32_would_cut_bands():
    config, cpu = DRCNConfig(features=64, recursions=16), torch.device("cpu")
    assert tile_plan(config, None, cpu, "fp32", 1024, 1024).row_context_cost < 1.0  # bands (test_inference_pipeline)
    plan = tile_plan(config, None, cpu, "int8", 1024, 1024)
    assert plan.by_area and plan.row_context_cost == 1.0 and plan.tile == auto_tile(config, cpu, "int8")


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    rgb = torch.cat([smooth_luma(height, width, seed + c) for c in range(3)], dim=1)[0]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@needs_runtime
def test_a_tiled_int8_run_equals_the_untiled_one_exactly(calibrated):
    image = smooth_rgb(45, 50)
    whole = open_upscaler(calibrated, "cpu", "int8")
    tiled = open_upscaler(calibrated, "cpu", "int8", tile=32)  # 3 x 4 tiles of the 90 x 100 output
    seen = []
    a = whole.upscale_array(image, (90, 100))
    b = tiled.upscale_array(image, (90, 100), on_tile=lambda done, count: seen.append(count))
    assert seen[-1] == 12
    assert a.shape == (90, 100, 3) and np.array_equal(a, b)
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(whole.upscale_tensor(tensor, (90, 100)), tiled.upscale_tensor(tensor, (90, 100)))


@needs_runtime
@pytest.mark.parametrize("options", [{}, {"recursions": 1}, {"self_ensemble": True}])
def test_the_int8_pipeline_is_close_to_fp32(calibrated, options):
    image = smooth_rgb(30, 34, seed=5)
    a = open_upscaler(calibrated, "cpu", "fp32", **options).upscale_array(image, (60, 68)).astype(int)
    b = open_upscaler(calibrated, "cpu", "int8", **options).upscale_array(image, (60, 68)).astype(int)
    assert np.abs(a - b).mean() <= 255 * MEAN_TOLERANCE and np.abs(a - b).max() <= 255 * MAX_TOLERANCE
    if options:  # the option changed the result: it reached the int8 network
        plain = open_upscaler(calibrated, "cpu", "int8").upscale_array(image, (60, 68)).astype(int)
        assert np.abs(b - plain).mean() > 255 * MEAN_TOLERANCE / 4


# -- the bundled calibrations (last: made by a long run, committed beside the weights) -----------------------------


def bundled(name: str) -> Path:
    """The bundled weights file of ``name``; skips where its calibration is not there (yet)."""
    weights = files.BUNDLED_DIR / f"{name}.safetensors"
    if not calibration_path(weights).is_file():
        pytest.skip(f"{calibration_path(weights).name} is not in {files.BUNDLED_DIR}: make it with "
                    f"`drcn quantize -m {name} --images T91 --check Set5 --check Set14`")
    return weights


@pytest.mark.parametrize("name", ["drcn-lite", "drcn-lite-photo"])
def test_a_bundled_calibration_fits_its_weights_and_records_a_check_within_the_bound(name):
    weights = bundled(name)
    model, _metadata = files.load_weights(weights)
    calibration = load_calibration(calibration_path(weights), model.config, sha256_file(weights))
    assert calibration.info.get("checked_on") == "Set5, Set14" and calibration.within_bound(), calibration.info


@needs_runtime
def test_drcn_lite_in_int8_stays_within_the_quality_bound_of_fp32_on_the_crops():
    # By the protocol, each scale's cell the mean over the two crops, as `drcn quantize --check` scores a set.
    # Measured (fp32 - int8): x2 0.0064 dB / 0.00036, x3 -0.0010 dB / 0.00010, x4 0.0370 dB / -0.00000.
    weights = bundled("drcn-lite")
    hrs = [load_image(DATA / "butterfly_crop.png"), load_image(DATA / "bridge_crop.png")]  # colour and grey
    fp32 = open_upscaler(weights, "cpu", "fp32")
    int8_upscaler = open_upscaler("drcn-lite", "cpu", "int8")  # by name, as `drcn upscale -m drcn-lite` opens it
    assert int8_upscaler.settings.precision == "int8" and int8_upscaler.name == "drcn-lite"
    for scale in (2, 3, 4):
        samples = [make_sample(hr, scale) for hr in hrs]
        a, b = evaluate(samples, fp32)[float(scale)], evaluate(samples, int8_upscaler)[float(scale)]
        assert a.psnr - b.psnr <= QUALITY_BOUND[0], f"x{scale}: fp32 {a.psnr:.3f} dB, int8 {b.psnr:.3f} dB"
        assert a.ssim - b.ssim <= QUALITY_BOUND[1], f"x{scale}: fp32 SSIM {a.ssim:.5f}, int8 {b.ssim:.5f}"
