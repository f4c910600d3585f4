"""stem_core/locate.py: the master's socket and PID file, read even from a file with errors
(issue 12: a typo while the fleet runs must not hide the running master)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stem_core.errors import ConfigError, Problem
from stem_core.locate import DEFAULT_CONFIG, DEFAULT_MASTER_PID_FILE, DEFAULT_SOCKET, master_path


def locate(tmp_path: Path, text: str, key: str = "STEMD_SOCKET",
           name: str = "stem.env") -> tuple[str, list[Problem]]:
    path = tmp_path / name
    path.write_text(text)
    problems: list[Problem] = []
    return master_path(key, str(path), {}, problems), problems


def test_a_valid_file_is_read_strictly(tmp_path: Path) -> None:
    assert locate(tmp_path, "STEMD_SOCKET=/a.sock\nSTEMD_SOCKET=/b.sock\n") == ("/b.sock", [])


@pytest.mark.parametrize("broken", ['STEMD_OPTS="--broken\n', "STEMD_NODES=$(id -u)\n",
                                    "if true; then\n", "STEMD_X=`reboot`\n"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_the_keys_own_line_is_read_despite_errors_elsewhere(tmp_path: Path, broken: str,
                                                            where: str) -> None:
    good = "RUN=/srv/run\nexport STEMD_SOCKET=\"$RUN/s.sock\"  # comment\n"
    text = broken + good if where == "before" else good + broken
    value, problems = locate(tmp_path, text)
    assert value == "/srv/run/s.sock"
    assert problems and all(p.file and p.file.endswith("stem.env") for p in problems)


def test_a_file_with_errors_that_does_not_set_the_key_gives_the_default(tmp_path: Path) -> None:
    value, problems = locate(tmp_path, 'STEMD_OPTS="--broken\n')
    assert value == DEFAULT_SOCKET and problems


@pytest.mark.parametrize("text", ['STEMD_SOCKET="/a.sock\n', "STEMD_SOCKET=$(pwd)/s\n",
                                  "STEMD_SOCKET=$UNDEFINED/s\nSTEMD_OPTS='\n",
                                  "A=1 STEMD_SOCKET=/x.sock ;\n"])
def test_a_broken_key_line_is_an_error_never_the_default(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        locate(tmp_path, text)


def test_the_error_names_the_keys_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        locate(tmp_path, "A=1\nB=2\nSTEMD_SOCKET=\"/a.sock\n")
    assert info.value.problems[0].line == 3


def test_toml_is_read_leniently_too(tmp_path: Path) -> None:
    text = '[stemd]\nsocket = "/t.sock"\npid_file = "/t.pid"\n[programs.w]\ncommand = "x\n'
    assert locate(tmp_path, text, name="s.toml")[0] == "/t.sock"
    assert locate(tmp_path, text, "STEMD_MASTER_PID_FILE", name="s.toml")[0] == "/t.pid"
    text = '[programs.w]\nsocket = "/not-this.sock"\ncommand = "x\n'
    assert locate(tmp_path, text, name="s.toml")[0] == DEFAULT_SOCKET


def test_a_named_file_that_does_not_exist_is_an_error_never_the_default(tmp_path: Path) -> None:
    """Regression: `stemctl -c /etc/default/stem-biling status` (a typo) used
    to act on the default master, another fleet's. Even with the key in the
    environment: the file was named, and does not exist."""
    missing = str(tmp_path / "stem-biling")
    for environ in ({}, {"STEMD_SOCKET": "/env.sock"}):
        with pytest.raises(ConfigError) as info:
            master_path("STEMD_SOCKET", missing, environ, [])
        problem = info.value.problems[0]
        assert problem.file == missing and "configuration file not found" in str(problem)


@pytest.mark.parametrize("spelled", [DEFAULT_CONFIG, "/etc//default/./stem"])
def test_the_default_file_may_be_missing(spelled: str) -> None:
    """/etc/default/stem, named or not, may be absent (the init script and
    the unit name it): its master is the default one."""
    if Path(DEFAULT_CONFIG).exists():
        pytest.skip(f"{DEFAULT_CONFIG} exists on this machine")
    assert master_path("STEMD_SOCKET", spelled, {}, []) == DEFAULT_SOCKET
    assert master_path("STEMD_SOCKET", spelled, {"STEMD_SOCKET": "/e.sock"}, []) == "/e.sock"


@pytest.mark.parametrize("key", ["STEMD_SOCKET", "STEMD_MASTER_PID_FILE"])
def test_the_shipped_sample_with_a_typo_gives_the_defaults(tmp_path: Path, key: str) -> None:
    """Regression: etc/default/stem as shipped has '#STEMD_SOCKET=...' and
    '#STEMD_MASTER_PID_FILE=...' in comments; with a typo elsewhere, stemctl took those for
    assignments it could not read and refused the file, so the init script's stop, restart and
    status failed while the master ran (deployment.md §3: the defaults are used)."""
    shipped = Path(__file__).resolve().parents[1] / "etc" / "default" / "stem"
    text = shipped.read_text()
    assert f"#{key}=" in text  # what this test is about
    value, problems = locate(tmp_path, text + 'STEMD_OPTS="--typo\n', key)
    assert problems  # the typo is reported, and the defaults are used
    assert value == (DEFAULT_SOCKET if key == "STEMD_SOCKET" else DEFAULT_MASTER_PID_FILE)
