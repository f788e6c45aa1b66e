"""`drcn train`'s options, generated from TrainConfig's fields: the help, the defaults it shows, the values given."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.cli import train as cli_train
from drcn_cli.training.config import OPTIMIZERS, TrainConfig

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # room for every help line unwrapped


def _help_rows(output: str) -> dict[str, tuple[str, str]]:
    """Each option of a rich help screen: its long flag -> (its panel, its row)."""
    rows, panel = {}, None
    for line in output.splitlines():
        if heading := re.match(r"╭─ (.+?) ─", line):
            panel = heading.group(1)
        elif option := re.match(r"│ (--[\w-]+)", line):
            rows[option.group(1)] = (panel, line)
    return rows


def _field(name: str) -> dataclasses.Field:
    return next(field for field in dataclasses.fields(TrainConfig) if field.name == name)


def test_every_option_field_is_in_the_help_with_its_flags_panel_and_default():
    result = runner.invoke(app, ["train", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = _help_rows(result.output)
    fields = cli_train.option_fields()
    for field in fields:
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        panel, row = rows.pop(flag)
        assert panel == field.metadata["panel"], field.name
        assert cli_train.option_help(field) in row, field.name
        if "short" in field.metadata:
            assert re.search(rf"{flag}\s+{field.metadata['short']}\s", row), field.name
    assert set(rows) == {"--config", "--quiet", "--help"}  # the command's own
    not_options = {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in fields}
    assert not_options == {"augment", "quantize_lr", "alpha_start", "alpha_end"}  # set in a recipe only


@pytest.mark.parametrize(("flag", "shown"), [
    ("--lr", "Peak learning rate (default: 2e-4)."), ("--lr-min", "(default: 2e-6)."),
    ("--warmup", "(default: 0.02)."), ("--grad-clip", "(default: 1)."), ("--weight-decay", "(default: 0)."),
    ("--scale", "repeat for one model of several (default: 2 3 4)."), ("--downscale", "(default: 1 0.9 0.8 0.7 0.6)."),
    ("--features", "Filters per conv (default: 256, or --init's)."), ("--optimizer", "(default: adam)."),
    ("--steps", "(default: 30000)."), ("--seed", "(default: 0)."),
    ("--checkpoint-dir", "(default: .checkpoints/<out name>, or the --resume folder)."),
])  # fmt: skip
def test_the_help_shows_the_defaults_readably(flag, shown):
    result = runner.invoke(app, ["train", "--help"], env=WIDE)
    assert shown in _help_rows(result.output)[flag][1]


def test_the_types_and_ranges_come_from_the_fields():
    rows = _help_rows(runner.invoke(app, ["train", "--help"], env=WIDE).output)
    assert "FRACTION [0.0<=x<=1.0]" in rows["--warmup"][1] and "N [x>=3]" in rows["--patch-size"][1]  # metavar
    assert " DIR " in rows["--data"][1] and " FILE " in rows["--out"][1] and " SCALE " in rows["--scale"][1]
    assert " DURATION " in rows["--time-limit"][1]
    assert "<adam|adamw|sgd>" in rows["--optimizer"][1] and "<auto|fp32|bf16>" in rows["--precision"][1]
    assert "<" not in rows["--overwrite"][1].split("Replace")[0]  # a flag, without a value


def test_a_changed_default_changes_the_help(monkeypatch):
    monkeypatch.setattr(_field("lr"), "default", 5e-4)
    monkeypatch.setattr(_field("features"), "default", 64)

    @cli_train.train_options
    def command(**flags: Any) -> None: ...

    probe = typer.Typer()
    probe.command()(command)
    rows = _help_rows(runner.invoke(probe, ["--help"], env=WIDE).output)
    assert "Peak learning rate (default: 5e-4)." in rows["--lr"][1]
    assert "Filters per conv (default: 64, or --init's)." in rows["--features"][1]


def test_a_bad_optimizer_is_a_usage_error_listing_every_choice(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "w.safetensors"),
                                 "--optimizer", "lbfgs", "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "'lbfgs'" in result.stderr
    assert all(f"'{name}'" in result.stderr for name in OPTIMIZERS), result.stderr


def test_the_options_given_become_the_config_fields(tmp_path, monkeypatch):
    from drcn_cli.training import loop
    from drcn_cli.training.report import TrainResult

    seen = []

    def fake_train(cfg, reporter=None, should_stop=None):
        seen.append(cfg)
        return TrainResult(cfg.steps, True, 0.0, None, None, None, None, 0.0)

    monkeypatch.setattr(loop, "train", fake_train)
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b"), "-o",
                                 str(tmp_path / "w.safetensors"), "-s", "2", "--scale", "3.5", "--optimizer", "sgd",
                                 "--precision", "bf16", "--time-limit", "2", "--overwrite", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg.data == (str(tmp_path / "a"), str(tmp_path / "b")) and cfg.out == str(tmp_path / "w.safetensors")
    assert cfg.scales == (2.0, 3.5) and (cfg.optimizer, cfg.precision) == ("sgd", "bf16")
    assert cfg.time_limit == 120.0 and cfg.overwrite  # minutes on the command line, seconds in the config
    assert (cfg.lr, cfg.downscales, cfg.augment) == (TrainConfig.lr, TrainConfig.downscales, True)  # not given


def test_a_non_positive_time_limit_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "-o", str(tmp_path / "w.safetensors"),
                                 "--time-limit", "0", "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "--time-limit" in result.stderr


# -- values that cannot work: one line naming the option, exit 2, nothing done --------------------------------------


def _main(args, capsys) -> tuple[int, str]:
    from drcn_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def _assert_one_usage_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def test_every_float_option_refuses_nan_and_infinities_in_any_spelling(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    floats = [f for f in cli_train.option_fields() if str(f.type).startswith(("float", "tuple[float"))]
    assert {_flag(f) for f in floats} >= {"--lr", "--lr-min", "--scale", "--downscale", "--ema", "--time-limit"}
    for field in floats:
        for value in ("nan", "inf", "-inf", "NaN", "+Infinity", "-INF"):
            code, err = _main(["train", "--data", tmp_path, "-o", "w.safetensors", _flag(field), value], capsys)
            _assert_one_usage_line(code, err, f"'{_flag(field)}'")
    assert list(tmp_path.iterdir()) == []  # no checkpoint folder, no weights


def test_a_time_limit_below_zero_is_refused_alike_on_the_command_line_and_in_a_recipe(tmp_path, capsys):
    for minutes in ("-1", "0", "-0.5"):
        code, err = _main(["train", "--data", tmp_path, "-o", tmp_path / "w.safetensors", "--time-limit", minutes],
                          capsys)  # fmt: skip
        _assert_one_usage_line(code, err, "'--time-limit'", f"must be positive, got {float(minutes):g}")
    recipe = tmp_path / "r.toml"
    recipe.write_text("time_limit = -1\n")
    code, err = _main(["train", "--data", tmp_path, "-o", tmp_path / "w.safetensors", "--config", recipe], capsys)
    _assert_one_usage_line(code, err, f"{recipe}: 'time_limit' must be positive, got -1")


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--seed", "-1", "'--seed'"), ("--features", "5000", "'--features'"), ("--recursions", "65", "'--recursions'"),
    ("--batch-size", "1000000", "'--batch-size'"), ("--threads", "100000", "must be at most"),
    ("--threads", "-1", "'--threads'"), ("--scale", "1", "must be above 1"), ("--scale", "40", "at most 32"),
    ("--downscale", "0", "must be above 0"), ("--downscale", "1.5", "at most 1"), ("--lr", "0", "must be positive"),
    ("--steps", "0", "'--steps'"), ("--warmup", "2", "'--warmup'"), ("--ema", "-0.5", "'--ema'"),
])  # fmt: skip
def test_out_of_range_values_are_one_line_naming_the_option(tmp_path, monkeypatch, capsys, option, value, expected):
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    code, err = _main(["train", "--data", tmp_path, "-o", "w.safetensors", option, value], capsys)
    _assert_one_usage_line(code, err, expected)
    assert list(tmp_path.iterdir()) == [] and torch.get_num_threads() == threads


def test_every_name_option_refuses_an_empty_string(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where Path("") would point: nothing may be read or written here
    names = [f for f in cli_train.option_fields() if str(f.type).startswith(("str", "tuple[str"))]
    names = [f for f in names if "choices" not in f.metadata]  # a choice refuses "" as any other non-choice
    assert {_flag(f) for f in names} >= {"--data", "--out", "--val", "--pack", "--init", "--checkpoint-dir",
                                         "--resume", "--device", "--jpeg-quality"}  # fmt: skip
    for field in names:
        base = ["train", "--data", tmp_path / "d", "-o", tmp_path / "w.safetensors"]
        code, err = _main([*base, _flag(field), ""], capsys)
        _assert_one_usage_line(code, err, f"'{_flag(field)}'", "must not be empty")
    assert list(tmp_path.iterdir()) == []


def test_time_limit_is_spelled_the_same_on_the_command_line_and_in_a_recipe(tmp_path, monkeypatch, capsys):
    from drcn_cli.training import loop
    from drcn_cli.training.report import TrainResult

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, reporter=None, should_stop=None: seen.append(cfg) or TrainResult(
        cfg.steps, True, 0.0, None, None, None, None, 0.0))
    base = ["train", "--data", tmp_path, "-o", tmp_path / "w.safetensors", "--quiet"]
    recipe = tmp_path / "r.toml"
    for spelling, seconds in (("90", 5400.0), ("1.5h", 5400.0), ("1h30m", 5400.0), ("45s", 45.0)):
        recipe.write_text(f"time_limit = {spelling if spelling.isdigit() else repr(spelling)}\n")
        for args in (["--time-limit", spelling], ["--config", recipe]):
            code, err = _main([*base, *args], capsys)
            assert code == 0, err
            assert seen.pop().time_limit == seconds, (spelling, args)
    code, err = _main([*base, "--time-limit", "2x"], capsys)
    _assert_one_usage_line(code, err, "'--time-limit'", "a duration with units h, m, s (2h, 1h30m, 45s), got '2x'")
    recipe.write_text('time_limit = "2x"\n')
    code, err = _main([*base, "--config", recipe], capsys)
    _assert_one_usage_line(code, err, f"{recipe}: 'time_limit' must be minutes", "got '2x'")
