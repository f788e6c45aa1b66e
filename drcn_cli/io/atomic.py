"""The one way drcn writes a file: :func:`write_atomic`. Images, videos, weights, training packs, checkpoint
files, benchmark reports and plots, ONNX models all go through it, so they all follow one rule:

1. Only a regular file is ever replaced. A folder, FIFO, socket, device node or symbolic link (whatever it
   points to: a link to ``/proc/self/fd/1`` or ``/dev/null`` is not followed) at the destination is refused with
   :class:`NotRegularFileError` and left exactly as it was; this is checked before writing and again right
   before publishing.
2. Without ``overwrite`` an existing destination is refused (:class:`OutputExistsError`), also one that
   appears while the file is being written: the finished temporary file is published with ``os.link``, which
   fails if the name is taken (where hard links are not supported: a check, then ``os.replace``). With
   ``overwrite``: ``os.replace``.
3. The temporary file is in the destination's folder, hidden, with a short name of fixed length
   (``.drcn-XXXXXXXX.tmp``) that does not depend on the destination's, so any name the file system takes works.
4. It is created with the permissions of a normal new file (0o666 less the umask), written, fsync'ed, then
   published; on any exception, KeyboardInterrupt included, it is removed. Nothing partial is ever at the
   destination: a reader sees the old file (or none) or the complete new one.
5. Only SIGKILL (or a power cut) can leave a temporary file behind. The writer holds an exclusive ``flock`` on its
   temporary from its creation until it is published or removed, so a temporary nobody holds is one whose writer
   died. The first write of a process into a folder removes such leftovers there
   (:func:`remove_stale_temporaries`): files of exactly this naming pattern, regular, last modified before the
   process started, not locked, and (on Linux) open in no process that ``/proc`` shows. Nothing else is touched.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DrcnError

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are then never removed (nothing could tell them from live ones)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "NotRegularFileError",
    "OutputExistsError",
    "WriteError",
    "folder_problem",
    "non_regular_reason",
    "remove_stale_temporaries",
    "write_atomic",
]

_WRITE_CHUNK = 1 << 20
_TEMP_TRIES = 100
TEMPORARY_NAME = re.compile(r"\.drcn-[0-9a-f]{8}\.tmp")  # what _create_temporary names, and nothing else
# When this process (this run) began using the writer: a leftover of a killed run is older.
_STARTED = time.time()
_swept: set[str] = set()  # folders already swept of leftovers by this process
_swept_lock = threading.Lock()

# errno values of os.link on a file system without hard links (FAT, some network and FUSE file systems).
_NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK", "ENOSYS", "EACCES")
    if hasattr(errno, name)
)


class WriteError(DrcnError, OSError):
    """A file that could not be written (folder missing or unwritable, disk full ...); one line naming the file.
    Nothing was left behind and the destination is as it was."""


class OutputExistsError(WriteError):
    """The destination exists (or appeared while the file was being written) and replacing it was not asked
    for; it is untouched."""


class NotRegularFileError(WriteError):
    """The destination is not a regular file (a folder, FIFO, socket, device or symbolic link): drcn never
    replaces one; it is untouched."""


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long for the file system"
    return exc.strerror or str(exc)


@contextmanager
def _reported(what: str) -> Iterator[None]:
    """An OSError of the block as a WriteError ``cannot <what>: <reason>``; drcn's own errors pass as they are."""
    try:
        yield
    except DrcnError:
        raise
    except OSError as exc:
        raise WriteError(f"cannot {what}: {_reason(exc)}") from None


def _is_stream(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _link_target(path: Path) -> tuple[str, int | None]:
    """A symbolic link's target in words (``/x/y``, ``/x/y, which does not exist`` ...) and the mode of what it
    leads to (None when it leads nowhere)."""
    try:
        target = os.readlink(path)
    except OSError:
        return "", None
    try:
        return target, os.stat(path).st_mode
    except FileNotFoundError:
        return f"{target}, which does not exist", None
    except NotADirectoryError:
        return f"{target}, which cannot exist: a file is in the way of its folder", None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{target}, a loop of links that leads nowhere", None
        return f"{target}, which cannot be reached: {exc.strerror or exc}", None


def _kind(path: Path, mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISLNK(mode):
        target, _ = _link_target(path)
        return f"a symbolic link (to {target})" if target else "a symbolic link"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _stream_hint(path: Path, mode: int) -> str:
    """`` (use - for a stream)`` where the user may have meant a stream: a FIFO, socket or device, or a link to
    one (``/dev/stdout``); nothing for a folder, a link to a file or a link that leads nowhere."""
    if stat.S_ISLNK(mode):
        mode = _link_target(path)[1] or 0
    return " (use - for a stream)" if _is_stream(mode) else ""


def _refusal(path: Path, mode: int) -> str:
    return f"{path} is {_kind(path, mode)}: drcn replaces only regular files{_stream_hint(path, mode)}"


def non_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """The line :func:`write_atomic` would refuse ``path`` with, when something other than a regular file is there
    (a folder, FIFO, socket, device, or a symbolic link, dangling or not: ``out.png is a symbolic link (to x.png,
    which does not exist): drcn replaces only regular files``); None when nothing or a regular file is, or the
    name cannot be looked up. For planners, to refuse before any work."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else _refusal(path, mode)


def folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` cannot be (or be made) a folder, in words, or None: the nearest of it and its parents that
    exists is not a folder (``/home/me/cache is a file, not a folder``; a link that leads nowhere ...). Nothing is
    created. Permissions are not judged here: the write itself reports them."""
    for place in (Path(folder), *Path(folder).parents):
        try:
            mode = os.stat(place).st_mode
        except FileNotFoundError:
            if os.path.islink(place):
                return f"{place} is {_kind(place, os.lstat(place).st_mode)}, where a folder should be"
            continue
        except NotADirectoryError:
            continue  # a parent is not a folder: found further up
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                continue
            if exc.errno == errno.ELOOP:
                return f"{place} is {_kind(place, os.lstat(place).st_mode)}, where a folder should be"
            return f"{place} cannot be reached: {exc.strerror or exc}"
        if stat.S_ISDIR(mode):
            return None
        what = "a file" if stat.S_ISREG(mode) else _kind(place, mode)
        return f"{place} is {what}, not a folder"
    return None


def _check_destination(path: Path, overwrite: bool, *, meanwhile: bool) -> bool:
    """Whether ``path`` exists; NotRegularFileError if it is anything but a regular file, OutputExistsError if it
    exists and ``overwrite`` is False."""
    with _reported(f"write {path}"):
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(_refusal(path, mode))
    if not overwrite:
        when = "appeared meanwhile" if meanwhile else "exists"
        raise OutputExistsError(f"output {path} {when}; it was left as it is")
    return True


def _create_temporary(folder: Path) -> tuple[int, Path]:
    """A new empty file ``.drcn-XXXXXXXX.tmp`` in ``folder``, open for reading and writing, with the permissions
    a new file gets (os.open's 0o666 less the umask, where tempfile.mkstemp would give 0o600)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_TRIES):
        tmp = folder / f".drcn-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        _hold(fd)
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TEMP_TRIES} tries")


def _hold(fd: int) -> None:
    """Lock the new temporary file (exclusive flock, released when ``fd`` is closed): the sign that its writer is
    alive. A file system without locks leaves it unlocked, and then :func:`remove_stale_temporaries` cannot lock
    it either, so it removes nothing there."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass


def _open_in_processes(paths: set[str]) -> set[str]:
    """Which of ``paths`` (absolute, resolved) another process has open, as far as ``/proc/*/fd`` shows (Linux; the
    processes of other users are hidden from a normal user: the lock is the sign that counts). Links are read,
    never followed, so a hung network mount cannot block this."""
    held: set[str] = set()
    me = str(os.getpid())
    try:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and pid != me]
    except OSError:
        return held
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in paths:
                held.add(target)
    return held


def remove_stale_temporaries(folder: str | os.PathLike[str], *, before: float | None = None) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``; returns those removed.

    Removed: files named exactly as :func:`write_atomic` names its temporaries (``.drcn-XXXXXXXX.tmp``, 8 hex
    digits), regular files (not links, folders ...), last modified before ``before`` (default: when this process
    began using the writer), that no live writer holds (every writer keeps an exclusive flock on its temporary
    until it is published or removed) and that no other process has open (``/proc``, on Linux). Anything else is
    left as it is, and so is everything on a system without flock. Best effort: a file that cannot be checked or
    removed is left, silently.
    """
    if fcntl is None:
        return []
    before = _STARTED if before is None else before
    folder = Path(folder)
    try:
        names = sorted(name for name in os.listdir(folder) if TEMPORARY_NAME.fullmatch(name))
    except OSError:
        return []
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    stale: dict[str, tuple[int, os.stat_result]] = {}
    try:
        for name in names:
            path = folder / name
            try:
                fd = os.open(path, flags)  # a link is refused (O_NOFOLLOW), a FIFO does not block (O_NONBLOCK)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < before:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
                    stale[os.path.realpath(path)] = (fd, info)
                    continue
            except OSError:
                pass
            os.close(fd)
        removed: list[Path] = []
        held = _open_in_processes(set(stale)) if stale else set()
        for resolved, (_fd, info) in stale.items():
            path = folder / os.path.basename(resolved)
            try:
                now = os.lstat(path)
                if resolved in held or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                    continue
                os.unlink(path)
            except OSError:
                continue
            removed.append(path)
        return removed
    finally:
        for fd, _info in stale.values():
            os.close(fd)


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` in ``folder``, the first time this process writes there."""
    key = os.path.abspath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temporaries(folder)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), _WRITE_CHUNK):
        chunk = view[start:start + _WRITE_CHUNK]
        while chunk:
            chunk = chunk[os.write(fd, chunk):]


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the complete temporary file its final name (after checking the destination once more)."""
    _check_destination(path, overwrite, meanwhile=True)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path appeared since the check: it is then never replaced
    except FileExistsError:
        _check_destination(path, overwrite, meanwhile=True)  # names what is there when it is no regular file
        raise OutputExistsError(f"output {path} appeared meanwhile; it was left as it is") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _check_destination(path, overwrite, meanwhile=True)  # no hard links here: check, then rename
        os.replace(tmp, path)
        return
    try:
        tmp.unlink()
    except OSError:
        pass  # the output is complete; the hidden temporary name may stay beside it


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | Callable[[Path], object],
    *,
    overwrite: bool,
) -> int:
    """Write a file atomically; returns its size in bytes.

    ``data`` is the content, or a function that writes it into the temporary file whose path it is given
    (created empty, to be written in place, by any means: ``open(tmp, "wb")``, ``torch.save``, safetensors,
    PyAV ...), called after the destination was checked. Missing parent folders are created. The rules are
    the module's: only a regular file is replaced; without ``overwrite`` an existing one never is; the
    temporary file is fsync'ed before it is published, and removed on any exception.

    Raises:
        NotRegularFileError: the destination is a folder, FIFO, socket, device or symbolic link (untouched).
        OutputExistsError: ``overwrite`` is False and the destination exists, or appeared meanwhile (untouched).
        WriteError: the file could not be written (``cannot write PATH: disk full`` ...); a file name too long
            for the file system is one too.
        Whatever ``data``, a function, raises is passed on as it is.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WriteError(f"cannot create folder {folder}: a file is in the way") from None
    except OSError as exc:
        raise WriteError(f"cannot create folder {folder}: {_reason(exc)}") from None
    _check_destination(path, overwrite, meanwhile=False)
    _sweep_once(folder)
    with _reported(f"write in {folder}"):
        fd, tmp = _create_temporary(folder)
    # fd, and with it the lock that tells that the temporary is alive, is closed only once the temporary is
    # published or removed; without locks (Windows, which cannot rename or remove an open file) before that.
    opened = [fd]

    def release() -> None:
        while opened:
            os.close(opened.pop())

    try:
        try:
            if callable(data):
                data(tmp)
                with _reported(f"write {path}"):
                    if not os.path.samestat(os.fstat(fd), os.lstat(tmp)):
                        raise WriteError(f"cannot write {path}: the writer replaced its temporary file {tmp.name}")
            with _reported(f"write {path}"):
                if not callable(data):
                    _write_all(fd, data)
                os.fsync(fd)
                size = os.fstat(fd).st_size
            if fcntl is None:
                release()
            with _reported(f"write {path}"):
                _publish(tmp, path, overwrite)
        except BaseException:
            if fcntl is None:
                release()
            try:
                tmp.unlink()
            except OSError:
                pass  # already published (os.replace), or nothing more can be done: the hidden name says what it is
            raise
    finally:
        release()
    return size
