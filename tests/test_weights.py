import pytest
import torch
from safetensors.torch import save_file

from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights import WeightsError, canonical_state_dict, config_from_state_dict, load_weights, save_weights


def random_model(features=8, recursions=3, seed=0) -> DRCN:
    torch.manual_seed(seed)
    model = DRCN(DRCNConfig(features=features, recursions=recursions))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_round_trip_gives_the_same_outputs_and_metadata(tmp_path):
    model = random_model()
    path = tmp_path / "m.safetensors"
    save_weights(model, path, {"training_data": "unit test"})
    loaded, meta = load_weights(path)
    assert loaded.config == model.config
    assert meta["architecture"] == "DRCN"
    assert meta["features"] == "8" and meta["recursions"] == "3"
    assert meta["training_data"] == "unit test"
    x = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_hyper_parameters_come_from_tensor_shapes_not_metadata(tmp_path):
    model = random_model(features=12, recursions=5)
    path = tmp_path / "m.safetensors"
    save_weights(model, path, {"features": "999"})
    loaded, _ = load_weights(path)
    assert loaded.config == DRCNConfig(features=12, recursions=5)


def test_prefixed_state_dicts_are_accepted(tmp_path):
    model = random_model()
    state = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert canonical_state_dict(state).keys() == model.state_dict().keys()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ddp.safetensors")
    loaded, _ = load_weights(tmp_path / "ddp.safetensors")
    assert loaded.config == model.config


def test_inconsistent_shapes_are_refused_with_the_offending_tensor(tmp_path):
    state = random_model().state_dict()
    state["recon1.weight"] = torch.zeros(8, 6, 3, 3)
    with pytest.raises(WeightsError, match="recon1.weight"):
        config_from_state_dict(state)


def test_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="not DRCN weights"):
        load_weights(path)


def test_pickle_or_garbage_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(random_model().state_dict(), path)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(path)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError):
        load_weights(tmp_path / "empty.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tmp_path / "nope.safetensors")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        save_weights(random_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
