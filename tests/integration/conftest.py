"""The integration tests' fixtures; the harness itself is in tests/fleet.py,
shared with tests/faults/."""

from __future__ import annotations

from tests.fleet import STEMCTL, STEMD, Fleet, fleet, pid_alive, wait_until

__all__ = ["STEMCTL", "STEMD", "Fleet", "fleet", "pid_alive", "wait_until"]
