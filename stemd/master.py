"""The master: the node table, the operator's commands, reload and shutdown,
on one event loop.

Nothing here polls. The loop sleeps in ``epoll_wait`` until a pidfd becomes
readable (a node exited), a signal arrives (through our signal pipe), a
client connects, or a node's single timer is due. With nothing happening the
master makes no wake-ups at all.

The control handlers reach the master only through its command surface:
:meth:`Master.select`, :meth:`~Master.start`, :meth:`~Master.stop`,
:meth:`~Master.restart`, :meth:`~Master.kill`, :meth:`~Master.reload`,
:meth:`~Master.request_shutdown` and :meth:`~Master.snapshot`.

Every command runs as a tracked *operation*. A shutdown marks every node
closed (no start of any kind after that), cancels every operation still
queued or waiting (starts, restarts, a reload) and only then stops the
nodes, so that once the master reports "stopped" none of its nodes runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, TypeVar

from stem_core import __version__
from stem_core.accounts import Account, AccountError, resolve_account
from stem_core.config import load_config
from stem_core.errors import ConfigError, StemError
from stem_core.exits import ExitStatus
from stem_core.model import Config, ConfigDiff, NodeSpec, diff, spec_fingerprint
from stem_core.pidfile import KILL_GRACE, remove_pidfile, write_pidfile
from stem_core.statefile import state_path
from stem_core.states import ALIVE, NodeState
from stem_core.wording import LISTED_IN_FULL, abridged
from stemd import logsetup
from stemd.adoption import Adoption, StartupError
from stemd.checks import create_directories, needed_directories
from stemd.control import ControlServer, socket_gid
from stemd.daemon import MasterLock, Readiness
from stemd.hooks import HookRunner
from stemd.memlimit import MemoryLimits
from stemd.node import Node, SpawnError
from stemd.notify import Notifier
from stemd.observe import ReloadRecord, Transitions
from stemd.reaper import Reaper, kill_leftovers, session_leftovers, wait_gone
from stemd.runwatch import RunDirWatch
from stemd.signals import SignalPipe
from stemd.snapshot import snapshot as build_snapshot
from stemd.spawn import spawn_node
from stemd.statekeeper import StateKeeper
from stemd.usage import CpuTracker

S = NodeState
T = TypeVar("T")

#: states in which a start has settled: it made it, or gave up
START_SETTLED = frozenset({S.RUNNING, S.FATAL, S.EXITED, S.STOPPED})
#: seconds an exiting master gives the requests it is answering to write
#: their answers (a stop that a shutdown overtook: its nodes are down)
ANSWER_SETTLE = 2.0

#: states whose process a command's stop ends (what it reports as forced)
STOPPED_BY_COMMAND = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
#: [stemd] settings a reload applies: the log level, and the hook settings,
#: which the programs inherit and the hooks read from them (issue 15)
RELOADABLE = frozenset({"log_level", "on_state_change", "on_state_change_states",
                        "hook_timeout"})


class ShuttingDown(StemError):
    """A command that a shutdown refused or interrupted."""


class ReloadFailed(StemError):
    """The new configuration was applied, but nodes it started or restarted
    did not reach RUNNING."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class RestartHalted(StemError):
    """A rolling restart stopped at a node that did not come back."""

    def __init__(self, message: str, nodes: list[Node]) -> None:
        super().__init__(message)
        self.nodes = nodes


class _Ops:
    """The real process operations behind :class:`stemd.node.ProcessOps`."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._accounts: dict[tuple[str | None, str | None], Account] = {}

    def spawn(self, node: Node) -> int:
        m = self.master
        if m.shutting_down:  # node.closed already prevents it; never spawn late
            raise SpawnError("the master is shutting down")
        try:
            popen = self._spawn(node)
        except SpawnError as exc:
            # A directory removed while we run (a careless cleanup of
            # /var/log) must not turn into a fleet of FATAL nodes. Only a
            # missing file is worth a look at the directories: a shortage of
            # descriptors (EMFILE) must not cost a directory scan per spawn.
            if exc.errno != errno.ENOENT or not self._recreate_directories():
                raise
            popen = self._spawn(node)
        try:
            self._write_pidfile(node.spec.pid_file, popen.pid)
        except OSError as exc:
            # A node without a PID file cannot be found by a later master or
            # by the init script's stop: refuse to run it, and say why.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise SpawnError(f"cannot write PID file {node.spec.pid_file}: "
                             f"{exc.strerror}") from None
        m.reaper.watch(popen.pid, popen, m.exit_callback(node))
        return popen.pid

    def _write_pidfile(self, path: str, pid: int) -> None:
        try:
            write_pidfile(path, pid)
        except FileNotFoundError:
            if not self._recreate_directories():
                raise
            write_pidfile(path, pid)

    def _spawn(self, node: Node) -> subprocess.Popen[bytes]:
        m = self.master
        return spawn_node(node.spec, m.base_env, m.config.master.force_root,
                          self._account(node.spec.run_as.user, node.spec.run_as.group))

    def _account(self, user: str | None, group: str | None) -> Account:
        """The account, looked up once per loop turn: a burst of spawns (a
        fleet's start, a storm's respawns) reads the user and group databases
        once per account instead of once per node, and an edit of
        /etc/passwd is seen from the next turn on."""
        key = (user, group)
        found = self._accounts.get(key)
        if found is None:
            try:
                found = resolve_account(user, group)
            except AccountError as exc:
                raise SpawnError(str(exc)) from None  # a failed start, as the node counts it
            if not self._accounts:
                self.master.loop.call_soon(self._accounts.clear)
            self._accounts[key] = found
        return found

    def _recreate_directories(self) -> bool:
        """Create missing directories (STEMD_CREATE_DIRS=1); True if any was."""
        m = self.master
        if not m.config.master.create_dirs:
            return False
        missing = [d.path for d in needed_directories(m.config) if not os.path.isdir(d.path)]
        if not missing:
            return False
        for problem in create_directories(m.config):
            m.log.error("%s", problem)
        logsetup.reopen(m.log)  # its directory may have been among them
        m.log.warning("recreated missing directories: %s", ", ".join(missing))
        return True

    def signal(self, node: Node, sig: int, group: bool) -> None:
        if node.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(node.pid, sig)
            else:
                os.kill(node.pid, sig)

    def forget(self, node: Node, pid: int | None) -> None:
        remove_pidfile(node.spec.pid_file, pid)


class Master:
    def __init__(self, config: Config, *, environ: Mapping[str, str],
                 overrides: Mapping[str, str], log: logging.Logger,
                 readiness: Readiness, notifier: Notifier, foreground: bool) -> None:
        self.config = config
        self.environ = dict(environ)  # as at start, for reloads
        self.overrides = dict(overrides)
        self.base_env = {k: v for k, v in environ.items() if not k.startswith("STEMD_")}
        # Marks every node as this master's (its PID file names the
        # instance), so a later master can find a node whose PID file is
        # missing without mistaking another instance's node for it.
        self.base_env["STEMD_INSTANCE"] = config.master.pid_file
        self.log = log
        self.readiness = readiness
        self.notifier = notifier
        self.foreground = foreground
        self.nodes: dict[str, Node] = {}
        self.removed: dict[str, Node] = {}  # dropped by a reload, still stopping
        self.shutting_down = False
        self.loop: asyncio.AbstractEventLoop
        self.reaper: Reaper
        self.signals: SignalPipe
        self.server: ControlServer
        self.ops = _Ops(self)
        self._done: asyncio.Future[int]
        self._reload_lock: asyncio.Lock
        # One node of the fleet down at a time for every rolling restart,
        # whichever client asked for it.
        self._rolling_lock: asyncio.Lock
        self._operations: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.runwatch: RunDirWatch | None = None
        self._lock: MasterLock
        self.state: StateKeeper  # the state file
        self.adoption = Adoption(self)
        # observe (issue 15): CPU% since the previous status --stats; who
        # watches transitions (metrics, hooks); the last reload's outcome
        self.cpu = CpuTracker()
        self.transitions = Transitions()
        self.reloads = ReloadRecord()
        self.metrics_server: Any = None  # stemd.metrics.MetricsServer when listening
        self.hooks: HookRunner
        self.memory: MemoryLimits
        # stemctl scale: program -> its node count in the file, while the
        # running count differs (until the next reload or restart)
        self.scaled: dict[str, int] = {}

    # ---------------------------------------------------------------- life

    def run(self, lock: MasterLock) -> int:
        try:
            return asyncio.run(self._main(lock))
        finally:
            lock.release()  # also after an unexpected error (idempotent)

    async def _main(self, lock: MasterLock) -> int:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        self._reload_lock = asyncio.Lock()
        self._rolling_lock = asyncio.Lock()
        self.reaper = Reaper(self.loop, self.log)
        self.state = StateKeeper(state_path(self.config.master.pid_file), self.loop,
                                 self._fleet, self.log)
        self.hooks = HookRunner(self, self.log)
        self.transitions.observers.append(self.hooks.observe)
        self.memory = MemoryLimits(self, self.log)
        if lock.stale:
            self.log.warning("replaced stale master PID file %s (%s)", lock.path, lock.stale)
        from stemd import handlers

        try:
            self.server = ControlServer(self.config.master.socket,
                                        socket_gid(self.config.master.socket_group),
                                        handlers.table(self), self.log)
            await self.server.start()
        except (OSError, StemError) as exc:
            reason = f"cannot bind control socket {self.config.master.socket}: {exc}"
            self.log.error("%s", reason)
            # Remove the PID file before the verdict: the operator's command
            # must find nothing left behind the moment it exits.
            lock.release()
            self.readiness.fail(reason)
            return 1
        self._lock = lock
        self._install_signals()
        self._watch_own_files()
        await self._start_metrics()
        try:
            adopted = self.adoption.take_over()
        except StartupError as exc:
            self.log.error("%s", exc)
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.server.close()
            lock.release()
            self.readiness.fail(str(exc))
            return 1
        # By priority: each group RUNNING (or given up) before the next. Not
        # an operation: a shutdown closes the nodes, which ends it.
        boot = [n for n in self.nodes.values() if n.state is S.STOPPED and n.wanted]
        self.state.save()
        self.memory.update()  # a timer only if some program sets max_rss
        # What exists now (configuration, node table) lives as long as the
        # master: keep it out of the cyclic collector's scans. At 1,000 nodes
        # a full collection walked ~100,000 objects, and a stop's or a
        # storm's allocations trigger several (~8% of the master's CPU during
        # a stop-all, profiled with perf; ~1.7% frozen).
        gc.freeze()
        booting = self.loop.create_task(self._start_in_order(boot, locked=False))
        self._tasks.add(booting)
        booting.add_done_callback(self._tasks.discard)
        await self._await_readiness(adopted, boot, booting)
        code = await self._done
        await self.server.settle(ANSWER_SETTLE)
        if self.runwatch is not None:
            self.runwatch.close()
        self.memory.close()
        self.hooks.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.server.close()
        self.signals.close()
        self.reaper.close()
        if code == 0:
            self.log.info("stemd stopped")
        else:
            self.log.error("stemd exiting with status %d", code)
        lock.release()
        self.notifier.close()
        return code

    async def _start_metrics(self) -> None:
        """Serve GET /metrics if STEMD_METRICS_LISTEN asks (stemd.metrics).
        A port that cannot be bound is logged, not fatal: the fleet matters
        more than its graphs, and Prometheus sees the target down."""
        if not self.config.master.metrics_listen:
            return
        from stemd.metrics import MetricsServer

        server = MetricsServer(self, self.log)
        try:
            await server.start(self.config.master.metrics_listen)
        except OSError as exc:
            self.log.error("cannot serve metrics on %s: %s", self.config.master.metrics_listen,
                           exc.strerror or exc)
            return
        self.metrics_server = server

    def forget_removed(self, node: Node) -> None:
        if self.removed.get(node.name) is node:
            del self.removed[node.name]
            self.state.soon()

    async def _await_readiness(self, adopted: int, boot: list[Node],
                               booting: asyncio.Task[list[NodeState | None]]) -> None:
        """Ready means running: wait up to STEMD_START_WAIT for every node
        that is wanted up to be RUNNING (or to give up), then tell the
        launcher (and systemd) — which nodes failed and why, if any. The
        master keeps supervising either way."""
        wait = self.config.master.start_wait
        if wait is None:
            # the priority groups start one after the other
            wait = sum(max(n.spec.policy.start_secs for n in group)
                       for group in _by_priority(boot)) if boot else max(
                (n.spec.policy.start_secs for n in self.nodes.values()), default=0.0)
            wait += 5
        if wait > 0 and boot:
            # A shutdown stops the nodes, which settles them (and closed
            # wakes the waiters at their next move): no wait outlives it.
            # Shielded: past the wait, the later priority groups still start.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(booting), wait)
        elif boot:
            await asyncio.sleep(0)  # booting's first step: the first group spawns
        if self.shutting_down:
            reason = "stopped during start-up (shutdown requested)"
            self.log.warning("%s", reason)
            self.readiness.fail(reason)
            return
        failed = [n for n in self.nodes.values() if n.wanted and n.state is not S.RUNNING
                  and n.state is not S.EXITED]
        self.log.info("stemd %s ready: pid %d, %d nodes (%d adopted), socket %s",
                      __version__, os.getpid(), len(self.nodes), adopted,
                      self.config.master.socket)
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", self._status_line())
        if wait > 0 and failed:
            # Each failed node with its reason, up to LISTED_IN_FULL: the
            # init script's terminal shows this, and the log has the rest.
            why = "; ".join(f"{n.name}: {n.state}" + (f" ({n.last_error})" if n.last_error else "")
                            for n in failed[:LISTED_IN_FULL])
            if len(failed) > LISTED_IN_FULL:
                why += f"; and {len(failed) - LISTED_IN_FULL} more"
            self.readiness.partly(f"{len(failed)} of {len(self.nodes)} nodes not running "
                                  f"(waited up to {wait:g}s, STEMD_START_WAIT): {why}; the "
                                  "master keeps supervising them (see 'stemctl status')")
        else:
            self.readiness.ready()

    def _watch_own_files(self) -> None:
        self.runwatch = None
        try:
            self.runwatch = RunDirWatch(self.loop, [self._lock.path, self.config.master.socket,
                                                    self.state.path], self._own_files_lost)
        except OSError as exc:  # no inotify (a restricted container): run without
            self.log.warning("cannot watch the run directory (%s): a removed PID file or "
                             "socket will not be recreated", exc)

    def _own_files_lost(self) -> None:
        if not self.shutting_down:
            self._spawn_task(self._restore_own_files)

    async def _restore_own_files(self) -> None:
        """Something removed the master's PID file, socket or state file (an
        ``rm -rf`` of the run directory): put them back, so that stemctl
        still reaches this master and a second one is refused. Never fights
        another master over its PID file."""
        if self.shutting_down:
            return
        restored = []
        paths = (self._lock.path, self.config.master.socket, self.state.path)
        try:
            for directory in dict.fromkeys(os.path.dirname(p) for p in paths):
                if not os.path.isdir(directory) and self.config.master.create_dirs:
                    os.makedirs(directory, mode=0o755, exist_ok=True)
                    restored.append(directory)
            lock = self._lock.recreate()
            if lock is False:
                self.log.error("the master PID file %s was replaced and another process holds "
                               "it: stemctl may reach another master; stop one of them",
                               self._lock.path)
            elif lock:
                restored.append(self._lock.path)
            if not self.server.present():
                self.server.close()
                await self.server.start()
                restored.append(self.config.master.socket)
        except (OSError, StemError) as exc:
            self.log.error("the run directory was tampered with and cannot be restored (%s): "
                           "stemctl cannot reach this master; restart it", exc)
        self.state.save()
        if self.runwatch is not None:
            self.runwatch.rewatch()
        if restored:
            self.log.warning("recreated what was removed under the running master: %s",
                             ", ".join(restored))

    def _install_signals(self) -> None:
        # Not loop.add_signal_handler(): see stemd/signals.py for the storm
        # of SIGCHLDs that drops signals from asyncio's self-pipe.
        self.signals = SignalPipe(self.loop, {
            signal.SIGTERM: partial(self.request_shutdown, "SIGTERM"),
            signal.SIGINT: partial(self.request_shutdown, "SIGINT"),
            signal.SIGHUP: partial(self._spawn_task, self._reload_on_signal),
            signal.SIGUSR1: self._reopen_log,
            signal.SIGCHLD: self.reaper.on_sigchld,
        })
        # The launcher blocked these signals until now (a SIGHUP during
        # start-up must not kill the daemon): what arrived meanwhile is
        # delivered here, to the handlers just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalPipe.HANDLED)
        # Catch up on any child that exited before the handler was installed.
        self.reaper.on_sigchld()

    def _spawn_task(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        task = self.loop.create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_on_signal(self) -> None:
        """SIGHUP: nobody awaits this task, so its errors end here (an
        unretrieved task exception would print a traceback to stderr)."""
        try:
            await self.reload()
        except ConfigError:
            pass  # _reload logged every problem and kept the running config
        except StemError as exc:
            self.log.warning("reload (SIGHUP): %s", exc)

    def _reopen_log(self) -> None:
        if logsetup.reopen(self.log):
            self.log.info("reopened the log file (SIGUSR1)")

    def _status_line(self) -> str:
        running = sum(1 for n in self.nodes.values() if n.state is S.RUNNING)
        return f"STATUS={running}/{len(self.nodes)} nodes running"

    # ---------------------------------------------------------- the state

    # --------------------------------------------------------------- nodes

    def node_changed(self, node: Node) -> None:
        self.transitions.changed(node)
        self.state.changed(node)

    def _fleet(self) -> Iterator[tuple[Node, bool]]:
        """Every node the state file lists: (node, removed)."""
        for node in self.nodes.values():
            yield node, False
        for node in self.removed.values():
            yield node, True

    def add_node(self, spec: NodeSpec) -> Node:
        node = Node(spec, self.loop, self.ops, self.log)
        # A node first configured is wanted up unless autostart = false; a
        # previous master's record (restore) or a live process overrides it.
        node.wanted = spec.autostart
        node.on_change = self.node_changed
        self.nodes[spec.name] = node
        return node

    def exit_callback(self, node: Node) -> Callable[[int, ExitStatus], None]:
        def exited(pid: int, status: ExitStatus) -> None:
            if node.pid == pid:
                node.on_exit(status)
                if self.notifier.enabled:  # a count over every node, per exit
                    self.notifier.send(self._status_line())
        return exited

    def wait_for(self, node: Node, done: Callable[[Node], bool]) -> asyncio.Future[NodeState]:
        future: asyncio.Future[NodeState] = self.loop.create_future()

        def wake(n: Node) -> None:
            if not future.done():
                future.set_result(n.state)
        node.add_waiter(done, wake)
        return future

    # ------------------------------------------------- the command surface

    def select(self, names: Iterable[str]) -> list[Node]:
        specs = self.config.select(names)  # raises BadValue for unknown names
        return [self.nodes[s.name] for s in specs]

    def snapshot(self, nodes: Iterable[Node], stats: bool = False,
                 pss: bool = False) -> list[dict[str, Any]]:
        return build_snapshot(nodes, stats, self.cpu, pss)

    async def start(self, nodes: list[Node]) -> list[NodeState | None]:
        """Start nodes (the operator wants them up) and wait until each is
        RUNNING or has given up; None for a node a later command (a stop)
        took over meanwhile: the later command stands, and this start did
        not fail. Finished even if the client goes away: its intent is
        recorded at once, and a node left wanted up but STOPPED would be
        started by the next reload or master, unasked."""
        self._refuse_when_stopping()
        _intend(nodes, True)
        self.state.save()
        return await self._operation(self._start_in_order(nodes), finish="start")

    async def stop(self, nodes: list[Node], wait: bool = True) -> None:
        """Stop nodes (the operator wants them down); with ``wait``, until
        they are. A stop is never refused, not even during a shutdown, and
        is finished even if the client goes away (its intent is recorded at
        once: a node left RUNNING but wanted down is not restarted when it
        crashes)."""
        _intend(nodes, False)
        if not wait:
            self.sweep_when_down(nodes)
            for node in nodes:
                node.stop()
            self.state.save()  # after the signals: a next master sees them STOPPING
            return
        # Written once the signals are out, while the nodes exit; scheduled
        # now too, should the operation be cancelled before it runs.
        self.state.soon()
        # Not cancelled by a shutdown, which stops these nodes too: the
        # client is told they stopped, not "interrupted".
        await self._operation(self._stop_in_order(nodes, before_wait=self.state.save),
                              finish="stop", shutdown_cancels=False)

    async def restart(self, nodes: list[Node]) -> list[Node]:
        """Rolling: one node at a time — across every client's restart —
        each RUNNING again before the next, so the fleet never loses more
        than one node of capacity. Stops at the first node that does not
        come back (RestartHalted). Each node is wanted up when its step
        begins, not before: a restart halted, or dropped with its client,
        leaves the nodes it did not reach as the operator last wanted them.
        A node stopped after the restart began is not restarted."""
        self._refuse_when_stopping()
        seen = {node.name: node.intent for node in nodes}
        return await self._operation(self._rolling_restart(nodes, seen))

    def kill(self, nodes: list[Node], sig: int, group: bool) -> list[str]:
        """Send ``sig`` to the nodes' main processes (``group``: their whole
        process groups). Returns the nodes signalled."""
        sent = []
        for node in nodes:
            if node.pid is not None:
                self.ops.signal(node, sig, group)
                sent.append(node.name)
        return sent

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply only the difference. An
        invalid file is reported and the running configuration kept.

        Once begun, a reload is finished even if its client goes away (a
        Ctrl-C, ``--timeout``, systemd's reload timeout): cut off between
        stopping the changed nodes and starting them again, it left them
        STOPPED for good with the new configuration recorded as applied.
        Only a shutdown cancels it."""
        self._refuse_when_stopping()
        return await self._operation(self._reload_serialised(), finish="reload")

    async def _reload_serialised(self) -> dict[str, Any]:
        async with self._reload_lock:
            self.notifier.send("RELOADING=1")
            try:
                result = await self._reload()
            except ConfigError:
                self.reloads.record(False)
                raise
            except ReloadFailed:
                self._reloaded()  # the new configuration applies
                raise
            else:
                self._reloaded()
                return result
            finally:
                self.memory.update()
                if not self.shutting_down:
                    self.notifier.send("READY=1", self._status_line())

    def _reloaded(self) -> None:
        """The file's configuration applies again: its node counts too."""
        self.reloads.record(True)
        self.scaled.clear()
        self.cpu.forget_except(self.nodes)

    async def scale(self, program: str, count: int) -> dict[str, Any]:
        """Run ``count`` nodes of ``program`` until the next reload or
        restart (the file is not touched): new nodes take the program's
        name pattern and start; the highest-numbered go first, stopped warm
        (their normal stop sequence). Serialised with reloads. Raises
        BadValue for an unknown program or a count out of range. Finished
        even if its client goes away, as a reload is."""
        self._refuse_when_stopping()
        return await self._operation(self._scale_serialised(program, count), finish="scale")

    async def _scale_serialised(self, program: str, count: int) -> dict[str, Any]:
        async with self._reload_lock:
            return await self._scale(program, count)

    def request_shutdown(self, why: str) -> None:
        if not self.shutting_down:
            self._spawn_task(self._shutdown, why)

    # ------------------------------------------------------------- internals

    def _refuse_when_stopping(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("the master is shutting down")

    async def _operation(self, work: Coroutine[Any, Any, T] | asyncio.Future[T],
                         finish: str | None = None, shutdown_cancels: bool = True) -> T:
        """Run a command's work as a task a shutdown cancels (unless
        ``shutdown_cancels`` is false: a stop). A client that goes away
        cancels the work with its wait, except what a node step has begun
        (a restart's stop: shielded there) and, with ``finish`` (the
        command's name, for the log), the whole work: a reconfiguration is
        never left half-applied."""
        task = asyncio.ensure_future(work)
        if shutdown_cancels:
            self._operations.add(task)
            task.add_done_callback(self._operations.discard)
        try:
            return await (asyncio.shield(task) if finish else task)
        except asyncio.CancelledError:
            if self.shutting_down and task.cancelled():
                raise ShuttingDown("interrupted: the master is shutting down") from None
            if finish and not task.done():
                task.add_done_callback(lambda t: self._finished_unwatched(finish, t))
            raise

    def _finished_unwatched(self, what: str, task: asyncio.Task[Any]) -> None:
        """The end of work whose client went away: the log is all that is
        left to tell (and an unretrieved exception would print a traceback)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.log.info("%s finished (its client had gone)", what)
        elif not isinstance(exc, ConfigError):  # a reload logged its config errors
            self.log.warning("%s finished (its client had gone): %s", what, exc)

    async def _start_in_order(self, nodes: list[Node], locked: bool = True
                              ) -> list[NodeState | None]:
        """Start by priority (lower first): each priority's nodes in parallel,
        every one RUNNING or given up before the next priority starts. The
        states come back in the order of ``nodes``. The start-up sequence
        runs ``locked=False``: it is not a command, and a ``stop`` of a
        node still STARTING must not queue behind it; it spawns each group
        before its first ``await`` (STEMD_START_WAIT=0 returns once the
        first group is spawned)."""
        states: dict[str, NodeState | None] = {}
        for group in _by_priority(nodes):
            if self.shutting_down:
                break
            if locked:
                self.state.save()
                results = await asyncio.gather(*(self._start_node(n) for n in group))
            else:
                group = [n for n in group if n.wanted]  # an operator's stop meanwhile stands
                for node in group:
                    node.start()
                self.state.save()
                results = await asyncio.gather(*(self.wait_for(
                    n, lambda n: n.state in START_SETTLED or n.closed) for n in group))
            states.update({n.name: s for n, s in zip(group, results, strict=True)})
        return [states.get(n.name, n.state) for n in nodes]

    async def _stop_in_order(self, nodes: list[Node], locked: bool = True,
                             before_wait: Callable[[], None] | None = None) -> None:
        """Stop in reverse priority (higher first), each priority's nodes in
        parallel and all of them down before the next. ``before_wait`` runs
        once the first group's signals are out (the state file is written
        while the nodes exit, not before they are told to)."""
        for group in _by_priority(nodes, reverse=True):
            await self._stop_together(group, locked, before_wait)
            before_wait = None

    async def _stop_together(self, nodes: list[Node], locked: bool,
                             before_wait: Callable[[], None] | None) -> None:
        """Stop ``nodes`` at once and wait until each is down.

        A stop-all of 1,000 nodes is the fleet-wide case, so it costs one
        pass and one future, not a task, a lock queue and a future per node
        (those took ~70 µs a node, a third of the stop, profiled). Every node
        whose lock is free is locked, signalled and waited on here; each lock
        is released the moment its node is down. A node another command holds
        (a restart's step, a start) is stopped after that command, as before,
        through :meth:`_stop_node`.
        """
        held: set[Node] = set()
        mine: list[Node] = []  # stopped here
        queued: list[Node] = []  # after the command that holds them

        def down(node: Node) -> None:
            if node in held:
                held.discard(node)
                node.lock.release()
        try:
            for node in nodes:
                if locked:
                    if not node.lock.try_acquire():  # held, or promised to a waiter
                        queued.append(node)
                        continue
                    held.add(node)
                mine.append(node)
            ended = {n.pid: n for n in mine if n.pid is not None}
            for node in mine:
                node.stop()
            if before_wait is not None:
                before_wait()
            await asyncio.gather(self._wait_all(mine, _is_down, down),
                                 *(self._stop_node(n) for n in queued))
            await self.sweep_and_wait(ended)
        finally:
            for node in list(held):  # cancelled: what is still locked is let go
                down(node)

    def sweep_sessions(self, ended: dict[int, Node], whole: bool = False
                       ) -> list[tuple[int, int]]:
        """Kill what the stopped nodes left in their sessions outside their
        process groups: the stop's SIGKILL reached the groups only, and SPEC
        §2.1 leaves no grandchild behind. One scan of /proc per stop
        command, and a second if the first killed any (a leftover may have
        forked meanwhile); only processes of each node's own user, in a
        session whose leader is gone (stemd.reaper.session_leftovers). A
        descendant that left the session (setsid) is beyond it: the
        documented limit. Returns (pid, session) of every process killed
        or still dying of its group's SIGKILL, for :meth:`sweep_and_wait`."""
        uids = {pid: uid for pid, node in ended.items()
                if (uid := self._node_uid(node)) is not None}
        if not uids:
            return []
        signalled: dict[int, int] = {}
        for _ in range(2):
            spare = {n.pid for n in self.nodes.values() if n.pid is not None}
            try:
                leftovers, dying = session_leftovers(uids, spare, whole)
            except OSError as exc:  # no /proc to read: the stop stands without it
                self.log.warning("cannot look for what the stopped nodes left: %s", exc)
                break
            # the group's own members had the group's SIGKILL; once more is
            # harmless, and reaches one that joined the group since
            again = set(kill_leftovers(dying, uids))
            signalled.update((pid, sid) for pid, sid in dying if pid in again)
            killed = set(kill_leftovers(leftovers, uids))
            if not killed:
                break
            signalled.update((pid, sid) for pid, sid in leftovers if pid in killed)
            for sid in sorted({sid for pid, sid in leftovers if pid in killed}):
                pids = [pid for pid, s in leftovers if s == sid and pid in killed]
                self.log.warning("%s: killed %d process(es) its pid %d left in its session%s: "
                                 "%s", ended[sid].name, len(pids), sid,
                                 "" if whole else " outside its process group",
                                 ", ".join(map(str, pids)))
        return list(signalled.items())

    async def sweep_and_wait(self, ended: dict[int, Node]) -> None:
        """Sweep the stopped nodes' sessions and wait until every process
        killed is gone: a stop reports "stopped" only once nothing of the
        node runs (SIGKILL is delivered, not done; on a loaded machine a
        pool child can outlive the reply). A process still there after
        :data:`KILL_GRACE` (uninterruptible sleep) is logged, not waited on
        for ever."""
        signalled = self.sweep_sessions(ended)
        if not signalled:
            return
        left = set(await wait_gone(self.loop, signalled))
        for sid in sorted({sid for pid, sid in signalled if pid in left}):
            pids = sorted(pid for pid, s in signalled if s == sid and pid in left)
            self.log.warning("%s: still alive %gs after SIGKILL (uninterruptible sleep?): "
                             "pid %s", ended[sid].name, KILL_GRACE, ", ".join(map(str, pids)))

    def _node_uid(self, node: Node) -> int | None:
        """The uid a node runs as (None: its account cannot be resolved)."""
        try:
            account = resolve_account(node.spec.run_as.user, node.spec.run_as.group)
        except AccountError:
            return None
        return account.uid if account.switch else os.getuid()

    def sweep_when_down(self, nodes: Iterable[Node]) -> None:
        """For a stop nobody waits on (``stop --no-wait``, an adopted node's
        stop carried on): sweep the nodes' sessions once all are down."""
        ended = {n.pid: n for n in nodes if n.pid is not None}
        if not ended:
            return
        pending = self._wait_all(list(ended.values()), _is_down, lambda n: None)
        pending.add_done_callback(lambda _: self.sweep_sessions(ended))

    def _wait_all(self, nodes: list[Node], done: Callable[[Node], bool],
                  each: Callable[[Node], None]) -> asyncio.Future[None]:
        """One future for many nodes: resolved once ``done`` holds for every
        one; ``each(node)`` is called as each gets there."""
        future: asyncio.Future[None] = self.loop.create_future()
        left = len(nodes)

        def wake(node: Node) -> None:
            nonlocal left
            each(node)
            left -= 1
            if left == 0 and not future.done():
                future.set_result(None)
        for node in nodes:
            node.add_waiter(done, wake)
        if left == 0 and not future.done():
            future.set_result(None)
        return future

    async def _start_node(self, node: Node) -> NodeState | None:
        async with node.lock:
            return await self._start_unlocked(node)

    async def _start_unlocked(self, node: Node) -> NodeState | None:
        """The node's state once started and settled; None when a later
        command (a stop) took the node over before this start's turn: the
        later command stands, and this start did not fail."""
        if node.state is S.STOPPING:
            await self.wait_for(node, lambda n: n.state not in ALIVE)
        if not node.wanted:
            # The operator stopped it after this command (a start, a reload,
            # a restart, a memory restart) began: the later command stands.
            return None
        node.start()
        return await self.wait_for(node, lambda n: n.state in START_SETTLED or n.closed)

    async def _stop_node(self, node: Node) -> NodeState:
        async with node.lock:
            return await self._stop_unlocked(node)

    async def _stop_unlocked(self, node: Node) -> NodeState:
        ended = {node.pid: node} if node.pid is not None else {}
        node.stop()
        state = await self.wait_for(node, _is_down)
        await self.sweep_and_wait(ended)
        return state

    async def _restart_node(self, node: Node, seen: int) -> NodeState | None:
        async with self._rolling_lock, node.lock:
            if self.nodes.get(node.name) is not node or node.closed:
                return node.state  # removed meanwhile (a reload, scale), or shutting down
            if node.intent != seen and not node.wanted:
                # The operator stopped it after the restart began: that
                # command is the later one, and it stands.
                return node.state
            _intend([node], True)
            self.state.save()  # at once, as every command's intent: a next master reads it
            await self._stop_unlocked(node)
            return await self._start_unlocked(node)

    async def _rolling_restart(self, nodes: list[Node], seen: dict[str, int]) -> list[Node]:
        done: list[Node] = []
        for node in nodes:
            if self.nodes.get(node.name) is not node:
                continue  # removed meanwhile (stemctl scale, a reload): nothing to restart
            # Shielded: a client that disconnects mid-step must not leave
            # the node stopped; the rest of its restarts are dropped.
            step = asyncio.ensure_future(self._restart_node(node, seen[node.name]))
            self._operations.add(step)
            step.add_done_callback(self._operations.discard)
            state = await asyncio.shield(step)
            done.append(node)
            if self.nodes.get(node.name) is not node:
                continue
            if not node.wanted:
                raise RestartHalted(f"restart halted: {node.name} was stopped meanwhile "
                                    "(stemctl stop); the rest are not restarted", done)
            if state is not S.RUNNING:
                raise RestartHalted(f"restart halted: {node.name} is {node.state}", done)
        return nodes

    async def _reload(self) -> dict[str, Any]:
        try:
            new = load_config(self.config.source, self.environ, self.overrides)
        except ConfigError as exc:
            self.log.error("reload: keeping the running configuration; the new one has "
                           "errors:\n%s", exc)
            raise
        for warning in new.warnings:
            self.log.warning("reload: warning: %s", warning)
        change = self._outdated_as_changed(diff(self.config, new), new)
        # The master's own settings (socket, PID file, user, force_root...)
        # take effect when stemd restarts; only the log level applies now.
        pending = [name for name in change.master_changed if name not in RELOADABLE]
        if pending:
            self.log.warning("reload: master settings changed (%s); they take effect when "
                             "stemd restarts", ", ".join(pending))
        new = dataclasses.replace(new, master=dataclasses.replace(
            self.config.master, log_level=new.master.log_level))
        self.config = new
        self.log.setLevel(new.master.log_level)
        self.log.info("reload: %d added, %d removed, %d changed, %d unchanged",
                      len(change.added), len(change.removed), len(change.changed),
                      len(change.unchanged))
        removed = [self.nodes.pop(s.name) for s in change.removed]
        for node in removed:
            node.wanted = False
            node.closed = True  # no start of any kind: a queued restart must not revive it
            self.removed[node.name] = node
        changed = [self.nodes[s.name] for s in change.changed]
        # A changed node is restarted only if the operator wants it up and
        # it has not finished on its own (EXITED under its restart policy).
        restart = [n for n in changed if n.wanted and n.state is not S.EXITED]
        for spec in change.changed:
            node = self.nodes[spec.name]
            if node not in restart:
                node.spec = spec  # not running: the new spec applies at its next start
            else:
                node.next_spec = spec  # whoever starts it next (the stop uses the old one)
        for spec in change.unchanged:
            self.nodes[spec.name].spec = spec  # equal but for the index
        added = [self.add_node(spec) for spec in change.added]
        for node in added:
            if node.name not in self.removed and self.adoption.recover(node):
                node.wanted = True  # it runs: autostart = false does not stop it
        self.nodes = {s.name: self.nodes[s.name] for s in new.nodes}
        self.state.save()
        stopping = [n for n in removed + restart if n.state in STOPPED_BY_COMMAND]
        await self._stop_in_order(removed + restart)
        forced = [n.name for n in stopping if n.stop_forced]
        for node in removed:
            self.forget_removed(node)
        for node in restart:
            if node.pid is None:  # else a rolling restart already started it on the new spec
                node.spec, node.next_spec = new.node(node.name), None
        # An added node with autostart = false stays STOPPED.
        starting = restart + [n for n in added if n.state is not S.RUNNING and n.wanted]
        await self._leftovers_gone(added)
        results = await self._start_in_order(starting)
        summary = {"added": [s.name for s in change.added],
                   "removed": [s.name for s in change.removed],
                   "changed": [s.name for s in change.changed],
                   "unchanged": [s.name for s in change.unchanged],
                   "master_changed": pending,
                   # a deploy that had to SIGKILL lost tasks: say which nodes
                   "stop_forced": forced}
        failed = [n.name for n, state in zip(starting, results, strict=True)
                  if state is not None and state is not S.RUNNING]  # None: stopped meanwhile
        if failed:
            raise ReloadFailed(f"reload: not running: {abridged(failed)}", summary)
        return summary

    def _outdated_as_changed(self, change: ConfigDiff, new: Config) -> ConfigDiff:
        """A reload compares the file with what the master loaded, but a node
        adopted after a crash may run an older configuration than that
        (Node.started_from): such a node is changed whatever the file did
        since, and one whose file came back to what it runs is unchanged."""
        moved = False
        changed = {s.name for s in change.changed}
        for spec in change.changed + change.unchanged:
            node = self.nodes[spec.name]
            if node.started_from is None or node.pid is None:
                continue
            if node.started_from == spec_fingerprint(spec):
                node.started_from = None  # it runs what the file says again
                moved |= spec.name in changed
                changed.discard(spec.name)
            elif spec.name not in changed:
                moved = True
                changed.add(spec.name)
        if not moved:
            return change
        kept = {s.name for s in change.changed + change.unchanged}
        specs = [s for s in new.nodes if s.name in kept]  # in the file's order
        return dataclasses.replace(
            change, changed=tuple(s for s in specs if s.name in changed),
            unchanged=tuple(s for s in specs if s.name not in changed))

    async def _leftovers_gone(self, added: list[Node]) -> None:
        """Wait until no earlier node of an added node's name is still being
        stopped: one removed by an earlier reload or scale, or left over by a
        master that died (stopped warm, so for up to its stop timeout). Its
        process is not the added node's to adopt (two nodes of one process:
        the stopping one never gone, and its "stopping" record made the next
        master wait out a stop never sent, then SIGKILL); the added node
        starts afresh once it is gone."""
        stopping = [old for node in added if (old := self.removed.get(node.name)) is not None
                    and old.state in ALIVE]
        if stopping:
            self.log.info("waiting for %s to finish stopping before starting %s again",
                          abridged([n.name for n in stopping]),
                          "it" if len(stopping) == 1 else "them")
            await self._wait_all(stopping, lambda n: n.state not in ALIVE, lambda n: None)

    async def _scale(self, program: str, count: int) -> dict[str, Any]:
        from stem_core.config import scaled

        new = scaled(self.config, program, count)  # raises BadValue
        file_count = self.scaled.get(program, len(self.config.select([program])))
        change = diff(self.config, new)
        self.config = new
        if count == file_count:
            self.scaled.pop(program, None)
        else:
            self.scaled[program] = file_count
        removed = [self.nodes.pop(s.name) for s in change.removed]
        for node in removed:
            node.wanted = False
            node.closed = True  # no start of any kind: a queued restart must not revive it
            self.removed[node.name] = node
        added = [self.add_node(spec) for spec in change.added]
        for node in added:
            if node.name not in self.removed:
                self.adoption.recover(node)
        self.nodes = {s.name: self.nodes[s.name] for s in new.nodes}
        self.state.save()
        self.memory.update()
        self.cpu.forget_except(self.nodes)
        self.log.info("scale: %s to %d nodes (the file says %d): %d added, %d removed",
                      program, count, file_count, len(added), len(removed))
        stopping = [n for n in removed if n.state in STOPPED_BY_COMMAND]
        await asyncio.gather(*(self._stop_node(n) for n in removed))
        forced = [n.name for n in stopping if n.stop_forced]
        for node in removed:
            self.forget_removed(node)
        starting = [n for n in added if n.state is not S.RUNNING]
        await self._leftovers_gone(added)
        results = await asyncio.gather(*(self._start_node(n) for n in starting))
        failed = [n.name for n, state in zip(starting, results, strict=True)
                  if state is not None and state is not S.RUNNING]
        summary = {"program": program, "nodes": count, "configured": file_count,
                   "added": [s.name for s in change.added],
                   "removed": [s.name for s in change.removed], "not_running": failed,
                   "stop_forced": forced}
        return summary

    async def _shutdown(self, why: str) -> None:
        if self.shutting_down:
            return
        # Persist first, then stop writing: a master killed during the
        # shutdown leaves the state the next master (or stemctl shutdown)
        # needs to finish the job.
        self.state.save()
        self.shutting_down = True
        self.state.closed = True
        everything = [*self.nodes.values(), *self.removed.values()]
        for node in everything:
            node.closed = True
        for task in list(self._operations):
            task.cancel()
        self.log.info("shutting down (%s): stopping %d nodes", why, len(everything))
        self.notifier.send("STOPPING=1", "STATUS=stopping nodes")
        stopping = [n for n in everything if n.state in STOPPED_BY_COMMAND]
        try:
            await self._stop_in_order(everything, locked=False)
        except Exception:
            # A bug must not leave a master that never exits (a service
            # stop that hangs): exit 1 and keep the state file, from which
            # 'stemctl shutdown' (the init script's stop) or the next master
            # finds and stops what still runs. Never "stemd stopped".
            self.log.exception("shutdown failed; nodes may still run ('stemctl shutdown' "
                               "stops what is left)")
            if not self._done.done():
                self._done.set_result(1)
            return
        # stemctl shutdown waits on its held connection: its last word
        forced = [n.name for n in stopping if n.stop_forced]
        self.server.tell_held({"stop_forced": forced})
        self.state.remove()  # a clean stop: the next start begins fresh
        if not self._done.done():
            self._done.set_result(0)


def _intend(nodes: Iterable[Node], up: bool) -> None:
    """An operator's command says what it wants of these nodes (their
    intent, which reload, adoption and the next master honour)."""
    for node in nodes:
        node.wanted = up
        node.intent += 1


def _by_priority(nodes: Iterable[Node], reverse: bool = False) -> list[list[Node]]:
    """The nodes grouped by their program's priority, lowest first (or, for
    stops, highest first); config order within a group."""
    groups: dict[int, list[Node]] = {}
    for node in nodes:
        groups.setdefault(node.spec.priority, []).append(node)
    return [groups[p] for p in sorted(groups, reverse=reverse)]


def _is_down(node: Node) -> bool:
    """Stopped for good: no process, and no retry pending."""
    return node.state not in ALIVE and node.state is not S.BACKOFF
