"""How a node's process ended (a value shared by the reaper, the node state
machine, the state file and the client's display, so it lives in stem_core)."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended. Both None: unknown (an adopted node is not our
    child, so its status cannot be collected)."""

    code: int | None = None
    signal: int | None = None

    @property
    def clean(self) -> bool:
        return self.code == 0

    @property
    def as_int(self) -> int | None:
        """Popen's convention: the exit code, or minus the signal number."""
        if self.signal is not None:
            return -self.signal
        return self.code

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code is not None:
            return f"exit status {self.code}"
        return "exit status unknown (adopted)"
