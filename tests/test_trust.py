"""stem_core/trust.py: the path walk and the rules, for root and non-root
masters (the end-to-end refusals are in tests/faults/test_trust.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stem_core import trust


def entries(path: Path) -> list[str]:
    return [entry for entry, _ in trust.walk(str(path))]


def test_walk_follows_relative_and_absolute_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    real = tmp_path / "a" / "b" / "real.env"
    real.write_text("X=1\n")
    (tmp_path / "rel").symlink_to("a/b/../b/real.env")
    (tmp_path / "abs").symlink_to(real)
    for link in ("rel", "abs"):
        walked = entries(tmp_path / link)
        assert walked[0] == "/" and str(tmp_path / link) in walked
        assert walked[-1] == str(real)
        assert str(tmp_path / "a" / "b") in walked


def test_walk_stops_at_a_symlink_loop_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    assert len(entries(tmp_path / "x")) < 100
    assert entries(tmp_path / "missing")[-1] == str(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root rules")
def test_root_rules(tmp_path: Path) -> None:
    conf = tmp_path / "stem.env"
    conf.write_text("X=1\n")
    conf.chmod(0o644)
    assert trust.check_config_file(str(conf)) == []
    conf.chmod(0o664)
    (problem,) = trust.check_config_file(str(conf))
    assert problem.file == str(conf) and problem.hint == f"chmod go-w {conf}"
    conf.chmod(0o644)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    inside = sticky / "stem.env"
    inside.write_text("X=1\n")
    assert trust.check_config_file(str(inside)) == []  # sticky on the way: fine
    os.chown(inside, 65534, -1)
    assert "owned by uid 65534" in trust.check_config_file(str(inside))[0].message
    # ...but as the run directory, a sticky 1777 dir is refused
    (problem,) = trust.check_private_dir(str(sticky), "master PID file", "STEMD_MASTER_PID_FILE")
    assert "sticky" in problem.message and problem.hint == f"chmod 0755 {sticky}"


def test_a_non_root_master_refuses_only_world_writable(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    conf = tmp_path / "stem.env"
    conf.write_text("X=1\n")
    conf.chmod(0o664)  # umask 002, user-private groups: fine
    assert trust.check_config_file(str(conf)) == []
    conf.chmod(0o666)
    (problem,) = trust.check_config_file(str(conf))
    assert problem.hint == f"chmod o-w {conf}"
    assert trust.check_private_dir(str(tmp_path), "x", "K") == []  # not checked
