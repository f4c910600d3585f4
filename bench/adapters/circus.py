"""circus, driven through ``circusd --daemon`` and ``circusctl``.

circus has no start-secs state (a process is either there or not), so "all
RUNNING" does not apply; its ``status`` answers per watcher, not per process.
All endpoints are IPC sockets in the run-time directory (tmpfs, as /run) and the multicast
discovery endpoint is disabled, so nothing listens on the network.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from bench.adapters.base import CliResult, StatusResult, Supervisor, run_cli


class Circus(Supervisor):
    name = "circus"
    has_running_state = False

    def config_file(self) -> Path:
        return self.run_dir / "circus.ini"

    def pid_file(self) -> Path:
        return self.runtime_dir / "circus.pid"

    def endpoint(self) -> str:
        return f"ipc://{self.runtime_dir}/endpoint.sock"

    def write_config(self) -> None:
        s = self.settings
        words = shlex.split(self.command_line("$(circus.wid)"))
        # graceful_timeout is circus's stop timeout; respawn=true is its only
        # restart policy; max_retry matches start-retries.
        text = f"""\
[circus]
endpoint = {self.endpoint()}
pubsub_endpoint = ipc://{self.runtime_dir}/pubsub.sock
multicast_endpoint =
statsd = false
pidfile = {self.pid_file()}
logoutput = {self.run_dir}/circusd.log
loglevel = info

[watcher:{self.workload.program}]
cmd = {shlex.quote(words[0])}
args = {shlex.join(words[1:])}
numprocesses = {self.workload.nodes}
graceful_timeout = {s.stop_timeout}
max_retry = {s.start_retries}
respawn = true
copy_env = true
stdout_stream.class = FileStream
stdout_stream.filename = {self.node_log(1)}
stderr_stream.class = FileStream
stderr_stream.filename = {self.log_dir}/{self.workload.program}.err.log
"""
        self.config_file().write_text(text)

    def ctl(self, *args: str) -> CliResult:
        argv = [self.tool("circusctl"), "--endpoint", self.endpoint(), "--timeout", "30"]
        return run_cli([*argv, *args])

    def launch(self) -> CliResult:
        return run_cli([self.tool("circusd"), "--daemon", str(self.config_file())])

    def status(self) -> StatusResult:
        result = self.ctl("status")
        # "w: starting" and the like are answers too: only a failed command is not
        answered = result.ok
        # no per-process state: report "running" as the watcher being active
        running = self.workload.nodes if f"{self.workload.program}: active" in result.stdout else 0
        return StatusResult(result.wall, answered, running, "" if answered else result.describe())

    def stop_all(self) -> CliResult:
        return self.ctl("stop", "--waiting")

    def start_all(self) -> CliResult:
        return self.ctl("start", "--waiting")

    def shutdown(self) -> CliResult:
        return self.ctl("quit", "--waiting")

    def node_log(self, index: int) -> Path:
        # one stream for the watcher: every process appends to the same file
        return self.log_dir / f"{self.workload.program}.log"
