"""Turning the results into the JSON file and the Markdown section.

The Markdown goes between ``<!-- bench:start -->`` and ``<!-- bench:end -->``
in ``docs/performance.md``, so prose written around it survives a re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import ratio

START_MARK = "<!-- bench:start -->"
END_MARK = "<!-- bench:end -->"
OURS = "stemd"


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    scale: float  # multiply the stored value by this to print it
    unit: str
    decimals: int = 1


SIZE_METRICS = (
    Metric("launch_wall", "launcher wall time", 1000, "ms", 0),
    Metric("alive_after_return", "launcher return → all nodes alive", 1000, "ms", 0),
    Metric("running_after_return", "launcher return → all RUNNING", 1000, "ms", 0),
    Metric("alive_after_launch", "launcher start → all nodes alive", 1000, "ms", 0),
    Metric("running_after_launch", "launcher start → all RUNNING", 1000, "ms", 0),
    Metric("status_wall", "status command wall time", 1000, "ms", 0),
    Metric("respawn", "respawn after SIGKILL", 1000, "ms", 1),
    Metric("idle_rss_mib", "idle master RSS", 1, "MiB", 1),
    Metric("idle_cpu_s", "idle master CPU (whole window)", 1000, "ms", 0),
    Metric("idle_wakeups_per_s", "idle wake-ups (voluntary ctx switches)", 1, "/s", 2),
    Metric("stop_all", "stop all nodes", 1000, "ms", 0),
    Metric("shutdown", "shutdown (master and nodes gone)", 1000, "ms", 0),
)

FLOOD_METRICS = (
    Metric("flood_seconds", "node start → all output in the log", 1, "s", 2),
    Metric("flood_mib_per_s", "throughput", 1, "MiB/s", 0),
    Metric("flood_master_cpu_s", "master CPU meanwhile", 1, "s", 2),
)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def write_markdown(section: str, path: Path) -> None:
    """Replace the marked section of ``path``, or create the file with it."""
    block = f"{START_MARK}\n{section.rstrip()}\n{END_MARK}\n"
    if path.exists():
        text = path.read_text()
        start, end = text.find(START_MARK), text.find(END_MARK)
        if start != -1 and end > start:
            rest = text[end + len(END_MARK) :].lstrip("\n")
            text = text[:start] + block + ("\n" + rest if rest else "")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "# Performance\n\n" + block
    path.write_text(text)


def render(results: dict[str, Any]) -> str:
    parts = [render_header(results)]
    peers = [name for name in results["supervisors"] if name != OURS]
    floors = results.get("floor", {})
    for size, by_sup in results["sizes"].items():
        parts.append(render_size(int(size), by_sup, peers, floors.get(size, {})))
    if results.get("storm"):
        parts.append(render_storm(results["storm"], results["meta"]))
    if results.get("flood"):
        parts.append(render_flood(results["flood"], peers, results["meta"]))
    if results.get("warm_stop"):
        parts.append(render_warm(results["warm_stop"], peers, results["meta"]))
    if results.get("targets"):
        parts.append(render_targets(results["targets"]))
    if results.get("skipped"):
        parts.append(render_skipped(results["skipped"]))
    parts.append(render_notes(results["meta"]))
    return "\n\n".join(parts) + "\n"


def render_header(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    versions = ", ".join(
        f"{name} {info.get('version') or 'n/a'}" for name, info in results["supervisors"].items()
    )
    s = meta["settings"]
    lines = [
        f"## Results ({meta['date']})",
        "",
        f"- Machine: {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}; 1-min load average {machine['loadavg_at_start']:.2f} "
        f"at the start, {machine.get('loadavg_at_end', float('nan')):.2f} at the end "
        "(shared and noisy: read the ratios, not the absolutes).",
        f"- Versions: {versions}.",
        f"- Same settings for all: start-secs {s['start_secs']}, restart {s['restart']}, "
        f"stop timeout {s['stop_timeout']} s, start retries {s['start_retries']}.",
        f"- {meta['trials']} trial(s) per size; each cell is `median / p90`; ratio = "
        f"stemd / peer on medians (< 1 means stemd is faster or smaller).",
        f"- Command: `{meta['command']}`",
    ]
    for name, info in results["supervisors"].items():
        if info.get("note"):
            lines.append(f"- {name}: {info['note']}")
    return "\n".join(lines)


def cell(summary: dict[str, Any] | None, metric: Metric) -> str:
    if not summary:
        return "n/a"
    med = f"{summary['median'] * metric.scale:.{metric.decimals}f}"
    if summary["n"] == 1:
        return med
    return f"{med} / {summary['p90'] * metric.scale:.{metric.decimals}f}"


def ratio_cell(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    value = ratio(ours and ours["median"], theirs and theirs["median"])
    return "n/a" if value is None else f"{value:.2f}x"


#: the floors' rows: (result name, metric key, row label)
FLOOR_ROWS = (
    ("floor_1proc", "alive_after_launch",
     "floor: bare Popen loop, 1 process (start → all nodes alive, ms)"),
    ("floor_2procs", "alive_after_launch",
     "floor: bare Popen loop, 2 processes (start → all nodes alive, ms)"),
    ("floor_1proc", "stop_all",
     "floor: bare stop (TERM, reap, log, PID files) and a bare client (stop → no node "
     "left, ms)"),
)


def render_size(
    size: int, by_sup: dict[str, Any], peers: list[str], floor: dict[str, Any] | None = None
) -> str:
    head = ["metric", OURS]
    for peer in peers:
        head += [peer, f"{OURS}/{peer}"]
    rows = [f"### {size} nodes", "", table_row(head), table_row(["---"] * len(head))]
    ours = by_sup.get(OURS, {})
    for metric in SIZE_METRICS:
        if not any(metric.key in by_sup.get(s, {}) for s in by_sup):
            continue
        row = [f"{metric.label} ({metric.unit})", cell(ours.get(metric.key), metric)]
        for peer in peers:
            theirs = by_sup.get(peer, {}).get(metric.key)
            row += [cell(theirs, metric), ratio_cell(ours.get(metric.key), theirs)]
        rows.append(table_row(row))
    floor_rows = [(name, key, label) for name, key, label in FLOOR_ROWS
                  if (floor or {}).get(name, {}).get(key)]
    for name, key, label in floor_rows:
        # the floor's own figure sits in the stemd column; the ratio columns
        # are floor / peer, what the floor itself would score
        metric = next(m for m in SIZE_METRICS if m.key == key)
        mine = (floor or {})[name][key]
        row = [label, cell(mine, metric)]
        for peer in peers:
            theirs = by_sup.get(peer, {}).get(key)
            row += [cell(theirs, metric), ratio_cell(mine, theirs)]
        rows.append(table_row(row))
    if floor_rows:
        ratios = ", and the ratios are floor / peer" if peers else ""
        rows += ["", f"Floor rows: the floor's own figure is in the {OURS} column{ratios}."]
    return "\n".join(rows)


def render_storm(storm: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = [
        f"### Crash storm ({meta['storm_nodes']} nodes exit 100 ms after each start, "
        f"{meta['storm_secs']:g} s, start-secs {meta['storm_start_secs']})",
        "",
        table_row(
            [
                "supervisor",
                "spawns",
                "master CPU (s)",
                "status median / p90 / max (ms)",
                "status failed",
                "zombies at end",
            ]
        ),
        table_row(["---"] * 6),
    ]
    for name, result in storm.items():
        if "error" in result:
            rows.append(table_row([name, "n/a", "n/a", result["error"], "n/a", "n/a"]))
            continue
        walls = result["status_wall"]
        rows.append(
            table_row(
                [
                    name,
                    str(result["spawns"]),
                    f"{result['master_cpu_s']:.2f}",
                    f"{walls['median'] * 1000:.0f} / {walls['p90'] * 1000:.0f} / "
                    f"{walls['max'] * 1000:.0f}",
                    f"{result['status_failures']} of {walls['n']}",
                    str(result.get("zombies_at_end", "n/a")),
                ]
            )
        )
    for name, result in storm.items():
        for detail in result.get("status_failure_details", []):
            rows.append(f"\n{name} status failure: `{detail}`")
    return "\n".join(rows)


def render_flood(flood: dict[str, Any], peers: list[str], meta: dict[str, Any]) -> str:
    head = ["metric", OURS]
    for peer in peers:
        head += [peer, f"{OURS}/{peer}"]
    rows = [
        f"### {meta['flood_mb']} MiB written to stdout by one node",
        "",
        table_row(head),
        table_row(["---"] * len(head)),
    ]
    ours = flood.get(OURS, {})
    for metric in FLOOD_METRICS:
        row = [f"{metric.label} ({metric.unit})", cell(ours.get(metric.key), metric)]
        for peer in peers:
            theirs = flood.get(peer, {}).get(metric.key)
            row += [cell(theirs, metric), ratio_cell(ours.get(metric.key), theirs)]
        rows.append(table_row(row))
    return "\n".join(rows)


WARM_METRIC = Metric("warm_stop", "stop command → no node left", 1000, "ms", 0)


def render_warm(warm: dict[str, Any], peers: list[str], meta: dict[str, Any]) -> str:
    head = ["metric", OURS]
    for peer in peers:
        head += [peer, f"{OURS}/{peer}"]
    ours = warm.get(OURS, {}).get(WARM_METRIC.key)
    row = [f"{WARM_METRIC.label} ({WARM_METRIC.unit})", cell(ours, WARM_METRIC)]
    for peer in peers:
        theirs = warm.get(peer, {}).get(WARM_METRIC.key)
        row += [cell(theirs, WARM_METRIC), ratio_cell(ours, theirs)]
    return "\n".join([
        f"### Warm stop ({meta['warm_nodes']} nodes that exit 0.5 s after TERM, "
        f"{meta['warm_trials']} trial(s))",
        "",
        table_row(head),
        table_row(["---"] * len(head)),
        table_row(row),
    ])


def render_targets(targets: list[dict[str, Any]]) -> str:
    rows = [
        "### Targets (issues 6 and 10)",
        "",
        table_row(["nodes", "target", "stemd", "met"]),
        table_row(["---"] * 4),
    ]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        rows.append(table_row([str(t["nodes"]), t["target"], t["value"], met]))
    return "\n".join(rows)


def render_skipped(skipped: list[dict[str, Any]]) -> str:
    lines = ["### Skipped", ""]
    for s in skipped:
        lines.append(f"- {s['supervisor']} at {s['nodes']} nodes ({s['phase']}): {s['reason']}")
    return "\n".join(lines)


def run_files_note(meta: dict[str, Any]) -> str:
    """Where the run-time files went (older results have no such entry)."""
    run_files = meta.get("run_files")
    if not run_files:
        return "- Run-time files: in the work dir, next to the logs (not recorded)."
    where = (
        f"on a tmpfs ({run_files['path'].rsplit('/', 1)[0]}), as /run is in production"
        if run_files["kind"] == "tmpfs"
        else f"on disk ({run_files['fs_type']}): no writable tmpfs was found"
    )
    text = (
        f"- Run-time files (master PID and state files, sockets, node PID files) of every "
        f"supervisor {where}; node and master logs and the configs on disk "
        f"({meta.get('log_fs', 'n/a')}), as /var/log and /etc are."
    )
    if run_files.get("note"):
        text += f" ({run_files['note']}.)"
    return text


def floor_note(meta: dict[str, Any]) -> list[str]:
    if not meta.get("floor_procs"):
        return []
    return [
        "- Spawn floor (`bench/floor_spawner.py`): a stdlib-only script, started with "
        "stemd's interpreter, that from interpreter start opens each node's log (O_APPEND, "
        "on disk) and `subprocess.Popen`s the node (own session, log as stdout/stderr, "
        "close_fds), serially, with no supervision work at all; the 2-process variant "
        "forks once and each process spawns half. It takes its own slots in each trial's "
        "rotation and is timed like a launcher: from just before it is started until every "
        "node is alive, with the same `/proc` poller, which starts once each spawning "
        "process has said its loop is done (as it starts once a launcher has returned: "
        "polling during the loop took a core from it). A launch target below the "
        "floor's own ratio is out of reach of any serial Python spawner on this machine.",
        "- Stop floor (the same script, 1 process, `--stop-socket`): it also writes each "
        "node's PID file (not timed) and holds a pidfd on each; once the nodes have been up "
        "for 1 s, a bare client (`bench/floor_client.py`: an interpreter, a Unix socket, "
        "one line each way) asks it to stop, and it does, with no state machine, asyncio or "
        "protocol, what a supervisor that logs every transition and keeps honest PID files "
        "must: per node a log line (stdlib `logging`, the master's format) and SIGTERM; per "
        "exit, waitid on the pidfd, SIGKILL to what is left of the group, the PID file "
        "removed and a log line. Timed like a stop command: from just before the client "
        "starts until no node is left, with the same poller.",
    ]


def render_notes(meta: dict[str, Any]) -> str:
    return "\n".join(
        [
            "### How it is measured",
            "",
            "- Every supervisor is started by its daemonizing launcher (`stemd --config`, "
            "`supervisord -c`, `circusd --daemon`) and driven only by its own CLI; the "
            'benchmark watches `/proc` from outside. "Alive" means every node\'s '
            '`/bin/sleep 10000000<i>` has exec\'d; "RUNNING" means the status command says '
            "so for every node. circus has no start-secs state, so it has no RUNNING figure, "
            "and `circusctl status` answers per watcher, not per process.",
            "- Respawn: SIGKILL a node that has been up longer than start-secs, then poll "
            "`/proc` (0.5 ms) until a new process with the same marker has exec'd. "
            "supervisord notices the death at once but restarts on its next 1 s tick; "
            "circus finds deaths only on its periodic check (`check_delay`, 5 s by default "
            "in an ini file) and its default config is used here.",
            f"- Idle: {meta['idle_secs']:g} s with every node RUNNING and no client, "
            f"{meta['settle_secs']:g} s after the last RUNNING; wake-ups are voluntary context "
            "switches summed over the master's threads.",
            "- Stop all: the stop command, then until no node is left. Shutdown: from a full, "
            "settled fleet until the master and every node are gone.",
            "- Crash storm: with start-secs 1, a node that exits after 100 ms has *failed to "
            "start*, so each supervisor's start-retry/back-off policy decides how many spawns "
            "happen; the spawn count shows it. Status is called every 100 ms throughout.",
            "- Flood: time from the node's start (from `/proc`) until the end marker is in the "
            "node's log file; master CPU from the first sample after the launcher returned.",
            "- Warm stop: each node is `sh -c` that traps TERM, sleeps 0.5 s and exits 0 (a "
            "background `sleep` stands for its pool); from a settled fleet, the stop command "
            "until no node's shell is left. 0.5 s is the floor.",
            "- Polling `/proc` with 1,000 nodes costs ~10-20 ms per scan, which bounds the "
            "resolution of the alive and stop figures at that size.",
            run_files_note(meta),
            *floor_note(meta),
        ]
    )


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
