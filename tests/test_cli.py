"""The root app: start-up without torch, --version, --help, python -m."""

import subprocess
import sys

from typer.testing import CliRunner

from drcn_cli import __version__
from drcn_cli.cli import app


def test_cli_start_up_does_not_import_torch():
    # `drcn --help` must answer at once: the commands import torch inside their bodies.
    code = "import sys, drcn_cli.cli; print('torch' in sys.modules, 'huggingface_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"drcn {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("upscale", "bench", "train", "download-weights"):
        assert command in result.output


def test_python_dash_m_runs_the_same_app():
    result = subprocess.run([sys.executable, "-m", "drcn_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"drcn {__version__}"


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["enhance"])
    assert result.exit_code == 2
