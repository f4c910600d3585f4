"""Node lists and celery-multi style per-node options."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_core.errors import BadValue
from stem_core.nodes import MAX_NODES, expand_opts, parse_node_list, validate_node_name

NODES = ("alpha", "beta", "gamma", "delta")

# -- node lists ---------------------------------------------------------------


def test_names() -> None:
    assert parse_node_list("alpha beta") == ("alpha", "beta")
    assert parse_node_list("  alpha\tbeta\n gamma ") == ("alpha", "beta", "gamma")
    assert parse_node_list("w1@host a.b x-y x_y 7up") == ("w1@host", "a.b", "x-y", "x_y", "7up")


def test_count() -> None:
    assert parse_node_list("3") == ("worker1", "worker2", "worker3")
    assert parse_node_list("1", prefix="scheduler") == ("scheduler1",)
    assert len(parse_node_list(str(MAX_NODES))) == MAX_NODES


def test_several_numbers_are_names() -> None:
    assert parse_node_list("1 2") == ("1", "2")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0", "not positive"),
        ("-1", "not positive"),
        (str(MAX_NODES + 1), str(MAX_NODES)),
        ("alpha beta alpha", "'alpha' is listed twice"),
        ("a/b", "'/'"),
        ("..", "'..'"),
        (".", "'.'"),
        (".hidden", "starts with '.'"),
        ("-c", "starts with '-'"),
        ("a%n", "'%'"),
        ("a,b", "'a,b'"),
        ("a\x01b", "control"),
        ("x" * 65, "longer than 64"),
        ("ok é", "'é'"),
    ],
)
def test_bad_node_lists(value: str, words: str) -> None:
    with pytest.raises(BadValue) as caught:
        parse_node_list(value)
    assert words in caught.value.message
    assert caught.value.hint


def test_unsafe_prefix_for_a_count() -> None:
    with pytest.raises(BadValue, match=r"'\.\./1'"):
        parse_node_list("1", prefix="../")


def test_name_of_64_characters_is_fine() -> None:
    validate_node_name("x" * 64)


@given(st.text(max_size=70))
def test_valid_names_are_path_safe(name: str) -> None:
    try:
        validate_node_name(name)
    except BadValue as error:
        assert error.hint
        return
    assert 1 <= len(name) <= 64
    assert "/" not in name and "%" not in name and name not in (".", "..")
    assert name[0] not in "-." and name.isascii() and name.isprintable()
    assert not any(c.isspace() for c in name)


# -- per-node options -----------------------------------------------------


def opts(text: str, nodes: tuple[str, ...] = NODES) -> dict[str, tuple[str, ...]]:
    return expand_opts(text, nodes)


def test_general_options_apply_to_all() -> None:
    assert opts("-c 4 --loglevel=info -O fair") == {
        node: ("-c", "4", "--loglevel=info", "-O", "fair") for node in NODES
    }


def test_empty() -> None:
    assert opts("") == {node: () for node in NODES}


@pytest.mark.parametrize(
    ("selector", "chosen"),
    [
        ("beta", {"beta"}),
        ("2", {"beta"}),
        ("2-4", {"beta", "gamma", "delta"}),
        ("1-1", {"alpha"}),
        ("alpha,gamma", {"alpha", "gamma"}),
        ("1,gamma,3-4", {"alpha", "gamma", "delta"}),
    ],
)
def test_selectors(selector: str, chosen: set[str]) -> None:
    result = opts(f"-c 8 -c:{selector} 2")
    for node in NODES:
        assert result[node] == (("-c", "2") if node in chosen else ("-c", "8")), node


def test_node_name_wins_over_index() -> None:
    assert opts("-c:2 5", ("1", "2", "3")) == {"1": (), "2": ("-c", "5"), "3": ()}
    assert opts("-c:2 5", ("3", "x", "2")) == {"3": (), "x": (), "2": ("-c", "5")}


def test_forms_are_kept() -> None:
    result = opts("--concurrency:beta=4 --loglevel:beta debug -c:beta 2 -E:beta")
    assert result["beta"] == ("--concurrency=4", "--loglevel", "debug", "-c", "2", "-E")
    assert result["alpha"] == ()


def test_override_keeps_the_general_position() -> None:
    result = opts("-A app -c 8 -l info -c:beta 4")
    assert result["beta"] == ("-A", "app", "-c", "4", "-l", "info")
    assert result["alpha"] == ("-A", "app", "-c", "8", "-l", "info")


def test_selector_only_options_follow_general_ones_in_order() -> None:
    result = opts("-Q:beta b -c 8 -n:2 x -E")
    assert result["beta"] == ("-c", "8", "-E", "-Q", "b", "-n", "x")
    assert result["gamma"] == ("-c", "8", "-E")


def test_override_replaces_every_general_occurrence() -> None:
    result = opts("-Q a -c 1 -Q b -Q:beta x -Q:beta y")
    assert result["beta"] == ("-Q", "x", "-Q", "y", "-c", "1")
    assert result["alpha"] == ("-Q", "a", "-c", "1", "-Q", "b")


def test_long_and_short_forms_are_different_options() -> None:
    assert opts("-c 8 --concurrency:beta=4")["beta"] == ("-c", "8", "--concurrency=4")


def test_colon_in_values_is_not_a_selector() -> None:
    result = opts("--broker=redis://h:6379/0 -Q:beta a:b -b amqp://u:p@h:5672// --x:beta=a:b")
    assert result["alpha"] == ("--broker=redis://h:6379/0", "-b", "amqp://u:p@h:5672//")
    assert result["beta"] == (
        "--broker=redis://h:6379/0",
        "-b",
        "amqp://u:p@h:5672//",
        "-Q",
        "a:b",
        "--x=a:b",
    )


def test_negative_number_is_a_value() -> None:
    result = opts("-c:beta -1 --prio -5 --flag -x")
    assert result["beta"] == ("--prio", "-5", "--flag", "-x", "-c", "-1")
    assert result["alpha"] == ("--prio", "-5", "--flag", "-x")


def test_positional_words_apply_to_all() -> None:
    result = opts("worker --flag -c:beta 2 - extra")
    # 'extra' follows '-', which is a word, not an option: positional.
    assert result["alpha"] == ("worker", "--flag", "-", "extra")
    assert result["beta"] == ("worker", "--flag", "-", "extra", "-c", "2")


def test_after_double_dash_words_are_arguments() -> None:
    result = opts("-c 1 -Q:beta q -- -c:gamma x:y")
    assert result["beta"] == ("-c", "1", "-Q", "q", "--", "-c:gamma", "x:y")
    assert result["alpha"] == ("-c", "1", "--", "-c:gamma", "x:y")
    assert result["gamma"] == result["alpha"]


def test_shell_quoting() -> None:
    assert opts("-n 'two words' --x=\"a b\"", ("w",)) == {"w": ("-n", "two words", "--x=a b")}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-c:omega 2", "'omega'"),
        ("-c:5 2", "'5'"),
        ("-c:0 2", "'0'"),
        ("-c:3-5 2", "'3-5'"),
        ("-c:3-2 2", "reversed"),
        ("-c:alpha,,beta 2", "''"),
        ("-c: 2", "empty"),
        ("-Qa:b", "'b'"),  # a ':' in an attached value: a clear error, not a guess
        ("-n 'unbalanced", "quotation"),
    ],
)
def test_bad_selectors(text: str, words: str) -> None:
    with pytest.raises(BadValue) as caught:
        opts(text)
    assert words in caught.value.message
    assert caught.value.hint
    if "selector '" in caught.value.message:
        assert "alpha, beta, gamma, delta" in caught.value.hint
