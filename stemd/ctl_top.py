"""``stemctl top``: a live view of the fleet, refreshed in place.

Each refresh is one ``status --stats`` call (one pass over ``/proc`` in the
master); between refreshes the master does nothing for it, and when nobody
runs ``top`` it does nothing at all. CPU% is computed here, from the
``cpu_seconds`` of two successive refreshes of this client (the first
frame shows the master's figure), so several ``top`` do not disturb each
other.

On a terminal (``ssh -t`` included) it draws with rich's ``Live`` on the
alternate screen, sized for 80 columns, and reads single keys:
``s`` next sort column, ``r`` reverse the sort, ``p`` next program (filter;
back to all after the last), ``q`` quit. Elsewhere (a pipe, a log file) it
prints a plain table per refresh, each headed by the time, until
``--iterations`` or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from stemd.ctl import Ctl

NAME = "top"
HELP = "live view of nodes and programs: state, CPU, memory, restarts (keys: s r p q)"
EXAMPLE = "stemctl top --interval 1"

SORTS = ("node", "state", "cpu", "rss", "restarts", "uptime")
_STATE_ORDER = {"FATAL": 0, "BACKOFF": 1, "EXITED": 2, "STARTING": 3, "STOPPING": 4,
                "STOPPED": 5, "RUNNING": 6}
HIGHLIGHT = {"FATAL": "bold white on red", "BACKOFF": "black on yellow"}
COLUMNS = ("NODE", "STATE", "PID", "UPTIME", "RST", "CPU%", "RSS", "KIDS")


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0.2:
        raise argparse.ArgumentTypeError("at least 0.2 seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="nodes or programs (default: all)")
    parser.add_argument("-i", "--interval", type=_interval, default=2.0, metavar="SECONDS",
                        help="seconds between refreshes (default 2)")
    parser.add_argument("--sort", choices=SORTS, default="node",
                        help="initial sort column (key s cycles)")
    parser.add_argument("-n", "--iterations", type=int, default=0, metavar="N",
                        help="stop after N refreshes (default: until q or Ctrl-C)")


class View:
    """What the view shows: sort, filter, and the previous sample of each
    node (for CPU%)."""

    def __init__(self, sort: str) -> None:
        self.sort = sort
        self.reverse = sort in ("cpu", "rss", "restarts", "uptime")
        self.program: str | None = None
        self.programs: list[str] = []
        self._last: dict[str, tuple[int | None, float, float]] = {}  # node -> pid, cpu s, at

    def key(self, key: str) -> bool:
        """Apply a key; False to quit."""
        if key in ("q", "Q", "\x03", "\x04"):
            return False
        if key == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
            self.reverse = self.sort in ("cpu", "rss", "restarts", "uptime")
        elif key == "r":
            self.reverse = not self.reverse
        elif key == "p" and self.programs:
            if self.program is None:
                self.program = self.programs[0]
            else:
                at = self.programs.index(self.program) if self.program in self.programs else -1
                self.program = self.programs[at + 1] if at + 1 < len(self.programs) else None
        return True

    def cpu(self, nodes: list[dict[str, Any]], now: float) -> None:
        """CPU% over this client's own interval (the master's on a first sight)."""
        for n in nodes:
            before = self._last.get(n["node"])
            seconds = n.get("cpu_seconds")
            if seconds is None:
                self._last.pop(n["node"], None)
                continue
            if before is not None and before[0] == n["pid"] and now > before[2]:
                n["cpu_percent"] = round(max(0.0, 100.0 * (seconds - before[1])
                                             / (now - before[2])), 1)
            self._last[n["node"]] = (n["pid"], seconds, now)

    def rows(self, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.programs = sorted({n["program"] for n in nodes})
        shown = [n for n in nodes if self.program is None or n["program"] == self.program]

        def by(n: dict[str, Any]) -> Any:
            value = {"node": natural(n["node"]), "state": _STATE_ORDER.get(n["state"], 9),
                     "cpu": n.get("cpu_percent") or 0.0, "rss": n.get("rss") or 0,
                     "restarts": n["restarts"], "uptime": n.get("uptime") or 0.0}[self.sort]
            return (value, natural(n["node"]))
        return sorted(shown, key=by, reverse=self.reverse)


def natural(name: str) -> tuple[Any, ...]:
    """worker2 before worker10."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def totals(nodes: list[dict[str, Any]]) -> list[tuple[str, int, int, float, int, int]]:
    """Per program: name, running, nodes, CPU%, RSS, restarts."""
    out: dict[str, list[Any]] = {}
    for n in nodes:
        t = out.setdefault(n["program"], [0, 0, 0.0, 0, 0])
        t[0] += n["state"] == "RUNNING"
        t[1] += 1
        t[2] += n.get("cpu_percent") or 0.0
        t[3] += n.get("rss") or 0
        t[4] += n["restarts"]
    return [(p, t[0], t[1], round(t[2], 1), t[3], t[4]) for p, t in sorted(out.items())]


def cells(n: dict[str, Any]) -> tuple[str, ...]:
    from stemd.render import duration, size

    cpu = n.get("cpu_percent")
    return (n["node"], n["state"], str(n["pid"]) if n["pid"] is not None else "-",
            duration(n.get("uptime")), str(n["restarts"]),
            f"{cpu:.1f}" if cpu is not None else "-", size(n.get("rss")),
            str(n["children"]) if n.get("children") is not None else "-")


def header(view: View, nodes: list[dict[str, Any]], shown: int) -> str:
    running = sum(n["state"] == "RUNNING" for n in nodes)
    where = f"program {view.program}" if view.program else "all programs"
    return (f"stemctl top {time.strftime('%H:%M:%S')}  {running}/{len(nodes)} running  "
            f"{where} ({shown} shown)  sort: {view.sort}{' desc' if view.reverse else ''}")


def problems(nodes: list[dict[str, Any]]) -> list[str]:
    """The last error of each node that is not running well."""
    return [f"{n['node']}: {n['last_error']}" for n in nodes
            if n.get("last_error") and n["state"] != "STOPPED"]


def render(view: View, nodes: list[dict[str, Any]], height: int) -> Any:
    """The rich renderable of one frame, fitted to ``height`` lines."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from stemd.render import size

    rows = view.rows(nodes)
    programs = totals(nodes)
    errors = problems(rows)
    # header 1, table head 1, totals head+rows, errors, keys line 1
    room = max(3, height - 4 - len(programs) - 2 - min(len(errors), 5))
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("NODE", "STATE") else "right",
                         no_wrap=True, overflow="ellipsis", max_width=24 if column == "NODE"
                         else None)
    for n in rows[:room]:
        table.add_row(*cells(n), style=HIGHLIGHT.get(n["state"], ""))
    more = len(rows) - room
    parts: list[Any] = [Text(header(view, nodes, len(rows)), style="bold"), table]
    if more > 0:
        parts.append(Text(f"... {more} more (p: filter by program)", style="dim"))
    summary = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("PROGRAM", "RUNNING", "CPU%", "RSS", "RESTARTS"):
        summary.add_column(column, justify="left" if column == "PROGRAM" else "right",
                           no_wrap=True)
    for program, running, count, cpu, rss, restarts in programs:
        summary.add_row(program, f"{running}/{count}", f"{cpu:.1f}", size(rss), str(restarts),
                        style="" if running == count else "yellow")
    parts.append(summary)
    for line in errors[:5]:
        parts.append(Text(line, style="red", no_wrap=True, overflow="ellipsis"))
    parts.append(Text("s sort  r reverse  p program  q quit", style="dim"))
    return Group(*parts)


def plain(view: View, nodes: list[dict[str, Any]]) -> str:
    from stemd.render import size

    rows = view.rows(nodes)
    table = [COLUMNS, *(cells(n) for n in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = [header(view, nodes, len(rows))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in table]
    for program, running, count, cpu, rss, restarts in totals(nodes):
        lines.append(f"program {program}: {running}/{count} running, CPU {cpu:.1f}%, "
                     f"RSS {size(rss)}, {restarts} restarts")
    lines += problems(rows)
    return "\n".join(lines) + "\n\n"


def _fetch(ctl: Ctl, view: View) -> list[dict[str, Any]] | dict[str, Any]:
    response = ctl.call("status", names=ctl.args.names, stats=True)
    if not response["ok"]:
        return response
    nodes: list[dict[str, Any]] = response["result"]
    view.cpu(nodes, time.monotonic())
    return nodes


def run(ctl: Ctl) -> int:
    from stemd.ctl import OK

    view = View(ctl.args.sort)
    if not sys.stdout.isatty() or ctl.json:
        count = 0
        while True:
            nodes = _fetch(ctl, view)
            if isinstance(nodes, dict):
                return ctl.error(nodes)
            if ctl.json:
                from stemd.render import print_json

                print_json({"time": time.time(), "nodes": nodes})
            else:
                sys.stdout.write(plain(view, nodes))
            sys.stdout.flush()
            count += 1
            if ctl.args.iterations and count >= ctl.args.iterations:
                return OK
            time.sleep(ctl.args.interval)
    return _live(ctl, view)


def _live(ctl: Ctl, view: View) -> int:
    import select
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    from stemd.ctl import OK

    console = Console()
    nodes = _fetch(ctl, view)
    if isinstance(nodes, dict):
        return ctl.error(nodes)
    stdin = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(stdin) if stdin is not None else None
    count = 1
    try:
        if stdin is not None:
            tty.setcbreak(stdin)
        with Live(render(view, nodes, console.size.height), console=console, screen=True,
                  auto_refresh=False, transient=True) as live:
            next_at = time.monotonic() + ctl.args.interval
            while True:
                if ctl.args.iterations and count >= ctl.args.iterations:
                    return OK
                wait = max(0.0, next_at - time.monotonic())
                if stdin is not None:
                    ready = select.select([stdin], [], [], wait)[0]
                else:
                    time.sleep(wait)  # not a terminal: nothing to read, just the next frame
                    ready = []
                if ready:
                    key = os.read(stdin, 1).decode(errors="replace") if stdin is not None \
                        else ""
                    if not view.key(key):
                        return OK
                else:
                    fetched = _fetch(ctl, view)
                    if isinstance(fetched, dict):
                        live.stop()
                        return ctl.error(fetched)
                    nodes = fetched
                    count += 1
                    next_at = time.monotonic() + ctl.args.interval
                live.update(render(view, nodes, console.size.height), refresh=True)
    finally:
        if saved is not None and stdin is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
