"""The configuration loader: both formats, precedence, and errors that name
file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stem_core.config import dump_toml, load_config, sample_envfile
from stem_core.errors import ConfigError
from stem_core.model import diff


def write(tmp_path: Path, text: str, name: str = "stem") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems(path: str, **kw) -> list:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=kw.pop("environ", {}), **kw)
    return info.value.problems


BASE = 'STEMD_COMMAND="/usr/bin/worker --q=default"\n'


def test_env_file_full_example(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + """\
STEMD_NODES="alpha beta gamma"
STEMD_OPTS="-c 8 -c:beta 4 --hostname=%n@%h"
STEMD_STOP_SIGNAL=SIGQUIT
STEMD_UMASK=027
export QUEUE=default
PLAIN=not-exported
""")
    config = load_config(path, environ={})
    assert [n.name for n in config.nodes] == ["alpha", "beta", "gamma"]
    beta = config.node("beta")
    assert beta.argv[:2] == ("/usr/bin/worker", "--q=default")
    assert "4" in beta.argv and "8" not in beta.argv
    assert config.node("alpha").argv[3] == "8"
    assert any(a.startswith("--hostname=beta@") for a in beta.argv)
    assert beta.policy.stop_signal == "QUIT" and beta.run_as.umask == 0o027
    assert beta.env["QUEUE"] == "default" and "PLAIN" not in beta.env
    assert beta.env["STEMD_NODE"] == "beta" and beta.env["STEMD_PROGRAM"] == "worker"
    assert beta.pid_file == "/var/run/stem/beta.pid"


def test_count_and_default_nodes(tmp_path: Path) -> None:
    assert [n.name for n in load_config(write(tmp_path, BASE), environ={}).nodes] == ["worker1"]
    path = write(tmp_path, BASE + "STEMD_NODES=3\n")
    assert [n.index for n in load_config(path, environ={}).nodes] == [1, 2, 3]


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "\nSTEMD_NODE=3\nSTEMD_STOP_TIMEOUT=ten\n")
    found = problems(path)
    assert len(found) == 2  # every problem, not just the first
    unknown, bad = found
    assert (unknown.line, unknown.key) == (3, "STEMD_NODE")
    assert "STEMD_NODES" in (unknown.hint or "")
    assert (bad.line, bad.key, bad.file) == (4, "STEMD_STOP_TIMEOUT", path)
    assert f"{path}:4" in str(bad)


def test_alias_and_scheduler(tmp_path: Path) -> None:
    path = write(tmp_path, 'STEM_WORKER_COMMAND=/usr/bin/w\nSTEM_SCHEDULER_COMMAND="/usr/bin/s -B"'
                 '\nSTEMD_OPTS=-c4\n')
    config = load_config(path, environ={})
    assert [(n.name, n.program) for n in config.nodes] == [("worker1", "worker"),
                                                           ("scheduler", "scheduler")]
    assert config.node("scheduler").argv == ("/usr/bin/s", "-B")  # no worker opts


def test_scheduler_only_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "STEM_SCHEDULER_COMMAND=/usr/bin/s\n"), environ={})
    assert [n.name for n in config.nodes] == ["scheduler"]


def test_missing_command(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, "STEMD_NODES=2\n"))
    assert problem.key == "STEMD_COMMAND"


def test_precedence_file_environment_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "STEMD_NODES=2\nSTEMD_STOP_TIMEOUT=3\n")
    config = load_config(path, environ={"STEMD_NODES": "4", "STEMD_STOP_TIMEOUT": "5"},
                         overrides={"STEMD_STOP_TIMEOUT": "7"})
    assert len(config.nodes) == 4
    assert config.nodes[0].policy.stop_timeout == 7


def test_bad_environment_override_is_reported(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, BASE), environ={"STEMD_RESTART": "sometimes"})
    assert problem.file == "environment" and problem.key == "STEMD_RESTART"


def test_unknown_command_line_override(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, BASE), overrides={"STEMD_NOPE": "1"})
    assert problem.key == "STEMD_NOPE"


def test_node_name_errors_name_the_key(tmp_path: Path) -> None:
    for value in ('"a a"', '"../x"', "0", "-1", '""'):
        (problem,) = problems(write(tmp_path, BASE + f"STEMD_NODES={value}\n"))
        assert problem.key == "STEMD_NODES" and problem.line == 2


def test_shared_pid_file_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "STEMD_NODES=2\nSTEMD_PID_FILE=/run/x.pid\n"
                 "STEMD_LOG_FILE=logs/%n.log\n")
    messages = " ".join(p.message for p in problems(path))
    assert "shares its PID file" in messages and "not an absolute path" in messages


TOML = """\
[stemd]
socket = "/run/stem/s.sock"
user = "nobody"

[programs.worker]
command = "/usr/bin/worker --queues=default"
nodes = ["alpha", "beta"]
opts = "-c 8 -c:beta 4"
environment = { QUEUE = "default" }
stop_timeout = 3

[programs.beat]
command = "/usr/bin/beat"

[programs.pool]
command = "/usr/bin/pool %i"
nodes = 2
"""


def test_toml_programs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TOML, "stem.toml"), environ={})
    assert [(n.name, n.program) for n in config.nodes] == [
        ("alpha", "worker"), ("beta", "worker"), ("beat", "beat"), ("pool1", "pool"),
        ("pool2", "pool")]
    assert config.master.socket == "/run/stem/s.sock"
    assert config.node("beat").run_as.user == "nobody"  # [stemd] user is the default
    assert config.node("pool2").argv == ("/usr/bin/pool", "2")
    assert [n.name for n in config.select(["worker", "beat"])] == ["alpha", "beta", "beat"]


def test_toml_errors_name_line_and_key(tmp_path: Path) -> None:
    text = TOML.replace("stop_timeout = 3", "stop_timeout = 3\nstop_timout = 4") \
        .replace('user = "nobody"', 'user = "nobody"\nsocet = "x"')
    found = problems(write(tmp_path, text, "stem.toml"))
    by_message = {p.message: p for p in found}
    typo = by_message["unknown key 'stop_timout' in [programs.worker]"]
    assert typo.line == 12 and "stop_timeout" in (typo.hint or "")
    assert by_message["unknown key 'socet' in [stemd]"].line == 4


def test_toml_syntax_error_line(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, "[stemd]\nsocket = \n", "bad.toml"))
    assert problem.line == 2 and "invalid TOML" in problem.message


def test_toml_duplicate_node_across_programs(tmp_path: Path) -> None:
    text = TOML + '\n[programs.other]\ncommand = "/bin/x"\nnodes = ["alpha"]\n'
    assert any("defined twice" in p.message for p in problems(write(tmp_path, text, "s.toml")))


def test_dump_toml_round_trip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TOML, "stem.toml"), environ={})
    again = load_config(write(tmp_path, dump_toml(config), "again.toml"), environ={})
    assert again.nodes == config.nodes and again.master == config.master
    env_config = load_config(write(tmp_path, BASE + "STEMD_NODES='a b'\nexport X=1\n"),
                             environ={})
    env_again = load_config(write(tmp_path, dump_toml(env_config), "env.toml"), environ={})
    assert env_again.nodes == env_config.nodes


def test_diff(tmp_path: Path) -> None:
    old = load_config(write(tmp_path, BASE + "STEMD_NODES='a b c'\nSTEMD_OPTS='-x:b 1'\n"),
                      environ={})
    new = load_config(write(tmp_path, BASE + "STEMD_NODES='a b d'\nSTEMD_OPTS='-x:b 2'\n"),
                      environ={})
    change = diff(old, new)
    assert [n.name for n in change.added] == ["d"]
    assert [n.name for n in change.removed] == ["c"]
    assert [n.name for n in change.changed] == ["b"]
    assert [n.name for n in change.unchanged] == ["a"]
    assert diff(new, new).empty


def test_sample_envfile_loads(tmp_path: Path) -> None:
    """The sample parses, and with its examples uncommented it is valid."""
    sample = sample_envfile()
    load_config(write(tmp_path, sample + BASE), environ={})
    lines = [line[1:] for line in sample.splitlines()
             if line.startswith("#STEM") or line.startswith("#export")]
    load_config(write(tmp_path, "\n".join(lines) + "\n"), environ={})
