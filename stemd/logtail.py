"""Reading node logs on stemctl's side: a bounded tail and a multi-file follow.

The master only names a node's log (``logs`` handler); stemctl reads the file
itself, as the operator, with the operator's permissions. The file belongs
to the node user, who may make it anything: 20 GB of sparse zeros, one
100 MB line, a FIFO, a symlink. So:

- the tail reads backwards in fixed blocks, kept in a list and joined once
  (linear), and stops after :data:`MAX_READ` bytes whatever it found;
- a returned line is cut at :data:`MAX_LINE` bytes, and says so;
- the file is opened ``O_NOFOLLOW|O_NONBLOCK`` and must be a regular file;
- on a terminal, a line's control characters are shown, not sent
  (:func:`visible`): the node user must not drive root's terminal.

Standard library only: it is imported by ``stemctl`` alone.
"""

from __future__ import annotations

import os
import re  # already loaded by argparse: free for stemctl
import stat
import sys
import time

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import BinaryIO

MAX_READ = 8 * 1024 * 1024  # bytes read backwards at most, whatever -n asks
MAX_LINE = 64 * 1024  # bytes of one line shown at most
BLOCK = 64 * 1024
FOLLOW_INTERVAL = 0.25  # the client polls; the master never does
REFRESH_INTERVAL = 2.0  # following every node: ask the master for new ones this often


#: a byte that may need escaping: a C0 control but TAB (LF included, though a
#: line has none), DEL, and any non-ASCII byte (a C1 control once decoded, or
#: invalid UTF-8); checked first so that a plain ASCII line costs one search
_SUSPECT = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")
#: what a terminal acts on, once decoded: C0 but TAB, DEL, C1 (U+0080-U+009F);
#: and what makes a line read otherwise than it is: bidi marks, embeddings,
#: overrides and isolates (U+061C, U+200E-F, U+202A-E, U+2066-9), zero-width
#: and invisible characters (U+200B-D, U+2060-4, U+FEFF), line and paragraph
#: separators (U+2028-9)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                      "\u2060-\u2064\u2066-\u2069\ufeff]")


class NotAFile(OSError):
    pass


def open_log(path: str) -> int:
    """An fd on ``path`` for reading: never through a symlink, never a FIFO
    or device (``O_NONBLOCK`` so that opening a FIFO cannot block either)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFile(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def cut(line: bytes, partial_head: bool = False) -> bytes:
    """``line`` shown within MAX_LINE bytes, marked where something is left out."""
    head = b"[...] " if partial_head else b""
    if len(line) <= MAX_LINE:
        return head + line
    return head + line[:MAX_LINE] + b" [... %d more bytes]" % (len(line) - MAX_LINE)


def visible(line: bytes) -> bytes:
    """``line`` (one line, without its LF) as it may be written to the
    operator's terminal: every control character shown as ``\\xNN`` rather
    than sent.

    A node writes its log as it likes; sent as they are, ``\\r`` and
    ``ESC [2K`` erase the line's ``alpha | `` prefix and print another node's
    in its colour, and OSC sequences set the window title or write the
    clipboard (``docs/architecture.md``: a node user must not mislead the
    operator). So, as ``less`` and ``journalctl`` do: TAB stays; a ``\\r``
    that ends the line (CRLF) is dropped (it shows nothing); every other C0
    control, DEL, and the C1 controls U+0080-U+009F (which some terminals
    act on as ESC sequences) become ``\\x1b``, ``\\x0d``, ``\\x7f``,
    ``\\x9b``; bytes that are not UTF-8 become ``\\xNN`` too, so a lone
    0x9b byte cannot pass for a CSI either. Bidi overrides and isolates
    (which reorder the rest of the line, "Trojan Source") and zero-width
    characters become ``\\u202e`` and the like. A backslash is left as it is (a
    ``\\x1b`` on the screen may be text the node wrote; either way, nothing
    reached the terminal as a control). Piped output never comes through
    here: it stays byte for byte what the node wrote."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if _SUSPECT.search(line) is None:
        return line
    text = line.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(_escape, text).encode()


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def block(lines: Sequence[bytes], prefix: bytes, terminal: bool) -> bytes:
    """``lines`` ready to write: each with ``prefix`` and a LF, and made
    :func:`visible` when the output is a terminal."""
    if terminal:
        return b"".join(prefix + visible(line) + b"\n" for line in lines)
    return b"".join(prefix + line + b"\n" for line in lines)


def tail(path: str, count: int) -> tuple[list[bytes], int]:
    """The last ``count`` lines of ``path`` and the file's size.

    Linear and bounded: blocks are collected in a list (no re-copying of what
    was already read) and reading stops at MAX_READ bytes, so a 20 GB file
    costs what an 8 MiB one does. A line whose start lies beyond that bound
    is returned marked ``[...]``; any line longer than MAX_LINE is cut."""
    fd = open_log(path)
    try:
        size = os.fstat(fd).st_size
        if count <= 0:
            return [], size
        for _attempt in range(3):
            blocks, pos, complete = _read_back(fd, size, count)
            if complete:
                break
            size = os.fstat(fd).st_size  # truncated while read: read what is there now
    finally:
        os.close(fd)
    blocks.reverse()
    data = b"".join(blocks)
    if not data:
        return [], size
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    start = max(0, len(lines) - count)
    head_cut = pos > 0 and start == 0  # the first line shown starts before what was read
    return [cut(line, head_cut and i == 0) for i, line in enumerate(lines[start:])], size


def _read_back(fd: int, size: int, count: int) -> tuple[list[bytes], int, bool]:
    """Blocks from the end of the file backwards (last block first) until
    ``count`` lines are delimited, the start is reached or MAX_READ bytes were
    read; the position reached; False if the file shrank meanwhile."""
    blocks: list[bytes] = []
    newlines = 0
    pos = size
    read = 0
    while pos > 0 and newlines <= count and read < MAX_READ:
        step = min(BLOCK, pos, MAX_READ - read)
        pos -= step
        block = os.pread(fd, step, pos)
        if len(block) < step:
            return [], size, False
        blocks.append(block)
        newlines += block.count(b"\n")
        read += step
    return blocks, pos, True


def cannot_read(path: str, exc: OSError) -> str:
    """Why the operator cannot read ``path``, and what would let them."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, NotAFile):
        return f"cannot read {path}: not a regular file (refused: a node could have made it so)"
    if getattr(exc, "errno", None) == 40:  # ELOOP: O_NOFOLLOW met a symlink
        return f"cannot read {path}: it is a symlink (refused)"
    if not isinstance(exc, PermissionError):
        return f"cannot read {path}: {reason}"
    import grp

    where = path
    while where not in ("", "/"):
        try:
            st = os.stat(where)
            break
        except OSError:
            where = os.path.dirname(where)
    else:
        return f"cannot read {path}: {reason}; run as root"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (f"cannot read {path}: {reason}; ask for membership of group {group!r} "
            f"(the group of {where}) or run as root")


# ------------------------------------------------------------------ follow

_COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


class Followed:
    """One file being followed: survives truncation (copytruncate: the size
    drops below what was read, so start again at 0) and rotation by rename
    (the path names another inode: drain the old one, open the new)."""

    def __init__(self, name: str, path: str, offset: int, prefix: bytes,
                 terminal: bool = False) -> None:
        self.name = name
        self.path = path
        self.offset = offset
        self.prefix = prefix
        # On a terminal every line is made visible(), so lines are whole
        # even unprefixed: a chunk may end inside a UTF-8 character or a CRLF.
        self.terminal = terminal
        self.by_line = bool(prefix) or terminal
        self.fd: int | None = None
        self.ino: tuple[int, int] | None = None
        self.pending = b""  # a line not yet complete (by_line output only)

    def _open(self) -> bool:
        try:
            self.fd = open_log(self.path)
        except FileNotFoundError:
            return False
        st = os.fstat(self.fd)
        self.ino = (st.st_dev, st.st_ino)
        if st.st_size < self.offset:
            self.offset = 0
        return True

    def read(self) -> bytes:
        """What was appended since the last call (at most one block)."""
        if self.fd is None and not self._open():
            return b""
        assert self.fd is not None
        chunk = os.pread(self.fd, BLOCK, self.offset)
        if chunk:
            self.offset += len(chunk)
            return chunk
        self._check_replaced()
        return b""

    def _check_replaced(self) -> None:
        """At the end of the file: has it been truncated or renamed away?"""
        assert self.fd is not None
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return  # rotated away, not yet recreated: keep the old one open
        if (st.st_dev, st.st_ino) != self.ino:
            os.close(self.fd)
            self.fd, self.offset = None, 0
        elif st.st_size < self.offset:
            self.offset = 0  # truncated in place: the new content starts at 0

    def lines(self, chunk: bytes) -> bytes:
        """``chunk`` as whole prefixed lines (made visible() on a terminal);
        the incomplete rest waits."""
        data = self.pending + chunk
        end = data.rfind(b"\n") + 1
        self.pending = data[end:]
        out = [cut(line) for line in data[:end].split(b"\n")[:-1]]
        if len(self.pending) > MAX_LINE:  # a runaway line: show it cut, drop the rest
            out.append(cut(self.pending))
            self.pending = b""
        return block(out, self.prefix, self.terminal)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prefixes(names: Sequence[str], colour: bool) -> list[bytes]:
    """``name | `` padded to the longest name, coloured per node on a terminal."""
    width = max((len(n) for n in names), default=0)
    out = []
    for i, name in enumerate(names):
        text = f"{name:<{width}} | "
        if colour:
            text = f"\x1b[{_COLOURS[i % len(_COLOURS)]}m{name:<{width}}\x1b[0m | "
        out.append(text.encode())
    return out


def follow(files: Sequence[Followed], out: BinaryIO | None = None,
           refresh: Callable[[], Sequence[Followed]] | None = None) -> None:
    """Follow every file in one loop, printing what each one gains (whole
    prefixed lines; raw bytes for an unprefixed single file, unless on a
    terminal: whole visible() lines there). Returns
    only on an exception (KeyboardInterrupt, BrokenPipeError). ``refresh``,
    every :data:`REFRESH_INTERVAL` seconds, names files to follow from then
    on too (the nodes a reload added)."""
    stream = out if out is not None else sys.stdout.buffer
    write = stream.write
    flush = stream.flush
    files = list(files)
    next_refresh = time.monotonic() + REFRESH_INTERVAL
    try:
        while True:
            if refresh is not None and time.monotonic() >= next_refresh:
                files.extend(refresh())
                next_refresh = time.monotonic() + REFRESH_INTERVAL
            busy = False
            for f in files:
                chunk = f.read()
                if not chunk:
                    continue
                busy = True
                write(f.lines(chunk) if f.by_line else chunk)
            if busy:
                flush()
            else:
                time.sleep(FOLLOW_INTERVAL)
    finally:
        for f in files:
            f.close()
