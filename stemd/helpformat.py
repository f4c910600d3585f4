"""argparse help for stemd and stemctl, without importing shutil."""

from __future__ import annotations

import argparse
import os
import sys

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse builds a formatter at every add_argument(), not only for
    --help, and its default width comes from shutil.get_terminal_size():
    importing shutil (which imports bz2 and lzma) costs
    every stemctl run, and every stemd start, ~4 ms. Same width, found with
    os alone (COLUMNS, else the terminal on stdout, else 80)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", columns())
        super().__init__(prog, **kwargs)


def columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size((sys.__stdout__ or sys.stdout).fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80
