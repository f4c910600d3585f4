"""Taking up what a master left: its live nodes and its state file.

A master that starts after a ``kill -9`` (or after an upgrade's restart)
finds nodes still running, PID files, and the state file (stemd.statekeeper)
with each node's intent, counters and last verdict. It adopts each live node
by identity (never a process that is not the node: stem_core.pidfile.classify),
removes stale PID files, restores what the state file says, and stops the
nodes the previous master ran that the configuration no longer has. A reload
or ``stemctl scale`` that adds a node asks the same question of it
(:meth:`Adoption.recover`): its process may already run.

psutil is imported only where a process is found to look at: a master
started on a clean host (the common case) does without its ~10 ms and
~1.2 MiB.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from stem_core.accounts import AccountError, resolve_account
from stem_core.errors import PidFileError, StemError
from stem_core.exits import ExitStatus
from stem_core.model import started_from_other
from stem_core.pidfile import (
    LIVE,
    UNTRUSTED,
    FoundNode,
    classify,
    remove_pidfile,
    scan_nodes,
    trusted_owners,
    write_pidfile,
)
from stem_core.statefile import NodeRecord, read_state
from stem_core.states import ALIVE
from stemd.node import Node

if TYPE_CHECKING:
    from stemd.master import Master


class StartupError(StemError):
    """The master must not start (another master runs this fleet)."""


class Adoption:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.log = master.log
        # Nodes whose PID file named a process that has exited, by that PID:
        # what the dead master left of them (its group was never killed if
        # it died first) is swept once, at the end of take_over; their stale
        # PID files (path, why) are removed only after it, since they are the
        # only record of those sessions should this master die before.
        self._dead: dict[int, Node] | None = None
        self._stale: dict[int, tuple[str, str | None]] = {}
        # Unrecorded orphans of nodes the configuration does not have, by name
        # (take_over: _adopt_unrecorded finds them, _stop_leftover stops them).
        self._unclaimed: dict[str, FoundNode] = {}
        # The previous master's record of each configured node (take_over),
        # for an orphan adopted without its PID file (_adopt_unrecorded).
        self._records: dict[str, NodeRecord] = {}

    def take_over(self) -> int:
        """Build the node table, taking up what a master that died left: its
        state file (intent, counters, verdicts) and its live nodes (adopted
        by identity). Nodes it ran that the configuration no longer has are
        adopted too, and stopped. Returns how many nodes were adopted.
        Raises StartupError."""
        m = self.master
        self._dead = {}
        self._unclaimed = {}
        previous = self._previous_state()
        unclean = previous is not None
        previous = previous or {}
        adopted = 0
        for spec in m.config.nodes:
            node = m.add_node(spec)
            record = previous.pop(spec.name, None)
            if record is not None:
                self._records[spec.name] = record
            if record is not None and not record.removed:
                node.restore(
                    wanted=record.wanted, restarts=record.restarts,
                    exit_status=_exit_status(record.exit_status),
                    last_error=record.last_error, state=record.state)
            if self.recover(node):
                adopted += 1
                self._outdated(node, record)
                if record is None or record.removed:
                    node.wanted = True  # it runs: autostart = false does not stop it
                elif not node.wanted:
                    # the operator's stop was under way when the master died
                    self._carry_on_stopping(node, record)
        adopted += self._adopt_unrecorded(unclean)
        for record in previous.values():
            self._stop_leftover(record)
        self._records = {}
        dead, self._dead = self._dead, None
        m.sweep_sessions(dead, whole=True)
        stale, self._stale = self._stale, {}
        for pid, (path, why) in stale.items():
            self._remove_stale(dead[pid], path, pid, why)
        return adopted

    def _outdated(self, node: Node, record: NodeRecord | None) -> None:
        """An adopted node whose process was started from another spec than
        the file's (the previous master's record says from which): the next
        reload restarts it (Node.started_from)."""
        if record is not None and started_from_other(record.spec, node.spec):
            node.started_from = record.spec
            self.log.warning("%s: pid %d runs an older configuration than %s (the file "
                             "changed while no master ran); 'stemctl reload' or 'restart' "
                             "applies it", node.name, node.pid, self.master.config.source)

    def recover(self, node: Node) -> bool:
        """Adopt the node if its PID file names it alive; remove the file if
        stale. Never signals a process that is not the node."""
        spec = node.spec
        try:
            uid: int | None = resolve_account(spec.run_as.user, spec.run_as.group).uid
        except AccountError:
            uid = None
        verdict = classify(spec.pid_file, spec.name, spec.program, uid, trusted_owners())
        if verdict.kind == UNTRUSTED:
            self.log.warning("%s: ignoring untrusted PID file: %s", node.name, verdict.why)
            return False
        if verdict.record is None:
            return False
        record, why = verdict.record, verdict.why
        if verdict.kind == LIVE:
            import psutil  # here: a fresh start (no PID file) never needs it

            try:
                created = psutil.Process(record.pid).create_time()
                self.master.reaper.watch(record.pid, None, self.master.exit_callback(node))
            except (psutil.NoSuchProcess, ProcessLookupError):
                why = "no such process"
            else:
                node.adopt(record.pid, created)
                return True
        # Its master may have died before killing its group: sweep what is
        # left in its session (only while no live process holds its PID,
        # only of its user: stemd.reaper.session_leftovers), then remove the
        # file, the only record of that session.
        if self._dead is not None:
            self._dead[record.pid] = node
            self._stale[record.pid] = (spec.pid_file, why)
        else:
            self.master.sweep_sessions({record.pid: node}, whole=True)
            self._remove_stale(node, spec.pid_file, record.pid, why)
        return False

    def _remove_stale(self, node: Node, path: str, pid: int, why: str | None) -> None:
        remove_pidfile(path, pid)
        self.log.warning("%s: removed stale PID file %s (pid %d: %s)", node.name, path, pid, why)

    def _adopt_unrecorded(self, unclean: bool) -> int:
        """Find this instance's nodes that no PID file names (see
        :func:`stem_core.pidfile.scan_nodes`): adopt an orphan (its master
        died before writing its PID file), and refuse to start at all if
        another master still runs one (its run directory was removed): two
        masters would run the fleet twice.

        What the scan goes by (session leader, environment) is all the node
        user's to forge: a node that double-forks an impostor of another
        node must neither be adopted in its place nor keep the master from
        starting. So an orphan is adopted only when the previous master died
        without shutting down (``unclean``: its state file is there, written
        before it spawned anything); after a clean shutdown no node of it
        runs, and a process that says it is one is not adopted (nor
        signalled: it is not the master's). And only a process of the
        master's own user counts as another master: a node user's process
        named stemd is not one."""
        m = self.master
        adopted = 0
        by_name: dict[str, list[FoundNode]] = {}
        for found in scan_nodes(m.config.master.pid_file):
            node = m.nodes.get(found.node)
            if node is not None and node.pid == found.pid:
                continue  # adopted through its PID file
            by_name.setdefault(found.node, []).append(found)
        if not by_name:
            return 0
        import psutil  # ~10 ms and ~1.2 MiB that a fresh start does without

        for name, candidates in by_name.items():
            others = [f for f in candidates if f.ppid not in (1, os.getpid())
                      and _is_master(f.ppid)]
            if others:
                raise StartupError(
                    f"node {name} (pid {others[0].pid}) already runs under another stemd "
                    f"(pid {others[0].ppid}) of this configuration, whose PID file or run "
                    f"directory is gone; stop that master first (kill -TERM {others[0].ppid})")
            node = m.nodes.get(name)
            orphans = [f for f in candidates if f.ppid == 1 or not psutil.pid_exists(f.ppid)]
            if node is None and unclean and len(orphans) == 1:
                # not configured (a scaled node, one a reload removed): its
                # state record has it stopped (_stop_leftover), never doubled
                self._unclaimed[name] = orphans[0]
                continue
            if node is None or node.pid is not None or len(orphans) != 1:
                continue
            if not unclean:
                self.log.warning(
                    "%s: pid %d (uid %d) says it is this node, but the previous master shut "
                    "down cleanly and left none running: not adopted, not signalled; a new "
                    "%s is started", name, orphans[0].pid, orphans[0].uid, name)
                continue
            found = orphans[0]
            try:
                uid = resolve_account(node.spec.run_as.user, node.spec.run_as.group).uid
                if found.uid != uid or found.program != node.spec.program:
                    continue
                created = psutil.Process(found.pid).create_time()
                write_pidfile(node.spec.pid_file, found.pid)
                m.reaper.watch(found.pid, None, m.exit_callback(node))
            except (AccountError, OSError, psutil.Error):
                continue
            node.adopt(found.pid, created)
            self.log.warning("%s: adopted pid %d, which no PID file named (its master died "
                             "before writing it)", name, found.pid)
            self._outdated(node, self._records.get(name))
            adopted += 1
        return adopted

    def _previous_state(self) -> dict[str, NodeRecord] | None:
        """The previous master's records, or None when it shut down cleanly
        (it removed its state file) or never ran."""
        path = self.master.state.path
        try:
            state = read_state(path, trusted_uids=trusted_owners())
        except PidFileError as exc:
            self.log.warning("ignoring the state file: %s", exc)
            return None
        if state is None:
            return None
        self.log.warning("the previous master (pid %d) did not shut down cleanly: taking up "
                         "its state from %s", state.pid, path)
        return dict(state.nodes)

    def _stop_leftover(self, record: NodeRecord) -> None:
        """A node of the previous master that is not in this configuration:
        supervise it just long enough to stop it (warm, as any stop)."""
        m = self.master
        defaults = m.config.nodes[0] if m.config.nodes else None
        if defaults is None:
            return
        spec = dataclasses.replace(defaults, name=record.name, program=record.program,
                                   pid_file=record.pid_file, argv=("(removed)",))
        node = Node(spec, m.loop, m.ops, self.log)
        if not self.recover(node) and not self._adopt_unclaimed(node):
            return
        self.log.warning("%s: left running by the previous master but no longer configured: "
                         "stopping it", record.name)
        node.wanted = False
        m.removed[node.name] = node
        node.on_change = m.node_changed
        self._carry_on_stopping(node, record)
        node.add_waiter(lambda n: n.state not in ALIVE, m.forget_removed)

    def _adopt_unclaimed(self, node: Node) -> bool:
        """A node the configuration does not have (a scaled one) whose
        master died before writing its PID file: found by the scan, it is
        adopted to be stopped; left alone, a later ``scale`` ran it twice.
        Only a process of its program's user, as any unrecorded orphan."""
        import psutil

        m = self.master
        found = self._unclaimed.pop(node.name, None)
        if found is None or found.program != node.spec.program:
            return False
        program = next((p for p in m.config.programs if p.name == found.program), None)
        run_as = program.run_as if program is not None else node.spec.run_as
        try:
            if found.uid != resolve_account(run_as.user, run_as.group).uid:
                return False
            created = psutil.Process(found.pid).create_time()
            write_pidfile(node.spec.pid_file, found.pid)
            m.reaper.watch(found.pid, None, m.exit_callback(node))
        except (AccountError, OSError, psutil.Error):
            return False
        node.adopt(found.pid, created)
        self.log.warning("%s: adopted pid %d, which no PID file named (its master died "
                         "before writing it)", node.name, found.pid)
        return True

    def _carry_on_stopping(self, node: Node, record: NodeRecord) -> None:
        """Stop an adopted node the operator (or a reload) wanted down. If
        the state file saw it STOPPING, its stop signal was sent: wait for
        it again with the whole stop timeout, but do not send a second one."""
        self.master.sweep_when_down([node])
        if record.state == "STOPPING":
            node.resume_stop()
        else:
            node.stop()


def _is_master(pid: int) -> bool:
    """Is ``pid`` a stemd of this master's user? Anyone can name a process
    stemd; only this user (or root) can run a master of this configuration."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.uids().effective != os.geteuid():
            return False
        return any("stemd" in os.path.basename(arg) for arg in proc.cmdline()[:2])
    except psutil.Error:
        return False


def _exit_status(value: int | None) -> ExitStatus | None:
    if value is None:
        return None
    return ExitStatus(signal=-value) if value < 0 else ExitStatus(code=value)
