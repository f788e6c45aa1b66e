"""drcn_cli.errors: one base class carrying its exit code, reported once at the top of the CLI; a bug is not a
usage error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from drcn_cli import errors
from drcn_cli.bench import datasets, degradation, protocol, results
from drcn_cli.cli import app, main
from drcn_cli.errors import EXIT_FAILURE, EXIT_USAGE, ConfigError, DrcnError
from drcn_cli.inference import device, export
from drcn_cli.io import atomic, formats, video
from drcn_cli.training import checkpoint, loop
from drcn_cli.weights import files, hub, resolve

FAILURES = [
    protocol.BenchError, results.MissingExtraError, degradation.DataError, datasets.DatasetError,
    datasets.ArchiveError, export.ExportError, hub.HubError, formats.ImageReadError, formats.ImageWriteError,
    atomic.OutputExistsError, formats.ImageFormatError, resolve.ChecksumError, resolve.WeightsNotFoundError,
    checkpoint.CheckpointError, loop.TrainingError, video.VideoError, files.WeightsError,
]  # fmt: skip
USAGE = [errors.UsageError, ConfigError, datasets.UnknownDatasetError]


@pytest.mark.parametrize("error", FAILURES + USAGE, ids=lambda e: e.__name__)
def test_every_error_of_drcn_has_the_one_base_and_its_exit_code(error):
    assert issubclass(error, DrcnError)
    assert error("x").exit_code == (EXIT_USAGE if error in USAGE else EXIT_FAILURE)


def test_errors_keep_the_builtin_bases_callers_catch():
    assert issubclass(formats.ImageWriteError, OSError) and issubclass(degradation.DataError, ValueError)
    assert issubclass(ConfigError, ValueError) and issubclass(hub.HubError, RuntimeError)


def test_a_refused_device_or_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16"):
        device.resolve_precision("fp16", device.resolve_device("cpu"))
    with pytest.raises(ConfigError, match="unknown device"):
        device.resolve_device("toaster")


# -- reported once, at the top of the CLI ------------------------------------------------------------------------


@pytest.fixture
def train_args(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    return ["train", "--data", str(folder), "--out", str(tmp_path / "w.safetensors"), "--quiet"]


def _raising(exc: BaseException):
    def run(*args, **kwargs):
        raise exc

    return run


def test_a_bug_in_train_is_not_a_usage_error(train_args, monkeypatch):
    bug = ValueError("a bug: list index")
    monkeypatch.setattr(loop, "train", _raising(bug))
    result = CliRunner().invoke(app, train_args)
    assert result.exit_code == EXIT_FAILURE  # what the runner gives any exception that escapes
    assert result.exception is bug  # it escapes itself, with its traceback: not dressed up as a line, nor wrapped
    assert "error:" not in result.stderr
    with pytest.raises(ValueError, match="a bug: list index"):  # and `drcn` itself lets it out, not exit 2
        main(train_args)


def test_a_config_the_library_refuses_is_a_usage_error_of_one_line(train_args, monkeypatch):
    monkeypatch.setattr(loop, "train", _raising(ConfigError("batch size 7 does not split over 2 processes")))
    result = CliRunner().invoke(app, train_args)
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == "error: batch size 7 does not split over 2 processes (see drcn train --help)\n"


def test_a_drcn_error_is_one_line_and_exit_1(train_args, monkeypatch):
    monkeypatch.setattr(loop, "train", _raising(loop.TrainingError("the loss became nan\nby step 3")))
    result = CliRunner().invoke(app, train_args)
    assert result.exit_code == EXIT_FAILURE and result.stderr == "error: the loss became nan by step 3\n"


def test_main_exits_with_the_errors_code(train_args, monkeypatch, capsys):
    monkeypatch.setattr(loop, "train", _raising(ConfigError("fp16 training is not supported")))
    with pytest.raises(SystemExit) as exit_:
        main(train_args)
    assert exit_.value.code == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: fp16 training is not supported (see drcn train --help)"
