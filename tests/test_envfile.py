"""The env-file parser: what sh would assign, and errors for what sh would run."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stem_core.envfile import Assignment, parse_envfile, quote_env_value, read_envfile
from stem_core.errors import BadValue, ConfigError, Problem

PATH = "/etc/default/stem"
ENV = {"HOME": "/home/stem", "EMPTY": ""}


def parse(text: str | bytes, environ: dict[str, str] | None = None) -> dict[str, str]:
    """name -> value, last assignment wins (as the config loader reads it)."""
    result = parse_envfile(text, PATH, ENV if environ is None else environ)
    return {a.name: a.value for a in result}


def problems(text: str | bytes) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_envfile(text, PATH, ENV)
    found = caught.value.problems
    for problem in found:
        assert problem.file == PATH
        assert problem.hint, problem
    return found


def only_problem(text: str | bytes) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# -- what is accepted ------------------------------------------------------


VALUE_CASES = [
    ("A=plain", "plain"),
    ("A=", ""),
    ('A="two words"', "two words"),
    ("A='$HOME \\n `x` $(y)'", "$HOME \\n `x` $(y)"),
    ("A=x\"y\"'z'", "xyz"),
    ('A="a\\"b\\\\c\\$d\\`e"', 'a"b\\c$d`e'),
    ('A="keep\\qbackslash"', "keep\\qbackslash"),
    ("A=esc\\ aped\\;", "esc aped;"),
    ("A=$HOME/x", "/home/stem/x"),
    ("A=${HOME}x", "/home/stemx"),
    ('A="$HOME"', "/home/stem"),
    ("A=${UNSET:-fallback}", "fallback"),
    ("A=${EMPTY:-fallback}", "fallback"),
    ("A=${HOME:-fallback}", "/home/stem"),
    ("A=${UNSET:-two words}", "two words"),
    ("A=${UNSET:-$HOME}", "/home/stem"),
    ('A="${UNSET:-a b}"', "a b"),
    ("A=${HOME:-$NOT_USED_SO_NOT_CHECKED}", "/home/stem"),
    ("A=$", "$"),
    ('A="$"', "$"),
    ("A=100%", "100%"),
    ("A=b#c", "b#c"),
    ("A=b #c", "b"),
    ('A="b"#c', "b#c"),
    ("A=b\t# comment", "b"),
    ("A=key=value", "key=value"),
    ("A=redis://h:6379/0", "redis://h:6379/0"),
    ("A='~'", "~"),
    ("A=x~y", "x~y"),
    ("A='multi\nline'", "multi\nline"),
    ('A="multi\nline"', "multi\nline"),
    ("A=con\\\ntinued", "continued"),
    ('A="con\\\ntinued"', "continued"),
    ("A='no\\\ncontinuation'", "no\\\ncontinuation"),
]


@pytest.mark.parametrize(("text", "value"), VALUE_CASES)
def test_values(text: str, value: str) -> None:
    assert parse(text) == {"A": value}


DASH = shutil.which("dash")


def dash_value(text: str, name: str) -> str:
    """What dash assigns to ``name`` after running ``text``: the reference."""
    assert DASH is not None
    script = f'{text}\nprintf %s "${name}"'
    # bytes, not text=True: universal newlines would turn a CR into a LF
    output = subprocess.run([DASH, "-c", script], capture_output=True, env=ENV, check=True)
    return output.stdout.decode()


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
@pytest.mark.parametrize(("text", "value"), [c for c in VALUE_CASES if "\r" not in c[0]])
def test_values_agree_with_dash(text: str, value: str) -> None:
    assert dash_value(text, "A") == value


def test_positions_and_comments() -> None:
    text = "# comment\n\n   \nA=1\n  B=2  # trailing\nexport   C=3\n"
    assert parse_envfile(text, PATH, ENV) == [
        Assignment("A", "1", False, 4, 1),
        Assignment("B", "2", False, 5, 3),
        Assignment("C", "3", True, 6, 10),
    ]


def test_several_assignments_on_a_line_apply_left_to_right() -> None:
    assert parse("A=1 B=$A C=${B}2") == {"A": "1", "B": "1", "C": "12"}


def test_file_variables_shadow_the_environment() -> None:
    assert parse("HOME=/srv\nA=$HOME") == {"HOME": "/srv", "A": "/srv"}


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMD_TEST_VAR", "from-os")
    assert parse_envfile("A=$STEMD_TEST_VAR", PATH)[0].value == "from-os"


def test_export_semantics() -> None:
    result = parse_envfile("A=1\nexport B=2\nexport A\nB=3\nC=4\n", PATH, ENV)
    assert [(a.name, a.value, a.exported) for a in result] == [
        ("A", "1", False),
        ("B", "2", True),
        ("A", "1", True),
        # as in sh, the export attribute sticks: the later value is exported
        ("B", "3", True),
        ("C", "4", False),
    ]


def test_export_several() -> None:
    result = parse_envfile("export A=1 B=2", PATH, ENV)
    assert [(a.name, a.exported) for a in result] == [("A", True), ("B", True)]


def test_continuation_between_words_and_lines() -> None:
    result = parse_envfile("A=1 \\\n  B=2\nC=3", PATH, ENV)
    assert [(a.name, a.line, a.column) for a in result] == [("A", 1, 1), ("B", 2, 3), ("C", 3, 1)]


def test_comment_is_not_continued() -> None:
    assert parse("# a comment \\\nA=1") == {"A": "1"}


def test_crlf_line_ends() -> None:
    text = b"A=1\r\nB='two'\r\nC=\"x\r\ny\"\r\n"
    assert parse(text) == {"A": "1", "B": "two", "C": "x\ny"}


def test_bom_is_stripped() -> None:
    assert parse(b"\xef\xbb\xbfA=1\n") == {"A": "1"}
    assert parse("\ufeffA=1\n") == {"A": "1"}


def test_utf8_values() -> None:
    assert parse("A=caf\u00e9 B='\u6771\u4eac'".encode()) == {"A": "caf\u00e9", "B": "\u6771\u4eac"}


def test_one_megabyte_line_is_fast() -> None:
    big = "x" * 1_000_000
    for text in (f"A={big}", f"A='{big}'", f'A="{big}"', f"A={big}#{big} # {big}"):
        started = time.process_time()  # CPU time: other tests' load does not count
        result = parse_envfile(text, PATH, ENV)
        assert time.process_time() - started < 3.0  # quadratic would take minutes
        assert result[0].value.startswith(big)


def test_many_expansions_are_linear() -> None:
    text = "A=x\nB=" + "$A" * 200_000
    started = time.process_time()
    assert parse(text)["B"] == "x" * 200_000
    assert time.process_time() - started < 3.0


# -- what a shell would run, and other errors ----------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("A=$(id)", 1, 3, "'$('"),
        ('A="$(id)"', 1, 4, "'$('"),
        ("A=$((1+2))", 1, 3, "arithmetic"),
        ("A=`id`", 1, 3, "backquotes"),
        ('A="x`id`"', 1, 5, "backquotes"),
        ("A=1; B=2", 1, 4, "';'"),
        ("A=1 && B=2", 1, 5, "'&&'"),
        ("A=1 || B=2", 1, 5, "'||'"),
        ("A=1 | cat", 1, 5, "pipe"),
        ("A=1 &", 1, 5, "background"),
        ("A=1 >/tmp/x", 1, 5, "redirection"),
        ("A=1>/tmp/x", 1, 4, "redirection"),
        ("A=1 >> x", 1, 5, "redirection"),
        ("A=1 < x", 1, 5, "redirection"),
        ("A=b c", 1, 5, "'c'"),
        ("A= b", 1, 4, "'b'"),
        ("rm -rf /", 1, 1, "'rm'"),
        (". /etc/profile", 1, 1, "'.'"),
        ("if true; then A=1; fi", 1, 1, "'if'"),
        ("for x in 1; do A=1; done", 1, 1, "'for'"),
        ("while true; do :; done", 1, 1, "'while'"),
        ("case x in x) A=1;; esac", 1, 1, "'case'"),
        ("f() { A=1; }", 1, 1, "function"),
        ("function f { A=1; }", 1, 1, "'function'"),
        ("(A=1)", 1, 1, "subshell"),
        ("A = 1", 1, 1, "blank"),
        ("1A=x", 1, 1, "invalid variable name '1A'"),
        ("A-B=x", 1, 1, "invalid variable name 'A-B'"),
        ("'A'=x", 1, 1, "invalid variable name 'A'"),
        ("=x", 1, 1, "without a name"),
        ("A=$1", 1, 3, "$1"),
        ("A=$'x'", 1, 3, "bash"),
        ("A=${HOME#/}", 1, 3, "${"),
        ("A=${HOME:=x}", 1, 3, "${"),
        ("A=~/x", 1, 3, "'~'"),
        ("A=/bin:~/bin", 1, 8, "'~'"),
        ("export", 1, 1, "export"),
        ("export -n A", 1, 8, "export -n"),
        ("export NEVER_SET", 1, 8, "NEVER_SET"),
        ("\n\n  A=1 ; B=2", 3, 7, "';'"),
        ("A=1 \\\n  ; B=2", 2, 3, "';'"),
    ],
)
def test_shell_constructs_are_errors(text: str, line: int, column: int, words: str) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.column) == (line, column), problem
    assert words in problem.message


def test_problem_names_the_key() -> None:
    assert only_problem("GOOD=1\nBAD=$(id)").key == "BAD"
    assert only_problem("A=b c").key == "A"


def test_undefined_variable() -> None:
    for text in ("A=$UNDEFINED", "A=${UNDEFINED}", 'A="x$UNDEFINED"'):
        problem = only_problem(text)
        assert "UNDEFINED" in problem.message
        assert problem.key == "A"
        assert "${UNDEFINED:-default}" in (problem.hint or "")


def test_undefined_variable_suggests_a_close_name() -> None:
    problem = only_problem("STEMD_CHDIR=/srv\nA=$STEMD_CHDRI")
    assert (problem.line, problem.column) == (2, 3)
    assert "$STEMD_CHDIR" in (problem.hint or "")


def test_undefined_variable_in_a_used_default() -> None:
    problem = only_problem("A=${UNSET:-$ALSO_UNSET}")
    assert "ALSO_UNSET" in problem.message
    assert problem.column == 12


def test_variables_are_not_defined_by_later_lines() -> None:
    problem = only_problem("A=$B\nB=1")
    assert (problem.line, problem.column) == (1, 3)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("A='never closed\nB=1\n", 1, 3),
        ('A=1\nB="never closed\nC=2\n', 2, 3),
        ("A=1\nB=x'a\nb\n", 2, 4),
        ("A=${UNSET:-x\n", 1, 3),
    ],
)
def test_unbalanced_quote_reports_where_it_opened(text: str, line: int, column: int) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.column) == (line, column)
    assert "never closed" in problem.message


def test_trailing_backslash_at_end_of_file_is_an_error() -> None:
    # sh would continue onto a line that is not there: probably a lost line.
    for text in ("A=1 \\", "A=1\\", "A=1 \\\n", "A=1\\\n", "A=1\n\\"):
        problem = only_problem(text)
        assert "end of the file" in problem.message, text
        assert problem.line == (2 if text == "A=1\n\\" else 1)


def test_invalid_utf8_names_each_line() -> None:
    found = problems(b"A=1\nB=caf\xe9\nC=ok\nD=\xff\xfe\n")
    assert [(p.line, p.column, p.message) for p in found] == [
        (2, 6, "invalid UTF-8"),
        (4, 3, "invalid UTF-8"),
    ]


def test_nul_byte() -> None:
    problem = only_problem(b"A=1\nB=x\x00y\n")
    assert (problem.line, problem.column, problem.message) == (2, 4, "NUL byte")
    assert only_problem("A=\x00").line == 1


def test_every_problem_is_reported() -> None:
    text = "GOOD=1\nA=$(id)\nB='ok'; C=2\necho hello\nD=$TYPO\nE=fine\nF=`date`\n"
    found = problems(text)
    assert [(p.line, p.column) for p in found] == [(2, 3), (3, 7), (4, 1), (5, 3), (7, 3)]


def test_only_first_problem_of_a_command_but_quotes_stay_balanced() -> None:
    # The ';' inside the quotes after the first error must not confuse the
    # lexer into reporting line 2 or beyond.
    found = problems("A=$(x) B='a;\nb' C=2\nD=3 ; E=4\n")
    assert [(p.line, p.column) for p in found] == [(1, 3), (3, 5)]


def test_assignment_with_error_still_defines_name() -> None:
    # No cascade: B uses A, whose line had an error already reported.
    found = problems("A=$(x)\nB=$A\n")
    assert [p.line for p in found] == [1]


def test_read_envfile(tmp_path) -> None:
    path = tmp_path / "stem"
    path.write_bytes(b"A=1\nexport B='x y'\n")
    assert read_envfile(str(path), {}) == [
        Assignment("A", "1", False, 1, 1),
        Assignment("B", "x y", True, 2, 8),
    ]


def test_read_envfile_missing_or_unreadable(tmp_path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as caught:
        read_envfile(missing)
    assert caught.value.problems[0].file == missing
    assert "not found" in caught.value.problems[0].message
    with pytest.raises(ConfigError) as caught:
        read_envfile(str(tmp_path))  # a directory
    assert caught.value.problems[0].file == str(tmp_path)
    assert caught.value.problems[0].hint


def test_read_envfile_reports_path_in_problems(tmp_path) -> None:
    path = tmp_path / "stem"
    path.write_text("A=1\nls\n")
    with pytest.raises(ConfigError) as caught:
        read_envfile(str(path), {})
    assert str(caught.value).startswith(f"{path}:2:1: ")


# -- quoting for writers ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("/var/run/stem/%n.pid", "/var/run/stem/%n.pid"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("", "''"),
        ("two words", "'two words'"),
        ("$HOME", "'$HOME'"),
        ("~", "'~'"),
        ("#x", "'#x'"),
        ("it's", '"it\'s"'),
        ('it\'s $x `y` "z" \\', '"it\'s \\$x \\`y\\` \\"z\\" \\\\"'),
    ],
)
def test_quote_env_value_forms(value: str, quoted: str) -> None:
    assert quote_env_value(value) == quoted
    assert parse("K=" + quoted, {}) == {"K": value}


def test_quote_env_value_rejects_nul() -> None:
    with pytest.raises(BadValue):
        quote_env_value("a\x00b")


_TRICKY = st.text(alphabet=st.sampled_from(list("ab \t\n\r'\"\\$`#~:;&|(){}%=-*?!")))


@given(st.one_of(_TRICKY, st.text(alphabet=st.characters(blacklist_characters="\x00"))))
def test_quote_env_value_round_trip(value: str) -> None:
    assert parse_envfile("K=" + quote_env_value(value), PATH, {}) == [
        Assignment("K", value, False, 1, 1)
    ]


@given(st.lists(_TRICKY, min_size=1, max_size=5))
def test_quoted_lines_round_trip_as_a_file(values: list[str]) -> None:
    text = "".join(f"K{i}={quote_env_value(v)} # comment\r\n" for i, v in enumerate(values))
    assert parse(text.encode(), {}) == {f"K{i}": v for i, v in enumerate(values)}


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
@settings(max_examples=40, deadline=None)
@given(_TRICKY)
def test_quote_env_value_means_the_same_to_dash(value: str) -> None:
    assert dash_value("K=" + quote_env_value(value), "K") == value
