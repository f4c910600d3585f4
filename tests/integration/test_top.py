"""stemctl top (issue 15 §2) on a real pseudo-terminal, and piped."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from tests.fleet import STEMCTL, Fleet

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class Screen:
    """Everything a program wrote to the terminal, escapes removed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = b""

    def read(self) -> None:
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.raw += chunk

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text[-4000:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} on the screen:\n{self.text[-2000:]}")
            self.read()


def test_top_live_on_an_80_column_terminal(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", start_secs=0.2, start_retries=1,
                STEM_SCHEDULER_COMMAND="/bin/sh -c 'exit 7'")
    fleet.start_failing()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**fleet.env(), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen([STEMCTL, "--config", str(fleet.config), "top", "-i", "0.5"],
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    screen = Screen(master)
    try:
        screen.wait_for("sort: node")
        screen.wait_for("scheduler")
        assert "FATAL" in screen.text and "alpha" in screen.text
        assert "scheduler: " in screen.text and "exit status 7" in screen.text  # last error
        assert "PROGRAM" in screen.text and "1/2" not in screen.text  # worker 2/2
        assert "2/2" in screen.text and "0/1" in screen.text  # per-program totals
        assert "\x1b[?1049h" in screen.raw.decode(errors="replace")  # alternate screen
        # FATAL highlighted (white on red)
        assert re.search(rb"\x1b\[[0-9;]*41m[^\n]*scheduler", screen.raw), screen.raw[-3000:]
        os.write(master, b"s")
        screen.wait_for("sort: state")
        os.write(master, b"p")
        screen.wait_for("program scheduler (1 shown)")
        os.write(master, b"p")
        screen.wait_for("program worker (2 shown)")
        os.write(master, b"q")
        assert proc.wait(20) == 0
        screen.read()
        # rich drew within 80 columns: no run of text between two cursor
        # moves or line ends is wider
        for piece in re.split(rb"\x1b\[[0-9;?]*[A-Za-z]|[\r\n]", screen.raw):
            assert len(piece.decode(errors="replace")) <= 80, piece
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_top_piped_prints_plain_frames(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", start_secs=0.2)
    fleet.start()
    result = fleet.ctl("top", "-n", "3", "-i", "0.2", "--sort", "rss")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    frames = [f for f in result.stdout.split("\n\n") if f.strip()]
    assert len(frames) == 3, result.stdout
    for frame in frames:
        lines = frame.splitlines()
        assert lines[0].startswith("stemctl top ") and "2/2 running" in lines[0]
        assert "sort: rss desc" in lines[0]
        assert lines[1].split() == ["NODE", "STATE", "PID", "UPTIME", "RST", "CPU%", "RSS",
                                    "KIDS"]
        assert "program worker: 2/2 running" in frame
