"""Hand measurements of issue 15 for docs/performance.md (not part of make
bench): the master's CPU and wake-ups idle with and without ``max_rss``, per
metrics scrape and under a real Prometheus scraping every 5 s, and
``stemctl top`` against N nodes.

Usage: ``.venv/bin/python bench/observe_manual.py [N]`` (default 1,000;
needs ``prometheus`` on PATH; ~4 min at 1,000 nodes; prints each figure and
writes ``/tmp/obsperf/result-N.json``). Same method as the benchmark's:
CPU is utime + stime from /proc/PID/stat, wake-ups are voluntary context
switches.
"""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet import Fleet

TCK = os.sysconf("SC_CLK_TCK")
OUT = Path("/tmp/obsperf")


def usage(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TCK
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            return cpu, int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(n: int) -> dict[str, Any]:
    root = OUT / "fleet"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    fleet = Fleet(root)
    mport, wport = free_port(), free_port()
    out: dict[str, Any] = {}

    def window(name: str, secs: float, pid: int) -> None:
        cpu0, wake0 = usage(pid)
        time.sleep(secs)  # measuring what the master does meanwhile
        cpu1, wake1 = usage(pid)
        out[name] = {"secs": secs, "cpu_s": round(cpu1 - cpu0, 3), "wakeups": wake1 - wake0}
        print(name, out[name], flush=True)

    def start(**settings: Any) -> int:
        fleet.write(**settings)
        fleet.start()
        time.sleep(5)  # settle
        pid = fleet.master_pid()
        assert pid is not None
        return pid

    url = f"http://127.0.0.1:{mport}/metrics"
    try:
        pid = start(nodes=str(n), command="/bin/sleep 100000", start_secs="0.5",
                    metrics_listen=f"127.0.0.1:{mport}")
        window("idle_no_max_rss_metrics_on", 20, pid)
        walls = []
        for _ in range(5):
            began = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                body = r.read()
            walls.append(time.perf_counter() - began)
        out["scrape_wall_ms"] = round(statistics.median(walls) * 1000, 1)
        out["scrape_bytes"] = len(body)
        cpu0, _ = usage(pid)
        for _ in range(5):
            with urllib.request.urlopen(url) as r:
                r.read()
        out["scrape_master_cpu_ms"] = round((usage(pid)[0] - cpu0) / 5 * 1000, 1)
        print("scrape", out["scrape_wall_ms"], "ms wall,", out["scrape_master_cpu_ms"],
              "ms master CPU,", len(body), "bytes", flush=True)
        prom_dir = root / "prom"
        prom_dir.mkdir()
        (prom_dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: stemd\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={prom_dir}/prometheus.yml",
             f"--storage.tsdb.path={prom_dir}/data", f"--web.listen-address=127.0.0.1:{wport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=prom_dir)
        try:
            time.sleep(8)  # Prometheus up and scraping
            window("prometheus_5s_60s", 60, pid)
        finally:
            prom.terminate()
            prom.wait()
        cpu0, _ = usage(pid)
        began = time.perf_counter()
        fleet.ctl("top", "-n", "10", "-i", "1")
        out["top_10_refreshes"] = {
            "wall_s": round(time.perf_counter() - began, 2),
            "master_cpu_ms_per_refresh": round((usage(pid)[0] - cpu0) / 10 * 1000, 1)}
        print("top", out["top_10_refreshes"], flush=True)
        for args, key in ((("status", "--json", "--stats"), "status_stats_ms"),
                          (("status", "--json"), "status_ms")):
            walls = []
            for _ in range(7):
                began = time.perf_counter()
                fleet.ctl(*args)
                walls.append(time.perf_counter() - began)
            out[key] = round(statistics.median(walls) * 1000, 1)
            print(key, out[key], flush=True)
        from rich.console import Console

        from stemd import ctl_top

        nodes = json.loads(fleet.ctl("status", "--json", "--stats").stdout)
        view = ctl_top.View("cpu")
        console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True)
        began = time.perf_counter()
        for _ in range(10):
            console.print(ctl_top.render(view, nodes, 24))
        out["top_frame_render_ms"] = round((time.perf_counter() - began) / 10 * 1000, 1)
        print("frame render", out["top_frame_render_ms"], flush=True)
        fleet.ctl("shutdown", timeout=300)
        window("idle_max_rss_5s", 20, start(metrics_listen=None, max_rss="1G"))
        fleet.ctl("shutdown", timeout=300)
        window("idle_no_limit", 20, start(max_rss=None))
        fleet.ctl("shutdown", timeout=300)
    finally:
        fleet.cleanup()
        (OUT / f"result-{n}.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
