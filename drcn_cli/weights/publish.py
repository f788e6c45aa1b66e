"""Regenerating the table of known weights from files (a maintainers' tool): ``python -m drcn_cli.weights.publish
FILE...`` prints each file's :class:`~drcn_cli.weights.table.KnownWeights` entry with its sha256 and size, ready to
paste into ``KNOWN_WEIGHTS`` (``drcn_cli/weights/table.py``). weights/README.md, "Publishing", has the steps.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from safetensors import SafetensorError, safe_open

from . import table as weights_table
from .resolve import sha256_file
from .table import DEFAULT_REPO_ID, KnownWeights

__all__ = ["entries_from_files", "entry_source"]


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file ({} if it has none or cannot be read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError):
        return {}


def entries_from_files(
    paths: Iterable[str | os.PathLike], table: Mapping[str, KnownWeights] | None = None
) -> list[KnownWeights]:
    """Table entries for weights files, named after the file stem, with their sha256 and size.

    A name already in ``table`` (default :data:`~drcn_cli.weights.table.KNOWN_WEIGHTS`) keeps its other fields; a
    new one gets a description from the file's metadata (F, D) to edit.
    """
    table = weights_table.KNOWN_WEIGHTS if table is None else table
    entries = []
    for path in map(Path, paths):
        sha256, size = sha256_file(path), path.stat().st_size
        name = path.name.removesuffix(".safetensors")
        if name in table:
            entries.append(dataclasses.replace(table[name], filename=path.name, sha256=sha256, size=size))
        else:
            meta = _safetensors_metadata(path)
            description = f"DRCN F={meta.get('features', '?')}, D={meta.get('recursions', '?')} (describe it)"
            entries.append(KnownWeights(name, path.name, sha256, size, description))
    return entries


def entry_source(entry: KnownWeights) -> str:
    """The entry as Python source, ready to paste into the ``KNOWN_WEIGHTS`` table."""
    fields = "".join(
        f"    {f.name}={getattr(entry, f.name)!r},\n"
        for f in dataclasses.fields(entry)
        if f.name != "repo_id" or entry.repo_id != DEFAULT_REPO_ID
    )
    return f"KnownWeights(\n{fields}),"


def _main(argv: list[str]) -> int:
    """``python -m drcn_cli.weights.publish FILE...``: print table entries with the files' checksums (a maintainer
    tool)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python -m drcn_cli.weights.publish WEIGHTS.safetensors...\n"
            "Prints KNOWN_WEIGHTS entries with each file's sha256 and size, to paste into drcn_cli/weights/table.py."
        )
        return 0 if argv else 2
    missing = [p for p in argv if not Path(p).is_file()]
    if missing:
        print(f"error: {missing[0]}: no such file", file=sys.stderr)
        return 1
    for entry in entries_from_files(argv):
        print(entry_source(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
