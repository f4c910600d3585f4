"""Lists of nodes for people: whole when short, abridged when a fleet is large."""

from __future__ import annotations

from stem_core.wording import LISTED_IN_FULL, abridged, name_nodes


def test_a_short_list_is_whole() -> None:
    assert abridged(["a"]) == "a"
    names = [f"w{i}" for i in range(1, LISTED_IN_FULL + 1)]
    assert abridged(names) == ", ".join(names)


def test_a_long_list_is_its_count_first_names_and_last() -> None:
    names = [f"worker{i}" for i in range(1, 1001)]
    assert abridged(names) == "1000 nodes: worker1, worker2, worker3, ..., worker1000"
    assert abridged(names[:LISTED_IN_FULL + 1]).startswith(f"{LISTED_IN_FULL + 1} nodes: ")


def test_nodes_in_a_sentence() -> None:
    assert name_nodes(["a"]) == "node a"
    assert name_nodes(["a", "b"]) == "nodes a and b"
    assert name_nodes(["a", "b", "c", "d"]) == "nodes a, b, c and d"
    assert name_nodes([f"w{i}" for i in range(1, 6)]) == "5 nodes (w1, w2, w3, ..., w5)"
