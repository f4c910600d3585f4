"""Errors as values with context.

A :class:`Problem` names where something is wrong (file, line, column, key)
and what to do about it (hint). Loaders collect problems instead of stopping
at the first one, so ``stemd --check`` can list every problem at once; the
edge of the program (CLI, control server) turns them into messages and exit
codes in one place.
"""

from __future__ import annotations

from collections import namedtuple


class Problem(namedtuple("Problem", "message file line column key hint",
                           defaults=(None, None, None, None, None))):
    """One thing wrong with the configuration or the environment.

    A named tuple rather than a frozen dataclass (as are the other value
    records on stemctl's path, Assignment and Request): both are immutable
    values, but importing dataclasses costs every stemctl run ~9 ms, and
    typing (for typing.NamedTuple) ~5 ms more. The annotations below are
    for readers only: the fields and their defaults (None for all but
    ``message``) are the namedtuple's, and a ``= None`` here would replace a
    field's accessor with a class attribute.
    """

    __slots__ = ()
    message: str
    file: str | None
    line: int | None
    column: int | None
    key: str | None
    hint: str | None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        text = f"{where}{key}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class StemError(Exception):
    """Base of every error stemd raises on purpose."""


class ConfigError(StemError):
    """The configuration cannot be loaded; carries every problem found."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PidFileError(StemError):
    """A PID file could not be read or written safely."""


class BadValue(ValueError):
    """A single value is invalid. Raised by the pure parsers (node lists,
    option selectors, templates); the config loader adds file, line and key
    and turns it into a :class:`Problem`."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
