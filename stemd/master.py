"""The master: the node table, signals, reload and shutdown, on one event loop.

Nothing here polls. The loop sleeps in ``epoll_wait`` until a pidfd becomes
readable (a node exited), a signal arrives (through asyncio's wake-up fd), a
client connects, or a node's single timer is due. With nothing happening the
master makes no wake-ups at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import psutil

from stem_core.config import load_config
from stem_core.errors import ConfigError, PidFileError, StemError
from stem_core.model import Config, NodeSpec, diff
from stem_core.pidfile import check_node_identity, read_pidfile, remove_pidfile, write_pidfile
from stem_core.states import ALIVE, NodeState
from stemd import handlers, logsetup
from stemd.checks import create_directories, needed_directories
from stemd.control import ControlServer, socket_gid
from stemd.daemon import MasterLock, Readiness
from stemd.node import ExitStatus, Node, SpawnError
from stemd.notify import Notifier
from stemd.reaper import Reaper
from stemd.signals import SignalPipe
from stemd.spawn import resolve_account, spawn_node

S = NodeState


class StartupError(StemError):
    pass


class _Ops:
    """The real process operations behind :class:`stemd.node.ProcessOps`."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def spawn(self, node: Node) -> int:
        m = self.master
        try:
            popen = self._spawn(node)
        except SpawnError:
            # A directory removed while we run (a careless cleanup of
            # /var/log) must not turn into a fleet of FATAL nodes.
            if not self._recreate_directories():
                raise
            popen = self._spawn(node)
        try:
            write_pidfile(node.spec.pid_file, popen.pid)
        except OSError:
            try:
                self._recreate_directories()
                write_pidfile(node.spec.pid_file, popen.pid)
            except OSError as exc:
                m.log.error("%s: cannot write PID file %s: %s", node.name,
                            node.spec.pid_file, exc.strerror)
        m.reaper.watch(popen.pid, popen, m.exit_callback(node))
        return popen.pid

    def _spawn(self, node: Node) -> subprocess.Popen[bytes]:
        return spawn_node(node.spec, self.master.base_env, self.master.config.master.force_root)

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

    def signal_group(self, node: Node, sig: int) -> None:
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, sig)

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
        self.log = log
        self.readiness = readiness
        self.notifier = notifier
        self.foreground = foreground
        self.nodes: dict[str, Node] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.shutting_down = False
        self.loop: asyncio.AbstractEventLoop
        self.reaper: Reaper
        self.signals: SignalPipe
        self.server: ControlServer
        self.ops = _Ops(self)
        self._done: asyncio.Future[int]
        self._reload_lock: asyncio.Lock
        self._tasks: set[asyncio.Task[Any]] = set()

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
        self.reaper = Reaper(self.loop, self.log)
        if lock.stale:
            self.log.warning("replaced stale master PID file %s (%s)", lock.path, lock.stale)
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
        self._install_signals()
        adopted = 0
        for spec in self.config.nodes:
            node = self._add_node(spec)
            if self._recover(node):
                adopted += 1
        for node in self.nodes.values():
            if node.state is S.STOPPED:
                node.start()
        self.log.info("stemd %s ready: pid %d, %d nodes (%d adopted), socket %s",
                      _version(), os.getpid(), len(self.nodes), adopted,
                      self.config.master.socket)
        self.readiness.ready()
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", self._status_line())
        code = await self._done
        self.server.close()
        self.signals.close()
        self.reaper.close()
        self.log.info("stemd stopped")
        lock.release()
        self.notifier.close()
        return code

    def _install_signals(self) -> None:
        # Not loop.add_signal_handler(): see stemd/signals.py for the storm
        # of SIGCHLDs that drops signals from asyncio's self-pipe.
        self.signals = SignalPipe(self.loop, {
            signal.SIGTERM: partial(self._spawn_task, self.shutdown, "SIGTERM"),
            signal.SIGINT: partial(self._spawn_task, self.shutdown, "SIGINT"),
            signal.SIGHUP: partial(self._spawn_task, self._reload_on_signal),
            signal.SIGUSR1: self._reopen_log,
            signal.SIGCHLD: self.reaper.on_sigchld,
        })
        # A reload may run while children exit: catch up on anything that
        # exited before the handler was installed.
        self.reaper.on_sigchld()

    def _spawn_task(self, fn: Callable[..., Any], *args: Any) -> None:
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
            self.log.warning("reload (SIGHUP) not done: %s", exc)

    def _reopen_log(self) -> None:
        logsetup.reopen(self.log)
        self.log.info("reopened the log file (SIGUSR1)")

    def _status_line(self) -> str:
        running = sum(1 for n in self.nodes.values() if n.state is S.RUNNING)
        return f"STATUS={running}/{len(self.nodes)} nodes running"

    # --------------------------------------------------------------- nodes

    def _add_node(self, spec: NodeSpec) -> Node:
        node = Node(spec, self.loop, self.ops, self.log)
        self.nodes[spec.name] = node
        self.locks[spec.name] = asyncio.Lock()
        return node

    def exit_callback(self, node: Node) -> Callable[[int, ExitStatus], None]:
        def exited(pid: int, status: ExitStatus) -> None:
            if node.pid == pid:
                node.on_exit(status)
                self.notifier.send(self._status_line())
        return exited

    def _recover(self, node: Node) -> bool:
        """Adopt the node if its PID file names it alive; remove the file if
        stale. Never signals a process that is not the node."""
        spec = node.spec
        try:
            record = read_pidfile(spec.pid_file, trusted_uids=frozenset({0, os.geteuid()}))
        except PidFileError as exc:
            self.log.warning("%s: ignoring untrusted PID file: %s", node.name, exc)
            return False
        if record is None:
            return False
        try:
            uid: int | None = resolve_account(spec.user, spec.group).uid
        except SpawnError:
            uid = None
        why = check_node_identity(record, spec.name, spec.program, uid)
        if why is None:
            try:
                created = psutil.Process(record.pid).create_time()
                self.reaper.watch(record.pid, None, self.exit_callback(node))
            except (psutil.NoSuchProcess, ProcessLookupError):
                why = "no such process"
            else:
                node.adopt(record.pid, created)
                return True
        remove_pidfile(spec.pid_file, record.pid)
        self.log.warning("%s: removed stale PID file %s (pid %d: %s)", node.name,
                         spec.pid_file, record.pid, why)
        return False

    def select(self, names: Iterable[str]) -> list[Node]:
        specs = self.config.select(names)  # raises BadValue for unknown names
        return [self.nodes[s.name] for s in specs]

    def wait_for(self, node: Node, done: Callable[[Node], bool]) -> asyncio.Future[NodeState]:
        future: asyncio.Future[NodeState] = self.loop.create_future()

        def wake(n: Node) -> None:
            if not future.done():
                future.set_result(n.state)
        node.add_waiter(done, wake)
        return future

    async def start_node(self, node: Node) -> NodeState:
        """Start and wait until RUNNING or failed; queued behind other
        start/restart commands on the same node."""
        async with self.locks[node.name]:
            return await self._start_unlocked(node)

    async def _start_unlocked(self, node: Node) -> NodeState:
        if node.state is S.STOPPING:
            await self.wait_for(node, lambda n: n.state not in ALIVE)
        node.start()
        return await self.wait_for(
            node, lambda n: n.state in (S.RUNNING, S.FATAL, S.EXITED, S.STOPPED))

    async def stop_node(self, node: Node, wait: bool = True) -> NodeState:
        """Stop and wait until stopped. Queued behind a start or restart of
        the same node, so each command sees its own effect through; without
        ``wait`` (``stop --no-wait``) it acts at once."""
        if not wait:
            node.stop()
            return node.state
        async with self.locks[node.name]:
            return await self._stop_unlocked(node)

    async def _stop_unlocked(self, node: Node) -> NodeState:
        node.stop()
        return await self.wait_for(node, lambda n: n.state not in ALIVE
                                   and n.state is not S.BACKOFF)

    async def restart_node(self, node: Node) -> NodeState:
        async with self.locks[node.name]:
            await self._stop_unlocked(node)
            return await self._start_unlocked(node)

    # --------------------------------------------------- reload, shutdown

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply only the difference. An
        invalid file is reported and the running configuration kept."""
        async with self._reload_lock:
            self.notifier.send("RELOADING=1")
            try:
                return await self._reload()
            finally:
                self.notifier.send("READY=1", self._status_line())

    async def _reload(self) -> dict[str, Any]:
        if self.shutting_down:
            raise StemError("the master is shutting down")
        try:
            new = load_config(self.config.source, self.environ, self.overrides)
        except ConfigError as exc:
            self.log.error("reload: keeping the running configuration; the new one has "
                           "errors:\n%s", exc)
            raise
        change = diff(self.config, new)
        if change.master_changed:
            self.log.warning("reload: master settings changed (%s); they take effect when "
                             "stemd restarts", ", ".join(change.master_changed))
        self.config = new
        logsetup_level = new.master.log_level
        self.log.setLevel(logsetup_level)
        self.log.info("reload: %d added, %d removed, %d changed, %d unchanged",
                      len(change.added), len(change.removed), len(change.changed),
                      len(change.unchanged))
        removed = [self.nodes[s.name] for s in change.removed]
        changed = [self.nodes[s.name] for s in change.changed]
        await asyncio.gather(*(self.stop_node(n) for n in removed + changed))
        for node in removed:
            del self.nodes[node.name]
            del self.locks[node.name]
        for spec in change.changed:
            self.nodes[spec.name].spec = spec
        added = [self._add_node(spec) for spec in change.added]
        for node in added:
            self._recover(node)
        # keep the configuration's order in the table
        self.nodes = {s.name: self.nodes[s.name] for s in new.nodes}
        await asyncio.gather(*(self.start_node(n) for n in changed + added
                               if n.state is not S.RUNNING))
        return {"added": [s.name for s in change.added],
                "removed": [s.name for s in change.removed],
                "changed": [s.name for s in change.changed],
                "unchanged": [s.name for s in change.unchanged],
                "master_changed": list(change.master_changed)}

    async def shutdown(self, why: str = "requested") -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        self.log.info("shutting down (%s): stopping %d nodes", why, len(self.nodes))
        self.notifier.send("STOPPING=1", "STATUS=stopping nodes")
        # Pre-empts queued commands: a shutdown must not wait behind a start
        # that is backing off.
        await asyncio.gather(*(self._stop_unlocked(n) for n in self.nodes.values()))
        if not self._done.done():
            self._done.set_result(0)


def _version() -> str:
    from stemd import __version__

    return __version__
