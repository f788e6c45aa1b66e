"""drcn_cli.inference.export: the ONNX file runs in onnxruntime, matches torch, and carries its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drcn_cli.inference import export
from drcn_cli.io.atomic import OutputExistsError
from drcn_cli.model import DRCN, DRCNConfig

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def tiny_model() -> DRCN:
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=8, recursions=3))
    with torch.no_grad():  # away from the identity initialisation, so that every recursion matters
        model.recursive.weight.add_(0.05 * torch.randn_like(model.recursive.weight))
        model.ensemble_logits.add_(torch.randn(3))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    # Under inference mode, where DRCN.forward would take oneDNN's fused conv+ReLU: the export must not.
    with torch.inference_mode():
        result = export.export_onnx(model, path, recursions=2, source="tiny.safetensors")
    return model, result


def test_onnxruntime_matches_torch_at_any_size(exported):
    model, result = exported
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (given,), (produced,) = session.get_inputs(), session.get_outputs()
    assert (given.name, produced.name, given.type) == ("y_bicubic", "y_sr", "tensor(float)")
    assert given.shape[1] == 1 and all(isinstance(d, str) for d in (given.shape[0], *given.shape[2:]))
    rng = np.random.default_rng(0)
    for shape in ((2, 1, 23, 31), (1, 1, 40, 17)):
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x), recursions=2).numpy()
        (out,) = session.run(None, {"y_bicubic": x})
        assert out.shape == shape and np.abs(out - expected).max() < 1e-4
    with torch.no_grad():  # two recursions, not three: the choice is in the graph
        x = rng.random((1, 1, 16, 16), dtype=np.float32)
        every = model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"y_bicubic": x})[0] - every).max() > 1e-4


def test_the_contract_is_in_the_metadata(exported):
    _model, result = exported
    proto = onnx.load(str(result.path))
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert meta == result.metadata
    contract = meta["drcn.contract"]
    assert "Y of the bicubic upsample in [0, 1]" in contract and "residual included" in contract
    assert "N x 1 x H x W float32" in meta["drcn.input"]
    assert (meta["drcn.recursions"], meta["drcn.recursions_trained"], meta["drcn.features"]) == ("2", "3", "8")
    assert (meta["drcn.precision"], meta["drcn.weights"]) == ("fp32", "tiny.safetensors")
    assert meta["drcn.receptive_radius"] == "6"  # (2 + 4) convs of 3x3
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # standard ops only: no oneDNN op
    assert result.size == result.path.stat().st_size and result.opset >= 18
    onnx.checker.check_model(proto)


def test_bad_requests_raise_before_anything_is_written(tmp_path):
    model = tiny_model()
    target = tmp_path / "m.onnx"
    for kwargs in ({"recursions": 0}, {"recursions": 4}, {"precision": "bf16"}):
        with pytest.raises(ValueError):
            export.export_onnx(model, target, **kwargs)
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="exists"):
        export.export_onnx(model, target)
    assert target.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_missing_exporter_packages_say_what_to_install(tmp_path, monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(export.ExportError, match=r"needs the onnxscript package: pip install 'drcn\[export\]'"):
        export.export_onnx(tiny_model(), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_an_output_that_is_no_regular_file_is_refused_before_the_export(tmp_path, monkeypatch):
    import os
    import stat

    from drcn_cli.io.atomic import NotRegularFileError

    traced = []
    monkeypatch.setattr(export, "_require_exporter", lambda: None)
    monkeypatch.setattr(export, "_trace", lambda *args: traced.append(args))
    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(NotRegularFileError, match="is a FIFO"):
        export.export_onnx(tiny_model(), tmp_path / "m.onnx", overwrite=True)
    assert traced == [] and stat.S_ISFIFO(os.lstat(tmp_path / "m.onnx").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
