"""The process's streams for `drcn upscale`: one image from stdin, one image to stdout, checked and complete."""

from __future__ import annotations

import errno
import os
import sys

import typer

from ._errors import fail, one_line, usage


def check_stdout(to_stdout: bool, world: int) -> None:
    """Where image data cannot go to stdout: shared between ranks, closed, or a terminal."""
    if to_stdout and world > 1:
        raise usage("stdout output cannot be shared between torchrun ranks", "upscale")
    if to_stdout and sys.stdout is None:  # started with stdout closed (>&-)
        raise fail("stdout is closed: give -o FILE")
    if to_stdout and sys.stdout.isatty():
        raise usage("refusing to write image data to a terminal: redirect stdout or give -o FILE", "upscale")


def read_stdin(max_pixels: int | None = None) -> bytes:
    """All of stdin, as bytes, but never more than an image within ``max_pixels`` can take (a stream can be
    endless: `cat /dev/zero |`); ImageReadError (one line) when it is closed, unreadable or too long."""
    from ..io.formats import ImageReadError
    from ..io.images import max_file_bytes

    if sys.stdin is None:  # started with stdin closed (<&-)
        raise ImageReadError("stdin is closed")
    limit = max_file_bytes(max_pixels)
    try:
        # One byte over the limit is enough for read_image to refuse the stream.
        return typer.get_binary_stream("stdin").read(-1 if limit is None else limit + 1)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ImageReadError(f"cannot read stdin ({one_line(getattr(exc, 'strerror', None) or exc)})") from None


def write_stdout(data: bytes) -> None:
    """Write the image to stdout, all of it, or raise ImageWriteError: a reader that went away (broken pipe), a
    full disk, a short write. A regular file behind stdout is fsync'd, so a full disk shows here, not later."""
    import stat

    from ..io.formats import ImageWriteError

    stream = typer.get_binary_stream("stdout")
    try:
        written = stream.write(data)
        if written is not None and written != len(data):
            silence_stdout()
            raise ImageWriteError(f"cannot write to stdout: only {written} of {len(data)} bytes were taken")
        stream.flush()
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None  # not a real file (a test runner's buffer)
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):  # a file system that cannot sync
                    raise
    except BrokenPipeError:
        silence_stdout()
        raise ImageWriteError("cannot write to stdout: the reading end of the pipe was closed") from None
    except ImageWriteError:
        raise
    except OSError as exc:
        silence_stdout()
        reason = "disk full" if exc.errno == errno.ENOSPC else one_line(exc.strerror or exc)
        raise ImageWriteError(f"cannot write to stdout: {reason}") from None


def silence_stdout() -> None:
    """After a failed write to stdout, point its descriptor at /dev/null: what is still buffered would fail
    again when Python exits and print a traceback-like warning after our one error line."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)
