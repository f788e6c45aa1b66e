"""The one progress-bar builder of the commands, so every bar reads the same: label, bar, done/total, ETA."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(
    console: Any,
    *extra: Any,
    label: str = "{task.description}",
    count: bool = True,
    elapsed: bool = False,
    eta: bool = True,
    **options: Any,
) -> Progress:
    """A rich Progress on ``console``: ``label``, the bar, done/total (``count``), the time spent (``elapsed``),
    ``ETA`` and the time left (``eta``), then the ``extra`` columns. ``options`` go to Progress (transient ...)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn(label), BarColumn()]
    if count:
        columns.append(MofNCompleteColumn())
    if elapsed:
        columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, *extra, console=console, **options)
