"""Nothing a node user can write may steer a root master (issue 11 §1).

The master runs as root (these tests need root); the nodes run as
``nobody``, who is assumed compromised. Each test plants what ``nobody``
could plant — a line in a writable config file, a lock in a shared run
directory, a FIFO where the master log goes — and checks that the master
refuses it, or is not moved by it. See docs/architecture.md, "Threat model".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from stem_core.envfile import quote_env_value
from tests.faults.accounts import nobody as _nobody
from tests.fleet import Fleet, pid_alive, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nodes run as nobody)")


def as_nobody(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    nobody = _nobody()
    return subprocess.run(list(argv), user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                          cwd="/", capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def masters_of(fleet: Fleet) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(fleet.config) in cmdline and any(a.endswith("stemd") for a in cmdline[:2]):
            found.append(proc)
    return found


@pytest.fixture
def open_fleet() -> Iterator[Fleet]:
    """A fleet in a directory ``nobody`` can traverse (pytest's base temp dir
    is 0700, which would stop nobody before anything stemd does)."""
    root = Path(tempfile.mkdtemp(prefix="stemd-trust-", dir="/tmp"))
    root.chmod(0o755)
    fleet = Fleet(root)
    yield fleet
    fleet.cleanup()
    for proc in masters_of(fleet):  # a master hung in start-up wrote no PID file
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(root, ignore_errors=True)


def nobody_fleet(fleet: Fleet, **settings: object) -> Fleet:
    """Nodes as nobody; the master (root) creates its directories."""
    settings = {"nodes": "alpha", "user": "nobody", "force_root": None, **settings}
    fleet.write(**settings)
    return fleet


# ------------------------------------------------------------ config file


def test_a_world_writable_config_cannot_make_a_reload_run_root_commands(
        open_fleet: Fleet) -> None:
    """Catalogue #13: chmod 666 /etc/default/stem, nobody appends
    STEMD_USER=root, STEMD_FORCE_ROOT=1 and a command, stemctl reload."""
    fleet = nobody_fleet(open_fleet)
    fleet.start()
    alpha = fleet.wait_state("RUNNING")["alpha"]
    fleet.config.chmod(0o666)
    proof = fleet.root / "uid"
    evil = ("STEMD_USER=root\nSTEMD_FORCE_ROOT=1\nSTEMD_COMMAND="
            + quote_env_value(f"/bin/sh -c 'id -u > {proof}; exec /bin/sleep 1000'") + "\n")
    wrote = as_nobody("/bin/sh", "-c", 'printf "%s" "$1" >> "$2"', "sh", evil, str(fleet.config))
    assert wrote.returncode == 0, wrote.stderr

    result = fleet.ctl("reload")  # returns once changed nodes run (or were refused)
    assert not proof.exists(), f"a node ran as uid {proof.read_text().strip()}"
    assert result.returncode != 0
    assert str(fleet.config) in result.stderr and "chmod go-w" in result.stderr, result.stderr
    now = fleet.status()["alpha"]
    assert now["state"] == "RUNNING" and now["pid"] == alpha["pid"]
    assert psutil.Process(now["pid"]).uids().real == _nobody().pw_uid


def _world_writable(fleet: Fleet) -> str:
    fleet.config.chmod(0o666)
    return "chmod go-w"


def _group_writable(fleet: Fleet) -> str:
    fleet.config.chmod(0o620)
    return "chmod go-w"


def _owned_by_nobody(fleet: Fleet) -> str:
    os.chown(fleet.config, _nobody().pw_uid, -1)
    return "chown root"


def _symlink_to_a_file_nobody_owns(fleet: Fleet) -> str:
    real = fleet.root / "real.env"
    fleet.config.rename(real)
    os.chown(real, _nobody().pw_uid, -1)
    fleet.config.symlink_to(real)
    return f"chown root {real}"


def _in_a_directory_nobody_owns(fleet: Fleet) -> str:
    conf_dir = fleet.root / "etc"
    conf_dir.mkdir()
    real = conf_dir / "stem.env"
    fleet.config.rename(real)
    os.chown(conf_dir, _nobody().pw_uid, -1)
    fleet.config.symlink_to(real)
    return f"chown root {conf_dir}"


def _in_a_world_writable_directory(fleet: Fleet) -> str:
    conf_dir = fleet.root / "etc"
    conf_dir.mkdir()
    conf_dir.chmod(0o777)
    real = conf_dir / "stem.env"
    fleet.config.rename(real)
    fleet.config.symlink_to(real)
    return f"chmod go-w {conf_dir}"


UNTRUSTED_CONFIGS = [_world_writable, _group_writable, _owned_by_nobody,
                     _symlink_to_a_file_nobody_owns, _in_a_directory_nobody_owns,
                     _in_a_world_writable_directory]


@pytest.mark.parametrize("setup", UNTRUSTED_CONFIGS)
def test_check_refuses_a_config_file_others_can_write(open_fleet: Fleet, setup) -> None:  # type: ignore[no-untyped-def]
    fleet = nobody_fleet(open_fleet)
    fix = setup(fleet)
    result = fleet.stemd("--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(fleet.config) in result.stderr and fix in result.stderr, result.stderr


@pytest.mark.parametrize("setup", UNTRUSTED_CONFIGS)
def test_start_refuses_a_config_file_others_can_write(open_fleet: Fleet, setup) -> None:  # type: ignore[no-untyped-def]
    fleet = nobody_fleet(open_fleet)
    fix = setup(fleet)
    result = fleet.stemd()
    assert result.returncode == 1, result.stdout + result.stderr
    assert fix in result.stderr, result.stderr
    assert fleet.master_pid() is None and not masters_of(fleet)
    assert fleet.node_pids() == []


def test_a_sticky_tmp_style_directory_is_fine_for_a_root_owned_config(
        open_fleet: Fleet) -> None:
    """/tmp (1777, root) on the path is accepted: the sticky bit keeps others
    from renaming or removing root's entries. pytest's own temp dirs live there."""
    fleet = nobody_fleet(open_fleet)
    sticky = fleet.root / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    real = sticky / "stem.env"
    fleet.config.rename(real)
    fleet.config.symlink_to(real)
    result = fleet.stemd("--check")
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------- run directory


def test_a_sticky_run_directory_cannot_let_nobody_hold_the_master_lock(
        open_fleet: Fleet) -> None:
    """#9: a 1777 run dir; nobody pre-creates stemd.pid, writes 1 and holds
    a lock on it. Today root's stemd says "already running (pid 1)"."""
    fleet = nobody_fleet(open_fleet)
    fleet.run_dir.mkdir()
    fleet.run_dir.chmod(0o1777)
    pid_file = fleet.run_dir / "stemd.pid"
    nobody = _nobody()
    holder = subprocess.Popen(
        ["/bin/sh", "-c",
         'echo 1 > "$1" && exec flock "$1" /bin/sh -c "echo locked; exec sleep 1000"',
         "sh", str(pid_file)],
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/",
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for args in (("--check",), ()):
            result = fleet.stemd(*args)
            assert result.returncode == 1, result.stderr
            assert "already running" not in result.stderr
            assert str(fleet.run_dir) in result.stderr and "writable" in result.stderr, \
                result.stderr
            assert "chmod 0755" in result.stderr, result.stderr
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not masters_of(fleet)


def test_a_run_directory_owned_by_the_node_user_is_refused(open_fleet: Fleet) -> None:
    fleet = nobody_fleet(open_fleet)
    fleet.run_dir.mkdir()
    os.chown(fleet.run_dir, _nobody().pw_uid, -1)
    for args in (("--check",), ()):
        result = fleet.stemd(*args)
        assert result.returncode == 1, result.stderr
        assert f"chown root {fleet.run_dir}" in result.stderr, result.stderr
    assert not masters_of(fleet) and fleet.node_pids() == []


# --------------------------------------------------------------- overlaps


@pytest.mark.parametrize(("key", "value", "clash"), [
    ("STEMD_LOG_FILE", "{run}/stemd.pid", "master PID file"),
    ("STEMD_LOG_FILE", "{log}/stemd.log", "master log"),
    ("STEMD_LOG_FILE", "{run}/stemd.sock", "control socket"),
    ("STEMD_LOG_FILE", "{run}/stemd.state", "state file"),
    ("STEMD_PID_FILE", "{run}/stemd.state", "state file"),
    ("STEMD_PID_FILE", "{log}/stemd.log", "master log"),
    ("STEMD_LOG_FILE", "{run}/%n.pid", "PID file of node alpha"),
    ("STEMD_LOG_FILE", "{root}/stem.env", "configuration file"),
])
def test_a_node_file_may_not_be_a_master_file(open_fleet: Fleet, key: str, value: str,
                                              clash: str) -> None:
    """B8: STEMD_LOG_FILE=RUN/stemd.pid passed --check, and the master then
    chowned its own PID file to the node user."""
    fleet = nobody_fleet(open_fleet)
    fleet.write(**{key: value.format(run=fleet.run_dir, log=fleet.log_dir, root=fleet.root)})
    for args in (("--check",), ()):
        result = fleet.stemd(*args)
        assert result.returncode == 1, result.stderr
        assert key in result.stderr and clash in result.stderr, result.stderr
    assert not masters_of(fleet) and fleet.node_pids() == []


def test_nodes_may_share_a_log_file(open_fleet: Fleet) -> None:
    """Appending (O_APPEND) from several nodes to one log is legitimate."""
    fleet = nobody_fleet(open_fleet, nodes="alpha beta", log_file=f"{open_fleet.log_dir}/all.log")
    result = fleet.stemd("--check")
    assert result.returncode == 0, result.stderr


def test_check_reports_a_node_pid_file_that_is_a_directory(open_fleet: Fleet) -> None:
    """#8: the node ran with no PID file, the error only in the master log."""
    fleet = nobody_fleet(open_fleet)
    (fleet.run_dir / "alpha.pid").mkdir(parents=True)
    result = fleet.stemd("--check")
    assert result.returncode == 1, result.stderr
    assert f"{fleet.run_dir}/alpha.pid" in result.stderr and "directory" in result.stderr


# ------------------------------------------------------------- master log


def _master_log_handle(pid: int) -> Path:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if "stemd.log" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return Path(f"/proc/{pid}/fd/{fd}")
    raise AssertionError("the master holds no log file")


def test_the_node_user_cannot_write_where_the_master_log_is(open_fleet: Fleet) -> None:
    """B2: STEMD_CREATE_DIRS made the log directory the node user's, and the
    master log lives there by default: nobody could mkfifo it."""
    fleet = nobody_fleet(open_fleet)
    fleet.start()
    fleet.wait_state("RUNNING")
    assert (fleet.log_dir / "alpha.log").stat().st_uid == _nobody().pw_uid  # its own log: yes
    planted = as_nobody("mkfifo", str(fleet.log_dir / "x.fifo"))
    assert planted.returncode != 0
    removed = as_nobody("rm", "-f", str(fleet.log_dir / "stemd.log"))
    assert removed.returncode != 0 and (fleet.log_dir / "stemd.log").exists()


def test_a_fifo_at_the_master_log_does_not_stall_a_reopen(open_fleet: Fleet) -> None:
    """B2: a FIFO at the master log and SIGUSR1 (logrotate): the master
    blocked in open(); status, respawns and shutdown hung."""
    fleet = nobody_fleet(open_fleet)
    fleet.start()
    alpha = fleet.wait_state("RUNNING")["alpha"]
    master = fleet.master_pid()
    assert master
    log = fleet.log_dir / "stemd.log"
    log.unlink()
    os.mkfifo(log)
    os.kill(master, signal.SIGUSR1)
    result = fleet.ctl("status", timeout=10)
    assert result.returncode == 0, result.stderr
    os.kill(alpha["pid"], signal.SIGKILL)
    wait_until(lambda: fleet.status()["alpha"]["pid"] not in (None, alpha["pid"]), 10,
               what="alpha respawned")
    handle = _master_log_handle(master)
    assert "(deleted)" in os.readlink(handle)  # still the old file
    text = handle.read_text()
    assert f"cannot reopen the log file {log}" in text and "FIFO" in text, text[-2000:]
    assert stat.S_ISFIFO(os.lstat(log).st_mode)  # left alone


def test_a_fifo_at_the_master_log_is_a_clear_start_up_error(open_fleet: Fleet) -> None:
    """B2: today the daemon blocks in open() and the launcher waits forever."""
    fleet = nobody_fleet(open_fleet)
    fleet.log_dir.mkdir()
    os.mkfifo(fleet.log_dir / "stemd.log")
    try:
        result = fleet.stemd(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("stemd hung on a FIFO at its log file")
    assert result.returncode == 1
    assert f"{fleet.log_dir}/stemd.log" in result.stderr and "FIFO" in result.stderr, \
        result.stderr
    wait_until(lambda: not masters_of(fleet), 10, what="no master left")
    assert fleet.node_pids() == []


def test_a_master_log_directory_the_node_user_owns_is_refused(open_fleet: Fleet) -> None:
    fleet = nobody_fleet(open_fleet)
    fleet.log_dir.mkdir()
    os.chown(fleet.log_dir, _nobody().pw_uid, -1)
    for args in (("--check",), ()):
        result = fleet.stemd(*args)
        assert result.returncode == 1, result.stderr
        assert str(fleet.log_dir) in result.stderr and "master log" in result.stderr, \
            result.stderr
    assert not masters_of(fleet) and fleet.node_pids() == []


def test_a_hard_link_at_the_master_log_is_not_appended_to(open_fleet: Fleet) -> None:
    fleet = nobody_fleet(open_fleet)
    fleet.log_dir.mkdir()
    victim = fleet.root / "victim"
    victim.write_text("precious\n")
    os.link(victim, fleet.log_dir / "stemd.log")
    result = fleet.stemd()
    assert result.returncode == 1 and "link" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------ control socket


def _connect_as_nobody(path: Path) -> str:
    """Try to connect to ``path`` as nobody in a forked child; "ok" or the error."""
    nobody = _nobody()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try, report, exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
            os.write(w, b"ok")
        except OSError as exc:
            os.write(w, type(exc).__name__.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_a_node_cannot_connect_to_the_control_socket(open_fleet: Fleet) -> None:
    """SPEC §3: the socket is 0600 (no STEMD_SOCKET_GROUP): a compromised
    worker cannot control its own fleet."""
    fleet = nobody_fleet(open_fleet)
    fleet.start()
    fleet.wait_state("RUNNING")
    sock = fleet.run_dir / "stemd.sock"
    assert stat.S_IMODE(sock.stat().st_mode) & 0o007 == 0
    assert _connect_as_nobody(sock) == "PermissionError"
    assert pid_alive(fleet.status()["alpha"]["pid"])


def test_a_node_cannot_connect_even_with_its_group_named(open_fleet: Fleet) -> None:
    """B12: with STEMD_GROUP set, the socket was 0660 in the nodes' own
    group, so a node could connect. STEMD_SOCKET_GROUP is a group of its own."""
    import grp

    fleet = nobody_fleet(open_fleet, group=grp.getgrgid(_nobody().pw_gid).gr_name)
    fleet.start()
    fleet.wait_state("RUNNING")
    assert _connect_as_nobody(fleet.run_dir / "stemd.sock") == "PermissionError"


def test_a_node_log_path_naming_a_file_of_the_masters_user_is_not_given_away(
        open_fleet: Fleet) -> None:
    """A typo in STEMD_LOG_FILE naming an existing root-owned file must not
    hand that file to the node user (only an empty, new log is chowned)."""
    fleet = open_fleet
    precious = fleet.root / "precious"
    precious.write_text("root's data\n")
    nobody_fleet(fleet, log_file=str(precious))
    fleet.start()
    assert precious.stat().st_uid == 0
    assert precious.read_text().startswith("root's data\n")


# -------------------------------------------------------------- impostors


def impostor_env(fleet: Fleet, of: str, claims: str) -> dict[str, str]:
    """Node ``of``'s own environment (its user can read it), claiming to be ``claims``."""
    real = psutil.Process(fleet.status()[of]["pid"]).environ()
    return {**real, "STEMD_NODE": claims}


def test_an_orphan_claiming_to_be_a_node_is_not_adopted_after_a_clean_shutdown(
        open_fleet: Fleet) -> None:
    """A node double-forked a session leader with another node's STEMD_* variables. After
    `stemctl shutdown` and `stemd` (a deploy), the new master adopted it as that node, wrote a
    root PID file for it and supervised it: the real node never started again."""
    fleet = nobody_fleet(open_fleet, nodes="alpha beta")
    fleet.start()
    fleet.wait_state("RUNNING")
    marker = f"{7000000 + os.getpid() % 100000}"
    subprocess.run(["setsid", "-f", "/bin/sleep", marker], user=_nobody().pw_uid,
                   group=_nobody().pw_gid, extra_groups=[], cwd="/", check=True, timeout=30,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=impostor_env(fleet, "alpha", "beta"))
    impostor = wait_until(lambda: next((p.pid for p in psutil.process_iter(["cmdline"])
                                        if p.info["cmdline"] == ["/bin/sleep", marker]), None),
                          5, what="the impostor")
    try:
        assert fleet.ctl("shutdown").returncode == 0
        assert pid_alive(impostor) and psutil.Process(impostor).ppid() == 1
        fleet.start()
        beta = fleet.wait_state("RUNNING")["beta"]
        assert beta["pid"] != impostor and not beta["adopted"]
        assert (fleet.run_dir / "beta.pid").read_text().strip() == str(beta["pid"])
        assert pid_alive(impostor), "the master signalled a process that is not its own"
        assert f"pid {impostor} (uid {_nobody().pw_uid}) says it is this node" \
            in fleet.master_log()
    finally:
        os.kill(impostor, signal.SIGKILL)


def test_a_node_users_process_named_stemd_does_not_keep_the_master_from_starting(
        open_fleet: Fleet) -> None:
    """A node ran a process named `stemd` with a child claiming to be node beta: every later
    `stemd` refused to start ("beta already runs under another stemd"), so the service could
    not be started until the operator found the node's processes."""
    fleet = nobody_fleet(open_fleet, nodes="alpha beta")
    fleet.start()
    fleet.wait_state("RUNNING")
    marker = f"{7100000 + os.getpid() % 100000}"
    fake = subprocess.Popen(
        ["bash", "-c", f'exec -a stemd bash -c "setsid /bin/sleep {marker} & wait"'],
        user=_nobody().pw_uid, group=_nobody().pw_gid, extra_groups=[], cwd="/",
        env=impostor_env(fleet, "alpha", "beta"), start_new_session=True)
    try:
        wait_until(lambda: any(p.info["cmdline"] == ["/bin/sleep", marker]
                               for p in psutil.process_iter(["cmdline"])), 5,
                   what="the fake master's child")
        assert fleet.ctl("shutdown").returncode == 0
        result = fleet.stemd()
        assert result.returncode == 0, result.stderr
        assert "another stemd" not in result.stderr
        beta = fleet.wait_state("RUNNING")["beta"]
        assert psutil.Process(beta["pid"]).ppid() == fleet.master_pid()
    finally:
        os.killpg(fake.pid, signal.SIGKILL)
        fake.wait()
