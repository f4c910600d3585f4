"""Static checks of the files in contrib/systemd, etc/tmpfiles.d and contrib/init.d.

Every unit goes through ``systemd-analyze verify`` as shipped, unmodified: in a scratch root
(``--root``) holding the host's own system units, the unit under test in
``/etc/systemd/system`` and stand-in ``stemd``/``stemctl`` executables in ``/usr/local/bin``,
because verify insists that every ``Exec*=`` program exists and our units name them without a
directory (systemd looks them up in its fixed search path). verify only *warns* about unknown
keys and bad values and still exits 0, so any output at all fails the test.

What the units do at run time is tested under a real systemd in test_systemd_boot.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = ROOT / "contrib" / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.glob("*.service"))
# The name systemd-analyze is asked to verify: a template needs an instance.
VERIFY_NAME = {"stem-worker@.service": "stem-worker@billing.service"}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or SYSTEM_UNITS is None,
    reason="systemd-analyze or the system unit directory is missing (apt-get install systemd)",
)


def test_every_expected_unit_is_shipped() -> None:
    assert UNITS == [
        "stem-scheduler.service",
        "stem-worker-notify.service",
        "stem-worker.service",
        "stem-worker@.service",
    ]


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify-root")
    assert SYSTEM_UNITS is not None
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    bindir = root / "usr/local/bin"
    bindir.mkdir(parents=True)
    for name in ("stemd", "stemctl"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
        (bindir / name).chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(UNIT_DIR / unit, etc / unit)
    return root


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify(verify_root: Path, unit: str) -> None:
    name = VERIFY_NAME.get(unit, unit)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={verify_root}", name],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", f"systemd-analyze verify {name} complained:\n{output}"


@needs_analyze
def test_verify_catches_a_broken_unit(verify_root: Path) -> None:
    """The check above is only worth something if verify speaks up about a bad unit."""
    broken = (UNIT_DIR / "stem-worker.service").read_text().replace(
        "KillMode=mixed", "KillMode=mixed\nKillModeTypo=yes")
    etc = verify_root / "etc/systemd/system"
    (etc / "stem-broken.service").write_text(broken)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={verify_root}", "stem-broken.service"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert "KillModeTypo" in result.stdout + result.stderr


def _settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNIT_DIR / unit).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNITS)
def test_unit_contract(unit: str) -> None:
    """SPEC §4 and issue 5: what each unit must say, beyond being valid."""
    s = _settings(unit)
    forking = unit != "stem-worker-notify.service"
    assert s["Type"] == ["forking" if forking else "notify"]
    assert s["User"] == ["stem"] and s["Group"] == ["stem"]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "KillMode": "mixed",
    }.items():
        assert s[key] == [value], key
    env = dict(v.partition("=")[::2] for v in s["Environment"])
    config = env["STEMD_CONFIG"]
    assert s["ExecReload"] == ["stemctl --config ${STEMD_CONFIG} reload"]
    if forking:
        assert s["ExecStart"] == ["stemd --config ${STEMD_CONFIG}"]
        # `-`: a master already gone (stemctl exits 3) must not fail the stop; see the unit.
        assert s["ExecStop"] == ["-stemctl --config ${STEMD_CONFIG} shutdown"]
        # PIDFile= and the master must agree, whatever the config file says.
        assert s["PIDFile"] == [env["STEMD_MASTER_PID_FILE"]]
        # stemd's "master runs, a node did not start" is not a failed start: as one, systemd
        # SIGKILLed the master and the healthy nodes and restarted the fleet every 5 s.
        from stemd.daemon import NODES_NOT_RUNNING
        assert s["SuccessExitStatus"] == [str(NODES_NOT_RUNNING)]
    else:
        assert s["ExecStart"] == ["stemd --config ${STEMD_CONFIG} --foreground"]
        assert s["NotifyAccess"] == ["main"]
        assert "ExecStop" not in s
    # The socket and the master PID file live in the unit's runtime directory, which is
    # writable under ProtectSystem=strict.
    runtime = "/run/" + s["RuntimeDirectory"][0]
    assert Path(env["STEMD_SOCKET"]).parent == Path(runtime)
    assert Path(env["STEMD_MASTER_PID_FILE"]).parent == Path(runtime)
    if unit == "stem-worker@.service":
        assert config == "/etc/default/stem-%i"
        assert runtime == "/run/stem/%i"
        # stemd's own templates must be escaped from systemd's.
        assert env["STEMD_PID_FILE"] == "/run/stem/%i/%%n.pid"
        assert env["STEMD_LOG_FILE"] == "/var/log/stem/%i/%%n.log"
    elif unit == "stem-scheduler.service":
        assert config == "/etc/default/stem-scheduler"
    if unit in ("stem-worker@.service", "stem-scheduler.service"):
        # systemd removed the runtime directory, and the state file with the operator's stops
        # in it, even when it restarted a crashed master (Restart=on-failure)
        assert s["RuntimeDirectoryPreserve"] == ["restart"]
    else:
        assert config == "/etc/default/stem"
        # Other units keep their runtime files under /run/stem: stopping this one must not
        # delete them.
        assert s["RuntimeDirectoryPreserve"] == ["yes"]
    # A bare `%` followed by a letter is a systemd specifier: only %i is meant.
    for value in env.values():
        assert not re.search(r"(?<!%)%[a-hj-zA-Z]", value), value


def test_notify_and_forking_units_exclude_each_other() -> None:
    assert _settings("stem-worker.service")["Conflicts"] == ["stem-worker-notify.service"]
    assert _settings("stem-worker-notify.service")["Conflicts"] == ["stem-worker.service"]


def test_tmpfiles_entry() -> None:
    lines = [
        line.split() for line in (ROOT / "etc/tmpfiles.d/stem.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["d", "/run/stem", "0755", "stem", "stem", "-"] in lines
