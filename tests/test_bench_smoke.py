"""The benchmark's smoke mode, for stemd only (issue 6).

The full benchmark is slow and noisy and is not part of ``make test``; this
runs ``bench/run.py --quick`` (10 nodes, two short trials, a 3 s storm, a
20 MiB flood) against the real ``stemd``/``stemctl`` and checks that the
harness works end to end and the figures are sane — not that they meet the
targets, which only the full run on 100 and 1,000 nodes can tell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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
    return {
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
