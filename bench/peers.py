"""The peers' own virtual environment (never the project's ``.venv``).

supervisor and circus are installed from PyPI with pinned versions
(``requirements-peers.txt``) so that their dependencies cannot clash with
stemd's and a re-run measures the same code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements-peers.txt")
PEER_TOOLS = ("supervisord", "supervisorctl", "circusd", "circusctl")


def peers_ready(venv: Path) -> bool:
    return all((venv / "bin" / tool).exists() for tool in PEER_TOOLS)


def ensure_peers(venv: Path) -> None:
    """Create the venv and install the pinned peers, unless already there."""
    if peers_ready(venv):
        return
    print(f"installing supervisor and circus into {venv} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
