"""drcn_cli.training.config: the options of a run, checked once; recipe tables -> TrainConfig fields."""

from __future__ import annotations

import dataclasses

import pytest

from drcn_cli.errors import ConfigError
from drcn_cli.training.config import TrainConfig, check_config, jpeg_range, recipe_options


def test_recipe_tables_become_config_fields():
    options = recipe_options({"scales": [2, 3.5], "batch-size": 16, "augment": False, "time_limit": 60}, "r.toml")
    assert options == {"scales": (2.0, 3.5), "batch_size": 16, "augment": False, "time_limit": 3600.0}  # minutes
    assert all(isinstance(v, float) for v in (*options["scales"], options["time_limit"]))
    cfg = dataclasses.replace(TrainConfig(data=("d",)), **options)
    check_config(cfg)  # a recipe's values make a config that works


@pytest.mark.parametrize(("values", "expected"), [
    ({"nope": 1}, "unknown option 'nope'"),
    ({"resume": "ck"}, "unknown option 'resume'"),  # where to resume from is the command line's, not a recipe's
    ({"steps": 1.5}, "'steps' should be a whole number"),
    ({"steps": True}, "'steps' should be a whole number"),
    ({"augment": 1}, "'augment' should be true or false"),
    ({"scales": [2, "x"]}, "'scales' should be a list of numbers"),
])  # fmt: skip
def test_bad_recipe_values_are_config_errors_naming_the_file(values, expected):
    with pytest.raises(ConfigError, match=f"^r.toml: {expected}"):
        recipe_options(values, "r.toml")


def test_a_config_that_cannot_work_is_a_config_error():
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        check_config(TrainConfig(data=("d",), optimizer="lbfgs"))
    with pytest.raises(ConfigError, match="widen must be one of split, signed, fresh, got 'zero'"):
        check_config(TrainConfig(data=("d",), widen="zero"))  # a recipe file's value, which no CLI choice checks


def test_the_widening_choices_are_the_models():
    from drcn_cli.model import WIDEN_METHODS
    from drcn_cli.training.config import WIDENINGS

    assert WIDENINGS == WIDEN_METHODS


def test_the_options_metadata_is_plain_data_and_needs_no_cli_library():
    import ast
    import inspect

    from drcn_cli.training import config as train_config

    tree = ast.parse(inspect.getsource(train_config))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("typer", "click", "rich")}

    def plain(value):
        return isinstance(value, (str, int, float)) or (isinstance(value, tuple) and all(map(plain, value)))

    for field in dataclasses.fields(TrainConfig):
        assert all(isinstance(k, str) and plain(v) for k, v in field.metadata.items()), field.name
        if field.metadata:
            assert {"help", "panel"} <= set(field.metadata), field.name


def test_fields_that_are_not_options_are_still_set_in_a_recipe():
    options = recipe_options({"quantize_lr": False, "alpha_start": 0.5, "alpha_end": 0.1}, "r.toml")
    assert options == {"quantize_lr": False, "alpha_start": 0.5, "alpha_end": 0.1}
    assert not any(f.metadata for f in dataclasses.fields(TrainConfig) if f.name in options)


def test_jpeg_quality_is_a_range_or_one_quality():
    assert jpeg_range("30..95") == (30, 95) and jpeg_range(" 75 ") == (75, 75)
    for bad in ("95..30", "0..50", "30..101", "high", "30-95", ""):
        with pytest.raises(ConfigError, match="JPEG quality"):
            jpeg_range(bad)
    with pytest.raises(ConfigError, match="JPEG quality"):
        check_config(TrainConfig(data=("x",), jpeg_quality="10..5"))
    with pytest.raises(ConfigError, match="quantize_lr"):
        check_config(TrainConfig(data=("x",), jpeg_quality="50", quantize_lr=False))
    with pytest.raises(ConfigError, match="jpeg_clean"):
        check_config(TrainConfig(data=("x",), jpeg_clean=1.5))
    check_config(TrainConfig(data=("x",), jpeg_quality="30..95"))


# -- values that cannot work: refused by the one check, in a config, a recipe and (tests/test_cli_train_options.py)
# on the command line


def _float_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if str(f.type).startswith(("float", "tuple[float"))]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_nan_and_infinities_in_a_config_and_a_recipe(bad):
    from drcn_cli.training.config import value_problem

    names = _float_fields()
    assert {"lr", "lr_min", "scales", "downscales", "ema", "time_limit", "alpha_start", "jpeg_clean"} <= set(names)
    for name in names:
        value = (bad,) if name in ("scales", "downscales") else bad
        assert value_problem(name, value) == f"must be a finite number, got {bad}", name
        with pytest.raises(ConfigError, match=f"^{name} must be a finite number, got {bad}$"):
            check_config(dataclasses.replace(TrainConfig(data=("d",)), **{name: value}))
        with pytest.raises(ConfigError, match=f"^r.toml: '{name}' must be a finite number, got {bad}$"):
            good = {"scales": 2.0, "downscales": 1.0}.get(name)
            recipe_options({name: [good, bad] if isinstance(value, tuple) else bad}, "r.toml")


def test_a_toml_file_with_inf_and_nan_is_refused_naming_it(tmp_path):
    from drcn_cli.training.config import read_recipe

    for text, key in (("lr = inf", "lr"), ("lr = nan", "lr"), ("ema = -inf", "ema"), ("scales = [2, +inf]", "scales"),
                      ("lr = 1" + "0" * 400, "lr")):  # fmt: skip
        recipe = tmp_path / "r.toml"
        recipe.write_text(text + "\n")
        with pytest.raises(ConfigError, match=f"^{recipe}: '{key}' must be a finite number"):
            read_recipe(recipe)


def test_a_time_limit_below_zero_is_refused_by_the_same_check_as_the_option():
    from drcn_cli.training.config import value_problem

    for bad in (-1.0, -1e-9, 0.0):
        assert value_problem("time_limit", bad) == f"must be positive, got {bad:g}"
        with pytest.raises(ConfigError, match=f"^r.toml: 'time_limit' must be positive, got {bad:g}$"):
            recipe_options({"time_limit": bad}, "r.toml")
    with pytest.raises(ConfigError, match="^time_limit must be positive, got -1$"):
        check_config(TrainConfig(data=("d",), time_limit=-1.0))
    check_config(TrainConfig(data=("d",), time_limit=0.0))  # the Python API's "stop at the first log step"


@pytest.mark.parametrize(("name", "bad", "expected"), [
    ("seed", -1, "must be >= 0, got -1"), ("seed", 2**64, "must be a whole number from 0 to 2**64 - 1"),
    ("features", 1025, "must be <= 1024, got 1025"), ("recursions", 65, "must be <= 64, got 65"),
    ("recursions", 0, "must be >= 1, got 0"), ("batch_size", 10**9, "must be <= 65536"),
    ("scales", (2.0, 33.0), "must be above 1 and at most 32, got 33"),
    ("scales", (1.0,), "must be above 1 and at most 32, got 1"),
    ("downscales", (0.0,), "must be above 0 and at most 1, got 0"),
    ("downscales", (1.5,), "must be above 0 and at most 1, got 1.5"),
    ("lr", 0.0, "must be positive, got 0"), ("warmup", 1.5, "must be <= 1, got 1.5"),
    ("threads", -1, "must be >= 0"), ("stop_at", 0, "must be >= 1"),
])  # fmt: skip
def test_out_of_range_values_are_refused_naming_the_field(name, bad, expected):
    import re

    with pytest.raises(ConfigError, match=f"^{name} {re.escape(expected)}"):
        check_config(dataclasses.replace(TrainConfig(data=("d",)), **{name: bad}))
    value = list(bad) if isinstance(bad, tuple) else bad
    with pytest.raises(ConfigError, match=f"^r.toml: '{name}' {re.escape(expected)}"):
        recipe_options({name: value}, "r.toml")


@pytest.mark.parametrize(("name", "value"), [
    ("data", ("",)), ("data", ("d", "")), ("out", ""), ("init", ""), ("pack", ""), ("val", ""), ("device", ""),
    ("checkpoint_dir", ""), ("jpeg_quality", ""),
])  # fmt: skip
def test_an_empty_name_is_refused_not_taken_for_the_current_folder_or_nothing(name, value):
    with pytest.raises(ConfigError, match=f"^{name} must not be empty"):
        check_config(dataclasses.replace(TrainConfig(data=("d",)), **{name: value}))


@pytest.mark.parametrize("content", [b"lr = 1e-3\n\xff\xfe\n", "lr = 1e-3 # \u00e9\n".encode("latin-1"),
                                     "steps = 5\n".encode("utf-16"), b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_recipe_that_is_not_utf8_text_is_one_config_error_naming_the_file(tmp_path, content):
    import re

    from drcn_cli.training.config import read_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(recipe))}: not a TOML recipe"):
        read_recipe(recipe)


def test_a_recipe_nested_too_deeply_is_a_config_error(tmp_path):
    from drcn_cli.training.config import read_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text("scales = " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(ConfigError, match="not a TOML recipe"):
        read_recipe(recipe)


@pytest.mark.parametrize(("given", "seconds"), [
    (90, 5400.0), (7.5, 450.0), ("90", 5400.0), ("2h", 7200.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("45s", 45.0), (" 1H 30m ", 5400.0), ("2m30s", 150.0),
])  # fmt: skip
def test_a_time_limit_is_minutes_or_a_duration_with_units_in_a_recipe_as_on_the_command_line(given, seconds):
    from drcn_cli.training.config import duration_seconds

    assert duration_seconds(given) == seconds
    assert recipe_options({"time_limit": given}, "r.toml") == {"time_limit": seconds}


@pytest.mark.parametrize("bad", ["2x", "h", "30m1h", "1h1h", "1 h 2", [1], True])
def test_a_time_limit_that_is_no_duration_is_refused_saying_what_is(bad):
    with pytest.raises(ConfigError, match=r"^r.toml: 'time_limit' must be minutes \(90, 7.5\) or a duration with "
                                          r"units h, m, s \(2h, 1h30m, 45s\), got "):  # fmt: skip
        recipe_options({"time_limit": bad}, "r.toml")
