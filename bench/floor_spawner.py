"""The spawn floor: the fastest a serial Python spawner can start the fleet.

Run with the interpreter stemd runs with (the benchmark derives it from
``--stemd-bin``), stdlib only, nothing imported beyond what ``subprocess``
needs. From interpreter start it does, for every node and one after the
other, what any Python supervisor must do at the least: open the node's log
file and ``subprocess.Popen`` the node in its own session with that file as
stdout and stderr. No configuration, no socket, no PID file, no state, no
bookkeeping. The benchmark times it exactly like a supervisor's launcher:
from just before it starts this script until every node is alive in
``/proc``.

With ``--procs 2`` the script forks once at start and each process spawns
half the nodes: the most a 2-core machine gets out of spawning in parallel.

The stop floor (``--stop-socket PATH --run-dir DIR``, one process): the
script also writes each node's PID file when it spawns it, opens a pidfd on
it, and listens on a Unix socket. A client (``bench/floor_client.py PATH``,
what a supervisor's control command is at the least: an interpreter, a
socket, a line) asks it to stop; it then does, with no state machine, no
asyncio and no protocol, what a supervisor that logs every transition and
keeps honest PID files must do for each node: a log line and ``SIGTERM``;
and once the node has exited, reap it through its pidfd, ``SIGKILL`` what is
left of its process group (``mixed`` kill mode), remove its PID file and log
a line. It answers once every node is reaped. The benchmark times it like a
stop command: from just before the client starts until no node is left.

Each spawning process writes ``spawned`` on stdout when its loop is done.
It stays alive, the parent of its nodes, until SIGTERM; then it TERMs its
nodes (and its forked sibling, which does the same), reaps them and exits.

Usage::

    python floor_spawner.py --log-dir DIR --cwd DIR --nodes N [--procs P] \\
        [--stop-socket PATH --run-dir DIR] \\
        -- ARGV...   # ARGV with @INDEX@ standing for the node's 1-based index
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys

INDEX = "@INDEX@"


class Stop(Exception):
    """SIGTERM arrived."""


def _on_term(signum: int, frame: object) -> None:
    raise Stop


def spawn(indices: range, argv: list[str], log_dir: str, cwd: str,
          children: list[subprocess.Popen[bytes]]) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    for i in indices:
        fd = os.open(os.path.join(log_dir, f"worker{i}.log"), flags, 0o640)
        try:
            children.append(
                subprocess.Popen(
                    [word.replace(INDEX, str(i)) for word in argv],
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    close_fds=True,
                    start_new_session=True,
                )
            )
        finally:
            os.close(fd)


def stop(children: list[subprocess.Popen[bytes]], sibling: int | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    if sibling is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sibling, signal.SIGTERM)
    for child in children:
        child.wait()
    if sibling is not None:
        os.waitpid(sibling, 0)


def write_pid_files(children: list[subprocess.Popen[bytes]], run_dir: str) -> list[str]:
    """Each node's PID file, as a supervisor writes it after the spawn (not
    timed: the stop floor is measured, not this)."""
    paths = []
    for i, child in enumerate(children, 1):
        path = os.path.join(run_dir, f"worker{i}.pid")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, b"%d\n" % child.pid)
        finally:
            os.close(fd)
        paths.append(path)
    return paths


def serve_stop(children: list[subprocess.Popen[bytes]], pid_files: list[str],
               socket_path: str, log_dir: str) -> None:
    """Wait for the client's "stop", then stop every node honestly (module
    docstring) and answer once all are reaped."""
    import logging
    import select
    import socket

    # the logging HOWTO's "Optimization" knobs, as stemd sets them
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    log = logging.getLogger("floor")
    handler = logging.FileHandler(os.path.join(log_dir, "floor-master.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    epoll = select.epoll()
    pidfds: dict[int, int] = {}
    for i, child in enumerate(children):
        fd = os.pidfd_open(child.pid)
        pidfds[fd] = i
        epoll.register(fd, select.EPOLLIN)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen()
    os.write(sys.stdout.fileno(), b"listening\n")
    conn, _ = server.accept()
    if not conn.recv(64).startswith(b"stop"):
        return
    for i, child in enumerate(children, 1):
        log.info("worker%d: RUNNING -> STOPPING (sending SIGTERM to pid %d)", i, child.pid)
        os.kill(child.pid, signal.SIGTERM)
    while pidfds:
        for fd, _events in epoll.poll():
            i = pidfds.pop(fd)
            epoll.unregister(fd)
            child = children[i]
            os.waitid(os.P_PIDFD, fd, os.WEXITED)
            os.close(fd)
            child.returncode = 0  # reaped: Popen must not wait for it again
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # what is left of its group
            os.unlink(pid_files[i])
            log.info("worker%d: STOPPING -> STOPPED (pid %d exited)", i + 1, child.pid)
    conn.sendall(b"stopped\n")
    conn.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--cwd", default="/")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--procs", type=int, default=1, choices=(1, 2))
    p.add_argument("--stop-socket")
    p.add_argument("--run-dir")
    p.add_argument("argv", nargs="+")
    a = p.parse_args(argv)
    children: list[subprocess.Popen[bytes]] = []
    sibling: int | None = None
    first, last = 1, a.nodes
    try:
        if a.procs == 2:
            half = (a.nodes + 1) // 2
            pid = os.fork()
            if pid == 0:
                first = half + 1  # the forked process: the second half
            else:
                sibling, last = pid, half
        spawn(range(first, last + 1), a.argv, a.log_dir, a.cwd, children)
        # "done spawning", as stemd's launcher returns once its fleet is
        # spawned: the benchmark polls /proc only after this (one line per
        # spawning process), so the poller does not compete with the loop.
        os.write(sys.stdout.fileno(), b"spawned\n")
        if a.stop_socket and a.run_dir and a.procs == 1:
            serve_stop(children, write_pid_files(children, a.run_dir), a.stop_socket,
                       a.log_dir)
        while True:
            signal.pause()
    except Stop:
        pass
    stop(children, sibling)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
