"""Load the configuration (env file or TOML) into the frozen model; dump it.

Precedence, lowest first: key defaults, the file, ``STEMD_*`` variables in
stemd's own environment, command-line overrides. Every problem is collected
with its file, line and key, and raised together in one :class:`ConfigError`
so that ``stemd --check`` can list them all.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stem_core import keys as K
from stem_core import migration
from stem_core.envfile import Assignment, quote_env_value, read_config_bytes, read_envfile
from stem_core.errors import MAX_REPORTED, BadValue, ConfigError, Problem
from stem_core.locate import DEFAULT_CONFIG, config_path  # noqa: F401 - re-exported
from stem_core.model import Config, MasterSpec, NodeSpec, Policy, ProgramSpec, RunAs
from stem_core.nodes import (
    MAX_NODES,
    expand_opts,
    parse_node_list,
    pattern_names,
    validate_node_name,
)
from stem_core.pidfile import master_lock_path
from stem_core.statefile import state_path
from stem_core.templates import expand, expand_name, master_values, node_values
from stem_core.trust import check_config_file

ENV_PROGRAM = "worker"  # the program of an env file's STEMD_NODES
SCHEDULER = "scheduler"


@dataclass(frozen=True, slots=True)
class _Raw:
    """A value before parsing, and where it came from (for the error)."""

    value: Any
    file: str | None
    line: int | None
    key: str


def _problem(message: str, raw: _Raw | None, hint: str | None, kw: dict[str, Any]) -> Problem:
    """A problem at ``raw``'s file, line and key (``kw`` may name others)."""
    if raw is not None:
        kw.setdefault("file", raw.file)
        kw.setdefault("line", raw.line)
        kw.setdefault("key", raw.key)
    return Problem(message, hint=hint, **kw)


class _Problems:
    """The problems found, the first MAX_REPORTED of them built (the rest
    counted: see ConfigError)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.omitted = 0
        self._warnings: list[Problem] = []
        self._warnings_omitted = 0

    def warn(self, message: str, raw: _Raw | None = None, hint: str | None = None,
             **kw: Any) -> None:
        """A finding that does not stop the load (the configuration is valid,
        probably not what was meant): Config.warnings."""
        if len(self._warnings) >= MAX_REPORTED:
            self._warnings_omitted += 1
            return
        self._warnings.append(_problem(message, raw, hint, kw))

    def warnings(self) -> tuple[Problem, ...]:
        found = list(self._warnings)
        if self._warnings_omitted:
            found.append(Problem(f"{self._warnings_omitted} more warnings not shown"))
        return tuple(found)

    def wants(self) -> bool:
        """Whether another problem would be reported, so worth a "did you
        mean" search (62,000 unknown keys once cost 6 s of them)."""
        return len(self.items) < MAX_REPORTED

    def suggest(self, name: str, candidates: Any) -> str | None:
        return K.suggest(name, candidates) if self.wants() else None

    def setting_hint(self, name: str) -> str | None:
        """For an unknown STEMD_ key: where the celery option it names goes
        (STEMD_CONCURRENCY -> -c N in STEMD_OPTS), else "did you mean"."""
        if not self.wants():
            return None
        return migration.setting_hint(name) or K.suggest(name, K.BY_ENV)

    def error(self) -> ConfigError:
        return ConfigError(self.items, omitted=self.omitted)

    def add(self, message: str, raw: _Raw | None = None, hint: str | None = None,
            **kw: Any) -> None:
        if not self.wants():
            self.omitted += 1
            return
        self.items.append(_problem(message, raw, hint, kw))

    def parse(self, key: K.Key, raw: _Raw | None) -> Any:
        if raw is None:
            return key.default
        try:
            return key.parse(raw.value)
        except BadValue as exc:
            self.add(exc.message, raw, exc.hint)
            return key.default


def load_config(
    path: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Load ``path`` (TOML if it ends in ``.toml``, else an env file).

    ``environ`` supplies ``$VAR`` expansion and ``STEMD_*`` overrides;
    ``overrides`` maps env-file key names to values given on the command line.
    """
    # Before reading a word of it: a file someone else can write would let
    # them choose the command and the user (root) the nodes run as. Here, so
    # that --check, start-up and every reload get the same refusal.
    untrusted = check_config_file(path)
    if untrusted:
        raise ConfigError(untrusted)
    environ = dict(os.environ if environ is None else environ)
    overrides = dict(overrides or {})
    problems = _Problems()
    for name in overrides:
        if name not in K.BY_ENV:
            problems.add(f"unknown setting {name}", hint=problems.setting_hint(name),
                         key=name, file="command line")
    try:
        if path.endswith(".toml"):
            config = _load_toml(path, environ, overrides, problems)
        else:
            config = _load_env(path, environ, overrides, problems)
        if problems.items:
            raise problems.error()
    except ConfigError:
        # A whole file of another format always fails to load; only then is
        # it worth a second look, to name the format and the converter.
        _refuse_foreign_format(path)
        raise
    assert config is not None
    return config


def _refuse_foreign_format(path: str) -> None:
    """A supervisord or celeryd file would otherwise fail with a lexer error
    about its first line ("'[program:x]' is a command"): name the format and
    the command that converts it."""
    # A second open of a pipe would wait for a writer that may never come
    # (the first reader's close killed it): only a regular file is looked at.
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
        text = read_config_bytes(path).decode("utf-8", errors="replace")
    except (OSError, ConfigError):
        return  # the loader's own error stands
    from stem_core.importers import foreign_format

    found = foreign_format(text)
    if found is not None:
        kind, line = found
        raise ConfigError(Problem(
            f"this is a {kind} configuration: convert it with `stemctl import {kind} {path}`",
            file=path, line=line, hint="docs/migrating.md lists what stemd does differently"))


# -------------------------------------------------------------- env files


def _load_env(path: str, environ: dict[str, str], overrides: dict[str, str],
              problems: _Problems) -> Config | None:
    assignments: list[Assignment] = read_envfile(path, environ)  # raises ConfigError
    raw: dict[str, _Raw] = {}
    exported: dict[str, str] = {}
    for a in assignments:
        if K.is_setting_name(a.name):
            key = K.BY_ENV.get(a.name)
            if key is None:
                problems.add(f"unknown setting {a.name}", hint=problems.setting_hint(a.name),
                             file=path, line=a.line, column=a.column, key=a.name)
                continue
            raw[key.env or a.name] = _Raw(a.value, path, a.line, a.name)
            continue
        finding = migration.legacy_key_finding(a.name, a.exported, K.BY_ENV)
        if finding is not None:
            problems.warn(finding[0], hint=finding[1], file=path, line=a.line, column=a.column,
                          key=a.name)
        if a.exported:
            exported[a.name] = a.value
    _apply_overrides(raw, environ, overrides)

    def get(name: str) -> _Raw | None:
        return raw.get(name)

    master = _master(lambda key: get(key.env) if key.env else None, problems)
    settings = {key.toml: problems.parse(key, get(key.env))
                for key in K.PROGRAM_KEYS.values() if key.env}
    settings["environment"] = tuple(exported.items())
    scheduler_cmd = problems.parse(K.BY_ENV["STEM_SCHEDULER_COMMAND"],
                                   get("STEM_SCHEDULER_COMMAND"))
    programs: list[ProgramSpec] = []
    nodes_raw = get("STEMD_NODES")
    command_raw = get("STEMD_COMMAND")
    if command_raw is not None or nodes_raw is not None or not scheduler_cmd:
        # A scheduler-only file (for a stem-scheduler service) may omit the
        # worker command; anything else needs it.
        if command_raw is None:
            problems.add("STEMD_COMMAND is required", file=path, key="STEMD_COMMAND",
                         hint="the command every node runs, e.g. "
                              "STEMD_COMMAND=\"/usr/local/bin/stem-worker\"")
        else:
            names = _node_names(settings["nodes"], ENV_PROGRAM, nodes_raw, problems,
                                settings["name"], get("STEMD_NODE_NAME"))
            programs.append(_program(ENV_PROGRAM, settings, names))
            _warn_celery(problems, programs[-1], {
                "command": command_raw, "opts": get("STEMD_OPTS"),
                "log_file": get("STEMD_LOG_FILE"), "pid_file": get("STEMD_PID_FILE")})
    if scheduler_cmd:
        sched = dict(settings, command=scheduler_cmd, opts="")
        programs.append(_program(SCHEDULER, sched, (SCHEDULER,)))
        _warn_celery(problems, programs[-1], {"command": get("STEM_SCHEDULER_COMMAND")},
                     templates=False)
    return _finish(path, master, programs, problems, _env_where(path, raw))


def _apply_overrides(raw: dict[str, _Raw], environ: Mapping[str, str],
                     overrides: Mapping[str, str]) -> None:
    """``STEMD_*`` in the process environment, then command-line flags."""
    for source, values in (("environment", environ), ("command line", overrides)):
        for name, value in values.items():
            key = K.BY_ENV.get(name)
            if key is None or not (name.startswith("STEMD_") or source == "command line"):
                continue
            raw[key.env or name] = _Raw(value, source, None, name)


def _master(lookup: Any, problems: _Problems) -> MasterSpec:
    values = {key.toml: problems.parse(key, lookup(key)) for key in K.MASTER_KEYS.values()}
    return MasterSpec(**values)


# ------------------------------------------------------------------- TOML


_TOML_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


def _toml_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line number, so errors about values can name a line
    (tomllib reports positions only for syntax errors)."""
    where: dict[tuple[str, str], int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = header.group(1).replace('"', "").replace("'", "")
            where.setdefault((table, ""), number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            where.setdefault((table, assign.group(1).strip("\"'")), number)
    return where


def _load_toml(path: str, environ: dict[str, str], overrides: dict[str, str],
               problems: _Problems) -> Config | None:
    data_bytes = read_config_bytes(path)  # bounded; raises ConfigError
    text = data_bytes.decode("utf-8", errors="replace")
    try:
        import tomllib  # here: an env-file master never needs it

        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        line, column = (int(match.group(1)), int(match.group(2))) if match else (None, None)
        message = _TOML_LINE.sub("", str(exc)).strip()
        raise ConfigError(Problem(f"invalid TOML: {message}", file=path, line=line,
                                  column=column)) from None
    lines = _toml_lines(text)

    def raw_at(table: str, name: str, value: Any) -> _Raw:
        return _Raw(value, path, lines.get((table, name)), f"[{table}] {name}")

    env_raw: dict[str, _Raw] = {}
    _apply_overrides(env_raw, environ, overrides)

    for name in data:
        if name not in ("stemd", "programs"):
            problems.add(f"unknown table [{name}]", file=path, line=lines.get((name, "")),
                         hint=problems.suggest(name, ["stemd", "programs"]) or
                         "use [stemd] and [programs.NAME]")
    stemd = data.get("stemd", {})
    if not isinstance(stemd, dict):
        problems.add("[stemd] must be a table", file=path)
        stemd = {}
    for name in stemd:
        if name not in K.MASTER_KEYS:
            problems.add(f"unknown key {name!r} in [stemd]", raw_at("stemd", name, None),
                         problems.suggest(name, K.MASTER_KEYS))

    def master_lookup(key: K.Key) -> _Raw | None:
        if key.env and key.env in env_raw:
            return env_raw[key.env]
        if key.toml in stemd:
            return raw_at("stemd", key.toml, stemd[key.toml])
        return None

    master = _master(master_lookup, problems)
    programs_data = data.get("programs", {})
    if not isinstance(programs_data, dict) or not programs_data:
        problems.add("no programs: add a [programs.NAME] table with a command", file=path)
        programs_data = {}
    programs: list[ProgramSpec] = []
    for prog_name, table in programs_data.items():
        section = f"programs.{prog_name}"
        if not isinstance(table, dict):
            problems.add(f"[{section}] must be a table", file=path)
            continue
        for name in table:
            if name not in K.PROGRAM_KEYS:
                problems.add(f"unknown key {name!r} in [{section}]", raw_at(section, name, None),
                             problems.suggest(name, K.PROGRAM_KEYS))
        settings: dict[str, Any] = {}
        raws: dict[str, _Raw | None] = {}
        for key in K.PROGRAM_KEYS.values():
            raw: _Raw | None = None
            if key.env and key.env in env_raw and key.toml not in ("nodes", "name"):
                raw = env_raw[key.env]
            elif key.toml in table:
                raw = raw_at(section, key.toml, table[key.toml])
            elif key.scope is K.Scope.BOTH and key.toml in stemd:
                raw = raw_at("stemd", key.toml, stemd[key.toml])
            settings[key.toml] = problems.parse(key, raw)
            raws[key.toml] = raw
        if "command" not in table:
            problems.add(f"[{section}] needs a command", file=path,
                         line=lines.get((section, "")), key=f"[{section}] command")
            continue
        nodes_raw = raw_at(section, "nodes", table["nodes"]) if "nodes" in table else None
        if nodes_raw is None and raws["name"] is None:
            names: tuple[str, ...] = (prog_name,)
        else:
            names = _node_names(settings["nodes"] if nodes_raw else 1, prog_name, nodes_raw,
                                problems, settings["name"], raws["name"])
        programs.append(_program(prog_name, settings, names))
        _warn_celery(problems, programs[-1], raws)
    return _finish(path, master, programs, problems, _toml_where(path, env_raw, lines))


# ------------------------------------------------------- shared expansion


def _node_names(value: Any, prefix: str, raw: _Raw | None, problems: _Problems,
                pattern: str | None = None, pattern_raw: _Raw | None = None
                ) -> tuple[str, ...]:
    try:
        if pattern is not None:
            try:
                return pattern_names(str(value), pattern, prefix)
            except BadValue as exc:
                # about the pattern itself, or (a list of names) about nodes
                problems.add(exc.message, pattern_raw or raw, exc.hint)
                return ()
        return parse_node_list(str(value), prefix=prefix)
    except BadValue as exc:
        problems.add(exc.message, raw, exc.hint)
        return ()


def _warn_celery(problems: _Problems, program: ProgramSpec, raws: Mapping[str, _Raw | None],
                 templates: bool = True) -> None:
    """Warnings for what a celery multi user carries over and stemd does not
    mean (see stem_core.migration): each names the line of the command,
    opts or file template it is about."""
    try:
        command = shlex.split(program.command)
        opts = shlex.split(program.opts)
    except ValueError:
        return  # an error, reported by _finish
    celery = migration.runs_celery_worker(command)
    for words, which in ((command, "command"), (opts, "opts")):
        for message, hint in migration.argv_findings(words, celery):
            problems.warn(message, raws.get(which), hint)
    unnamed = migration.needs_node_names(command + opts, len(program.nodes))
    if unnamed is not None:
        problems.warn(unnamed[0], raws.get("opts") or raws.get("command"), unnamed[1])
    if not templates:
        return
    first = node_values(program.nodes[0], program.name, 1) if program.nodes else None
    for which, env_name in (("log_file", "STEMD_LOG_FILE"), ("pid_file", "STEMD_PID_FILE")):
        template = getattr(program, which)
        example = expand(template, first) if first else template
        finding = migration.template_finding(template, env_name, example)
        if finding is not None:
            problems.warn(finding[0], raws.get(which), finding[1])


def _program(name: str, settings: dict[str, Any], nodes: tuple[str, ...]) -> ProgramSpec:
    """Build a program's spec, each part from the keys that name it."""
    parts: dict[str, dict[str, Any]] = {"program": {}, "policy": {}, "run_as": {}}
    for key in K.PROGRAM_KEYS.values():
        if key.toml != "nodes" and key.part in parts:  # not "node_names": spent
            parts[key.part][key.toml] = settings.get(key.toml, key.default)
    return ProgramSpec(name=name, nodes=nodes, policy=Policy(**parts["policy"]),
                       run_as=RunAs(**parts["run_as"]), name_pattern=settings.get("name"),
                       **parts["program"])


def _finish(path: str, master: MasterSpec, programs: list[ProgramSpec], problems: _Problems,
            where: _Where) -> Config:
    host = master_values()
    master = dataclasses.replace(master, pid_file=expand(master.pid_file, host),
                                 log_file=expand(master.log_file, host),
                                 socket=expand(master.socket, host))
    nodes: list[NodeSpec] = []
    program_names = {p.name for p in programs}
    seen: dict[str, str] = {}
    def add(message: str, program: str, name: str, hint: str | None = None) -> None:
        """A problem of a program's key, at the line (and key) that set it."""
        key, file, line = where(False, program, name)
        problems.add(message, hint=hint, key=key, file=file, line=line)

    for program in programs:
        try:
            tails = expand_opts(program.opts, program.nodes)
        except BadValue as exc:
            add(exc.message, program.name, "opts", exc.hint)
            tails = {n: () for n in program.nodes}
        try:
            words = shlex.split(program.command)
        except ValueError as exc:
            add(f"cannot split the command: {exc}", program.name, "command")
            continue
        if not words:
            add("the command is empty", program.name, "command")
            continue
        for index, name in enumerate(program.nodes, 1):
            if name in seen:
                add(f"node {name!r} is defined twice (programs {seen[name]} and "
                    f"{program.name})", program.name, "nodes", "node names must be unique")
                continue
            if name in program_names and name != program.name:
                add(f"node {name!r} has the name of another program", program.name, "nodes",
                    "rename the node or the program")
            seen[name] = program.name
            nodes.append(_node_spec(program, name, index, words, tails.get(name, ())))
    _check_paths(path, master, nodes, problems, where)
    return Config(source=os.path.abspath(path), master=master, programs=tuple(programs),
                  nodes=tuple(nodes), warnings=problems.warnings())


def _node_spec(program: ProgramSpec, name: str, index: int, words: list[str],
               tail: tuple[str, ...]) -> NodeSpec:
    values = node_values(name, program.name, index)
    argv = tuple(expand(w, values) for w in (*words, *tail))
    return NodeSpec(
        name=name, program=program.name, index=index, argv=argv,
        directory=expand(program.directory, values),
        environment=program.environment,
        pid_file=expand(program.pid_file, values),
        log_file=expand(program.log_file, values),
        policy=program.policy, run_as=program.run_as,
        stderr_log_file=expand(program.stderr_log_file or program.log_file, values),
        autostart=program.autostart, priority=program.priority,
    )


def scaled(config: Config, program_name: str, count: int) -> Config:
    """``config`` with ``count`` nodes in program ``program_name`` (``stemctl
    scale``): the first ``count`` of its nodes are kept (the highest-numbered
    go first); new ones are named as a reload of a file with that count
    would name them (the program's ``name`` pattern, else ``PROGRAM<index>``),
    skipping names already in use. Raises BadValue."""
    program = next((p for p in config.programs if p.name == program_name), None)
    if program is None:
        known = ", ".join(p.name for p in config.programs)
        raise BadValue(f"no such program: {program_name}", hint=f"programs: {known}")
    if not 1 <= count <= MAX_NODES:
        raise BadValue(f"node count {count} out of range",
                       hint=f"1 to {MAX_NODES}; 'stemctl stop {program_name}' stops them all")
    names = list(program.nodes[:count])
    taken = {n.name for n in config.nodes} | {p.name for p in config.programs}
    index = len(names)
    pattern = program.name_pattern
    if pattern and len(names) < count and \
            expand_name(pattern, program.name, 1) == expand_name(pattern, program.name, 2):
        # no %i: a reload with that count would refuse it too (pattern_names)
        raise BadValue(f"the name pattern {pattern!r} of program {program_name} gives every "
                       "node the same name: it cannot name more nodes",
                       hint="put %i in the pattern (the name key, STEMD_NODE_NAME)")
    while len(names) < count:
        index += 1
        name = expand_name(pattern, program.name, index) if pattern else \
            f"{program.name}{index}"
        if name in taken:
            continue
        validate_node_name(name)
        names.append(name)
    new_program = dataclasses.replace(program, nodes=tuple(names))
    words = shlex.split(program.command)
    tails = expand_opts(program.opts, tuple(names))
    by_name = {n.name: n for n in config.nodes if n.program == program_name}
    nodes: list[NodeSpec] = []
    for p in config.programs:
        if p.name != program_name:
            nodes += [n for n in config.nodes if n.program == p.name]
            continue
        for i, name in enumerate(names, 1):
            nodes.append(by_name.get(name) or
                         _node_spec(new_program, name, i, words, tails.get(name, ())))
    problems = _Problems()
    _check_paths(config.source, config.master, nodes, problems,
                 lambda master, program, key: (key, config.source, None))
    if problems.items:
        raise BadValue(problems.items[0].message, hint=problems.items[0].hint)
    programs = tuple(new_program if p.name == program_name else p for p in config.programs)
    return Config(source=config.source, master=config.master, programs=programs,
                  nodes=tuple(nodes), warnings=config.warnings)



#: (is it a master key, program name, TOML name) -> (key as written, file, line)
_Where = Callable[[bool, str, str], tuple[str, str | None, int | None]]


def _env_where(path: str, raw: Mapping[str, _Raw]) -> _Where:
    def where(master: bool, program: str, name: str) -> tuple[str, str | None, int | None]:
        key = (K.MASTER_KEYS if master else K.PROGRAM_KEYS)[name]
        found = raw.get(key.env or "")
        if found is not None:
            return found.key, found.file, found.line
        return key.env or name, path, None
    return where


def _toml_where(path: str, env_raw: Mapping[str, _Raw], lines: Mapping[Any, Any]) -> _Where:
    def where(master: bool, program: str, name: str) -> tuple[str, str | None, int | None]:
        key = (K.MASTER_KEYS if master else K.PROGRAM_KEYS)[name]
        found = env_raw.get(key.env or "")
        if found is not None:
            return found.key, found.file, found.line
        section = "stemd" if master else f"programs.{program}"
        if (section, name) not in lines and (("stemd", name) in lines):
            section = "stemd"  # a program's default from [stemd]
        return f"[{section}] {name}", path, lines.get((section, name))
    return where


_NODE_FILES = {"pid_file": "the PID file", "log_file": "the log file",
               "stderr_log_file": "the stderr log file"}
_LOGS = ("log_file", "stderr_log_file")


def _check_paths(source: str, master: MasterSpec, nodes: list[NodeSpec], problems: _Problems,
                 where: _Where) -> None:
    """Every file has one owner. A node file that is a master file lets the
    node steer the master (a node log at the master PID file was chowned to
    the node user); two nodes on one PID file make one unsupervisable; a
    node's log on another node's PID file corrupts the record. Nodes may
    share a log file: each appends with O_APPEND, as celery multi allows.
    Paths are compared after normalisation (``//``, ``/./``, ``..``).
    Relative paths would depend on the master's cwd (which is /)."""

    def add(message: str, at: tuple[str, str | None, int | None], hint: str) -> None:
        key, file, line = at
        problems.add(message, hint=hint, key=key, file=file, line=line)

    master_files: dict[str, str] = {}
    for name, what in (("pid_file", "master PID file"), ("socket", "control socket"),
                       ("log_file", "master log")):
        value = getattr(master, name)
        if value == "-":
            continue
        if not os.path.isabs(value):
            add(f"the master's {name} is not an absolute path: {value}", where(True, "", name),
                "start it with /")
            continue
        master_files.setdefault(os.path.normpath(value), what)
    if os.path.isabs(master.pid_file):
        master_files.setdefault(os.path.normpath(state_path(master.pid_file)), "state file")
        master_files.setdefault(os.path.normpath(master_lock_path(master.pid_file)),
                                "master lock file")
    master_files.setdefault(os.path.normpath(os.path.abspath(source)), "configuration file")
    # path -> (node, what) of the first node file seen there
    node_files: dict[str, tuple[NodeSpec, str]] = {}
    for node in nodes:
        for name in ("pid_file", "log_file", "stderr_log_file"):
            value = getattr(node, name)
            if value == "-" and name in _LOGS:
                continue
            if name == "stderr_log_file" and value == node.log_file:
                continue  # stderr with stdout: checked as the log file
            at = where(False, node.program, name)
            if not os.path.isabs(value):
                add(f"{name} of node {node.name} is not an absolute path: {value}", at,
                    "start it with /")
                continue
            norm = os.path.normpath(value)
            mine = f"{_NODE_FILES[name]} of node {node.name} ({value})"
            if norm in master_files:
                add(f"{mine} is the {master_files[norm]}: a node file there would let the "
                    "node user steer the master", at, "give the node its own file")
                continue
            other = node_files.get(norm)
            if other is None:
                node_files[norm] = (node, name)
                continue
            if name in _LOGS and other[1] in _LOGS:
                continue  # a shared log is fine
            theirs = f"{_NODE_FILES[other[1]]} of node {other[0].name}"
            if name == "pid_file" and other[1] == "pid_file":
                add(f"node {node.name} shares its PID file {value} with node {other[0].name}",
                    at, "put %n in the PID file template")
            else:
                add(f"{mine} is {theirs}", at, "give each node its own PID file (%n)")


# ------------------------------------------------------------------ dumping


def to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as TOML-shaped data (defaults included)."""
    stemd = dataclasses.asdict(config.master)
    programs: dict[str, Any] = {}
    for p in config.programs:
        # the parts flatten back into one table: their fields are the keys
        table = {f.name: getattr(p, f.name) for f in dataclasses.fields(ProgramSpec)
                 if f.name not in ("name", "policy", "run_as", "name_pattern")}
        table.update(dataclasses.asdict(p.policy), **dataclasses.asdict(p.run_as))
        table["nodes"] = list(p.nodes)
        table["environment"] = dict(p.environment)
        table["umask"] = f"{p.run_as.umask:03o}"
        programs[p.name] = table
    return {"stemd": {k: v for k, v in stemd.items() if v is not None},
            "programs": {n: {k: v for k, v in t.items() if v is not None}
                         for n, t in programs.items()}}


def dump_toml(config: Config) -> str:
    import tomli_w  # only stemctl config --toml and import write TOML

    return tomli_w.dumps(to_dict(config))


def sample_envfile() -> str:
    """The commented sample ``etc/default/stem``, rendered from the key table."""
    out = [
        "# /etc/default/stem: configuration of stemd (one master, many worker nodes).",
        "# Shell-assignment syntax, parsed by stemd and never run by a shell:",
        "# KEY=value, KEY=\"value\", export NAME=value (passed to every node), $VAR.",
        "# STEMD_* variables in stemd's environment override this file; command-line",
        "# flags override both. Templates in paths and commands: %n node, %p program,",
        "# %i index, %h host name, %d domain, %% a literal %.",
        "",
    ]
    for key in K.KEYS:
        if key.env is None:
            continue
        out.append(f"# {key.doc}")
        if key.aliases:
            out.append(f"# (alias: {', '.join(key.aliases)})")
        if key.default is not None and key.default_text != "":
            out.append(f"#{key.env}={quote_env_value(key.default_text)}")
        else:
            example = key.example or ""
            out.append(f"#{key.env}={quote_env_value(example)}")
        out.append("")
    out.append("# Variables exported here reach every node, as in /etc/default/celeryd:")
    out.append("#export DJANGO_SETTINGS_MODULE=app.settings")
    return "\n".join(out) + "\n"


def key_reference_markdown() -> str:
    """The key table of docs/configuration.md, rendered from the key table."""
    rows = ["| env file | TOML | section | default | meaning |", "|---|---|---|---|---|"]
    for key in K.KEYS:
        env = f"`{key.env}`" + (f" (alias `{'`, `'.join(key.aliases)}`)" if key.aliases else "") \
            if key.env else "—"
        toml = f"`{key.toml}`" if key.toml else "—"
        section = {"master": "`[stemd]`", "program": "`[programs.NAME]`",
                   "both": "`[stemd]`, `[programs.NAME]`"}[key.scope]
        default = f"`{key.default_text}`" if key.default_text else "—"
        rows.append(f"| {env} | {toml} | {section} | {default} | {key.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
