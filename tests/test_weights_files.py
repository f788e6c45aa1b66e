import errno
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights.files import (
    WeightsError,
    canonical_state_dict,
    config_from_state_dict,
    flush_tiny,
    load_weights,
    save_weights,
)


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
    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights(random_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_file_with_subnormal_weights_loads_zeroed_and_gives_the_same_output(tmp_path):
    model = random_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["recursive.weight"][0, 1, 0, 0] = 1e-40  # subnormal
    state["embed2.weight"][2, 3, 1, 1] = -3e-11
    state["recon1.weight"][4, 4, 2, 2] = 5e-39
    model.load_state_dict(state)
    path = tmp_path / "subnormal.safetensors"
    save_file(state, str(path))
    loaded, _ = load_weights(path)
    for key in ("recursive.weight", "embed2.weight", "recon1.weight"):
        values = loaded.state_dict()[key]
        assert not ((values != 0) & (values.abs() < 1e-10)).any()
    assert loaded.recursive.weight[0, 1, 0, 0] == 0 and loaded.embed2.weight[2, 3, 1, 1] == 0
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_saved_weights_carry_no_tiny_values(tmp_path):
    model = random_model()
    with torch.no_grad():
        model.recon1.weight[0, 0, 0, 0] = 2e-41
    save_weights(model, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.get_tensor("recon1.weight")[0, 0, 0, 0] == 0
    assert flush_tiny({"a": torch.tensor([1e-11, -1e-9, 0.5])})["a"].tolist() == [0.0, pytest.approx(-1e-9), 0.5]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused(tmp_path, bad):
    state = {k: v.clone() for k, v in random_model().state_dict().items()}
    state["recursive.bias"][0] = bad
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_weights(path)


@pytest.mark.parametrize("key", ["embed1.weight", "embed2.weight", "recon1.weight", "recon2.weight"])
def test_a_layer_of_the_wrong_shape_is_the_one_named(tmp_path, key):
    state = {k: v.clone() for k, v in random_model(features=8).state_dict().items()}
    state[key] = torch.zeros(state[key].shape[0] + 4, *state[key].shape[1:])
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=f"{key} has shape"):
        load_weights(path)


def test_finite_weights_whose_output_is_not_finite_are_an_error():
    from drcn_cli.inference.pipeline import upscale_image

    model = random_model()
    with torch.no_grad():
        model.recon2.weight.fill_(3e38)  # finite, but the sum over the kernel overflows
        model.recon1.bias.fill_(10.0)
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    with pytest.raises(WeightsError, match="NaN or infinite"):
        upscale_image(image, 2, weights=model, device="cpu", precision="fp32")


def test_weights_go_through_the_one_writer(tmp_path):
    import stat

    from drcn_cli.io.atomic import NotRegularFileError

    (tmp_path / "target.safetensors").write_bytes(b"not to be touched")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "target.safetensors")
    with pytest.raises(NotRegularFileError, match="is a symbolic link"):
        save_weights(random_model(), tmp_path / "link.safetensors")
    assert (tmp_path / "target.safetensors").read_bytes() == b"not to be touched"
    assert (tmp_path / "link.safetensors").is_symlink()
    umask = os.umask(0o027)
    try:
        save_weights(random_model(), tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o640
    load_weights(tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "m.safetensors", "target.safetensors"]


# -- a file that claims a network drcn should not build ----------------------------------------------------------


def _state(features=8, recursions=3):
    return {k: v.clone() for k, v in random_model(features, recursions).state_dict().items()}


def test_a_recursive_kernel_of_another_size_is_the_tensor_named(tmp_path):
    state = _state()
    state["recursive.weight"] = torch.zeros(8, 8, 5, 5)  # 5x5 among 3x3 kernels: the recursive conv is wrong
    path = tmp_path / "k5.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"recursive\.weight has shape \(8, 8, 5, 5\), expected \(8, 8, 3, 3\)"):
        load_weights(path)
    state = _state()
    state["embed1.weight"] = torch.zeros(8, 1, 5, 5)  # and when another layer is the odd one, that one
    with pytest.raises(WeightsError, match=r"embed1\.weight has shape"):
        config_from_state_dict(state)


@pytest.mark.parametrize("key", ["recursive.weight", "recursive.bias", "embed2.bias"])
def test_the_recursive_conv_of_another_width_is_the_tensor_named(key):
    state = _state()
    state[key] = torch.zeros(12, *state[key].shape[1:]) if key.endswith("bias") else torch.zeros(12, 12, 3, 3)
    with pytest.raises(WeightsError, match=rf"{key.replace('.', '[.]')} has shape"):
        config_from_state_dict(state)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("key", ["recursive.weight", "ensemble_logits", "recon2.bias"])
def test_tensors_that_are_not_floating_point_are_refused_naming_them(tmp_path, key, dtype):
    state = _state()
    state[key] = torch.zeros(state[key].shape, dtype=dtype)
    path = tmp_path / "ints.safetensors"
    save_file(state, str(path))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(WeightsError, match=rf"{key.replace('.', '[.]')} holds {name} values, expected floating point"):
        load_weights(path)


def test_a_tensor_of_another_rank_is_refused_naming_it():
    state = _state()
    state["recon1.weight"] = torch.zeros(8, 72)
    with pytest.raises(WeightsError, match=r"recon1\.weight has shape \(8, 72\), expected 4 dimensions"):
        config_from_state_dict(state)


@pytest.mark.parametrize("entries", [0, 65, 2000])
def test_recursions_beyond_the_limit_are_refused_before_any_work(tmp_path, entries):
    from drcn_cli.weights.files import MAX_RECURSIONS

    assert MAX_RECURSIONS == 64
    state = _state()
    state["ensemble_logits"] = torch.zeros(entries)
    path = tmp_path / "deep.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=rf"ensemble_logits holds {entries} entries.*drcn reads 1 to 64"):
        load_weights(path)
    state["ensemble_logits"] = torch.zeros(MAX_RECURSIONS)
    assert config_from_state_dict(state).recursions == MAX_RECURSIONS  # the limit itself is read


def test_features_beyond_the_limit_are_refused():
    from drcn_cli.weights.files import MAX_FEATURES

    assert MAX_FEATURES == 1024
    wide = MAX_FEATURES + 1
    state = {
        "embed1.weight": torch.empty(wide, 1, 3, 3), "embed2.weight": torch.empty(wide, wide, 3, 3),
        "recursive.weight": torch.empty(wide, wide, 3, 3), "recon1.weight": torch.empty(wide, wide, 3, 3),
        "recon2.weight": torch.empty(1, wide, 3, 3), "ensemble_logits": torch.zeros(16),
        **{f"{name}.bias": torch.empty(wide) for name in ("embed1", "embed2", "recursive", "recon1")},
        "recon2.bias": torch.empty(1),
    }  # fmt: skip
    with pytest.raises(WeightsError, match="F=1025 filters; drcn reads 1 to 1024"):
        config_from_state_dict(state)


def test_an_even_kernel_is_refused():
    model = DRCN(DRCNConfig(features=4, recursions=2, kernel_size=3))
    state = {k: (torch.zeros(*v.shape[:2], 4, 4) if v.dim() == 4 else v) for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="kernels of 4x4"):
        config_from_state_dict(state)
