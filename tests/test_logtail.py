"""stemd/logtail.py on real files: the bounded tail and the follower's bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stemd import logtail
from stemd.logtail import MAX_LINE, MAX_READ, Followed, tail


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(("data", "count", "expected"), [
    (b"", 5, []),
    (b"a\nb\nc\n", 2, [b"b", b"c"]),
    (b"a\nb\nc", 2, [b"b", b"c"]),  # a last line without its newline is shown
    (b"a\nb\nc\n", 10, [b"a", b"b", b"c"]),
    (b"a\nb\nc\n", 0, []),
    (b"\n\n\n", 2, [b"", b""]),
])
def test_tail_small_files(tmp_path: Path, data: bytes, count: int, expected: list[bytes]) -> None:
    lines, size = tail(write(tmp_path / "log", data), count)
    assert (lines, size) == (expected, len(data))


def test_tail_across_block_boundaries(tmp_path: Path) -> None:
    data = b"".join(b"%06d %s\n" % (i, b"x" * 300) for i in range(5000))
    lines, _ = tail(write(tmp_path / "log", data), 1000)
    assert lines == data.splitlines()[-1000:]


def test_a_long_line_is_cut_and_marked(tmp_path: Path) -> None:
    lines, _ = tail(write(tmp_path / "log", b"start\n" + b"z" * (MAX_LINE + 10) + b"\nend\n"), 5)
    assert lines[0] == b"start" and lines[2] == b"end"
    assert lines[1] == b"z" * MAX_LINE + b" [... 10 more bytes]"


def test_reading_stops_at_max_read_and_marks_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("wb") as f:
        f.write(b"old line\n")
        f.truncate(MAX_READ * 4)  # sparse: zeros without a newline
        f.seek(0, os.SEEK_END)
        f.write(b"\nlast\n")
    lines, size = tail(str(path), 3)
    assert size == MAX_READ * 4 + 6
    assert lines[-1] == b"last"
    assert len(lines) == 2 and lines[0].startswith(b"[...] \0")
    assert lines[0].endswith(b"more bytes]")


def test_follower_assembles_prefixed_lines_and_cuts_runaways(tmp_path: Path) -> None:
    f = Followed("a", str(tmp_path / "log"), 0, b"a | ")
    assert f.lines(b"one\ntw") == b"a | one\n"
    assert f.lines(b"o\n") == b"a | two\n"
    out = f.lines(b"q" * (MAX_LINE + 1))
    assert out.startswith(b"a | " + b"q" * 100) and out.endswith(b" [... 1 more bytes]\n")
    assert f.pending == b""


def test_follower_rereads_after_copytruncate_and_reopens_after_rename(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"first\n")
    f = Followed("a", str(path), 0, b"")
    try:
        assert f.read() == b"first\n"
        assert f.read() == b""
        path.write_bytes(b"")  # truncated in place
        with path.open("ab") as w:
            w.write(b"x\n")
        assert f.read() == b""  # notices the truncation at EOF
        assert f.read() == b"x\n"
        os.rename(path, tmp_path / "log.1")
        path.write_bytes(b"new\n")
        assert f.read() == b""  # notices the new inode
        assert f.read() == b"new\n"
    finally:
        f.close()


def test_prefixes_are_padded_and_coloured_only_when_asked() -> None:
    assert logtail.prefixes(["a", "bbb"], False) == [b"a   | ", b"bbb | "]
    coloured = logtail.prefixes(["a", "bbb"], True)
    assert coloured[0].startswith(b"\x1b[") and coloured[0] != coloured[1]
