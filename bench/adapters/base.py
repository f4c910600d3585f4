"""What the benchmark needs from a supervisor, and the command runner.

Each adapter writes its supervisor's own configuration for a
:class:`~bench.workloads.Workload` and drives it only through its real
command-line tools (daemonizing launcher, control client), the way an
operator or an init script would. Everything is timed from the outside.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from bench.workloads import INDEX, Settings, Workload

CLI_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class CliResult:
    argv: tuple[str, ...]
    wall: float
    returncode: int  # -1 on timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        tail = text[-1] if text else ""
        return f"{' '.join(self.argv)} -> {self.returncode} {tail}"


@dataclass(frozen=True, slots=True)
class StatusResult:
    wall: float
    ok: bool  # the command answered
    running: int  # nodes the supervisor reports RUNNING (circus: alive)
    detail: str = ""  # why it did not answer


def run_cli(argv: list[str], timeout: float = CLI_TIMEOUT) -> CliResult:
    """Run one command and time it; a timeout is a result, not an exception,
    so a supervisor that hangs shows up in the figures instead of aborting
    the run."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        return CliResult(tuple(argv), time.monotonic() - start, -1, _text(exc.stdout), "timeout")
    return CliResult(
        tuple(argv), time.monotonic() - start, done.returncode, done.stdout, done.stderr
    )


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


class Supervisor(ABC):
    """One supervisor running one workload in its own directories.

    ``run_dir`` is on disk and holds the configuration, the master's log and
    the node logs (``logs/``), as /etc and /var/log do in production.
    ``runtime_dir`` holds the run-time files: master PID file, sockets, node
    PID files, state files. In production they live in /run, a tmpfs, so the
    benchmark puts them on a tmpfs too when it can (see
    :func:`bench.rundirs.runtime_root`), so that creating, renaming and
    removing them costs what it costs on a real host, not an ext4 journal's
    price.
    """

    name: str = ""
    #: False for circus, which has no start-secs state: "all RUNNING" is n/a
    has_running_state: bool = True

    def __init__(
        self,
        bin_dir: Path,
        run_dir: Path,
        workload: Workload,
        settings: Settings,
        runtime_dir: Path | None = None,
    ):
        self.bin_dir = bin_dir
        self.run_dir = run_dir
        self.runtime_dir = run_dir if runtime_dir is None else runtime_dir
        self.workload = workload
        self.settings = settings
        self.log_dir = run_dir / "logs"

    def prepare(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def command_line(self, index_template: str) -> str:
        """The workload's argv as one shell-quoted line, with the index
        placeholder replaced by this supervisor's template."""
        return shlex.join(self.workload.argv).replace(INDEX, index_template)

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def master_pid(self) -> int | None:
        try:
            text = self.pid_file().read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    @abstractmethod
    def write_config(self) -> None: ...

    @abstractmethod
    def pid_file(self) -> Path: ...

    @abstractmethod
    def launch(self) -> CliResult:
        """Start the master with the daemonizing launcher."""

    @abstractmethod
    def status(self) -> StatusResult: ...

    @abstractmethod
    def stop_all(self) -> CliResult: ...

    @abstractmethod
    def start_all(self) -> CliResult: ...

    @abstractmethod
    def shutdown(self) -> CliResult:
        """Ask the master to stop its nodes and exit (may return earlier)."""

    @abstractmethod
    def node_log(self, index: int) -> Path: ...
