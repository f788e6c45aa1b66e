"""The `drcn` command: a root Typer app with one module per command.

Only this package prints or exits. Command modules import torch inside their bodies, so that
`drcn --help` and `drcn --version` answer without loading it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import bench, download, train, upscale

app = typer.Typer(
    name="drcn",
    help="Image super-resolution with the Deeply-Recursive Convolutional Network (Kim et al., CVPR 2016).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


app.command("upscale")(upscale.upscale)
app.command("train")(train.train)
app.command("bench")(bench.bench)
app.command("download-weights")(download.download_weights)


def main() -> None:
    app()
