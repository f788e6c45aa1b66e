"""drcn_cli.train_config: the options of a run, checked once; recipe tables -> TrainConfig fields."""

from __future__ import annotations

import dataclasses

import pytest

from drcn_cli.errors import ConfigError
from drcn_cli.train_config import TrainConfig, check_config, jpeg_range, recipe_options


def test_recipe_tables_become_config_fields():
    options = recipe_options({"scales": [2, 3.5], "batch-size": 16, "augment": False, "time_limit": 60}, "r.toml")
    assert options == {"scales": (2.0, 3.5), "batch_size": 16, "augment": False, "time_limit": 60.0}
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
    from drcn_cli.train_config import WIDENINGS

    assert WIDENINGS == WIDEN_METHODS


def test_the_options_metadata_is_plain_data_and_needs_no_cli_library():
    import ast
    import inspect

    from drcn_cli import train_config

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
