"""The systemd units under a real systemd: a Debian bookworm container booted with nspawn.

Recipe (issue 5), everything as root:

1. a debootstrap ``minbase`` rootfs with systemd, systemd-sysv, dbus and python3, built once by
   ``tests/integration/systemd/build-rootfs.sh`` and cached (CI keeps the cache directory);
2. an overlay on it per test run, so the cache is never written to: the project (its source
   packages and its runtime dependencies, copied from this interpreter's environment; the
   rootfs python3 is 3.11 too), ``stemd``/``stemctl`` launchers in /usr/local/bin, the units
   in /etc/systemd/system, the tmpfiles entry and the config files are put in the upper layer;
3. ``unshare --mount --propagation private`` (so the mounts vanish with the run), a tmpfs on
   ``/run/systemd`` (so nspawn does not see or touch the host's), then
   ``systemd-nspawn -D ROOT -b --register=no --keep-unit``;
4. commands run in the container with ``nsenter -t <its init> -a`` (``systemctl -M`` needs
   machined, which --register=no avoids).

Opt-in: marker ``systemd``. Skips with the reason where the machine cannot (not root, tools
missing, no mirror to build the rootfs, a kernel or sandbox that cannot boot a container).
``STEMD_REQUIRE_SYSTEMD_TESTS=1`` turns those skips into failures, for CI that must run them.
``STEMD_TEST_ROOTFS`` names another cached rootfs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOTFS = Path(__file__).resolve().parent / "systemd" / "build-rootfs.sh"
ROOTFS = Path(os.environ.get("STEMD_TEST_ROOTFS", "/var/cache/stemd-tests/rootfs-bookworm-v1"))
REQUIRE = os.environ.get("STEMD_REQUIRE_SYSTEMD_TESTS") == "1"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SLEEPER = "/bin/sleep 1000"


def cannot(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"STEMD_REQUIRE_SYSTEMD_TESTS=1 but: {reason}")
    pytest.skip(reason)



# --- the payload: the project as an operator would install it -----------------------------

def _requirement_names(dist: importlib.metadata.Distribution) -> list[str]:
    names = []
    for req in dist.requires or []:
        if "extra ==" in req.replace("extra==", "extra =="):
            continue
        names.append(re.match(r"[A-Za-z0-9._-]+", req).group(0))  # type: ignore[union-attr]
    return names


def _runtime_distributions() -> list[importlib.metadata.Distribution]:
    """stemd's runtime dependencies, transitively, as installed for this interpreter."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = _requirement_names(importlib.metadata.distribution("stemd"))
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency for another Python or platform (its marker says so)
        seen[key] = dist
        todo.extend(_requirement_names(dist))
    return list(seen.values())


def stage_project(lib: Path) -> None:
    """Copy stem_core, stemd and their runtime dependencies into ``lib`` (a sys.path entry)."""
    lib.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("stem_core", "stemd"):
        shutil.copytree(ROOT / package, lib / package, ignore=ignore)
    for dist in _runtime_distributions():
        base = Path(dist.locate_file("")).resolve()
        for file in dist.files or []:
            src = Path(dist.locate_file(file)).resolve()
            if src.suffix == ".pyc" or not src.is_file() or not src.is_relative_to(base):
                continue  # console scripts live outside site-packages: not needed
            dest = lib / src.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def launchers() -> dict[str, str]:
    """/usr/local/bin scripts for the project's console entry points, as pip would write."""
    scripts = {}
    for ep in importlib.metadata.distribution("stemd").entry_points:
        if ep.group != "console_scripts":
            continue
        module, _, func = ep.value.partition(":")
        scripts[ep.name] = (
            "#!/usr/bin/python3\n"
            "import sys\n"
            "sys.path.insert(0, '/opt/stemd/lib')\n"
            f"from {module} import {func}\n"
            f"sys.exit({func}())\n"
        )
    assert {"stemd", "stemctl"} <= scripts.keys(), scripts
    return scripts


def env_file(**keys: str) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in keys.items())


# --- the container -------------------------------------------------------------------------

class Container:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.upper = workdir / "upper"
        self.merged = workdir / "merged"
        self.log = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.init: psutil.Process | None = None

    def file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Put a file in the container before boot (in the overlay's upper layer)."""
        dest = self.upper / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)

    def boot(self) -> None:
        for d in ("upper", "work", "merged"):
            (self.workdir / d).mkdir(exist_ok=True)
        script = (
            "set -e\n"
            "mkdir -p /run/systemd\n"
            "mount -t tmpfs -o mode=0755 tmpfs /run/systemd\n"
            f"mount -t overlay overlay -o lowerdir={ROOTFS},upperdir={self.upper},"
            f"workdir={self.workdir / 'work'} {self.merged}\n"
            f"exec systemd-nspawn -D {self.merged} -b --register=no --keep-unit"
            " --private-network --hostname=stemd-test\n"
        )
        with self.log.open("wb") as log:
            # --pdeathsig: if this test process dies without its teardown (killed by a CI
            # timeout), nspawn gets SIGTERM and powers the container off anyway.
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM",
                 "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.init_pid = wait_until(self._find_init, 20, interval=0.05,
                                       what="the container's init")
            state = wait_until(self._booted, 60, interval=0.05,
                               what="is-system-running to say running/degraded")
        except AssertionError as exc:
            tail = self.log.read_text(errors="replace")[-3000:]
            self.shutdown()
            cannot(f"the container did not boot ({exc}); nspawn said:\n{tail}")
            return
        if state == "degraded":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            print(f"container booted degraded; failed units:\n{failed}")

    def _find_init(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            cannot(f"systemd-nspawn exited with {self.proc.returncode}:\n{tail}")
        # setpriv execs unshare, which execs sh, which execs nspawn: the container's init is
        # nspawn's child.
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.name() == "systemd":
                    self.init = child
                    return child.pid
        return None

    def _booted(self) -> str | None:
        state = self.run("systemctl is-system-running", check=False).stdout.strip()
        return state if state in ("running", "degraded") else None

    def run(self, command: str, check: bool = True, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the container, as root, with a clean environment."""
        assert self.init_pid is not None
        argv = ["nsenter", "-t", str(self.init_pid), "-a",
                "env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "/bin/sh", "-c", command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container: {command!r} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM makes nspawn power the container off cleanly (about a second).
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # The container's init is in the same session; make sure nothing of it survives.
        if self.init is not None:
            # psutil checks the process is still the one found (no PID reuse).
            with contextlib.suppress(psutil.Error):
                self.init.kill()

    # -- what the tests look at --

    def systemctl(self, args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(f"systemctl --no-pager {args}", check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl(f"show -p {prop} --value {unit}").stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl --no-pager -o cat -u {shlex.quote(unit)}",
                        check=False).stdout

    def status(self, stemctl_args: str = "") -> list[dict]:  # type: ignore[type-arg]
        out = self.run(f"stemctl {stemctl_args} --json status", check=False)
        assert out.returncode in (0, 1), f"stemctl status: {out.returncode} {out.stderr}"
        return json.loads(out.stdout)

    def processes_of(self, user: str) -> dict[int, tuple[int, str]]:
        """pid -> (ppid, cmdline) of every process of ``user`` in the container (no procps)."""
        script = (
            "import os, pwd, json\n"
            f"uid = pwd.getpwnam({user!r}).pw_uid\n"
            "out = {}\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        st = open(f'/proc/{p}/status').read()\n"
            "        cmd = open(f'/proc/{p}/cmdline').read().replace('\\0', ' ').strip()\n"
            "    except OSError:\n"
            "        continue\n"
            "    f = dict(l.split(':\\t', 1) for l in st.splitlines() if ':\\t' in l)\n"
            "    if int(f['Uid'].split()[0]) == uid and f['State'][0] != 'Z':\n"
            "        out[p] = (int(f['PPid']), cmd)\n"
            "print(json.dumps(out))\n"
        )
        out = self.run(f"python3 -c {shlex.quote(script)}").stdout
        return {int(pid): (ppid, cmd) for pid, (ppid, cmd) in json.loads(out).items()}

    def read(self, path: str) -> str:
        return self.run(f"cat {shlex.quote(path)}").stdout


def _preflight() -> None:
    if sys.platform != "linux":
        cannot("systemd containers need Linux")
    if os.geteuid() != 0:
        cannot("booting a container with systemd-nspawn needs root")
    missing = [t for t in ("systemd-nspawn", "unshare", "nsenter", "setpriv")
               if not shutil.which(t)]
    if missing:
        cannot(f"{', '.join(missing)} not found: apt-get install systemd-container util-linux")
    if not (ROOTFS / ".stemd-rootfs-complete").exists():
        if not shutil.which("debootstrap"):
            cannot(f"no cached rootfs at {ROOTFS} and no debootstrap to build one:"
                   " apt-get install debootstrap")
        try:
            build = subprocess.run(["sh", str(BUILD_ROOTFS), str(ROOTFS)],
                                   capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            cannot(f"building the rootfs at {ROOTFS} took more than 15 minutes")
        if build.returncode != 0:
            cannot(f"could not build the rootfs at {ROOTFS} (no route to the Debian mirror?):\n"
                   f"{(build.stdout + build.stderr)[-2000:]}")


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    _preflight()
    workdir = Path(tempfile.mkdtemp(prefix="stemd-nspawn-"))
    box = Container(workdir)
    try:
        stage_project(box.upper / "opt/stemd/lib")
        for name, text in launchers().items():
            box.file(f"/usr/local/bin/{name}", text, 0o755)
        for unit in sorted((ROOT / "contrib/systemd").glob("*.service")):
            box.file(f"/etc/systemd/system/{unit.name}", unit.read_text())
        box.file("/etc/tmpfiles.d/stem.conf", (ROOT / "etc/tmpfiles.d/stem.conf").read_text())
        common = {"STEMD_COMMAND": SLEEPER, "STEMD_START_SECS": "0.3"}
        # The shipped sample (every key, commented) with the operator's edits appended.
        sample = ROOT / "etc/default/stem"
        shipped = sample.read_text() if sample.exists() else ""
        box.file("/etc/default/stem",
                 shipped + "\n" + env_file(STEMD_NODES="alpha beta", **common))
        box.file("/etc/default/stem-foo", env_file(STEMD_NODES="x y", **common))
        box.file("/etc/default/stem-broken", "STEMD_NODES=$(whoami)\n")
        box.file("/etc/default/stem-scheduler",
                 env_file(STEM_SCHEDULER_COMMAND=SLEEPER, STEMD_START_SECS="0.3"))
        box.boot()
        # As docs/deployment.md tells the operator (adduser is not in a minbase system).
        box.run("useradd --system --user-group --no-create-home --home-dir /nonexistent"
                " --shell /usr/sbin/nologin stem")
        box.systemctl("daemon-reload")
        yield box
    finally:
        box.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def box(container: Container) -> Iterator[Container]:
    """The container, with every stem unit stopped again after the test whatever happened."""
    yield container
    container.systemctl("stop 'stem-*.service' 'stem-worker@*.service'", check=False)
    container.systemctl("reset-failed", check=False)
    leftovers = container.processes_of("stem")
    assert not leftovers, f"processes of user stem left behind: {leftovers}"


def running_nodes(box: Container, stemctl_args: str, nodes: set[str]) -> dict[str, int]:
    """node -> pid, once exactly ``nodes`` are RUNNING (start returns once they are spawned)."""
    def check() -> dict[str, int] | None:
        rows = box.status(stemctl_args)
        if {r["node"] for r in rows} == nodes and all(r["state"] == "RUNNING" for r in rows):
            return {r["node"]: r["pid"] for r in rows}
        return None
    try:
        return wait_until(check, 10, what=f"{sorted(nodes)} RUNNING", interval=0.1)
    except AssertionError:
        raise AssertionError(f"{box.status(stemctl_args)}") from None


def assert_fleet(box: Container, unit: str, pidfile: str, nodes: set[str],
                 stemctl_args: str = "", adopted: bool = False) -> int:
    """The unit is active, MainPID is the master, and exactly ``nodes`` run under it as stem
    (as its children, unless ``adopted`` allows nodes a previous master started)."""
    assert box.show(unit, "ActiveState") == "active"
    main_pid = int(box.show(unit, "MainPID"))
    assert main_pid > 0
    assert int(box.read(pidfile)) == main_pid
    pids = running_nodes(box, stemctl_args, nodes)
    procs = box.processes_of("stem")
    assert main_pid in procs, f"the master does not run as stem: {procs}"
    children = {pid for pid, (ppid, _) in procs.items() if ppid == main_pid}
    sleepers = {pid for pid, (_, cmd) in procs.items() if cmd == SLEEPER}
    expected = sleepers if adopted else children
    assert expected == set(pids.values()), f"{procs} != {pids}\n{box.journal(unit)}"
    for pid in pids.values():
        assert procs[pid][1] == SLEEPER
    return main_pid


# --- the tests -----------------------------------------------------------------------------

def test_tmpfiles_creates_the_runtime_directory(box: Container) -> None:
    box.run("rm -rf /run/stem && systemd-tmpfiles --create stem.conf")
    out = box.run("stat -c '%a %U %G' /run/stem /var/log/stem").stdout.split("\n")
    assert out[:2] == ["755 stem stem", "755 stem stem"]


def test_forking_unit_start_reload_stop(box: Container) -> None:
    unit = "stem-worker.service"
    box.systemctl(f"start {unit}")
    main_pid = assert_fleet(box, unit, "/run/stem/stemd.pid", {"alpha", "beta"})
    # Hardening really applies (and stemd works under it).
    assert box.read(f"/proc/{main_pid}/status").count("NoNewPrivs:\t1") == 1
    assert box.run("test -S /run/stem/stemd.sock", check=False).returncode == 0

    box.run("sed -i 's/^STEMD_NODES=.*/STEMD_NODES=\"alpha beta gamma\"/' /etc/default/stem")
    try:
        box.systemctl(f"reload {unit}")
        assert int(box.show(unit, "MainPID")) == main_pid
        assert_fleet(box, unit, "/run/stem/stemd.pid", {"alpha", "beta", "gamma"})
    finally:
        box.run("sed -i 's/^STEMD_NODES=.*/STEMD_NODES=\"alpha beta\"/' /etc/default/stem")

    box.systemctl(f"stop {unit}")
    assert box.show(unit, "ActiveState") == "inactive"
    assert box.show(unit, "Result") == "success"
    assert box.processes_of("stem") == {}
    assert box.run("test -e /run/stem/stemd.pid", check=False).returncode != 0
    # RuntimeDirectoryPreserve=yes: other units' runtime files live below it.
    assert box.run("test -d /run/stem", check=False).returncode == 0
    assert "alpha" in box.read("/var/log/stem/stemd.log")


def test_forking_unit_survives_a_shutdown_by_hand(box: Container) -> None:
    """`stemctl shutdown` behind systemd's back: the unit ends inactive, not failed."""
    unit = "stem-worker.service"
    box.systemctl(f"start {unit}")
    box.run("stemctl shutdown")
    wait_until(lambda: box.show(unit, "ActiveState") in ("inactive", "failed"), 10,
               what="the unit to notice")
    assert box.show(unit, "ActiveState") == "inactive", box.journal(unit)
    assert box.processes_of("stem") == {}


def test_forking_unit_restarts_a_crashed_master(box: Container) -> None:
    """Restart=on-failure: a master killed with SIGKILL comes back with its nodes.

    systemd SIGKILLs what is left of the unit's cgroup before the restart (KillMode=mixed), so
    the new master normally starts new nodes. Where that kill fails (seen here on the first
    try in a container on a cgroup-v1 host: "Failed to kill control group ... Input/output
    error"), the new master adopts the survivors: either way, exactly one of each."""
    unit = "stem-worker.service"
    box.systemctl(f"start {unit}")
    old = assert_fleet(box, unit, "/run/stem/stemd.pid", {"alpha", "beta"})
    box.run(f"kill -KILL {old}")
    wait_until(lambda: box.show(unit, "NRestarts") == "1" and box.show(unit, "ActiveState")
               == "active", 20, what="systemd to restart the master", interval=0.2)
    new = assert_fleet(box, unit, "/run/stem/stemd.pid", {"alpha", "beta"}, adopted=True)
    assert new != old
    box.systemctl(f"stop {unit}")
    assert box.processes_of("stem") == {}


def test_template_unit_instances_are_independent(box: Container) -> None:
    unit = "stem-worker@foo.service"
    sock = "--socket /run/stem/foo/stemd.sock"
    box.systemctl(f"start {unit} stem-worker.service")
    main_pid = assert_fleet(box, unit, "/run/stem/foo/stemd.pid", {"x", "y"}, sock)
    assert box.run("test -f /var/log/stem/foo/x.log -a -f /var/log/stem/foo/stemd.log",
                   check=False).returncode == 0
    assert box.run("test -f /run/stem/foo/x.pid", check=False).returncode == 0

    box.systemctl("stop stem-worker.service")
    # The instance lost nothing when the default fleet stopped.
    assert_fleet(box, unit, "/run/stem/foo/stemd.pid", {"x", "y"}, sock)

    box.run("sed -i 's/^STEMD_NODES=.*/STEMD_NODES=\"x y z\"/' /etc/default/stem-foo")
    try:
        box.systemctl(f"reload {unit}")
        assert int(box.show(unit, "MainPID")) == main_pid
        assert_fleet(box, unit, "/run/stem/foo/stemd.pid", {"x", "y", "z"}, sock)
    finally:
        box.run("sed -i 's/^STEMD_NODES=.*/STEMD_NODES=\"x y\"/' /etc/default/stem-foo")

    box.systemctl(f"stop {unit}")
    assert box.show(unit, "Result") == "success"
    assert box.processes_of("stem") == {}
    assert box.run("test -e /run/stem/foo", check=False).returncode != 0


def test_forking_unit_with_a_node_that_cannot_start_keeps_the_fleet(box: Container) -> None:
    """Regression: stemd exits non-zero when a node cannot start (its master runs on). The
    forking unit took that for a failed start: systemd SIGKILLed the master and the healthy
    node with their tasks, and Restart=on-failure restarted the whole fleet every ~6 s."""
    unit = "stem-worker.service"
    box.run("sed -i 's/^STEMD_START_SECS=.*/&\\nSTEMD_OPTS=\"--bogus:beta=1\"/' "
            "/etc/default/stem")
    try:
        box.systemctl(f"start {unit}")  # exit 0: the master runs (stemd exited 5)
        assert box.show(unit, "ActiveState") == "active"
        main_pid = int(box.show(unit, "MainPID"))
        assert int(box.read("/run/stem/stemd.pid")) == main_pid
        rows = wait_until(lambda: (r := {x["node"]: x for x in box.status()})
                          and r["beta"]["state"] == "FATAL" and r, 10, what="beta FATAL")
        assert rows["alpha"]["state"] == "RUNNING"
        assert "nodes not running" in box.journal(unit)  # stemd's reason is in the journal
        assert box.show(unit, "NRestarts") == "0"
        assert int(box.show(unit, "MainPID")) == main_pid
        box.systemctl(f"stop {unit}")
        assert box.show(unit, "Result") == "success"
    finally:
        box.run("sed -i '/^STEMD_OPTS=\"--bogus:beta=1\"/d' /etc/default/stem")
    assert box.processes_of("stem") == {}


def test_template_unit_keeps_an_operators_stop_when_systemd_restarts_the_master(
        box: Container) -> None:
    """Regression: the template (and scheduler) unit let systemd remove the runtime
    directory, state file included, when it restarted a crashed master: a node the operator
    had stopped ran again (SPEC §2.2: the operator's stops are kept)."""
    unit = "stem-worker@foo.service"
    sock = "--socket /run/stem/foo/stemd.sock"
    box.systemctl(f"start {unit}")
    old = assert_fleet(box, unit, "/run/stem/foo/stemd.pid", {"x", "y"}, sock)
    box.run(f"stemctl {sock} stop x")
    box.run(f"kill -KILL {old}")
    wait_until(lambda: box.show(unit, "NRestarts") == "1" and box.show(unit, "ActiveState")
               == "active" and int(box.show(unit, "MainPID") or 0) not in (0, old), 20,
               what="systemd to restart the master", interval=0.2)
    rows = wait_until(lambda: (r := {x["node"]: x for x in box.status(sock)})
                      and r["y"]["state"] == "RUNNING" and r, 10, what="y running")
    assert rows["x"]["state"] == "STOPPED", rows
    box.systemctl(f"stop {unit}")
    assert box.processes_of("stem") == {}


def test_template_unit_with_a_broken_config_fails_with_the_reason(box: Container) -> None:
    unit = "stem-worker@broken.service"
    result = box.systemctl(f"start {unit}", check=False)
    assert result.returncode != 0
    assert box.show(unit, "Result") == "exit-code"
    # failed, or already waiting to try again (Restart=on-failure)
    assert box.show(unit, "ActiveState") in ("failed", "activating")
    journal = box.journal(unit)
    assert "/etc/default/stem-broken" in journal, journal


def test_notify_unit(box: Container) -> None:
    unit = "stem-worker-notify.service"
    box.systemctl(f"start {unit}")
    main_pid = assert_fleet(box, unit, "/run/stem/stemd.pid", {"alpha", "beta"})
    assert "--foreground" in box.read(f"/proc/{main_pid}/cmdline")
    assert box.show(unit, "StatusText") != ""

    box.systemctl(f"reload {unit}")
    assert box.show(unit, "ActiveState") == "active"
    assert int(box.show(unit, "MainPID")) == main_pid

    # The forking unit is the same fleet: starting it stops this one (Conflicts=).
    box.systemctl("start stem-worker.service")
    assert box.show(unit, "ActiveState") == "inactive"
    assert_fleet(box, "stem-worker.service", "/run/stem/stemd.pid", {"alpha", "beta"})
    box.systemctl("stop stem-worker.service")

    box.systemctl(f"start {unit}")
    box.systemctl(f"stop {unit}")
    assert box.show(unit, "Result") == "success"
    assert box.processes_of("stem") == {}
    # Its log went to the journal.
    assert "alpha" in box.journal(unit)


def test_scheduler_unit(box: Container) -> None:
    unit = "stem-scheduler.service"
    box.systemctl(f"start {unit}")
    assert_fleet(box, unit, "/run/stem/scheduler/stemd.pid", {"scheduler"},
                 "--socket /run/stem/scheduler/stemd.sock")
    box.systemctl(f"reload {unit}")
    box.systemctl(f"stop {unit}")
    assert box.show(unit, "Result") == "success"
    assert box.processes_of("stem") == {}
