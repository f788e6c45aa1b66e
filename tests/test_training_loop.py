"""drcn_cli.training's loop and what it uses (setup, objective, checkpoint): schedules, loss, learning on tiny data,
checkpoints, exact resume, DDP with one process."""

from __future__ import annotations

import dataclasses
import json
import random
import socket

import numpy as np
import pytest
import torch
from conftest import write_training_images
from safetensors.torch import load_file

from drcn_cli.bench.degradation import DataError
from drcn_cli.model import DRCN, DRCNConfig, widen
from drcn_cli.training import loop, objective
from drcn_cli.training.checkpoint import CheckpointError, read_checkpoint, resume_config, write_checkpoint
from drcn_cli.training.config import TrainConfig
from drcn_cli.training.data import build_patch_bank, sample_batch
from drcn_cli.training.images import load_images
from drcn_cli.training.loop import train
from drcn_cli.training.objective import alpha_at, lr_at, recursive_loss
from drcn_cli.training.report import TrainReporter
from drcn_cli.weights.files import WeightsError, load_weights, save_weights


@pytest.fixture
def data_dir(tmp_path):
    return write_training_images(tmp_path / "train")


def _config(data_dir, tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(
        data=(str(data_dir),), scales=(2.0, 3.0), downscales=(1.0, 0.8), patch_size=17, stride=8,
        features=8, recursions=3, batch_size=8, steps=6, lr=1e-3, lr_min=1e-5, log_every=1,
        checkpoint_every=0, val_every=0, threads=1, checkpoint_dir=str(tmp_path / "ckpt"),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


# -- pure functions ------------------------------------------------------------------------------------------


def test_lr_warms_up_then_follows_a_cosine_to_lr_min():
    cfg = TrainConfig(steps=1000, lr=1e-3, lr_min=1e-5, warmup=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 100)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(1000, cfg) == pytest.approx(1e-5)
    values = [lr_at(s, cfg) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    constant = dataclasses.replace(cfg, schedule="constant", warmup=0.0)
    assert lr_at(0, constant) == lr_at(999, constant) == 1e-3


def test_alpha_decays_linearly_then_stays():
    cfg = TrainConfig(steps=100, alpha_start=1.0, alpha_end=0.0, alpha_decay=0.25)
    assert alpha_at(0, cfg) == 1.0
    assert alpha_at(10, cfg) == pytest.approx(0.6)
    assert alpha_at(25, cfg) == 0.0 and alpha_at(99, cfg) == 0.0
    assert alpha_at(0, dataclasses.replace(cfg, alpha_decay=0.0)) == 0.0


def test_recursive_loss_mixes_intermediate_and_final_terms():
    target = torch.zeros(2, 1, 4, 4)
    predictions = torch.stack([torch.full_like(target, 1.0), torch.full_like(target, 3.0)])
    final = torch.full_like(target, 2.0)
    total, inter, last = recursive_loss(predictions, final, target, alpha=0.25)
    assert inter.item() == pytest.approx((1 + 9) / 2) and last.item() == pytest.approx(4.0)
    assert total.item() == pytest.approx(0.25 * 5 + 0.75 * 4)
    total, inter, last = recursive_loss(predictions, final, target, alpha=1.0, kind="l1")
    assert total.item() == pytest.approx(2.0) and last.item() == pytest.approx(2.0)


# -- training ------------------------------------------------------------------------------------------------


class _Recorder(TrainReporter):
    def __init__(self):
        self.steps, self.vals, self.checkpoints, self.exports = [], [], [], []

    def step(self, stats):
        self.steps.append(stats)

    def validated(self, stats):
        self.vals.append(stats)

    def checkpointed(self, path, step):
        self.checkpoints.append(step)

    def exported(self, path, step, psnr):
        self.exports.append((step, psnr))


def test_a_few_steps_reduce_the_loss_and_export_the_best_weights(data_dir, tmp_path):
    val_dir = write_training_images(tmp_path / "val", count=1, size=40, seed=9)
    cfg = _config(
        data_dir, tmp_path, steps=40, log_every=10, val=str(val_dir), val_every=20, checkpoint_every=20,
        out=str(tmp_path / "best.safetensors"),
    )  # fmt: skip
    images = load_images([data_dir])
    bank = build_patch_bank(images, cfg.scales, cfg.patch_size, cfg.stride, cfg.downscales)
    x, y = sample_batch(bank, torch.arange(len(bank)))
    torch.manual_seed(cfg.seed)
    initial = DRCN(DRCNConfig(cfg.features, cfg.recursions))
    with torch.no_grad():
        before = recursive_loss(*initial.forward_all(x), y, alpha=0.0)[0].item()
    recorder = _Recorder()
    result = train(cfg, recorder)
    assert result.finished and result.step == 40
    model, metadata = load_weights(tmp_path / "best.safetensors")
    with torch.no_grad():
        after = recursive_loss(*model.forward_all(x), y, alpha=0.0)[0].item()
    assert after < 0.7 * before
    assert [s.step for s in recorder.steps] == [10, 20, 30, 40]
    assert [v.step for v in recorder.vals] == [20, 40] and recorder.checkpoints == [20, 40]
    assert result.best_psnr == max(v.mean_psnr for v in recorder.vals)
    assert metadata["training_steps"] == str(result.best_step) and metadata["scales"] == "2,3"
    assert float(metadata["val_psnr"]) == pytest.approx(result.best_psnr, abs=1e-3)
    assert set(recorder.vals[0].psnr) == {2.0, 3.0}
    rows = (tmp_path / "ckpt" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("kind,step,") and sum(r.startswith("train,") for r in rows) == 4
    assert sum(r.startswith("val,") for r in rows) == 2



def test_bf16_autocast_trains_and_keeps_float32_weights(data_dir, tmp_path):
    # bf16 autocast is the default on CUDA; on the CPU the same code path runs, so a dtype slip shows up here.
    cfg = _config(data_dir, tmp_path, steps=20, precision="bf16", out=str(tmp_path / "bf16.safetensors"))
    recorder = _Recorder()
    result = train(cfg, recorder)
    assert result.finished and np.isfinite(result.last_loss)
    losses = [s.loss for s in recorder.steps]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    tensors = load_file(str(tmp_path / "bf16.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_resume_continues_bit_for_bit(data_dir, tmp_path):
    straight = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "straight"))
    train(straight)
    split = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "split"), stop_at=3)
    first = train(split)
    assert first.step == 3 and not first.finished
    assert json.loads((tmp_path / "split" / "state.json").read_text())["step"] == 3
    second = train(resume_config(tmp_path / "split"))
    assert second.step == 6 and second.finished
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a = read_checkpoint(tmp_path / "straight").optimizer
    opt_b = read_checkpoint(tmp_path / "split").optimizer
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in log[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_ema_decay_warms_up_then_holds():
    assert objective.ema_decay(0.999, 0) == pytest.approx(0.1)
    assert objective.ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert objective.ema_decay(0.999, 100_000) == 0.999
    assert objective.ema_decay(0.5, 0) == pytest.approx(0.1) and objective.ema_decay(0.5, 10) == 0.5


def test_update_ema_moves_each_parameter_towards_the_model():
    torch.manual_seed(0)
    model, ema = DRCN(DRCNConfig(features=4, recursions=2)), DRCN(DRCNConfig(features=4, recursions=2))
    before = {name: p.detach().clone() for name, p in ema.named_parameters()}
    objective.update_ema(ema, model, 0.75)
    for name, param in model.named_parameters():
        torch.testing.assert_close(dict(ema.named_parameters())[name], 0.75 * before[name] + 0.25 * param)


def test_with_ema_the_average_is_validated_exported_checkpointed_and_resumed(data_dir, tmp_path):
    val_dir = write_training_images(tmp_path / "val", count=1, size=40, seed=9)
    common = dict(val=str(val_dir), val_every=6, ema=0.9)
    straight = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "straight"),
                       out=str(tmp_path / "straight.safetensors"), **common)
    train(straight)
    folder = tmp_path / "straight"
    state = json.loads((folder / "state.json").read_text())
    assert state["ema"] == "ema.safetensors" and state["config"]["ema"] == 0.9
    raw, average = _weights(folder), load_file(str(folder / "ema.safetensors"))
    exported = load_file(str(tmp_path / "straight.safetensors"))  # validated at the last step, the only one
    assert all(torch.equal(exported[k], average[k]) for k in average)
    assert not all(torch.equal(raw[k], average[k]) for k in raw)
    _, metadata = load_weights(tmp_path / "straight.safetensors")
    assert json.loads(metadata["training_recipe"])["ema"] == 0.9
    # A run stopped and resumed keeps its average bit for bit.
    split = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "split"), stop_at=3, **common)
    train(split)
    train(resume_config(tmp_path / "split"))
    again = load_file(str(tmp_path / "split" / "ema.safetensors"))
    assert all(torch.equal(again[k], average[k]) for k in average)
    # A run without the average cannot resume with one (nor the other way round).
    plain = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "plain"), stop_at=3)
    train(plain)
    with pytest.raises(CheckpointError, match="ema"):
        train(dataclasses.replace(resume_config(tmp_path / "plain"), ema=0.9))
    with pytest.raises(CheckpointError, match="ema"):
        train(dataclasses.replace(resume_config(tmp_path / "split"), ema=0.0))


def test_resume_refuses_a_different_architecture_or_recipe(data_dir, tmp_path):
    train(_config(data_dir, tmp_path, stop_at=2))
    with pytest.raises(CheckpointError, match="features=8.*architecture"):
        resume_config(tmp_path / "ckpt", {"features": 16})
    with pytest.raises(CheckpointError, match="lr="):
        resume_config(tmp_path / "ckpt", {"lr": 0.1})
    cfg = resume_config(tmp_path / "ckpt", {"steps": 8, "val_every": 5, "features": None})
    assert cfg.steps == 8 and cfg.val_every == 5 and cfg.stop_at is None
    with pytest.raises(CheckpointError, match="recursions=3"):
        train(dataclasses.replace(cfg, recursions=4))
    with pytest.raises(CheckpointError, match="not a drcn training checkpoint"):
        resume_config(data_dir)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resume_config(tmp_path / "nowhere")


def test_resume_refuses_other_training_images(data_dir, tmp_path):
    train(_config(data_dir, tmp_path, stop_at=2))
    other = write_training_images(tmp_path / "other", seed=5)
    with pytest.raises(CheckpointError, match="other images"):
        train(resume_config(tmp_path / "ckpt", {"data": (str(other),)}))


def test_time_limit_stops_with_a_checkpoint(data_dir, tmp_path):
    result = train(_config(data_dir, tmp_path, steps=50, log_every=2, time_limit=0.0))
    assert result.step == 2 and not result.finished
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 2


def test_a_run_that_stops_early_validates_and_exports_where_it_stops(data_dir, tmp_path):
    val_dir = write_training_images(tmp_path / "val", count=1, size=40, seed=9)
    recorder = _Recorder()
    cfg = _config(data_dir, tmp_path, steps=50, log_every=2, time_limit=0.0, val=str(val_dir), val_every=1000,
                  out=str(tmp_path / "out.safetensors"))
    result = train(cfg, recorder)
    assert result.step == 2 and [v.step for v in recorder.vals] == [2] and result.best_step == 2
    assert load_weights(tmp_path / "out.safetensors")[1]["training_steps"] == "2"


def test_training_on_the_cpu_keeps_freed_memory_for_reuse(data_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: calls.append(True) or True)
    train(_config(data_dir, tmp_path, steps=1, time_limit=0.0))
    assert calls == [True]


# -- checkpoints ---------------------------------------------------------------------------------------------


def _trained_optimizer(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.forward_all(torch.rand(2, 1, 9, 9))[1].square().mean().backward()
    optimizer.step()
    return optimizer


def test_checkpoint_round_trip_with_split_files_and_rng(tmp_path):
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=8, recursions=3))
    optimizer = _trained_optimizer(model)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    # 1 KiB per file: the 8x8x3x3 kernels (2304 bytes) must be cut into pieces.
    path = write_checkpoint(tmp_path / "ck", model, optimizer, {"step": 7, "config": {}}, max_file_bytes=1024)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    files = sorted(p.name for p in path.iterdir())
    assert "state.json" in files and "rng.pt" in files and "model.safetensors" in files
    shards = list(path.glob("optimizer-*.safetensors"))
    # A safetensors file is 8 bytes of header length, the JSON header, then the tensor data.
    data_bytes = [p.stat().st_size - 8 - int.from_bytes(p.read_bytes()[:8], "little") for p in shards]
    assert len(shards) > 3 and max(data_bytes) <= 1024
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 7 and "0.weight" not in state and state["optimizer_split"]
    loaded = read_checkpoint(path)
    original = optimizer.state_dict()["state"]
    assert loaded.optimizer.keys() == original.keys()
    for index, entries in original.items():
        for name, value in entries.items():
            assert torch.equal(loaded.optimizer[index][name], value)
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())
    from drcn_cli.training.checkpoint import restore_rng as _restore_rng

    _restore_rng(loaded.rng)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = DRCN(DRCNConfig(features=8, recursions=3))
    optimizer = _trained_optimizer(model)
    write_checkpoint(tmp_path / "ck", model, optimizer, {"step": 1, "config": {}})
    write_checkpoint(tmp_path / "ck", model, optimizer, {"step": 2, "config": {}})
    assert read_checkpoint(tmp_path / "ck").state["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or old folders left

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("drcn_cli.training.checkpoint.torch.save", broken)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path / "ck", model, optimizer, {"step": 3, "config": {}})
    assert read_checkpoint(tmp_path / "ck").state["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_damaged_checkpoint_is_refused(tmp_path):
    model = DRCN(DRCNConfig(features=8, recursions=3))
    write_checkpoint(tmp_path / "ck", model, _trained_optimizer(model), {"step": 1, "config": {}})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        read_checkpoint(tmp_path / "ck")


# -- bad input: clear errors, nothing overwritten -------------------------------------------------------------


def test_bad_data_is_refused_before_anything_is_written(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        train(_config(empty, tmp_path))
    tiny = write_training_images(tmp_path / "tiny", size=12)
    with pytest.raises(DataError, match="no 17x17 patch fits"):
        train(_config(tiny, tmp_path))
    assert not (tmp_path / "ckpt").exists()


def test_existing_out_and_foreign_folders_are_not_overwritten(data_dir, tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists"):
        train(_config(data_dir, tmp_path, out=str(out)))
    assert out.read_bytes() == b"precious"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(CheckpointError, match="not a drcn checkpoint"):
        train(_config(data_dir, tmp_path, checkpoint_dir=str(foreign)))
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    train(_config(data_dir, tmp_path, steps=2))
    with pytest.raises(CheckpointError, match="holds a checkpoint"):
        train(_config(data_dir, tmp_path, steps=2))
    train(_config(data_dir, tmp_path, steps=2, overwrite=True, out=str(out)))
    assert load_weights(out)[0].config == DRCNConfig(8, 3)


def test_init_weights_of_another_architecture_are_refused(data_dir, tmp_path):
    save_weights(DRCN(DRCNConfig(features=4, recursions=2)), tmp_path / "small.safetensors")
    with pytest.raises(WeightsError, match="F=4, D=2"):
        train(_config(data_dir, tmp_path, init=str(tmp_path / "small.safetensors")))
    assert not (tmp_path / "ckpt").exists()


def test_init_starts_from_the_given_weights(data_dir, tmp_path):
    torch.manual_seed(42)
    start = DRCN(DRCNConfig(features=8, recursions=3))
    save_weights(start, tmp_path / "start.safetensors")
    cfg = _config(data_dir, tmp_path, init=str(tmp_path / "start.safetensors"), lr=1e-9, lr_min=1e-9, steps=1)
    train(cfg)
    trained = _weights(tmp_path / "ckpt")
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in start.state_dict().items())


@pytest.mark.parametrize("method", ["split", "fresh"])
def test_init_from_a_narrower_model_widens_it_as_asked(data_dir, tmp_path, method):
    torch.manual_seed(3)
    start = DRCN(DRCNConfig(features=4, recursions=3))
    save_weights(start, tmp_path / "narrow.safetensors")
    cfg = _config(
        data_dir, tmp_path, init=str(tmp_path / "narrow.safetensors"), widen=method, lr=1e-9, lr_min=1e-9, steps=1
    )
    train(cfg)
    trained = _weights(tmp_path / "ckpt")
    torch.manual_seed(cfg.seed)  # the widening's noise (split) or fresh weights come from the run's seed
    expected = widen(start, 8, method)
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in expected.state_dict().items())
    wide = DRCN(DRCNConfig(features=8, recursions=3))
    wide.load_state_dict(trained)
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():  # the same function: exactly (fresh), or within the copies' noise (split)
        tolerance = 1e-5 if method == "fresh" else 0.02
        torch.testing.assert_close(wide.forward_all(x)[1], start.forward_all(x)[1], rtol=0, atol=tolerance)


def test_exported_weights_count_the_steps_behind_their_init(data_dir, tmp_path):
    save_weights(DRCN(DRCNConfig(features=8, recursions=3)), tmp_path / "start.safetensors", {"training_steps": "7"})
    out = tmp_path / "next.safetensors"
    cfg = _config(data_dir, tmp_path, init=str(tmp_path / "start.safetensors"), steps=4, stop_at=2, out=str(out))
    train(cfg)
    assert load_weights(out)[1]["training_steps_total"] == "9"
    # A checkpoint's weights count the same steps, so a warm restart from them (--init) keeps the total.
    assert load_weights(tmp_path / "ckpt" / "model.safetensors")[1]["training_steps_total"] == "9"
    (tmp_path / "start.safetensors").unlink()  # a resumed run keeps the count without its init file
    train(resume_config(str(tmp_path / "ckpt")))
    metadata = load_weights(out)[1]
    assert (metadata["training_steps"], metadata["training_steps_total"]) == ("4", "11")
    assert metadata["training_init"] == "start.safetensors"

# -- distributed ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_path_with_one_process_matches_the_plain_run(data_dir, tmp_path, monkeypatch):
    import torch.distributed as dist

    train(_config(data_dir, tmp_path, steps=2, checkpoint_dir=str(tmp_path / "plain")))
    for key, value in {
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    result = train(_config(data_dir, tmp_path, steps=2, checkpoint_dir=str(tmp_path / "ddp")))
    assert result.finished and not dist.is_initialized()
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())
    assert state["world_size"] == 1
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ddp")
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_validation_follows_the_bench_protocol(tmp_path):
    from drcn_cli.bench.metrics import luma_8bit, psnr, ssim
    from drcn_cli.bench.protocol import evaluate
    from drcn_cli.inference.pipeline import open_upscaler
    from drcn_cli.inference.resize import imresize
    from drcn_cli.training.data import quantize
    from drcn_cli.training.images import list_images
    from drcn_cli.training.setup import prepare_validation

    folder = write_training_images(tmp_path / "val", count=2, size=50, seed=4)
    items = prepare_validation(list_images(folder), (2.0, 3.0))
    assert [(i.scale, tuple(i.hr.shape)) for i in items[:2]] == [(2.0, (3, 50, 50)), (3.0, (3, 48, 48))]
    # With a zero output layer every prediction is the skip connection: the network returns its bicubic input.
    model = DRCN(DRCNConfig(features=8, recursions=3))
    with torch.no_grad():
        model.recon2.weight.zero_()
        model.recon2.bias.zero_()
    scores = evaluate(items, open_upscaler(model, "cpu", "fp32"))
    for scale in (2.0, 3.0):
        expected = []
        for item in (i for i in items if i.scale == scale):
            sr = luma_8bit(quantize(imresize(item.lr, scale).clamp(0, 1)))
            hr = luma_8bit(item.hr)
            expected.append((psnr(sr, hr, int(scale)), ssim(sr, hr, int(scale))))
        assert scores[scale].psnr == pytest.approx(sum(p for p, _ in expected) / 2, abs=1e-6)
        assert scores[scale].ssim == pytest.approx(sum(q for _, q in expected) / 2, abs=1e-6)
    with pytest.raises(DataError, match="too small to validate"):
        prepare_validation(list_images(write_training_images(tmp_path / "small", count=1, size=16)), (4.0,))


def test_weights_that_decay_below_tiny_are_zeroed_in_place_during_training():
    from drcn_cli.training.objective import _zero_tiny_
    from drcn_cli.weights.files import TINY

    weight = torch.nn.Parameter(torch.tensor([1e-40, -TINY / 2, TINY * 2, 0.3]))
    _zero_tiny_([weight])
    assert weight.tolist() == [0.0, 0.0, pytest.approx(TINY * 2), pytest.approx(0.3)]


def test_a_jpeg_run_trains_on_its_step_and_validates_clean_and_jpeg_side_by_side(data_dir, tmp_path):
    val_dir = write_training_images(tmp_path / "val", count=1, size=40, seed=9)
    seen = []

    class Recorder(TrainReporter):
        def validated(self, stats):
            seen.append(stats)

    cfg = _config(data_dir, tmp_path, val=str(val_dir), val_every=6, jpeg_quality="30..60", jpeg_clean=0.5,
                  out=str(tmp_path / "photo.safetensors"))  # fmt: skip
    train(cfg, Recorder())
    (stats,) = seen
    assert stats.jpeg_quality == 75 and set(stats.jpeg_psnr) == set(stats.psnr) == {2.0, 3.0}
    assert stats.jpeg_psnr != stats.psnr
    cells = [*stats.psnr.values(), *stats.jpeg_psnr.values()]
    assert stats.mean_psnr == pytest.approx(sum(cells) / 4)  # the best is chosen on both
    _, metadata = load_weights(tmp_path / "photo.safetensors")
    assert "JPEG at quality 30..60" in metadata["training_data"]
    assert "through JPEG q75" in metadata["validation_jpeg"]
    assert json.loads(metadata["training_recipe"])["jpeg_quality"] == "30..60"
    log = (tmp_path / "ckpt" / "log.csv").read_text().splitlines()
    header, val_row = log[0].split(","), next(line for line in log if line.startswith("val")).split(",")
    assert val_row[header.index("val_jpeg_psnr_x2")] != ""
    # The data differ from a clean run's: a run without the step ends elsewhere.
    plain = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "plain"))
    jpeg = _config(data_dir, tmp_path, checkpoint_dir=str(tmp_path / "jpeg"), jpeg_quality="30..60")
    assert train(plain).last_loss != train(jpeg).last_loss
    # A resumed run keeps the step: it is part of the recipe.
    with pytest.raises(CheckpointError, match="jpeg"):
        train(dataclasses.replace(resume_config(tmp_path / "jpeg"), jpeg_quality="40..60", steps=8))


def test_a_jpeg_run_needs_a_pack_with_colour(data_dir, tmp_path):
    from drcn_cli.training.images import save_pack

    save_pack(tmp_path / "luma.npz", load_images([data_dir]))
    cfg = _config(data_dir, tmp_path, pack=str(tmp_path / "luma.npz"), jpeg_quality="50")
    with pytest.raises(DataError, match="luminance only"):
        train(cfg)
    assert not (tmp_path / "ckpt").exists()
    colour = _config(data_dir, tmp_path, pack=str(tmp_path / "colour.npz"), jpeg_quality="50", steps=1)
    train(colour)
    train(dataclasses.replace(colour, data=(), checkpoint_dir=str(tmp_path / "again")))  # the pack serves alone


def test_checkpoint_files_go_through_the_one_writer_and_only_a_folder_is_replaced(tmp_path):
    import os
    import stat

    model = DRCN(DRCNConfig(features=8, recursions=3))
    optimizer = _trained_optimizer(model)
    (tmp_path / "log.csv").write_text("step,loss\n1,0.5\n")
    umask = os.umask(0o027)
    try:
        path = write_checkpoint(tmp_path / "ck", model, optimizer, {"step": 1, "config": {}}, tmp_path / "log.csv")
    finally:
        os.umask(umask)
    files = sorted(p.name for p in path.iterdir())
    assert {"state.json", "rng.pt", "model.safetensors", "log.csv"} <= set(files)
    assert not [name for name in files if name.startswith(".")]
    assert all(stat.S_IMODE((path / name).stat().st_mode) == 0o640 for name in files)
    assert (path / "log.csv").read_text() == "step,loss\n1,0.5\n"
    assert read_checkpoint(path).state["step"] == 1
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(path)
    for target in (tmp_path / "pipe", tmp_path / "link"):
        with pytest.raises(CheckpointError, match="not a checkpoint folder"):
            write_checkpoint(target, model, optimizer, {"step": 2, "config": {}})
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode) and (tmp_path / "link").is_symlink()
    assert read_checkpoint(path).state["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "link", "log.csv", "pipe"]


# -- a run that diverges: an error, and no file holding NaN --------------------------------------------------------


def _weights_files(folder):
    return sorted(p.name for p in folder.rglob("*.safetensors")) if folder.exists() else []


def test_a_learning_rate_that_blows_up_stops_with_a_training_error_and_writes_no_weights(data_dir, tmp_path):
    from drcn_cli.training.loop import TrainingError

    out = tmp_path / "w.safetensors"
    cfg = _config(data_dir, tmp_path, steps=4, lr=1e30, lr_min=0.0, optimizer="sgd", grad_clip=0.0, warmup=0.0,
                  out=str(out), checkpoint_every=1)  # fmt: skip
    with pytest.raises(TrainingError, match="output .*NaN or infinite by step 1; nothing of it was written"):
        train(cfg)
    assert not out.exists()
    assert not (tmp_path / "ckpt" / "state.json").exists() and _weights_files(tmp_path / "ckpt") == []


def _inject_nan_at(monkeypatch, step_to_break, target="model"):
    """Make the weights (or their average) NaN right after optimiser step ``step_to_break`` (1-based)."""
    calls = {"n": 0}
    real_zero, real_ema = loop._zero_tiny_, loop.update_ema

    def zero_tiny(params):
        real_zero(params)
        if target == "model" and params and params[0].requires_grad:
            calls["n"] += 1
            if calls["n"] == step_to_break:
                with torch.no_grad():
                    params[0].fill_(float("nan"))  # ensemble_logits, the model's own parameter, comes first

    def update_ema(ema, model, decay):
        real_ema(ema, model, decay)
        calls["n"] += target == "ema"
        if target == "ema" and calls["n"] == step_to_break:
            with torch.no_grad():
                ema.recursive.bias.fill_(float("inf"))

    monkeypatch.setattr(loop, "_zero_tiny_", zero_tiny)
    monkeypatch.setattr(loop, "update_ema", update_ema)


def test_nan_weights_after_the_last_step_are_caught_before_validation_export_and_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    from drcn_cli.training.loop import TrainingError

    _inject_nan_at(monkeypatch, 1)
    val_dir = write_training_images(tmp_path / "val", count=1, size=40, seed=9)
    out = tmp_path / "w.safetensors"
    recorder = _Recorder()
    with pytest.raises(TrainingError, match=r"the weights \(ensemble_logits first\) became NaN or infinite by step 1"):
        train(_config(data_dir, tmp_path, steps=1, out=str(out), val=str(val_dir)), recorder)
    assert not out.exists() and recorder.vals == [] and recorder.exports == [] and recorder.checkpoints == []
    assert _weights_files(tmp_path / "ckpt") == [] and not (tmp_path / "ckpt" / "state.json").exists()


def test_a_nan_in_the_moving_average_is_caught_too(data_dir, tmp_path, monkeypatch):
    from drcn_cli.training.loop import TrainingError

    _inject_nan_at(monkeypatch, 2, target="ema")
    with pytest.raises(TrainingError, match=r"the averaged weights \(recursive.bias first\)"):
        train(_config(data_dir, tmp_path, steps=3, ema=0.9, out=str(tmp_path / "w.safetensors")))
    assert not (tmp_path / "w.safetensors").exists()


def test_a_run_that_diverges_after_a_checkpoint_keeps_that_checkpoint_and_writes_nothing_later(
    data_dir, tmp_path, monkeypatch
):
    from drcn_cli.training.loop import TrainingError

    _inject_nan_at(monkeypatch, 3)
    out = tmp_path / "w.safetensors"
    with pytest.raises(TrainingError, match="by step 3"):
        train(_config(data_dir, tmp_path, steps=6, log_every=3, checkpoint_every=2, out=str(out)))
    checkpoint = read_checkpoint(tmp_path / "ckpt")
    assert checkpoint.state["step"] == 2 and all(torch.isfinite(v).all() for v in checkpoint.model.values())
    model, metadata = load_weights(out)  # the step-2 export, finite (load_weights refuses NaN)
    assert metadata["training_steps"] == "2"


# -- where the weights go: checked before the run -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["out", "checkpoint_dir", "pack"])
def test_a_target_under_a_regular_file_is_refused_before_anything_is_done(data_dir, tmp_path, field):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    target = blocker / "sub" / ("x" if field == "checkpoint_dir" else "x.safetensors")
    changes = {field: str(target), "out": str(tmp_path / "w.safetensors")} if field != "out" else {"out": str(target)}
    with pytest.raises(CheckpointError, match=f"^{target}: cannot write .* there: {blocker} is not a folder$"):
        train(_config(data_dir, tmp_path, **changes))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "train"]  # no checkpoint folder, log or pack


def test_a_target_in_a_folder_without_write_permission_is_refused_before_the_run(data_dir, tmp_path, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: os.fspath(path) != str(locked) and real_access(
        path, mode, **kw))  # fmt: skip
    for target in (locked / "w.safetensors", locked / "new" / "deeper" / "w.safetensors"):  # missing folders too
        with pytest.raises(CheckpointError, match=f"^{target}: cannot write the weights there: the folder {locked} "
                                                  "is not writable$"):  # fmt: skip
            train(_config(data_dir, tmp_path, out=str(target)))
    assert list(locked.iterdir()) == [] and not (tmp_path / "ckpt").exists()


def test_a_read_only_folder_is_refused_before_the_run(data_dir, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes in a read-only folder: the os.access test above covers the check")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(CheckpointError, match="is not writable"):
            train(_config(data_dir, tmp_path, out=str(locked / "w.safetensors")))
    finally:
        locked.chmod(0o700)
    assert not (tmp_path / "ckpt").exists()
