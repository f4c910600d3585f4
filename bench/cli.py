"""The benchmark's command line: which supervisors, which sizes, how long.

Trials are interleaved (trial k runs stemd, supervisord and circus in an
order rotated by k) so that a burst of noise on this shared machine does not
land on one supervisor only. A supervisor that fails at some size is
recorded as skipped there, with the reason, and the run goes on.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import procs, report, rundirs
from bench.adapters import ADAPTERS, Supervisor, run_cli
from bench.peers import ensure_peers, peers_ready
from bench.scenarios import (
    SETTLE_SECS,
    BenchError,
    Samples,
    TrialPlan,
    run_flood,
    run_floor,
    run_storm,
    run_trial,
    run_warm_stop,
)
from bench.stats import summarize
from bench.workloads import (
    Settings,
    Workload,
    flood_workload,
    sleep_workload,
    storm_workload,
    warm_workload,
)

ROOT = Path(__file__).resolve().parent.parent
PEER_NAMES = ("supervisord", "circus")
#: the spawn floor's variants (bench/floor_spawner.py): name -> spawner processes
FLOORS = {"floor_1proc": 1, "floor_2procs": 2}


@dataclass(frozen=True, slots=True)
class Options:
    sizes: tuple[int, ...]
    trials: int
    supervisors: tuple[str, ...]
    explicit_supervisors: bool
    plan: TrialPlan
    storm_nodes: int
    storm_secs: float
    storm_start_secs: int
    flood_mb: int
    flood_trials: int
    warm_nodes: int
    warm_trials: int
    out: Path | None
    json_path: Path | None
    stemd_bin: Path
    peers_venv: Path
    install_peers: bool
    keep: bool
    floor: bool
    command: str


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    p.add_argument("--nodes", default="10,100,1000", help="fleet sizes, e.g. 10,100 ('' for none)")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--supervisors", help="comma list of stemd,supervisord,circus")
    p.add_argument("--quick", action="store_true", help="smoke mode: N=10, 2 short trials")
    p.add_argument("--idle-secs", type=float, default=20.0)
    p.add_argument("--storm-nodes", type=int, default=100, help="0 skips the crash storm")
    p.add_argument("--storm-secs", type=float, default=10.0)
    p.add_argument(
        "--storm-start-secs",
        type=int,
        default=Settings().start_secs,
        help="start-secs during the storm only (0: every exit is a restart of a RUNNING node)",
    )
    p.add_argument("--flood-mb", type=int, default=200, help="0 skips the stdout flood")
    p.add_argument("--flood-trials", type=int, default=3)
    p.add_argument("--warm-nodes", type=int, default=100,
                   help="warm stop: nodes that exit 0.5 s after TERM (0 skips it)")
    p.add_argument("--warm-trials", type=int, default=3)
    p.add_argument("--out", type=Path, help="Markdown file (section between bench markers)")
    p.add_argument("--json", type=Path, dest="json_path")
    p.add_argument("--stemd-bin", type=Path, default=ROOT / ".venv" / "bin")
    p.add_argument("--peers-venv", type=Path, default=ROOT / "bench" / ".venv-peers")
    p.add_argument("--no-install", action="store_true", help="never create the peers' venv")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the spawn floor (bare Popen loop) at each size")
    a = p.parse_args(argv)
    plan = TrialPlan(idle_secs=a.idle_secs)
    sizes = tuple(int(n) for n in a.nodes.split(",") if n.strip())
    trials, storm_nodes, storm_secs = a.trials, a.storm_nodes, a.storm_secs
    flood_mb, flood_trials = a.flood_mb, a.flood_trials
    warm_nodes, warm_trials = a.warm_nodes, a.warm_trials
    if a.quick:
        sizes, trials = (10,), min(trials, 2)
        plan = TrialPlan(status_calls=3, respawn_kills=2, idle_secs=min(a.idle_secs, 3.0))
        storm_nodes, storm_secs = 10, 3.0
        flood_mb, flood_trials = min(flood_mb, 20), 1
        warm_nodes, warm_trials = min(warm_nodes, 10), min(warm_trials, 1)
    names = tuple(a.supervisors.split(",")) if a.supervisors else tuple(ADAPTERS)
    unknown = set(names) - set(ADAPTERS)
    if unknown:
        p.error(f"unknown supervisor(s): {', '.join(sorted(unknown))}")
    return Options(
        sizes=sizes,
        trials=trials,
        supervisors=names,
        explicit_supervisors=a.supervisors is not None,
        plan=plan,
        storm_nodes=storm_nodes,
        storm_secs=storm_secs,
        storm_start_secs=a.storm_start_secs,
        flood_mb=flood_mb,
        flood_trials=flood_trials,
        warm_nodes=warm_nodes,
        warm_trials=warm_trials,
        out=a.out,
        json_path=a.json_path,
        stemd_bin=a.stemd_bin,
        peers_venv=a.peers_venv,
        install_peers=not a.no_install and not a.quick,
        keep=a.keep,
        floor=not a.no_floor,
        command=shlex.join(["python", "bench/run.py", *argv]),
    )


def _exit_on_term(signum: int, frame: object) -> NoReturn:
    """Turn SIGTERM/SIGHUP into an exception so that ``finally`` kills every
    process this run started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    procs.become_subreaper()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_term)
    work_dir = Path(tempfile.mkdtemp(prefix="stemd-bench-"))
    runtime = rundirs.runtime_root(work_dir)
    try:
        results = run(opts, work_dir, runtime)
    finally:
        procs.kill_descendants()
        if opts.keep:
            log(f"kept {work_dir} and {runtime.path}")
        else:
            shutil.rmtree(runtime.path, ignore_errors=True)
            shutil.rmtree(work_dir, ignore_errors=True)
    markdown = report.render(results)
    if opts.json_path:
        report.write_json(results, opts.json_path)
    if opts.out:
        report.write_markdown(markdown, opts.out)
    print(markdown)
    return 0


def run(opts: Options, work_dir: Path, runtime: rundirs.RuntimeRoot) -> dict[str, Any]:
    supervisors = check_supervisors(opts)
    active = [name for name, info in supervisors.items() if info["available"]]
    settings = Settings()
    results: dict[str, Any] = {
        "meta": meta(opts, settings, work_dir, runtime),
        "supervisors": supervisors,
        "sizes": {},
        "floor": {},
        "storm": {},
        "flood": {},
        "warm_stop": {},
        "skipped": [],
    }
    log(f"settings: {asdict(settings)}; sizes {list(opts.sizes)}, {opts.trials} trial(s)")
    for name, info in supervisors.items():
        log(f"{name}: {info.get('version') or 'unavailable'} {info.get('note', '')}".rstrip())
    log(f"run-time files ({runtime.kind}, {runtime.fs_type}) in {runtime.path}; "
        f"logs ({results['meta']['log_fs']}) in {work_dir}"
        + (f"; {runtime.note}" if runtime.note else ""))
    runner = Runner(opts, settings, work_dir, results["skipped"], runtime.path)
    floors = list(FLOORS) if floor_python(opts) is not None else []
    for size in opts.sizes:
        by_name = runner.sizes(active, size, floors)
        results["sizes"][str(size)] = summarize_all(
            {name: s for name, s in by_name.items() if name not in FLOORS}
        )
        floor = summarize_all({name: s for name, s in by_name.items() if name in FLOORS})
        if floor:
            results["floor"][str(size)] = floor
    if opts.storm_nodes > 0 and opts.storm_secs > 0:
        results["storm"] = runner.storms(active)
    if opts.flood_mb > 0 and opts.flood_trials > 0:
        results["flood"] = summarize_all(runner.floods(active))
    if opts.warm_nodes > 0 and opts.warm_trials > 0:
        results["warm_stop"] = summarize_all(runner.warm_stops(active))
    results["targets"] = targets(results)
    results["meta"]["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    return results


def check_supervisors(opts: Options) -> dict[str, dict[str, Any]]:
    """Availability, version and notes of each requested supervisor. Peers
    are installed on demand, except in quick mode, where they are used only
    if their venv already exists or they were asked for by name."""
    wanted_peers = [n for n in opts.supervisors if n in PEER_NAMES]
    if wanted_peers and (opts.install_peers or opts.explicit_supervisors):
        try:
            ensure_peers(opts.peers_venv)
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"could not install the peers: {exc}")
    info: dict[str, dict[str, Any]] = {}
    for name in opts.supervisors:
        info[name] = stemd_info(opts) if name == "stemd" else peer_info(opts, name)
    return info


def stemd_info(opts: Options) -> dict[str, Any]:
    python = opts.stemd_bin / "python"
    code = "import stemd.cli, stemd.ctl, stemd; print(stemd.__version__)"
    probe = run_cli([str(python), "-c", code])
    if not probe.ok:
        return {"available": False, "version": None, "note": f"not runnable: {probe.describe()}"}
    return {"available": True, "version": probe.stdout.strip(), "bin": str(opts.stemd_bin)}


def peer_info(opts: Options, name: str) -> dict[str, Any]:
    bin_dir = opts.peers_venv / "bin"
    if not peers_ready(opts.peers_venv):
        return {"available": False, "version": None, "note": f"no peers venv at {opts.peers_venv}"}
    launcher = "supervisord" if name == "supervisord" else "circusd"
    probe = run_cli([str(bin_dir / launcher), "--version"])
    if not probe.ok:
        return {"available": False, "version": None, "note": f"cannot run: {probe.describe()}"}
    return {"available": True, "version": probe.stdout.strip(), "bin": str(bin_dir)}


def floor_python(opts: Options) -> Path | None:
    """The interpreter stemd runs with, for the spawn floor; None when the
    floor is off or that interpreter is missing (the floor is then skipped,
    and the log says why)."""
    if not opts.floor or not opts.sizes:
        return None
    python = opts.stemd_bin / "python"
    if not os.access(python, os.X_OK):
        log(f"spawn floor skipped: no interpreter at {python}")
        return None
    return python


def meta(
    opts: Options, settings: Settings, work_dir: Path, runtime: rundirs.RuntimeRoot
) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()[0],
        },
        "settings": asdict(settings),
        "trials": opts.trials,
        "plan": asdict(opts.plan),
        "idle_secs": opts.plan.idle_secs,
        "settle_secs": SETTLE_SECS,
        "storm_nodes": opts.storm_nodes,
        "storm_secs": opts.storm_secs,
        "storm_start_secs": opts.storm_start_secs,
        "flood_mb": opts.flood_mb,
        "flood_trials": opts.flood_trials,
        "warm_nodes": opts.warm_nodes,
        "warm_trials": opts.warm_trials,
        # where each supervisor's PID files, sockets and state files went
        # ("tmpfs", as /run in production, or "disk" when no tmpfs was usable)
        "run_files": {
            "kind": runtime.kind,
            "fs_type": runtime.fs_type,
            "path": str(runtime.path),
            "note": runtime.note,
        },
        "log_fs": rundirs.fs_type(work_dir),
        "floor_procs": FLOORS if opts.floor else {},
        "command": opts.command,
    }


class Runner:
    """Runs the scenarios for a list of supervisors, recording skips."""

    def __init__(
        self, opts: Options, settings: Settings, work_dir: Path, skipped: list, runtime_dir: Path
    ) -> None:
        self.opts = opts
        self.settings = settings
        self.work_dir = work_dir
        self.runtime_dir = runtime_dir  # tmpfs when possible: see bench.rundirs
        self.skipped: list[dict[str, Any]] = skipped

    def make(
        self, name: str, workload: Workload, tag: str, settings: Settings | None = None
    ) -> Supervisor:
        run_dir = self.work_dir / f"{name}-{tag}"
        runtime_dir = self.runtime_dir / f"{name}-{tag}"
        for path in (run_dir, runtime_dir):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
        bin_dir = self.opts.stemd_bin if name == "stemd" else self.opts.peers_venv / "bin"
        return ADAPTERS[name](
            bin_dir, run_dir, workload, settings or self.settings, runtime_dir=runtime_dir
        )

    def finish(self, sup: Supervisor) -> None:
        if not self.opts.keep:
            shutil.rmtree(sup.run_dir, ignore_errors=True)
            shutil.rmtree(sup.runtime_dir, ignore_errors=True)

    def skip(self, name: str, nodes: int, phase: str, exc: Exception) -> None:
        log(f"{name} n={nodes} {phase}: skipped: {exc}")
        entry = {"supervisor": name, "nodes": nodes, "phase": phase, "reason": str(exc)}
        self.skipped.append(entry)

    def sizes(self, names: list[str], size: int, floors: list[str]) -> dict[str, Samples]:
        """Every trial at ``size``; the spawn floor's variants (``floors``)
        take their own slots in the same rotation, so that they are measured
        in the same run, under the same load and the same poller."""
        samples: dict[str, Samples] = {name: {} for name in [*names, *floors]}
        failed: set[str] = set()
        for trial in range(self.opts.trials):
            # idle is measured once per size: it is long and varies little
            plan = self.opts.plan if trial == 0 else replace(self.opts.plan, idle_secs=0)
            for name in rotated([*names, *floors], trial):
                if name in failed:
                    continue
                if name in FLOORS:
                    if not self.floor(name, size, trial, samples[name]):
                        failed.add(name)
                    continue
                sup = self.make(name, sleep_workload(size), f"n{size}-t{trial}")
                try:
                    merge(samples[name], run_trial(sup, plan))
                except BenchError as exc:
                    failed.add(name)
                    self.skip(name, size, f"trial {trial + 1}", exc)
                finally:
                    self.finish(sup)
                log_trial(name, size, trial, samples[name])
        return {name: s for name, s in samples.items() if s}

    def floor(self, name: str, size: int, trial: int, samples: Samples) -> bool:
        """One measurement of a spawn-floor variant; False (and a skip
        entry) when it failed, so that it is not tried again at this size."""
        python = self.opts.stemd_bin / "python"
        log_dir = self.work_dir / f"{name}-n{size}-t{trial}" / "logs"
        run_dir = self.runtime_dir / f"{name}-n{size}-t{trial}"
        try:
            measured = run_floor(python, sleep_workload(size), FLOORS[name], log_dir,
                                 self.opts.plan.timeout, run_dir)
        except BenchError as exc:
            self.skip(name, size, f"trial {trial + 1}", exc)
            return False
        finally:
            if not self.opts.keep:
                shutil.rmtree(log_dir.parent, ignore_errors=True)
                shutil.rmtree(run_dir, ignore_errors=True)
        merge(samples, {key: [value] for key, value in measured.items()})
        log(f"{name} n={size} trial {trial + 1}: " + ", ".join(
            f"{key} {value * 1000:.1f} ms" for key, value in measured.items()))
        return True

    def storms(self, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            run_dir = self.work_dir / f"{name}-storm"
            workload = storm_workload(self.opts.storm_nodes, str(run_dir / "spawns.log"))
            settings = replace(self.settings, start_secs=self.opts.storm_start_secs)
            sup = self.make(name, workload, "storm", settings)
            try:
                result = run_storm(sup, self.opts.storm_secs, run_dir / "spawns.log")
                out[name] = {
                    "spawns": result.spawns,
                    "master_cpu_s": result.master_cpu_s,
                    "status_failures": result.status_failures,
                    "zombies_at_end": result.zombies,
                    "start_secs": sup.settings.start_secs,
                    "status_failure_details": sorted(set(result.failure_details))[:5],
                    "status_wall": summarize(result.status_walls),
                }
                log(f"{name} storm: {result.spawns} spawns, cpu {result.master_cpu_s:.2f} s")
            except BenchError as exc:
                self.skip(name, self.opts.storm_nodes, "storm", exc)
                out[name] = {"error": str(exc)}
            finally:
                self.finish(sup)
        return out

    def floods(self, names: list[str]) -> dict[str, Samples]:
        samples: dict[str, Samples] = {name: {} for name in names}
        failed: set[str] = set()
        for trial in range(self.opts.flood_trials):
            for name in rotated(names, trial):
                if name in failed:
                    continue
                sup = self.make(name, flood_workload(self.opts.flood_mb), f"flood-t{trial}")
                try:
                    result = run_flood(sup, self.opts.flood_mb)
                    merge(samples[name], {k: [v] for k, v in result.items()})
                    log(f"{name} flood: {result['flood_seconds']:.2f} s")
                except BenchError as exc:
                    failed.add(name)
                    self.skip(name, 1, "flood", exc)
                finally:
                    self.finish(sup)
        return {name: s for name, s in samples.items() if s}


    def warm_stops(self, names: list[str]) -> dict[str, Samples]:
        samples: dict[str, Samples] = {name: {} for name in names}
        failed: set[str] = set()
        nodes = self.opts.warm_nodes
        for trial in range(self.opts.warm_trials):
            for name in rotated(names, trial):
                if name in failed:
                    continue
                sup = self.make(name, warm_workload(nodes), f"warm-t{trial}")
                try:
                    seconds = run_warm_stop(sup, self.opts.plan)
                    merge(samples[name], {"warm_stop": [seconds]})
                    log(f"{name} warm stop of {nodes}: {seconds * 1000:.0f} ms")
                except BenchError as exc:
                    failed.add(name)
                    self.skip(name, nodes, "warm stop", exc)
                finally:
                    self.finish(sup)
        return {name: s for name, s in samples.items() if s}


def rotated(names: list[str], k: int) -> list[str]:
    k %= max(1, len(names))
    return names[k:] + names[:k]


def merge(into: Samples, new: Samples) -> None:
    for key, values in new.items():
        into.setdefault(key, []).extend(values)


def summarize_all(by_sup: dict[str, Samples]) -> dict[str, dict[str, Any]]:
    return {
        name: {key: summarize(values) for key, values in samples.items() if values}
        for name, samples in by_sup.items()
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issues 6 and 10's targets for stemd, judged on medians."""

    def median(size: int, name: str, key: str) -> float | None:
        summary = results["sizes"].get(str(size), {}).get(name, {}).get(key)
        return None if summary is None else summary["median"]

    checks: list[tuple[int, str, str, float | None, float]] = [
        (100, "respawn median ≤ 5 ms", "respawn", 1000, 5),
        (100, "stemctl status ≤ 60 ms", "status_wall", 1000, 60),
        (100, "zero idle wake-ups", "idle_wakeups_per_s", 1, 0),
        (100, "stop-all ≤ 0.3 s", "stop_all", 1000, 300),
        (100, "master RSS ≤ 20 MiB", "idle_rss_mib", 1, 20),
        (1000, "stemctl status ≤ 150 ms", "status_wall", 1000, 150),
        (1000, "respawn ≤ 10 ms", "respawn", 1000, 10),
    ]
    measured = {int(size) for size in results["sizes"]}
    out = []
    for size, label, key, scale, limit in checks:
        if size not in measured:
            continue
        value = median(size, "stemd", key)
        out.append(
            {
                "nodes": size,
                "target": label,
                "value": "n/a" if value is None else f"{value * scale:.2f}",
                "met": None if value is None else value * scale <= limit,
            }
        )
    # issue 10: stemd's time as a fraction of supervisord's, on medians
    relative: list[tuple[int, str, str, float]] = [
        (100, "stop-all ≤ 0.3x supervisord", "stop_all", 0.3),
        (1000, "stop-all ≤ 0.3x supervisord", "stop_all", 0.3),
        (1000, "launcher start → all alive ≤ 0.1x supervisord", "alive_after_launch", 0.1),
        (1000, "status ≤ 0.1x supervisord", "status_wall", 0.1),
    ]
    for size, label, key, limit in relative:
        if size not in measured:
            continue
        mine, peer = median(size, "stemd", key), median(size, "supervisord", key)
        both = mine is not None and peer is not None and peer > 0
        entry = {
            "nodes": size,
            "target": label,
            "value": f"{mine / peer:.2f}x ({mine * 1000:.0f} vs {peer * 1000:.0f} ms)"
            if both
            else "n/a",
            "met": mine / peer <= limit if both else None,
        }
        if key in ("alive_after_launch", "stop_all"):
            add_floor(entry, key, results["floor"].get(str(size), {}), peer)
        out.append(entry)
    ours, theirs = median(100, "stemd", "status_wall"), median(100, "supervisord", "status_wall")
    if 100 not in measured:
        return out
    out.append(
        {
            "nodes": 100,
            "target": "stemctl status faster than supervisorctl",
            "value": "n/a"
            if ours is None or theirs is None
            else f"{ours * 1000:.0f} vs {theirs * 1000:.0f} ms",
            "met": None if ours is None or theirs is None else ours < theirs,
        }
    )
    return out


def add_floor(entry: dict[str, Any], key: str, floor: dict[str, Any],
              peer: float | None) -> None:
    """What the floors themselves score against supervisord on the launch
    and stop targets: a target below a floor's own ratio is out of reach of
    a serial Python spawner, or of a Python supervisor that logs each
    transition and keeps PID files, on this machine, however little else it
    does."""
    scores: dict[str, dict[str, float | None]] = {}
    for name, procs_ in FLOORS.items():
        summary = floor.get(name, {}).get(key)
        if summary is None:
            continue
        value = summary["median"]
        scores[name] = {"procs": procs_, "median": value,
                        "ratio": value / peer if peer else None}
    if not scores:
        return
    entry["floor"] = scores
    parts = []
    for s in scores.values():
        label = f"{s['procs']:.0f} proc{'s' if s['procs'] != 1 else ''}: " \
            if key == "alive_after_launch" else ""
        ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}x"
        parts.append(f"{label}{ratio} ({(s['median'] or 0) * 1000:.0f} ms)")
    what = "bare Popen loop" if key == "alive_after_launch" else "bare stop and client"
    entry["value"] += f"; floor ({what}): " + ", ".join(parts)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def log_trial(name: str, size: int, trial: int, samples: Samples) -> None:
    parts = []
    for key in ("alive_after_return", "running_after_return", "status_wall", "respawn"):
        if samples.get(key):
            parts.append(f"{key} {samples[key][-1] * 1000:.1f} ms")
    log(f"{name} n={size} trial {trial + 1}: " + ", ".join(parts))
