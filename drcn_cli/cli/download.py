"""`drcn download-weights`: fetch known weights from the Hugging Face hub into its cache, verified by sha256."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import DrcnError
from ._errors import EXIT_FAILURE, EXIT_USAGE, fail, print_error

if TYPE_CHECKING:
    from rich.console import Console

    from ..weights.resolve import HubOptions, WeightsStatus

_ORIGIN_TEXT = {
    "bundled": "bundled, nothing to download",
    "cached": "already cached, sha256 verified",
    "downloaded": "downloaded, sha256 verified",
}
_STATUS_STYLE = {"bundled": "green", "cached": "green", "available": "yellow", "unpublished": "red"}
# What each status means to the user: usable now (bundled, cached), downloadable, or not published yet.
_STATUS_TEXT = {"available": "downloadable", "unpublished": "not published yet"}
_COLUMNS = ("name", "status", "size", "upscale default", "description", "where")


def download_weights(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to fetch (see --list). Default: the model `drcn upscale` uses.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Fetch every known model.")] = False,
    list_models: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Show every known model: status (bundled, cached, downloadable, not published yet), size, what it "
            "is for, and which one `drcn upscale` uses by default for lossless and for JPEG inputs. No network. "
            "Piped, a plain table: one model a line, columns two or more spaces apart.",
        ),
    ] = False,
    repo_id: Annotated[
        str | None,
        typer.Option(
            "--repo-id",
            metavar="ID",
            help="Hub repository to download from (default: $DRCN_REPO_ID, else the table's).",
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", metavar="REV", help="Branch, tag or commit (default: the table's)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            metavar="DIR",
            file_okay=False,
            help="Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again, even if bundled or cached.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download weights from the Hugging Face hub, each checked against its sha256 before use.

    Files go to the hub cache (HF_HOME / HF_HUB_CACHE, or --cache-dir), where upscale, bench and train find them.
    Bundled or cached models are not downloaded again unless --force.
    """
    from rich.console import Console

    from ..weights import resolve, table

    if list_models:
        if names or all_models:
            raise typer.BadParameter("--list takes no model names and no --all", param_hint="--list")
        rows = resolve.list_weights(repo_id=repo_id, revision=revision, cache_dir=cache_dir)
        _print_table(Console(), rows, _default_uses(table.model_for_input("PNG"), table.model_for_input("JPEG")))
        return
    if names and all_models:
        raise typer.BadParameter("give model names or --all, not both", param_hint="--all")
    unknown = [name for name in names or () if name not in table.KNOWN_WEIGHTS]
    if unknown:
        known = ", ".join(sorted(table.KNOWN_WEIGHTS))
        raise fail(f"unknown model {', '.join(map(repr, unknown))}; known models: {known}", EXIT_USAGE)
    targets = list(table.KNOWN_WEIGHTS) if all_models else list(dict.fromkeys(names or ()))
    targets = targets or [table.default_model_name()]

    err = Console(stderr=True)
    options: HubOptions = {"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir}
    failed = False
    for name in targets:
        try:
            with _progress(err, name, quiet) as on_progress:
                located = resolve.locate_weights(
                    name,
                    force=force,
                    on_stale=lambda exc: err.print(f"warning: {exc}", markup=False, highlight=False),
                    on_progress=on_progress,
                    **options,
                )
        except DrcnError as exc:  # reported, and the other models are still fetched
            print_error(exc)
            failed = True
            continue
        typer.echo(f"{name}: {located.path} ({_ORIGIN_TEXT[located.origin]})")
    if failed:
        raise typer.Exit(EXIT_FAILURE)


@contextmanager
def _progress(console: Console, name: str, quiet: bool) -> Iterator[Callable[[int, int | None], None]]:
    """A byte-count callback for the hub client: a transient rich bar on stderr, or nothing with --quiet (the
    client's own tqdm bar is replaced either way). Off a terminal there is no bar: a transient rich bar would
    still leave a blank line in a log."""
    if quiet or not console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from ._progress import progress_bar

    with progress_bar(console, DownloadColumn(), TransferSpeedColumn(), count=False, eta=False, transient=True) as bar:
        task = bar.add_task(name, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _default_uses(lossless: str, lossy: str) -> dict[str, str]:
    """The "upscale default" cell of each model that `drcn upscale` picks when none is named."""
    if lossless == lossy:
        return {lossless: "all inputs"}
    return {lossless: "lossless inputs (PNG ...)", lossy: "JPEG inputs, video"}


def _print_table(console: Console, rows: list[WeightsStatus], defaults: dict[str, str]) -> None:
    """A rich table on a terminal; else (piped, redirected) a plain one that is never wrapped: a header line, then
    one model a line, columns padded and two or more spaces apart."""
    cells = [
        (
            row.entry.name,
            _STATUS_TEXT.get(row.status, row.status),
            row.size,
            defaults.get(row.entry.name, "-"),
            " ".join(row.entry.description.split()) or "-",
            row.location,
        )
        for row in rows
    ]
    if not console.is_terminal:
        widths = [max(len(line[i]) for line in (_COLUMNS, *cells)) for i in range(len(_COLUMNS))]
        for line in (_COLUMNS, *cells):
            typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        return
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for column in _COLUMNS[:3]:
        table.add_column(column, no_wrap=True)
    table.add_column(_COLUMNS[3])
    table.add_column(_COLUMNS[4], ratio=1)
    table.add_column(_COLUMNS[5], overflow="fold")
    for row, line in zip(rows, cells, strict=True):
        status = Text(line[1], style=_STATUS_STYLE.get(row.status, ""))
        table.add_row(Text(line[0]), status, line[2], Text(line[3]), Text(line[4]), Text(line[5]))
    console.print(table)
