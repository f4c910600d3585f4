"""Who may use the control socket (SPEC §1 ``STEMD_SOCKET_GROUP``, §3).

The operators' group (``STEMD_SOCKET_GROUP``) is served; nobody else is, and
above all not the nodes: the nodes' group (``STEMD_GROUP``) used to be the
socket's group, so a compromised worker could stop its own fleet (issue 11
B12, issue 12 §3). Real master, real stemctl run as ``nobody`` with chosen
groups, a real group made with ``groupadd``.
"""

from __future__ import annotations

import grp
import json
import os
import stat

import pytest

from tests.faults.accounts import REPO, ctl_as, nobody, open_fleet, python_for, temp_group
from tests.fleet import Fleet, wait_until

__all__ = ["open_fleet", "temp_group"]


def test_a_member_of_the_socket_group_is_served_and_others_are_told_the_key(
        open_fleet: Fleet, temp_group: grp.struct_group) -> None:
    fleet, ops = open_fleet, temp_group
    user = nobody()
    fleet.write(nodes="alpha", socket_group=ops.gr_name)
    fleet.start()
    fleet.wait_state("RUNNING")
    fleet.run_dir.chmod(0o755)
    sock = str(fleet.run_dir / "stemd.sock")
    st = os.lstat(sock)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (ops.gr_gid, 0o660)

    member = ctl_as(user, "--socket", sock, "status", extra_groups=[ops.gr_gid])
    assert member.returncode == 0, member.stderr
    assert "alpha" in member.stdout and "RUNNING" in member.stdout

    outsider = ctl_as(user, "--socket", sock, "status")
    assert outsider.returncode == 4, (outsider.stdout, outsider.stderr)
    assert ops.gr_name in outsider.stderr
    assert "STEMD_SOCKET_GROUP" in outsider.stderr
    assert "Traceback" not in outsider.stderr

    # --json: the refusal happens before any response, and is JSON all the same
    as_json = ctl_as(user, "--socket", sock, "status", "--json")
    assert as_json.returncode == 4
    error = json.loads(as_json.stdout)
    assert error["ok"] is False and error["error"]["code"] == "permission_denied"
    assert ops.gr_name in error["error"]["hint"]
    assert "STEMD_SOCKET_GROUP" in error["error"]["hint"]

    # Past the file mode (as if the socket were 0666), the master's own
    # SO_PEERCRED check refuses too, and its answer names the group and key.
    os.chmod(sock, 0o666)
    refused = ctl_as(user, "--socket", sock, "--json", "stop", "alpha")
    assert refused.returncode == 4
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "permission_denied"
    assert ops.gr_name in error["hint"] and "STEMD_SOCKET_GROUP" in error["hint"]
    assert fleet.status("alpha")["alpha"]["state"] == "RUNNING"


def test_without_a_socket_group_the_socket_is_0600_and_the_refusal_names_the_key(
        open_fleet: Fleet) -> None:
    fleet = open_fleet
    user = nobody()
    fleet.write(nodes="alpha")
    fleet.start()
    fleet.run_dir.chmod(0o755)
    sock = str(fleet.run_dir / "stemd.sock")
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    # even a member of the master's own group is not let in
    result = ctl_as(user, "--socket", sock, "status", extra_groups=[os.getegid()])
    assert result.returncode == 4, result.stderr
    assert "STEMD_SOCKET_GROUP" in result.stderr


def test_master_not_running_is_a_json_error_with_json(open_fleet: Fleet) -> None:
    fleet = open_fleet
    fleet.write(nodes="alpha")
    result = fleet.ctl("--json", "status")
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["code"] == "not_running"


@pytest.mark.parametrize("nodes_group", [None, "primary"], ids=["default", "STEMD_GROUP"])
def test_a_node_cannot_control_its_own_fleet(open_fleet: Fleet,
                                             nodes_group: str | None) -> None:
    """A node (here ``nobody``, STEMD_USER) runs stemctl against its master:
    refused, whether the nodes' group is the default or set explicitly (the
    group that used to become the socket's)."""
    fleet = open_fleet
    user = nobody()
    python = python_for(user)
    sock = fleet.run_dir / "stemd.sock"
    script = fleet.root / "node.sh"
    script.write_text(f"""#!/bin/sh
{python} -m stemd.ctl --socket {sock} stop
echo "stemctl exit=$?"
exec sleep 1000
""")
    script.chmod(0o755)
    fleet.exports["PYTHONPATH"] = str(REPO)
    group = grp.getgrgid(user.pw_gid).gr_name if nodes_group else None
    fleet.write(nodes="alpha", command=f"/bin/sh {script}", user=user.pw_name, group=group,
                force_root=None)
    fleet.start()
    fleet.run_dir.chmod(0o755)  # only the socket's own mode and the master may refuse
    log = fleet.log_dir / "alpha.log"
    text = wait_until(lambda: log.exists() and "stemctl exit=" in log.read_text()
                      and log.read_text(), 60, what="the node's stemctl to finish")
    assert "stemctl exit=4" in text, text
    assert "STEMD_SOCKET_GROUP" in text
    node = fleet.wait_state("RUNNING", "alpha")["alpha"]
    assert node["restarts"] == 0
