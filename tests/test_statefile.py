"""The master's state file: atomic, never followed through a symlink, and
refused when it is not ours."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from stem_core.errors import PidFileError
from stem_core.model import (
    SPEC_FINGERPRINT_VERSION,
    NodeSpec,
    Policy,
    RunAs,
    spec_fingerprint,
    started_from_other,
)
from stem_core.statefile import (
    MasterState,
    NodeRecord,
    encode_record,
    read_state,
    remove_state,
    state_path,
    write_encoded,
    write_state,
)


def test_state_path_sits_beside_the_master_pid_file() -> None:
    assert state_path("/run/stem/stemd.pid") == "/run/stem/stemd.state"
    assert state_path("/run/stem/master") == "/run/stem/master.state"


def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "stemd.state")
    state = MasterState(1234, {
        "a": NodeRecord("a", "worker", "/run/a.pid", pid=77, wanted=False, restarts=3,
                        exit_status=-9, last_exit="killed by SIGKILL",
                        last_error="cannot start: /x: No such file or directory"),
        "b": NodeRecord("b", "worker", "/run/b.pid", removed=True),
    })
    write_state(path, state)
    assert read_state(path, frozenset({os.geteuid()})) == state
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    remove_state(path)
    assert read_state(path) is None
    remove_state(path)  # idempotent


def test_records_encoded_one_by_one_make_the_same_file(tmp_path: Path) -> None:
    """The master keeps each node's encoded record and rewrites only the
    changed ones: the file must be the very bytes a whole encode gives."""
    state = MasterState(99, {
        "a": NodeRecord("a", "worker", "/run/a.pid", pid=77, last_error='say "no" \\ é\n'),
        "b": NodeRecord("b", "worker", "/run/b.pid", wanted=False, exit_status=0,
                        last_exit="exit status 0", state="EXITED"),
    })
    whole, parts = tmp_path / "whole.state", tmp_path / "parts.state"
    write_state(str(whole), state)
    write_encoded(str(parts), 99, [encode_record(r) for r in state.nodes.values()])
    assert parts.read_bytes() == whole.read_bytes()
    assert read_state(str(parts), frozenset({os.geteuid()})) == state
    write_encoded(str(parts), 99, [])
    assert read_state(str(parts), frozenset({os.geteuid()})) == MasterState(99, {})


def test_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "stemd.state"
    path.symlink_to(victim)
    with pytest.raises(PidFileError, match="symlink"):
        read_state(str(path))
    write_state(str(path), MasterState(1))
    assert victim.read_text() == "precious"
    assert not path.is_symlink()


@pytest.mark.parametrize("content", [b"", b"{", b'{"version": 99, "pid": 1, "nodes": []}',
                                     b'{"version": 1, "pid": 1, "nodes": [{"x": 1}]}',
                                     b'{"version": 1, "pid": 1, "nodes": [{"name": "a", '
                                     b'"program": "p", "pid_file": "/a", "pid": 1}]}',
                                     b"[" * 100_000])
def test_junk_is_refused_with_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "stemd.state"
    path.write_bytes(content)
    with pytest.raises(PidFileError, match="not a stemd state file"):
        read_state(str(path))


def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stemd.state"
    write_state(str(path), MasterState(1))
    with pytest.raises(PidFileError, match="owned by uid"):
        read_state(str(path), frozenset({os.geteuid() + 1}))


def test_a_fifo_does_not_block_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "stemd.state"
    os.mkfifo(path)
    with pytest.raises(PidFileError, match="not a regular file"):
        read_state(str(path))


def _spec(**changes: object) -> NodeSpec:
    policy = Policy(stop_signal="TERM", stop_timeout=10.0, kill_mode="mixed", restart="always",
                    start_secs=1.0, start_retries=5, backoff_max=30.0, restart_burst=5,
                    restart_window=60.0)
    spec = NodeSpec(name="w1", program="worker", index=1, argv=("/bin/celery", "worker"),
                    directory="/srv", environment=(("A", "1"),), pid_file="/run/w1.pid",
                    log_file="/var/log/w1.log", policy=policy,
                    run_as=RunAs(user="celery", group=None, umask=0o022))
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_spec_fingerprint_follows_what_runs() -> None:
    """The fingerprint another master reads: what ``runs_the_same`` compares,
    stable across processes (no ``hash()`` salt)."""
    base = spec_fingerprint(_spec())
    # where it stands and when it starts change nothing that runs
    assert spec_fingerprint(_spec(index=3, autostart=False, priority=5)) == base
    assert spec_fingerprint(_spec(argv=("/bin/celery", "worker", "-c", "4"))) != base
    assert spec_fingerprint(_spec(environment=(("A", "2"),))) != base
    assert not started_from_other(base, _spec(index=2))
    assert started_from_other(base, _spec(directory="/opt"))
    # none recorded, or another version's: unknown, never "different"
    assert not started_from_other(None, _spec(directory="/opt"))
    assert not started_from_other("0:" + base.partition(":")[2], _spec(directory="/opt"))


def test_spec_fingerprint_is_pinned() -> None:
    """A master adopting after a crash compares the fingerprint an older
    master wrote: if this value moves (NodeSpec, Policy or RunAs changed
    shape), bump SPEC_FINGERPRINT_VERSION, or an upgraded master would find
    every adopted node changed and a reload would restart the whole fleet."""
    assert SPEC_FINGERPRINT_VERSION == 2
    assert spec_fingerprint(_spec()) == "2:28c150fe84c370d1"


def test_spec_fingerprint_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "stemd.state")
    state = MasterState(1, {"w1": NodeRecord("w1", "worker", "/run/w1.pid", pid=9,
                                             spec=spec_fingerprint(_spec()))})
    write_state(path, state)
    assert read_state(path, frozenset({os.geteuid()})) == state
    Path(path).write_text('{"version":1,"pid":1,"nodes":[{"name":"w1","program":"worker",'
                          '"pid_file":"/run/w1.pid","spec":7}]}')
    with pytest.raises(PidFileError, match="bad spec fingerprint"):
        read_state(path, frozenset({os.geteuid()}))
