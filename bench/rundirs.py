"""Where a run's files go: run-time files on a tmpfs, logs on disk.

In production, stemd's PID files and socket live in /run/stem (SPEC),
supervisord's socket and PID file belong in /run, and /run is a tmpfs on
every Debian/systemd host; logs go to /var/log, on disk. The benchmark
mirrors that split: :func:`runtime_root` picks a tmpfs for every
supervisor's run-time files (/run if it is a writable tmpfs, else /dev/shm)
and falls back to the disk work directory, saying so, when there is none.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: tmpfs candidates, in order of preference
TMPFS_CANDIDATES = (Path("/run"), Path("/dev/shm"))
PREFIX = "stemd-bench-run-"


@dataclass(frozen=True, slots=True)
class RuntimeRoot:
    path: Path  # this run's own directory, created by runtime_root()
    kind: str  # "tmpfs" or "disk"
    fs_type: str  # file system type of path, from /proc/mounts
    note: str  # why this place was chosen ("" when the first choice was taken)


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def fs_type(path: Path, mounts: str = "/proc/mounts") -> str:
    """The type of the file system ``path`` is on: the entry of
    ``/proc/mounts`` with the longest mount point that contains it (the last
    one wins for a point mounted twice, as the kernel's latest mount does)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open(mounts) as f:
            lines = f.read().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def _usable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def runtime_root(work_dir: Path, candidates: tuple[Path, ...] = TMPFS_CANDIDATES) -> RuntimeRoot:
    """Create this run's run-time directory: under the first candidate that
    is a writable tmpfs, else under ``work_dir`` (on disk)."""
    rejected = []
    for base in candidates:
        kind = fs_type(base)
        if kind != "tmpfs":
            rejected.append(f"{base} is {kind}")
            continue
        if not _usable(base):
            rejected.append(f"{base} is not writable")
            continue
        try:
            path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        except OSError as exc:
            rejected.append(f"{base}: {exc.strerror}")
            continue
        note = "; ".join(rejected)
        return RuntimeRoot(path, "tmpfs", kind, note)
    path = work_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
    note = "no writable tmpfs (" + "; ".join(rejected) + "): run-time files on the work dir"
    return RuntimeRoot(path, "disk", fs_type(path), note)
