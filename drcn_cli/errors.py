"""The one base of the errors drcn raises on purpose, and the exit codes they map to.

Library code raises a precise subclass (:class:`drcn_cli.weights.resolve.ChecksumError`,
:class:`drcn_cli.bench.degradation.DataError` ...); the command line catches :class:`DrcnError` once, prints its
message as one line and exits with its ``exit_code``. Anything else that escapes is a bug and keeps its traceback: a
stray ``ValueError`` is never reported as a usage error.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "ConfigError", "DrcnError", "UsageError", "megapixels",
]

EXIT_FAILURE = 1  # the work failed (a file, the weights, the hub, the disk)
EXIT_USAGE = 2  # the command cannot work as given (options, values, combinations); as Click's UsageError
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, the shells' convention)


class DrcnError(Exception):
    """An error drcn reports as one line: its message says what went wrong and, where it can, what to do."""

    exit_code: int = EXIT_FAILURE


class UsageError(DrcnError, ValueError):
    """What was asked cannot work: a bad option value or combination. Exit code 2."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration (a TrainConfig, a device, a precision) that cannot work. Exit code 2."""


def megapixels(pixels: int) -> str:
    """A pixel count as error messages give it: 144.0 Mpx, 0.00768 Mpx (never a misleading 0.0)."""
    value = pixels / 1e6
    return f"{value:.1f} Mpx" if value >= 1 else f"{value:.3g} Mpx"
