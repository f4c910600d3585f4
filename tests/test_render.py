"""How stemctl shows things (stemd.render): plain columns when piped, a rich
table with coloured states on a terminal, JSON with --json."""

from __future__ import annotations

import json
import re

import pytest

from stemd import render


def node(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"node": "alpha", "program": "worker", "state": "RUNNING",
                               "pid": 123, "uptime": 5.2, "restarts": 0, "exit_status": None,
                               "last_exit": None, "cpu_percent": 1.25, "rss": 3 * 1024 * 1024}
    base.update(kw)
    return base


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (0.9, "0s"), (59.9, "59s"), (60, "1m00s"), (61, "1m01s"),
    (3599, "59m59s"), (3600, "1h00m"), (3661, "1h01m"), (86399, "23h59m"), (86400, "1d00h"),
    (90061, "1d01h"), (400 * 86400, "400d00h"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"),
    (1024 ** 2, "1.0M"), (5 * 1024 ** 3, "5.0G"), (3 * 1024 ** 4, "3072.0G"),
])
def test_size(n: int | None, text: str) -> None:
    assert render.size(n) == text


def test_status_rows() -> None:
    rows = render.status_rows([
        node(),
        node(node="beta", state="EXITED", pid=None, uptime=None, restarts=3, exit_status=1,
             last_exit="exit status 1", cpu_percent=None, rss=None),
    ])
    assert rows == [
        ("alpha", "worker", "RUNNING", "123", "5s", "0", "1.2", "3.0M", "-", "-"),
        ("beta", "worker", "EXITED", "-", "-", "3", "-", "-", "-", "exit status 1"),
    ]


def test_status_rows_say_why_a_node_is_down() -> None:
    """The last error (a vanished binary), not the exit of the process
    before it; and a node the operator stopped says so."""
    rows = render.status_rows([
        node(state="FATAL", pid=None, last_exit="killed by SIGKILL",
             last_error="cannot start: /opt/app/worker: No such file or directory"),
        node(node="beta", state="STOPPED", pid=None, wanted="down",
             last_exit="killed by SIGTERM"),
    ])
    assert rows[0][-1] == "cannot start: /opt/app/worker: No such file or directory"
    assert rows[1][-1] == "stopped by the operator"


def test_status_rows_without_stats() -> None:
    """--json without --stats has no cpu_percent/rss/children keys at all."""
    n = node()
    del n["cpu_percent"], n["rss"]
    assert render.status_rows([n])[0][-4:-1] == ("-", "-", "-")


def test_plain_table_is_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_status([node(), node(node="a-much-longer-name", pid=99999)], tty=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("NODE") and lines[0].endswith("LAST EXIT / WHY")
    assert len(lines) == 3
    # every column starts at the same offset on every line
    starts = [[m.start() for m in re.finditer(r"(?<=  )\S", line)] for line in lines]
    assert starts[0][:3] == starts[1][:3] == starts[2][:3]
    assert all(line == line.rstrip() for line in lines)


def test_terminal_table_colours_states(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("NO_COLOR", raising=False)
    render.print_status([node(), node(node="beta", state="FATAL", pid=None)], tty=True)
    out = capsys.readouterr().out
    assert "\x1b[32mRUNNING" in out  # green
    assert re.search(r"\x1b\[[0-9;]*31m\s*FATAL|\x1b\[1;31mFATAL", out)  # bold red
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for column in render.COLUMNS:
        assert column in plain
    assert "3.0M" in plain and "5s" in plain


def test_a_large_table_on_a_terminal_ends_with_a_summary(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    nodes = [node(node=f"worker{i}") for i in range(1, 13)]
    nodes[4] = node(node="worker5", state="FATAL", pid=None)
    nodes[7] = node(node="worker8", state="BACKOFF", pid=None)
    render.print_status(nodes, tty=True)
    last = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).rstrip().splitlines()[-1]
    assert last == "12 nodes: 10 RUNNING, 1 BACKOFF, 1 FATAL (not running: worker5, worker8)"
    render.print_status(nodes[:10], tty=True)  # a small table speaks for itself
    assert "nodes:" not in capsys.readouterr().out
    render.print_status(nodes, tty=False)  # piped: the table alone, for scripts
    assert "nodes:" not in capsys.readouterr().out


def test_every_state_has_a_style() -> None:
    from stem_core.states import NodeState

    assert set(render.STATE_STYLE) == {str(s) for s in NodeState}


def test_print_json(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_json([node()])
    assert json.loads(capsys.readouterr().out) == [node()]
