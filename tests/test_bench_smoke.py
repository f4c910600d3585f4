"""The benchmark's smoke mode, for stemd only (issue 6).

The full benchmark is slow and noisy and is not part of ``make test``; this
runs ``bench/run.py --quick`` (10 nodes, two short trials, a 3 s storm, a
20 MiB flood) against the real ``stemd``/``stemctl`` and checks that the
harness works end to end and the figures are sane — not that they meet the
targets, which only the full run on 100 and 1,000 nodes can tell. The same
run measures the spawn floor (``bench/floor_spawner.py``) and puts the
run-time files on a tmpfs (``bench/rundirs.py``); the fast tests below check
the pieces of both on their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench import rundirs
from bench.adapters import ADAPTERS
from bench.workloads import Settings, sleep_workload

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"


def processes_with_token(token: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    token = f"BENCH_SMOKE_TOKEN={uuid.uuid4().hex}"
    env = dict(os.environ, BENCH_SMOKE_TOKEN=token.split("=", 1)[1])
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--supervisors",
            "stemd",
            "--stemd-bin",
            str(Path(sys.executable).parent),
            "--json",
            str(out / "results.json"),
            "--out",
            str(out / "performance.md"),
        ],
        capture_output=True,
        text=True,
        timeout=75,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return {
        "runtime_left": Path(results["meta"]["run_files"]["path"]).exists(),
        "results": json.loads((out / "results.json").read_text()),
        "markdown": (out / "performance.md").read_text(),
        "stderr": done.stderr,
        "leftovers": processes_with_token(token),
    }


def median(results: dict, key: str) -> float:
    return results["sizes"]["10"]["stemd"][key]["median"]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_measures_stemd(smoke: dict) -> None:
    results = smoke["results"]
    assert results["supervisors"]["stemd"]["available"], results["supervisors"]
    assert results["skipped"] == [], results["skipped"]
    start_secs = results["meta"]["settings"]["start_secs"]
    assert 0 <= median(results, "alive_after_return") < 5
    # RUNNING cannot come before start-secs, and should not take much longer
    assert start_secs <= median(results, "running_after_return") < start_secs + 5
    assert 0 < median(results, "status_wall") < 5
    assert 0 < median(results, "respawn") < 2
    assert 1 < median(results, "idle_rss_mib") < 500
    assert median(results, "idle_wakeups_per_s") >= 0
    assert 0 < median(results, "stop_all") < 15
    assert 0 < median(results, "shutdown") < 15


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_covers_storm_and_flood(smoke: dict) -> None:
    storm = smoke["results"]["storm"]["stemd"]
    assert "error" not in storm, storm
    assert storm["spawns"] >= 1
    assert storm["status_failures"] == 0
    assert storm["master_cpu_s"] >= 0
    flood = smoke["results"]["flood"]["stemd"]
    assert flood["flood_seconds"]["median"] > 0
    assert flood["flood_master_cpu_s"]["median"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_covers_the_warm_stop(smoke: dict) -> None:
    warm = smoke["results"]["warm_stop"]["stemd"]["warm_stop"]
    # each node exits 0.5 s after TERM: no stop can be quicker
    assert 0.5 <= warm["median"] < 15
    assert "### Warm stop" in smoke["markdown"]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_writes_the_marked_section_and_cleans_up(smoke: dict) -> None:
    markdown = smoke["markdown"]
    assert "<!-- bench:start -->" in markdown and "<!-- bench:end -->" in markdown
    assert "### 10 nodes" in markdown
    assert smoke["leftovers"] == [], "benchmark left processes behind"


def expected_run_files_kind() -> str:
    """What the benchmark should find on this host, read independently of
    bench.rundirs: a writable tmpfs at /run or /dev/shm."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    tmpfs = {line.split()[1] for line in mounts if len(line.split()) > 2
             and line.split()[2] == "tmpfs"}
    for base in ("/run", "/dev/shm"):
        if base in tmpfs and os.access(base, os.W_OK | os.X_OK):
            return "tmpfs"
    return "disk"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_measures_the_spawn_floor(smoke: dict) -> None:
    floor = smoke["results"]["floor"]["10"]
    for name in ("floor_1proc", "floor_2procs"):
        alive = floor[name]["alive_after_launch"]
        assert alive["n"] == 2, alive  # once per trial, in the rotation
        assert 0 < alive["median"] < 5
    assert smoke["results"]["meta"]["floor_procs"] == {"floor_1proc": 1, "floor_2procs": 2}
    markdown = smoke["markdown"]
    assert "| floor: bare Popen loop, 1 process (start → all nodes alive, ms) |" in markdown
    assert "| floor: bare Popen loop, 2 processes (start → all nodes alive, ms) |" in markdown
    assert "Spawn floor (`bench/floor_spawner.py`)" in markdown


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_measures_the_stop_floor(smoke: dict) -> None:
    """The 1-process floor also stops its nodes as a Python supervisor must
    at the least (log lines, pidfds, group kill, PID files), asked by a bare
    client; the 2-process one does not."""
    floor = smoke["results"]["floor"]["10"]
    stop = floor["floor_1proc"]["stop_all"]
    assert stop["n"] == 2 and 0 < stop["median"] < 5, stop
    assert "stop_all" not in floor["floor_2procs"]
    markdown = smoke["markdown"]
    assert ("| floor: bare stop (TERM, reap, log, PID files) and a bare client "
            "(stop → no node left, ms) |") in markdown
    assert "Stop floor (the same script, 1 process" in markdown


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_smoke_run_puts_run_time_files_on_tmpfs_and_removes_them(smoke: dict) -> None:
    run_files = smoke["results"]["meta"]["run_files"]
    assert run_files["kind"] == expected_run_files_kind(), run_files
    if run_files["kind"] == "tmpfs":
        assert run_files["fs_type"] == "tmpfs"
        assert "on a tmpfs" in smoke["markdown"]
    assert "Run-time files (master PID and state files, sockets" in smoke["markdown"]
    assert not smoke["runtime_left"], f"{run_files['path']} left behind"


def test_fs_type_takes_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /run tmpfs rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "/dev/vdb /run/user\\040data xfs rw 0 0\n"
    )
    assert rundirs.fs_type(Path("/run/x"), str(mounts)) == "tmpfs"
    assert rundirs.fs_type(Path("/run"), str(mounts)) == "tmpfs"
    assert rundirs.fs_type(Path("/running"), str(mounts)) == "ext4"
    assert rundirs.fs_type(Path("/run/user data/1"), str(mounts)) == "xfs"
    assert rundirs.fs_type(Path("/etc"), str(mounts)) == "ext4"


def test_runtime_root_falls_back_to_the_work_dir_and_says_why(tmp_path: Path) -> None:
    disk = tmp_path / "not-tmpfs"  # tmp_path itself: whatever /tmp is
    disk.mkdir()
    if rundirs.fs_type(disk) == "tmpfs":
        pytest.skip("the test's tmp dir is itself a tmpfs")
    root = rundirs.runtime_root(tmp_path / "work", candidates=(disk,))
    assert root.kind == "disk"
    assert root.path == tmp_path / "work" / "run" and root.path.is_dir()
    assert str(disk) in root.note and "no writable tmpfs" in root.note


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapters_put_run_time_files_in_the_runtime_dir_and_logs_on_disk(
    tmp_path: Path, name: str
) -> None:
    run_dir, runtime_dir = tmp_path / "disk", tmp_path / "tmpfs"
    run_dir.mkdir()
    sup = ADAPTERS[name](tmp_path / "bin", run_dir, sleep_workload(3), Settings(),
                         runtime_dir=runtime_dir)
    sup.prepare()
    assert sup.pid_file().parent == runtime_dir
    assert sup.node_log(1).parent == run_dir / "logs"
    config = next(p for p in run_dir.iterdir() if p.is_file()).read_text()
    paths = [word.strip('"') for line in config.splitlines()
             for word in line.replace("=", " ").replace("ipc://", "").split()
             if word.strip('"').startswith(str(tmp_path))]
    run_time = [p for p in paths if p.endswith((".sock", ".pid"))]
    logs = [p for p in paths if p.endswith(".log")]
    assert run_time and logs, config
    assert all(p.startswith(str(runtime_dir) + "/") for p in run_time), run_time
    assert all(p.startswith(str(run_dir) + "/") for p in logs), logs


@pytest.mark.timeout(60)
def test_a_failing_floor_is_skipped_and_the_run_goes_on(tmp_path: Path) -> None:
    """A spawner that dies at once is recorded as skipped (with its exit
    status), without waiting for the launch deadline; the run still ends 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\necho broken interpreter >&2\nexit 3\n")
    python.chmod(0o755)
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--supervisors", "stemd", "--stemd-bin", str(bin_dir),
         "--nodes", "3", "--trials", "1", "--storm-nodes", "0", "--flood-mb", "0",
         "--warm-nodes", "0", "--idle-secs", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=50, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["floor"] == {}
    skipped = {s["supervisor"]: s["reason"] for s in results["skipped"]}
    assert "floor spawner exited 3" in skipped["floor_1proc"], skipped
    assert "floor spawner exited 3" in skipped["floor_2procs"], skipped
