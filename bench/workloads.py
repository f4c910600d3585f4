"""The node commands every supervisor runs, and the settings they share.

A workload is plain data: an argv in which ``@INDEX@`` stands for the node's
1-based index. Each adapter turns that placeholder into its own template
syntax (stemd ``%i``, supervisord ``%(process_num)d``, circus
``$(circus.wid)``), so all three run byte-for-byte the same processes.

The index is also the *marker* that finds a node in ``/proc``: the argument
``10000000<i>`` of ``/bin/sleep`` (a sleep of about three years) is unique per
node, and the same for all supervisors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.procs import MarkerMatch

INDEX = "@INDEX@"
SLEEP_PREFIX = "10000000"
FLOOD_END = "BENCH-END"
#: characters that one of the three config formats would interpret
UNSAFE_CHARS = frozenset('%$"\\`')


@dataclass(frozen=True, slots=True)
class Settings:
    """The supervision settings, identical for every supervisor."""

    start_secs: int = 1
    stop_timeout: int = 10
    restart: str = "always"
    start_retries: int = 5


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    nodes: int
    argv: tuple[str, ...]
    #: program name in the peers' configs (stemd names nodes worker1..N)
    program: str = "w"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for word in self.argv:
            bad = UNSAFE_CHARS.intersection(word)
            if bad:
                raise ValueError(f"workload {self.name}: {sorted(bad)} in {word!r}")


def sleep_workload(nodes: int) -> Workload:
    return Workload("sleep", nodes, ("/bin/sleep", SLEEP_PREFIX + INDEX))


def storm_workload(nodes: int, spawn_log: str) -> Workload:
    """Every node exits 100 ms after it starts; each start appends one line to
    ``spawn_log`` (O_APPEND, so concurrent one-line writes never tear), which
    counts how many spawns a supervisor actually made during the storm."""
    script = f"echo x >> {spawn_log}; exec sleep 0.1"
    return Workload("storm", nodes, ("/bin/sh", "-c", script, "storm-" + INDEX))


def warm_workload(nodes: int, delay: float = 0.5) -> Workload:
    """Every node stops warmly, like a prefork worker finishing its tasks:
    on TERM it sleeps ``delay`` seconds, then exits 0. Its main process is a
    shell waiting on a background sleep (its "pool"), which a supervisor
    that signals only the main process must clean up afterwards."""
    script = f"stop() {{ sleep {delay:g}; exit 0; }}; trap stop TERM; sleep 100000 & wait"
    return Workload("warm", nodes, ("/bin/sh", "-c", script, "warm-" + INDEX))


def flood_workload(megabytes: int) -> Workload:
    """One node writes ``megabytes`` MiB of 1 KiB lines to stdout, then an
    end marker, then sleeps; the benchmark waits for the marker in the log."""
    line = "x" * 1023
    total = megabytes * 1024 * 1024
    # No `exec` before the sleep: the shell keeps the marker in its command
    # line, and its start time is the node's spawn time.
    script = f"yes {line} | head -c {total}; echo {FLOOD_END}; sleep 100000"
    return Workload("flood", 1, ("/bin/sh", "-c", script, "flood-" + INDEX))


def sleep_index(cmdline: list[str]) -> int | None:
    """The node index of a ``sleep`` workload process, or None."""
    if len(cmdline) == 2 and cmdline[0] == "/bin/sleep" and cmdline[1].startswith(SLEEP_PREFIX):
        tail = cmdline[1][len(SLEEP_PREFIX) :]
        if tail.isdigit():
            return int(tail)
    return None


def script_index(prefix: str) -> MarkerMatch:
    """A matcher for ``sh -c SCRIPT prefix<i>`` nodes (storm, flood)."""

    def match(cmdline: list[str]) -> int | None:
        if len(cmdline) == 4 and cmdline[0] == "/bin/sh" and cmdline[3].startswith(prefix):
            tail = cmdline[3][len(prefix) :]
            if tail.isdigit():
                return int(tail)
        return None

    return match
