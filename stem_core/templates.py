"""``%n``-style templates in paths and in the command (SPEC 1.3).

Unknown ``%X`` sequences pass through untouched so that the worker can expand
its own (celery's ``%I`` in ``--logfile``). Expansion is one left-to-right
pass: a node name or host containing ``%`` is never expanded a second time.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

from stem_core.errors import BadValue

__all__ = ["expand", "expand_name", "master_values", "node_values"]

# '%' then any one character, or a lone '%' at the end.
_PERCENT = re.compile(r"%(.|\Z)", re.DOTALL)


def expand(template: str, values: Mapping[str, str]) -> str:
    """Replace ``%X`` for each one-letter key X of ``values``; ``%%`` -> ``%``.

    Any other ``%X`` and a trailing lone ``%`` are left as they are.
    """

    def replace(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter and letter in values:
            return values[letter]
        return match.group()

    return _PERCENT.sub(replace, template)


# A name pattern's field: '%', an optional zero flag and width, one character.
_NAME_FIELD = re.compile(r"%(0?)([0-9]{0,2})(.|\Z)", re.DOTALL)


def expand_name(pattern: str, program: str, index: int, host: str | None = None) -> str:
    """A node name from a ``name`` pattern (supervisord's ``process_name``):
    ``%p`` program, ``%i`` the 1-based index with printf-style zero padding
    (``%02i`` -> ``01``), ``%h`` host, ``%%``. Stricter than :func:`expand`:
    a name holds no ``%``, so any other ``%X`` is an error, not text."""

    def replace(match: re.Match[str]) -> str:
        zero, width, letter = match.groups()
        if letter == "i":
            return f"{index:{zero}{width}d}" if width else str(index)
        if zero or width:
            raise BadValue(f"name pattern {pattern!r}: a width applies to %i only",
                           hint="write %02i for 01, 02 ...")
        if letter == "%":
            return "%"
        if letter == "p":
            return program
        if letter == "h":
            return host if host is not None else master_values()["h"]
        raise BadValue(f"name pattern {pattern!r}: unknown field %{letter}",
                       hint="use %p (program), %i or %02i (index), %h (host), %% (a %)")

    return _NAME_FIELD.sub(replace, pattern)


def master_values(host: str | None = None) -> dict[str, str]:
    """``%h`` and ``%d`` for the master's own paths.

    The host name is ``socket.gethostname()``: no DNS lookup (the FQDN can
    hang at boot, or without a network), so ``%d`` is only non-empty when the
    configured host name itself contains a dot.
    """
    if host is None:
        host = socket.gethostname()
    return {"h": host, "d": host.partition(".")[2]}


def node_values(node: str, program: str, index: int, host: str | None = None) -> dict[str, str]:
    """``%n`` node, ``%p`` program, ``%i`` 1-based index, ``%h`` host, ``%d`` domain."""
    return {"n": node, "p": program, "i": str(index), **master_values(host)}
