"""The frozen configuration model and the reload diff.

Both file formats load into these dataclasses. They are immutable so that a
reload is simply a comparison of two values: a node whose :class:`NodeSpec`
is equal in the old and new configuration keeps running untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from stem_core.errors import BadValue, Problem


@dataclass(frozen=True, slots=True)
class MasterSpec:
    """Settings of the master itself (the ``[stemd]`` table)."""

    pid_file: str
    log_file: str
    socket: str
    socket_group: str | None  # operators' group (STEMD_SOCKET_GROUP); None: 0600
    log_level: str
    user: str | None
    group: str | None
    create_dirs: bool
    force_root: bool
    start_wait: float | None  # None: the longest start_secs + 5
    metrics_listen: str | None = None  # HOST:PORT of GET /metrics; None: off
    # state-change hooks (stemd.hooks): the [stemd] defaults of the programs'
    # values, and how many run at once
    on_state_change: str | None = None
    on_state_change_states: tuple[str, ...] = ("FATAL", "crash-loop", "failed-exit")
    hook_timeout: float = 30.0
    hooks_max: int = 4
    memory_check_interval: float = 5.0  # seconds between two max_rss checks


@dataclass(frozen=True, slots=True)
class Policy:
    """How the nodes of a program are started, stopped and restarted. One
    value shared by a program and each of its nodes: a key of this part is
    declared once, in :data:`stem_core.keys.KEYS` (``part="policy"``), and
    its field here has the key's TOML name (tests/test_keys_model.py)."""

    stop_signal: str
    stop_timeout: float
    kill_mode: str  # "mixed" or "control-group"
    restart: str
    start_secs: float
    start_retries: int
    backoff_max: float
    restart_burst: int
    restart_window: float
    # Exit statuses that count as expected: restart = "on-failure" leaves a
    # node that exits with one EXITED, and no error is recorded.
    exitcodes: tuple[int, ...] = (0,)


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account and umask the nodes of a program run with
    (``part="run_as"`` in the key table)."""

    user: str | None
    group: str | None
    umask: int


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One program as written in the configuration, before expansion into
    nodes. Kept so that ``stemctl config --toml`` can write the file back."""

    name: str
    command: str
    nodes: tuple[str, ...]
    opts: str
    directory: str
    environment: tuple[tuple[str, str], ...]
    pid_file: str
    log_file: str
    policy: Policy
    run_as: RunAs
    stderr_log_file: str | None = None  # None: stderr goes to log_file
    autostart: bool = True
    priority: int = 999
    # Read from the program at the moment they apply (not copied into
    # NodeSpec): changing them at a reload restarts no node.
    on_state_change: str | None = None  # command line; None: no hook
    on_state_change_states: tuple[str, ...] = ("FATAL", "crash-loop", "failed-exit")
    hook_timeout: float = 30.0
    max_rss: int | None = None  # bytes of the whole tree; None: no limit
    # The `name` key (a node count's naming), spent on ``nodes`` but kept so
    # that `stemctl scale` names the nodes it adds as a reload would.
    name_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Everything needed to run one node, fully expanded."""

    name: str
    program: str
    index: int  # 1-based, within its program
    argv: tuple[str, ...]
    directory: str
    environment: tuple[tuple[str, str], ...]
    pid_file: str
    log_file: str  # "-" sends output to the master's own stdout/stderr
    policy: Policy
    run_as: RunAs
    # Expanded; the same path as log_file when the program sets none ("-":
    # the master's own stderr).
    stderr_log_file: str = ""
    # Read when the node is first configured (master start without a state
    # file, or added by a reload): False leaves it STOPPED until a start.
    autostart: bool = True
    priority: int = 999  # start order: lower first; stops in reverse

    def __post_init__(self) -> None:
        if not self.stderr_log_file:
            object.__setattr__(self, "stderr_log_file", self.log_file)

    @property
    def env(self) -> dict[str, str]:
        """The node's environment: the configured variables plus the two
        that identify it (also used to recognise it when adopting)."""
        env = dict(self.environment)
        env["STEMD_NODE"] = self.name
        env["STEMD_PROGRAM"] = self.program
        return env


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it was loaded from
    master: MasterSpec
    programs: tuple[ProgramSpec, ...]
    nodes: tuple[NodeSpec, ...]
    _by_name: dict[str, NodeSpec] = field(default_factory=dict, compare=False, repr=False)
    # What the loader found valid but probably not meant (celery multi
    # habits, see stem_core.migration): printed by --check and at start,
    # never a reason to refuse. Not part of the value: two configurations
    # that run the same nodes are equal whatever their warnings.
    warnings: tuple[Problem, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({n.name: n for n in self.nodes})

    def node(self, name: str) -> NodeSpec:
        return self._by_name[name]

    def select(self, names: Iterable[str]) -> list[NodeSpec]:
        """Nodes named directly or through their program, in config order.
        No names means every node. Unknown names raise BadValue."""
        wanted = list(names)
        if not wanted:
            return list(self.nodes)
        programs = {p.name for p in self.programs}
        unknown = [n for n in wanted if n not in self._by_name and n not in programs]
        if unknown:
            known = ", ".join([n.name for n in self.nodes] + sorted(programs))
            raise BadValue(f"no such node or program: {', '.join(unknown)}", hint=f"known: {known}")
        chosen = set(wanted)
        return [n for n in self.nodes if n.name in chosen or n.program in chosen]


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    added: tuple[NodeSpec, ...]
    removed: tuple[NodeSpec, ...]
    changed: tuple[NodeSpec, ...]  # the new specs
    unchanged: tuple[NodeSpec, ...]
    master_changed: tuple[str, ...]  # names of master settings that differ

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.master_changed)


def runs_the_same(a: NodeSpec, b: NodeSpec) -> bool:
    """Would the two specs run the same process under the same policy?

    Everything counts (argv, environment, account, files, policy) except the
    node's position in its program: removing the first of ``a b c`` shifts
    the others' index, which changes nothing that runs (``%i`` has already
    been expanded into whatever it appears in), so it restarts nothing.
    ``autostart`` and ``priority`` say when to start, not what runs: a
    change of either applies to the next start, and restarts nothing.
    """
    return a == dataclasses.replace(b, index=a.index, autostart=a.autostart,
                                    priority=a.priority)


#: Bump when NodeSpec, Policy or RunAs change shape: a fingerprint of
#: another version is "unknown", never "different" (an upgraded master that
#: adopts the fleet after a crash must not find every node changed).
SPEC_FINGERPRINT_VERSION = 2  # 1: SHA-256, which loaded OpenSSL (+3.8 MiB of RSS)


def spec_fingerprint(spec: NodeSpec) -> str:
    """A fingerprint of what :func:`runs_the_same` compares, stable across
    masters (unlike ``hash``): the state file keeps it for each running node,
    so that a master that adopts a node after a crash knows whether the
    process runs what the file says now.

    It is compared only with the same node's next spec, and a collision
    would only miss an outdated node, so CRC-32 and Adler-32 (64 bits, from
    zlib) do: ``hashlib`` loads OpenSSL, 3.8 MiB of the master's RSS."""
    import zlib

    what = repr(tuple(getattr(spec, name) for name in _FINGERPRINTED)).encode()
    return f"{SPEC_FINGERPRINT_VERSION}:{zlib.crc32(what):08x}{zlib.adler32(what):08x}"


#: the fields runs_the_same compares (not where a node stands or when it starts)
_FINGERPRINTED = tuple(f.name for f in dataclasses.fields(NodeSpec)
                       if f.name not in ("index", "autostart", "priority"))


def started_from_other(fingerprint: str | None, spec: NodeSpec) -> bool:
    """Was a process started from ``fingerprint`` known to run something
    else than ``spec``? False when unknown (none recorded, or another
    version's)."""
    if fingerprint is None or not fingerprint.startswith(f"{SPEC_FINGERPRINT_VERSION}:"):
        return False
    return fingerprint != spec_fingerprint(spec)


def diff(old: Config, new: Config) -> ConfigDiff:
    """What a reload must do: start added nodes, stop removed ones, restart
    changed ones, leave the rest alone."""
    old_nodes = {n.name: n for n in old.nodes}
    new_nodes = {n.name: n for n in new.nodes}
    added = tuple(n for n in new.nodes if n.name not in old_nodes)
    removed = tuple(n for n in old.nodes if n.name not in new_nodes)
    changed = tuple(n for n in new.nodes
                    if n.name in old_nodes and not runs_the_same(old_nodes[n.name], n))
    unchanged = tuple(n for n in new.nodes
                      if n.name in old_nodes and runs_the_same(old_nodes[n.name], n))
    master_changed = tuple(
        f.name for f in dataclasses.fields(MasterSpec)
        if getattr(old.master, f.name) != getattr(new.master, f.name)
    )
    return ConfigDiff(added, removed, changed, unchanged, master_changed)
