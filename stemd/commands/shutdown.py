"""``stemctl shutdown``: stop every node and the master, or (no master
answers) the nodes a dead master left behind (SPEC §2.2)."""

from __future__ import annotations

import sys

from stem_core.protocol import ErrorCode as E
from stem_core.wording import abridged, killed_at_stop_timeout
from stemd.client import MasterNotRunning, NoAnswer, wait_until_gone
from stemd.ctl import OK, TERM_GRACE

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:

    from stemd.ctl import Ctl


def shutdown(ctl: Ctl) -> int:
    """Stop every node and the master. When no master answers, stop the
    nodes a dead master left behind (SPEC §2.2); with --force, a master that
    does not answer is terminated (TERM, then KILL) first."""
    try:
        response = ctl.call("shutdown", hold=True)
    except MasterNotRunning:
        return _shutdown_without_answer(ctl, None)
    except NoAnswer as exc:
        return _shutdown_without_answer(ctl, exc)
    if not response["ok"]:
        return ctl.error(response)
    pid = response["result"]["pid"]
    wait_until_gone(pid)
    # A master that stopped cleanly left nothing; one killed during its
    # shutdown (kill -9) left nodes running, and "stopped" must not be said
    # while they run: stop them as a dead master's nodes are stopped.
    forced = (response.get("final") or {}).get("stop_forced") or []
    return _stop_left_behind(ctl, pid, forced)


def _shutdown_without_answer(ctl: Ctl, no_answer: NoAnswer | None) -> int:
    from stem_core.pidfile import master_alive, read_master_pid
    from stemd import leftovers

    pidfile = ctl.master_pid_file()
    master = None
    alive = master_alive(pidfile)
    if alive is None:
        return ctl.fail(E.FAILED, f"cannot tell whether the master runs: cannot "
                        f"read {pidfile} (run as root or as stemd's user)")
    if alive:
        pid = read_master_pid(pidfile)
        why = str(no_answer) if no_answer else f"no answer on {ctl.socket_path()}"
        if not ctl.args.force:
            return ctl.fail(E.TIMEOUT, f"the master (pid {pid}) runs but {why}; "
                            "'stemctl shutdown --force' terminates it and stops its nodes")
        master = leftovers.verified_master(pidfile)
        if master is None:
            return ctl.fail(E.FAILED, f"{why}, and the process holding {pidfile} "
                            "cannot be verified as its stemd master: not signalling it")
        sys.stderr.write(f"stemctl: {why}: terminating the master (pid {master})\n")
        # Time to stop its nodes itself, as its configuration says; when that
        # cannot be read, the default stop timeout's worth.
        known = not ctl.args.socket and ctl.config() is not None
        grace = ctl.node_wait() if known else TERM_GRACE
        if not leftovers.terminate_master(master, grace):
            return ctl.fail(E.FAILED, f"the master (pid {master}) is still running after SIGKILL")
    # else: no master holds the lock (it died, perhaps while we waited for
    # its answer): stop what it left behind.
    return _stop_left_behind(ctl, master)


def _stop_left_behind(ctl: Ctl, master: int | None, forced: list[str] | None = None) -> int:
    """Stop the nodes a master that is gone left running; "stopped" is said
    only when none is left (SPEC §2.2). ``forced``: the nodes the master's
    own shutdown had to SIGKILL at their stop timeout."""
    from stemd import leftovers

    report = leftovers.stop_left_behind(ctl.config(), ctl.master_pid_file())
    for note in report.notes:
        sys.stderr.write(f"stemctl: {note}\n")
    left = [{"node": s.name, "pid": s.pid} for s in report.stopped]
    if report.failed or report.unknown:
        problems = [f"still running: {f}" for f in report.failed]
        problems += [report.unknown] if report.unknown else []
        return ctl.fail(E.FAILED, "stemd is not running, but " + "; ".join(problems),
                        left_behind=left)
    if master is None and not left:
        raise MasterNotRunning(ctl.socket_path())

    def human() -> None:
        print(f"stemd (pid {master}) stopped" if master else "stemd was not running")
        if forced:
            print(killed_at_stop_timeout(forced))
        if left:
            print("stopped the nodes it left behind: "
                  + abridged([f"{n['node']} (pid {n['pid']})" for n in left]))
    ctl.out({"stopped": True, "pid": master, "left_behind": left,
             "stop_forced": forced or []}, human)
    return OK
