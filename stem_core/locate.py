"""Find the master's socket and PID file from a config file, cheaply.

``stemctl`` needs only these two paths for most commands; loading the whole
configuration (nodes, options, validation) would cost more than the command
itself. This reads just the master's keys with the real lexer, applies the
same precedence (``STEMD_*`` in the environment over the file over the
default), and does not care whether the rest of the file is valid: after a
bad edit, ``stemctl reload`` must still reach the master to be told so.

The defaults live here, a leaf module, and :mod:`stem_core.keys` uses them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


def master_path(key: str, path: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of ``STEMD_SOCKET`` or ``STEMD_MASTER_PID_FILE`` for the
    config at ``path`` (which may be missing). Raises ConfigError only when
    the file cannot be read or lexed at all."""
    environ = os.environ if environ is None else environ
    toml_name, default = _MASTER_PATHS[key]
    value = environ.get(key)
    if not value and os.path.exists(path):
        value = _from_file(path, key, toml_name, environ)
    from stem_core.templates import expand, master_values

    return expand(value or default, master_values())


def _from_file(path: str, key: str, toml_name: str, environ: Mapping[str, str]) -> str | None:
    if path.endswith(".toml"):
        import tomllib

        from stem_core.envfile import read_config_bytes
        from stem_core.errors import ConfigError, Problem

        data = read_config_bytes(path)  # bounded; raises ConfigError
        try:
            value = tomllib.loads(data.decode("utf-8", errors="replace")
                                  ).get("stemd", {}).get(toml_name)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(Problem(f"cannot read the configuration: {exc}", file=path)
                              ) from None
        return value if isinstance(value, str) else None
    from stem_core.envfile import read_envfile

    value = None
    for assignment in read_envfile(path, environ):
        if assignment.name == key:
            value = assignment.value
    return value
