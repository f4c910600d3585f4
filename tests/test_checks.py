"""Host checks: problems name the key as the configuration's own format
does, and say which of them refuse a start (fatal_at_start)."""

from __future__ import annotations

from pathlib import Path

from stem_core.config import load_config
from stem_core.errors import Problem
from stemd.checks import check_environment


def _problems(path: Path) -> dict[str, Problem]:
    config = load_config(str(path), environ={})
    return {p.message: p for p in check_environment(config, creating=True)}


def test_an_env_file_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    path.write_text(f"STEMD_COMMAND=/nonexistent/worker\nSTEMD_CHDIR={tmp_path}/gone\n"
                    f"STEMD_PID_FILE={tmp_path}/%n.pid\nSTEMD_LOG_FILE={tmp_path}/%n.log\n")
    found = _problems(path)
    command = found["command '/nonexistent/worker' of node worker1 not found"]
    chdir = found[f"working directory {tmp_path}/gone of node worker1 does not exist"]
    assert command.key == "STEMD_COMMAND" and command.fatal_at_start
    assert chdir.key == "STEMD_CHDIR" and chdir.fatal_at_start


def test_a_toml_file_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "stem.toml"
    path.write_text(f'[programs.web]\ncommand = "/nonexistent/worker"\n'
                    f'directory = "{tmp_path}/gone"\n'
                    f'pid_file = "{tmp_path}/%n.pid"\nlog_file = "{tmp_path}/%n.log"\n')
    found = _problems(path)
    command = next(p for m, p in found.items() if m.startswith("command "))
    chdir = next(p for m, p in found.items() if m.startswith("working directory"))
    assert command.key == "[programs.web] command"
    assert chdir.key == "[programs.web] directory"
    assert command.fatal_at_start


def test_a_problem_many_nodes_share_is_told_once(tmp_path: Path) -> None:
    # 1,000 nodes of one program with a missing command printed 1,000
    # lines at start-up; the nodes are named once, shortened.
    path = tmp_path / "stem"
    path.write_text(f"STEMD_NODES=1000\nSTEMD_COMMAND=/nonexistent/worker\n"
                    f"STEMD_USER=no-such-user-here\n"
                    f"STEMD_PID_FILE={tmp_path}/%n.pid\nSTEMD_LOG_FILE={tmp_path}/%n.log\n")
    found = check_environment(load_config(str(path), environ={}), creating=True)
    account = [p for p in found if "no such user" in p.message]
    assert [p.message for p in account] == [
        "1000 nodes (worker1, worker2, worker3, ..., worker1000): "
        "no such user: no-such-user-here"]
    assert account[0].key == "STEMD_USER/STEMD_GROUP" and account[0].fatal_at_start


def test_nodes_are_named_in_full_up_to_four(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    path.write_text(f"STEMD_NODES=\"a b c\"\nSTEMD_COMMAND=/nonexistent/worker\n"
                    f"STEMD_PID_FILE={tmp_path}/%n.pid\nSTEMD_LOG_FILE={tmp_path}/%n.log\n")
    found = _problems(path)
    assert "command '/nonexistent/worker' of nodes a, b and c not found" in found


def test_problems_of_different_programs_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "stem.toml"
    path.write_text(f'[stemd]\npid_file = "{tmp_path}/stemd.pid"\n'
                    f'[programs.web]\ncommand = "/nonexistent/web"\nnodes = 2\n'
                    f'pid_file = "{tmp_path}/%n.pid"\nlog_file = "{tmp_path}/%n.log"\n'
                    f'[programs.mail]\ncommand = "/nonexistent/web"\n'
                    f'pid_file = "{tmp_path}/%n.pid"\nlog_file = "{tmp_path}/%n.log"\n')
    found = [m for m in _problems(path) if m.startswith("command ")]
    assert len(found) == 2, found
    assert any("of nodes web1 and web2 not" in m for m in found), found
    assert any("of node mail not" in m for m in found), found
