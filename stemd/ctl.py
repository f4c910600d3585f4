"""The ``stemctl`` command.

Exit status (SPEC §3): 0 success; 1 the operation failed (``status``: some
requested node is not RUNNING); 2 usage error (also an unknown node); 3 the
master is not running (LSB's "not running", so init scripts can return it
as is); 4 permission denied.

It never imports the master, and imports rich only to draw a table on a
terminal, so a piped or ``--json`` ``stemctl status`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from stemd.client import AccessDenied, Client, MasterNotRunning

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OK, FAILED, USAGE, NOT_RUNNING, DENIED = 0, 1, 2, 3, 4

_CODES = {"permission_denied": DENIED, "not_found": USAGE, "bad_argument": USAGE,
          "unknown_command": USAGE}

EPILOG = """\
examples:
  stemctl status                      every node, as a table
  stemctl status worker --json        the nodes of program "worker", as JSON
  stemctl start alpha                 start a node and wait until it is RUNNING
  stemctl restart                     rolling restart, one node at a time
  stemctl kill -s USR1 beta           signal a node's main process (--group: its group)
  stemctl logs alpha -n 50 -f         the end of a node's log, then follow it
  stemctl logs -f                     follow every node, lines prefixed "node | "
  stemctl --config /etc/default/stem-2 reload

The socket is found from --socket, $STEMD_SOCKET, the config file
(--config, $STEMD_CONFIG, /etc/default/stem), then /var/run/stem/stemd.sock.
exit status: 0 ok, 1 failed or not all RUNNING, 2 usage, 3 master not running,
4 permission denied.

timeouts (--timeout SECONDS, or 'none'): status, kill, logs, diagnose, config,
version: 10 s. Commands that wait for nodes derive theirs from the config:
stop and shutdown: the longest stop timeout + 10 s (shutdown: 10 s for the
master's answer, then that); start: start-secs + retries x (back-off cap +
start-secs) + 10 s; restart (rolling): every node's stop timeout + start-secs,
plus a start; reload: a stop plus a start. 300 s when the config has errors
or with --socket.
A master that does not answer in time: exit 1, "the master did not answer
within N s".
"""


#: Default --timeout of each command, in seconds; None: derived from the
#: configuration (Ctl.node_wait), for the commands that wait for nodes.
ANSWER_TIMEOUT = 10.0
FALLBACK_WAIT = 300.0  # a wait for nodes when the configuration cannot be read
TERM_GRACE = 20.0  # a hung master's time between TERM and KILL, config unknown
TIMEOUTS: dict[str, float | None] = {
    "status": ANSWER_TIMEOUT, "kill": ANSWER_TIMEOUT, "logs": ANSWER_TIMEOUT,
    "diagnose": ANSWER_TIMEOUT, "version": ANSWER_TIMEOUT, "config": ANSWER_TIMEOUT,
    "healthcheck": ANSWER_TIMEOUT,
    "start": None, "stop": None, "restart": None, "reload": None, "shutdown": None,
}
_TIMEOUT_HELP = {
    "start": "default: start-secs + retries x (back-off cap + start-secs) + 10",
    "stop": "default: the longest stop timeout + 10",
    "restart": "default: each node's stop timeout + start-secs, plus a start, + 10",
    "reload": "default: the longest stop timeout + a start + 10",
    "shutdown": "default: 10 for the answer, then the longest stop timeout + 10",
}


class NoAnswer(Exception):
    """The master did not answer within the timeout (hung, stopped, or its
    connection queue full)."""

    def __init__(self, seconds: float | None, detail: str = "") -> None:
        super().__init__(seconds, detail)
        self.seconds = seconds
        self.detail = detail

    def __str__(self) -> str:
        why = f" ({self.detail})" if self.detail and self.detail != "timed out" else ""
        return f"the master did not answer within {self.seconds:g} s{why}"


class Ctl:
    """Resolved options of one stemctl run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        self._config: Any = None
        self._config_error: Exception | None = None
        self._warned = False

    # The configuration is read lazily: most commands need only the socket.
    def config(self, required: bool = False) -> Any:
        if self._config is None and self._config_error is None:
            from stem_core.config import config_path, load_config
            from stem_core.errors import ConfigError

            path = config_path(self.args.config)
            try:
                self._config = load_config(path)
            except ConfigError as exc:
                self._config_error = exc
        if required and self._config_error is not None:
            raise self._config_error
        return self._config

    def socket_path(self) -> str:
        """--socket, else what the config file (with $STEMD_SOCKET over it)
        names, read cheaply and even when the rest of the file has errors
        (the key's own line is read leniently): never silently another
        master's default socket."""
        if self.args.socket:
            return self.args.socket
        return self._master_path("STEMD_SOCKET")

    def master_pid_file(self) -> str:
        return self._master_path("STEMD_MASTER_PID_FILE")

    def _master_path(self, key: str) -> str:
        from stem_core.locate import config_path, master_path

        path = config_path(self.args.config)
        problems: list[Any] = []
        value = master_path(key, path, problems=problems)
        if problems and not self._warned:
            self._warned = True
            sys.stderr.write(f"stemctl: warning: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                             + f"\n  {key} was read from its own line: {value}\n")
        return value

    def timeout(self) -> float | None:
        """Seconds to wait for the master's answer: --timeout, else the
        command's default (TIMEOUTS), derived from the configuration for the
        commands that wait for nodes. None: wait for ever."""
        given = self.args.timeout
        if given is not None:
            return None if given == 0 else given
        default = TIMEOUTS.get(self.args.command, ANSWER_TIMEOUT)
        return default if default is not None else self.node_wait()

    def node_wait(self) -> float:
        """How long the command may legitimately wait for nodes, from the
        configuration (stop timeouts, start-secs, retries and back-off)."""
        # With --socket no config file is named (the default one may be
        # another fleet's), and stemctl does not load one it does not need.
        config = None if self.args.socket else self.config()
        if config is None or not config.nodes:
            return FALLBACK_WAIT
        nodes = config.nodes
        stop = max(n.stop_timeout for n in nodes)
        start = max(n.start_secs + n.start_retries * (n.backoff_max + n.start_secs)
                    for n in nodes)
        cmd = self.args.command
        if cmd in ("stop", "shutdown"):
            wait = stop
        elif cmd == "start":
            wait = start
        elif cmd == "restart":  # rolling: one node after the other
            wait = sum(n.stop_timeout + n.start_secs for n in nodes) + start
        else:  # reload: stops, then starts, each in parallel
            wait = stop + start
        return wait + ANSWER_TIMEOUT

    def call(self, cmd: str, hold: bool = False, **args: Any) -> dict[str, Any]:
        timeout = self.timeout()
        hold_timeout = None
        if hold:  # shutdown: a quick answer, then the wait for the nodes
            hold_timeout = timeout if self.args.timeout is not None else self.node_wait()
            timeout = ANSWER_TIMEOUT if self.args.timeout is None else timeout
        try:
            return Client(self.socket_path(), timeout=timeout).call(
                cmd, hold, hold_timeout=hold_timeout, **args)
        except TimeoutError as exc:
            raise NoAnswer(timeout, str(exc)) from None

    def out(self, value: Any, human: Callable[[], None]) -> None:
        if self.json:
            from stemd.render import print_json

            print_json(value)
        else:
            human()


def _error(ctl: Ctl, response: dict[str, Any]) -> int:
    err = response.get("error", {})
    if ctl.json:
        from stemd.render import print_json

        print_json(response)
    else:
        sys.stderr.write(f"stemctl: {err.get('message', 'failed')}\n")
        if err.get("hint"):
            sys.stderr.write(f"  hint: {err['hint']}\n")
        result = response.get("result")
        if isinstance(result, list) and result and isinstance(result[0], str):
            for line in result:
                sys.stderr.write(f"  {line}\n")
    return _CODES.get(err.get("code", ""), FAILED)


def _nodes_line(nodes: list[dict[str, Any]]) -> None:
    for n in nodes:
        pid = f" (pid {n['pid']})" if n.get("pid") else ""
        print(f"{n['node']}: {n['state']}{pid}")


def _fail(ctl: Ctl, code: int, name: str, *messages: str, hint: str | None = None,
          **extra: Any) -> int:
    """An error raised before any response came: on stderr, or with --json as
    the same error object a master would send (scripts parse one shape);
    ``extra`` adds fields to that object (``left_behind``)."""
    if ctl.json:
        from stemd.render import print_json

        error: dict[str, Any] = {"code": name, "message": "; ".join(messages)}
        if hint:
            error["hint"] = hint
        print_json({"v": 1, "ok": False, "error": error, **extra})
    else:
        for message in messages:
            sys.stderr.write(f"stemctl: {message}\n")
        if hint:
            sys.stderr.write(f"  hint: {hint}\n")
    return code


def denied_message(path: str) -> tuple[str, str]:
    """Why connecting to the socket was refused, from its owner, group and
    mode, and what grants access (SPEC §3: name the group and the key)."""
    import grp
    import pwd
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        return (f"permission denied on {path} ({exc.strerror})",
                "run as root, or ask for access to the socket's directory")
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o060 == 0o060:
        return (f"permission denied on {path} (mode {mode:04o}, owner {owner}, group {group})",
                f"run as root, as {owner}, or as a member of group {group!r}, the socket's "
                "group (STEMD_SOCKET_GROUP / [stemd] socket_group)")
    return (f"permission denied on {path} (mode {mode:04o}, owner {owner}: no socket group)",
            f"run as root or as {owner}; to let operators in, set STEMD_SOCKET_GROUP "
            "(TOML [stemd] socket_group) to their group and restart stemd")


# ---------------------------------------------------------------- commands


def cmd_status(ctl: Ctl) -> int:
    from stemd import render

    tty = sys.stdout.isatty() and not ctl.json
    response = ctl.call("status", names=ctl.args.names, stats=not ctl.json or ctl.args.stats)
    if not response["ok"]:
        return _error(ctl, response)
    nodes = response["result"]
    if ctl.json:
        render.print_json(nodes)
    else:
        render.print_status(nodes, tty)
    return OK if all(n["state"] == "RUNNING" for n in nodes) else FAILED


def _simple(cmd: str, **extra: Any) -> Callable[[Ctl], int]:
    def run(ctl: Ctl) -> int:
        args = {k: getattr(ctl.args, v) for k, v in extra.items()}
        response = ctl.call(cmd, names=ctl.args.names, **args)
        if not response["ok"]:
            return _error(ctl, response)
        ctl.out(response["result"], lambda: _nodes_line(response["result"]))
        return OK
    return run


def cmd_stop(ctl: Ctl) -> int:
    response = ctl.call("stop", names=ctl.args.names, wait=not ctl.args.no_wait)
    if not response["ok"]:
        return _error(ctl, response)
    ctl.out(response["result"], lambda: _nodes_line(response["result"]))
    return OK


def cmd_kill(ctl: Ctl) -> int:
    response = ctl.call("kill", names=ctl.args.names, signal=ctl.args.signal,
                        group=ctl.args.group)
    if not response["ok"]:
        return _error(ctl, response)
    result = response["result"]
    whose = "the process groups of " if ctl.args.group else ""
    ctl.out(result, lambda: print(f"sent SIG{ctl.args.signal.upper().removeprefix('SIG')} to "
                                  + whose + ", ".join(result["signalled"])))
    return OK


def cmd_reload(ctl: Ctl) -> int:
    response = ctl.call("reload")
    if not response["ok"]:
        return _error(ctl, response)
    r = response["result"]

    def human() -> None:
        for what in ("added", "removed", "changed"):
            if r[what]:
                print(f"{what}: {', '.join(r[what])}")
        print(f"unchanged: {len(r['unchanged'])} node(s)")
        if r["master_changed"]:
            print(f"master settings changed ({', '.join(r['master_changed'])}): "
                  "restart stemd to apply them")
    ctl.out(r, human)
    return OK


def cmd_shutdown(ctl: Ctl) -> int:
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
        return _error(ctl, response)
    pid = response["result"]["pid"]
    _wait_until_gone(pid)
    # A master that stopped cleanly left nothing; one killed during its
    # shutdown (kill -9) left nodes running, and "stopped" must not be said
    # while they run: stop them as a dead master's nodes are stopped.
    return _stop_left_behind(ctl, pid)


def _shutdown_without_answer(ctl: Ctl, no_answer: NoAnswer | None) -> int:
    from stem_core.pidfile import master_alive, read_master_pid
    from stemd import leftovers

    pidfile = ctl.master_pid_file()
    master = None
    alive = master_alive(pidfile)
    if alive is None:
        return _fail(ctl, FAILED, "failed", f"cannot tell whether the master runs: cannot "
                     f"read {pidfile} (run as root or as stemd's user)")
    if alive:
        pid = read_master_pid(pidfile)
        why = str(no_answer) if no_answer else f"no answer on {ctl.socket_path()}"
        if not ctl.args.force:
            return _fail(ctl, FAILED, "timeout", f"the master (pid {pid}) runs but {why}; "
                         "'stemctl shutdown --force' terminates it and stops its nodes")
        master = leftovers.verified_master(pidfile)
        if master is None:
            return _fail(ctl, FAILED, "failed", f"{why}, and the process holding {pidfile} "
                         "cannot be verified as its stemd master: not signalling it")
        sys.stderr.write(f"stemctl: {why}: terminating the master (pid {master})\n")
        # Time to stop its nodes itself, as its configuration says; when that
        # cannot be read, the default stop timeout's worth.
        known = not ctl.args.socket and ctl.config() is not None
        grace = ctl.node_wait() if known else TERM_GRACE
        if not leftovers.terminate_master(master, grace):
            return _fail(ctl, FAILED, "failed",
                         f"the master (pid {master}) is still running after SIGKILL")
    # else: no master holds the lock (it died, perhaps while we waited for
    # its answer): stop what it left behind.
    return _stop_left_behind(ctl, master)


def _stop_left_behind(ctl: Ctl, master: int | None) -> int:
    """Stop the nodes a master that is gone left running; "stopped" is said
    only when none is left (SPEC §2.2)."""
    from stemd import leftovers

    report = leftovers.stop_left_behind(ctl.config(), ctl.master_pid_file())
    for note in report.notes:
        sys.stderr.write(f"stemctl: {note}\n")
    left = [{"node": s.name, "pid": s.pid} for s in report.stopped]
    if report.failed or report.unknown:
        problems = [f"still running: {f}" for f in report.failed]
        problems += [report.unknown] if report.unknown else []
        return _fail(ctl, FAILED, "failed", "stemd is not running, but " + "; ".join(problems),
                     left_behind=left)
    if master is None and not left:
        raise MasterNotRunning(ctl.socket_path())

    def human() -> None:
        print(f"stemd (pid {master}) stopped" if master else "stemd was not running")
        if left:
            print("stopped the nodes it left behind: "
                  + ", ".join(f"{n['node']} (pid {n['pid']})" for n in left))
    ctl.out({"stopped": True, "pid": master, "left_behind": left}, human)
    return OK


def _wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    """The master closes its end while it exits, a moment before it is
    gone: wait for that moment, so that "shutdown returned" means "the
    master is gone" (what init scripts and ExecStop= rely on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = b"stemd" in f.read()
        except (OSError, IndexError):
            return  # gone (or no /proc to ask)
        if state in (b"Z", b"X") or not ours:
            return  # exited; a zombie only awaits its parent
        time.sleep(0.005)


def cmd_logs(ctl: Ctl) -> int:
    """The master names each node's log; stemctl reads the files itself, as
    the operator (issue 11 B1: a node controls its log's size and shape, and
    reading it inside the master stalled supervision). One named node: its
    lines as they are. No name or several: each line prefixed ``node | ``."""
    from stemd import logtail

    response = ctl.call("logs", names=ctl.args.names)
    if not response["ok"]:
        return _error(ctl, response)
    logs = [(e["node"], e["path"]) for e in response["result"]["logs"]]
    single = len(ctl.args.names) == 1 and len(logs) == 1
    elsewhere = [name for name, path in logs if path == "-"]
    if elsewhere:
        message = (f"{', '.join(elsewhere)}: logs to the master's output; see the "
                   "container's or the journal's log")
        if single:
            return _fail(ctl, FAILED, "failed", message)
        sys.stderr.write(f"stemctl: {message}\n")
    logs = [(name, path) for name, path in logs if path != "-"]
    tails: list[tuple[str, str, list[bytes], int]] = []
    status = OK
    for name, path in logs:
        try:
            lines, size = logtail.tail(path, ctl.args.lines)
        except FileNotFoundError:
            if not ctl.args.follow:
                status = _fail(ctl, FAILED, "failed", f"cannot read {path}: no such file "
                               f"(has {name} written anything yet?)")
                continue
            lines, size = [], 0  # nothing written yet: follow waits for it
        except OSError as exc:
            status = _fail(ctl, FAILED, "failed", logtail.cannot_read(path, exc))
            continue
        tails.append((name, path, lines, size))
    if ctl.json and not ctl.args.follow:
        from stemd.render import print_json

        records = [{"node": name, "path": path, "size": size,
                    "lines": [line.decode("utf-8", "replace") for line in lines]}
                   for name, path, lines, size in tails]
        print_json(records[0] if single and records else records)
        return status
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    marks = [b""] if single else logtail.prefixes([t[0] for t in tails], colour)
    out = sys.stdout.buffer
    try:
        for (_name, _path, lines, _size), mark in zip(tails, marks, strict=True):
            out.write(b"".join(mark + line + b"\n" for line in lines))
        out.flush()
        if ctl.args.follow and tails:
            logtail.follow([logtail.Followed(name, path, size, mark) for
                            (name, path, _lines, size), mark in zip(tails, marks, strict=True)])
    except KeyboardInterrupt:
        return status
    except BrokenPipeError:
        # the reader (head, less) is gone: no traceback, and no second one at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status
    except OSError as exc:
        return _fail(ctl, FAILED, "failed", f"cannot follow: {exc}")
    return status


def cmd_healthcheck(ctl: Ctl) -> int:
    from stem_core.pidfile import master_alive, read_master_pid

    path = ctl.args.pidfile or ctl.master_pid_file()
    alive = master_alive(path)
    pid = read_master_pid(path)
    if alive is False and ctl.args.pidfile and pid:
        alive = _pid_alive(pid)  # a node's PID file: not locked, check the process
    ok = bool(alive)
    ctl.out({"alive": ok, "pid": pid if ok else None, "pidfile": path},
            lambda: print(f"alive (pid {pid})" if ok else f"not running ({path})"))
    return OK if ok else FAILED


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_diagnose(ctl: Ctl) -> int:
    from stem_core.errors import ConfigError, Problem
    from stem_core.pidfile import master_alive
    from stemd import checks
    from stemd.client import socket_listening

    problems: list[Problem] = []
    notes: list[str] = []
    try:
        config = ctl.config(required=True)
    except ConfigError as exc:
        problems.extend(exc.problems)
        config = None
    master: dict[str, Any] | None = None
    if config is not None:
        alive = master_alive(config.master.pid_file)
        problems.extend(checks.check_environment(config, creating=config.master.create_dirs))
        problems.extend(checks.stale_pidfiles(config))
        sock = ctl.socket_path()
        exists = os.path.exists(sock)
        if alive and not exists:
            problems.append(Problem(f"the master runs but its socket {sock} is missing",
                                    hint="restart stemd to recreate it"))
        elif exists and not socket_listening(sock):
            problems.append(Problem(f"dead socket {sock}: nobody listens",
                                    hint="start stemd; it replaces the file"))
        if alive:
            try:
                response = ctl.call("diagnose")
                master = response.get("result")
            except (MasterNotRunning, AccessDenied, NoAnswer, OSError) as exc:
                problems.append(Problem(f"the master does not answer on {sock}: {exc}"))
        else:
            notes.append("the master is not running")
    warnings = list(config.warnings) if config is not None else []
    result = {"problems": [{"message": p.message, "hint": p.hint, "file": p.file,
                            "line": p.line, "key": p.key, "text": str(p)} for p in problems],
              "warnings": [str(w) for w in warnings], "master": master, "notes": notes}

    def human() -> None:
        for note in notes:
            print(f"note: {note}")
        if master:
            states = ", ".join(f"{v} {k}" for k, v in sorted(master["states"].items()))
            print(f"master pid {master['pid']}: {states}")
        for p in problems:
            print(f"problem: {p}")
        for w in warnings:  # valid, probably not meant: never a failure
            print(f"warning: {w}")
        if not problems:
            print("no problems found")
    ctl.out(result, human)
    return FAILED if problems else OK


def cmd_config(ctl: Ctl) -> int:
    from stem_core.config import dump_toml, to_dict
    from stem_core.errors import ConfigError

    try:
        config = ctl.config(required=True)
    except ConfigError as exc:
        for p in exc.problems:
            sys.stderr.write(f"stemctl: {p}\n")
        return FAILED
    if ctl.json:
        from stemd.render import print_json

        print_json(to_dict(config))
    elif ctl.args.toml:
        sys.stdout.write(dump_toml(config))
    else:
        import shlex

        print(f"# {config.source}")
        for name in ("pid_file", "socket", "socket_group", "log_file", "log_level", "user",
                     "group"):
            print(f"master.{name} = {getattr(config.master, name)}")
        for node in config.nodes:
            print(f"{node.name} ({node.program}): {shlex.join(node.argv)}")
            print(f"    pid file: {node.pid_file}  log file: {node.log_file}  "
                  f"user: {node.user or '(invoking user)'}")
    return OK


def cmd_version(ctl: Ctl) -> int:
    from stem_core import __version__

    master: dict[str, Any] | None
    try:
        response = ctl.call("version")
        master = response.get("result") if response.get("ok") else None
    except (MasterNotRunning, AccessDenied):
        master = None
    ctl.out({"stemctl": __version__, "master": master},
            lambda: print(f"stemctl {__version__}\n"
                          + (f"stemd {master['version']} (pid {master['pid']}, protocol "
                             f"{master['protocol']})" if master else "stemd: not running")))
    return OK


# ------------------------------------------------------------------ parser


COMMANDS = ("status", "start", "stop", "restart", "kill", "reload", "shutdown", "logs",
            "healthcheck", "diagnose", "config", "version")
_GLOBAL_WITH_VALUE = ("--config", "-c", "--socket", "-S", "--timeout")


def command_word(argv: list[str]) -> str | None:
    """The command named in ``argv``, found without building the parser."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
        elif word in ("-h", "--help"):
            return None
    return None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse builds a formatter at every add_argument(), not only for
    --help, and its default width comes from shutil.get_terminal_size():
    importing shutil costs every stemctl run ~4 ms. Same width, found with
    os alone (COLUMNS, else the terminal on stdout, else 80)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _columns())
        super().__init__(prog, **kwargs)


def _count(text: str) -> int:
    """A line count for ``logs -n``: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _seconds(text: str) -> float:
    """--timeout's value: seconds > 0, or 'none' (0: wait for ever)."""
    if text.lower() in ("none", "inf", "infinity"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value:
        raise argparse.ArgumentTypeError("must be more than 0 (or 'none')")
    return value


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` just that command's subparser:
    building all twelve costs stemctl ~8 ms per run, for help text that is
    shown only with --help or after a usage error."""
    # absorbs the add_argument() calls of the commands that are skipped
    unused = argparse.ArgumentParser(add_help=False, conflict_handler="resolve",
                                     formatter_class=_Formatter)
    parser = argparse.ArgumentParser(
        prog="stemctl", description="Control a running stemd master.", epilog=EPILOG,
        formatter_class=_Formatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", metavar="PATH", help="the master's config file")
    where.add_argument("--socket", "-S", metavar="PATH", help="the master's control socket")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="give up waiting for the master after this long ('none': "
                        "wait for ever); each command has a default, see below")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[Ctl], int], help: str, example: str,
            names: bool = True) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return unused
        p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                           formatter_class=_Formatter)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output")
        p.add_argument("--timeout", type=_seconds, default=argparse.SUPPRESS,
                       metavar="SECONDS", help="give up when the master has not answered "
                       f"after SECONDS, or 'none' "
                       f"({_TIMEOUT_HELP.get(name, f'default {ANSWER_TIMEOUT:g}')})")
        if names:
            p.add_argument("names", nargs="*", metavar="NAME",
                           help="nodes or programs (default: all)")
        p.set_defaults(fn=fn)
        return p

    p = add("status", cmd_status, "show nodes: state, pid, uptime, restarts, CPU, RSS",
            "stemctl status alpha beta")
    p.add_argument("--stats", action="store_true", help="include CPU and RSS in --json")
    add("start", _simple("start"), "start nodes and wait until each is RUNNING or failed",
        "stemctl start worker")
    p = add("stop", cmd_stop, "stop nodes and wait until they are stopped", "stemctl stop beta")
    p.add_argument("--no-wait", action="store_true", help="return at once")
    add("restart", _simple("restart"), "rolling restart: one node at a time, each RUNNING "
        "again before the next", "stemctl restart")
    p = add("kill", cmd_kill, "send a signal to nodes' main processes (--group: their "
            "whole process groups)", "stemctl kill -s HUP alpha")
    p.add_argument("--group", "-g", action="store_true",
                   help="signal each node's whole process group (pool children too), not "
                        "only its main process")
    p.add_argument("-s", "--signal", default="TERM", help="signal name or number (default TERM)")
    add("reload", cmd_reload, "re-read the configuration and apply only the difference",
        "stemctl reload", names=False)
    p = add("shutdown", cmd_shutdown, "stop every node and the master; wait until it is "
            "gone. With no master running, stop the nodes a dead master left behind",
            "stemctl shutdown --force", names=False)
    p.add_argument("--force", action="store_true", help="when the master does not answer "
                   "within the timeout, terminate it (TERM, then KILL) and stop its nodes")
    p = add("logs", cmd_logs, "print or follow nodes' logs (no name or several: each line "
            "prefixed with its node)", "stemctl logs alpha -n 100 -f")
    p.add_argument("-n", "--lines", type=_count, default=20,
                   help="lines to print from each log (default 20)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines, across logrotate's copytruncate and renames")
    p = add("healthcheck", cmd_healthcheck, "exit 0 if the master is alive, 1 otherwise "
            "(needs no socket)", "stemctl healthcheck --pidfile /run/stem/stemd.pid", names=False)
    p.add_argument("--pidfile", metavar="PATH", help="check the process in this PID file")
    add("diagnose", cmd_diagnose, "find missing directories, stale PID files, a dead socket, "
        "config errors", "stemctl diagnose", names=False)
    p = add("config", cmd_config, "print the effective configuration (no master needed)",
            "stemctl config --toml > stem.toml", names=False)
    p.add_argument("--toml", action="store_true", help="as a TOML file")
    add("version", cmd_version, "versions of stemctl and of the running master",
        "stemctl version", names=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stem_core.errors import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_word(argv))
    args = parser.parse_args(argv)
    ctl = Ctl(args)
    try:
        return args.fn(ctl)
    except MasterNotRunning as exc:
        from stem_core.locate import config_path

        config = config_path(args.config)
        return _fail(ctl, NOT_RUNNING, "not_running",
                     f"master not running (no answer on {exc}): start it with "
                     f"'stemd --config {config}'")
    except ConfigError as exc:
        # The file named cannot even be lexed, so which master it means is
        # unknown: a usage error (2), not "failed" (1), which init scripts and
        # healthchecks would read as "not running".
        return _fail(ctl, USAGE, "bad_config",
                     *(str(p) for p in getattr(exc, "problems", [exc])))
    except AccessDenied as exc:
        message, hint = denied_message(str(exc))
        return _fail(ctl, DENIED, "permission_denied", message, hint=hint)
    except NoAnswer as exc:
        return _fail(ctl, FAILED, "timeout", str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
