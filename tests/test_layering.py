"""Imports flow stemd -> stem_core, never back; the client side of stemd
never imports the master (so stemctl starts fast and carries no master code)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ("client", "ctl", "render", "logtail", "leftovers", "checks", "commands/__init__",
          "commands/nodes", "commands/shutdown", "commands/logs", "commands/info", "importcmd",
          "ctl_metrics", "ctl_scale", "ctl_top")
MASTER_ONLY = {"stemd.master", "stemd.node", "stemd.reaper", "stemd.spawn", "stemd.handlers",
               "stemd.control", "stemd.notify", "stemd.logsetup", "stemd.daemon",
               "stemd.signals", "stemd.snapshot", "stemd.runwatch", "stemd.adoption",
               "stemd.statekeeper"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_stem_core_never_imports_stemd() -> None:
    for path in (ROOT / "stem_core").glob("*.py"):
        bad = {n for n in imports(path) if n == "stemd" or n.startswith("stemd.")}
        assert not bad, f"{path.name} imports {bad}"


def test_client_modules_do_not_import_the_master() -> None:
    for name in CLIENT:
        top_level: set[str] = set()
        tree = ast.parse((ROOT / "stemd" / f"{name}.py").read_text())
        for node in tree.body:  # module level only: lazy imports inside commands are fine
            if isinstance(node, ast.ImportFrom) and node.module:
                top_level.add(node.module)
        assert not top_level & MASTER_ONLY, f"{name}.py imports {top_level & MASTER_ONLY}"


def test_stemctl_status_path_loads_neither_master_nor_rich() -> None:
    master = sorted(MASTER_ONLY)
    code = ("import sys; from stemd import ctl; "
            f"bad = [m for m in sys.modules if m.startswith('rich') or m in {master!r}]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: Runs a stemctl command in-process and prints, at exit, every module it
#: loaded (lazy imports inside a command included, which an ast read cannot
#: see: diagnose used to load stemd.node, spawn, control and daemon).
_RUN = ("import atexit, json, sys; "
        "atexit.register(lambda: sys.__stderr__.write("
        "'MODULES ' + json.dumps(sorted(sys.modules)) + '\\n')); "
        "sys.argv = ['stemctl'] + sys.argv[1:]; "
        "from stemd.ctl import main; sys.exit(main())")  # as the stemctl script does


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "--json"], ["start", "a"], ["stop", "a"], ["restart"],
    ["kill", "a"], ["reload"], ["logs", "a"], ["shutdown"], ["healthcheck"], ["diagnose"],
    ["diagnose", "--json"], ["config"], ["config", "--toml"], ["version"], ["--help"],
    ["import", "celeryd", "/nonexistent/celeryd"], ["metrics"], ["scale"], ["top", "-n", "1"],
], ids=" ".join)
def test_no_stemctl_command_loads_master_code(argv: list[str], tmp_path: Path) -> None:
    """Every command, run against a configuration whose master is not
    running, loads nothing of the master side."""
    conf = tmp_path / "stem"
    conf.write_text(f"STEMD_NODES=2\nSTEMD_COMMAND='/bin/sleep 60'\n"
                    f"STEMD_MASTER_PID_FILE={tmp_path}/stemd.pid\n"
                    f"STEMD_SOCKET={tmp_path}/stemd.sock\n"
                    f"STEMD_PID_FILE={tmp_path}/%n.pid\nSTEMD_LOG_FILE={tmp_path}/%n.log\n")
    out = subprocess.run([sys.executable, "-c", _RUN, "--config", str(conf), *argv],
                         capture_output=True, text=True, timeout=60)
    line = [x for x in out.stderr.splitlines() if x.startswith("MODULES ")]
    assert line, out.stderr
    loaded = set(json.loads(line[-1].removeprefix("MODULES ")))
    assert "stemd.ctl" in loaded
    assert not loaded & MASTER_ONLY, f"stemctl {' '.join(argv)} loaded {loaded & MASTER_ONLY}"


def test_every_package_is_shipped() -> None:
    """A subpackage missing from pyproject's list installs a stemd that
    cannot import it (found by test_install)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".")
             for top in ("stem_core", "stemd") for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed
