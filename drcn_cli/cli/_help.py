"""How every command's ``--help`` is laid out, beyond what each option declares.

Typer puts an option without a ``rich_help_panel`` in a panel named "Options", printed first; when a command names
a panel for each of its options, ``-h/--help`` would sit there alone. :class:`DrcnCommand` puts it beside
``-q/--quiet`` (every command has one: the panel of what the command prints), or leaves it under "Options" with the
other unpanelled options.

The style of the help (checked by tests/test_cli_help.py):

- a value an option takes is named by an uppercase word: ``N`` (a count), ``K`` (recursions), ``Q`` (a quality),
  ``MPX``, ``SCALE``, ``NAME``, ``FILE``, ``DIR``, ``PATH`` (a file or folder, or ``-``), ``DURATION`` ...; an option
  with a fixed set of values lists them (``<png|jpeg|...>``) instead;
- ``--json`` means JSON on stdout, in every command that has it;
- an install hint names the extra (``pip install 'drcn[video]'``); in help text the bracket is escaped
  (``drcn\\[video]``), or rich's markup would take ``[video]`` for a tag and drop it.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand


class DrcnCommand(TyperCommand):
    """A Typer command whose ``--help`` is listed in the panel of its ``--quiet`` option."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        quiet = next((param for param in self.params if "--quiet" in getattr(param, "opts", ())), None)
        panel = getattr(quiet, "rich_help_panel", None)
        if option is not None and panel:
            option.rich_help_panel = panel
        return option
