"""How an error reaches the user: one line on stderr, ``error: <message>``, and the exit code the error carries.

Every command is registered through :func:`reported`, so a :class:`drcn_cli.errors.DrcnError` raised anywhere
below it is printed here, once. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, DrcnError

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "fail", "one_line", "print_error", "reported", "usage"]

F = TypeVar("F", bound=Callable[..., Any])


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(text).split())


def print_error(message: object, hint: str = "") -> None:
    """The one error printer: ``error: <message><hint>`` as one line on stderr."""
    typer.echo(f"error: {one_line(message)}{hint}", err=True)


def fail(message: object, code: int = EXIT_FAILURE, command: str | None = None) -> typer.Exit:
    """Print ``message`` and return the exit for the caller to raise; a usage error (code 2) of ``command``
    points to its help."""
    hint = f" (see drcn {command} --help)" if code == EXIT_USAGE and command else ""
    print_error(message, hint)
    return typer.Exit(code)


def usage(message: object, command: str) -> typer.Exit:
    """A usage error of ``drcn <command>``: printed, exit code 2."""
    return fail(message, EXIT_USAGE, command)


def reported(command: str) -> Callable[[F], F]:
    """Wrap a command so that a DrcnError from it is one line and its exit code, not a traceback."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except DrcnError as exc:
                raise fail(exc, exc.exit_code, command) from None

        return run  # type: ignore[return-value]

    return wrap
