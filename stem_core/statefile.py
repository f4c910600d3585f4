"""The master's state file: what a master that dies must leave to the next one.

PID files say which processes the nodes were; this file says what the
operator and the restart policy meant for them, so that a master started
after a ``kill -9`` takes up where the old one left instead of starting
over: which nodes the operator stopped (they stay stopped), restart
counters, the last exit and the last error, a fingerprint of the
configuration each running node was started from (a node adopted after the
file changed runs an older configuration, which a reload then applies), and
nodes that a reload removed but that were not yet stopped when the master
died (they are stopped, not forgotten). It also lets ``stemctl shutdown``
and the init script find the nodes of a dead master whose configuration has
since changed.

It lives beside the master PID file (``stemd.pid`` -> ``stemd.state``), in
the run directory that only the master's user can write. It is written
atomically (temporary file + ``rename``, never through a symlink) after
every change of what it records (a spawn or a node becoming RUNNING changes
none of it, and does not rewrite it), and removed by a clean shutdown: a clean stop
followed by a start begins fresh.

The file is a record, never an order: a process it names is adopted or
signalled only after :func:`stem_core.pidfile.check_node_identity` says it
is that node.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from stem_core.errors import PidFileError
from stem_core.pidfile import open_trusted, write_atomic

VERSION = 1
MAX_SIZE = 16 * 1024 * 1024  # ~100 bytes a node: far more than any fleet


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    program: str
    pid_file: str
    pid: int | None = None  # as of the last write; informational (PID files say which)
    wanted: bool = True  # the operator's intent: up (True) or stopped (False)
    restarts: int = 0
    exit_status: int | None = None  # Popen's convention: code, or -signal
    last_exit: str | None = None
    last_error: str | None = None
    removed: bool = False  # dropped by a reload, not yet stopped
    state: str = "STOPPED"  # as the master last saw it (EXITED and FATAL are kept)
    # What the node's process was started from, or will be
    # (model.spec_fingerprint); None from an older stemd. A master that
    # adopts the process after a crash compares it with the file's spec.
    spec: str | None = None


@dataclass(frozen=True, slots=True)
class MasterState:
    pid: int
    nodes: dict[str, NodeRecord] = field(default_factory=dict)


_RECORD_FIELDS = tuple(f.name for f in fields(NodeRecord))


def state_path(master_pid_file: str) -> str:
    """The state file that goes with a master PID file."""
    base, ext = os.path.splitext(master_pid_file)
    return (base if ext == ".pid" else master_pid_file) + ".state"


def write_state(path: str, state: MasterState) -> None:
    """Write ``state`` atomically. Raises OSError."""
    write_encoded(path, state.pid, [encode_record(r) for r in state.nodes.values()])


def encode_record(record: NodeRecord) -> str:
    """One node's record as the file holds it (JSON). The master keeps each
    node's text until the node changes, so that a write of 1,000 nodes
    encodes only what changed (a full encode held the loop ~7 ms after each
    respawn)."""
    return json.dumps(_as_dict(record), separators=(",", ":"))


def write_encoded(path: str, pid: int, records: Iterable[str]) -> None:
    """Write the file from records already encoded (:func:`encode_record`),
    atomically: the same bytes as ``json.dumps`` of the whole. Raises
    OSError."""
    data = f'{{"version":{VERSION},"pid":{pid},"nodes":[{",".join(records)}]}}'
    write_atomic(path, data.encode())


def _as_dict(record: NodeRecord) -> dict[str, object]:
    """``dataclasses.asdict`` without its recursive deep copy: every field
    is a scalar, and asdict made a 1,000-node write cost ~25 ms of the
    master's loop (profiled; it is written during storms)."""
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


def read_state(path: str, trusted_uids: frozenset[int] | None = None) -> MasterState | None:
    """The state in ``path``; None when there is none.

    Raises :class:`PidFileError` for a file that cannot be trusted or read
    (a symlink, a special file, another owner, too large, not our format).
    """
    opened = open_trusted(path, trusted_uids)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size > MAX_SIZE:
            raise PidFileError(f"{path} is too large ({st.st_size} bytes)")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_SIZE:
                raise PidFileError(f"{path} is too large")
    finally:
        os.close(fd)
    try:
        doc = json.loads(b"".join(chunks))
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        nodes = {}
        for item in doc["nodes"]:
            record = NodeRecord(**item)
            if not isinstance(record.name, str) or not isinstance(record.pid_file, str):
                raise ValueError("bad node record")
            if record.pid is not None and (not isinstance(record.pid, int) or record.pid <= 1):
                raise ValueError("bad pid")
            if record.spec is not None and not isinstance(record.spec, str):
                raise ValueError("bad spec fingerprint")
            nodes[record.name] = record
        return MasterState(int(doc["pid"]), nodes)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise PidFileError(f"{path} is not a stemd state file: {exc}") from None


def remove_state(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
