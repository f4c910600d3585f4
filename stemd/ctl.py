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
  stemctl --config /etc/default/stem-2 reload

The socket is found from --socket, $STEMD_SOCKET, the config file
(--config, $STEMD_CONFIG, /etc/default/stem), then /var/run/stem/stemd.sock.
exit status: 0 ok, 1 failed or not all RUNNING, 2 usage, 3 master not running,
4 permission denied.
"""


class Ctl:
    """Resolved options of one stemctl run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        self._config: Any = None
        self._config_error: Exception | None = None

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
        names, read cheaply and even when the rest of the file has errors:
        never silently another master's default socket."""
        if self.args.socket:
            return self.args.socket
        from stem_core.locate import config_path, master_path

        return master_path("STEMD_SOCKET", config_path(self.args.config))

    def call(self, cmd: str, hold: bool = False, **args: Any) -> dict[str, Any]:
        return Client(self.socket_path(), timeout=self.args.timeout).call(cmd, hold, **args)

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
    response = ctl.call("shutdown", hold=True)
    if not response["ok"]:
        return _error(ctl, response)
    _wait_until_gone(response["result"]["pid"])
    ctl.out({"stopped": True, "pid": response["result"]["pid"]},
            lambda: print(f"stemd (pid {response['result']['pid']}) stopped"))
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
    response = ctl.call("logs", names=[ctl.args.name], lines=ctl.args.lines)
    if not response["ok"]:
        return _error(ctl, response)
    r = response["result"]
    if ctl.json and not ctl.args.follow:
        ctl.out(r, lambda: None)
        return OK
    for line in r["lines"]:
        print(line)
    if ctl.args.follow:
        return _follow(r["path"], r["size"])
    return OK


def _follow(path: str, offset: int) -> int:
    """Follow a log like ``tail -F``: survive truncation and rotation. The
    client reads the file itself (it needs read access); a client may poll,
    the master never does."""
    sys.stdout.flush()
    f = None
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                    f.seek(offset)
                except FileNotFoundError:
                    time.sleep(0.5)
                    continue
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                continue
            st = os.stat(path) if os.path.exists(path) else None
            if st is None or st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell():
                f.close()
                f, offset = None, 0  # rotated or truncated: start the new file
                continue
            time.sleep(0.25)
    except KeyboardInterrupt:
        return OK
    except PermissionError:
        sys.stderr.write(f"stemctl: cannot read {path}: permission denied\n")
        return DENIED
    finally:
        if f is not None:
            f.close()


def cmd_healthcheck(ctl: Ctl) -> int:
    from stemd.daemon import master_alive, read_master_pid

    if ctl.args.pidfile:
        path = ctl.args.pidfile
    else:
        from stem_core.locate import config_path, master_path

        path = master_path("STEMD_MASTER_PID_FILE", config_path(ctl.args.config))
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
    from stemd import checks
    from stemd.control import socket_listening
    from stemd.daemon import master_alive

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
            except (MasterNotRunning, AccessDenied, OSError) as exc:
                problems.append(Problem(f"the master does not answer on {sock}: {exc}"))
        else:
            notes.append("the master is not running")
    result = {"problems": [{"message": p.message, "hint": p.hint, "file": p.file,
                            "line": p.line, "key": p.key, "text": str(p)} for p in problems],
              "master": master, "notes": notes}

    def human() -> None:
        for note in notes:
            print(f"note: {note}")
        if master:
            states = ", ".join(f"{v} {k}" for k, v in sorted(master["states"].items()))
            print(f"master pid {master['pid']}: {states}")
        for p in problems:
            print(f"problem: {p}")
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
        for name in ("pid_file", "socket", "log_file", "log_level", "user", "group"):
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


def cmd_import(ctl: Ctl) -> int:
    """Needs neither the socket nor a stemd config: stemd/importcmd.py."""
    from stemd.importcmd import run

    return run(ctl.args)


def _import_arguments(p: argparse.ArgumentParser, only: str | None) -> None:
    if only in (None, "import"):  # its module is imported only when needed
        from stemd.importcmd import add_arguments

        add_arguments(p)


# ------------------------------------------------------------------ parser


COMMANDS = ("status", "start", "stop", "restart", "kill", "reload", "shutdown", "logs",
            "healthcheck", "diagnose", "config", "version", "import")
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


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


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
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up waiting for the master after this long")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[Ctl], int], help: str, example: str,
            names: bool = True) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return unused
        p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                           formatter_class=_Formatter)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output")
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
    add("shutdown", cmd_shutdown, "stop every node and the master; wait until it is gone",
        "stemctl shutdown", names=False)
    p = add("logs", cmd_logs, "print or follow a node's log", "stemctl logs alpha -n 100 -f",
            names=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--lines", type=int, default=20, help="lines to print (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
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
    _import_arguments(add("import", cmd_import, "translate a supervisord or celeryd "
                          "configuration (no master needed)",
                          "stemctl import supervisord supervisord.conf -o stem.toml",
                          names=False), only)
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
        message = (f"master not running (no answer on {exc}): start it with "
                   f"'stemd --config {config}'")
        if ctl.json:
            from stemd.render import print_json

            print_json({"v": 1, "ok": False, "error": {"code": "not_running",
                                                       "message": message}})
        else:
            sys.stderr.write(f"stemctl: {message}\n")
        return NOT_RUNNING
    except ConfigError as exc:
        # The file named cannot even be lexed, so which master it means is
        # unknown: a usage error (2), not "failed" (1), which init scripts and
        # healthchecks would read as "not running".
        for problem in getattr(exc, "problems", [exc]):
            sys.stderr.write(f"stemctl: {problem}\n")
        return USAGE
    except AccessDenied as exc:
        sys.stderr.write(f"stemctl: permission denied on {exc}: run as root, as stemd's user, "
                         "or as a member of the socket's group\n")
        return DENIED
    except TimeoutError:
        sys.stderr.write("stemctl: the master did not answer in time\n")
        return FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
