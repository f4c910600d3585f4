"""supervisord, driven through ``supervisord`` and ``supervisorctl``."""

from __future__ import annotations

import os
from pathlib import Path

from bench.adapters.base import CliResult, StatusResult, Supervisor, run_cli


class Supervisord(Supervisor):
    name = "supervisord"

    def config_file(self) -> Path:
        return self.run_dir / "supervisord.conf"

    def pid_file(self) -> Path:
        return self.runtime_dir / "supervisord.pid"

    def write_config(self) -> None:
        s = self.settings
        # socket and PID file in the run-time directory (tmpfs, as /run);
        # the log files on disk
        sock = self.runtime_dir / "supervisor.sock"
        program = self.workload.program
        # minfds: supervisord holds three pipe ends per process; it raises its
        # soft RLIMIT_NOFILE to this and refuses to start if it cannot.
        minfds = max(1024, 4 * self.workload.nodes + 256)
        # autorestart=true is "restart always"; logs are not rotated
        # (maxbytes=0), like stemd's O_APPEND files, so the flood test
        # measures piping, not rotation.
        text = f"""\
[unix_http_server]
file={sock}

[supervisord]
logfile={self.run_dir}/supervisord.log
pidfile={self.pid_file()}
childlogdir={self.log_dir}
minfds={minfds}
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

[program:{program}]
command={self.command_line("%(process_num)d")}
process_name=%(program_name)s_%(process_num)d
numprocs={self.workload.nodes}
numprocs_start=1
startsecs={s.start_secs}
startretries={s.start_retries}
autorestart={"true" if s.restart == "always" else "unexpected"}
stopwaitsecs={s.stop_timeout}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={self.log_dir}/%(program_name)s_%(process_num)d.log
stdout_logfile_maxbytes=0
stdout_logfile_backups=0
"""
        if os.geteuid() != 0:
            text = text.replace("user=root\n", "")
        self.config_file().write_text(text)

    def ctl(self, *args: str) -> CliResult:
        return run_cli([self.tool("supervisorctl"), "-c", str(self.config_file()), *args])

    def launch(self) -> CliResult:
        return run_cli([self.tool("supervisord"), "-c", str(self.config_file())])

    def status(self) -> StatusResult:
        result = self.ctl("status")
        # LSB codes: 0 all running, 3 some not running; 4 and up: no answer
        answered = result.returncode in (0, 3) and bool(result.stdout.strip())
        running = sum(1 for line in result.stdout.splitlines() if " RUNNING " in line)
        return StatusResult(result.wall, answered, running, "" if answered else result.describe())

    def stop_all(self) -> CliResult:
        return self.ctl("stop", "all")

    def start_all(self) -> CliResult:
        return self.ctl("start", "all")

    def shutdown(self) -> CliResult:
        return self.ctl("shutdown")

    def node_log(self, index: int) -> Path:
        return self.log_dir / f"{self.workload.program}_{index}.log"
