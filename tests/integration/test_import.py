"""``stemctl import`` end to end: import real sample files with the real
stemctl, check the result with the real ``stemd --check``, run it, and
compare what runs with what the original supervisor runs for the same file.

- supervisord: 4.3.0 from PyPI (the pin of bench/requirements-peers.txt), in a
  venv of its own beside the project's .venv (created once, under a lock, as
  the project's own files say; skipped only if pip cannot install it). Every
  program is a small recorder that writes its argv, cwd, uid, gid, umask
  and environment to a file and waits.
- celeryd: ``celery multi show`` (celery from the dev extra) prints the
  command line of each node; stemd then runs real Celery workers (solo
  pool, in-memory broker) and their command lines are compared.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.fleet import STEMCTL, STEMD, Fleet, wait_until

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "requirements-peers.txt"

RECORDER = """\
import json, os, signal, sys
umask = os.umask(0); os.umask(umask)
record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "uid": os.getuid(), "gid": os.getgid(),
          "umask": umask, "env": dict(os.environ)}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(record, f)
os.rename(tmp, sys.argv[1])
print("stderr of", os.path.basename(sys.argv[1]), file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    signal.pause()
"""


def supervisor_pin() -> str:
    for line in PEERS.read_text().splitlines():
        if line.startswith("supervisor=="):
            return line.strip()
    raise AssertionError(f"no supervisor pin in {PEERS}")


@pytest.fixture(scope="session")
def supervisord() -> str:
    """The supervisord binary, installed once per .venv."""
    pin = supervisor_pin()
    venv = Path(sys.prefix) / f"peer-{pin.replace('==', '-')}"
    binary = venv / "bin" / "supervisord"
    with open(Path(sys.prefix) / ".peer-supervisor.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers share the venv
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install",
                                     "--quiet", pin], capture_output=True, text=True,
                                    timeout=300)
            if result.returncode != 0:
                pytest.skip(f"cannot install {pin}: {result.stderr.strip()[-300:]}")
    return str(binary)


def write_supervisord_conf(root: Path, mark: str) -> Path:
    (root / "conf.d").mkdir()
    for d in ("run", "log", "work"):
        (root / d).mkdir()
    (root / "record.py").write_text(RECORDER)
    conf = root / "supervisord.conf"
    record = "%(ENV_RECORD_DIR)s/%(program_name)s_%(process_num)02d.json"
    conf.write_text(f"""\
; a typical supervisord.conf, as supervisord reads it
[unix_http_server]
file=%(here)s/run/supervisor.sock   ; the socket file

[supervisord]
logfile=%(here)s/log/supervisord.log
pidfile=%(here)s/run/stemd.pid
environment=STEM_TEST_MARK="{mark}",GREETING="hello, world",HOME_SEEN="%(ENV_HOME)s"

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/run/supervisor.sock

[include]
files = conf.d/*.conf

[program:worker]
command={sys.executable} %(here)s/record.py {record} --queues "a b"
process_name=%(program_name)s_%(process_num)02d
numprocs=3
directory=%(here)s/work
umask=027
environment=QUEUES="high,low",EMPTY="",PATH_LIKE=/a/b:/c
stdout_logfile=%(here)s/log/%(program_name)s_%(process_num)02d.log
redirect_stderr=true
stopsignal=INT
stopwaitsecs=5
exitcodes=0,2
priority=20

[program:beat]
command={sys.executable} %(here)s/record.py {record}
process_name=%(program_name)s_%(process_num)02d
numprocs=2
numprocs_start=1
priority=5
stdout_logfile=%(here)s/log/%(program_name)s_%(process_num)02d.log
redirect_stderr=true

[program:manual]
command={sys.executable} %(here)s/record.py %(ENV_RECORD_DIR)s/manual.json
autostart=false
""")
    (root / "conf.d" / "web.conf").write_text(f"""\
[program:web]
command={sys.executable} %(here)s/../record.py %(ENV_RECORD_DIR)s/web.json --home %(ENV_HOME)s
directory=%(here)s
autorestart=true
stdout_logfile=%(here)s/../log/web.log
stderr_logfile=%(here)s/../log/web.err
""")
    return conf


def records(directory: Path, names: list[str], timeout: float = 60) -> dict[str, dict]:
    def ready() -> dict[str, dict] | None:
        paths = [directory / f"{n}.json" for n in names]
        if not all(p.exists() for p in paths):
            return None
        return {n: json.loads(p.read_text()) for n, p in zip(names, paths, strict=True)}
    return wait_until(ready, timeout, interval=0.05, what=f"records of {names}")


def comparable(record: dict, record_dir: Path) -> dict:
    """What a node is given, without what each supervisor adds about itself
    (SUPERVISOR_* and STEMD_NODE/STEMD_PROGRAM/STEMD_INSTANCE) or the test
    varies. PWD too: stemd sets it to the node's directory (its cwd), where
    supervisord passes on its own launcher's PWD, which is stale."""
    env = {k: v for k, v in record["env"].items()
           if not k.startswith(("SUPERVISOR_", "STEMD_")) and k not in ("RECORD_DIR", "PWD")}
    argv = [a.replace(str(record_dir), "RECORDS") for a in record["argv"]]
    return {**record, "argv": argv, "env": env}


@pytest.mark.slow
def test_supervisord_conf_imported_runs_what_supervisord_runs(
        tmp_path: Path, supervisord: str) -> None:
    mark = uuid.uuid4().hex
    conf = write_supervisord_conf(tmp_path, mark)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STEMD_")}
    base_env.pop("NOTIFY_SOCKET", None)
    base_env["HOME"] = str(tmp_path / "home")
    stemd_records, sv_records = tmp_path / "stemd-records", tmp_path / "sv-records"
    stemd_records.mkdir()
    sv_records.mkdir()
    names = ["worker_00", "worker_01", "worker_02", "web", "beat_01", "beat_02"]

    # 1. import with the real stemctl: everything translates (exit 0)
    out = tmp_path / "stem.toml"
    imported = subprocess.run([STEMCTL, "import", "supervisord", str(conf), "-o", str(out)],
                              capture_output=True, text=True, timeout=60,
                              env={**base_env, "RECORD_DIR": str(stemd_records)})
    assert imported.returncode == 0, imported.stderr
    text = out.read_text()
    assert 'nodes = [\n    "worker_00",' in text or '"worker_00", "worker_01"' in text, text
    assert 'name = "%p_%02i"' in text and "autostart = false" in text, text
    assert 'stderr_log_file = "' in text and "exitcodes = [" in text, text

    # 2. the real stemd --check accepts it (root: supervisord ran these as root too)
    overrides = ["STEMD_FORCE_ROOT=1", f"STEMD_PID_FILE={tmp_path}/run/%n.pid"]
    check = subprocess.run([STEMD, "--config", str(out), "--check", *overrides],
                           capture_output=True, text=True, timeout=60, env=base_env)
    assert check.returncode == 0, check.stdout + check.stderr

    # 3. run it with stemd, then the original with supervisord; compare
    fleet = Fleet(tmp_path)
    fleet.config = out
    fleet.mark = mark
    try:
        started = subprocess.run([STEMD, "--config", str(out), *overrides],
                                 capture_output=True, text=True, timeout=60, env=base_env)
        assert started.returncode == 0, started.stderr
        by_stemd = records(stemd_records, names)
        manual = fleet.status("manual")["manual"]
        assert manual["state"] == "STOPPED" and not (stemd_records / "manual.json").exists()
        err = tmp_path / "log" / "web.err"
        wait_until(lambda: err.exists() and err.read_text().count("stderr of web") == 1, 10,
                   what="web's stderr in web.err")
        assert "stderr of" not in (tmp_path / "log" / "web.log").read_text()
        stopped = subprocess.run([STEMCTL, "--config", str(out), "shutdown"],
                                 capture_output=True, text=True, timeout=60, env=base_env)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        fleet.cleanup()

    sv = subprocess.Popen([supervisord, "-n", "-c", str(conf)], cwd="/",
                          env={**base_env, "RECORD_DIR": str(sv_records)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        by_supervisord = records(sv_records, names)
        # supervisord writes stderr to the same separate file, and does not
        # start the autostart=false program either
        wait_until(lambda: (tmp_path / "log" / "web.err").read_text().count(
            "stderr of web") == 2, 10, what="supervisord's web stderr in web.err")
        assert not (sv_records / "manual.json").exists()
    finally:
        sv.send_signal(signal.SIGTERM)
        try:
            sv.wait(30)
        except subprocess.TimeoutExpired:
            sv.kill()
            sv.wait()
        fleet.cleanup()

    for name in names:
        ours = comparable(by_stemd[name], stemd_records)
        theirs = comparable(by_supervisord[name], sv_records)
        assert ours == theirs, name
    worker = by_stemd["worker_01"]
    assert worker["argv"][-2:] == ["--queues", "a b"]
    assert worker["cwd"] == str(tmp_path / "work") and worker["umask"] == 0o027
    assert worker["env"]["QUEUES"] == "high,low" and worker["env"]["GREETING"] == "hello, world"
    assert by_stemd["web"]["argv"][-1] == str(tmp_path / "home")


def test_untranslated_settings_exit_1_with_file_line_on_stderr(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:a]\ncommand=/bin/sleep 100\nstdout_syslog=true\n"
                    "[inet_http_server]\nport=127.0.0.1:9001\n")
    result = subprocess.run([STEMCTL, "import", "supervisord", str(conf)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("# Imported from")
    assert f"{conf}:4: [program:a] stdout_syslog: stemd writes node output to files only" \
        in result.stderr
    assert f"{conf}:5: [inet_http_server]" in result.stderr
    as_json = subprocess.run([STEMCTL, "--json", "import", "supervisord", str(conf)],
                             capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["complete"] is False
    assert {(n["line"], n["setting"]) for n in report["notes"] if not n["translated"]} == {
        (4, "[program:a] stdout_syslog"), (5, "[inet_http_server]")}


def test_unreadable_input_is_a_usage_error_and_needs_no_master_or_config(
        tmp_path: Path) -> None:
    env = {**os.environ, "STEMD_CONFIG": str(tmp_path / "absent"),
           "STEMD_SOCKET": str(tmp_path / "absent.sock")}
    result = subprocess.run([STEMCTL, "import", "celeryd", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "nope" in result.stderr
    bad = tmp_path / "celeryd"
    bad.write_text('CELERYD_NODES="w1"\nCELERYD_OPTS=`id`\n')
    result = subprocess.run([STEMCTL, "import", "celeryd", str(bad)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr, result.stderr


def test_with_json_a_usage_error_is_a_json_error_object(tmp_path: Path) -> None:
    """Regression: `stemctl --json import ...` said its usage errors in plain
    text, with nothing on stdout."""
    bad = tmp_path / "celeryd"
    bad.write_text('CELERYD_NODES="w1"\nCELERYD_OPTS=`id`\n')
    for args, said in [(("supervisord", str(tmp_path / "nope")), "cannot read"),
                       (("celeryd", str(bad)), f"{bad}:2:"),
                       (("supervisord", str(bad), "--toml"), "--toml is for celeryd"),
                       (("supervisord",), "required: FILE")]:
        result = subprocess.run([STEMCTL, "--json", "import", *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        error = json.loads(result.stdout)
        assert error["ok"] is False and error["error"]["code"] == "bad_argument"
        assert said in error["error"]["message"]


def test_stemd_refuses_a_supervisord_file_naming_the_import_command(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[program:celery]\ncommand=/usr/bin/celery worker\n")
    result = subprocess.run([STEMD, "--config", str(conf), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert (f"this is a supervisord configuration: convert it with "
            f"`stemctl import supervisord {conf}`") in result.stderr


# ------------------------------------------------------------------ celeryd


CELERYD = """\
# /etc/default/celeryd, as in Celery's daemonization docs
CELERYD_NODES="worker1 worker2"
CELERY_BIN="{celery}"
CELERY_APP="proj"
CELERYD_CHDIR="{chdir}"
CELERYD_OPTS="--pool=solo --time-limit=300 --without-gossip --without-mingle \\
-Ofair:worker1 -Q:2 beta,default"
CELERYD_LOG_FILE="{root}/log/%n%I.log"
CELERYD_PID_FILE="{root}/run/%n.pid"
CELERYD_USER="{user}"
CELERY_CREATE_DIRS=1
export STEM_TEST_MARK={mark}
"""

APP = """\
from celery import Celery
app = Celery("proj", broker="memory://", backend="cache+memory://")
"""


@pytest.mark.slow
def test_celeryd_imported_nodes_run_what_celery_multi_runs(tmp_path: Path) -> None:
    celery = Path(sys.executable).parent / "celery"
    if not celery.exists():
        pytest.skip("celery is not installed (it is in the dev extra)")
    chdir = tmp_path / "app"
    chdir.mkdir()
    (chdir / "proj.py").write_text(APP)
    mark = uuid.uuid4().hex
    source = tmp_path / "celeryd"
    source.write_text(CELERYD.format(celery=celery, chdir=chdir, root=tmp_path,
                                     user=getpass.getuser(), mark=mark))
    out = tmp_path / "stem.env"
    imported = subprocess.run([STEMCTL, "import", "celeryd", str(source), "-o", str(out)],
                              capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr

    # celery multi's own answer, for the arguments the init script passes it
    shown = subprocess.run(
        [str(celery), "multi", "show", "worker1", "worker2", f"--workdir={chdir}",
         f"--pidfile={tmp_path}/run/%n.pid", f"--logfile={tmp_path}/log/%n%I.log",
         "--loglevel=INFO", "--app=proj", "--pool=solo", "--time-limit=300",
         "--without-gossip", "--without-mingle", "-Ofair:worker1", "-Q:2", "beta,default"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    expected = {}
    for line in shown.stdout.splitlines():
        argv = [w for w in shlex.split(line) if w != "--detach"
                and not w.startswith(("--pidfile=", "--logfile="))]
        if argv:
            expected[argv[argv.index("-n") + 1].split("@")[0]] = argv
    assert set(expected) == {"worker1", "worker2"}, shown.stdout

    fleet = Fleet(tmp_path)
    fleet.config = out
    fleet.mark = mark
    overrides = [f"STEMD_MASTER_PID_FILE={tmp_path}/run/stemd.pid",
                 f"STEMD_SOCKET={tmp_path}/run/stemd.sock",
                 f"STEMD_MASTER_LOG_FILE={tmp_path}/log/stemd.log", "STEMD_FORCE_ROOT=1",
                 "STEMD_START_WAIT=60"]
    check = subprocess.run([STEMD, "--config", str(out), "--check", *overrides],
                           capture_output=True, text=True, timeout=60, env=fleet.env())
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        started = subprocess.run([STEMD, "--config", str(out), *overrides],
                                 capture_output=True, text=True, timeout=120, env=fleet.env())
        assert started.returncode == 0, started.stderr
        status = json.loads(subprocess.run(
            [STEMCTL, "--socket", f"{tmp_path}/run/stemd.sock", "status", "--json"],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        running = {n["node"]: psutil.Process(n["pid"]) for n in status}
        assert {name: p.cmdline() for name, p in running.items()} == expected
        assert all(p.cwd() == str(chdir) for p in running.values())
        wait_until(lambda: all("ready." in (tmp_path / "log" / f"{n}.log").read_text()
                               for n in expected if (tmp_path / "log" / f"{n}.log").exists())
                   and all((tmp_path / "log" / f"{n}.log").exists() for n in expected),
                   60, interval=0.2, what="both workers ready")
        subprocess.run([STEMCTL, "--socket", f"{tmp_path}/run/stemd.sock", "shutdown"],
                       capture_output=True, text=True, timeout=120)
    finally:
        with contextlib.suppress(Exception):
            fleet.cleanup()


def test_a_reader_gone_is_no_traceback(tmp_path: Path) -> None:
    """Regression: `stemctl --json import supervisord sv.conf | head -c 300`
    ended in a BrokenPipeError traceback. Now it stops quietly with import's
    own exit status (0: all translated)."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[program:celery]\ncommand=/usr/bin/celery worker\n")
    for json_flag in (("--json",), ()):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([STEMCTL, *json_flag, "import", "supervisord", str(conf)],
                                    stdout=write_end, stderr=subprocess.PIPE, text=True,
                                    timeout=60)
        finally:
            os.close(write_end)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
