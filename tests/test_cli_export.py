"""`drcn export` end to end: a tiny weights file in tmp_path, the ONNX file run with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.cli.export import default_output
from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights.files import load_weights, save_weights

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=8, recursions=3))
    with torch.no_grad():
        model.recursive.weight.add_(0.05 * torch.randn_like(model.recursive.weight))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, path)
    return path


def run(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def test_fp16_with_fewer_recursions_runs_in_onnxruntime(tmp_path, weights):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = run("--weights", weights, "-k", 2, "--precision", "fp16", "-o", f"{tmp_path / 'out'}/")  # a new folder
    target = tmp_path / "out" / "tiny_k2_fp16.onnx"
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{target}: ") and "float16" in result.stdout
    assert "exporting tiny.safetensors (F=8, 2 of 3 recursions, fp16)" in result.stderr
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["drcn.precision"], meta["drcn.recursions"]) == ("fp16", "2")
    assert session.get_inputs()[0].type == "tensor(float16)"
    x = np.random.default_rng(0).random((1, 1, 19, 26), dtype=np.float32)
    (out,) = session.run(None, {"y_bicubic": x.astype(np.float16)})
    model, _ = load_weights(weights)
    with torch.no_grad():
        expected = model(torch.from_numpy(x), recursions=2).numpy()
    assert out.dtype == np.float16 and np.abs(out.astype(np.float32) - expected).max() < 1e-2
    again = run("--weights", weights, "-o", target)  # an existing output is refused before any work
    assert again.exit_code == 1 and again.stderr == f"error: output {target} exists (use --overwrite)\n"


def test_usage_and_model_errors(tmp_path, weights):
    too_deep = run("--weights", weights, "-k", 4, "-o", tmp_path / "x.onnx")
    assert too_deep.exit_code == 2 and "--recursions 4: this model has 3" in too_deep.stderr
    both = run("--weights", weights, "-m", "drcn-lite")
    assert both.exit_code == 2 and "give either --model or --weights" in both.stderr
    missing = run("--weights", tmp_path / "none.safetensors", "-o", tmp_path / "x.onnx")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ") and "no such weights file" in missing.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_default_output_name():
    assert default_output(Path("w/drcn-lite.safetensors"), None, "fp32") == Path("drcn-lite.onnx")
    assert default_output(Path("w/drcn-lite.safetensors"), 8, "fp16") == Path("drcn-lite_k8_fp16.onnx")


@pytest.mark.parametrize("command", ["export", "upscale", "bench"])
def test_an_unknown_model_is_the_same_usage_error_in_every_command(tmp_path, command):
    extra = {"export": [], "upscale": [str(tmp_path / "a.png"), "-s", "2"], "bench": ["-d", str(tmp_path)]}[command]
    result = runner.invoke(app, [command, "--model", "nonexistent", *extra])
    assert result.exit_code == 2, result.output
    assert "unknown model 'nonexistent'; known models: drcn, drcn-lite" in result.stderr
    both = runner.invoke(app, [command, "--model", "drcn-lite", "--weights", str(tmp_path / "w.safetensors"), *extra])
    assert both.exit_code == 2 and "give either --model or --weights, not both" in both.stderr


def test_an_output_that_is_no_regular_file_is_one_error_even_with_overwrite(tmp_path, weights):
    pytest.importorskip("onnxscript")
    import os
    import stat

    os.mkfifo(tmp_path / "m.onnx")
    result = run("--weights", weights, "-o", tmp_path / "m.onnx", "--overwrite", "-q")
    assert result.exit_code == 1
    message = f"{tmp_path / 'm.onnx'} is a FIFO: drcn replaces only regular files (use - for a stream)"
    assert result.stderr == f"error: {message}\n"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "m.onnx").st_mode) and sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_output_name_is_a_usage_error_not_the_current_folder(tmp_path, weights, empty, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "--weights", str(weights), "-o", empty])
    assert result.exit_code == 2 and "-o/--output is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []
