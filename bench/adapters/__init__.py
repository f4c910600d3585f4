"""The supervisors under test, each behind the same small interface."""

from __future__ import annotations

from bench.adapters.base import CliResult, StatusResult, Supervisor, run_cli
from bench.adapters.circus import Circus
from bench.adapters.stemd import Stemd
from bench.adapters.supervisord import Supervisord

ADAPTERS: dict[str, type[Supervisor]] = {cls.name: cls for cls in (Stemd, Supervisord, Circus)}

__all__ = ["ADAPTERS", "CliResult", "StatusResult", "Supervisor", "run_cli"]
