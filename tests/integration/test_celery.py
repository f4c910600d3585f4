"""A real Celery fleet under stemd loses no task (SPEC §2.1 kill mode, issue 10).

Three real Celery workers (prefork pool, two slots each) on a real Redis
broker, driven only through ``stemd``/``stemctl``. Six tasks run at once,
two per node, and each scenario checks that every task that started also
finished: Celery's warm shutdown on the main process's SIGTERM lets the pool
finish its tasks, which signalling the whole process group would kill
(``WorkerLostError: ... signal 15``). The rig is in tests/celery_rig.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import Fleet, pid_alive, wait_until

from tests.celery_rig import (
    NO_REDIS,
    NODES,
    REDIS_SERVER,
    CeleryFleet,
    RedisServer,
    main_processes,
)

pytest.importorskip("celery", reason="celery not installed: pip install -e '.[dev]'")
pytest.importorskip("redis", reason="redis-py not installed: pip install -e '.[dev]'")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS),
]

TASKS = 6      # three nodes x two pool slots: every slot busy
SECONDS = 2.5  # how long each task still runs once all six are running


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers(fleet: Fleet, redis_server: RedisServer) -> Iterator[CeleryFleet]:
    rig = CeleryFleet(fleet, redis_server.fresh_db())
    try:
        yield rig
    finally:
        rig.close()  # the fleet fixture then kills every marked process


def started_fleet(workers: CeleryFleet, **settings: object) -> dict[str, int | None]:
    workers.write(**settings)
    workers.fleet.start()
    workers.wait_ready(str(settings.get("nodes", " ".join(NODES))).split())
    return workers.pids()


def test_stop_lets_running_tasks_finish(workers: CeleryFleet) -> None:
    started_fleet(workers)
    running = workers.in_flight(TASKS, SECONDS)
    assert set(running.values()) == set(NODES), running  # two on each node
    t0 = time.monotonic()
    result = workers.fleet.ctl("stop")
    took = time.monotonic() - t0
    assert result.returncode == 0, result.stdout + result.stderr
    # the stop returned only once the workers were gone, so nothing can
    # finish later: every task that started is done now
    workers.assert_no_loss()
    assert set(workers.done()) == {str(n) for n in range(1, TASKS + 1)}
    assert workers.fleet.node_pids() == [], "a worker or pool child outlived the stop"
    assert took < 25, f"stop took {took:.1f}s: the warm shutdown should not need the timeout"


def test_rolling_restart_loses_no_task_and_serves_again(workers: CeleryFleet) -> None:
    before = started_fleet(workers)
    # one node at a time: tasks on later nodes run longer, so each node is
    # still busy when its turn comes (a loaded machine only makes this weaker)
    workers.in_flight(TASKS, {"alpha": SECONDS, "beta": SECONDS + 2, "gamma": SECONDS + 4})
    result = workers.fleet.ctl("restart", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    workers.wait_no_loss()
    after = workers.pids()
    assert all(after[n] != before[n] and after[n] is not None for n in NODES), (before, after)
    workers.fleet.wait_state("RUNNING")
    workers.serves()


def test_reload_restarts_only_the_changed_node_warm(workers: CeleryFleet) -> None:
    before = started_fleet(workers)
    workers.in_flight(TASKS, SECONDS)
    workers.write(opts="--concurrency=2 --concurrency:beta=3")  # only beta's argv changes
    result = workers.fleet.ctl("reload", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    workers.wait_no_loss()
    after = workers.pids()
    assert after["alpha"] == before["alpha"] and after["gamma"] == before["gamma"], \
        (before, after)
    assert after["beta"] not in (None, before["beta"]), (before, after)
    beta = psutil.Process(after["beta"])
    assert "--concurrency=3" in beta.cmdline(), beta.cmdline()
    workers.fleet.wait_state("RUNNING")
    workers.serves()


def test_master_sigterm_lets_running_tasks_finish(workers: CeleryFleet) -> None:
    started_fleet(workers)
    workers.in_flight(TASKS, SECONDS)
    master = workers.fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGTERM)
    wait_until(lambda: not pid_alive(master), 60, what="the master to stop every node and exit")
    workers.assert_no_loss()
    assert len(workers.done()) == TASKS
    assert workers.fleet.node_pids() == [], "a worker or pool child outlived the master"


def test_master_kill_9_then_adoption_keeps_workers_and_tasks(workers: CeleryFleet) -> None:
    before = started_fleet(workers)
    workers.in_flight(TASKS, SECONDS)
    master = workers.fleet.master_pid()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 10, what="the master gone")
    workers.fleet.start()  # a new master adopts the workers the dead one left
    assert workers.fleet.master_pid() not in (None, master)
    assert workers.pids() == before
    assert sorted(main_processes(workers.fleet).values()) == sorted(NODES), \
        "a duplicate worker was started"
    assert set(main_processes(workers.fleet)) == set(before.values())
    workers.wait_no_loss()
    workers.serves()


def test_kill_9_of_a_worker_respawns_it(workers: CeleryFleet) -> None:
    before = started_fleet(workers)
    running = workers.in_flight(TASKS, SECONDS)
    os.kill(before["beta"], signal.SIGKILL)

    def respawned() -> bool:
        info = workers.fleet.status("beta")["beta"]
        return info["state"] == "RUNNING" and info["pid"] not in (None, before["beta"])

    wait_until(respawned, 30, interval=0.1, what="beta respawned and RUNNING")
    assert {n: p for n, p in workers.pids().items() if n != "beta"} == \
        {n: p for n, p in before.items() if n != "beta"}
    # A SIGKILLed main process takes its pool with it (its leftover group is
    # killed before the respawn, SPEC §2.1): beta's two tasks are lost, and
    # only those. This is also the proof that the rig sees a lost task.
    others = {n for n, node in running.items() if node != "beta"}
    deadline = time.monotonic() + 30
    while others - set(workers.done()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers.lost() == {n: node for n, node in running.items() if node == "beta"}, \
        workers.logs()
    with pytest.raises(AssertionError, match="lost tasks"):
        workers.assert_no_loss()
    wait_until(lambda: workers.inspect_ping() == set(NODES), 60, interval=0.5,
               what="`celery inspect ping` answered by alpha, beta and gamma")
    workers.serves()
