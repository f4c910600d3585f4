"""Imports flow stemd -> stem_core, never back; the client side of stemd
never imports the master (so stemctl starts fast and carries no master code)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ("client", "ctl", "render", "logtail", "leftovers")
MASTER_ONLY = {"stemd.master", "stemd.node", "stemd.reaper", "stemd.spawn", "stemd.handlers",
               "stemd.control", "stemd.notify", "stemd.logsetup"}


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
        top_level = set()
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


def test_every_package_is_shipped() -> None:
    """A subpackage missing from pyproject's list installs a stemd that
    cannot import it (found by test_install)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".")
             for top in ("stem_core", "stemd") for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed
