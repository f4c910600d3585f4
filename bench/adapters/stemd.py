"""stemd, driven through the CLI contract of ``stemd`` and ``stemctl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.adapters.base import CliResult, StatusResult, Supervisor, run_cli


class Stemd(Supervisor):
    name = "stemd"

    def config_file(self) -> Path:
        return self.run_dir / "stemd.env"

    def pid_file(self) -> Path:
        # the master's state file (stem_core.statefile) goes beside it
        return self.runtime_dir / "stemd.pid"

    def write_config(self) -> None:
        s = self.settings
        lines = {
            "STEMD_NODES": str(self.workload.nodes),
            # Double quotes: the workload has no `$`, `"` or backslash
            # (checked by Workload), so nothing inside is expanded.
            "STEMD_COMMAND": f'"{self.command_line("%i")}"',
            "STEMD_START_SECS": str(s.start_secs),
            "STEMD_STOP_TIMEOUT": str(s.stop_timeout),
            "STEMD_RESTART": s.restart,
            "STEMD_START_RETRIES": str(s.start_retries),
            # The launcher returns at spawn, as supervisord's and circus's do
            # (stemd's default waits for RUNNING): launch timings stay
            # comparable, and the crash storm's nodes, which never reach
            # RUNNING, do not fail the launch.
            "STEMD_START_WAIT": "0",
            "STEMD_MASTER_PID_FILE": str(self.pid_file()),
            # run-time files on tmpfs, like the defaults /run/stem/stemd.sock
            # and /run/stem/%n.pid; logs and the config stay on disk
            "STEMD_SOCKET": str(self.runtime_dir / "stemd.sock"),
            "STEMD_PID_FILE": str(self.runtime_dir / "run" / "%n.pid"),
            "STEMD_LOG_FILE": str(self.log_dir / "%n.log"),
            "STEMD_MASTER_LOG_FILE": str(self.run_dir / "stemd.log"),
        }
        if os.geteuid() == 0:
            lines["STEMD_FORCE_ROOT"] = "1"
        text = "".join(f"{key}={value}\n" for key, value in lines.items())
        self.config_file().write_text(text)

    def ctl(self, *args: str) -> CliResult:
        return run_cli([self.tool("stemctl"), "--config", str(self.config_file()), *args])

    def launch(self) -> CliResult:
        return run_cli([self.tool("stemd"), "--config", str(self.config_file())])

    def status(self) -> StatusResult:
        result = self.ctl("status", "--json")
        running = 0
        answered = result.returncode in (0, 1)
        if answered:
            try:
                rows = json.loads(result.stdout)
                running = sum(1 for row in rows if row.get("state") == "RUNNING")
            except (ValueError, AttributeError):
                answered = False
        return StatusResult(result.wall, answered, running, "" if answered else result.describe())

    def stop_all(self) -> CliResult:
        return self.ctl("stop")

    def start_all(self) -> CliResult:
        return self.ctl("start")

    def shutdown(self) -> CliResult:
        return self.ctl("shutdown")

    def node_log(self, index: int) -> Path:
        return self.log_dir / f"worker{index}.log"
