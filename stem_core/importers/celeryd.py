"""``stemctl import celeryd FILE``: ``/etc/default/celeryd`` -> ``/etc/default/stem``.

The file is *parsed* with stemd's own env-file lexer (never sourced), so a
line a shell would execute is an error naming its file and line.

Celery's generic init script runs, as ``CELERYD_USER``::

    $CELERY_BIN multi start $CELERYD_NODES [--workdir=$CELERYD_CHDIR] \\
        --pidfile=$CELERYD_PID_FILE --logfile=$CELERYD_LOG_FILE \\
        --loglevel=$CELERYD_LOG_LEVEL [--app=$CELERY_APP] $CELERYD_OPTS

and ``celery multi`` turns that into one command line per node. This module
repeats what celery/apps/multi.py (5.3 to 5.7) does -- its option parser,
per-node ``-c:2 4`` namespaces, the options it moves in front of ``worker``,
``-n NAME@HOST`` and ``--executable`` -- with celery's ``%n``/``%h``/``%d``
written as stemd templates, so the imported nodes run the same argv minus
``--detach``, ``--pidfile`` and ``--logfile`` (stemd owns the process, its
PID file and its output). The options are then written as ``STEMD_OPTS``,
keeping ``CELERYD_OPTS`` verbatim where stemd's selectors mean the same, and
checked against :func:`stem_core.nodes.expand_opts`: what is written is
proven to expand to celery's argv.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from stem_core.envfile import Assignment, read_envfile
from stem_core.errors import BadValue
from stem_core.importers import ImportResult, Note
from stem_core.nodes import expand_opts, validate_node_name

__all__ = ["celery_argv", "celery_template", "import_celeryd"]

# Options celery multi moves between "celery" and "worker" (apps/multi.py).
_MOVED = ("-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config",
          "--workdir", "-C", "--no-color", "-q", "--quiet")
_RESERVED = ("--nosplash", "--quiet", "-q", "--verbose", "--no-color")
_DROPPED = ("--pidfile", "-p", "--logfile", "-f")
_KNOWN = {"CELERYD_NODES", "CELERY_BIN", "CELERY_APP", "CELERYD_CHDIR", "CELERYD_OPTS",
          "CELERYD_LOG_FILE", "CELERYD_PID_FILE", "CELERYD_LOG_LEVEL", "CELERYD_LOGLEVEL",
          "CELERYD_USER", "CELERYD_GROUP", "CELERY_CREATE_DIRS", "CELERYD_MULTI",
          "CELERYBEAT_CHDIR", "CELERYBEAT_OPTS", "CELERYBEAT_LOG_FILE", "CELERYBEAT_PID_FILE",
          "CELERYBEAT_LOG_LEVEL", "CELERYBEAT_USER", "CELERYBEAT_GROUP", "CELERY_CREATE_RUNDIR",
          "CELERY_CREATE_LOGDIR"}


def celery_template(value: str) -> str:
    """A value as celery multi expands it (``node_format`` with ``%n``
    shortname, ``%h``/``%p`` the full node name, ``%d`` the host, ``%i``/``%I``
    left for the worker), written as a stemd template."""
    table = {"n": "%n", "N": "%n", "h": "%n@%h", "p": "%n@%h", "d": "%h", "i": "%%i",
             "I": "%I", "%": "%%"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), "%%" + m.group(1)), value)


def host_template(value: str) -> str:
    """A host name as celery multi expands it (``host_format`` without a
    node: ``%h`` the host, ``%d`` its domain), as a stemd template. celery's
    ``%n`` here is the host's first label, which stemd cannot name: kept
    literal."""
    table = {"h": "%h", "d": "%d", "%": "%%", "i": "%%i", "I": "%I"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), "%%" + m.group(1)), value)


# --------------------------------------------------------- celery multi


class _Options:
    """celery's NamespacedOptionParser, on already split words."""

    def __init__(self, args: list[str]) -> None:
        self.options: dict[str, str | None] = {}
        self.values: list[str] = []
        self.passthrough = ""
        self.namespaces: dict[str, dict[str, str | None]] = {}
        words = [a for a in args if a]
        pos = 0
        while pos < len(words):
            arg = words[pos]
            if arg == "--":
                self.passthrough = " ".join(words[pos:])
                break
            if arg[0] == "-":
                if arg[1:2] == "-":
                    name, _, value = arg[2:].partition("=")
                    self.add(name, value if "=" in arg[2:] else None, short=False)
                else:
                    short_value = None
                    if pos + 1 < len(words) and words[pos + 1][0] != "-":
                        short_value = words[pos + 1]
                        pos += 1
                    self.add(arg[1:], short_value, short=True)
            else:
                self.values.append(arg)
            pos += 1

    def add(self, name: str, value: str | None, short: bool) -> None:
        prefix = "-" if short else "--"
        dest = self.options
        if ":" in name:
            name, namespace = name.split(":", 1)
            dest = self.namespaces.setdefault(namespace, {})
        dest[prefix + name] = value


def _format_opt(opt: str, value: str | None) -> str:
    if not value:
        return opt
    return f"{opt}={value}" if opt.startswith("--") else f"{opt} {value}"


def celery_argv(multi_args: list[str], executable: str) -> list[tuple[str, str, list[str]]]:
    """(stemd node name, celery node name, argv) for each node ``celery multi
    start`` would start, as stemd templates, minus ``--detach``,
    ``--pidfile`` and ``--logfile``. ``executable`` is the interpreter
    (celery's ``sys.executable``), already in template form."""
    args = [a for a in multi_args if a not in _RESERVED]
    p = _Options(args)
    names = list(p.values)
    options = dict(p.options)
    options.pop("--cmd", None)
    append = options.pop("--append", "")
    host = options.pop("-n", None)
    host = options.pop("--hostname", host)
    suffix = host_template(host) if host else "%h"
    prefix = options.pop("--prefix", "") or ""
    range_prefix = options.pop("--range-prefix", "") or "celery"
    ranges = len(names) == 1
    if ranges:
        try:
            names = [str(n) for n in range(1, int(names[0]) + 1)]
            prefix = range_prefix
        except ValueError:
            ranges = False
    if ranges:
        _update_ns_opts(p, names)
        _update_ns_ranges(p, ranges)
    else:
        _update_ns_ranges(p, ranges)
        _update_ns_opts(p, names)
    out = []
    for name in names:
        if "@" in name:
            short, _, node_host = name.partition("@")
            nodename = f"{host_template(short)}@{host_template(node_host)}"
            node, label = short, nodename
        else:
            node = f"{prefix}{name}"
            nodename, label = f"%n@{suffix}", f"{node}@{suffix}"
        namespace = label if label in p.namespaces else name
        merged = dict(options)
        merged.update(p.namespaces.get(namespace, {}))
        merged = {k: None if v is None else celery_template(v) for k, v in merged.items()}
        merged["-n"] = nodename
        merged.setdefault("--executable", executable)
        cmd = ["-m", "celery", "worker"]
        tail: list[str] = []
        for opt, expanded in merged.items():
            if opt in _MOVED:
                cmd.insert(2, _format_opt(opt, expanded))
            elif opt not in _DROPPED:
                tail.append(_format_opt(opt, expanded))
        words = [executable, *cmd, *tail, p.passthrough]
        if append:
            words.append(celery_template(append))
        out.append((node, label, shlex.split(" ".join(words))))
    return out


def _update_ns_opts(p: _Options, names: list[str]) -> None:
    for ns_name, ns_opts in list(p.namespaces.items()):
        if ns_name.isdigit():
            index = int(ns_name) - 1
            if index < 0 or index >= len(names):
                raise BadValue(f"no node at index {ns_name} in CELERYD_OPTS",
                               hint="indexes start at 1")
            p.namespaces.setdefault(names[index], {}).update(ns_opts)


def _update_ns_ranges(p: _Options, ranges: bool) -> None:
    for ns_name, ns_opts in list(p.namespaces.items()):
        if "," in ns_name or (ranges and "-" in ns_name):
            for sub in _parse_ns_range(ns_name, ranges):
                p.namespaces.setdefault(sub, {}).update(ns_opts)
            p.namespaces.pop(ns_name)


def _parse_ns_range(ns: str, ranges: bool) -> list[str]:
    out: list[str] = []
    for space in ns.split(",") if "," in ns else [ns]:
        if ranges and "-" in space:
            start, stop = space.split("-")
            out.extend(str(n) for n in range(int(start), int(stop) + 1))
        else:
            out.append(space)
    return out


# --------------------------------------------------------- STEMD_OPTS


def _option_groups(tail: list[str]) -> list[list[str]]:
    """Words grouped as stemd's expand_opts reads them: an option and its
    value word, or a lone word."""
    groups: list[list[str]] = []
    index = 0
    while index < len(tail):
        word = tail[index]
        if (word.startswith("-") and word != "-" and "=" not in word
                and index + 1 < len(tail)
                and (not tail[index + 1].startswith("-")
                     or re.fullmatch(r"-[0-9][0-9.]*", tail[index + 1]))):
            groups.append([word, tail[index + 1]])
            index += 2
        else:
            groups.append([word])
            index += 1
    return groups


def _selected(group: list[str], node: str) -> list[str]:
    word = group[0]
    name, eq, value = word.partition("=")
    return [f"{name}:{node}{eq}{value}", *group[1:]]


def _opts_candidates(general: list[str], tails: dict[str, list[str]]) -> list[str]:
    """STEMD_OPTS strings to try, most readable first: CELERYD_OPTS as
    written; the same with celery multi's own -n and --executable selected
    for every node (so that they follow options only some nodes have, as in
    celery); one selector per node and option."""
    every = f"1-{len(tails)}" if len(tails) > 1 else "1"
    own = [w for group in _option_groups(general) for w in (
        _selected(group, every) if group[0] == "-n" or group[0].startswith("--executable=")
        else group)]
    candidates = [shlex.join(general), shlex.join(own)]
    groups = {node: _option_groups(tail) for node, tail in tails.items()}
    first = next(iter(groups.values()))
    common = 0
    while all(len(g) > common and g[common] == first[common] for g in groups.values()):
        common += 1
    for shared in (common, 0):
        words = [w for group in first[:shared] for w in group]
        for node, node_groups in groups.items():
            for group in node_groups[shared:]:
                if not group[0].startswith("-") or group[0] == "--":
                    break
                words.extend(_selected(group, node))
        candidates.append(shlex.join(words))
    return candidates


# ------------------------------------------------------------- import


def _interpreter(celery_bin: str, environ: Mapping[str, str]) -> str | None:
    """The python that runs CELERY_BIN (celery multi's sys.executable), from
    its ``#!`` line; None when the file cannot be read here."""
    path = celery_bin
    if "/" not in path:
        for directory in environ.get("PATH", os.defpath).split(os.pathsep):
            candidate = os.path.join(directory or ".", path)
            if os.path.isfile(candidate):
                path = candidate
                break
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return words[1]
    return words[0]


class _Settings:
    def __init__(self, path: str, assignments: list[Assignment]) -> None:
        self.path = path
        self.last: dict[str, Assignment] = {}
        for a in assignments:
            self.last[a.name] = a
        self.notes: list[Note] = []

    def get(self, name: str, default: str = "") -> str:
        a = self.last.get(name)
        return default if a is None or a.value == "" else a.value

    def note(self, name: str | None, advice: str, translated: bool = False) -> None:
        a = self.last.get(name) if name else None
        self.notes.append(Note(self.path, a.line if a else None, name or "(file)", advice,
                               translated))


def import_celeryd(path: str, environ: Mapping[str, str] | None = None,
                   toml: bool = False) -> ImportResult:
    """Translate a celeryd (and celerybeat) defaults file.

    Raises :class:`~stem_core.errors.ConfigError` (from the env-file lexer)
    with file, line and column when the file is not plain assignments.
    """
    environ = dict(os.environ if environ is None else environ)
    s = _Settings(path, read_envfile(path, environ))
    out: list[tuple[str, str, bool]] = []

    celery_bin = s.get("CELERY_BIN", "celery")
    interpreter = _interpreter(celery_bin, environ)
    nodes_words = s.get("CELERYD_NODES", "celery").split()
    multi: list[str] = list(nodes_words)
    if s.get("CELERYD_CHDIR"):
        multi.append(f"--workdir={s.get('CELERYD_CHDIR')}")
    multi += [f"--pidfile={s.get('CELERYD_PID_FILE', '/var/run/celery/%n.pid')}",
              f"--logfile={s.get('CELERYD_LOG_FILE', '/var/log/celery/%n.log')}",
              "--loglevel=" + s.get("CELERYD_LOG_LEVEL", s.get("CELERYD_LOGLEVEL", "INFO"))]
    if s.get("CELERY_APP"):
        multi.append(f"--app={s.get('CELERY_APP')}")
    try:
        opts_words = shlex.split(s.get("CELERYD_OPTS"))
    except ValueError as exc:
        raise _config_error(s, "CELERYD_OPTS", f"cannot split: {exc}") from None
    multi += opts_words
    executable = interpreter or celery_bin
    try:
        nodes = celery_argv(multi, executable.replace("%", "%%"))
    except BadValue as exc:
        raise _config_error(s, "CELERYD_OPTS", exc.message, exc.hint) from None
    names = [n for n, _, _ in nodes]
    for name in names:
        try:
            validate_node_name(name)
        except BadValue as exc:
            raise _config_error(s, "CELERYD_NODES", exc.message, exc.hint) from None

    # STEMD_COMMAND: everything up to "worker"; the rest is STEMD_OPTS.
    argvs = {n: argv for n, _, argv in nodes}
    split_at = {n: argv.index("worker") + 1 for n, argv in argvs.items()}
    commands = {shlex.join(argv[:split_at[n]]) for n, argv in argvs.items()}
    command = next(iter(commands))
    if interpreter is None:
        # celery multi runs "<python> -m celery"; CELERY_BIN is that program.
        command = shlex.join([celery_bin, *shlex.split(command)[3:]])
        argvs = {n: [celery_bin, *a[3:]] for n, a in argvs.items()}
        s.note("CELERY_BIN", f"{celery_bin} cannot be read here, so its interpreter is "
               f"unknown: the nodes run {celery_bin} (the same program as celery multi's "
               "`python -m celery`) and without --executable", translated=True)
        for n, argv in argvs.items():
            argvs[n] = [w for w in argv if not w.startswith("--executable=")]
            split_at[n] = argvs[n].index("worker") + 1
    if len(commands) > 1:
        s.note("CELERYD_OPTS", "per-node options in front of `worker` (such as -A:2) differ "
               "between nodes, which STEMD_COMMAND cannot express: all nodes use the first "
               "node's")
    tails = {n: argv[split_at[n]:] for n, argv in argvs.items()}
    general_words = _general_opts(s, opts_words, tails, interpreter, executable)
    general = shlex.join(general_words)
    opts = general
    for candidate in _opts_candidates(general_words, tails):
        try:
            expanded = expand_opts(candidate, names)
        except BadValue:
            continue
        if all(list(expanded[n]) == tails[n] for n in names):
            opts = candidate
            break
    else:
        s.note("CELERYD_OPTS", "could not be written as STEMD_OPTS that expands to exactly "
               "celery multi's command lines: check `stemd --dry-run` against "
               "`celery multi show`")
    if opts != general:
        s.note("CELERYD_OPTS", "per-node options were reordered with selectors so that "
               "each node's options come in celery multi's order", translated=True)

    out.append(("STEMD_NODES", " ".join(names), False))
    out.append(("STEMD_COMMAND", command, False))
    out.append(("STEMD_OPTS", opts, False))
    if s.get("CELERYD_CHDIR"):
        out.append(("STEMD_CHDIR", s.get("CELERYD_CHDIR"), False))
    user = s.get("CELERYD_USER", "celery")
    if "CELERYD_USER" not in s.last:
        s.note(None, "CELERYD_USER is not set: the init script's default user, celery, is "
               "written as STEMD_USER", translated=True)
    out.append(("STEMD_USER", user, False))
    if s.get("CELERYD_GROUP"):
        s.note("CELERYD_GROUP", "the init script uses it only to chgrp the directories it "
               "creates (su runs the nodes with the user's primary group, as stemd does); "
               "stemd creates its directories itself", translated=True)
    out.append(("STEMD_PID_FILE", _path(s, "CELERYD_PID_FILE", "/var/run/celery/%n.pid"),
                False))
    out.append(("STEMD_LOG_FILE", _path(s, "CELERYD_LOG_FILE", "/var/log/celery/%n.log"),
                False))
    create = s.get("CELERY_CREATE_DIRS", "0")
    out.append(("STEMD_CREATE_DIRS", "1" if create == "1" else "0", False))
    if create != "1":
        s.note("CELERY_CREATE_DIRS" if "CELERY_CREATE_DIRS" in s.last else None,
               "directories are not created (STEMD_CREATE_DIRS=0, as CELERY_CREATE_DIRS=0): "
               "set STEMD_CREATE_DIRS=1 to have stemd create them with safe owners",
               translated=True)
    scheduler = _scheduler(s, celery_bin)
    if scheduler:
        out.append(("STEM_SCHEDULER_COMMAND", scheduler, False))
    for name, a in s.last.items():
        if a.exported:
            out.append((name, a.value, True))
        elif name not in _KNOWN and name.startswith(("CELERY", "CELERYD_", "CELERYBEAT_")):
            s.note(name, "not a celeryd init-script setting: not imported (export it if "
                   "the worker reads it from its environment)")
    for name, advice in (
            ("CELERYD_MULTI", "stemd replaces celery multi: the nodes run the worker directly"),
            ("CELERYD_ULIMIT", "set limits in the systemd unit (LimitNOFILE=) or the init "
             "script (ulimit) that starts stemd")):
        if name in s.last:
            s.note(name, advice)
    if toml:
        return ImportResult(toml=_as_toml(out), comments=_comments(path),
                            notes=tuple(s.notes))
    return ImportResult(env=tuple(out), comments=_comments(path), notes=tuple(s.notes))


def _general_opts(s: _Settings, opts_words: list[str], tails: dict[str, list[str]],
                  interpreter: str | None, executable: str) -> list[str]:
    """The readable STEMD_OPTS: the log level, CELERYD_OPTS as written (its
    selectors kept), then celery multi's -n and --executable."""
    kept = [celery_template(w) for w in opts_words
            if not any(w == o or w.startswith(o + "=") for o in _MOVED + _DROPPED)]
    level = s.get("CELERYD_LOG_LEVEL", s.get("CELERYD_LOGLEVEL", "INFO"))
    words = [f"--loglevel={level}", *kept]
    tail = next(iter(tails.values()))
    if "-n" in tail:
        words += ["-n", tail[tail.index("-n") + 1]]
    if interpreter is not None:
        words.append(f"--executable={executable.replace('%', '%%')}")
    return words


def _path(s: _Settings, name: str, default: str) -> str:
    value = s.get(name, default)
    if "%I" in value:
        s.note(name, "%I (the pool process index) is dropped: stemd opens one log per node "
               "and its pool processes write to it too", translated=True)
        value = value.replace("%I", "")
    return celery_template(value)


def _scheduler(s: _Settings, celery_bin: str) -> str | None:
    beat = [n for n in s.last if n.startswith("CELERYBEAT_")]
    if not beat:
        return None
    words = [celery_bin]
    if s.get("CELERY_APP"):
        words.append(f"--app={s.get('CELERY_APP')}")
    words.append("beat")
    if s.get("CELERYBEAT_CHDIR"):
        words.append(f"--workdir={s.get('CELERYBEAT_CHDIR')}")
    words.append("--loglevel=" + s.get("CELERYBEAT_LOG_LEVEL", "INFO"))
    try:
        words += [w for w in shlex.split(s.get("CELERYBEAT_OPTS"))
                  if not w.startswith(("--pidfile", "--logfile", "--detach"))]
    except ValueError:
        s.note("CELERYBEAT_OPTS", "cannot be split: not imported")
    for name in ("CELERYBEAT_USER", "CELERYBEAT_GROUP"):
        if name in s.last and s.get(name) != s.get(name.replace("BEAT", "D")):
            s.note(name, "the scheduler node runs as STEMD_USER like the workers: run beat "
                   "from a second stemd (stem-scheduler) to give it another account")
    for name in ("CELERYBEAT_LOG_FILE", "CELERYBEAT_PID_FILE"):
        if name in s.last:
            s.note(name, "the scheduler node's files are STEMD_LOG_FILE and STEMD_PID_FILE "
                   "with %n = scheduler", translated=True)
    return celery_template(shlex.join(words))


def _as_toml(out: list[tuple[str, str, bool]]) -> dict[str, Any]:
    keys = {"STEMD_COMMAND": "command", "STEMD_OPTS": "opts", "STEMD_CHDIR": "directory",
            "STEMD_USER": "user", "STEMD_PID_FILE": "pid_file", "STEMD_LOG_FILE": "log_file"}
    worker: dict[str, Any] = {}
    env: dict[str, str] = {}
    stemd: dict[str, Any] = {}
    scheduler = None
    for name, value, exported in out:
        if exported:
            env[name] = value
        elif name == "STEMD_NODES":
            worker["nodes"] = value.split()
        elif name == "STEMD_CREATE_DIRS":
            stemd["create_dirs"] = value == "1"
        elif name == "STEM_SCHEDULER_COMMAND":
            scheduler = value
        elif name in keys:
            worker[keys[name]] = value
    worker = {"command": worker.pop("command"), **worker}
    if env:
        worker["environment"] = env
    programs: dict[str, Any] = {"worker": worker}
    if scheduler:
        programs["scheduler"] = {k: v for k, v in worker.items()
                                 if k not in ("command", "nodes", "opts")}
        programs["scheduler"] = {"command": scheduler, **programs["scheduler"]}
    return {"stemd": stemd, "programs": programs}


def _comments(path: str) -> tuple[str, ...]:
    return (f"Imported from {os.path.abspath(path)} by stemctl import celeryd.",
            "The nodes run what `celery multi start` ran, without --detach, --pidfile and "
            "--logfile:",
            "stemd owns the process, its PID file and its log.")


def _config_error(s: _Settings, name: str, message: str, hint: str | None = None) -> Exception:
    from stem_core.errors import ConfigError, Problem

    a = s.last.get(name)
    return ConfigError(Problem(message, file=s.path, line=a.line if a else None,
                               column=a.column if a else None, key=name, hint=hint))
