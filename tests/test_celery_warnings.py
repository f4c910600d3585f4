"""Celery migration warnings (issue 10 §3): what a celery multi user carries
over and stemd does not mean. Each warning names the file, the line and the
fix; none makes the configuration invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from stem_core.config import load_config
from stem_core.errors import ConfigError, Problem
from stem_core.migration import argv_findings

BASE = 'STEMD_COMMAND="/srv/venv/bin/celery -A proj worker -n %n@%h"\n'


def warnings_of(tmp_path: Path, text: str, name: str = "stem") -> list[Problem]:
    path = tmp_path / name
    path.write_text(text)
    return list(load_config(str(path), environ={}).warnings)


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_a_clean_celery_file_has_no_warnings(tmp_path: Path) -> None:
    assert warnings_of(tmp_path, BASE + 'STEMD_NODES="w1 w2"\nSTEMD_OPTS="-c 4 -Q:w2 slow"\n'
                       "export CELERY_BROKER_URL=redis://localhost\nexport STEM_APP=x\n") == []


def test_percent_i_in_the_log_file(tmp_path: Path) -> None:
    # The master opens one file per node; it created a file named w1%I.log.
    w = only(warnings_of(tmp_path, BASE + "STEMD_LOG_FILE=/var/log/celery/%n%I.log\n"))
    assert (w.file, w.line, w.key) == (str(tmp_path / "stem"), 2, "STEMD_LOG_FILE")
    assert w.message.endswith("would create /var/log/celery/worker1%I.log")
    assert "--logfile=/var/log/celery/%n%I.log in STEMD_OPTS" in (w.hint or "")


def test_percent_percent_i_is_a_literal_not_a_warning(tmp_path: Path) -> None:
    assert warnings_of(tmp_path, BASE + "STEMD_LOG_FILE=/var/log/%n-%%I.log\n") == []


def test_percent_i_in_the_pid_file(tmp_path: Path) -> None:
    w = only(warnings_of(tmp_path, BASE + "STEMD_PID_FILE=/run/stem/%n%I.pid\n"))
    assert w.key == "STEMD_PID_FILE" and "%I" in w.message


@pytest.mark.parametrize(("option", "fragment"), [
    ("--detach", "fork into the background"),
    ("-D", "fork into the background"),
    ("--pidfile=/run/celery/%n.pid", "PID file of its own"),
    ("--logfile=/var/log/celery/%n.log", "log to a file of its own"),
    ("-f /var/log/celery/%n.log", "log to a file of its own"),
])
def test_options_that_fight_stemd_in_the_command(tmp_path: Path, option: str,
                                                 fragment: str) -> None:
    text = f'STEMD_NODES=1\nSTEMD_COMMAND="celery -A proj worker {option}"\n'
    w = only(warnings_of(tmp_path, text))
    assert (w.line, w.key) == (2, "STEMD_COMMAND")
    assert fragment in w.message and w.hint


@pytest.mark.parametrize("option", ["--detach", "-D", "--pidfile:w2=/x.pid", "--logfile /x"])
def test_options_that_fight_stemd_in_opts(tmp_path: Path, option: str) -> None:
    w = only(warnings_of(tmp_path, BASE + f'STEMD_NODES="w1 w2"\nSTEMD_OPTS="-c 4 {option}"\n'))
    assert (w.line, w.key) == (3, "STEMD_OPTS")


def test_logfile_with_percent_i_is_deliberate(tmp_path: Path) -> None:
    # What the %I warning itself recommends: one log per pool process.
    text = BASE + 'STEMD_OPTS="--logfile=/var/log/celery/%n%I.log"\n'
    assert warnings_of(tmp_path, text) == []


def test_dash_f_is_only_celery_s_logfile_for_celery() -> None:
    assert argv_findings(["/usr/bin/tail", "-f", "/x"], celery=False) == []
    assert argv_findings(["celery", "-A", "p", "worker", "-f", "/x"], celery=True)


def test_celery_multi_in_the_command(tmp_path: Path) -> None:
    w = only(warnings_of(tmp_path, 'STEMD_NODES=1\nSTEMD_COMMAND="celery multi start w1 -A p"\n'))
    assert "celery multi starts detached workers" in w.message
    assert 'STEMD_COMMAND="celery -A proj worker"' in (w.hint or "")


def test_several_celery_nodes_without_a_node_name(tmp_path: Path) -> None:
    # celery multi adds -n %n@%h; stemd does not.
    text = 'STEMD_NODES="w1 w2"\nSTEMD_COMMAND="celery -A proj worker"\nSTEMD_OPTS="-c 4"\n'
    w = only(warnings_of(tmp_path, text))
    assert (w.line, w.key) == (3, "STEMD_OPTS")
    assert "celery@HOST" in w.message and w.hint == "add -n %n@%h to STEMD_OPTS"
    assert warnings_of(tmp_path, text.replace('"-c 4"', '"-c 4 --hostname=%n@%h"')) == []
    assert warnings_of(tmp_path, text.replace('"w1 w2"', "w1")) == []  # one node: no clash


@pytest.mark.parametrize(("key", "advice"), [
    ("CELERYD_NODES", "STEMD_NODES"),
    ("CELERYD_OPTS", "STEMD_OPTS"),
    ("CELERY_BIN", "STEMD_COMMAND"),
    ("CELERY_APP", "-A APP in STEMD_COMMAND"),
    ("CELERYD_CHDIR", "STEMD_CHDIR"),
    ("CELERYD_USER", "STEMD_USER"),
    ("CELERYD_GROUP", "STEMD_GROUP"),
    ("CELERYD_LOG_FILE", "%I does not"),
    ("CELERYD_PID_FILE", "STEMD_PID_FILE"),
    ("CELERY_CREATE_DIRS", "STEMD_CREATE_DIRS"),
    ("CELERYD_LOG_LEVEL", "--loglevel=LEVEL to STEMD_OPTS; STEMD_LOG_LEVEL is"),
    ("CELERYD_MULTI", "stemd replaces celery multi"),
    ("CELERYBEAT_OPTS", "STEM_SCHEDULER_COMMAND"),
    ("CELERYD_CONCURRENCY", "-c N"),
])
def test_celery_init_script_keys_say_what_does_the_job(tmp_path: Path, key: str,
                                                       advice: str) -> None:
    # Exporting them changes nothing: the column is the name's.
    for line, column in ((f"{key}=x\n", 1), (f"export {key}=x\n", 8)):
        w = only(warnings_of(tmp_path, BASE + line))
        assert (w.file, w.line, w.column, w.key) == (str(tmp_path / "stem"), 2, column, key)
        assert advice in (w.hint or ""), w.hint


def test_other_celery_names_are_fine_when_exported(tmp_path: Path) -> None:
    assert warnings_of(tmp_path, BASE + "export CELERY_CONFIG_MODULE=celeryconfig\n") == []
    w = only(warnings_of(tmp_path, BASE + "CELERY_CONFIG_MODULE=celeryconfig\n"))
    assert "not exported" in w.message
    assert (w.hint or "").startswith("export CELERY_CONFIG_MODULE=")


@pytest.mark.parametrize(("name", "meant"), [
    ("STEM_CREATE_DIRS", "STEMD_CREATE_DIRS"),
    ("STEM_NODES", "STEMD_NODES"),
    ("STEM_STOP_TIMEOUT", "STEMD_STOP_TIMEOUT"),
])
def test_stem_prefix_typos(tmp_path: Path, name: str, meant: str) -> None:
    w = only(warnings_of(tmp_path, BASE + f"{name}=1\n"))
    assert w.key == name and w.hint == f"did you mean {meant}?"


def test_known_stem_names_are_not_typos(tmp_path: Path) -> None:
    text = 'STEM_WORKER_COMMAND="/bin/sleep 1"\nSTEM_SCHEDULER_COMMAND="/bin/sleep 2"\n'
    assert warnings_of(tmp_path, text) == []


@pytest.mark.parametrize(("key", "advice"), [
    ("STEMD_CONCURRENCY", "-c N (--concurrency=N) in STEMD_OPTS"),  # once: STEMD_SOCKET
    ("STEMD_QUEUES", "-Q NAMES"),
    ("STEMD_LOGLEVEL", "--loglevel=LEVEL in STEMD_OPTS"),
    ("STEMD_APP", "-A APP in STEMD_COMMAND"),
    ("STEMD_POOL", "-P POOL"),
])
def test_unknown_stemd_keys_stay_errors_with_a_celery_hint(tmp_path: Path, key: str,
                                                           advice: str) -> None:
    path = tmp_path / "stem"
    path.write_text(BASE + f"{key}=4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    problem = only(caught.value.problems)
    assert (problem.line, problem.key) == (2, key)
    assert advice in (problem.hint or "")
    assert "STEMD_SOCKET" not in (problem.hint or "")


def test_the_scheduler_command_is_checked_too(tmp_path: Path) -> None:
    w = only(warnings_of(tmp_path, BASE + 'STEM_SCHEDULER_COMMAND="celery -A p beat --detach"\n'))
    assert (w.line, w.key) == (2, "STEM_SCHEDULER_COMMAND")


def test_toml_programs_are_checked(tmp_path: Path) -> None:
    text = """\
[programs.worker]
command = "celery -A proj worker --pidfile=/x/%n.pid"
nodes = ["a", "b"]
log_file = "/var/log/%n%I.log"
"""
    found = warnings_of(tmp_path, text, "stem.toml")
    assert [(w.line, w.key) for w in found] == [
        (2, "[programs.worker] command"), (2, "[programs.worker] command"),
        (4, "[programs.worker] log_file")]


def test_warnings_do_not_change_the_configuration_s_value(tmp_path: Path) -> None:
    clean = tmp_path / "a"
    clean.write_text(BASE)
    warned = tmp_path / "b"
    warned.write_text(BASE + "CELERYD_NODES=3\n")
    one, two = load_config(str(clean), environ={}), load_config(str(warned), environ={})
    assert two.warnings and not one.warnings
    assert one.nodes == two.nodes and one.master == two.master


def test_warnings_are_bounded(tmp_path: Path) -> None:
    found = warnings_of(tmp_path, BASE + "".join(f"CELERYD_NODES=x{i}\n" for i in range(80)))
    assert len(found) == 51 and found[-1].message == "30 more warnings not shown"
