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


# ----------------------------------------------------- on a terminal: visible()


@pytest.mark.parametrize(("raw", "shown"), [
    (b"plain text\twith a tab", b"plain text\twith a tab"),
    (b"caf\xc3\xa9 \xe2\x9c\x93", "café ✓".encode()),  # printable UTF-8 stays
    (b"a\x1b[31mred", b"a\\x1b[31mred"),
    (b"bell\x07 nul\x00 bs\x08 del\x7f", b"bell\\x07 nul\\x00 bs\\x08 del\\x7f"),
    (b"crlf\r", b"crlf"),  # a CR that ends the line shows nothing: dropped
    (b"over\rwrite", b"over\\x0dwrite"),
    (b"\xc2\x9b2J", b"\\x9b2J"),  # C1 CSI, encoded in UTF-8
    (b"\x9b2J \xff\xfe", b"\\x9b2J \\xff\\xfe"),  # not UTF-8: escaped, no crash
    (b"\xc2", b"\\xc2"),  # a character cut in half (cut() at MAX_LINE)
    (b"back\\slash", b"back\\slash"),
    # bidi overrides and isolates reorder what follows them ("Trojan
    # Source"); zero-width characters hide text in plain sight
    ("ok \u202eevil\u202c".encode(), b"ok \\u202eevil\\u202c"),
    ("a\u2066b\u2069 \u200fc\u061c".encode(), b"a\\u2066b\\u2069 \\u200fc\\u061c"),
    ("zero\u200bwidth\u2060 \ufeffbom".encode(), b"zero\\u200bwidth\\u2060 \\ufeffbom"),
])
def test_visible_escapes_every_control_a_terminal_acts_on(raw: bytes, shown: bytes) -> None:
    assert logtail.visible(raw) == shown


def test_visible_leaves_nothing_a_terminal_acts_on() -> None:
    everything = bytes(range(256)) + "".join(map(chr, range(0x80, 0xA0))).encode()
    out = logtail.visible(everything).decode("utf-8")  # valid UTF-8 whatever came in
    assert out == out.replace("\x1b", "")  # no ESC at all
    assert [c for c in out if (ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F] == []


def test_forged_prefix_is_shown_not_acted_on(tmp_path: Path) -> None:
    """Regression: node alpha wrote ``\\r ESC[2K`` and beta's coloured
    prefix; on the operator's terminal its line read as one of beta's, and
    an OSC sequence set the window title."""
    forged = b"ok\r\x1b[2K\x1b[33mbeta \x1b[0m | run this\x1b]0;owned\x07\n"
    alpha = Followed("alpha", str(tmp_path / "a"), 0, b"alpha | ", terminal=True)
    assert alpha.lines(forged) == (b"alpha | ok\\x0d\\x1b[2K\\x1b[33mbeta \\x1b[0m | "
                                   b"run this\\x1b]0;owned\\x07\n")
    piped = Followed("alpha", str(tmp_path / "a"), 0, b"alpha | ")
    assert piped.lines(forged) == b"alpha | " + forged  # a pipe gets the bytes as written
    assert logtail.block([forged[:-1]], b"", False) == forged


def test_an_unprefixed_follow_on_a_terminal_goes_by_whole_lines(tmp_path: Path) -> None:
    """A chunk may end inside a UTF-8 character or between CR and LF: on a
    terminal the single followed file is assembled into lines too."""
    f = Followed("a", str(tmp_path / "log"), 0, b"", terminal=True)
    assert f.by_line
    assert f.lines(b"caf\xc3") == b""
    assert f.lines(b"\xa9\r") == b""
    assert f.lines(b"\n\x1b]52;c;ZXZpbA==\x07\n") == "café\n".encode() + (
        b"\\x1b]52;c;ZXZpbA==\\x07\n")
    assert not Followed("a", str(tmp_path / "log"), 0, b"").by_line  # piped: raw chunks
