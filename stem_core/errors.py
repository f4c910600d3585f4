"""Errors as values with context.

A :class:`Problem` names where something is wrong (file, line, column, key)
and what to do about it (hint). Loaders collect problems instead of stopping
at the first one, so ``stemd --check`` can list every problem at once; the
edge of the program (CLI, control server) turns them into messages and exit
codes in one place.
"""

from __future__ import annotations

from collections import namedtuple


class Problem(namedtuple("Problem", "message file line column key hint fatal_at_start",
                           defaults=(None, None, None, None, None, False))):
    """One thing wrong with the configuration or the environment.

    A named tuple rather than a frozen dataclass (as are the other value
    records on stemctl's path, Assignment and Request): both are immutable
    values, but importing dataclasses costs every stemctl run ~9 ms, and
    typing (for typing.NamedTuple) ~5 ms more. The annotations below are
    for readers only: the fields and their defaults (None for all but
    ``message``) are the namedtuple's, and a ``= None`` here would replace a
    field's accessor with a class attribute.

    ``fatal_at_start`` (default False) marks a problem of the host that
    would make a node fail at every start (no such account, a node as root,
    no such command or working directory): ``stemd`` refuses to start on
    it, while ``--check`` and ``diagnose`` list it with the rest.
    """

    __slots__ = ()
    message: str
    file: str | None
    line: int | None
    column: int | None
    key: str | None
    hint: str | None
    fatal_at_start: bool

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


#: Problems a ConfigError carries at most. A damaged or hostile file can hold
#: hundreds of thousands of errors; past the first few the rest are
#: consequences, and listing them all costs the master (a reload logs them)
#: time and memory. The rest are counted in one last problem.
MAX_REPORTED = 50


class ConfigError(StemError):
    """The configuration cannot be loaded; carries the problems found, the
    first :data:`MAX_REPORTED` of them, then one "N more errors not shown".

    ``omitted`` counts problems a producer found but did not build (the env
    file lexer stops building them once it has the first 50); it is added to
    those cut here.
    """

    def __init__(self, problems: list[Problem] | Problem, omitted: int = 0) -> None:
        if isinstance(problems, Problem):
            problems = [problems]
        shown = list(problems)
        if len(shown) > MAX_REPORTED:
            omitted += len(shown) - MAX_REPORTED
            del shown[MAX_REPORTED:]
        self.omitted = omitted
        if omitted:
            files = {p.file for p in shown}
            shown.append(Problem(f"{omitted} more error{'s' if omitted != 1 else ''} not shown",
                                 files.pop() if len(files) == 1 else None,
                                 hint="fix the ones above and run stemd --check again"))
        self.problems: list[Problem] = shown
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
