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
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DrcnError

__all__ = ["NotRegularFileError", "OutputExistsError", "WriteError", "write_atomic"]

_WRITE_CHUNK = 1 << 20
_TEMP_TRIES = 100

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


def _kind(path: Path, mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            return "a symbolic link"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _check_destination(path: Path, overwrite: bool, *, meanwhile: bool) -> bool:
    """Whether ``path`` exists; NotRegularFileError if it is anything but a regular file, OutputExistsError if it
    exists and ``overwrite`` is False."""
    with _reported(f"write {path}"):
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
    if not stat.S_ISREG(mode):
        hint = "" if stat.S_ISDIR(mode) else " (use - for a stream)"
        raise NotRegularFileError(f"{path} is {_kind(path, mode)}: drcn replaces only regular files{hint}")
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
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TEMP_TRIES} tries")


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
    with _reported(f"write in {folder}"):
        fd, tmp = _create_temporary(folder)
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
        finally:
            os.close(fd)
        with _reported(f"write {path}"):
            _publish(tmp, path, overwrite)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass  # already published (os.replace), or nothing more can be done: the hidden name says what it is
        raise
    return size
