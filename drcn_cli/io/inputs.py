"""The command line's INPUT... (files, folders, globs, ``-``) -> :class:`Source` items, and :class:`InputProblem`
items for what gives no image (a missing path, a folder without images, a glob matching nothing): planning only,
nothing is read. Output names are :mod:`drcn_cli.io.batch`'s.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .formats import IMAGE_EXTENSIONS
from .naming import _real, name_problem

__all__ = ["INPUT_EXTENSIONS", "STDIO", "InputProblem", "Source", "expand_inputs"]

INPUT_EXTENSIONS = frozenset(IMAGE_EXTENSIONS)  # files taken from folders and globs (formats.IMAGE_EXTENSIONS)
STDIO = "-"


@dataclass(frozen=True)
class Source:
    """One input image: ``path`` None for stdin; ``root`` the folder it was found under (None for a named file).

    ``base``: for an image matched by a glob, the folder before the glob's first wildcard; in an output folder
    the tree below it is mirrored, so that ``shots/**/*.jpg`` keeps ``a/x.jpg`` and ``b/x.jpg`` apart.
    """

    path: Path | None
    root: Path | None = None
    base: Path | None = None

    @property
    def label(self) -> str:
        return STDIO if self.path is None else str(self.path)


@dataclass(frozen=True)
class InputProblem:
    """An INPUT argument that gives no image: what was typed and why."""

    input: str
    reason: str


def _is_candidate(path: Path) -> bool:
    # Hidden files are skipped, among them the .NAME.XXXX.tmp files of an interrupted write.
    return path.suffix.lower() in INPUT_EXTENSIONS and not path.name.startswith(".") and os.path.isfile(path)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_candidate(p))
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in filenames) if _is_candidate(p))
    return sorted(found)


def _folder_sources(folder: Path, recursive: bool, typed: str) -> tuple[list[Source], list[InputProblem]]:
    try:
        images = _folder_images(folder, recursive)
    except OSError as exc:
        return [], [InputProblem(typed, f"cannot list the folder ({exc.strerror or exc})")]
    if images:
        return [Source(p, folder) for p in images], []
    reason = "folder with no images"
    if not recursive:
        try:
            nested = any(True for _ in _folder_images(folder, True))
        except OSError:
            nested = False
        if nested:
            reason += " (its subfolders have some: add --recursive)"
    return [], [InputProblem(typed, reason)]


def _component_matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Path components against pattern components, as glob does: ``**`` is any number of components (none
    included), wildcards do not match a leading dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if _component_matches(rest, parts):
            return True
        return bool(parts) and not parts[0].startswith(".") and _component_matches(pattern, parts[1:])
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _component_matches(rest, parts[1:])


def _glob(pattern: str, recursive: bool) -> list[str]:
    """glob.glob, except that a ``**`` pattern (with ``recursive``) visits each real folder once: a tree with
    symbolic links that loop (``a -> ..``) is walked in finite time, where glob.glob follows them again and
    again."""
    if not recursive or "**" not in pattern:
        return glob.glob(pattern, recursive=recursive)
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    fixed, wanted = parts[:first_magic], parts[first_magic:]
    root = str(Path(*fixed)) if fixed else ""
    walk_from = root or os.curdir
    if not os.path.isdir(walk_from):
        return []
    dirs_only = pattern.endswith(("/", os.sep))  # as glob: a trailing slash matches folders only
    tail = os.sep if dirs_only else ""
    skip_hidden = not any(part.startswith(".") for part in wanted)
    matches: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(walk_from, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []  # a folder reached again through a link: its contents are already listed
            continue
        seen.add((info.st_dev, info.st_ino))
        if skip_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        relative = Path(os.path.relpath(dirpath, walk_from))
        base = () if relative == Path(os.curdir) else relative.parts
        if _component_matches(wanted, base) and base:
            matches.append((dirpath if root else str(relative)) + tail)
        for name in [] if dirs_only else filenames:  # folders are matched when the walk reaches them
            if _component_matches(wanted, (*base, name)):
                matches.append(os.path.join(dirpath, name) if root else os.path.join(*base, name))
    if _component_matches(wanted, ()) and root:
        matches.append(os.path.join(root, ""))
    return matches


def expand_inputs(inputs: Iterable[str], recursive: bool = False) -> tuple[list[Source], list[InputProblem]]:
    """Files, folders (their images; with ``recursive`` the whole tree), globs and ``-`` (stdin) -> sources.

    A path that does not exist, a glob matching nothing and a folder without images become InputProblems, and so
    do an empty name (never the current folder) and a name the file system cannot hold (over 255 bytes ...): one
    problem each, never an exception. A file reached twice is kept once. Order: as typed, each folder sorted.
    """
    sources: list[Source] = []
    problems: list[InputProblem] = []
    seen: set[Path] = set()

    def add(found: Iterable[Source]) -> None:
        for source in found:
            key = _real(source.path) if source.path is not None else None
            if key is None or key not in seen:
                if key is not None:
                    seen.add(key)
                sources.append(source)

    for typed in inputs:
        if typed == STDIO:
            if any(s.path is None for s in sources):
                problems.append(InputProblem(typed, "stdin can be read only once"))
            else:
                sources.append(Source(None))
            continue
        if typed == "" or "\0" in typed:
            # Path("") is ".", the current folder: an empty argument (an unset shell variable) is no name at all.
            nothing = "the name holds a NUL byte, which no file name can" if "\0" in typed else "an empty name"
            problems.append(InputProblem(typed, f"no such file or folder ({nothing})"))
            continue
        path = Path(typed).expanduser()
        # os.path's tests, unlike Path's, answer False for a name the file system cannot even look up (too long).
        if os.path.isdir(path):
            found, issues = _folder_sources(path, recursive, typed)
            add(found)
            problems.extend(issues)
        elif os.path.lexists(path):
            add([Source(path)])
        elif glob.has_magic(typed):
            pattern = os.path.expanduser(typed)
            matches = sorted(_glob(pattern, recursive))
            parts = Path(pattern).parts
            base = Path(*parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))])
            files = [Path(m) for m in matches if _is_candidate(Path(m))]
            folders = [Path(m) for m in matches if os.path.isdir(m)]
            for folder in folders:
                found, issues = _folder_sources(folder, recursive, str(folder))
                add(found)
                problems.extend(issues)
            add(Source(f, base=base) for f in files)
            if not files and not folders:
                why = name_problem(path)  # a name with [ or * in it, that is also too long to be a file
                reason = f"no such file or folder ({why}), nor an image matching it as a pattern" if why else None
                problems.append(InputProblem(typed, reason or "no image matches this pattern"))
        else:
            why = name_problem(path)
            problems.append(InputProblem(typed, f"no such file or folder ({why})" if why else "no such file or folder"))
    return sources, problems
