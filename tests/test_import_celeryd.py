"""stem_core.importers.celeryd: /etc/default/celeryd -> /etc/default/stem (pure parts).

The reference is celery itself (the dev extra): celery.apps.multi builds the
command line of each node from the arguments Celery's generic init script
passes to ``celery multi start``; the imported file, loaded by stemd's own
loader, must give each node that argv minus --detach, --pidfile, --logfile.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from stem_core.config import load_config
from stem_core.errors import ConfigError
from stem_core.importers import foreign_format
from stem_core.importers.celeryd import import_celeryd
from stem_core.model import NodeSpec
from stemd.importcmd import render

multi = pytest.importorskip("celery.apps.multi", reason="celery is in the dev extra")

# The example of Celery's "Daemonization" docs (/etc/default/celeryd), with
# paths a test can use.
DOCS_EXAMPLE = """\
# Names of nodes to start
#   most people will only start one node:
CELERYD_NODES="worker1"
#   but you can also start multiple and configure settings
#   for each in CELERYD_OPTS
CELERYD_NODES="worker1 worker2 worker3"
#   alternatively, you can specify the number of nodes to start:
#CELERYD_NODES=10

# Absolute or relative path to the 'celery' command:
CELERY_BIN="{celery_bin}"
#CELERY_BIN="/virtualenvs/def/bin/celery"

# App instance to use
# comment out this line if you don't use an app
CELERY_APP="proj"
# or fully qualified:
#CELERY_APP="proj.tasks:app"

# Where to chdir at start.
CELERYD_CHDIR="{chdir}"

# Extra command-line arguments to the worker
CELERYD_OPTS="{opts}"
# Configure node-specific settings by appending node name to arguments:
#CELERYD_OPTS="--time-limit=300 -c 8 -c:worker2 4 -c:worker3 2 -Ofair:worker1"

# Set logging level to DEBUG
#CELERYD_LOG_LEVEL="DEBUG"

# %n will be replaced with the first part of the nodename.
CELERYD_LOG_FILE="{chdir}/log/%n%I.log"
CELERYD_PID_FILE="{chdir}/run/%n.pid"

# Workers should run as an unprivileged user.
#   You need to create this user manually (or you can choose
#   a user/group combination that already exists (e.g., nobody).
CELERYD_USER="celery"
CELERYD_GROUP="celery"

# If enabled pid and log directories will be created if missing,
# and owned by the userid/group configured.
CELERY_CREATE_DIRS=1
"""


def celery_bin(tmp_path: Path) -> str:
    """A celery script whose interpreter is this one (celery multi's
    sys.executable in the reference computation below)."""
    path = tmp_path / "bin" / "celery"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{sys.executable}\nfrom celery.__main__ import main\nmain()\n")
    path.chmod(0o755)
    return str(path)


def celery_multi_argv(nodes: str, chdir: str, opts: str, level: str = "INFO",
                      app: str = "proj") -> dict[str, list[str]]:
    """What celery multi start runs per node for the generic init script's
    arguments (start_workers), minus what stemd owns."""
    args = [*nodes.split(), f"--workdir={chdir}", f"--pidfile={chdir}/run/%n.pid",
            f"--logfile={chdir}/log/%n%I.log", f"--loglevel={level}", f"--app={app}",
            *shlex.split(opts)]
    parser = multi.NamespacedOptionParser(args)
    parser.parse()
    out = {}
    for node in multi.MultiParser(cmd=None).parse(parser):
        argv = node.prepare_argv(node.argv, node.executable)  # what Popen gets
        out[node.name.split("@")[0]] = [w for w in argv if w != "--detach" and not w.startswith(
            ("--pidfile=", "--logfile="))]
    return out


def stemd_argv(tmp_path: Path, result) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    out = tmp_path / "stem.env"
    out.write_text(render(result))
    config = load_config(str(out), environ={})
    return {n.name: list(n.argv) for n in config.nodes if n.program == "worker"}


@pytest.mark.parametrize(("nodes", "opts"), [
    ("worker1 worker2 worker3", "--time-limit=300 --concurrency=8"),
    ("worker1 worker2 worker3", "--time-limit=300 -c 8 -c:worker2 4 -c:worker3 2 -Ofair:worker1"),
    ("3", "-c 4 -c:1-2 2 --statedb=/var/run/celery/%n.state -Q:3 beat,default"),
    ("alpha beta", "-n example.com -E --autoscale=10,3 -Q:alpha a:b"),
    ("w1", "--pool=solo -- --extra 'x y'"),
    ("a b", "-A other --hostname=%h.example --statedb=/tmp/%n%i.db -c:2 3"),
])
def test_nodes_run_what_celery_multi_runs(tmp_path: Path, nodes: str, opts: str) -> None:
    chdir = str(tmp_path / "app")
    path = tmp_path / "celeryd"
    path.write_text(DOCS_EXAMPLE.format(celery_bin=celery_bin(tmp_path), chdir=chdir,
                                        opts=opts.replace('"', '\\"')).replace(
        'CELERYD_NODES="worker1 worker2 worker3"', f'CELERYD_NODES="{nodes}"'))
    result = import_celeryd(str(path), environ={"PATH": "/usr/bin:/bin"})
    assert stemd_argv(tmp_path, result) == celery_multi_argv(nodes, chdir, opts)


def test_docs_example_translation(tmp_path: Path) -> None:
    chdir = str(tmp_path / "app")
    path = tmp_path / "celeryd"
    path.write_text(DOCS_EXAMPLE.format(
        celery_bin=celery_bin(tmp_path), chdir=chdir,
        opts="--time-limit=300 -c 8 -c:worker2 4 -c:worker3 2 -Ofair:worker1")
        + "export DJANGO_SETTINGS_MODULE=proj.settings\n")
    result = import_celeryd(str(path), environ={})
    env = {name: (value, exported) for name, value, exported in result.env}
    assert env["STEMD_NODES"] == ("worker1 worker2 worker3", False)
    assert env["STEMD_COMMAND"] == (f"{sys.executable} -m celery --app=proj --workdir={chdir} "
                                    "worker", False)
    # CELERYD_OPTS kept as written, selectors and all
    assert "-c 8 -c:worker2 4 -c:worker3 2 -Ofair:worker1" in env["STEMD_OPTS"][0]
    assert env["STEMD_LOG_FILE"] == (f"{chdir}/log/%n.log", False)  # %I dropped, with a note
    assert env["STEMD_PID_FILE"] == (f"{chdir}/run/%n.pid", False)
    assert env["STEMD_USER"] == ("celery", False)
    assert env["STEMD_CHDIR"] == (chdir, False)
    assert env["STEMD_CREATE_DIRS"] == ("1", False)
    assert env["DJANGO_SETTINGS_MODULE"] == ("proj.settings", True)
    notes = {n.setting: n for n in result.notes}
    assert notes["CELERYD_LOG_FILE"].line == 32 and "%I" in notes["CELERYD_LOG_FILE"].advice
    assert result.complete  # every note explains an equivalent translation


def test_toml_output_loads_to_the_same_nodes(tmp_path: Path) -> None:
    import tomli_w

    chdir = str(tmp_path / "app")
    path = tmp_path / "celeryd"
    path.write_text(DOCS_EXAMPLE.format(celery_bin=celery_bin(tmp_path), chdir=chdir,
                                        opts="-c 8 -c:worker2 4 -Ofair:worker1")
                    + "export FOO=bar\nCELERYBEAT_OPTS=\"--schedule=/var/run/celery/beat.db\"\n")
    env_result = import_celeryd(str(path), environ={})
    toml_result = import_celeryd(str(path), environ={}, toml=True)
    out = tmp_path / "stem.toml"
    out.write_text(tomli_w.dumps(toml_result.toml))
    from_toml = load_config(str(out), environ={})
    env_file = tmp_path / "stem.env"
    env_file.write_text(render(env_result))
    from_env = load_config(str(env_file), environ={})
    def runs(n: NodeSpec) -> tuple[object, ...]:
        return (n.name, n.argv, n.environment, n.directory, n.run_as.user)
    assert [runs(n) for n in from_toml.nodes] == [runs(n) for n in from_env.nodes]
    scheduler = next(n for n in from_env.nodes if n.name == "scheduler")
    assert scheduler.argv == (celery_bin(tmp_path), "--app=proj", "beat", "--loglevel=INFO",
                              "--schedule=/var/run/celery/beat.db")


def test_count_names_nodes_like_celery_multi(tmp_path: Path) -> None:
    path = tmp_path / "celeryd"
    path.write_text("CELERYD_NODES=3\nCELERY_BIN=/nonexistent/celery\nCELERYD_USER=app\n")
    result = import_celeryd(str(path), environ={})
    env = {name: value for name, value, _ in result.env}
    assert env["STEMD_NODES"] == "celery1 celery2 celery3"
    # the interpreter of a CELERY_BIN that is not here is unknown: run CELERY_BIN itself
    assert env["STEMD_COMMAND"] == "/nonexistent/celery worker"
    assert "--executable" not in env["STEMD_OPTS"]
    assert any(n.setting == "CELERY_BIN" and n.translated for n in result.notes)


def test_shell_code_is_an_error_at_its_line_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "celeryd"
    path.write_text(f'CELERYD_NODES="w1"\nCELERYD_OPTS="$(touch {marker})"\n')
    with pytest.raises(ConfigError) as err:
        import_celeryd(str(path), environ={})
    assert err.value.problems[0].file == str(path)
    assert err.value.problems[0].line == 2
    assert not marker.exists()


def test_unknown_celery_settings_and_multi_overrides_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "celeryd"
    path.write_text('CELERYD_NODES="w1"\nCELERYD_MULTI="celery multi"\nCELERYD_ULIMIT="-n 4096"\n'
                    'CELERYD_TYPO=1\n')
    result = import_celeryd(str(path), environ={})
    lines = {n.setting: n.line for n in result.notes if not n.translated}
    assert lines == {"CELERYD_MULTI": 2, "CELERYD_ULIMIT": 3, "CELERYD_TYPO": 4}
    assert not result.complete


def test_stemd_names_a_celeryd_file_and_the_command_that_converts_it(tmp_path: Path) -> None:
    path = tmp_path / "celeryd"
    path.write_text('# workers\nCELERY_BIN="/usr/bin/celery"\nCELERYD_NODES="w1"\n')
    assert foreign_format(path.read_text()) == ("celeryd", 2)
    for name in ("celeryd", "celeryd.toml"):
        target = tmp_path / name
        target.write_text(path.read_text())
        with pytest.raises(ConfigError) as err:
            load_config(str(target), environ={})
        assert str(err.value).startswith(
            f"{target}:2: this is a celeryd configuration: convert it with "
            f"`stemctl import celeryd {target}`")
    # a stemd file that exports celery's variables to its nodes is stemd's
    assert foreign_format('STEMD_COMMAND=/bin/w\nexport CELERY_APP=proj\n') is None
