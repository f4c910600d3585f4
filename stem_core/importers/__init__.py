"""Translate another supervisor's configuration into stemd's (``stemctl import``).

The importers are pure: they read files and return plain data -- the stemd
configuration to write and a list of :class:`Note` about what did not
translate. ``stemd/importcmd.py`` writes the result and decides the exit
status, so the importers can be tested without a process in sight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImportResult", "Note", "foreign_format"]

_SUPERVISORD_HEADER = re.compile(
    r"\[(supervisord|program:|group:|include|unix_http_server|inet_http_server|supervisorctl"
    r"|eventlistener:|rpcinterface:|fcgi-program:)")
_CELERYD_NAME = re.compile(
    r"^[ \t]*(?:export[ \t]+)?(CELERYD_[A-Z_]+|CELERYBEAT_[A-Z_]+|CELERY_BIN|CELERY_APP)[ \t]*=",
    re.MULTILINE)
_STEMD_NAME = re.compile(r"^[ \t]*(?:export[ \t]+)?STEMD?_[A-Z_]+[ \t]*=|^[ \t]*\[(stemd|programs)",
                         re.MULTILINE)


def foreign_format(text: str) -> tuple[str, int] | None:
    """("supervisord" | "celeryd", line) when ``text`` is another
    supervisor's configuration rather than stemd's, else None.

    supervisord: the first line that is not blank or a comment is one of its
    section headers. celeryd: ``CELERYD_*``/``CELERY_BIN``/``CELERY_APP``
    assignments and no stemd key at all (a stemd env file may well export
    celery's variables to its nodes).
    """
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if _SUPERVISORD_HEADER.match(stripped):
            return "supervisord", number
        break
    celery = _CELERYD_NAME.search(text)
    if celery and not _STEMD_NAME.search(text):
        return "celeryd", text.count("\n", 0, celery.start()) + 1
    return None


@dataclass(frozen=True, slots=True)
class Note:
    """One setting of the source that stemd does not (fully) reproduce.

    ``translated`` is false when stemd does something different or nothing
    at all (the import's exit status is then 1); true for notes that only
    explain an equivalent translation (a shorter form will be possible later,
    a group that needs no counterpart).
    """

    file: str
    line: int | None
    setting: str
    advice: str
    translated: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.setting}: {self.advice}"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an importer found.

    Exactly one of ``toml`` (a TOML-shaped dict: ``[stemd]`` and
    ``[programs.NAME]``) and ``env`` (``(name, value, exported)``
    assignments of an ``/etc/default/stem`` file) is set. ``comments`` are
    written at the top of the output.
    """

    toml: dict[str, Any] | None = None
    env: tuple[tuple[str, str, bool], ...] | None = None
    comments: tuple[str, ...] = ()
    notes: tuple[Note, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """True when every setting was translated."""
        return all(note.translated for note in self.notes)
