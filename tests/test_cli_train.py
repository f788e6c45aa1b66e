"""`drcn train` end to end through the root app: outputs, CSV log, resume, and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import write_training_images
from typer.testing import CliRunner

from drcn_cli.cli import app

runner = CliRunner()

TINY = ["-F", "8", "-D", "3", "--patch-size", "17", "--stride", "8", "-b", "8", "--lr", "1e-3", "--threads", "1",
        "--scale", "2", "--scale", "3", "--downscale", "1", "--quiet"]  # fmt: skip


@pytest.fixture
def folders(tmp_path):
    return write_training_images(tmp_path / "train"), write_training_images(tmp_path / "val", count=1, size=40, seed=3)


def _invoke(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def test_train_writes_weights_checkpoint_and_log(folders, tmp_path):
    train_dir, val_dir = folders
    out, ckpt = tmp_path / "w.safetensors", tmp_path / "ck"
    result = _invoke("--data", train_dir, "--val", val_dir, "--out", out, "--checkpoint-dir", ckpt, "--steps", 4,
                     "--val-every", 2, "--log-every", 2, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and (ckpt / "state.json").is_file()
    with (ckpt / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["step"]) for r in rows] == [("train", "2"), ("val", "2"), ("train", "4"), ("val", "4")]
    assert float(rows[1]["val_psnr_x2"]) > 20 and float(rows[0]["loss"]) > 0


def test_train_shows_progress_and_a_summary_unless_quiet(folders, tmp_path):
    train_dir, val_dir = folders
    args = [a for a in TINY if a != "--quiet"]
    result = _invoke("--data", train_dir, "--val", val_dir, "--out", tmp_path / "w.safetensors",
                     "--checkpoint-dir", tmp_path / "ck", "--steps", 2, *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "val PSNR/SSIM x2" in result.output and "trained 2 steps" in result.output


def test_stop_and_resume_continue_the_same_run(folders, tmp_path):
    train_dir, _ = folders
    out, ckpt = tmp_path / "w.safetensors", tmp_path / "ck"
    first = _invoke("--data", train_dir, "--out", out, "--checkpoint-dir", ckpt, "--steps", 4, "--stop-at", 2,
                    "--log-every", 1, *TINY)  # fmt: skip
    assert first.exit_code == 0, first.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    second = _invoke("--resume", ckpt, "--threads", 1, "--quiet")
    assert second.exit_code == 0, second.output
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["config"]["stop_at"] is None
    steps = [r["step"] for r in csv.DictReader((ckpt / "log.csv").open())]
    assert steps == ["1", "2", "3", "4"]


def test_resume_with_another_architecture_is_an_error(folders, tmp_path):
    train_dir, _ = folders
    ckpt = tmp_path / "ck"
    assert _invoke("--data", train_dir, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", ckpt,
                   "--steps", 2, *TINY).exit_code == 0  # fmt: skip
    before = (ckpt / "model.safetensors").read_bytes()
    result = _invoke("--resume", ckpt, "--features", 16)
    assert result.exit_code == 1 and "error:" in result.output and "architecture" in result.output
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_existing_out_needs_overwrite(folders, tmp_path):
    train_dir, _ = folders
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep me")
    result = _invoke("--data", train_dir, "--out", out, "--checkpoint-dir", tmp_path / "ck", "--steps", 1, *TINY)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert out.read_bytes() == b"keep me" and not (tmp_path / "ck").exists()
    result = _invoke("--data", train_dir, "--out", out, "--checkpoint-dir", tmp_path / "ck", "--steps", 1,
                     "--overwrite", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != b"keep me"


def test_bad_data_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke("--data", empty, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck", *TINY)
    assert result.exit_code == 1 and result.output.startswith("error: ") and "no images" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG not really")
    result = _invoke("--data", broken, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck", *TINY)
    assert result.exit_code == 1 and "x.png" in result.output
    small = write_training_images(tmp_path / "small", size=12)
    result = _invoke("--data", small, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck", *TINY)
    assert result.exit_code == 1 and "patch fits" in result.output
    assert not (tmp_path / "w.safetensors").exists() and not (tmp_path / "ck").exists()


def test_usage_errors_exit_2(folders, tmp_path):
    train_dir, _ = folders
    assert _invoke("--out", tmp_path / "w.safetensors", *TINY).exit_code == 2  # no --data
    assert _invoke("--data", train_dir, *TINY).exit_code == 2  # no --out
    result = _invoke("--data", train_dir, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck",
                     "--optimizer", "lbfgs", *TINY)  # fmt: skip
    assert result.exit_code == 2 and "optimizer" in result.output


def test_init_takes_its_architecture_from_the_weights(folders, tmp_path):
    from drcn_cli.model import DRCN, DRCNConfig
    from drcn_cli.weights.files import load_weights, save_weights

    train_dir, _ = folders
    save_weights(DRCN(DRCNConfig(features=4, recursions=2)), tmp_path / "start.safetensors")
    args = TINY[4:]  # without -F 8 -D 3
    result = _invoke("--data", train_dir, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck",
                     "--init", tmp_path / "start.safetensors", "--steps", 1, *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_weights(tmp_path / "w.safetensors")[0].config == DRCNConfig(4, 2)
    result = _invoke("--data", train_dir, "--out", tmp_path / "w2.safetensors", "--checkpoint-dir", tmp_path / "ck2",
                     "--init", tmp_path / "start.safetensors", "--steps", 1, *TINY)  # fmt: skip
    assert result.exit_code == 1 and "F=4, D=2" in result.output
    result = _invoke("--data", train_dir, "--out", tmp_path / "w3.safetensors", "--init", tmp_path / "nope.safetensors",
                     *TINY)  # fmt: skip
    assert result.exit_code == 1 and "no such weights file" in result.output


def test_help_defaults_match_the_library_defaults():
    import re
    from typing import get_args, get_type_hints

    from drcn_cli.cli import train as cli_train
    from drcn_cli.training.config import TrainConfig

    fields = {"scale": "scales", "downscale": "downscales"}
    checked = 0
    for name, hint in get_type_hints(cli_train.train, include_extras=True).items():
        if name == "return":
            continue
        option = get_args(hint)[1]
        match = re.search(r"\(default: ([^,)]+)", option.help or "")
        if not match or not hasattr(TrainConfig, fields.get(name, name)):
            continue
        value = getattr(TrainConfig, fields.get(name, name))
        if value is None:  # a default the command works out (checkpoint folder, threads)
            continue
        shown = match.group(1).rstrip(".")
        if isinstance(value, tuple):
            assert [float(v) for v in shown.split()] == list(value), name
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(shown) == value, name
        else:
            assert shown == str(value), name
        checked += 1
    assert checked >= 15


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 1 of 3: its data folder and its checkpoint, to be damaged by copies."""
    root = tmp_path_factory.mktemp("stopped")
    train_dir = write_training_images(root / "train")
    ckpt = root / "ck"
    result = _invoke("--data", train_dir, "--out", root / "w.safetensors", "--checkpoint-dir", ckpt, "--steps", 3,
                     "--stop-at", 1, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    return ckpt


def _set(field, value):
    def damage(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        state[field] = value
        (ckpt / "state.json").write_text(json.dumps(state))

    return damage


def _set_config(field, value):
    def damage(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        state["config"][field] = value
        (ckpt / "state.json").write_text(json.dumps(state))

    return damage


def _save_rng(value):
    def damage(ckpt):
        import torch

        torch.save(value, ckpt / "rng.pt")

    return damage


def _rng_python_out_of_range():
    import torch

    from drcn_cli.training.checkpoint import rng_state as _rng_state

    state = _rng_state()
    state["python"] = torch.full((625,), 2**40, dtype=torch.int64)
    return state


DAMAGES = {
    "garbage rng.pt": lambda ck: (ck / "rng.pt").write_bytes(b"\x80\x02garbage that is not a pickle"),
    "rng.pt of another kind": _save_rng({"torch": "not a tensor"}),
    "rng.pt with impossible values": lambda ck: _save_rng(_rng_python_out_of_range())(ck),
    "state.json is a list": lambda ck: (ck / "state.json").write_text("[]"),
    "state.json is not JSON": lambda ck: (ck / "state.json").write_text("{"),
    "step is a string": _set("step", "1"),
    "step is negative": _set("step", -4),
    "model names another folder": _set("model", "../w.safetensors"),
    "optimizer files not a list": _set("optimizer_files", "optimizer-00.safetensors"),
    "optimizer split bad": _set("optimizer_split", {"0.exp_avg": "big"}),
    "elapsed is text": _set("elapsed_s", "long"),
    "best psnr is text": _set("best_psnr", "great"),
    "config lr is text": _set_config("lr", "fast"),
    "config scales not numbers": _set_config("scales", ["x2"]),
    "config scales out of range": _set_config("scales", [0.5]),
    "config augment is a number": _set_config("augment", 3),
    "model file missing": lambda ck: (ck / "model.safetensors").unlink(),
    "optimizer file garbage": lambda ck: (ck / "optimizer-00.safetensors").write_bytes(b"garbage"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_from_a_damaged_checkpoint_is_one_line_exit_1(stopped_run, tmp_path, damage):
    import shutil

    ckpt = tmp_path / "ck"
    shutil.copytree(stopped_run, ckpt)
    DAMAGES[damage](ckpt)
    before = sorted(p.name for p in ckpt.iterdir())

    result = _invoke("--resume", ckpt, "--threads", 1, "--quiet")

    assert result.exit_code == 1, (damage, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(ckpt) in lines[0], (damage, result.output)
    assert "weights_only" not in lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in ckpt.iterdir()) == before  # nothing written into it


def test_resume_from_the_undamaged_copy_works(stopped_run, tmp_path):
    import shutil

    ckpt = tmp_path / "ck"
    shutil.copytree(stopped_run, ckpt)
    result = _invoke("--resume", ckpt, "--threads", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3


@pytest.mark.parametrize("when", ["during data preparation", "at step 2"])
def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exit_130(folders, tmp_path, monkeypatch, when):
    import os
    import signal

    from drcn_cli.training import loop, setup

    train_dir, _ = folders
    ckpt = tmp_path / "ck"
    if when == "at step 2":
        real_batch, calls = loop.random_batch, []

        def batch_then_killed(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_batch(*args, **kwargs)

        monkeypatch.setattr(loop, "random_batch", batch_then_killed)
        expected_step = 2
    else:
        real_bank = setup.build_patch_bank

        def killed_while_preparing(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real_bank(*args, **kwargs)

        monkeypatch.setattr(setup, "build_patch_bank", killed_while_preparing)
        expected_step = 1
    before = signal.getsignal(signal.SIGTERM)

    result = _invoke("--data", train_dir, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", ckpt,
                     "--steps", 50, *TINY)  # fmt: skip

    assert result.exit_code == 130, result.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == expected_step
    assert f"interrupted at step {expected_step} of 50" in result.output and f"--resume {ckpt}" in result.output
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.undo()
    resumed = _invoke("--resume", ckpt, "--steps", 3, "--threads", 1, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3


def test_a_second_signal_interrupts_at_once_and_says_there_is_no_checkpoint(folders, tmp_path, monkeypatch):
    import os
    import signal

    from drcn_cli.training import setup

    train_dir, _ = folders

    def killed_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the second SIGTERM did not interrupt")

    monkeypatch.setattr(setup, "build_patch_bank", killed_twice)
    result = _invoke("--data", train_dir, "--out", tmp_path / "w.safetensors", "--checkpoint-dir", tmp_path / "ck",
                     "--steps", 50, *TINY)  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "interrupted before the first checkpoint: nothing to resume from" in result.output


# -- options declared once: choices, recipe files ----------------------------------------------------------------


def _capture_config(monkeypatch):
    """Replace the training itself by one that records the TrainConfig it is given."""
    from drcn_cli.training import loop
    from drcn_cli.training.report import TrainResult

    seen = []

    def fake_train(cfg, reporter=None, should_stop=None):
        seen.append(cfg)
        return TrainResult(cfg.steps, True, 0.0, None, None, None, None, 0.0)

    monkeypatch.setattr(loop, "train", fake_train)
    return seen


@pytest.mark.parametrize(("option", "bad", "choices"), [
    ("--optimizer", "lbfgs", "adam"), ("--schedule", "step", "cosine"), ("--loss", "huber", "l1"),
    ("--precision", "fp16", "bf16"),
])  # fmt: skip
def test_a_bad_choice_is_a_usage_error_listing_the_choices(tmp_path, option, bad, choices):
    result = _invoke("--data", tmp_path, "--out", tmp_path / "w.safetensors", option, bad, "--quiet")
    assert result.exit_code == 2 and bad in result.stderr and choices in result.stderr


def test_a_recipe_file_gives_the_options_and_the_command_line_wins(tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    recipe = tmp_path / "lite.toml"
    recipe.write_text(f'data = ["{tmp_path}"]\nout = "{tmp_path / "w.safetensors"}"\nfeatures = 64\nlr = 3e-4\n'
                      'scales = [2, 3]\noptimizer = "adamw"\nsteps = 500\n')  # fmt: skip
    result = _invoke("--config", recipe, "--steps", 9, "--quiet")
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert (cfg.features, cfg.lr, cfg.scales, cfg.optimizer) == (64, 3e-4, (2.0, 3.0), "adamw")  # from the file
    assert cfg.steps == 9 and cfg.data == (str(tmp_path),)  # the command line wins; lists become tuples
    assert cfg.checkpoint_dir == str(Path(".checkpoints") / "w")


@pytest.mark.parametrize(("text", "expected"), [
    ("learning_rate = 0.1", "unknown option 'learning_rate'"),
    ("steps = 'many'", "'steps' should be a whole number"),
    ("steps = [", "not a TOML recipe"),
])  # fmt: skip
def test_a_bad_recipe_is_one_line_exit_2(tmp_path, text, expected):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text + "\n")
    result = _invoke("--config", recipe, "--data", tmp_path, "--out", tmp_path / "w.safetensors", "--quiet")
    assert result.exit_code == 2 and expected in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


# -- refused before the run: nothing trained, nothing written --------------------------------------------------------


def _main(args, capsys):
    from drcn_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def test_an_out_folder_that_cannot_be_written_is_one_line_before_training(folders, tmp_path, capsys):
    train_dir, _ = folders
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    ckpt = tmp_path / "ck"
    for out in (blocker / "w.safetensors", blocker / "more" / "w.safetensors"):
        code, err = _main(["train", "--data", train_dir, "--out", out, "--checkpoint-dir", ckpt, "--steps", 2,
                           *TINY], capsys)  # fmt: skip
        assert code == 1 and err.count("\n") == 1, err
        assert err == f"error: {out}: cannot write the weights there: {blocker} is not a folder\n"
    assert not ckpt.exists()  # refused before the data was read or a log started


def test_lr_inf_in_a_recipe_or_on_the_command_line_trains_nothing(folders, tmp_path, capsys):
    train_dir, _ = folders
    out = tmp_path / "w.safetensors"
    recipe = tmp_path / "r.toml"
    recipe.write_text("lr = inf\n")
    for extra in (["--lr", "inf"], ["--config", recipe]):
        code, err = _main(["train", "--data", train_dir, "--out", out, "--checkpoint-dir", tmp_path / "ck",
                           "--steps", 1, *[a for a in TINY if a not in ("--lr", "1e-3")], *extra], capsys)  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and "must be a finite number, got inf" in err, err
    assert not out.exists() and not (tmp_path / "ck").exists()


def test_a_run_that_blows_up_is_one_error_line_and_leaves_no_weights(folders, tmp_path, capsys):
    train_dir, _ = folders
    out, ckpt = tmp_path / "w.safetensors", tmp_path / "ck"
    args = [a for a in TINY if a not in ("--lr", "1e-3")]
    code, err = _main(["train", "--data", train_dir, "--out", out, "--checkpoint-dir", ckpt, "--steps", 3,
                       "--lr", "1e30", "--optimizer", "sgd", "--grad-clip", 0, "--warmup", 0, "--checkpoint-every", 1,
                       *args], capsys)  # fmt: skip
    assert code == 1 and err.startswith("error: training diverged:") and err.count("\n") == 1, err
    assert not out.exists() and not (ckpt / "state.json").exists()
    assert not list(ckpt.glob("*.safetensors"))


@pytest.mark.parametrize("content", [b"lr = 3e-4\n\xff\n", "steps = 5\n".encode("utf-16"), b"\x00\x01\x02"])
def test_a_config_that_is_not_utf8_toml_is_one_line_naming_it(tmp_path, capsys, content):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(content)
    code, err = _main(["train", "--config", recipe, "--data", tmp_path, "--out", tmp_path / "w.safetensors"], capsys)
    assert code == 2 and err.startswith(f"error: {recipe}: not a TOML recipe") and err.count("\n") == 1, err
