"""Problem, the error value every loader and check returns."""

from __future__ import annotations

from stem_core.errors import ConfigError, Problem


def test_every_field_reads_back() -> None:
    """Regression: class-level defaults on the namedtuple subclass once hid
    the fields, so every Problem had key=None and file=None."""
    p = Problem("bad value", "/etc/default/stem", 3, 7, "STEMD_NODES", "fix it")
    assert (p.message, p.file, p.line, p.column, p.key, p.hint) == (
        "bad value", "/etc/default/stem", 3, 7, "STEMD_NODES", "fix it")
    assert str(p) == "/etc/default/stem:3:7: STEMD_NODES: bad value (fix it)"


def test_defaults_and_keywords() -> None:
    p = Problem("no such user", key="a: user/group")
    assert (p.file, p.line, p.column, p.key, p.hint) == (None, None, None, "a: user/group", None)
    assert str(p) == "a: user/group: no such user"
    assert p._replace(file="f") == Problem("no such user", "f", key="a: user/group")


def test_config_error_carries_every_problem() -> None:
    one, two = Problem("a", "f", 1), Problem("b", "f", 2)
    exc = ConfigError([one, two])
    assert exc.problems == [one, two]
    assert str(exc) == "f:1: a\nf:2: b"
    assert ConfigError(one).problems == [one]
