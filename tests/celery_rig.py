"""A real Celery fleet for the tests: a throwaway Redis broker and a tiny app.

stemd exists to run Celery workers, so the suite runs real ones (prefork pool,
Redis broker) and counts tasks: a task is *lost* when it started and never
finished. Each task records ``started`` and ``done`` in Redis hashes (task
number -> worker node name), written by the pool child that runs it, so the
count survives the worker, the master and the test's own view of them.

Why the tasks wait for each other: a task's clock starts only once the whole
batch is running (``together``). On a loaded machine the three workers come up
seconds apart; without the wait the first worker's tasks could be finished
before the test acts, and a stop that kills tasks would go unnoticed.

Why ``task_acks_late`` with ``worker_prefetch_multiplier=1``: each worker then
holds at most as many messages as it has pool slots, so six tasks spread two
per node instead of racing to whichever worker polls first. The visibility
timeout stays at Redis's default hour: a killed task is never redelivered
within a test, so a loss cannot be hidden by a second run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from tests.fleet import Fleet, wait_until

REDIS_SERVER = shutil.which("redis-server")
NO_REDIS = "redis-server not installed: apt-get install redis-server"

NODES = ("alpha", "beta", "gamma")

Seconds = float | dict[str, float]

PROJ = '''\
"""The Celery app the stemd tests run (written by tests/celery_rig.py)."""

import time

import redis
from celery import Celery

URL = {url!r}

app = Celery("proj", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)
_store = None


def store():
    global _store
    if _store is None:
        _store = redis.Redis.from_url(URL)
    return _store


@app.task(bind=True, name="proj.slow")
def slow(self, n, seconds, together=0):
    node = self.request.hostname.split("@")[0]
    r = store()
    r.hset("started", n, node)
    if isinstance(seconds, dict):  # per node: tasks on later nodes run longer
        seconds = seconds.get(node, 0)
    deadline = time.monotonic() + 120
    while together and r.hlen("started") < together and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds)
    r.hset("done", n, node)
    return n
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One real ``redis-server`` on a free loopback port, data in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_db = 0

    def start(self, timeout: float = 20) -> None:
        import redis

        assert REDIS_SERVER is not None
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.root), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--logfile", str(self.root / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def pong() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.root / "redis.log"
                raise AssertionError(f"redis-server exited {self.proc.returncode}: "
                                     + (log.read_text()[-2000:] if log.exists() else ""))
            try:
                return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(pong, timeout, interval=0.05, what=f"redis-server PING on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def fresh_db(self) -> str:
        """A URL of an emptied database of its own: one per test, so a
        test never sees another's queue or records."""
        import redis

        db = self._next_db % 16
        self._next_db += 1
        redis.Redis(port=self.port, db=db).flushdb()
        return f"redis://127.0.0.1:{self.port}/{db}"


class CeleryFleet:
    """A stemd fleet of Celery workers and the tasks sent to it."""

    def __init__(self, fleet: Fleet, url: str) -> None:
        import redis
        from celery import Celery

        self.fleet = fleet
        self.url = url
        self.app_dir = fleet.root
        (self.app_dir / "proj.py").write_text(PROJ.format(url=url))
        self.store = redis.Redis.from_url(url, decode_responses=True)
        self.client = Celery("rig", broker=url)

    def write(self, **settings: Any) -> None:
        """The fleet's env file; the worker command is the one a Celery
        user writes (stemd does not add ``-n``: the command names the node)."""
        self.fleet.exports["PYTHONPATH"] = str(self.app_dir)
        base: dict[str, Any] = {
            "nodes": " ".join(NODES),
            "command": f"{sys.executable} -m celery -A proj worker --pool=prefork -n %n@%h "
                       "--loglevel=INFO --without-mingle --without-gossip --without-heartbeat",
            "opts": "--concurrency=2",
            "chdir": str(self.app_dir),
            "stop_timeout": 30,
            "start_secs": 1,
        }
        base.update(settings)
        self.fleet.write(**base)

    def close(self) -> None:
        self.client.close()
        self.store.close()

    # ------------------------------------------------------------ workers
    def pids(self) -> dict[str, int | None]:
        return {name: info["pid"] for name, info in self.fleet.status().items()}

    def wait_ready(self, names: Iterable[str] = NODES, timeout: float = 60) -> None:
        """Until every named worker answers a broadcast ping: consuming, not
        merely spawned (a RUNNING node may still be importing Celery)."""
        want = set(names)

        def answered() -> bool:
            replies = self.client.control.ping(timeout=0.5) or []
            seen = {host.split("@")[0] for reply in replies for host in reply}
            return want <= seen

        wait_until(answered, timeout, interval=0.1, what=f"workers {sorted(want)} to answer ping")

    def inspect_ping(self, timeout: float = 60) -> set[str]:
        """The node names that answer ``celery -A proj inspect ping`` (the
        operator's own check), run as a separate process."""
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "proj", "inspect", "ping", "--timeout", "5"],
            cwd=self.app_dir, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(self.app_dir)}, stdin=subprocess.DEVNULL)
        return set(re.findall(r"->\s+([A-Za-z0-9_.-]+)@\S+:\s+OK", result.stdout))

    # -------------------------------------------------------------- tasks
    def send(self, numbers: Iterable[int], seconds: Seconds, together: int = 0) -> None:
        for n in numbers:
            self.client.send_task("proj.slow", args=[n, seconds, together])

    def started(self) -> dict[str, str]:
        return self.store.hgetall("started")

    def done(self) -> dict[str, str]:
        return self.store.hgetall("done")

    def lost(self) -> dict[str, str]:
        """Tasks that started and did not finish: number -> node."""
        done = self.done()
        return {n: node for n, node in self.started().items() if n not in done}

    def in_flight(self, count: int, seconds: Seconds = 2.5,
                  timeout: float = 60) -> dict[str, str]:
        """Send ``count`` tasks and return once all of them run at once
        (number -> node), none finished yet. ``seconds`` is how long each
        still runs from then on, or that per node name."""
        self.send(range(1, count + 1), seconds, together=count)
        started = wait_until(lambda: len(s := self.started()) >= count and s, timeout,
                             interval=0.02, what=f"{count} tasks started")
        assert not self.done(), "a task finished before the test acted: the rig is too slow"
        return started

    def wait_no_loss(self, timeout: float = 20) -> None:
        """Wait until every started task is done; fail naming the lost ones."""
        deadline = time.monotonic() + timeout
        while self.lost() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assert_no_loss()

    def assert_no_loss(self) -> None:
        lost = self.lost()
        assert not lost, f"lost tasks (number -> node): {lost}\n{self.logs()}"

    def serves(self, n: int = 100, timeout: float = 60) -> None:
        """A new task completes: the fleet serves again."""
        self.send([n], 0.1)
        wait_until(lambda: str(n) in self.done(), timeout, interval=0.05,
                   what=f"new task {n} done")

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for path in sorted(self.fleet.log_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def main_processes(fleet: Fleet) -> dict[int, str]:
    """Live processes of the fleet whose parent is not one of its own: the
    nodes' main processes (pid -> node). Duplicates show as extra entries."""
    pids = set(fleet.node_pids())
    mains = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.ppid() not in pids:
                mains[pid] = proc.environ().get("STEMD_NODE", "?")
    return mains


def terminate(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
