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

Each spawning process writes ``spawned`` on stdout when its loop is done.
It stays alive, the parent of its nodes, until SIGTERM; then it TERMs its
nodes (and its forked sibling, which does the same), reaps them and exits.

Usage::

    python floor_spawner.py --log-dir DIR --cwd DIR --nodes N [--procs P] \\
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


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--cwd", default="/")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--procs", type=int, default=1, choices=(1, 2))
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
