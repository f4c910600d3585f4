"""Prometheus metrics: a collector that reads the master at scrape time, and
a tiny read-only HTTP endpoint on the master's own event loop.

Why ``prometheus_client`` (a runtime dependency): the exposition format has
escaping, type and ``_total`` rules that a hand-written printer gets subtly
wrong, and the library is the reference implementation that Prometheus'
own tools are tested against. It is imported only when metrics are asked
for (``stemctl metrics`` or ``STEMD_METRICS_LISTEN``): a master without
them pays nothing.

Nothing is collected between scrapes. A scrape (``GET /metrics`` or the
``metrics`` control command that ``stemctl metrics`` sends) builds the
families from the node table and one pass over ``/proc`` (stemd.usage),
then forgets them: no background thread, no timer, no wake-up while nobody
scrapes.

The endpoint can serve nothing but ``GET``/``HEAD /metrics``: it parses a
request line and headers (at most :data:`MAX_HEAD` bytes, within
:data:`TIMEOUT` seconds), answers, and closes. Any other path is 404, any
other method 405, anything malformed 400. It has no route to a command:
control stays on the Unix socket, whose permissions say who may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector

from stem_core.states import NodeState
from stemd.usage import sample

if TYPE_CHECKING:
    from stemd.master import Master

S = NodeState
#: largest request head (request line and headers) the endpoint reads
MAX_HEAD = 8192
#: seconds a scraper has to send its request, and to read the answer
TIMEOUT = 10.0
#: connections served at once; more are closed at once (a scraper retries)
MAX_CLIENTS = 8

_NODE = ["node", "program"]


class FleetCollector:
    """Reads the master's node table when collected (at scrape time)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration: the families are dynamic

    def collect(self) -> Iterator[Metric]:
        m = self.master
        nodes = list(m.nodes.values())
        trees = sample(n.pid for n in nodes if n.pid is not None)
        state = GaugeMetricFamily("stemd_node_state", "1 for the node's current state, 0 for "
                                  "the others", labels=[*_NODE, "state"])
        up = GaugeMetricFamily("stemd_node_up", "1 if the node is RUNNING", labels=_NODE)
        restarts = CounterMetricFamily("stemd_node_restarts", "automatic respawns of the node "
                                       "(kept across a restart of the master)", labels=_NODE)
        failures = CounterMetricFamily("stemd_node_start_failures", "starts that did not "
                                       "reach RUNNING (STARTING -> BACKOFF or FATAL) since "
                                       "the master started", labels=_NODE)
        exit_code = GaugeMetricFamily("stemd_node_last_exit_code", "exit status of the "
                                      "node's last process, minus the signal number if a "
                                      "signal killed it (absent: none yet)", labels=_NODE)
        uptime = GaugeMetricFamily("stemd_node_uptime_seconds", "seconds since the node's "
                                   "main process started (absent: not running)", labels=_NODE)
        cpu = CounterMetricFamily("stemd_node_cpu_seconds", "user + system CPU of the node's "
                                  "live process tree, its reaped children included",
                                  labels=_NODE)
        rss = GaugeMetricFamily("stemd_node_resident_memory_bytes", "resident memory of the "
                                "node's process tree, summed over its processes",
                                labels=_NODE)
        memory = CounterMetricFamily("stemd_node_memory_restarts", "restarts of the node "
                                     "because its tree exceeded max_rss, since the master "
                                     "started (absent: no limit)", labels=_NODE)
        limit = GaugeMetricFamily("stemd_node_max_rss_bytes", "the node's max_rss (absent: "
                                  "no limit)", labels=_NODE)
        limits = {p.name: p.max_rss for p in m.config.programs if p.max_rss}
        memory_restarts = m.memory.restarts if hasattr(m, "memory") else {}
        children = GaugeMetricFamily("stemd_node_children", "descendants of the node's main "
                                     "process", labels=_NODE)
        desired: dict[str, int] = {p.name: 0 for p in m.config.programs}
        running: dict[str, int] = dict(desired)
        now = None
        for n in nodes:
            labels = [n.name, n.spec.program]
            for s in S:
                state.add_metric([*labels, str(s)], 1.0 if n.state is s else 0.0)
            up.add_metric(labels, 1.0 if n.state is S.RUNNING else 0.0)
            restarts.add_metric(labels, n.restarts)
            failures.add_metric(labels, m.transitions.start_failures.get(n.name, 0))
            if n.spec.program in limits or n.name in memory_restarts:
                # only where a limit applies: 1,000 zeros cost a scrape ~6 %
                memory.add_metric(labels, memory_restarts.get(n.name, 0))
            if n.spec.program in limits:
                limit.add_metric(labels, limits[n.spec.program])
            if n.exit_status is not None and n.exit_status.as_int is not None:
                exit_code.add_metric(labels, n.exit_status.as_int)
            if n.pid is not None and n.started_at is not None:
                now = n.clock.time() if now is None else now
                uptime.add_metric(labels, max(0.0, now - n.started_at))
            tree = trees.get(n.pid) if n.pid is not None else None
            if tree is not None:
                cpu.add_metric(labels, tree.cpu_seconds)
                rss.add_metric(labels, tree.rss)
                children.add_metric(labels, tree.children)
            desired[n.spec.program] = desired.get(n.spec.program, 0) + (1 if n.wanted else 0)
            running[n.spec.program] = running.get(n.spec.program, 0) + (
                1 if n.state is S.RUNNING else 0)
        yield from (state, up, restarts, failures, memory, exit_code, uptime, cpu, rss, limit,
                    children)
        want = GaugeMetricFamily("stemd_program_desired_nodes", "nodes of the program the "
                                 "operator wants up", labels=["program"])
        have = GaugeMetricFamily("stemd_program_running_nodes", "nodes of the program that "
                                 "are RUNNING", labels=["program"])
        for program in desired:
            want.add_metric([program], desired[program])
            have.add_metric([program], running[program])
        yield want
        yield have
        hooks = getattr(m, "hooks", None)
        if hooks is not None:
            for name, value, text in (
                    ("started", hooks.started, "state-change hooks started"),
                    ("failed", hooks.failed, "hooks that could not start, exited non-zero or "
                     "were killed"),
                    ("timed_out", hooks.timed_out, "hooks killed at their timeout"),
                    ("coalesced", hooks.coalesced, "hook events replaced by a newer event of "
                     "the same node while waiting for a free slot")):
                yield CounterMetricFamily(f"stemd_hooks_{name}", text, value=value)
            yield GaugeMetricFamily("stemd_hooks_running", "hooks running now",
                                    value=len(hooks.running))
            yield GaugeMetricFamily("stemd_hooks_waiting", "hook events waiting for a slot",
                                    value=len(hooks.waiting))
        from stemd import __version__

        info = GaugeMetricFamily("stemd_build_info", "always 1; the version of the running "
                                 "master", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily("stemd_config_last_reload_successful", "1 if the last "
                                "configuration load (the start, or a reload) succeeded",
                                value=1.0 if m.reloads.ok else 0.0)
        yield GaugeMetricFamily("stemd_config_last_reload_timestamp_seconds", "when the "
                                "configuration was last loaded (or a reload was refused), "
                                "Unix time", value=m.reloads.at)


def registry(master: Master) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(master))
    # the master's own CPU, memory and descriptors, under stemd_master_
    # (not process_: node_exporter's textfile collector would clash with
    # its own process_ metrics)
    ProcessCollector(namespace="stemd_master", pid=lambda: os.getpid(), registry=reg)
    return reg


def exposition(master: Master) -> bytes:
    """The text format, once (no state is kept between two calls)."""
    return generate_latest(registry(master))


class MetricsServer:
    """``GET /metrics`` on the master's loop; nothing else."""

    def __init__(self, master: Master, log: logging.Logger) -> None:
        self.master = master
        self.log = log
        self._server: asyncio.Server | None = None
        self._clients = 0

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(
            self._serve, host, int(port), limit=MAX_HEAD, reuse_address=True)
        self.log.info("serving metrics on http://%s/metrics (read-only)", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            await asyncio.wait_for(self._answer(reader, writer), TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        except Exception:  # a scrape must never take the master down
            self.log.exception("metrics: error while answering a scrape")
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/1."):
            writer.write(_response(400, b"bad request\n"))
        elif words[1].split(b"?", 1)[0] != b"/metrics":
            writer.write(_response(404, b"not found: only /metrics is served\n"))
        elif words[0] not in (b"GET", b"HEAD"):
            writer.write(_response(405, b"method not allowed: metrics are read-only\n",
                                   extra=b"Allow: GET, HEAD\r\n"))
        else:
            body = exposition(self.master)
            writer.write(_response(200, body, CONTENT_TYPE_PLAIN_0_0_4.encode(),
                                   head_only=words[0] == b"HEAD"))
        await writer.drain()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _response(code: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
              extra: bytes = b"", head_only: bool = False) -> bytes:
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\nCache-Control: no-store\r\n%s\r\n"
            % (code, _REASONS[code], content_type, len(body), extra))
    return head if head_only else head + body
