"""The root app: start-up without torch, --version, --help, python -m."""

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from drcn_cli import __version__
from drcn_cli.cli import app, main, prefer_huge_pages


def test_cli_start_up_does_not_import_torch():
    # `drcn --help` must answer at once: the commands import torch inside their bodies.
    code = "import sys, drcn_cli.cli; print('torch' in sys.modules, 'huggingface_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_huge_pages_are_asked_for_before_torch_is_imported(tmp_path):
    # torch reads THP_MEM_ALLOC_ENABLE once, at its first allocation: the variable must be set when a command
    # first imports torch. An import hook records it at that moment.
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
        "sys.meta_path.insert(0, Hook())\n"
        "from drcn_cli.cli import main\n"
        "try:\n"
        "    main(['upscale', sys.argv[1], '-s', '2'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch imported with', seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    missing = str(tmp_path / "missing.png")
    result = subprocess.run([sys.executable, "-c", code, missing], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == "torch imported with ['1']"


def test_huge_pages_leave_the_users_setting(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    prefer_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    prefer_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"drcn {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("upscale", "bench", "train", "download-weights", "export"):
        assert command in result.output


def test_python_dash_m_runs_the_same_app():
    result = subprocess.run([sys.executable, "-m", "drcn_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"drcn {__version__}"


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["enhance"])
    assert result.exit_code == 2


def _run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enhance"], "error: No such command 'enhance'. (see drcn --help)"),
        (["upscale", "--bogus"], "error: No such option"),  # then ": --bogus" or " '--bogus'.", by Click version
        (["upscale", "in.png", "-s", "0.5"], "error: Invalid value for '-s' / '--scale': 0.5 is outside"),
        (["upscale", "-s", "2"], "error: no input: give image files, folders, globs or - for stdin, as arguments "
                                 "or with -i (see drcn upscale --help)"),
    ],
)
def test_usage_errors_are_one_plain_line(args, message, capsys):
    code, out, err = _run_main(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(message)
    assert "╭" not in err and "Traceback" not in err


def test_main_exit_codes_of_help_version_and_no_arguments(capsys):
    code, out, err = _run_main(["--version"], capsys)
    assert (code, out.strip(), err) == (0, f"drcn {__version__}", "")
    code, out, _ = _run_main(["upscale", "--help"], capsys)
    assert code == 0 and "--scale" in out
    code, out, err = _run_main([], capsys)  # no_args_is_help: the help and no error line (exit 2 since Click 8.2)
    assert code in (0, 2) and "upscale" in out and "error:" not in err


# The boolean flags of each command, as they appear in its help.
FLAGS = {
    "upscale": ["--recursive", "--skip-existing", "--overwrite", "--self-ensemble", "--json", "--quiet", "--help"],
    "bench": ["--self-ensemble", "--json", "--quiet", "--help"],
    "train": ["--quiet", "--help"],
    "download-weights": ["--all", "--list", "--force", "--quiet", "--help"],
    "export": ["--overwrite", "--quiet", "--help"],
}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_shows_flags_as_flags(command):
    # typer 0.29 printed every flag with a value type (`--recursive -r <bool>`), so users wrote `-r true`.
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.output
    assert "<bool>" not in text and "BOOLEAN" not in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    for flag in FLAGS[command]:
        assert flag in rows, f"{flag} missing from the help of {command}"
        # After the option's names (long, short) comes its help text straight away: no value placeholder.
        names_then_help = re.match(r"│ (--[\w-]+)(\s+-\w(,-\w)*)?\s+(\S+)", rows[flag])
        assert names_then_help is not None and not names_then_help.group(4).startswith(("<", "[")), rows[flag]
    if command == "upscale":  # options that take a value still show one
        assert re.search(r"--scale\s+-s\s+SCALE", text), text
        assert re.search(r"--output\s+-o\s+PATH", text), text


def test_shell_completion_is_on(capsys, monkeypatch):
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output
    # What the installed bash function asks: the candidates for the word being typed.
    monkeypatch.setenv("_DRCN_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "drcn upscale --recurs")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, _ = _run_main([], capsys)
    assert code == 0 and out.split() == ["--recursive", "--recursions"]


def test_every_progress_bar_is_built_the_same_way():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from drcn_cli.cli._progress import progress_bar

    kinds = [type(c) for c in progress_bar(Console(), TextColumn("x"), elapsed=True).columns]
    assert kinds == [TextColumn, BarColumn, MofNCompleteColumn, TimeElapsedColumn, TextColumn, TimeRemainingColumn,
                     TextColumn]  # fmt: skip
    assert [type(c) for c in progress_bar(Console(), count=False, eta=False).columns] == [TextColumn, BarColumn]


def _float_options():
    """(command, option) for every option of every command that takes a float (found by walking the app)."""
    import typer

    root = typer.main.get_command(app)
    for name, command in sorted(root.commands.items()):
        for param in command.params:
            if param.param_type_name == "option" and param.type.name.startswith("float"):  # float, float range
                yield name, max(param.opts, key=len)


def test_every_float_option_of_every_command_refuses_nan_and_infinities(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    options = [*_float_options(), ("train", "--time-limit")]  # a time limit: minutes, or text with units ("2h")
    assert {("upscale", "--scale"), ("upscale", "--max-pixels"), ("upscale", "--max-output-pixels"), ("train", "--lr"),
            ("train", "--scale")} <= set(options)  # fmt: skip
    for command, option in options:
        for value in ("nan", "-nan", "inf", "-inf", "Infinity", "NAN", "+inf", "1e999"):
            code, out, err = _run_main([command, option, value], capsys)
            assert code == 2 and out == "", (command, option, value, err)
            assert err.startswith("error: Invalid value for ") and f"'{option}'" in err, (command, option, err)
            assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
