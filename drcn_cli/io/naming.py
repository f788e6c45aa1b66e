"""File names as the file system will take them: why a name cannot be a file's (too long for the file system or
the system, a NUL byte), asked before anything is written; and a path with its links resolved as far as they lead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["name_problem"]

_NAME_MAX = 255  # bytes in one name where the file system does not say (ext4, XFS, Btrfs, APFS, NTFS: 255)
_PATH_MAX = 4096  # bytes in a whole path where the system does not say (Linux)


def _limit(path: Path, name: str, default: int) -> int:
    """The file system's limit ``name`` (``PC_NAME_MAX``, ``PC_PATH_MAX``) where ``path`` would be, asked of its
    nearest existing folder."""
    for folder in (path.parent, *path.parent.parents):
        if os.path.isdir(folder):
            try:
                return int(os.pathconf(folder, name))
            except (OSError, ValueError, AttributeError):  # no pathconf on Windows
                return default
    return default


def _real(path: Path) -> Path:
    """``path`` with its links resolved, as far as they lead: a link that loops (``a.png -> a.png``) or a name too
    long to look up is kept as it is, where Path.resolve would raise."""
    return Path(os.path.realpath(path))


def _abridged(name: str) -> str:
    """A long name as a line can show it: its start and its end, with its length in bytes."""
    shown = name if len(name) <= 40 else f"{name[:24]}...{name[-12:]}"
    return f"{shown!r} ({len(os.fsencode(name))} bytes)"


def name_problem(path: Path) -> str | None:
    """Why no file can have the name ``path``, or None: a part longer than the file system allows in a name
    (255 bytes on most: asked of the nearest existing folder's file system), a whole path longer than the system
    allows (the system's own answer, ENAMETOOLONG), a NUL byte. Folders on the way need not exist yet."""
    if "\0" in str(path):
        return "the name holds a NUL byte, which no file name can"
    limit = _limit(path, "PC_NAME_MAX", _NAME_MAX)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            return f"name too long for the file system: {_abridged(part)}, where the most is {limit} bytes"
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            size, most = len(os.fsencode(str(path))), _limit(path, "PC_PATH_MAX", _PATH_MAX)
            return f"path too long for the system: {size} bytes, where the most is {most} bytes"
    return None
