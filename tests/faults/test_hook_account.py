"""State-change hooks run as the node's user, never as the master's (root)."""

from __future__ import annotations

from tests.faults.accounts import nobody, open_fleet  # noqa: F401 - fixture
from tests.fleet import Fleet, wait_until


def test_hook_runs_as_the_node_user(open_fleet: Fleet) -> None:  # noqa: F811
    fleet = open_fleet
    user = nobody()
    hook = fleet.root / "hook.sh"
    hook.write_text("#!/bin/sh\necho \"hook uid=$(id -u) gid=$(id -g) to=$STEMD_TO_STATE\"\n")
    hook.chmod(0o755)
    fleet.write(nodes="alpha", command="/bin/sh -c 'exit 3'", restart="no", start_secs=0,
                user=user.pw_name, force_root=None, on_state_change=str(hook))
    fleet.start()  # start_secs 0: RUNNING at once, then EXITED 3
    log = fleet.log_dir / "alpha.log"
    text = wait_until(lambda: log.exists() and "hook uid=" in log.read_text()
                      and log.read_text(), 30, what="the hook's line in the node's log")
    assert f"hook uid={user.pw_uid} gid={user.pw_gid} to=EXITED" in text, text
