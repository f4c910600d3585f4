"""The client's two-step deadline (stemd/client.py): a command that waits
for nodes asks for its long deadline (read from the whole configuration)
only when the master's answer is slow. A real Unix socket and a real server
thread that answers after a delay."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stem_core import protocol as P
from stemd.client import Client


@pytest.fixture
def slow_master(tmp_path: Path) -> Iterator[tuple[str, list[float]]]:
    """A socket whose server answers each request after the delay queued in
    the returned list (first delay first)."""
    path = str(tmp_path / "m.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    delays: list[float] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                deadline = time.monotonic() + (delays.pop(0) if delays else 0.0)
                while not stop.is_set() and time.monotonic() < deadline:
                    stop.wait(0.01)
                with contextlib.suppress(OSError):  # the client may have given up
                    conn.sendall(P.encode(P.ok([])))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, delays
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def test_a_quick_answer_never_asks_for_the_long_deadline(slow_master: tuple[str, list[float]]
                                                        ) -> None:
    path, _ = slow_master
    asked: list[bool] = []

    def extend() -> float:
        asked.append(True)
        return 5.0
    response = Client(path, timeout=2.0, extend=extend).call("status")
    assert response["ok"] is True
    assert asked == []


def test_a_slow_answer_is_waited_for_up_to_the_long_deadline(
        slow_master: tuple[str, list[float]]) -> None:
    path, delays = slow_master
    delays.append(0.6)
    asked: list[bool] = []

    def extend() -> float:
        asked.append(True)
        return 5.0
    began = time.monotonic()
    response = Client(path, timeout=0.2, extend=extend).call("stop")
    assert response["ok"] is True
    assert asked == [True]
    assert time.monotonic() - began >= 0.6


def test_the_long_deadline_counts_from_the_start(slow_master: tuple[str, list[float]]) -> None:
    path, delays = slow_master
    delays.append(3.0)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        Client(path, timeout=0.2, extend=lambda: 0.5).call("stop")
    waited = time.monotonic() - began
    assert 0.4 <= waited < 2.0
