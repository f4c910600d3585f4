"""%-templates in paths and commands."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_core.templates import expand, master_values, node_values

VALUES = node_values("beta", "worker", 2, host="web1.example.com")


@pytest.mark.parametrize(
    ("template", "result"),
    [
        ("%n", "beta"),
        ("%p", "worker"),
        ("%i", "2"),
        ("%h", "web1.example.com"),
        ("%d", "example.com"),
        ("/var/run/stem/%n.pid", "/var/run/stem/beta.pid"),
        ("%p-%i@%h", "worker-2@web1.example.com"),
        ("100%%", "100%"),
        ("%%n", "%n"),
        ("%%%n", "%beta"),
        ("--logfile=%n%I.log", "--logfile=beta%I.log"),
        ("%N %x %1 %-", "%N %x %1 %-"),
        ("trailing %", "trailing %"),
        ("%", "%"),
        ("%\n", "%\n"),
        ("", ""),
    ],
)
def test_expand(template: str, result: str) -> None:
    assert expand(template, VALUES) == result


def test_values_are_not_expanded_again() -> None:
    assert expand("%n-%p", {"n": "%p", "p": "x"}) == "%p-x"


@given(st.text())
def test_text_without_percent_is_unchanged(text: str) -> None:
    text = text.replace("%", "")
    assert expand(text, VALUES) == text


def test_node_values() -> None:
    assert node_values("alpha", "sched", 1, host="box") == {
        "n": "alpha",
        "p": "sched",
        "i": "1",
        "h": "box",
        "d": "",
    }


def test_domain_is_after_the_first_dot() -> None:
    assert master_values("a.b.c") == {"h": "a.b.c", "d": "b.c"}


def test_host_defaults_to_gethostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "node7.lan")
    assert master_values() == {"h": "node7.lan", "d": "lan"}
    assert node_values("n", "p", 3)["d"] == "lan"
