"""Per-node usage (issue 15 §1): the whole process tree, current CPU%."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from tests.fleet import Fleet, wait_until

MB = 1024 * 1024

PREFORK = textwrap.dedent("""\
    import os, signal, time
    # a prefork master: small itself, two pool children of ~10 MB each
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    for _ in range(2):
        if os.fork() == 0:
            block = bytearray(10 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1  # touch every page: resident, not just reserved
            open(os.environ["READY_DIR"] + "/" + str(os.getpid()), "w").close()
            time.sleep(1000)
            os._exit(0)
    time.sleep(1000)
""")

BURN = textwrap.dedent("""\
    import time
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # busy for 2 s, then idle
        pass
    time.sleep(1000)
""")


def test_prefork_node_reports_its_whole_tree(fleet: Fleet, tmp_path: Path) -> None:
    script = tmp_path / "prefork.py"
    script.write_text(PREFORK)
    ready = tmp_path / "ready"
    ready.mkdir()
    fleet.exports["READY_DIR"] = str(ready)
    fleet.write(nodes="pool", command=f"{sys.executable} {script}")
    fleet.start()
    wait_until(lambda: len(list(ready.iterdir())) == 2, 20, what="two pool children")
    node = json.loads(fleet.ctl("status", "--json", "--stats", "--pss").stdout)[0]
    assert node["children"] == 2, node
    # the main process alone is ~10 MB of interpreter; with its two
    # children that touched 10 MB each, well over 20 MB more
    assert node["rss"] > 2 * 10 * MB + 8 * MB, node
    assert node["pss"] is not None and node["pss"] > 2 * 10 * MB, node
    assert node["cpu_seconds"] is not None
    table = fleet.ctl("status").stdout
    assert "KIDS" in table.splitlines()[0], table
    help_text = fleet.ctl("status", "--help").stdout
    assert "whole process tree" in help_text and "KIDS" in help_text, help_text


def test_cpu_percent_is_current_not_lifetime(fleet: Fleet, tmp_path: Path) -> None:
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    fleet.write(nodes="burn", command=f"{sys.executable} {script}", start_secs=0)
    fleet.start()

    def cpu() -> float:
        return json.loads(fleet.ctl("status", "--json", "--stats").stdout)[0]["cpu_percent"]

    # while it burns, a status sees it busy (first sample: since its start)
    assert cpu() > 30
    # once it idles, the next samples (each at least 1 s after the one
    # before) see ~0 %, where a lifetime average would still show ~50 %
    wait_until(lambda: cpu() < 5, 15, interval=1.1, what="CPU% to fall to the current ~0")
