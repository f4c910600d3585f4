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


def test_command_opts_and_node_errors_name_line_and_key(tmp_path: Path) -> None:
    """Regression: an unsplittable command, a bad STEMD_OPTS selector and a node defined
    twice named the program ("worker: opts") but neither the line nor the key as written."""
    env = 'STEMD_NODES="a b"\n\nSTEMD_COMMAND="/bin/echo a\\"b c"\nSTEMD_OPTS="-c:zeta 4"\n'
    found = {p.key: p for p in problems(write(tmp_path, env))}
    assert found["STEMD_COMMAND"].line == 3 and "No closing quotation" in found[
        "STEMD_COMMAND"].message
    assert found["STEMD_OPTS"].line == 4 and "zeta" in found["STEMD_OPTS"].message
    text = TOML + '\n[programs.other]\ncommand = "/bin/x"\nnodes = ["alpha"]\n'
    (twice,) = [p for p in problems(write(tmp_path, text, "s.toml")) if "twice" in p.message]
    assert twice.key == "[programs.other] nodes"
    assert twice.line == len(text.splitlines())


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


# ------------------------------------ issue 14 §2: what the model could not say

FEATURES = """\
[programs.web]
command = "/usr/bin/web"
priority = 10
exitcodes = [0, 2]
stderr_log_file = "/var/log/stem/%n.err"

[programs.worker]
command = "/usr/bin/worker %i"
nodes = 4
name = "%p_%02i"
autostart = false
"""


def test_toml_autostart_exitcodes_priority_stderr_and_name_pattern(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FEATURES, "stem.toml"), environ={})
    assert [n.name for n in config.nodes] == ["web", "worker_01", "worker_02", "worker_03",
                                              "worker_04"]
    web, w3 = config.node("web"), config.node("worker_03")
    assert w3.argv == ("/usr/bin/worker", "3") and w3.index == 3
    assert w3.pid_file == "/var/run/stem/worker_03.pid"
    assert (web.autostart, w3.autostart) == (True, False)
    assert (web.priority, w3.priority) == (10, 999)
    assert web.policy.exitcodes == (0, 2) and w3.policy.exitcodes == (0,)
    assert web.stderr_log_file == "/var/log/stem/web.err"
    assert w3.stderr_log_file == w3.log_file == "/var/log/stem/worker_03.log"
    # written back, the file runs the same nodes in the same order
    again = load_config(write(tmp_path, dump_toml(config), "again.toml"), environ={})
    assert again.nodes == config.nodes


def test_env_file_keys_for_the_new_features(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "STEMD_NODES=2\nSTEMD_NODE_NAME='%p-%i'\n"
                 "STEMD_AUTOSTART=0\nSTEMD_EXITCODES='0,2 3'\n"
                 "STEMD_STDERR_LOG_FILE=/var/log/stem/%n.err\n")
    config = load_config(path, environ={})
    assert [n.name for n in config.nodes] == ["worker-1", "worker-2"]
    node = config.node("worker-2")
    assert node.autostart is False and node.policy.exitcodes == (0, 2, 3)
    assert node.stderr_log_file == "/var/log/stem/worker-2.err"


@pytest.mark.parametrize(("line", "message"), [
    ("exitcodes = [256]", "exit status out of range"),
    ("exitcodes = []", "empty"),
    ('exitcodes = ["x"]', "expected an exit status"),
    ('priority = "high"', "expected a whole number"),
    ("autostart = 2", "expected a boolean"),
    ('name = "%p"\nnodes = 2', "gives 'w' twice"),
    ('name = "%p_%n"\nnodes = 2', "unknown field %n"),
    ('name = "%p_%02p"\nnodes = 2', "a width applies to %i only"),
    ('name = "%p_%i"\nnodes = ["a", "b"]', "applies to a count of nodes"),
    ('name = "../%i"\nnodes = 2', "contains '/'"),
])
def test_new_keys_errors_name_line_and_key(tmp_path: Path, line: str, message: str) -> None:
    text = f'[programs.w]\ncommand = "/bin/w"\n{line}\n'
    (problem,) = problems(write(tmp_path, text, "stem.toml"))
    assert message in problem.message
    assert problem.line is not None and problem.line >= 3 and "[programs.w]" in problem.key


def test_stderr_log_file_is_checked_against_master_files(tmp_path: Path) -> None:
    text = ('[stemd]\npid_file = "/run/stem/stemd.pid"\n[programs.w]\ncommand = "/bin/w"\n'
            'stderr_log_file = "/run/stem/stemd.pid"\n')
    (problem,) = problems(write(tmp_path, text, "stem.toml"))
    assert "stderr log file of node w" in problem.message and "master PID file" in problem.message
    assert problem.line == 5 and problem.key == "[programs.w] stderr_log_file"
    text = ('[programs.a]\ncommand = "/bin/a"\n[programs.b]\ncommand = "/bin/b"\n'
            'stderr_log_file = "/var/run/stem/a.pid"\n')
    (problem,) = problems(write(tmp_path, text, "stem.toml"))
    assert "is the PID file of node a" in problem.message
    relative = '[programs.w]\ncommand = "/bin/w"\nstderr_log_file = "w.err"\n'
    (problem,) = problems(write(tmp_path, relative, "stem.toml"))
    assert "not an absolute path" in problem.message
    # a shared stderr log, or the stdout log of another node, is fine (O_APPEND)
    shared = ('[programs.w]\ncommand = "/bin/w"\nnodes = 2\n'
              'stderr_log_file = "/var/log/stem/all.log"\nlog_file = "/var/log/stem/all.log"\n')
    load_config(write(tmp_path, shared, "stem.toml"), environ={})


def test_autostart_and_priority_change_restarts_nothing(tmp_path: Path) -> None:
    old = load_config(write(tmp_path, FEATURES, "stem.toml"), environ={})
    text = FEATURES.replace("priority = 10", "priority = 5").replace("autostart = false", "")
    new = load_config(write(tmp_path, text, "stem.toml"), environ={})
    assert diff(old, new).empty
    text = FEATURES.replace("exitcodes = [0, 2]", "exitcodes = [0]")
    assert [n.name for n in diff(old, load_config(write(tmp_path, text, "stem.toml"),
                                                  environ={})).changed] == ["web"]


def test_environment_overrides_do_not_rename_toml_nodes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FEATURES, "stem.toml"),
                         environ={"STEMD_NODE_NAME": "%p-x%i", "STEMD_AUTOSTART": "0"})
    assert config.nodes[0].name == "web" and config.nodes[0].autostart is False


def test_stemctl_waits_for_each_priority_group_in_turn(tmp_path: Path) -> None:
    """stemctl's derived timeout for start and stop: the groups start one
    after the other, so their waits add up."""
    import argparse

    from stemd.ctl import ANSWER_TIMEOUT, Ctl

    text = ('[programs.a]\ncommand = "/bin/a"\nstart_secs = 10\nstart_retries = 0\n'
            'stop_timeout = 7\npriority = 1\n'
            '[programs.b]\ncommand = "/bin/b"\nstart_secs = 20\nstart_retries = 0\n'
            'stop_timeout = 3\n')
    path = write(tmp_path, text, "stem.toml")

    def wait(command: str) -> float:
        args = argparse.Namespace(config=path, socket=None, json=False, command=command,
                                  timeout=None)
        return Ctl(args).node_wait() - ANSWER_TIMEOUT
    assert wait("start") == 30 and wait("stop") == 10
    same = write(tmp_path, text.replace("priority = 1\n", ""), "same.toml")
    args = argparse.Namespace(config=same, socket=None, json=False, command="start",
                              timeout=None)
    assert Ctl(args).node_wait() - ANSWER_TIMEOUT == 20  # one group: the longest


def test_scale_names_by_the_pattern_and_refuses_one_without_an_index(tmp_path: Path) -> None:
    """stemctl scale names new nodes as the file's `name` pattern would. A
    pattern without %i names one node only: scaling it must be refused, not
    loop for ever looking for a free name (it would freeze the master)."""
    import signal

    from stem_core.config import scaled
    from stem_core.errors import BadValue

    def write(pattern: str) -> Path:
        path = tmp_path / "stem.toml"
        path.write_text(f'[programs.worker]\ncommand = "/bin/sleep 100"\nnodes = 1\n'
                        f'name = "{pattern}"\n')
        return path

    config = load_config(str(write("%p_%02i")))
    assert [n.name for n in scaled(config, "worker", 3).nodes] == \
        ["worker_01", "worker_02", "worker_03"]
    config = load_config(str(write("%p-main")))
    assert [n.name for n in config.nodes] == ["worker-main"]

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("scaled() did not return: it looped looking for a name")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(BadValue, match="same name"):
            scaled(config, "worker", 2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
