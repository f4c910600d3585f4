"""stem_core.importers.supervisord: a supervisord ini -> stemd TOML (pure parts).

Each sample is a real file written here; the result is written with tomli-w
and loaded with stemd's own loader, so a translation that stemd would reject
fails the test.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomli_w

from stem_core.config import load_config
from stem_core.errors import ConfigError
from stem_core.importers import foreign_format
from stem_core.importers.supervisord import import_supervisord, parse_environment

ROOT = Path(__file__).resolve().parent.parent
ENV = {"HOME": "/home/op", "PATH": "/usr/bin:/bin"}


def _import(path: Path, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return import_supervisord(str(path), environ=ENV if environ is None else environ,
                              host_node_name="testhost")


def _load(tmp_path: Path, toml: dict) -> object:  # type: ignore[type-arg]
    out = tmp_path / "stem.toml"
    out.write_text(tomli_w.dumps(toml))
    return load_config(str(out), environ={})


def _notes(result) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {n.setting: n for n in result.notes}


def test_numprocs_becomes_an_explicit_node_list_with_templated_paths(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\n"
        "[program:celery]\n"
        "command=/usr/bin/celery -A proj worker -n %(program_name)s_%(process_num)02d@%%h\n"
        "process_name=%(program_name)s_%(process_num)02d\n"
        "numprocs=3\n"
        "stdout_logfile=/var/log/app/%(program_name)s_%(process_num)02d.log\n"
        "directory=%(here)s\n")
    result = _import(conf)
    table = result.toml["programs"]["celery"]
    assert table["nodes"] == ["celery_00", "celery_01", "celery_02"]
    # the process name became %n; supervisord's literal %% stays a literal % for stemd
    assert table["command"] == "/usr/bin/celery -A proj worker -n %n@%%h"
    assert table["log_file"] == "/var/log/app/%n.log"
    assert table["directory"] == str(tmp_path)
    config = _load(tmp_path, result.toml)
    argv = {n.name: n.argv for n in config.nodes}  # type: ignore[attr-defined]
    assert argv["celery_01"][-1] == "celery_01@%h"
    assert {n.log_file for n in config.nodes} == {  # type: ignore[attr-defined]
        f"/var/log/app/celery_0{i}.log" for i in range(3)}
    note = _notes(result)["[program:celery] process_name"]
    assert note.translated and note.line == 4
    assert 'nodes = 3, name = "%p_%02i"' in note.advice


def test_environment_quoting_and_commas() -> None:
    assert parse_environment('A="x,y",B=2,C=\'q r\',D="",E=/a/b:c') == {
        "A": "x,y", "B": "2", "C": "q r", "D": "", "E": "/a/b:c"}
    with pytest.raises(ValueError):
        parse_environment("A=1,B")


def test_environment_merges_supervisord_then_program_and_expands_env(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\n"
        'environment=SHARED="s",HOME_COPY="%(ENV_HOME)s"\n'
        "[program:web]\n"
        'command=/bin/web --home %(ENV_HOME)s --shared %(ENV_SHARED)s\n'
        'environment=QUEUES="a,b,c",SHARED="own"\n')
    result = _import(conf)
    table = result.toml["programs"]["web"]
    assert table["environment"] == {"SHARED": "own", "HOME_COPY": "/home/op", "QUEUES": "a,b,c"}
    # ENV_ comes from the environment, then [supervisord] environment, then the
    # program's own (supervisord expands the command after reading the latter)
    assert table["command"] == "/bin/web --home /home/op --shared own"


def test_include_globs_are_relative_to_the_main_file_and_here_is_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf.d").mkdir()
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[include]\nfiles = conf.d/*.ini\n"
                    "[program:a]\ncommand=%(here)s/a\n")
    (tmp_path / "conf.d" / "b.ini").write_text("[program:b]\ncommand=%(here)s/b\n"
                                               "autostart=false\n")
    (tmp_path / "conf.d" / "ignored.conf").write_text("[program:c]\ncommand=/c\n")
    monkeypatch.chdir("/")
    result = _import(conf)
    assert result.toml["programs"]["a"]["command"] == f"{tmp_path}/a"
    assert result.toml["programs"]["b"]["command"] == f"{tmp_path}/conf.d/b"
    assert "c" not in result.toml["programs"]
    assert result.toml["programs"]["b"]["autostart"] is False
    bad = tmp_path / "conf.d" / "b.ini"
    bad.write_text("[program:b]\ncommand=%(here)s/b\nexitcodes=0,x\n")
    with pytest.raises(ConfigError) as err:
        _import(conf)
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.key) == (str(bad), 3, "[program:b] exitcodes")


def test_program_settings_map_to_stemd_keys(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\npidfile=%(here)s/run/supervisord.pid\nlogfile=/var/log/sv.log\n"
        "umask=027\n"
        "[unix_http_server]\nfile=/run/sv.sock\n"
        "[program:a]\ncommand=/bin/a\nautorestart=true\nstartsecs=5\nstartretries=7\n"
        "stopsignal=QUIT\nstopwaitsecs=600\nstopasgroup=true\nkillasgroup=true\nuser=app\n"
        "redirect_stderr=true\n"
        "[program:b]\ncommand=/bin/b\nautorestart=false\nkillasgroup=true\n"
        "[program:c]\ncommand=/bin/c\n")
    result = _import(conf)
    assert result.toml["stemd"] == {"pid_file": f"{tmp_path}/run/supervisord.pid",
                                    "log_file": "/var/log/sv.log", "socket": "/run/sv.sock"}
    a, b, c = (result.toml["programs"][n] for n in "abc")
    assert a == {"command": "/bin/a", "umask": "027", "user": "app", "start_secs": 5,
                 "start_retries": 8, "stop_signal": "QUIT", "stop_timeout": 600,
                 "kill_mode": "control-group"}
    assert b["restart"] == "no" and "kill_mode" not in b  # killasgroup alone: mixed
    # supervisord's default: 3 retries after the first start, 4 starts; stemd counts failed
    # starts in a row (regression: 3 gave up one start sooner than supervisord)
    assert c["restart"] == "on-failure" and c["start_retries"] == 4
    assert result.complete
    _load(tmp_path, result.toml)


def test_stderr_by_supervisords_default_is_kept_and_said(tmp_path: Path) -> None:
    """Regression: with stderr_logfile left at supervisord's default (AUTO, a file of its
    own), the import sent stderr with stdout, to /dev/null when stdout_logfile=NONE
    (tracebacks lost), and said nothing."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[program:quiet]\ncommand=/bin/q\nstdout_logfile=NONE\n"
                    "[program:plain]\ncommand=/bin/p\nstdout_logfile=/var/log/p.log\n")
    result = _import(conf)
    quiet, plain = result.toml["programs"]["quiet"], result.toml["programs"]["plain"]
    assert quiet["log_file"] == "/dev/null"
    assert quiet["stderr_log_file"] == "/var/log/stem/%n-stderr.log"
    assert plain["log_file"] == "/var/log/p.log" and "stderr_log_file" not in plain
    said = {n.setting: n.advice for n in result.notes}
    assert "not with stdout to /dev/null" in said["[program:quiet] stderr_logfile"]
    assert "with stdout" in said["[program:plain] stderr_logfile"]
    assert result.complete  # translated, differently: said, not a failure
    _load(tmp_path, result.toml)


def test_autostart_exitcodes_priority_and_stderr_log_are_translated(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\n"
        "[program:a]\ncommand=/bin/a\nautostart=false\nexitcodes=0,2\npriority=10\n"
        "stderr_logfile=/var/log/a.err\n"
        "[program:b]\ncommand=/bin/b\nautostart=true\nexitcodes=0\npriority=999\n"
        "stderr_logfile=/var/log/b.err\nredirect_stderr=true\n"
        "[program:c]\ncommand=/bin/c\npriority=5\nstderr_logfile=NONE\n")
    result = _import(conf)
    a, b, c = (result.toml["programs"][n] for n in "abc")
    assert {k: a[k] for k in ("autostart", "exitcodes", "priority", "stderr_log_file")} == {
        "autostart": False, "exitcodes": [0, 2], "priority": 10,
        "stderr_log_file": "/var/log/a.err"}
    # supervisord's defaults, and stderr redirected into stdout, need no key
    assert not {"autostart", "exitcodes", "priority", "stderr_log_file"} & set(b)
    assert c["priority"] == 5 and c["stderr_log_file"] == "/dev/null"  # NONE: discarded
    assert list(result.toml["programs"]) == ["c", "a", "b"]  # in start order
    notes = _notes(result)
    assert not {"[program:c] stderr_logfile"} & set(notes)
    assert not {"[program:a] autostart", "[program:a] exitcodes", "[program:a] priority",
                "[program:a] stderr_logfile"} & set(notes)
    config = _load(tmp_path, result.toml)
    node = config.node("a")  # type: ignore[attr-defined]
    assert (node.autostart, node.policy.exitcodes, node.priority, node.stderr_log_file) == (
        False, (0, 2), 10, "/var/log/a.err")


def test_numprocs_from_one_becomes_a_name_pattern(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\n[program:celery]\n"
        "command=/usr/bin/celery -n %(program_name)s_%(process_num)02d\n"
        "process_name=%(program_name)s_%(process_num)02d\nnumprocs=4\nnumprocs_start=1\n"
        "[program:other]\ncommand=/bin/o\nprocess_name=o-%(host_node_name)s-%(process_num)d\n"
        "numprocs=2\nnumprocs_start=1\n")
    result = _import(conf)
    table = result.toml["programs"]["celery"]
    assert (table["nodes"], table["name"]) == (4, "%p_%02i")
    config = _load(tmp_path, result.toml)
    names = [n.name for n in config.nodes]  # type: ignore[attr-defined]
    assert names[:4] == ["celery_01", "celery_02", "celery_03", "celery_04"]
    # more than program name and number: the names are listed
    assert result.toml["programs"]["other"]["nodes"] == ["o-testhost-1", "o-testhost-2"]
    assert "more than %(program_name)s" in _notes(result)["[program:other] process_name"].advice


def test_what_stemd_cannot_express_is_listed_with_file_line(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\n"
        "[inet_http_server]\nport=127.0.0.1:9001\n"
        "[program:a]\n"
        "command=/bin/a\n"
        "autostart=false\n"
        "exitcodes=0,2\n"
        "priority=10\n"
        "stderr_logfile=/var/log/a.err\n"
        "stdout_logfile_maxbytes=10MB\n"
        "[eventlistener:memmon]\ncommand=memmon -a 200MB\nevents=TICK_60\n"
        "[group:g]\nprograms=a\npriority=3\n")
    result = _import(conf)
    notes = _notes(result)
    expected = {
        "[inet_http_server]": (2, "no TCP control port"),
        "[program:a] stdout_logfile_maxbytes": (10, "etc/logrotate.d/stem"),
        "[eventlistener:memmon]": (11, "event listeners"),
        "[group:g] priority": (16, "priority = 3 in each of its programs"),
    }
    for setting, (line, text) in expected.items():
        assert notes[setting].line == line, setting
        assert text in notes[setting].advice, notes[setting]
        assert not notes[setting].translated
        assert str(notes[setting]).startswith(f"{conf}:{line}: {setting}: ")
    assert notes["[group:g] programs"].translated
    assert not result.complete
    _load(tmp_path, result.toml)  # what was translated still loads


def test_processes_that_differ_beyond_their_name_become_programs(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:w]\ncommand=/bin/w --port 80%(process_num)02d\n"
                    "process_name=w%(process_num)d\nnumprocs=2\n")
    result = _import(conf)
    assert result.toml["programs"]["w0"]["command"] == "/bin/w --port 8000"
    assert result.toml["programs"]["w1"]["command"] == "/bin/w --port 8001"
    assert not result.complete
    _load(tmp_path, result.toml)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("[supervisord]\n[program:a]\ncommand=/bin/%(nope)s\n", 3, "%(nope)s cannot be expanded"),
    ("[supervisord]\n[program:a]\ncommand=/bin/a\nnumprocs=2\n", 2, "%(process_num)"),
    ("[supervisord]\n[program:a]\nautostart=true\n", 2, "no command"),
    ("[supervisord]\n[program:a]\ncommand=/bin/a\nenvironment=A=1,B\n", 4, "KEY=value pairs"),
    ("[program:a\ncommand=/bin/a\n", 1, "not a valid supervisord ini"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        _import(conf)
    problem = err.value.problems[0]
    assert (problem.file, problem.line) == (str(conf), line)
    assert message in str(problem)


def test_stemd_names_a_supervisord_file_and_the_command_that_converts_it(
        tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("; my supervisor\n\n[program:celery]\ncommand=/bin/celery\n")
    assert foreign_format(conf.read_text()) == ("supervisord", 3)
    with pytest.raises(ConfigError) as err:
        load_config(str(conf), environ={})
    assert str(err.value).startswith(
        f"{conf}:3: this is a supervisord configuration: convert it with "
        f"`stemctl import supervisord {conf}`")


@pytest.mark.parametrize(("key", "hint"), [
    ("stopwaitsecs", "`stopwaitsecs` is `stop_timeout` in stemd"),
    ("process_name", "`process_name` is `name` in stemd"),
    ("stderr_logfile", "`stderr_logfile` is `stderr_log_file` in stemd"),
    ("startsecs", "`startsecs` is `start_secs`"),
    ("autorestart", "`autorestart` is `restart`"),
    ("numprocs", "`numprocs` is `nodes`"),
])
def test_supervisord_key_names_in_stemd_toml_get_the_right_suggestion(
        tmp_path: Path, key: str, hint: str) -> None:
    conf = tmp_path / "stem.toml"
    conf.write_text(f'[programs.w]\ncommand = "/bin/w"\n{key} = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(conf), environ={})
    (problem,) = err.value.problems
    assert problem.line == 3 and hint in (problem.hint or ""), problem


def test_importers_use_only_the_standard_library_and_stem_core() -> None:
    allowed = set(sys.stdlib_module_names) | {"stem_core"}
    for path in (ROOT / "stem_core" / "importers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
