"""``stemctl import supervisord FILE``: a supervisord ini file -> stemd TOML.

The file is read the way supervisord 4 reads it: ``configparser`` with ``;``
and ``#`` inline comments and non-strict sections (a section repeated in an
included file is merged into the first), ``[include] files=`` globs relative
to the main file (supervisord does not follow an ``[include]`` inside an
included file either), ``%(here)s`` the directory of the file that holds the
value, and Python ``%`` interpolation with ``ENV_X`` (the environment, then
``[supervisord] environment``, then the program's own), ``program_name``,
``group_name``, ``host_node_name``, ``process_num`` and ``numprocs``.

configparser does not say where a value came from, so the files are scanned
for ``[section]`` and ``key =`` lines alongside, and every note names its
file and line.

A program with ``numprocs`` becomes one stemd program whose explicit node
list holds supervisord's process names. Values that differ per process are
written once with ``%n`` (the node name) where the process name explains the
difference; otherwise each process becomes a program of its own.
"""

from __future__ import annotations

import configparser
import glob
import os
import platform
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stem_core import keys as K
from stem_core.errors import BadValue, ConfigError, Problem
from stem_core.importers import ImportResult, Note
from stem_core.nodes import pattern_names, validate_node_name

__all__ = ["import_supervisord", "parse_environment"]

_SECTION_LINE = re.compile(r"^\[([^\]]+)\]")
_KEY_LINE = re.compile(r"^([^\s=:;#\[][^=:]*?)\s*[=:]")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_LOG_NONE = ("none", "off")
_STANDARD_RPC = "supervisor.rpcinterface:make_main_rpcinterface"
_LOGROTATE = ("rotation is logrotate's job in stemd: see etc/logrotate.d/stem "
              "(size, rotate and copytruncate or a `stemctl kill -s HUP` postrotate)")
_LATER = "not yet supported by stemd; once it is, write: "
_PROCESS_NUM = re.compile(r"%\(process_num\)(0?\d*)d")


def parse_environment(value: str) -> dict[str, str]:
    """supervisord's ``KEY=val,KEY2="a,b"`` (``dict_of_key_value_pairs``):
    shlex tokens ``KEY = VALUE`` separated by commas; quotes around a value
    are removed, so a value may hold commas."""
    lexer = shlex.shlex(value)
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    pairs: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        key_eq_value = tokens[index:index + 3]
        if len(key_eq_value) != 3 or key_eq_value[1] != "=":
            raise BadValue(f"unexpected end of KEY=value pairs in {value!r}",
                           hint='write KEY="value",KEY2="value 2"')
        pairs[key_eq_value[0]] = key_eq_value[2].strip("'\"")
        index += 4
    return pairs


@dataclass(frozen=True, slots=True)
class _Value:
    """One raw ini value and where it was written."""

    text: str
    file: str
    line: int | None
    here: str


class _Source:
    """The merged sections of the main file and its includes."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, _Value]] = {}
        self.section_at: dict[str, tuple[str, int | None]] = {}
        self.files: list[str] = []

    def read(self, path: str, notes: list[Note]) -> configparser.RawConfigParser:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(Problem(f"cannot read the supervisord configuration: {reason}",
                                      file=path)) from None
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"),
                                              strict=False, interpolation=None)
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            line = getattr(exc, "lineno", None)
            message = str(exc).splitlines()[0]
            raise ConfigError(Problem(f"not a valid supervisord ini file: {message}",
                                      file=path, line=line)) from None
        lines = _scan_lines(text)
        here = os.path.dirname(os.path.abspath(path))
        self.files.append(path)
        for section in parser.sections():
            self.section_at.setdefault(section, (path, lines.get((section, ""))))
            target = self.sections.setdefault(section, {})
            for key, value in parser.items(section):
                target[key] = _Value(value, path, lines.get((section, key)), here)
        return parser


def _scan_lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line; (section, "") -> the header's line. Keys are
    lowercased as configparser does; the last definition wins, as there."""
    where: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1).strip()
            where.setdefault((section, ""), number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            where[(section, key.group(1).strip().lower())] = number
    return where


class _Importer:
    def __init__(self, path: str, environ: Mapping[str, str], host: str) -> None:
        self.path = path
        self.notes: list[Note] = []
        self.problems: list[Problem] = []
        self.comments: list[str] = []
        self.source = _Source()
        self.env_expansions = {f"ENV_{k}": v for k, v in environ.items()}
        self.host = host

    # -------------------------------------------------------------- helpers

    def note(self, value: _Value | None, setting: str, advice: str,
             translated: bool = False, section: str | None = None) -> None:
        if value is not None:
            file, line = value.file, value.line
        elif section is not None:
            file, line = self.source.section_at.get(section, (self.path, None))
        else:
            file, line = self.path, None
        self.notes.append(Note(file, line, setting, advice, translated))

    def expand(self, section: str, key: str, value: _Value, extra: Mapping[str, Any]) -> str:
        expansions = {**self.env_expansions, "here": value.here,
                      "host_node_name": self.host, **extra}
        try:
            return value.text % expansions
        except KeyError as exc:
            names = ", ".join(sorted(expansions_names(expansions)))
            self.problems.append(Problem(
                f"%({exc.args[0]})s cannot be expanded", file=value.file, line=value.line,
                key=f"[{section}] {key}", hint=f"available: {names}"))
        except (ValueError, TypeError) as exc:
            self.problems.append(Problem(
                f"badly formatted %-expansion: {exc}", file=value.file, line=value.line,
                key=f"[{section}] {key}", hint="write a literal % as %%"))
        return value.text

    def problem(self, value: _Value | None, section: str, key: str, message: str,
                hint: str | None = None) -> None:
        file, line = self.source.section_at.get(section, (self.path, None))
        if value is not None and value.line is not None:
            file, line = value.file, value.line
        self.problems.append(Problem(message, file=file, line=line, key=f"[{section}] {key}",
                                     hint=hint))

    # ----------------------------------------------------------------- read

    def read(self) -> None:
        main = self.source.read(self.path, self.notes)
        if not main.has_section("include"):
            return
        include = self.source.sections["include"]
        files = include.get("files")
        if files is None:
            self.problem(None, "include", "files", "[include] has no files setting")
            return
        patterns = self.expand("include", "files", files, {}).split()
        base = os.path.dirname(os.path.abspath(self.path))
        for pattern in patterns:
            pattern = os.path.join(base, pattern)
            matches = sorted(glob.glob(pattern))
            if not matches:
                self.note(files, "[include] files",
                          f"no file matches {pattern} (supervisord only warns too)",
                          translated=True)
            for filename in matches:
                before = {k: dict(v) for k, v in self.source.sections.items()}
                self.source.read(filename, self.notes)
                nested = self.source.sections["include"].get("files")
                if nested is not None and nested.file == filename:
                    self.note(nested, "[include] files",
                              "an [include] inside an included file is ignored by supervisord "
                              "too: nothing imported from it")
                    self.source.sections["include"] = before["include"]

    # -------------------------------------------------------------- convert

    def convert(self) -> dict[str, Any]:
        sections = self.source.sections
        stemd: dict[str, Any] = {}
        supervisord = sections.get("supervisord", {})
        global_env = self._supervisord(supervisord, stemd)
        self._unix_http_server(sections.get("unix_http_server", {}), stemd)
        groups = self._groups()
        programs: list[tuple[int, str, dict[str, Any]]] = []
        for section, values in sections.items():
            kind, _, name = section.partition(":")
            if kind == "program" and name:
                group = groups.get(name, name)
                for prog_name, table in self._program(section, name, group, values,
                                                      supervisord, global_env):
                    priority = values.get("priority")
                    order = int(priority.text) if priority and priority.text.strip(
                        ).lstrip("-").isdigit() else 999
                    programs.append((order, prog_name, table))
            elif section in ("supervisord", "unix_http_server", "include", "supervisorctl") or (
                    kind == "group" and name):
                continue  # read above; [supervisorctl] configures the client only
            elif kind == "rpcinterface":
                factory = values.get("supervisor.rpcinterface_factory")
                if factory is None or factory.text.strip() != _STANDARD_RPC:
                    self.note(None, f"[{section}]", "a custom XML-RPC interface has no "
                              "stemd counterpart: stemctl speaks JSON over the Unix socket",
                              section=section)
            elif section == "inet_http_server":
                self.note(None, "[inet_http_server]",
                          "stemd has no TCP control port, on purpose: the control socket is "
                          "a Unix socket checked with peer credentials. Remote control: "
                          "ssh host stemctl ...", section=section)
            elif kind == "eventlistener":
                self.note(None, f"[{section}]",
                          "event listeners have no stemd counterpart: watch `stemctl status "
                          "--json` or the master log (node: OLD -> NEW lines) instead",
                          section=section)
            elif kind == "fcgi-program":
                self.note(None, f"[{section}]",
                          "stemd does not open sockets for its nodes: let the program bind "
                          "its own socket (or use systemd socket activation)", section=section)
            elif kind == "ctlplugin":
                self.note(None, f"[{section}]", "stemctl has no plugins", section=section)
            else:
                self.note(None, f"[{section}]", "unknown section, not imported",
                          section=section)
        programs.sort(key=lambda p: (p[0], p[1]))
        out: dict[str, Any] = {}
        if stemd:
            out["stemd"] = stemd
        out["programs"] = {name: table for _, name, table in programs}
        if not programs:
            self.problems.append(Problem("no [program:x] section: nothing to run",
                                         file=self.path))
        return out

    def _supervisord(self, values: dict[str, _Value], stemd: dict[str, Any]) -> dict[str, str]:
        def get(key: str) -> str | None:
            value = values.get(key)
            return None if value is None else self.expand("supervisord", key, value, {})

        env: dict[str, str] = {}
        if "environment" in values:
            env = self._environment("supervisord", values["environment"], {})
            self.env_expansions.update({f"ENV_{k}": v for k, v in env.items()})
        for key, value in values.items():
            text = get(key) or ""
            if key == "pidfile":
                stemd["pid_file"] = _absolute(text, value.here)
            elif key == "logfile":
                stemd["log_file"] = _absolute(text, value.here)
            elif key == "loglevel":
                level = text.strip().lower()
                mapped = {"critical": "CRITICAL", "error": "ERROR", "warn": "WARNING",
                          "info": "INFO", "debug": "DEBUG"}.get(level)
                if mapped is None:
                    stemd["log_level"] = "DEBUG"
                    self.note(value, "[supervisord] loglevel",
                              f"{level!r} is more verbose than stemd's DEBUG: using DEBUG")
                else:
                    stemd["log_level"] = mapped
            elif key == "user":
                stemd["user"] = text
            elif key in ("environment", "umask", "directory"):
                continue  # applied to every program (children inherit them)
            elif key == "nodaemon":
                if text.strip().lower() in _TRUE:
                    self.note(value, "[supervisord] nodaemon",
                              "run `stemd --foreground` (or the stem-worker-notify unit)")
            elif key in ("logfile_maxbytes", "logfile_backups"):
                self.note(value, f"[supervisord] {key}", _LOGROTATE)
            elif key in ("minfds", "minprocs"):
                self.note(value, f"[supervisord] {key}",
                          "set the limit where stemd is started: LimitNOFILE=/LimitNPROC= in "
                          "the systemd unit, or ulimit in the init script")
            elif key == "childlogdir":
                self.note(value, "[supervisord] childlogdir",
                          "stemd has no automatic log names: each node logs to its log_file "
                          "(default /var/log/stem/%n.log)")
            elif key == "identifier":
                continue  # an XML-RPC name, meaningless without XML-RPC
            else:
                self.note(value, f"[supervisord] {key}", "no stemd counterpart, not imported")
        return env

    def _unix_http_server(self, values: dict[str, _Value], stemd: dict[str, Any]) -> None:
        for key, value in values.items():
            text = self.expand("unix_http_server", key, value, {})
            if key == "file":
                stemd["socket"] = _absolute(text, value.here)
            elif key == "chown":
                group = text.partition(":")[2].strip()
                if group and "socket_group" in K.MASTER_KEYS:
                    stemd["socket_group"] = group
                    self.note(value, "[unix_http_server] chown",
                              f"translated to socket_group = {group!r} (STEMD_SOCKET_GROUP); "
                              "the socket's owner is always the master's user",
                              translated=True)
                elif group:
                    self.note(value, "[unix_http_server] chown",
                              _LATER + f'socket_group = "{group}" in [stemd] (the socket\'s '
                              "group; its owner is always the master's user)")
                else:
                    self.note(value, "[unix_http_server] chown",
                              "the socket belongs to the master's user; give stemctl access "
                              "to a group with socket_group")
            elif key == "chmod":
                self.note(value, "[unix_http_server] chmod",
                          "the socket is 0660 with socket_group, 0600 without; no other mode",
                          translated=text.strip() in ("0660", "0600", "0700", "0770"))
            elif key in ("username", "password"):
                self.note(value, f"[unix_http_server] {key}",
                          "stemctl is authorised by the peer's uid and groups (SO_PEERCRED), "
                          "not a password: add the users to socket_group")
            else:
                self.note(value, f"[unix_http_server] {key}", "no stemd counterpart")

    def _groups(self) -> dict[str, str]:
        """program -> group; each group is explained once (no stemd key)."""
        members: dict[str, str] = {}
        for section, values in self.source.sections.items():
            kind, _, name = section.partition(":")
            if kind != "group" or not name:
                continue
            programs_value = values.get("programs")
            programs = [] if programs_value is None else [
                p.strip() for p in self.expand(section, "programs", programs_value,
                                               {}).split(",") if p.strip()]
            for program in programs:
                members[program] = name
            listed = " ".join(programs)
            self.comments.append(f"group {name}: stemctl start|stop|restart {listed}")
            self.note(programs_value, f"[{section}] programs",
                      f"stemd has no groups: a program name selects all its nodes, so "
                      f"`stemctl restart {listed}` does what `supervisorctl restart {name}:*` "
                      "did", translated=True, section=section)
            for key, value in values.items():
                if key == "priority":
                    self.note(value, f"[{section}] priority",
                              "stemd has no groups: write priority = "
                              f"{value.text.strip()} in each of its programs (supervisord "
                              "orders groups by it, then programs by their own)")
                elif key != "programs":
                    self.note(value, f"[{section}] {key}", "no stemd counterpart")
        return members

    # --------------------------------------------------------------- programs

    def _environment(self, section: str, value: _Value, extra: Mapping[str, Any]
                     ) -> dict[str, str]:
        text = self.expand(section, "environment", value, extra)
        try:
            return parse_environment(text)
        except BadValue as exc:
            self.problem(value, section, "environment", exc.message, exc.hint)
            return {}

    def _program(self, section: str, name: str, group: str, values: dict[str, _Value],
                 supervisord: dict[str, _Value], global_env: dict[str, str]
                 ) -> list[tuple[str, dict[str, Any]]]:
        def raw(key: str, default: str) -> str:
            value = values.get(key)
            return default if value is None else self.expand(section, key, value, base)

        base: dict[str, Any] = {"program_name": name, "group_name": group}
        try:
            numprocs = int(raw("numprocs", "1"))
            start = int(raw("numprocs_start", "0"))
        except ValueError:
            self.problem(values.get("numprocs"), section, "numprocs", "not a whole number")
            return []
        if "command" not in values:
            self.problem(None, section, "command", "program section has no command")
            return []
        name_value = values.get("process_name", _Value("%(program_name)s", self.path, None,
                                                        ""))
        if numprocs > 1 and "%(process_num)" not in name_value.text:
            self.problem(name_value, section, "process_name",
                         "%(process_num) must be present within process_name when "
                         "numprocs > 1")
            return []
        processes: list[dict[str, Any]] = []
        for num in range(start, start + numprocs):
            extra = {**base, "process_num": num, "numprocs": numprocs}
            processes.append(self._process(section, values, supervisord, global_env, extra))
        names = [p["name"] for p in processes]
        for node in names:
            try:
                validate_node_name(node)
            except BadValue as exc:
                self.problem(name_value, section, "process_name", exc.message, exc.hint)
                return []
        merged = _merge(processes)
        if merged is not None:
            table = merged
            pattern = _name_pattern(name_value.text, name, start, names)
            if names != [name]:
                naming: dict[str, Any] = ({"nodes": numprocs, "name": pattern} if pattern
                                          else {"nodes": names})
                table = {"command": table.pop("command"), **naming, **table}
            if numprocs > 1 and pattern is None:
                self.note(name_value, f"[{section}] process_name",
                          "translated to an explicit node list" + _pattern_why(
                              name_value.text, start, numprocs), translated=True)
            self._program_notes(section, values, numprocs)
            return [(name, table)]
        self.note(name_value, f"[{section}]",
                  "the processes differ in more than their name: each became a program "
                  f"of its own ({', '.join(names)}); `stemctl restart {' '.join(names)}` "
                  f"replaces `supervisorctl restart {group}:*`")
        self._program_notes(section, values, numprocs)
        out = []
        for process in processes:
            node = process.pop("name")
            out.append((node, process))
        return out

    def _process(self, section: str, values: dict[str, _Value],
                 supervisord: dict[str, _Value], global_env: dict[str, str],
                 extra: dict[str, Any]) -> dict[str, Any]:
        """One supervisord process as a stemd program table (plus its name)."""
        def get(key: str, default: str | None = None) -> str | None:
            value = values.get(key)
            if value is None:
                return default
            return self.expand(section, key, value, expansions)

        expansions = dict(extra)
        name_value = values.get("process_name")
        name = (self.expand(section, "process_name", name_value, expansions)
                if name_value else extra["program_name"])
        env = dict(global_env)
        if "environment" in values:
            own = self._environment(section, values["environment"], expansions)
            env.update(own)
            expansions.update({f"ENV_{k}": v for k, v in own.items()})
        table: dict[str, Any] = {"name": name, "command": _escape(get("command") or "")}
        directory = get("directory")
        if directory is None and "directory" in supervisord:
            directory = self.expand("supervisord", "directory", supervisord["directory"], {})
        if directory is not None:
            table["directory"] = _escape(directory)
        if env:
            table["environment"] = env
        user = get("user")
        if user is not None:
            table["user"] = user
        umask = get("umask")
        if umask is None and "umask" in supervisord:
            umask = self.expand("supervisord", "umask", supervisord["umask"], {})
        if umask is not None:
            table["umask"] = umask.strip().rjust(3, "0")
        autorestart = (get("autorestart", "unexpected") or "").strip().lower()
        table["restart"] = ("always" if autorestart in _TRUE else
                            "no" if autorestart in _FALSE else "on-failure")
        # supervisord's startretries counts retries after the first start
        # (N + 1 starts); stemd's start_retries, failed starts in a row
        for key, target, default, convert in (
                ("startsecs", "start_secs", "1", int),
                ("startretries", "start_retries", "3", lambda t: int(t) + 1),
                ("stopwaitsecs", "stop_timeout", "10", int)):
            text = get(key, default) or default
            try:
                table[target] = convert(text.strip())
            except ValueError:
                self.problem(values.get(key), section, key, f"not a whole number: {text!r}")
        stopsignal = get("stopsignal")
        if stopsignal is not None:
            table["stop_signal"] = stopsignal.strip().upper().removeprefix("SIG")
        stopasgroup = (get("stopasgroup", "false") or "").strip().lower() in _TRUE
        table["kill_mode"] = "control-group" if stopasgroup else "mixed"
        stdout = get("stdout_logfile")
        if stdout is not None:
            log = _logfile(stdout, values["stdout_logfile"].here)
            if log is not None:
                table["log_file"] = _escape(log)
        redirect = (get("redirect_stderr", "false") or "").strip().lower() in _TRUE
        stderr = None if redirect else get("stderr_logfile", "AUTO")
        if stderr is not None:  # NONE: /dev/null, discarded as supervisord does
            err_log = _logfile(stderr, values["stderr_logfile"].here
                               if "stderr_logfile" in values else "/")
            if err_log is not None:
                table["stderr_log_file"] = _escape(err_log)
            elif stderr.strip().lower() == "auto":
                # supervisord's default: a file of stderr's own
                if table.get("log_file") == "/dev/null":
                    table["stderr_log_file"] = AUTO_STDERR_LOG
                    self.note(values.get("stderr_logfile"), f"[{section}] stderr_logfile",
                              "AUTO (supervisord's default) while stdout is discarded: "
                              f"stderr goes to {AUTO_STDERR_LOG}, not with stdout to "
                              "/dev/null", translated=True, section=section)
                else:
                    self.note(values.get("stderr_logfile"), f"[{section}] stderr_logfile",
                              "AUTO (supervisord's default): stderr goes to the node's "
                              "log_file with stdout", translated=True, section=section)
        autostart = get("autostart")
        if autostart is not None and autostart.strip().lower() in _FALSE:
            table["autostart"] = False
        exitcodes = get("exitcodes")
        if exitcodes is not None:
            try:
                codes = K.parse_exitcodes(exitcodes)
            except BadValue as exc:
                self.problem(values.get("exitcodes"), section, "exitcodes", exc.message,
                             exc.hint)
            else:
                if codes != (0,):
                    table["exitcodes"] = list(codes)
        priority = get("priority")
        if priority is not None:
            try:
                table["priority"] = int(priority.strip())
            except ValueError:
                self.problem(values.get("priority"), section, "priority",
                             f"not a whole number: {priority!r}")
        # stemd's own defaults need not be written (the output stays readable)
        return {k: v for k, v in table.items()
                if k in ("name", "command") or k not in K.PROGRAM_KEYS
                or v != K.PROGRAM_KEYS[k].default}

    def _program_notes(self, section: str, values: dict[str, _Value], numprocs: int) -> None:
        """What the program asks for that stemd cannot (yet) do, once per program."""
        known = {"command", "process_name", "numprocs", "numprocs_start", "directory",
                 "environment", "user", "umask", "autorestart", "startsecs", "startretries",
                 "stopwaitsecs", "stopsignal", "stopasgroup", "killasgroup", "stdout_logfile",
                 "redirect_stderr", "stderr_logfile", "autostart", "exitcodes", "priority"}
        redirect = values.get("redirect_stderr")
        redirected = redirect is not None and redirect.text.strip().lower() in _TRUE
        for key, value in values.items():
            text = value.text.strip()
            setting = f"[{section}] {key}"
            if key == "killasgroup":
                if text.lower() in _FALSE:
                    self.note(value, setting, "stemd always SIGKILLs what is left of the "
                              "node's process group once the node exits or the stop times out",
                              translated=True)
            elif key == "stderr_logfile":
                low = text.lower()
                if redirected:
                    continue
                if low == "syslog":
                    self.note(value, setting, "syslog output is not supported: stderr goes "
                              "to the node's log_file with stdout")
            elif key.endswith(("_logfile_maxbytes", "_logfile_backups")):
                self.note(value, setting, _LOGROTATE)
            elif key in ("stdout_syslog", "stderr_syslog"):
                if text.lower() in _TRUE:
                    self.note(value, setting, "stemd writes node output to files only: "
                              "forward the log file, or run with log_file = \"-\" under "
                              "systemd (journald)")
            elif key.endswith(("_capture_maxbytes", "_events_enabled")):
                self.note(value, setting, "no event system in stemd: not imported")
            elif key == "serverurl":
                self.note(value, setting, "stemd sets STEMD_NODE and STEMD_PROGRAM, not "
                          "SUPERVISOR_SERVER_URL")
            elif key == "stdout_logfile" and text.lower() == "syslog":
                self.note(value, setting, "syslog output is not supported: use a file")
            elif key not in known:
                self.note(value, setting, "unknown supervisord program key, not imported")
        stdout = values.get("stdout_logfile")
        if (stdout is None or stdout.text.strip().lower() == "auto") and numprocs >= 1:
            self.note(values.get("stdout_logfile"), f"[{section}] stdout_logfile",
                      "supervisord's AUTO log names have no stemd counterpart: the nodes "
                      "log to the default log_file, /var/log/stem/%n.log", translated=True,
                      section=section)


def expansions_names(expansions: Mapping[str, Any]) -> list[str]:
    return [k for k in expansions if not k.startswith("ENV_")] + ["ENV_X"]


def _absolute(path: str, here: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(here, path))


#: where stderr goes when supervisord kept it in an AUTO file and stdout is
#: discarded (stemd's own log directory, as its default log_file)
AUTO_STDERR_LOG = "/var/log/stem/%n-stderr.log"


def _logfile(value: str, here: str) -> str | None:
    low = value.strip().lower()
    if low in _LOG_NONE:
        return "/dev/null"
    if low in ("auto", "syslog"):
        return None
    return _absolute(value.strip(), here)


def _escape(text: str) -> str:
    """stemd expands %n, %h, ... in commands and paths: a literal % is %%."""
    return text.replace("%", "%%")


def _merge(processes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One program table for all processes, with ``%n`` standing for the
    process name where the values differ by it; None if they differ
    otherwise."""
    first = {k: v for k, v in processes[0].items() if k != "name"}
    if len(processes) == 1:
        return first
    merged: dict[str, Any] = {}
    for key in first:
        values = [p.get(key) for p in processes]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
            continue
        if not all(isinstance(v, str) for v in values):
            return None  # environments differ: stemd does not template them
        texts = [str(v) for v in values]  # all str, checked above
        templated = {v.replace(p["name"], "%n") for v, p in zip(texts, processes, strict=True)}
        if len(templated) != 1:
            return None
        merged[key] = templated.pop()
    return merged


def _as_pattern(process_name: str) -> str | None:
    """supervisord's ``process_name`` as a stemd ``name`` pattern, if it uses
    only ``%(program_name)s`` and ``%(process_num)d`` (with a width)."""
    pattern = re.sub(r"%\(program_name\)s", "%p", process_name)
    pattern = _PROCESS_NUM.sub(lambda m: f"%{m.group(1)}i", pattern)
    return None if re.search(r"%(?![0-9]*[pi])", pattern) else pattern


def _name_pattern(process_name: str, program: str, start: int, names: list[str]
                  ) -> str | None:
    """The ``name`` pattern that gives exactly ``names``, or None. stemd's
    ``%i`` counts from 1: only ``numprocs_start=1`` maps to a pattern."""
    pattern = _as_pattern(process_name)
    if pattern is None or start != 1 or len(names) < 2:
        return None
    try:
        made = pattern_names(str(len(names)), pattern, program)
    except BadValue:
        return None
    return pattern if list(made) == names else None


def _pattern_why(process_name: str, start: int, numprocs: int) -> str:
    pattern = _as_pattern(process_name)
    if pattern is None:
        return ": the process_name uses more than %(program_name)s and %(process_num)d"
    return (f": supervisord counts from numprocs_start={start}, stemd's %i from 1; with "
            f'numprocs_start=1 this is nodes = {numprocs}, name = "{pattern}"')


def import_supervisord(path: str, environ: Mapping[str, str] | None = None,
                       host_node_name: str | None = None) -> ImportResult:
    """Translate the supervisord configuration ``path`` (and its includes).

    ``environ`` provides ``%(ENV_X)s`` (default: this process's environment,
    as supervisord would see it when started from the same shell). Raises
    :class:`ConfigError` for a file supervisord itself would refuse.
    """
    importer = _Importer(path, os.environ if environ is None else environ,
                         platform.node() if host_node_name is None else host_node_name)
    importer.read()
    toml = importer.convert()
    if importer.problems:
        raise ConfigError(importer.problems)
    comments = (f"Imported from {os.path.abspath(path)} by stemctl import supervisord.",
                *importer.comments)
    return ImportResult(toml=toml, comments=comments, notes=tuple(importer.notes))

