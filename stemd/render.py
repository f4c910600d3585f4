"""How ``stemctl`` shows things: a rich table on a terminal, plain aligned
text when piped (no rich import at all then: it costs ~40 ms), JSON with
``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COLUMNS = ("NODE", "PROGRAM", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "KIDS",
           "LAST EXIT / WHY")
#: what each column means: ``stemctl status --help`` prints it
COLUMN_HELP = """\
columns:
  NODE, PROGRAM   the node and the program it belongs to
  STATE           STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, EXITED or FATAL
  PID             the node's main process
  UPTIME          since its main process started
  RESTARTS        automatic respawns since the master started
  CPU%            CPU of the whole process tree (main process and descendants)
                  over the interval since the previous 'status' of that node
                  (by any client, at least 1 s back), or since the process
                  started; 100 = one core
  RSS             resident memory of the whole tree, summed over its processes
                  (shared pages count once per process: --pss for the PSS)
  KIDS            descendants of the main process (its session: a prefork pool)
  LAST EXIT / WHY why it is not running, else how its last process ended"""
STATE_STYLE = {"RUNNING": "green", "STARTING": "cyan", "STOPPING": "yellow", "BACKOFF": "yellow",
               "STOPPED": "dim", "EXITED": "magenta", "FATAL": "bold red"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"  # pragma: no cover


def status_rows(nodes: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for n in nodes:
        cpu = n.get("cpu_percent")
        # Why a node is not running (its last spawn error, crash loop or
        # failed exit) matters more than how the process before it ended.
        why = n.get("last_error") or n.get("last_exit") or "-"
        if n.get("wanted") == "down" and n["state"] == "STOPPED":
            why = "stopped by the operator"
            if n.get("stop_forced"):
                why += f"; {n['stop_forced']}"
        rows.append((n["node"], n["program"], n["state"],
                     str(n["pid"]) if n["pid"] is not None else "-",
                     duration(n["uptime"]), str(n["restarts"]),
                     f"{cpu:.1f}" if cpu is not None else "-", size(n.get("rss")),
                     str(n["children"]) if n.get("children") is not None else "-", why))
    return rows


def scaled_notes(nodes: Sequence[dict[str, Any]]) -> list[str]:
    """Programs scaled at run time (stemctl scale), for a line under the table."""
    counts: dict[str, list[int]] = {}
    for n in nodes:
        if n.get("scaled_from") is not None:
            counts.setdefault(n["program"], [n["scaled_from"], 0])[1] += 1
    return [f"{program}: scaled with 'stemctl scale' (the file says {configured} nodes) until "
            "the next reload or restart" for program, (configured, _) in sorted(counts.items())]


def outdated_note(nodes: Sequence[dict[str, Any]]) -> list[str]:
    """Nodes adopted after a crash that run an older configuration."""
    names = [n["node"] for n in nodes if n.get("outdated")]
    if not names:
        return []
    from stem_core.wording import abridged

    return [f"{abridged(names)}: runs an older configuration than the file (it changed "
            "while no master ran); 'stemctl reload' applies it"]


def print_status(nodes: Sequence[dict[str, Any]], tty: bool) -> None:
    notes = scaled_notes(nodes) + outdated_note(nodes)
    if notes:
        sys.stderr.write("".join(f"note: {line}\n" for line in notes))
    rows = status_rows(nodes)
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in COLUMNS:
            table.add_column(column, justify="right" if column in (
                "PID", "RESTARTS", "CPU%", "RSS", "KIDS", "UPTIME") else "left",
                overflow="fold" if column == "LAST EXIT / WHY" else "ellipsis")
        for row in rows:
            style = STATE_STYLE.get(row[2], "")
            table.add_row(*row[:2], f"[{style}]{row[2]}[/]" if style else row[2], *row[3:])
        console = Console()
        console.print(table)
        summary = fleet_summary(nodes)
        if summary:
            console.print(summary, highlight=False)
        return
    print_plain([COLUMNS, *rows])


#: a terminal's table gets a summary line under it past this many nodes
SUMMARY_FROM = 10


def fleet_summary(nodes: Sequence[dict[str, Any]]) -> str | None:
    """One line under a large table, for the terminal only: the table's
    last screen of a 1,000-node fleet does not say whether all is well.
    ``1000 nodes: 998 RUNNING, 2 FATAL (not running: worker17, worker503)``.
    Piped output stays the table alone (scripts parse it)."""
    if len(nodes) <= SUMMARY_FROM:
        return None
    from stem_core.wording import abridged

    counts: dict[str, int] = {}
    for n in nodes:
        counts[n["state"]] = counts.get(n["state"], 0) + 1
    order = list(STATE_STYLE)  # RUNNING first, then the states that need a look
    states = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (
        order.index(s) if s in order else len(order), s)))
    down = [n["node"] for n in nodes if n["state"] != "RUNNING"]
    return f"{len(nodes)} nodes: {states}" + (
        f" (not running: {abridged(down)})" if down else "")


def print_plain(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    sys.stdout.write("\n".join(out) + "\n")


def print_json(value: Any) -> None:
    """Indented for a person on a terminal; compact otherwise, which is what
    scripts read and what json's C encoder does (indent forces the slow
    pure-Python one: ~10 ms for 1,000 nodes)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(value, indent=indent, default=str) + "\n")
