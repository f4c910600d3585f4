"""The ``stemd`` command: check, dry-run, or run the master.

``stemd [--config PATH] [--foreground] [--check] [--dry-run] [overrides...]``
where an override is ``KEY=VALUE`` (``STEMD_NODES=4``) or the key's flag
(``--nodes 4``). Exit status: 0 ready / valid, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from stem_core import __version__
from stem_core import keys as K
from stem_core.config import load_config
from stem_core.errors import ConfigError, Problem, StemError
from stem_core.locate import config_path
from stemd.helpformat import HelpFormatter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stem_core.model import Config

EPILOG = """\
examples:
  stemd --config /etc/default/stem            start the daemon (returns once it is ready)
  stemd --config /etc/stem.toml --foreground  run in front (containers, Type=notify)
  stemd --check                               validate the configuration and this host
  stemd --dry-run STEMD_NODES=4               print what would run, with an override

exit status: 0 ready or valid, 1 failure (reason on stderr), 2 usage error.
"""


def _flag(key: K.Key) -> str:
    assert key.env
    return "--" + key.env.removeprefix("STEMD_").removeprefix("STEM_").lower().replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemd", description="Supervise a fleet of worker nodes.", epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--config", "-c", metavar="PATH",
                        help="env file or .toml (default: $STEMD_CONFIG or /etc/default/stem)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--foreground", "-f", action="store_true",
                      help="do not detach; log to stderr; systemd notify when NOTIFY_SOCKET is set")
    mode.add_argument("--check", action="store_true",
                      help="validate the configuration and this host, list every problem, exit")
    mode.add_argument("--dry-run", action="store_true",
                      help="print each node's command, PID file and log file, exit")
    parser.add_argument("--version", action="version", version=f"stemd {__version__}")
    overrides = parser.add_argument_group("overrides (each key of the configuration)")
    for key in K.KEYS:
        if key.env and not key.env.startswith("STEM_"):
            overrides.add_argument(_flag(key), dest=f"key:{key.env}", metavar="VALUE",
                                   help=key.doc.replace("%", "%%"))
    parser.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                        help="override a key, e.g. STEMD_NODES=4")
    return parser


def _overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    values = {}
    for item in args.assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"expected KEY=VALUE, got {item!r}")
        values[name] = value
    for dest, value in vars(args).items():
        if dest.startswith("key:") and value is not None:
            values[dest[4:]] = value
    return values


def _print_problems(problems: list[Problem] | tuple[Problem, ...], prefix: str = "") -> None:
    for problem in problems:
        sys.stderr.write(f"stemd: {prefix}{problem}\n")


def _print_warnings(config: Config) -> None:
    """Warnings (valid, probably not meant: see stem_core.migration) never
    fail a command; they go to stderr as ``stemd: warning: FILE:LINE: ...``."""
    _print_problems(config.warnings, "warning: ")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = _overrides(args, parser)
    path = config_path(args.config)
    try:
        config = load_config(path, os.environ, overrides)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    from stemd import checks

    if args.dry_run:
        _print_warnings(config)
        for node in config.nodes:
            print(f"{node.name} ({node.program}): {shlex.join(node.argv)}")
            print(f"    pid file: {node.pid_file}")
            print(f"    log file: {node.log_file}")
            if node.stderr_log_file != node.log_file:
                print(f"    stderr log file: {node.stderr_log_file}")
            if not node.autostart or node.priority != 999:
                print(f"    priority: {node.priority}"
                      + ("" if node.autostart else "  autostart: no (stemctl start runs it)"))
        return 0
    if args.check:
        _print_warnings(config)
        problems = checks.check_environment(config, creating=config.master.create_dirs)
        if problems:
            _print_problems(problems)
            sys.stderr.write(f"stemd: {len(problems)} problem(s) in {config.source}\n")
            return 1
        warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
        print(f"{config.source}: OK ({len(config.nodes)} nodes{warned})")
        _check_open_files(config)
        return 0
    return _run(config, args.foreground, overrides)


def _check_open_files(config) -> None:  # type: ignore[no-untyped-def]
    """Say how many descriptors the fleet needs; warn when the hard limit
    (which stemd raises its soft limit to) is below that."""
    import resource

    from stemd import checks

    need = checks.open_files_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    print(f"open files: the fleet needs about {need} (2 per node + {checks.FD_RESERVE}); "
          f"limit {soft} soft, {shown} hard (stemd raises the soft limit to the hard one)")
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.stderr.write(f"stemd: warning: the hard open-file limit {hard} is below the "
                         f"{need} this fleet needs: nodes will fail to start; raise it "
                         "(LimitNOFILE= in the systemd unit, ulimit -Hn, or "
                         "/etc/security/limits.conf)\n")


def _run(config, foreground: bool, overrides: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    import signal

    from stemd import checks, logsetup
    from stemd.daemon import MasterLock, Readiness, daemonize
    from stemd.master import Master
    from stemd.notify import Notifier
    from stemd.signals import SignalPipe

    # Until the master's handlers are installed, a SIGHUP (a hasty reload)
    # would kill the daemon and a SIGTERM would be lost: hold them pending;
    # the master unblocks them once it can act on them.
    signal.pthread_sigmask(signal.SIG_BLOCK, SignalPipe.HANDLED)

    # Problems that would make a node fail on every start (no such account,
    # a node as root, no such command or directory) are start-up failures,
    # told to the operator now: an init script must not report "OK" for a
    # fleet that can only back off. Unwritable directories are left to
    # create_directories() and the daemon's own errors.
    fatal = [p for p in checks.check_environment(config, creating=config.master.create_dirs)
             if p.fatal_at_start]
    if config.master.create_dirs:
        fatal += checks.create_directories(config)
    # Once the directories exist: a run directory or master log directory
    # a node user could write to, or a node PID file that cannot be one, is
    # refused before anything is opened there (docs/architecture.md, threat
    # model). The configuration file itself was checked by load_config.
    fatal += checks.check_trust(config, master_log=not foreground)
    if fatal:
        _print_problems(fatal)
        return 1
    if not foreground:  # in the foreground the log below is stderr already
        _print_warnings(config)
    # Before detaching, so the daemon and every node inherit it; logged once
    # the log is open.
    nofile = checks.raise_open_file_limit()
    notifier = Notifier.from_environ()
    readiness = Readiness(None) if foreground else daemonize(config.master.log_file)

    def fail(reason: str) -> int:
        readiness.fail(reason)
        if foreground:
            sys.stderr.write(f"stemd: {reason}\n")
        return 1

    try:
        log = logsetup.configure(config.master.log_level,
                                 None if foreground else config.master.log_file)
    except OSError as exc:
        return fail(f"cannot open the log file {config.master.log_file}: {exc.strerror}")
    for warning in config.warnings:
        log.warning("warning: %s", warning)
    _log_open_files(log, config, nofile)
    try:
        lock = MasterLock.acquire(config.master.pid_file)
    except StemError as exc:  # AlreadyRunning, or a lock or PID file stemd did not make
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot open the master PID file {config.master.pid_file}: {exc.strerror}")
    master = Master(config, environ=os.environ, overrides=overrides, log=log,
                    readiness=readiness, notifier=notifier, foreground=foreground)
    try:
        return master.run(lock)
    except StemError as exc:
        return fail(str(exc))
    except Exception as exc:
        log.exception("stemd crashed")
        return fail(f"internal error: {exc!r}")


def _log_open_files(log, config, nofile: tuple[int, int, int]) -> None:  # type: ignore[no-untyped-def]
    from stemd import checks

    old, soft, hard = nofile
    need = checks.open_files_needed(config)
    if soft != old:
        log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d (hard limit %d); "
                 "the fleet needs about %d", old, soft, hard, need)
    if 0 <= soft < need:  # RLIM_INFINITY is -1
        log.warning("the open-file limit %d is below the %d this fleet needs (2 per node + %d):"
                    " raise the hard limit (LimitNOFILE=, ulimit -Hn)", soft, need,
                    checks.FD_RESERVE)


if __name__ == "__main__":
    sys.exit(main())
