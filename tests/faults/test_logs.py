"""``stemctl logs`` against logs a node user shaped (issue 11 B1), and the
multi-node follow (issue 12 §5).

The master used to read the tail itself, inside its event loop: a 20 GB
sparse log froze supervision for minutes, a 100 MB one-line log crashed
stemctl past its reply limit. Now the master names the file and stemctl
reads it with a bounded, linear tail. Real master, real nodes, real files.
"""

from __future__ import annotations

import grp
import json
import os
import pty
import queue
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.accounts import ctl_as, nobody, open_fleet, temp_group
from tests.fleet import STEMCTL, Fleet, pid_alive, wait_until

__all__ = ["open_fleet", "temp_group"]



def read_pty(master: int) -> bytes | None:
    """What the terminal's master end has within a second (b"" if nothing);
    None once the other end is closed (EOF, or EIO on Linux)."""
    if not select.select([master], [], [], 1)[0]:
        return b""
    try:
        chunk = os.read(master, 65536)
    except OSError:  # EIO: the other end is closed
        return None
    return chunk or None


def quick_status(fleet: Fleet) -> dict[str, dict[str, object]] | None:
    """``status`` with a short client timeout: None when the master does not answer."""
    result = fleet.ctl("--timeout", "3", "status", "--json", timeout=30)
    try:
        nodes = json.loads(result.stdout)
    except ValueError:
        return None
    if not isinstance(nodes, list):  # an error object: "the master did not answer in time"
        return None
    return {n["node"]: n for n in nodes}


@pytest.mark.slow
def test_a_20g_sparse_log_neither_stalls_the_master_nor_stemctl(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", log_level="DEBUG")
    fleet.start()
    nodes = fleet.wait_state("RUNNING")
    log = fleet.log_dir / "alpha.log"
    subprocess.run(["truncate", "-s", "20G", str(log)], check=True, timeout=30)

    t0 = time.monotonic()
    logs = subprocess.Popen([STEMCTL, "--config", str(fleet.config), "logs", "alpha"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=fleet.env(), stdin=subprocess.DEVNULL)
    try:
        # the request has reached the master (it logs each command before running it)
        wait_until(lambda: "control: uid 0: logs" in fleet.master_log(), 30,
                   what="the master to receive the logs request")
        # meanwhile a node dies: it is respawned, and status answers
        os.kill(nodes["beta"]["pid"], signal.SIGKILL)

        def beta_back() -> bool:
            status = quick_status(fleet)
            return bool(status and status["beta"]["state"] == "RUNNING"
                        and status["beta"]["pid"] != nodes["beta"]["pid"])
        wait_until(beta_back, 30, interval=0.2, what="beta respawned and status answering")
        out, err = logs.communicate(timeout=60)
    finally:
        if logs.poll() is None:
            logs.kill()
            logs.wait()
    assert time.monotonic() - t0 < 60
    assert logs.returncode == 0, err
    assert b"Traceback" not in err
    # 20 GB of NULs with no newline: one line, read only 8 MiB back, shown cut and marked
    assert out.count(b"\n") == 1
    assert out.startswith(b"[...] ") and b"more bytes]" in out
    assert len(out) < 70_000


@pytest.mark.slow
def test_a_100mb_one_line_log_gives_a_truncated_line_and_no_traceback(fleet: Fleet) -> None:
    fleet.write(nodes="alpha")
    fleet.start()
    fleet.wait_state("RUNNING")
    log = fleet.log_dir / "alpha.log"
    with log.open("ab") as f:
        f.write(b"first line\n")
        chunk = b"y" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
        f.write(b"\n")
    t0 = time.monotonic()
    result = subprocess.run([STEMCTL, "--config", str(fleet.config), "logs", "alpha", "-n", "5"],
                            capture_output=True, timeout=60, env=fleet.env(),
                            stdin=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 30
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, [line[:80] for line in lines]
    assert lines[0].startswith(b"[...] yyyy") and lines[0].endswith(b"more bytes]")
    assert len(lines[0]) < 70_000
    # --json: the same, as data
    result = subprocess.run([STEMCTL, "--config", str(fleet.config), "logs", "alpha", "--json"],
                            capture_output=True, timeout=60, env=fleet.env(),
                            stdin=subprocess.DEVNULL)
    data = json.loads(result.stdout)
    assert len(data["lines"]) == 1 and data["lines"][0].endswith("more bytes]")
    assert data["size"] == log.stat().st_size


def test_a_fifo_or_symlink_for_a_log_is_refused_not_read(fleet: Fleet) -> None:
    fleet.write(nodes="alpha")
    fleet.start()
    fleet.wait_state("RUNNING")
    log = fleet.log_dir / "alpha.log"
    log.unlink()
    os.mkfifo(log)  # a node user can do this in its log directory
    result = fleet.ctl("logs", "alpha", timeout=30)
    assert result.returncode == 1 and "not a regular file" in result.stderr
    log.unlink()
    log.symlink_to("/etc/shadow")
    result = fleet.ctl("logs", "alpha", timeout=30)
    assert result.returncode == 1 and "symlink" in result.stderr
    assert "root:" not in result.stdout


def test_an_operator_who_cannot_read_the_log_is_told_why(open_fleet: Fleet,
                                                         temp_group: grp.struct_group) -> None:
    fleet, ops = open_fleet, temp_group
    user = nobody()
    fleet.write(nodes="alpha", socket_group=ops.gr_name)
    fleet.start()
    fleet.wait_state("RUNNING")
    fleet.run_dir.chmod(0o755)
    log = fleet.log_dir / "alpha.log"
    log.write_text("secret\n")
    os.chmod(log, 0o640)
    log_group = grp.getgrgid(log.stat().st_gid).gr_name
    result = ctl_as(user, "--socket", str(fleet.run_dir / "stemd.sock"), "logs", "alpha",
                    extra_groups=[ops.gr_gid])
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"cannot read {log}: Permission denied" in result.stderr
    assert f"ask for membership of group {log_group!r}" in result.stderr
    assert "or run as root" in result.stderr
    assert "secret" not in result.stdout


# ------------------------------------------------------------------ follow


class Reader:
    """A process's output, line by line, read by a thread; waits have deadlines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[bytes] = []
        self._queue: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"last lines: {self.lines[-5:]}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.lines.append(line)
            if predicate(line):
                return line


def counter_node(root: Path) -> str:
    """A node that prints ``NAME N`` with N counting up, ten times a second."""
    script = root / "counter.sh"
    script.write_text('#!/bin/sh\ni=0\nwhile :; do i=$((i+1)); echo "$STEMD_NODE $i"; '
                      "sleep 0.1; done\n")
    script.chmod(0o755)
    return f"/bin/sh {script}"


def follow_counters(fleet: Fleet, nodes: str) -> tuple[subprocess.Popen[bytes], Reader]:
    """A fleet of counter nodes, RUNNING, and `stemctl logs -f -n 1` of all
    of them, read line by line."""
    fleet.write(nodes=nodes, command=counter_node(fleet.root))
    fleet.start()
    fleet.wait_state("RUNNING")
    proc = subprocess.Popen([STEMCTL, "--config", str(fleet.config), "logs", "-f", "-n", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=fleet.env(),
                            stdin=subprocess.DEVNULL)
    return proc, Reader(proc)


def interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C a following stemctl: it must end cleanly (exit 0, no traceback)."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def number(line: bytes) -> int:
    return int(line.rstrip().rsplit(b" ", 1)[1])


@pytest.mark.slow
def test_follow_every_node_interleaved_across_copytruncate_and_rename(fleet: Fleet) -> None:
    proc, out = follow_counters(fleet, "alpha beta")
    try:
        # both nodes, each line with its node's prefix, padded, uncoloured in a pipe
        last_alpha = number(out.wait_for(lambda ln: ln.startswith(b"alpha | alpha "), 20,
                                         "a line of alpha"))
        out.wait_for(lambda ln: ln.startswith(b"beta  | beta "), 20, "a line of beta")
        assert all(b"\x1b[" not in ln for ln in out.lines)

        # logrotate's copytruncate of alpha: copy, then truncate in place
        alpha = fleet.log_dir / "alpha.log"
        shutil.copyfile(alpha, fleet.log_dir / "alpha.log-1")
        os.truncate(alpha, 0)
        last_alpha = number(out.wait_for(lambda ln: ln.startswith(b"alpha | "), 20,
                                         "alpha after the truncation"))
        # the counter keeps rising: what came after the truncation is shown
        out.wait_for(lambda ln: ln.startswith(b"alpha | ") and number(ln) > last_alpha + 5,
                     20, "alpha's new lines after copytruncate")

        # rotation by rename of beta: a new file at the path is followed from its start
        beta = fleet.log_dir / "beta.log"
        os.rename(beta, fleet.log_dir / "beta.log-1")
        beta.write_bytes(b"beta reopened 0\n")
        out.wait_for(lambda ln: ln == b"beta  | beta reopened 0\n", 20,
                     "the line written into beta's new file")
        # and alpha is still followed, in the same loop
        seen = number(out.lines[-1]) if out.lines[-1].startswith(b"alpha") else 0
        out.wait_for(lambda ln: ln.startswith(b"alpha | ") and number(ln) > seen, 20,
                     "alpha after beta's rotation")
        assert proc.poll() is None
        assert all(ln.startswith((b"alpha | ", b"beta  | ")) for ln in out.lines)
    finally:
        interrupt(proc)


def test_follow_colours_each_node_on_a_terminal(fleet: Fleet) -> None:
    fleet.write(nodes="alpha beta", command=counter_node(fleet.root))
    fleet.start()
    fleet.wait_state("RUNNING")
    master, slave = pty.openpty()
    proc = subprocess.Popen([STEMCTL, "--config", str(fleet.config), "logs", "-n", "1"],
                            stdout=slave, stderr=subprocess.PIPE, env=fleet.env(),
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    data = b""
    try:
        deadline = time.monotonic() + 30
        while data.count(b"\n") < 2 and time.monotonic() < deadline:
            chunk = read_pty(master)
            if chunk is None:
                break
            data += chunk
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if pid_alive(proc.pid):
            proc.kill()
    assert proc.returncode == 0
    lines = data.replace(b"\r\n", b"\n").splitlines()
    assert len(lines) == 2, data
    codes = {ln.split(b"m", 1)[0] for ln in lines}
    assert all(ln.startswith(b"\x1b[") for ln in lines), lines
    assert len(codes) == 2  # a colour per node


# ------------------------------------------------- control characters, terminal

#: what node alpha prints: a line that, sent as it is to a terminal, erases
#: its own ``alpha | `` prefix and shows beta's in beta's colour, sets the
#: window title (OSC 0), and carries a C1 CSI (UTF-8), a byte that is not
#: UTF-8, and a CRLF ending
FORGED = (b"ok\r\x1b[2K\x1b[33mbeta \x1b[0m | run this\x1b]0;owned\x07 \xc2\x9b \xff\r\n")
#: the same line as stemctl must show it on a terminal
FORGED_SHOWN = (b"ok\\x0d\\x1b[2K\\x1b[33mbeta \\x1b[0m | run this\\x1b]0;owned\\x07 "
                b"\\x9b \\xff\n")


def forging_fleet(fleet: Fleet) -> None:
    """alpha prints :data:`FORGED`, beta an ordinary line; both RUNNING and written."""
    octal = "".join(f"\\{b:03o}" for b in FORGED)
    fleet.write(nodes="alpha beta", command="/bin/sh " + fleet.script("forge.sh", (
        '#!/bin/sh\nif [ "$STEMD_NODE" = alpha ]; then printf \'' + octal + "'\n"
        "else echo 'beta ready'; fi\nexec sleep 1000\n")))
    fleet.start()
    fleet.wait_state("RUNNING")
    for name, text in (("alpha", FORGED), ("beta", b"beta ready\n")):
        log = fleet.log_dir / f"{name}.log"
        wait_until(lambda log=log, text=text: log.exists() and log.read_bytes() == text, 10,
                   what=f"{name}'s line in its log")


def on_terminal(fleet: Fleet, *args: str, until: Callable[[bytes], bool] | None = None,
                then: Callable[[], None] | None = None) -> bytes:
    """What ``stemctl ARGS`` writes to a pseudo-terminal, byte for byte (raw
    mode: no LF to CRLF). With ``until``: once what it wrote satisfies it,
    ``then()`` runs, and it is read again until ``until`` holds anew; then
    Ctrl-C (a follow)."""
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    env = fleet.env() | {"TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([STEMCTL, "--config", str(fleet.config), *args], stdout=slave,
                            stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    os.close(slave)
    data = b""
    since = 0  # what until() looks at: data[since:]
    actions = [then] if then is not None else []
    done = until is None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if until is not None and until(data[since:]):
                if not actions:
                    done = True
                    break
                actions.pop()()
                since = len(data)
            chunk = read_pty(master)
            if chunk is None:
                break
            data += chunk
        if until is not None:
            assert done, f"timed out; stemctl wrote {data!r}"
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if pid_alive(proc.pid):
            proc.kill()
            proc.wait()
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    return data


def test_a_node_cannot_send_control_sequences_to_the_operators_terminal(fleet: Fleet) -> None:
    """Regression: `stemctl logs` wrote a node's log to the terminal as it
    was. Node alpha's line erased its prefix and read as beta's, in beta's
    colour, and set the terminal's title. On a terminal, control characters
    are now shown escaped; piped, the bytes stay exactly the node's."""
    from stemd.logtail import prefixes

    forging_fleet(fleet)
    alpha, beta = prefixes(["alpha", "beta"], True)
    shown = on_terminal(fleet, "logs", "-n", "5")
    assert shown == alpha + FORGED_SHOWN + beta + b"beta ready\n"
    assert shown.count(b"\x1b") == 4  # the two coloured prefixes, nothing else

    # piped: byte-exact, as tail(1) is, for the scripts that read it
    piped = subprocess.run([STEMCTL, "--config", str(fleet.config), "logs", "-n", "5"],
                           capture_output=True, timeout=30, env=fleet.env(),
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == b"alpha | " + FORGED + b"beta  | beta ready\n"
    piped = subprocess.run([STEMCTL, "--config", str(fleet.config), "logs", "alpha"],
                           capture_output=True, timeout=30, env=fleet.env(),
                           stdin=subprocess.DEVNULL)
    assert piped.stdout == (fleet.log_dir / "alpha.log").read_bytes()
    # --json: JSON escapes every control itself ("\u001b"), on a terminal too
    data = json.loads(fleet.ctl("logs", "alpha", "--json").stdout)
    assert data["lines"] == [FORGED[:-1].decode("utf-8", "replace")]
    assert b"\x1b" not in on_terminal(fleet, "logs", "alpha", "--json")

    # one node, followed: whole lines there too, whatever the node appends
    def append() -> None:  # an OSC 52 clipboard write
        with (fleet.log_dir / "alpha.log").open("ab") as log:
            log.write(b"\x1b]52;c;ZXZpbA==\x07later\n")

    shown = on_terminal(fleet, "logs", "alpha", "-f", "-n", "1",
                        until=lambda d: d.endswith(b"\n"), then=append)
    assert shown == FORGED_SHOWN + b"\\x1b]52;c;ZXZpbA==\\x07later\n"


def test_dev_null_as_a_log_discards_output_and_the_node_runs(fleet: Fleet) -> None:
    """Regression: STEMD_LOG_FILE=/dev/null (and what `stemctl import`
    writes for supervisord's stdout_logfile=NONE) was refused as "not a
    plain file": every node backed off to FATAL while --check said OK."""
    fleet.write(nodes="alpha beta", log_file="/dev/null",
                command="/bin/sh -c 'echo hello; exec sleep 1000'")
    checked = fleet.stemd("--check")
    assert checked.returncode == 0, checked.stderr
    assert "/dev (node logs)" not in checked.stdout + checked.stderr
    fleet.start()
    nodes = fleet.wait_state("RUNNING")
    assert set(nodes) == {"alpha", "beta"}
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)  # still the device


def test_check_names_a_log_path_that_is_not_a_plain_file_and_start_goes_on(
        fleet: Fleet) -> None:
    """A FIFO planted where a node's log goes: --check says which node and
    key (the node cannot start); the master still starts the rest, since a
    node user may be the one who planted it."""
    fleet.write(nodes="alpha beta")
    fleet.log_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fleet.log_dir / "beta.log")
    checked = fleet.stemd("--check")
    assert checked.returncode != 0
    out = checked.stdout + checked.stderr
    assert f"the log file {fleet.log_dir / 'beta.log'} of node beta is a special file" in out
    assert "STEMD_LOG_FILE" in out
    assert "node alpha" not in out
    said = fleet.start_failing()  # the master stays and runs the rest
    assert "beta" in said and "alpha" not in said
    assert fleet.status("alpha")["alpha"]["state"] == "RUNNING"
    assert "not a plain file" in (fleet.status("beta")["beta"]["last_error"] or "")
    fleet.ctl("shutdown")


def test_follow_of_every_node_picks_up_nodes_a_reload_adds(fleet: Fleet) -> None:
    """Regression: `stemctl logs -f` (no name) followed the nodes that
    existed when it started; a deploy that reloads in a new node showed
    nothing of it."""
    proc, out = follow_counters(fleet, "alpha")
    try:
        out.wait_for(lambda ln: b"alpha " in ln, 20, "a line of alpha")
        fleet.write(nodes="alpha gamma", command=counter_node(fleet.root))
        assert fleet.ctl("reload").returncode == 0
        out.wait_for(lambda ln: ln.startswith(b"gamma") and b"| gamma " in ln, 20,
                     "a line of gamma, added by the reload")
        assert proc.poll() is None
    finally:
        interrupt(proc)
