"""stemd.metrics writes the per-node families by hand (prometheus_client's
printer cost a scrape of 1,000 nodes ~100 ms in one turn of the master's
loop). This holds the hand-written text to what prometheus_client writes
from the same values: same families in the same order, same HELP and TYPE
lines, same samples, labels and values once parsed — with label values that
need escaping, negative and large numbers, and absent samples."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from stem_core.states import NodeState
from stemd.metrics import NodeRow, node_labels, render_fleet
from stemd.usage import TreeUsage

_NODE = ["node", "program"]


class Reference(Collector):
    """The families as stemd built them with prometheus_client before the
    hand-written printer (the FleetCollector of issue 15), from rows."""

    def __init__(self, rows: list[NodeRow], programs: list[str],
                 trees: dict[int, TreeUsage]) -> None:
        self.rows, self.programs, self.trees = rows, programs, trees

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        state = g("stemd_node_state", "1 for the node's current state, 0 for the others",
                  labels=[*_NODE, "state"])
        up = g("stemd_node_up", "1 if the node is RUNNING", labels=_NODE)
        restarts = c("stemd_node_restarts", "automatic respawns of the node (kept across a "
                     "restart of the master)", labels=_NODE)
        failures = c("stemd_node_start_failures", "starts that did not reach RUNNING "
                     "(STARTING -> BACKOFF or FATAL) since the master started", labels=_NODE)
        exit_code = g("stemd_node_last_exit_code", "exit status of the node's last process, "
                      "minus the signal number if a signal killed it (absent: none yet)",
                      labels=_NODE)
        uptime = g("stemd_node_uptime_seconds", "seconds since the node's main process "
                   "started (absent: not running)", labels=_NODE)
        cpu = c("stemd_node_cpu_seconds", "user + system CPU of the node's live process "
                "tree, its reaped children included", labels=_NODE)
        rss = g("stemd_node_resident_memory_bytes", "resident memory of the node's process "
                "tree, summed over its processes", labels=_NODE)
        memory = c("stemd_node_memory_restarts", "restarts of the node because its tree "
                   "exceeded max_rss, since the master started (absent: no limit)",
                   labels=_NODE)
        limit = g("stemd_node_max_rss_bytes", "the node's max_rss (absent: no limit)",
                  labels=_NODE)
        forced = c("stemd_node_forced_stops", "stops that had to SIGKILL the node at its stop "
                   "timeout (work in flight lost), since the master started", labels=_NODE)
        children = g("stemd_node_children", "descendants of the node's main process",
                     labels=_NODE)
        desired = dict.fromkeys(self.programs, 0)
        running = dict(desired)
        for r in self.rows:
            labels = [r.name, r.program]
            for s in NodeState:
                state.add_metric([*labels, str(s)], 1.0 if r.state is s else 0.0)
            up.add_metric(labels, 1.0 if r.state is NodeState.RUNNING else 0.0)
            restarts.add_metric(labels, r.restarts)
            failures.add_metric(labels, r.start_failures)
            if r.memory_restarts is not None:
                memory.add_metric(labels, r.memory_restarts)
            forced.add_metric(labels, r.forced_stops)
            if r.max_rss is not None:
                limit.add_metric(labels, r.max_rss)
            if r.exit_code is not None:
                exit_code.add_metric(labels, r.exit_code)
            if r.uptime is not None:
                uptime.add_metric(labels, r.uptime)
            tree = self.trees.get(r.pid) if r.pid is not None else None
            if tree is not None:
                cpu.add_metric(labels, tree.cpu_seconds)
                rss.add_metric(labels, tree.rss)
                children.add_metric(labels, tree.children)
            desired[r.program] += 1 if r.wanted else 0
            running[r.program] += 1 if r.state is NodeState.RUNNING else 0
        yield from (state, up, restarts, failures, memory, forced, exit_code, uptime, cpu, rss,
                    limit, children)
        want = g("stemd_program_desired_nodes", "nodes of the program the operator wants up",
                 labels=["program"])
        have = g("stemd_program_running_nodes", "nodes of the program that are RUNNING",
                 labels=["program"])
        for program in self.programs:
            want.add_metric([program], desired[program])
            have.add_metric([program], running[program])
        yield want
        yield have


def fleet_rows(seed: int, count: int) -> tuple[list[NodeRow], list[str], dict[int, TreeUsage]]:
    rnd = random.Random(seed)
    programs = ["worker", 'we"ird\\prog', "new\nline"]
    names = ["plain", 'quo"te', "back\\slash", "new\nline", "ünïcödé", "a{b}c=d,e", ""]
    rows, trees = [], {}
    for i in range(count):
        name = f"{rnd.choice(names)}{i}"
        program = rnd.choice(programs)
        pid = 1000 + i if rnd.random() < 0.8 else None
        limit = rnd.choice([None, 512 * 1024 * 1024, 3])
        rows.append(NodeRow(
            name, node_labels(name, program), rnd.choice(list(NodeState)),
            rnd.choice([0, 1, 7, 123456789]), rnd.choice([0, 2]),
            rnd.choice([0, 4]) if limit else rnd.choice([None, None, 1]), limit,
            rnd.choice([0, 0, 3]), rnd.choice([None, 0, 1, -9, -15, 255]),
            rnd.choice([None, 0.0, 1e-9, 12.345678901234567, 86400.5, 3e7]),
            pid, program, rnd.random() < 0.7))
        if pid is not None and rnd.random() < 0.9:
            trees[pid] = TreeUsage(rss=rnd.choice([0, 4096, 123_456_789_012]),
                                   cpu_ticks=rnd.choice([0, 1, 99, 10**9]),
                                   start_ticks=rnd.randrange(10**6),
                                   children=rnd.choice([0, 1, 64]))
    return rows, programs, trees


def parsed(text: str) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
    return [(f.name, f.type, f.documentation,
             [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)]


def test_hand_written_families_match_prometheus_client() -> None:
    for seed, count in ((1, 0), (2, 1), (3, 250), (4, 333)):
        rows, programs, trees = fleet_rows(seed, count)
        mine = b"".join(asyncio.run(render_fleet(rows, programs, trees, slice_size=100)))
        reg = CollectorRegistry(auto_describe=False)
        reg.register(Reference(rows, programs, trees))
        theirs = generate_latest(reg).decode()
        text = mine.decode()
        assert parsed(text) == parsed(theirs), seed
        # the comment lines are text, not values: they must be the same text
        assert ([x for x in text.splitlines() if x.startswith("#")]
                == [x for x in theirs.splitlines() if x.startswith("#")])
        assert text.count("\n") == theirs.count("\n")
        assert text == theirs, seed  # byte for byte: numbers spelt as the library does


def test_numbers_are_spelt_as_prometheus_client_spells_them() -> None:
    """Regression: 62914560 came out as ``62914560.0``, where the library (and
    what users grep in the textfile) writes ``6.291456e+07``."""
    from prometheus_client.utils import floatToGoString

    from stemd.metrics import _num

    rng = random.Random(7)
    values: list[float] = [0, 1, -1, 999_999, 1_000_000, 62_914_560, 2**40, -62914560.0,
                           0.25, 1.5e-9, 1e16, 3e20, 12345678.9, float("inf"),
                           float("-inf"), float("nan")]
    values += [rng.random() * 10 ** rng.randint(0, 18) for _ in range(2000)]
    values += [rng.randint(-10**12, 10**17) for _ in range(2000)]
    assert [v for v in values if _num(v) != floatToGoString(v)] == []


def test_sliced_proc_pass_reads_what_the_whole_pass_reads() -> None:
    """stemd.usage.sample_async (the scrape's pass over /proc, a few
    processes per turn of the loop) finds the same trees as sample (the
    pass of status --stats and the memory limit): three real sessions,
    one with children, and a PID that leads no session."""
    import subprocess
    import time

    from stemd.usage import sample, sample_async

    procs = [subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
             for script in ("sleep 60", "sleep 60 & sleep 60 & wait", "exec sleep 60")]
    try:
        roots = [p.pid for p in procs]

        def settled() -> bool:
            """Every session has exec'd what it runs (a process caught in
            its exec had no resident page at all) and the second has both
            its children."""
            trees = sample(roots)
            if trees.get(roots[1], TreeUsage(0, 0, 0, 0)).children < 2:
                return False
            for pid in (roots[0], roots[2]):  # sh -c "sleep 60" may exec sleep, or fork it
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "sleep" and trees[pid].children == 0:
                        return False
            return all(trees[pid].rss > 0 for pid in roots)

        deadline = time.monotonic() + 10
        while not settled():
            assert time.monotonic() < deadline, "the three sessions running their sleeps"
            time.sleep(0.01)
        wanted = [*roots, 1]  # init leads no session of ours: absent from both
        for size in (1, 7, 50, 100_000):
            whole = sample(wanted)
            sliced = asyncio.run(sample_async(wanted, slice_size=size))
            assert sorted(sliced) == sorted(whole) == sorted(roots)
            for pid in roots:  # sleeping processes: nothing moves between the passes
                assert (sliced[pid].children, sliced[pid].start_ticks) == (
                    whole[pid].children, whole[pid].start_ticks)
                # resident pages still come in just after exec (a process
                # caught mid-exec had 132 KiB, then 1.6 MiB): present, not equal
                assert sliced[pid].rss > 0 and whole[pid].rss > 0
        assert whole[roots[1]].children == 2 and whole[roots[2]].children == 0
    finally:
        for p in procs:  # each is a session and group of its own: its sleeps go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
