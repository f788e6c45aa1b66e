"""drcn's own cache folder (datasets, the CPU speed probe's results), found the same way by every floor."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["HOME_ENV", "drcn_home"]

HOME_ENV = "DRCN_HOME"


def drcn_home() -> Path:
    """drcn's own cache folder: ``$DRCN_HOME``, else ``$XDG_CACHE_HOME/drcn``, else the system's user cache folder
    for drcn (platformdirs: ``~/.cache/drcn`` on Linux, ``~/Library/Caches/drcn`` on macOS,
    ``%LOCALAPPDATA%\\drcn\\Cache`` on Windows).

    Weights do not go there (they live in the hub cache, shared with other hub tools); it is for drcn's own files.
    Nothing is created by calling this.
    """
    if home := os.environ.get(HOME_ENV):
        return Path(home).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "drcn"

    return Path(platformdirs.user_cache_dir("drcn", appauthor=False))
