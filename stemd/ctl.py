"""The ``stemctl`` command: argument parsing and dispatch.

Exit status (SPEC §3): 0 success; 1 the operation failed (``status``: some
requested node is not RUNNING); 2 usage error (also an unknown node); 3 the
master is not running (LSB's "not running", so init scripts can return it
as is); 4 permission denied. Each comes from an error code
(:class:`stem_core.protocol.ErrorCode`) in one place, :data:`EXIT_CODES`.

Each command is named once, in :data:`COMMANDS`: its name, its help and
example, its arguments, its default timeout, and where its code lives. **To
add a command**: write its module (``stemd/commands/NAME.py``) with a
function ``run(ctl: Ctl) -> int``, and add one :class:`Command` to
:data:`COMMANDS` (with an ``add_arguments`` function if it takes options; a
control command also needs its handler in ``stemd/handlers.py``). A module
may instead carry ``HELP``, ``EXAMPLE`` and ``add_arguments`` itself (the
entry's help None), as ``stemd/ctl_top.py`` does.
The command's module is imported only when it runs.

It never imports the master (tests/test_layering.py runs each command and
checks), and imports rich only to draw a table on a terminal, so a piped or
``--json`` ``stemctl status`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import namedtuple

from stem_core.protocol import ErrorCode as E
from stemd.client import AccessDenied, Client, MasterNotRunning, NoAnswer
from stemd.helpformat import HelpFormatter

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from stem_core.model import Policy

OK, FAILED, USAGE, NOT_RUNNING, DENIED = 0, 1, 2, 3, 4

#: the exit status of each error code; any other: FAILED
EXIT_CODES = {E.PERMISSION_DENIED: DENIED, E.NOT_FOUND: USAGE, E.BAD_ARGUMENT: USAGE,
              E.UNKNOWN_COMMAND: USAGE, E.BAD_CONFIG: USAGE, E.NOT_RUNNING: NOT_RUNNING}

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


ANSWER_TIMEOUT = 10.0  # default --timeout of the commands that wait only for an answer
FALLBACK_WAIT = 300.0  # a wait for nodes when the configuration cannot be read
TERM_GRACE = 20.0  # a hung master's time between TERM and KILL, config unknown


class Ctl:
    """Resolved options of one stemctl run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        self._config: Any = None
        self._config_error: Exception | None = None
        self._warned = False
        self.failed = OK  # the exit status of the last error said (fail, error)

    # The configuration is read lazily: most commands need only the socket.
    def config(self, required: bool = False) -> Any:
        if self._config is None and self._config_error is None:
            from stem_core.config import load_config
            from stem_core.errors import ConfigError
            from stem_core.locate import config_path

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
            return str(self.args.socket)
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
        command's default (its Command.timeout), derived from the configuration for the
        commands that wait for nodes. None: wait for ever."""
        given = self.args.timeout
        if given is not None:
            return None if given == 0 else given
        default = COMMANDS[self.args.command].timeout
        return default if default is not None else self.node_wait()

    def node_wait(self) -> float:
        """How long the command may legitimately wait for nodes, from the
        configuration (stop timeouts, start-secs, retries and back-off)."""
        # With --socket no config file is named (the default one may be
        # another fleet's), and stemctl does not load one it does not need.
        config = None if self.args.socket else self.config()
        if config is None or not config.nodes:
            return FALLBACK_WAIT
        policies = [n.policy for n in config.nodes]
        # Priority groups start (and stop) one after the other, each group's
        # nodes in parallel: the longest of each group, summed.
        groups: dict[int, list[Policy]] = {}
        for node in config.nodes:
            groups.setdefault(node.priority, []).append(node.policy)
        stop = sum(max(p.stop_timeout for p in group) for group in groups.values())
        start = sum(max(p.start_secs + p.start_retries * (p.backoff_max + p.start_secs)
                        for p in group) for group in groups.values())
        cmd = self.args.command
        if cmd in ("stop", "shutdown"):
            wait = stop
        elif cmd == "start":
            wait = start
        elif cmd == "restart":  # rolling: one node after the other
            wait = sum(p.stop_timeout + p.start_secs for p in policies) + start
        else:  # reload: stops, then starts, each in parallel
            wait = stop + start
        return wait + ANSWER_TIMEOUT

    def call(self, cmd: str, hold: bool = False, **args: Any) -> dict[str, Any]:
        given = self.args.timeout
        timeout = None if given == 0 else given
        extend: Callable[[], float | None] | None = None
        hold_timeout: float | Callable[[], float | None] | None = None
        if hold:  # shutdown: a quick answer, then the wait for the nodes
            hold_timeout = timeout if given is not None else self.node_wait
            timeout = ANSWER_TIMEOUT if given is None else timeout
        elif given is None:
            timeout = COMMANDS[self.args.command].timeout
            if timeout is None:
                # Waits for nodes: the deadline from the configuration is
                # worked out only if the answer is not in within
                # ANSWER_TIMEOUT (node_wait() is never less): a quick stop
                # does not pay for reading the whole configuration.
                timeout, extend = ANSWER_TIMEOUT, self.node_wait
        try:
            return Client(self.socket_path(), timeout=timeout, extend=extend).call(
                cmd, hold, hold_timeout=hold_timeout, **args)
        except TimeoutError as exc:
            waited = self.timeout() if extend is not None else timeout
            raise NoAnswer(waited, str(exc)) from None

    def out(self, value: Any, human: Callable[[], None]) -> None:
        if self.json:
            from stemd.render import print_json

            print_json(value)
        else:
            human()

    def error(self, response: dict[str, Any]) -> int:
        """The master's error response: on stderr (with the lines of its
        result, if any), or as it is with --json. Returns the exit status."""
        err = response.get("error", {})
        self.failed = EXIT_CODES.get(err.get("code", ""), FAILED)  # before a write can fail
        if self.json:
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
        return self.failed

    def fail(self, code: E, *messages: str, hint: str | None = None, **extra: Any) -> int:
        """An error found before or instead of a response: on stderr, or with
        --json as the same error object a master would send (scripts parse
        one shape); ``extra`` adds fields to it (``left_behind``). Returns
        the exit status."""
        self.failed = EXIT_CODES.get(code, FAILED)  # before a write can fail
        if self.json:
            from stem_core.protocol import error
            from stemd.render import print_json

            print_json({**error(code, "; ".join(messages), hint), **extra})
        else:
            for message in messages:
                sys.stderr.write(f"stemctl: {message}\n")
            if hint:
                sys.stderr.write(f"  hint: {hint}\n")
        return self.failed


# ---------------------------------------------------------------- commands

# collections.namedtuple, not a dataclass: importing dataclasses costs every
# stemctl run ~9 ms. ``run`` is "MODULE:FUNCTION" (MODULE in stemd.commands
# unless dotted), imported only when the command runs; ``timeout`` None: derived from the
# configuration (Ctl.node_wait), explained by ``timeout_help``. ``names``: True, NAME...
# (none: every node); "required", at least one NAME; False, none taken.
Command = namedtuple("Command", "name run help example add_arguments names timeout timeout_help",
                     defaults=(None, True, ANSWER_TIMEOUT, None))


def _status_args(p: argparse.ArgumentParser) -> None:
    from stemd.render import COLUMN_HELP

    p.add_argument("--stats", action="store_true", help="include CPU, RSS and descendants "
                   "in --json (cpu_percent, cpu_seconds, rss, children)")
    p.add_argument("--pss", action="store_true", help="also the proportional set size of "
                   "each tree (pss; reads /proc/PID/smaps_rollup: slower)")
    p.epilog = f"{COLUMN_HELP}\n\nexample:\n  stemctl status alpha beta"


def _stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="return at once")


def _kill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", "-g", action="store_true",
                   help="signal each node's whole process group (pool children too), not "
                        "only its main process")
    p.add_argument("-s", "--signal", default="TERM", help="signal name or number (default TERM)")


def _shutdown_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="when the master does not answer "
                   "within the timeout, terminate it (TERM, then KILL) and stop its nodes")


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--lines", type=_count, default=20,
                   help="lines to print from each log (default 20)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines, across logrotate's copytruncate and renames")


def _healthcheck_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pidfile", metavar="PATH", help="check the process in this PID file")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--toml", action="store_true", help="as a TOML file")


def _import_args(p: argparse.ArgumentParser) -> None:
    from stemd.importcmd import add_arguments  # only when its subparser is built

    add_arguments(p)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status", "nodes:status", "show nodes: state, pid, uptime, restarts, CPU, RSS",
            "stemctl status alpha beta", _status_args),
    Command("start", "nodes:start", "start nodes and wait until each is RUNNING or failed",
            "stemctl start worker", timeout=None,
            timeout_help="start-secs + retries x (back-off cap + start-secs) + 10"),
    Command("stop", "nodes:stop", "stop nodes and wait until they are stopped",
            "stemctl stop beta", _stop_args, timeout=None,
            timeout_help="the longest stop timeout + 10"),
    Command("restart", "nodes:restart", "rolling restart: one node at a time, each RUNNING "
            "again before the next", "stemctl restart", timeout=None,
            timeout_help="each node's stop timeout + start-secs, plus a start, + 10"),
    # kill needs a NAME (SPEC §3, as supervisorctl's signal and systemctl
    # kill do): a bare `stemctl kill -s KILL` must not take down the fleet
    Command("kill", "nodes:kill", "send a signal to nodes' main processes (--group: their "
            "whole process groups)", "stemctl kill -s HUP alpha", _kill_args,
            names="required"),
    Command("reload", "nodes:reload", "re-read the configuration and apply only the "
            "difference", "stemctl reload", names=False, timeout=None,
            timeout_help="the longest stop timeout + a start + 10"),
    Command("shutdown", "shutdown:shutdown", "stop every node and the master; wait until it "
            "is gone. With no master running, stop the nodes a dead master left behind",
            "stemctl shutdown --force", _shutdown_args, names=False, timeout=None,
            timeout_help="10 for the answer, then the longest stop timeout + 10"),
    Command("logs", "logs:show_logs", "print or follow nodes' logs (no name or several: each "
            "line prefixed with its node)", "stemctl logs alpha -n 100 -f", _logs_args),
    Command("healthcheck", "info:healthcheck", "exit 0 if the master is alive, 1 otherwise "
            "(needs no socket)", "stemctl healthcheck --pidfile /run/stem/stemd.pid",
            _healthcheck_args, names=False),
    Command("diagnose", "info:diagnose", "find missing directories, stale PID files, a dead "
            "socket, config errors", "stemctl diagnose", names=False),
    Command("config", "info:show_config", "print the effective configuration (no master "
            "needed)", "stemctl config --toml > stem.toml", _config_args, names=False),
    Command("version", "info:show_version", "versions of stemctl and of the running master",
            "stemctl version", names=False),
    Command("import", "info:import_config", "translate a supervisord or celeryd "
            "configuration (no master needed)",
            "stemctl import supervisord supervisord.conf -o stem.toml", _import_args,
            names=False),
    # issue 15's commands keep their name, help, example and arguments in
    # their own module (stemd/ctl_NAME.py), read only when its parser is built
    Command("metrics", "stemd.ctl_metrics:run", None, None, names=False),
    Command("scale", "stemd.ctl_scale:run", None, None, names=False, timeout=None,
            timeout_help="the longest stop timeout + a start + 10"),
    Command("top", "stemd.ctl_top:run", None, None, names=False),
)}


def load(command: Command) -> Callable[[Ctl], int]:
    """The command's function, its module imported now (not at start-up)."""
    module, _, function = command.run.partition(":")
    run: Callable[[Ctl], int] = getattr(__import__(_module(module), fromlist=[function]),
                                        function)
    return run


def _module(name: str) -> str:
    """``nodes`` is stemd.commands.nodes; a dotted name is itself."""
    return name if "." in name else f"stemd.commands.{name}"


def _described(command: Command) -> Command:
    """A command whose help, example and arguments live in its own module
    (help None): read them from there, importing it."""
    if command.help is not None:
        return command
    module = __import__(_module(command.run.partition(":")[0]), fromlist=["HELP"])
    return command._replace(help=module.HELP, example=module.EXAMPLE,
                            add_arguments=module.add_arguments)


# ------------------------------------------------------------------ parser


_GLOBAL_WITH_VALUE = ("--config", "-c", "--socket", "-S", "--timeout")


def command_word(argv: list[str]) -> str | None:
    """The command named in ``argv``, found without building the parser, so
    that only its subparser is built (see :func:`build_parser`)."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
        elif word in ("-h", "--help"):
            return None
    return None


def _count(text: str) -> int:
    """A line count for ``logs -n``: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of lines (0 or more): {text!r}")
    return value


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

class UsageError(Exception):
    """A usage error argparse found, raised instead of printed (with an exit)
    so that :func:`main` can say it in JSON with --json."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """stemctl's parser and (argparse makes them of the same class) each
    command's: a usage error is raised as :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _usage_error(exc: UsageError, argv: list[str]) -> int:
    """argparse's usage error: as argparse says it (usage line, then the
    error), or with --json (anywhere before ``--``: parsing stopped short of
    it, so look in ``argv``) the error object every other client-side error
    is, on stdout. Exit 2 either way."""
    wants_json = "--json" in (argv[:argv.index("--")] if "--" in argv else argv)
    if wants_json:  # "scale: argument N: ...", as `import` words its own
        command = exc.parser.prog.removeprefix("stemctl").strip()
        return Ctl(argparse.Namespace(json=True)).fail(
            E.BAD_ARGUMENT, f"{command}: {exc.message}" if command else exc.message,
            hint=f"{exc.parser.prog} --help")
    exc.parser.print_usage(sys.stderr)
    sys.stderr.write(f"{exc.parser.prog}: error: {exc.message}\n")
    return USAGE


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` just that command's subparser:
    building all twelve costs stemctl ~8 ms per run, for help text that is
    shown only with --help or after a usage error."""
    parser = Parser(
        prog="stemctl", description="Control a running stemd master.", epilog=EPILOG,
        formatter_class=HelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", metavar="PATH", help="the master's config file")
    where.add_argument("--socket", "-S", metavar="PATH", help="the master's control socket")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="give up waiting for the master after this long ('none': "
                        "wait for ever); each command has a default, see below")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        if only is not None and command.name != only:
            continue
        command = _described(command)
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           epilog=f"example:\n  {command.example}", formatter_class=HelpFormatter)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output")
        default = (f"default: {command.timeout_help}" if command.timeout is None
                   else f"default {command.timeout:g}")
        p.add_argument("--timeout", type=_seconds, default=argparse.SUPPRESS,
                       metavar="SECONDS", help="give up when the master has not answered "
                       f"after SECONDS, or 'none' ({default})")
        if command.names == "required":
            p.add_argument("names", nargs="+", metavar="NAME",
                           help="nodes or programs (a program: each of its nodes)")
        elif command.names:
            p.add_argument("names", nargs="*", metavar="NAME",
                           help="nodes or programs (default: all)")
        if command.add_arguments is not None:
            command.add_arguments(p)
    return parser


def _still_running(ctl: Ctl) -> list[tuple[str, int]]:
    """The nodes a master that does not answer left running (see
    leftovers.still_running); none looked for with --socket, which names no
    configuration (the default file may be another fleet's)."""
    if ctl.args.socket:
        return []
    from stem_core.errors import StemError
    from stemd import leftovers

    try:
        return leftovers.still_running(ctl.config(), ctl.master_pid_file())
    except (OSError, StemError):  # an aside: the error it adds to is the answer
        return []


def _silence_stdout() -> None:
    """stdout's reader is gone: what is still buffered goes nowhere, so the
    interpreter's flush at exit does not fail a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _reader_gone() -> bool:
    """Has stdout's reader gone (a pipe: POLLERR; a socket: POLLHUP)? A
    BrokenPipeError from anything else, the master's socket, is not that."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
    try:
        return any(event & (select.POLLERR | select.POLLHUP) for _fd, event in poller.poll(0))
    except OSError:  # pragma: no cover - stdout closed
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctl: Ctl | None = None
    status: int | None = None
    try:
        parser = build_parser(command_word(argv))
        try:
            args = parser.parse_args(argv)
        except UsageError as exc:
            status = _usage_error(exc, argv)
        else:
            ctl = Ctl(args)
            status = _run(ctl)
        sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
        return status
    except SystemExit:  # --help, printed: flushed here, for the same reason
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        raise
    except BrokenPipeError:
        if not _reader_gone():
            raise
        # `stemctl top | head -5`, `stemctl --json status | head -c 300`: the
        # reader has what it wanted. No traceback, and no second one when the
        # interpreter flushes stdout at exit; the exit status is what the
        # command had come to (its own, or that of an error it said), as if
        # it had ended there.
        _silence_stdout()
        if status is not None:
            return status
        return ctl.failed if ctl is not None else USAGE


def _run(ctl: Ctl) -> int:
    """The command, and the client-side errors it may end in, each said as
    its exit status (SPEC §3) in one place."""
    from stem_core.errors import ConfigError

    args = ctl.args
    try:
        return load(COMMANDS[args.command])(ctl)
    except MasterNotRunning as exc:
        from stem_core.locate import config_path

        config = config_path(args.config)
        messages = [f"master not running (no answer on {exc}): start it "
                    f"with 'stemd --config {config}'"]
        left = _still_running(ctl)
        if left:
            from stem_core.wording import LISTED_IN_FULL

            names = ", ".join(f"{name} (pid {pid})" for name, pid in left[:LISTED_IN_FULL])
            more = f" and {len(left) - LISTED_IN_FULL} more" if len(left) > LISTED_IN_FULL else ""
            messages.append(f"{len(left)} of its nodes still run: {names}{more}; "
                            f"'stemd --config {config}' adopts them, 'stemctl shutdown' stops "
                            "them")
        return ctl.fail(E.NOT_RUNNING, *messages,
                        left_running=[{"node": name, "pid": pid} for name, pid in left])
    except ConfigError as exc:
        # The file named does not exist (a typo: never the default master,
        # another fleet's) or cannot even be lexed, so which master it means
        # is unknown: a usage error (2), not "failed" (1), which init scripts
        # and healthchecks would read as "not running", nor 3, which an init
        # script's stop reads as "already stopped".
        code = ctl.fail(E.BAD_CONFIG, *(str(p) for p in getattr(exc, "problems", [exc])))
        # healthcheck: 0 alive, 1 otherwise (SPEC §3); Docker reserves 2
        return 1 if getattr(ctl.args, "command", None) == "healthcheck" else code
    except AccessDenied as exc:
        from stemd.client import denied_message

        message, hint = denied_message(str(exc))
        return ctl.fail(E.PERMISSION_DENIED, message, hint=hint)
    except NoAnswer as exc:
        return ctl.fail(E.TIMEOUT, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
