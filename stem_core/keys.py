"""The one table of every configuration key.

Each :class:`Key` says where it lives (env-file name, TOML name, section),
how its value is parsed, its default and what it means. The table drives
validation, the "did you mean" suggestions, the sample ``etc/default/stem``,
``docs/configuration.md`` and the TOML writer, so none of them can drift from
the others (tests compare the committed files with what this module renders).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stem_core.errors import BadValue
from stem_core.locate import DEFAULT_MASTER_PID_FILE, DEFAULT_SOCKET


class Scope(StrEnum):
    """Where a key applies: the master (``[stemd]``), each program
    (``[programs.NAME]``), or both (a ``[stemd]`` default that programs may
    override)."""

    MASTER = "master"
    PROGRAM = "program"
    BOTH = "both"


# --------------------------------------------------------------------------
# Value parsers: each takes what the file holds (a str from an env file, or a
# TOML value) and returns the typed value or raises BadValue.


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a string, got {value!r}")
    return value


def parse_optional_str(value: Any) -> str | None:
    text = parse_str(value)
    return text or None


def parse_required_str(value: Any) -> str:
    text = parse_str(value).strip()
    if not text:
        raise BadValue("must not be empty")
    return text


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off", ""}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BadValue(f"expected a boolean, got {value!r}", hint="use 1 or 0")


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise BadValue(f"expected a number, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = kind(value.strip())
        except ValueError:
            raise BadValue(f"expected a number, got {value!r}") from None
    else:
        raise BadValue(f"expected a number, got {value!r}")
    if kind is int and number != int(number):
        raise BadValue(f"expected a whole number, got {value!r}")
    if number < 0:
        raise BadValue(f"must not be negative, got {value!r}")
    return kind(number)


def parse_count(value: Any) -> int:
    return int(_number(value, int))


def parse_seconds(value: Any) -> float:
    number = float(_number(value, float))
    if number != number or number in (float("inf"),):  # NaN, inf
        raise BadValue(f"expected a finite number of seconds, got {value!r}")
    return number


def parse_optional_seconds(value: Any) -> float | None:
    if isinstance(value, str) and not value.strip():
        return None
    return parse_seconds(value)


def parse_listen(value: Any) -> str | None:
    """``HOST:PORT`` (an IPv4 or bracketed IPv6 address, or localhost) for
    the read-only metrics endpoint; empty: off."""
    import ipaddress

    text = parse_str(value).strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    hint = "use 127.0.0.1:9839 (an address and a port)"
    if not sep or not host:
        raise BadValue(f"expected HOST:PORT, got {value!r}", hint=hint)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != "localhost":
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise BadValue(f"not an IP address: {host!r}", hint=hint) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadValue(f"not a port number: {port!r}", hint=hint)
    return f"{host}:{int(port)}"


def parse_command_line(value: Any) -> str | None:
    """A command line split with shell word rules (run without a shell);
    empty: none."""
    import shlex

    text = parse_str(value).strip()
    if not text:
        return None
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise BadValue(f"cannot split the command: {exc}") from None
    if not words:
        return None
    return text


#: what on_state_change_states may name, besides a state (any move into it)
HOOK_EVENTS = ("crash-loop", "failed-exit")
_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL")


def parse_hook_states(value: Any) -> tuple[str, ...]:
    """Which transitions run the hook: state names (any move into that
    state) and ``crash-loop`` (RUNNING -> BACKOFF), ``failed-exit`` (EXITED
    with a non-zero status or a signal)."""
    words = value if isinstance(value, list) else parse_str(value).replace(",", " ").split()
    chosen = []
    for word in words:
        if not isinstance(word, str):
            raise BadValue(f"expected state names, got {word!r}")
        name = word.strip()
        if name.upper() in _STATES:
            name = name.upper()
        elif name.lower() in HOOK_EVENTS:
            name = name.lower()
        else:
            close = _close_matches(name.upper(), _STATES, n=1) or \
                _close_matches(name.lower(), HOOK_EVENTS, n=1)
            raise BadValue(f"unknown state or event {word!r}",
                           hint=f"did you mean {close[0]}?" if close else
                           "use state names (FATAL, EXITED...), crash-loop or failed-exit")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_size(value: Any) -> int | None:
    """A size in bytes: ``512M``, ``1.5G``, ``65536`` (K, M, G, T are powers
    of 1024; ``MB``/``MiB`` are read as ``M``); empty: none."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("IB").removesuffix("B")
        if not text:
            return None
        unit = text[-1] if text[-1] in "KMGT" else ""
        try:
            number = float(text[:-1] if unit else text)
        except ValueError:
            raise BadValue(f"expected a size such as 512M, got {value!r}",
                           hint="a number with K, M, G or T (powers of 1024)") from None
    else:
        raise BadValue(f"expected a size such as 512M, got {value!r}")
    if not number > 0 or number == float("inf"):
        raise BadValue(f"a size must be more than 0, got {value!r}")
    return int(number * _SIZE_UNITS[unit])


def parse_interval(value: Any) -> float:
    number = parse_seconds(value)
    if number < 0.1:
        raise BadValue(f"must be at least 0.1 s, got {value!r}")
    return number


def parse_umask(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 8)
        except ValueError:
            raise BadValue(f"expected an octal umask such as 022, got {value!r}") from None
    else:
        raise BadValue(f"expected an octal umask such as 022, got {value!r}")
    if not 0 <= number <= 0o777:
        raise BadValue(f"umask out of range: {value!r}", hint="between 000 and 777")
    return number


_SIGNALS = {s.name.removeprefix("SIG"): s for s in signal.Signals if not s.name.startswith("SIG_")}


def parse_signal(value: Any) -> str:
    """Accept ``TERM``, ``SIGTERM`` or ``15``; return the short name (``TERM``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().upper()
    else:
        raise BadValue(f"expected a signal name, got {value!r}")
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name.removeprefix("SIG")
        except ValueError:
            raise BadValue(f"unknown signal number {text}") from None
    name = text.removeprefix("SIG")
    if name not in _SIGNALS:
        close = _close_matches(name, list(_SIGNALS), n=1)
        hint = f"did you mean {close[0]}?" if close else "use a name such as TERM, INT or QUIT"
        raise BadValue(f"unknown signal {value!r}", hint=hint)
    return name


def signal_number(name: str) -> int:
    return int(_SIGNALS[name])


RESTART_POLICIES = ("always", "on-failure", "no")


def parse_restart(value: Any) -> str:
    text = parse_str(value).strip().lower()
    if text in ("false", "0", "never"):
        text = "no"
    if text not in RESTART_POLICIES:
        raise BadValue(f"unknown restart policy {value!r}", hint="use always, on-failure or no")
    return text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


KILL_MODES = ("mixed", "control-group")


def parse_kill_mode(value: Any) -> str:
    text = parse_str(value).strip().lower()
    if text not in KILL_MODES:
        raise BadValue(f"unknown kill mode {value!r}", hint="use mixed or control-group")
    return text


def parse_log_level(value: Any) -> str:
    text = parse_str(value).strip().upper()
    if text == "WARN":
        text = "WARNING"
    if text not in LOG_LEVELS:
        raise BadValue(f"unknown log level {value!r}", hint="use " + ", ".join(LOG_LEVELS))
    return text


def parse_nodes(value: Any) -> str | int:
    """Kept raw here; :func:`stem_core.nodes.parse_node_list` expands it with
    the program name as prefix."""
    if isinstance(value, bool):
        raise BadValue(f"expected node names or a count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise BadValue("node names must be strings")
        return " ".join(value)
    return parse_str(value)


MAX_EXIT_CODE = 255


def parse_exitcodes(value: Any) -> tuple[int, ...]:
    """``[0, 2]`` in TOML; ``"0 2"`` or ``"0,2"`` in an env file (supervisord
    writes ``0,2``). Each an exit status 0-255; at least one."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = value.replace(",", " ").split()
    else:
        raise BadValue(f"expected a list of exit statuses, got {value!r}", hint="e.g. [0, 2]")
    codes: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise BadValue(f"expected an exit status, got {item!r}")
        try:
            code = int(item.strip()) if isinstance(item, str) else item
        except ValueError:
            raise BadValue(f"expected an exit status, got {item!r}", hint="e.g. [0, 2]") from None
        if not isinstance(code, int) or not 0 <= code <= MAX_EXIT_CODE:
            raise BadValue(f"exit status out of range: {item!r}", hint="between 0 and 255")
        if code not in codes:
            codes.append(code)
    if not codes:
        raise BadValue("the list of expected exit statuses is empty", hint="e.g. [0, 2]")
    return tuple(codes)


def parse_priority(value: Any) -> int:
    """A start order: lower starts first, stops last (supervisord's 999 is
    the default)."""
    if isinstance(value, bool):
        raise BadValue(f"expected a whole number, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadValue(f"expected a whole number, got {value!r}") from None
    if not isinstance(value, int):
        raise BadValue(f"expected a whole number, got {value!r}")
    return value


def parse_name_pattern(value: Any) -> str | None:
    """Checked against the node list in :func:`stem_core.nodes.pattern_names`."""
    return parse_optional_str(value)


def parse_environment(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise BadValue("expected a table of NAME = \"value\"")
    pairs = []
    for name, item in value.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise BadValue(f"environment value of {name} must be a string, got {item!r}")
        pairs.append((str(name), str(item)))
    return tuple(pairs)


# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    env: str | None  # name in the env file (None: TOML only)
    toml: str  # name in the TOML file
    scope: Scope
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    aliases: tuple[str, ...] = ()
    example: str | None = None  # shown in the sample file when there is no default
    # Which part of a program's spec a program key fills: "program" (a field
    # of ProgramSpec itself), "policy" (model.Policy) or "run_as"
    # (model.RunAs). The loader builds each part from the keys that name it.
    # "node_names" (the name pattern) is spent on naming the nodes: the names
    # are ProgramSpec.nodes, the pattern is not kept.
    part: str = "program"

    @property
    def default_text(self) -> str:
        """The default as it would be written in an env file."""
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "1" if self.default else "0"
        if self.parse is parse_umask:
            return f"{self.default:03o}"
        if isinstance(self.default, tuple):
            return " ".join(str(v) for v in self.default)
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        if isinstance(self.default, tuple) and all(isinstance(v, str) for v in self.default):
            return " ".join(self.default)
        return str(self.default)


M, P, B = Scope.MASTER, Scope.PROGRAM, Scope.BOTH

KEYS: tuple[Key, ...] = (
    Key("STEMD_NODES", "nodes", P, parse_nodes, "1",
        "space-separated node names, or a count N (nodes worker1..workerN)",
        example="alpha beta"),
    Key("STEMD_NODE_NAME", "name", P, parse_name_pattern, None,
        "node name pattern for a count of nodes: %p program, %i index from 1 with "
        "printf-style zero padding (%02i: 01, 02 ...), %h host, %% a literal %; "
        "unset: the program name followed by the index (worker1 ...)", example="",
        part="node_names"),
    Key("STEMD_COMMAND", "command", P, parse_required_str, None,
        "command line of every node, split with shell word rules and run without a shell",
        aliases=("STEM_WORKER_COMMAND",), example="/usr/local/bin/stem-worker --queues=default"),
    Key("STEMD_OPTS", "opts", P, parse_str, "",
        "extra arguments appended to the command; -c:beta 4 applies to node beta only",
        example="-c 8 -c:worker1 4"),
    Key("STEMD_CHDIR", "directory", P, parse_required_str, "/", "working directory of the nodes"),
    Key("STEMD_USER", "user", B, parse_optional_str, None,
        "account the nodes run as (default: the invoking user)", example="stem", part="run_as"),
    Key("STEMD_GROUP", "group", B, parse_optional_str, None,
        "group the nodes run as (default: STEMD_USER's primary group)",
        example="stem", part="run_as"),
    Key("STEMD_UMASK", "umask", P, parse_umask, 0o022, "umask of the nodes", part="run_as"),
    Key("STEMD_PID_FILE", "pid_file", P, parse_required_str, "/var/run/stem/%n.pid",
        "per-node PID file template"),
    Key("STEMD_LOG_FILE", "log_file", P, parse_required_str, "/var/log/stem/%n.log",
        "per-node log file template (stdout and stderr); - sends node output to the "
        "master's own stdout/stderr, /dev/null discards it"),
    Key("STEMD_STDERR_LOG_FILE", "stderr_log_file", P, parse_optional_str, None,
        "per-node log file template for stderr alone (- : the master's own stderr); "
        "unset: stderr goes to log_file with stdout", example="/var/log/stem/%n.err"),
    Key("STEMD_AUTOSTART", "autostart", P, parse_bool, True,
        "0: the nodes are configured but not started with the master or by a reload that "
        "adds them; stemctl start runs them"),
    Key(None, "priority", P, parse_priority, 999,
        "TOML only: start order; lower starts first, each priority's nodes in parallel and "
        "RUNNING (or given up) before the next; stops in reverse"),
    Key("STEMD_LOG_LEVEL", "log_level", M, parse_log_level, "INFO", "the master's log level"),
    Key("STEMD_MASTER_PID_FILE", "pid_file", M, parse_required_str, DEFAULT_MASTER_PID_FILE,
        "the master's PID file; its lock file (uniqueness) is PATH.lock beside it"),
    Key("STEMD_MASTER_LOG_FILE", "log_file", M, parse_required_str, "/var/log/stem/stemd.log",
        "the master's own log"),
    Key("STEMD_SOCKET", "socket", M, parse_required_str, DEFAULT_SOCKET,
        "control socket path"),
    Key("STEMD_SOCKET_GROUP", "socket_group", M, parse_optional_str, None,
        "operators' group: its members may use stemctl (socket 0660 with this group); unset: "
        "socket 0600, root and the master's user only. Never the nodes' group: a compromised "
        "worker must not control its fleet", example="stem-ops"),
    Key("STEMD_CREATE_DIRS", "create_dirs", M, parse_bool, True,
        "1: create missing PID, socket and log directories"),
    Key("STEMD_STOP_SIGNAL", "stop_signal", P, parse_signal, "TERM",
        "signal a stop sends first (TERM, INT, QUIT, ...)", part="policy"),
    Key("STEMD_STOP_TIMEOUT", "stop_timeout", P, parse_seconds, 10.0,
        "seconds before a stop escalates to SIGKILL of the node's process group", part="policy"),
    Key("STEMD_KILL_MODE", "kill_mode", P, parse_kill_mode, "mixed",
        "mixed: the stop signal to the main process only (a prefork worker's warm shutdown), "
        "SIGKILL to what is left of its process group once it exits or the stop timeout "
        "passes; control-group: the stop signal to the whole group (as systemd's KillMode=)",
        part="policy"),
    Key("STEMD_START_WAIT", "start_wait", M, parse_optional_seconds, None,
        "seconds the launcher waits for every node to be RUNNING before it returns (exit 1 "
        "naming the nodes that are not); 0 returns once the nodes are spawned; "
        "default: the longest start-secs + 5", example=""),
    Key("STEMD_RESTART", "restart", P, parse_restart, "always", "always, on-failure or no",
        part="policy"),
    Key("STEMD_EXITCODES", "exitcodes", P, parse_exitcodes, (0,),
        "exit statuses that count as expected: restart = on-failure does not restart a "
        "node that exits with one (space- or comma-separated in the env file)",
        part="policy"),
    Key("STEMD_START_SECS", "start_secs", P, parse_seconds, 1.0,
        "seconds a node must stay up to count as started (RUNNING)", part="policy"),
    Key("STEMD_START_RETRIES", "start_retries", P, parse_count, 5,
        "failed starts in a row before the node is FATAL", part="policy"),
    Key("STEMD_BACKOFF_MAX", "backoff_max", P, parse_seconds, 30.0,
        "cap of the exponential delay between failed starts, seconds", part="policy"),
    Key("STEMD_RESTART_BURST", "restart_burst", P, parse_count, 5,
        "restarts of a RUNNING node allowed within STEMD_RESTART_WINDOW before it backs off",
        part="policy"),
    Key("STEMD_RESTART_WINDOW", "restart_window", P, parse_seconds, 60.0,
        "crash-loop detection window, seconds", part="policy"),
    Key("STEMD_METRICS_LISTEN", "metrics_listen", M, parse_listen, None,
        "HOST:PORT on which the master serves Prometheus metrics at GET /metrics, read-only "
        "(nothing else is served: no control over HTTP); unset: off. Takes effect at "
        "restart", example="127.0.0.1:9839"),
    Key("STEMD_ON_STATE_CHANGE", "on_state_change", B, parse_command_line, None,
        "command run when a node makes a transition named in STEMD_ON_STATE_CHANGE_STATES, "
        "as the node's user, in its own session, without a shell; its environment names "
        "STEMD_NODE, STEMD_PROGRAM, STEMD_FROM_STATE, STEMD_TO_STATE, STEMD_EXIT_STATUS, "
        "STEMD_LAST_ERROR; its output goes to the node's log. A program's own value replaces "
        "the [stemd] one", example="/usr/local/bin/page-oncall"),
    Key("STEMD_ON_STATE_CHANGE_STATES", "on_state_change_states", B, parse_hook_states,
        ("FATAL", "crash-loop", "failed-exit"),
        "transitions that run on_state_change: state names (any move into that state), "
        "crash-loop (RUNNING -> BACKOFF), failed-exit (EXITED with a failure)"),
    Key("STEMD_HOOK_TIMEOUT", "hook_timeout", B, parse_seconds, 30.0,
        "seconds a hook may run before its session is killed (SIGKILL)"),
    Key("STEMD_HOOKS_MAX", "hooks_max", M, parse_count, 4,
        "hooks running at once; further events wait, coalesced to the latest per node "
        "(the count is logged). Takes effect at restart"),
    Key("STEMD_MAX_RSS", "max_rss", P, parse_size, None,
        "restart a node (warm, the normal stop sequence) whose whole process tree's RSS "
        "exceeds this size (512M, 2G); unset: no limit and no sampling", example="512M"),
    Key("STEMD_MEMORY_CHECK_INTERVAL", "memory_check_interval", M, parse_interval, 5.0,
        "seconds between two checks of max_rss (one pass over /proc); the master samples "
        "only while some program sets max_rss. Takes effect at restart"),
    Key("STEMD_FORCE_ROOT", "force_root", M, parse_bool, False,
        "1 allows nodes to run as root (otherwise refused)"),
    Key("STEM_SCHEDULER_COMMAND", "", P, parse_optional_str, None,
        "if set, adds one node named scheduler (program scheduler) running this command",
        example="/usr/local/bin/stem-scheduler"),
    Key(None, "environment", P, parse_environment, (),
        "TOML only: variables for the nodes (in the env file, use export NAME=value)"),
)

BY_ENV: dict[str, Key] = {}
for _key in KEYS:
    if _key.env:
        BY_ENV[_key.env] = _key
        for _alias in _key.aliases:
            BY_ENV[_alias] = _key

MASTER_KEYS: dict[str, Key] = {k.toml: k for k in KEYS if k.scope in (M, B)}
PROGRAM_KEYS: dict[str, Key] = {k.toml: k for k in KEYS if k.scope in (P, B) and k.toml}


# supervisord's program and [supervisord] keys -> stemd's TOML key, or (None)
# the advice where stemd has no such key (yet). Spelling matches of these
# would mislead ("stopwaitsecs" is closest to start_secs, not stop_timeout).
SUPERVISORD_NAMES: dict[str, tuple[str | None, str]] = {
    "stopwaitsecs": ("stop_timeout", ""),
    "stopsignal": ("stop_signal", ""),
    "startsecs": ("start_secs", ""),
    "startretries": ("start_retries", ""),
    "autorestart": ("restart", ": always, on-failure or no"),
    "numprocs": ("nodes", ": a count, or a list of node names"),
    "process_name": ("name", ": a pattern such as \"%p_%02i\" with nodes = N"),
    "stopasgroup": ("kill_mode", ": \"control-group\" signals the whole group"),
    "killasgroup": ("kill_mode", ": stemd always SIGKILLs what is left of the group"),
    "stdout_logfile": ("log_file", " (stdout, and stderr unless stderr_log_file is set)"),
    "redirect_stderr": ("log_file", ", which holds stderr too unless stderr_log_file is set"),
    "logfile": ("log_file", ""),
    "pidfile": ("pid_file", ""),
    "autostart": ("autostart", ""),
    "exitcodes": ("exitcodes", ": a list such as [0, 2]"),
    "priority": ("priority", ": lower starts first, stops last"),
    "stderr_logfile": ("stderr_log_file", ""),
}


def suggest(name: str, candidates: list[str] | dict[str, Any]) -> str | None:
    """A "did you mean" hint for an unknown name, or None."""
    alias = SUPERVISORD_NAMES.get(name.lower())
    if alias is not None:
        target, note = alias
        if target is None:
            return f"`{name}` (supervisord) has no stemd counterpart yet: {note}"
        if target in candidates:
            return f"`{name}` is `{target}` in stemd{note}"
    close = _close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def is_setting_name(name: str) -> bool:
    """Names reserved for stemd settings: unknown ones are errors, not
    variables, so a typo cannot silently fall back to a default."""
    return name.startswith("STEMD_") or name in BY_ENV


def _close_matches(word: str, possibilities: Sequence[str], n: int = 3,
                   cutoff: float = 0.6) -> list[str]:
    """difflib's, imported only when a suggestion is wanted (a typo): the
    master and stemctl otherwise never load difflib."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)
