"""Bounds on what a configuration file can cost (issue 11 §2, "env file
bounds"): its size, the problems reported, and the "did you mean" search.
CPU time, not wall time, so other tests' load does not count."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stem_core.config import load_config
from stem_core.envfile import MAX_CONFIG_BYTES, parse_envfile, read_envfile
from stem_core.errors import MAX_REPORTED, ConfigError

BASE = 'STEMD_COMMAND="/bin/sleep 100"\n'


def undefined(count: int) -> str:
    return "".join(f"V{i}=$UNDEF{i}\n" for i in range(count))


def load_problems(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={} if environ is None else environ)
    return caught.value


def test_4000_undefined_variables_cost_well_under_a_second(tmp_path: Path) -> None:
    # Every line referred to an undefined variable, and each one's hint ran
    # difflib over every name assigned before it: 17.7 s for 4,000 lines.
    path = tmp_path / "stem"
    path.write_text(BASE + undefined(4000))
    environ = {f"ENV_NAME_{i}": "x" for i in range(2000)}  # a big environment too
    started = time.process_time()
    error = load_problems(path, environ)
    assert time.process_time() - started < 1.0
    assert "UNDEF0" in error.problems[0].message


def test_3000_errors_report_the_first_50_and_a_count(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    path.write_text(BASE + undefined(3000))
    error = load_problems(path)
    assert len(error.problems) == MAX_REPORTED + 1 == 51
    assert [p.line for p in error.problems[:MAX_REPORTED]] == list(range(2, 52))
    last = error.problems[-1]
    assert last.message == "2950 more errors not shown"
    assert last.file == str(path)
    assert error.omitted == 2950


def test_the_first_50_are_the_first_by_line_whatever_finds_them() -> None:
    # The decoder's findings (a NUL on the last line) are recorded before the
    # lexer's: they must not push out earlier lines' problems.
    text = undefined(100) + "Z=\x00\n"
    with pytest.raises(ConfigError) as caught:
        parse_envfile(text, "f", {})
    lines = [p.line for p in caught.value.problems[:MAX_REPORTED]]
    assert lines == list(range(1, MAX_REPORTED + 1))
    assert caught.value.problems[-1].message == "51 more errors not shown"


def test_many_unknown_settings_are_bounded_too(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    path.write_text(BASE + "".join(f"STEMD_FOO{i}=1\n" for i in range(20_000)))
    started = time.process_time()
    error = load_problems(path)
    assert time.process_time() - started < 2.0
    assert len(error.problems) == MAX_REPORTED + 1
    assert error.problems[-1].message == "19950 more errors not shown"


def test_a_few_errors_are_all_reported_without_a_count() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_envfile(undefined(3), "f", {})
    assert len(caught.value.problems) == 3
    assert caught.value.omitted == 0


def test_did_you_mean_still_works() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_envfile("APP_DIR=/srv\nSTEMD_CHDIR=$APPDIR\n", "f", {})
    assert "did you mean $APP_DIR?" in (caught.value.problems[0].hint or "")


def _refused_in_a_child(path: str) -> tuple[str, float, int]:
    """Load ``path`` in a fresh interpreter; its message, CPU seconds and
    peak RSS in KiB (a fresh process, so the peak is this load's)."""
    code = (
        "import sys, time\n"
        "from stem_core.config import load_config\n"
        "from stem_core.errors import ConfigError\n"
        "t = time.process_time()\n"
        "try:\n"
        "    load_config(sys.argv[1], environ={})\n"
        "    print('loaded')\n"
        "except ConfigError as e:\n"
        "    print(e.problems[0])\n"
        "print(time.process_time() - t)\n"
        # VmHWM, the peak of this process's own memory: ru_maxrss would also
        # count the parent's peak (exec folds the old mm's into it), and a
        # long pytest worker is far larger than any load here
        "print(next(int(l.split()[1]) for l in open('/proc/self/status')\n"
        "           if l.startswith('VmHWM:')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    return out[0], float(out[1]), int(out[2])


@pytest.mark.parametrize("name", ["stem", "stem.toml"])
def test_a_100_mb_file_is_refused_before_it_is_read(tmp_path: Path, name: str) -> None:
    # 100 MB of garbage took 15.6 s and 1.24 GB to reject.
    path = tmp_path / name
    with open(path, "wb") as f:
        f.write(b"A=1\n" * 1024)
        f.truncate(100 * 1024 * 1024)  # sparse: the test itself stays cheap
    message, cpu, rss_kib = _refused_in_a_child(str(path))
    assert message == (f"{path}: configuration file too large: 104857600 bytes, the limit is "
                       f"{MAX_CONFIG_BYTES} bytes (1 MiB) (a stemd configuration is a few "
                       "kilobytes: check that --config names the right file)")
    assert cpu < 0.5
    assert rss_kib < 80 * 1024  # the interpreter and its imports, not the file


def test_an_endless_stream_is_refused_after_the_limit(tmp_path: Path) -> None:
    # st_size says nothing for a device or a pipe: the read itself is bounded.
    # A FIFO of our own, fed zeros (not /dev/zero: a root stemd refuses a
    # world-writable configuration before reading it, see stem_core/trust.py).
    fifo = tmp_path / "stream"
    os.mkfifo(fifo, 0o600)
    feeder = subprocess.Popen(["/bin/sh", "-c", 'exec cat /dev/zero > "$1"', "sh", str(fifo)],
                              stderr=subprocess.DEVNULL)
    try:
        message, _cpu, rss_kib = _refused_in_a_child(str(fifo))
    finally:
        feeder.kill()
        feeder.wait()
    assert "configuration file too large: more than 1048576 bytes" in message
    assert rss_kib < 80 * 1024


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    body = BASE.encode()
    path.write_bytes(body + b"#" * (MAX_CONFIG_BYTES - len(body)))
    assert os.path.getsize(path) == MAX_CONFIG_BYTES
    assert [a.name for a in read_envfile(str(path), {})] == ["STEMD_COMMAND"]
    path.write_bytes(body + b"#" * (MAX_CONFIG_BYTES - len(body) + 1))
    with pytest.raises(ConfigError, match="too large"):
        read_envfile(str(path), {})
