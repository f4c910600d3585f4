"""Find the master's socket and PID file from a config file, cheaply.

``stemctl`` needs only these two paths for most commands; loading the whole
configuration (nodes, options, validation) would cost more than the command
itself. This reads just the master's keys with the real lexer, applies the
same precedence (``STEMD_*`` in the environment over the file over the
default), and does not care whether the rest of the file is valid: after a
bad edit, ``stemctl reload`` must still reach the master to be told so, and
``stemctl shutdown`` (the init script's ``stop``) must still stop it, even
when the file no longer lexes (an unterminated quote).

The defaults live here, a leaf module, and :mod:`stem_core.keys` uses them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from stem_core.errors import ConfigError, Problem

DEFAULT_CONFIG = "/etc/default/stem"
DEFAULT_SOCKET = "/var/run/stem/stemd.sock"
DEFAULT_MASTER_PID_FILE = "/var/run/stem/stemd.pid"

#: env-file name -> (TOML name in [stemd], default)
_MASTER_PATHS = {
    "STEMD_SOCKET": ("socket", DEFAULT_SOCKET),
    "STEMD_MASTER_PID_FILE": ("pid_file", DEFAULT_MASTER_PID_FILE),
}


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--config``, else ``STEMD_CONFIG``, else /etc/default/stem."""
    environ = os.environ if environ is None else environ
    return explicit or environ.get("STEMD_CONFIG") or DEFAULT_CONFIG


def is_default_config(path: str) -> bool:
    """Is ``path`` /etc/default/stem, however it is spelled? Named or not,
    its absence means the default master, the one it would configure."""
    return os.path.normpath(os.path.abspath(path)) == DEFAULT_CONFIG


def master_path(key: str, path: str, environ: Mapping[str, str] | None = None,
                problems: list[Problem] | None = None) -> str:
    """The value of ``STEMD_SOCKET`` or ``STEMD_MASTER_PID_FILE`` for the
    config at ``path``.

    Only /etc/default/stem may be missing (the defaults are then its
    master's paths). Any other file was named (``--config``,
    ``STEMD_CONFIG``) to reach *its* master, and when it does not exist
    (a typo: ``-c /etc/default/stem-biling``) that master is unknown:
    a ConfigError "configuration file not found" naming it, never the
    default master, which is another fleet's.

    A file with errors elsewhere is read leniently: the key's own line is
    still used (a typo in ``STEMD_OPTS`` must not stop ``stemctl stop`` from
    reaching the master it configured), and the file's problems are added
    to ``problems`` for the caller to show. Raises ConfigError only when the
    file cannot be read, or when the key's own line is broken (which master
    it names is then unknown: never silently the default)."""
    environ = os.environ if environ is None else environ
    toml_name, default = _MASTER_PATHS[key]
    value = environ.get(key)
    if not os.path.exists(path) and not is_default_config(path):
        _read(path)  # raises the ConfigError `stemctl config` gives: not found, or unreadable
    if not value and os.path.exists(path):
        value = _from_file(path, key, toml_name, environ, problems)
    from stem_core.templates import expand, master_values

    return expand(value or default, master_values())


def _read(path: str) -> bytes:
    """The file, bounded (a 100 MB file or /dev/zero is refused on its size,
    unread); raises ConfigError."""
    from stem_core.envfile import read_config_bytes

    return read_config_bytes(path)


def _from_file(path: str, key: str, toml_name: str, environ: Mapping[str, str],
               problems: list[Problem] | None) -> str | None:
    data = _read(path)
    if path.endswith(".toml"):
        import tomllib

        try:
            value = tomllib.loads(data.decode("utf-8", "replace")).get("stemd", {}).get(toml_name)
        except tomllib.TOMLDecodeError as exc:
            if problems is not None:
                problems.append(Problem(f"TOML syntax error: {exc}", file=path))
            value = _toml_leniently(data.decode("utf-8", "replace"), path, toml_name)
        return value if isinstance(value, str) else None
    from stem_core.envfile import parse_envfile

    try:
        assignments = parse_envfile(data, path, environ)
    except ConfigError as exc:
        if problems is not None:
            problems.extend(exc.problems)
        return _env_leniently(data, path, key, environ)
    found: str | None = None
    for assignment in assignments:
        if assignment.name == key:
            found = str(assignment.value)
    return found


def _env_leniently(data: bytes, path: str, key: str, environ: Mapping[str, str]) -> str | None:
    """The last ``KEY=`` line of a file that does not lex, lexed on its own
    (with what the lines before it define). The search is by line, so an
    unterminated quote further up cannot hide the line."""
    import re

    from stem_core.envfile import lex_envfile_leniently

    text = data.decode("utf-8", "surrogateescape")
    lines = list(re.finditer(rf"^[ \t]*(?:export[ \t]+)?{key}=", text, re.M))
    if not lines:
        for found_at in re.finditer(rf"(?<![A-Za-z0-9_]){key}=", text):
            line_start = text.rfind("\n", 0, found_at.start()) + 1
            if re.search(r"(?:^|[ \t])#", text[line_start:found_at.start()]):
                # in a comment (etc/default/stem as shipped has '#STEMD_SOCKET=...'):
                # a stop during a typo must not fail on it
                continue
            raise ConfigError(Problem(f"{key} is assigned where it cannot be read without "
                                      "parsing the whole file, which has errors", file=path,
                                      key=key, hint=f"put {key}=... on a line of its own"))
        return None  # not in the file: the default, as for the master
    start = lines[-1].start()
    offset = text.count("\n", 0, start)
    before, _ = lex_envfile_leniently(text[:start], path, environ)
    env = dict(environ)
    env.update((a.name, a.value) for a in before)
    # An unterminated quote swallows the lines after it: read those that
    # lex on their own for the variables the key's line may use.
    known = {a.name for a in before}
    for line in text[:start].splitlines():
        alone, trouble = lex_envfile_leniently(line, path, env)
        if not trouble:
            env.update((a.name, a.value) for a in alone if a.name not in known)
    found, trouble = lex_envfile_leniently(text[start:], path, env)
    own = [p._replace(line=p.line + offset) for p in trouble if p.line == 1]
    if own:
        raise ConfigError(own)
    if not found or found[0].name != key:  # pragma: no cover - the regex says it is there
        raise ConfigError(Problem(f"cannot read {key}", file=path, line=offset + 1, key=key))
    return found[0].value


def _toml_leniently(text: str, path: str, toml_name: str) -> str | None:
    """``[stemd] <toml_name> = "..."`` from a TOML file that does not parse
    as a whole: the line is found and parsed on its own."""
    import re
    import tomllib

    table = None
    value = None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\]]*?)\s*\]", line)
        if header and not line.lstrip().startswith("[["):
            table = header.group(1)
        elif table == "stemd" and re.match(rf"\s*{toml_name}\s*=", line):
            try:
                value = tomllib.loads(line).get(toml_name)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(Problem(f"cannot read [stemd] {toml_name}: {exc}", file=path,
                                          line=number, key=toml_name)) from None
    return value if isinstance(value, str) else None
