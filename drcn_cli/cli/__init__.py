"""The `drcn` command: a root Typer app with one module per command.

Only this package prints or exits. Command modules import torch inside their bodies, so that
`drcn --help` and `drcn --version` answer without loading it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from .. import __version__
from . import bench, download, export, quantize, train, upscale
from ._errors import EXIT_INTERRUPTED, print_error, reported
from ._help import DrcnCommand

app = typer.Typer(
    name="drcn",
    help="Image super-resolution with the Deeply-Recursive Convolutional Network (Kim et al., CVPR 2016).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help text is rich markup: a literal bracket is escaped (drcn\\[video])
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"drcn {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Image super-resolution with the Deeply-Recursive Convolutional Network (Kim et al., CVPR 2016)."""


# Each command through `reported`: the one place where drcn's own errors become a line and an exit code.
# DrcnCommand: -h/--help listed beside -q/--quiet (cli/_help.py).
app.command("upscale", cls=DrcnCommand)(reported("upscale")(upscale.upscale))
app.command("train", cls=DrcnCommand)(reported("train")(train.train))
app.command("bench", cls=DrcnCommand)(reported("bench")(bench.bench))
app.command("download-weights", cls=DrcnCommand)(reported("download-weights")(download.download_weights))
app.command("export", cls=DrcnCommand)(reported("export")(export.export))
app.command("quantize", cls=DrcnCommand)(reported("quantize")(quantize.quantize))


class _Terminated(BaseException):
    """SIGTERM outside the parts of a command that handle it themselves (as Ctrl-C). Not a KeyboardInterrupt,
    which Typer would turn into a silent exit 130, nor an Exception, which library code might catch."""


def _sigterm_raises_terminated(signum, frame):
    raise _Terminated


def prefer_huge_pages() -> None:
    """Ask torch's CPU allocator for transparent huge pages (2 MiB) for its large blocks, unless the user's
    environment says otherwise. torch reads THP_MEM_ALLOC_ENABLE once, at its first allocation: call this before
    torch is imported. The F-channel maps of a forward span thousands of 4 KiB pages, and with huge pages fewer
    page faults make large outputs faster (docs/speed.md). Linux only; elsewhere, and where the kernel's THP mode
    is `never`, torch ignores it.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(args: Sequence[str] | None = None) -> None:
    """Run `drcn`; a usage error (unknown option, value out of range) is one plain line on stderr, exit 2.

    SIGTERM (kill) is caught from the start, so a run killed while it starts up (loading torch or the model)
    also ends with one line, `interrupted`, and exit code 130, as one killed later does (commands turn it into
    Ctrl-C where they clean up after themselves).
    """
    import signal

    prefer_huge_pages()
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_raises_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        code = app(args=args, prog_name="drcn", standalone_mode=False)
    except (_Terminated, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    except typer.Abort as exc:
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)  # Click turns Ctrl-C into Abort
        typer.echo("interrupted" if interrupted else "aborted", err=True)
        code = EXIT_INTERRUPTED if interrupted else 1
    except Exception as exc:
        # Click's exceptions (vendored inside Typer since 0.26, a separate package before) are not public API:
        # recognise them by their interface rather than by a private import.
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        code = exc.exit_code  # type: ignore[attr-defined]  # checked above: Click's exceptions have it
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            ctx = getattr(exc, "ctx", None)
            print_error(exc.format_message(), f" (see {ctx.command_path} --help)" if ctx is not None else "")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)
