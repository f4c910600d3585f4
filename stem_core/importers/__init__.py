"""Translate another supervisor's configuration into stemd's (``stemctl import``).

The importers are pure: they read files and return plain data -- the stemd
configuration to write and a list of :class:`Note` about what did not
translate. ``stemd/importcmd.py`` writes the result and decides the exit
status, so the importers can be tested without a process in sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImportResult", "Note"]


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
