"""The ``/etc/default/stem`` parser: shell assignments, parsed and never run.

Init scripts ``source`` this file, so it must mean the same thing to ``dash``
as it does to stemd. We therefore accept the subset of sh whose meaning is
unambiguous and side-effect free -- assignments, quotes, comments, line
continuation and variable expansion -- and reject everything a shell would
*execute* (command substitution, pipes, redirections, control flow, command
words) with the file, line, column and a hint. Silently skipping such a line
(as honcho does) would make stemd and the init script disagree about the
configuration.

Supported:

- ``NAME=value``, ``NAME="value"``, ``NAME='value'``, concatenations such as
  ``NAME=a"b"'c'``, several assignments on one line (``A=1 B=$A``, applied
  left to right as sh does), ``export NAME=value`` and ``export NAME`` (for a
  NAME assigned earlier in the file).
- Blank lines; ``#`` comments on their own line or after a value. As in sh a
  ``#`` starts a comment only at the start of a word: ``A=b#c`` is ``b#c``,
  ``A=b #c`` is ``b``.
- Backslash-newline continuation (outside single quotes); multi-line quoted
  values.
- ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` (the default is used when
  NAME is unset or empty, and is only checked for undefined variables when it
  is used) in unquoted and double-quoted text. Variables come from earlier
  assignments in the file, else from ``environ``. An undefined variable is an
  error: a typo in an env file otherwise turns into an empty value and an
  outage.
- Inside double quotes ``\\"``, ``\\\\``, ``\\$`` and ``\\``` are escapes; any
  other backslash is literal (POSIX).

Decisions where shells differ or a file is probably damaged -- each is an
error rather than a guess: a backslash continuing onto the end of the file,
``$'...'`` (bash-only quoting), special parameters (``$1``, ``$?``...), other
``${...}`` operators, an unquoted ``~`` where sh would do tilde expansion.

Input: a UTF-8 BOM is stripped, CRLF line ends are accepted (a CR right before
a LF is dropped everywhere, also inside quotes), invalid UTF-8 and NUL bytes
are errors naming the line. The lexer is hand-written, single pass and linear
(long runs are consumed with one regex match), so a 1 MB line is cheap.

Bounds: a file over :data:`MAX_CONFIG_BYTES` (1 MiB) is refused before it is
read (a stemd configuration is a few kilobytes; 100 MB of garbage once took
15 s and 1.2 GB to reject). Only the first :data:`~stem_core.errors.MAX_REPORTED`
problems (by position) are built, with their "did you mean" hints; the rest
are only counted. The hint looks at a bounded set of names (the last ones
assigned and part of the environment), so a file of thousands of undefined
variables costs linear time, not one fuzzy search over every earlier name per
line (4,000 such lines took 17 s).

Error recovery: after an error, the rest of that command (up to the next
unquoted newline) is still lexed, so quotes stay balanced, but not reported
on; lexing resumes at the next line. An unterminated quote ends the parse:
the quote could have opened anywhere, and guessing where it should close
would produce a cascade of false errors.
"""

from __future__ import annotations

import bisect
import os
import re
from collections import namedtuple
from collections.abc import Callable, Mapping

from stem_core.errors import MAX_REPORTED, BadValue, ConfigError, Problem

__all__ = ["MAX_CONFIG_BYTES", "Assignment", "parse_envfile", "quote_env_value",
           "read_config_bytes", "read_envfile"]

#: Largest configuration file read, env file or TOML.
MAX_CONFIG_BYTES = 1024 * 1024
#: Names a "did you mean" hint compares with: the most recently assigned in
#: the file, then as many from the environment. difflib costs ~3 us a name.
_SUGGEST_FROM = 500


class Assignment(namedtuple("Assignment", "name value exported line column")):
    """One ``NAME=value`` as the shell would have performed it (a named
    tuple, like :class:`~stem_core.errors.Problem`, for stemctl's start-up).

    ``exported`` is true for ``export NAME=...``, for ``export NAME`` and --
    as in sh, where the export attribute sticks to the variable -- for any
    later plain assignment to a variable that was exported before. So "the
    last assignment of a name wins" gives the right value *and* flag.
    """

    __slots__ = ()
    name: str
    value: str
    exported: bool
    line: int  # 1-based line where the assignment starts
    column: int  # 1-based column of the name


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
# Unquoted text that needs no further look: everything but blanks, newline,
# quotes, backslash, '$', '`' and the sh operator characters. '#' is in here:
# inside a word it is literal.
_UNQUOTED_RUN = re.compile(r"[^ \t\n\\'\"$`;&|<>()]+")
_DOUBLE_QUOTED_RUN = re.compile(r'[^\\"$`]+')
# Inside ${NAME:-...}: blanks, newlines and operator characters are literal.
_BRACE_RUN = re.compile(r"[^\\'\"$`}]+")
_BRACE_IN_DOUBLE_QUOTES_RUN = re.compile(r'[^\\"$`}]+')
_OPERATOR_CHARS = frozenset(";&|<>()")
_WORD_END = frozenset(" \t\n") | _OPERATOR_CHARS
_SPECIAL_PARAMETERS = frozenset("0123456789@*#?$!-")
_DOUBLE_QUOTE_ESCAPES = frozenset('$`"\\')
_KEYWORDS = frozenset(
    {
        *("if", "then", "else", "elif", "fi", "for", "in", "while", "until", "do", "done"),
        *("case", "esac", "select", "function", "time", "{", "}", "!", "[[", "]]"),
    }
)
_LINE_END_CR = re.compile(r"\r(?=\n)|\r\Z")
_NUL = re.compile("\x00")
_UNDECODABLE = re.compile("[\udc80-\udcff]")

_HINT_PARSED = "this file is parsed, not run by a shell: only NAME=value assignments are allowed"
_QUOTED = "quote the value if it contains {op!r}, e.g. NAME='a{op}b'"
_SEPARATES = "one assignment per line; " + _QUOTED

# operator -> (what sh would do with it, hint)
_OPERATORS: dict[str, tuple[str, str]] = {
    ";": ("';' separates shell commands", _SEPARATES),
    ";;": ("';;' belongs to a shell case statement", _HINT_PARSED),
    "&&": ("'&&' runs a second command", _SEPARATES),
    "||": ("'||' runs a second command", _SEPARATES),
    "|": ("'|' is a pipe", _QUOTED),
    "&": ("'&' runs a command in the background", _QUOTED),
    "<": ("'<' is a redirection", _QUOTED),
    ">": ("'>' is a redirection", _QUOTED),
    ">>": ("'>>' is a redirection", _QUOTED),
    "<<": ("'<<' is a here-document", _HINT_PARSED),
    ">&": ("'>&' is a redirection", _QUOTED),
    "<&": ("'<&' is a redirection", _QUOTED),
    "<>": ("'<>' is a redirection", _QUOTED),
    ">|": ("'>|' is a redirection", _QUOTED),
    "(": ("'(' starts a subshell or a function definition", _QUOTED),
    ")": ("')' ends a subshell or a function definition", _QUOTED),
}


class _UnterminatedQuote(Exception):
    """Raised after the problem is recorded: nothing after it can be trusted."""


#: handles one special character of a word being scanned: (char, position,
#: parts so far, key, evaluate, quoted)
_Special = Callable[[str, int, list[str], "str | None", bool, bool], None]


class _Lexer:
    """One parse of one file. Positions are offsets into ``text``; they become
    line and column only when reported, via a table of line starts."""

    def __init__(self, text: str, path: str, environ: Mapping[str, str]) -> None:
        self.text = text
        self.n = len(text)
        self.path = path
        self.environ = environ
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        # The first MAX_REPORTED problems by position, as (pos, seq, problem),
        # sorted; every problem found is counted.
        self.kept: list[tuple[int, int, Problem]] = []
        self.problem_count = 0
        self.assignments: list[Assignment] = []
        self.values: dict[str, str] = {}
        self.exported: set[str] = set()
        # Only the first problem of a command is reported: the rest of the
        # command is usually a consequence of it.
        self.failed = False

    # -- positions and problems ------------------------------------------

    def where(self, pos: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.line_starts, pos) - 1
        return index + 1, pos - self.line_starts[index] + 1

    def keeps(self, pos: int) -> bool:
        """Whether a problem at ``pos`` would be among those reported (so
        worth an expensive hint)."""
        return len(self.kept) < MAX_REPORTED or pos < self.kept[-1][0]

    def record(self, pos: int, message: str, hint: str, key: str | None = None) -> None:
        self.problem_count += 1
        if not self.keeps(pos):
            return
        line, column = self.where(pos)
        problem = Problem(message, self.path, line, column, key, hint)
        # Problems arrive in position order, except the decoder's findings
        # (recorded first): insort keeps the list sorted either way.
        bisect.insort(self.kept, (pos, self.problem_count, problem))
        if len(self.kept) > MAX_REPORTED:
            self.kept.pop()

    def problems(self) -> list[Problem]:
        return [problem for _, _, problem in self.kept]

    def fail(self, pos: int, message: str, hint: str, key: str | None = None) -> None:
        if not self.failed:
            self.failed = True
            self.record(pos, message, hint, key)

    # -- the grammar -------------------------------------------------------

    def run(self) -> None:
        try:
            while self.pos < self.n:
                self.command()
        except _UnterminatedQuote:
            pass

    def skip_blanks(self) -> None:
        text, n, pos = self.text, self.n, self.pos
        while pos < n:
            c = text[pos]
            if c == " " or c == "\t":
                pos += 1
            elif c == "\\" and text.startswith("\n", pos + 1):
                if pos + 2 == n:
                    self.pos = pos
                    self.trailing_backslash()
                pos += 2
            else:
                break
        self.pos = pos

    def trailing_backslash(self) -> None:
        self.fail(
            self.pos,
            "backslash continues the last line onto the end of the file",
            "remove the trailing backslash, or restore the line that should follow it",
        )

    def command(self) -> None:
        """One simple command: up to an unquoted newline, a comment or EOF."""
        self.failed = False
        mode = "start"  # -> "assign" after NAME=..., "export" after export
        last_key: str | None = None
        export_pos = -1
        exports = 0
        text, n = self.text, self.n
        while True:
            self.skip_blanks()
            if self.pos >= n:
                break
            c = text[self.pos]
            if c == "\n":
                self.pos += 1
                break
            if c == "#":  # a word starts here, so this is a comment
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
                break
            if c in _OPERATOR_CHARS:
                self.operator(last_key)
                continue
            start = self.pos
            match = _ASSIGNMENT_PREFIX.match(text, start) if mode != "command" else None
            if match is not None:
                name = match.group(1)
                last_key = name
                self.pos = match.end()
                value = self.word(name, evaluate=not self.failed, assignment=True)
                # Assigned even after an error, so that later lines using the
                # name do not add a cascade of "undefined" errors.
                self.assign(name, value, mode == "export", start)
                exports += 1
                if mode == "start":
                    mode = "assign"
                continue
            word = self.word(last_key, evaluate=False, assignment=False)
            if mode == "start":
                if word == "export" and text.startswith("export", start):
                    mode, export_pos = "export", start
                    continue
                self.not_an_assignment(word, start)
                mode = "command"
            elif mode == "assign":
                self.fail(
                    start,
                    f"{word!r} after an assignment would be run as a command by sh",
                    'quote a value that contains blanks, e.g. NAME="a b"',
                    last_key,
                )
                mode = "command"
            elif mode == "export":
                self.export_existing(word, start)
                exports += 1
        if mode == "export" and exports == 0:
            self.fail(export_pos, "'export' without a name", "write export NAME=value")

    def not_an_assignment(self, word: str, start: int) -> None:
        after = self.peek_after_blanks()
        if word in _KEYWORDS:
            self.fail(
                start, f"{word!r} is shell control flow, which is not supported", _HINT_PARSED
            )
        elif after == "(":
            self.fail(start, f"{word!r} starts a shell function definition", _HINT_PARSED)
        elif _NAME.fullmatch(word) and after == "=":
            self.fail(
                start,
                f"blank between {word!r} and '='",
                "write NAME=value with no blanks around '='",
                word,
            )
        elif "=" in word:
            name = word.partition("=")[0]
            self.fail(
                start,
                f"invalid variable name {name!r}" if name else "assignment without a name",
                "a name is letters, digits and '_', does not start with a digit, and is not quoted",
            )
        else:
            self.fail(start, f"{word!r} is a command, not an assignment", _HINT_PARSED)

    def peek_after_blanks(self) -> str:
        pos = self.pos
        while pos < self.n and self.text[pos] in " \t":
            pos += 1
        return self.text[pos : pos + 1]

    def export_existing(self, word: str, start: int) -> None:
        if not _NAME.fullmatch(word):
            self.fail(
                start,
                f"'export {word}' is not supported",
                "write export NAME=value, or export NAME for a NAME assigned earlier",
            )
        elif word not in self.values:
            self.fail(
                start,
                f"'export {word}': {word} is not assigned earlier in this file",
                f"write export {word}=value",
                word,
            )
        else:
            self.assign(word, self.values[word], True, start)

    def assign(self, name: str, value: str, exported: bool, start: int) -> None:
        exported = exported or name in self.exported
        if exported:
            self.exported.add(name)
        self.values[name] = value
        line, column = self.where(start)
        self.assignments.append(Assignment(name, value, exported, line, column))

    def operator(self, key: str | None) -> None:
        pair = self.text[self.pos : self.pos + 2]
        op = pair if pair in _OPERATORS else pair[:1]
        message, hint = _OPERATORS[op]
        self.fail(self.pos, message, hint.format(op=op), key)
        self.pos += len(op)

    # -- words ---------------------------------------------------------------

    def word(self, key: str | None, *, evaluate: bool, assignment: bool) -> str:
        """Lex one word from ``pos`` up to a blank, newline, operator or EOF
        and return it expanded. ``assignment``: this is the value of NAME=,
        where sh would expand an unquoted ``~``."""
        text, n = self.text, self.n
        parts: list[str] = []
        first = True
        while self.pos < n:
            start = self.pos
            c = text[start]
            if c in _WORD_END:
                break
            run = _UNQUOTED_RUN.match(text, start)
            if run is not None:
                chunk = run.group()
                if assignment and ((first and chunk[0] == "~") or ":~" in chunk):
                    tilde = start if first and chunk[0] == "~" else start + chunk.index(":~") + 1
                    self.fail(
                        tilde,
                        "sh would expand this unquoted '~' to a home directory",
                        "write ${HOME} instead, or quote it: '~'",
                        key,
                    )
                parts.append(chunk)
                self.pos = run.end()
            elif c == "\\":
                if start + 1 >= n:
                    self.trailing_backslash()
                    self.pos = n
                elif text[start + 1] == "\n":
                    if start + 2 == n:
                        self.trailing_backslash()
                    self.pos = start + 2
                else:
                    parts.append(text[start + 1])
                    self.pos = start + 2
            elif c == "'":
                parts.append(self.single_quoted())
            elif c == '"':
                parts.append(self.double_quoted(key, evaluate))
            elif c == "$":
                parts.append(self.dollar(key, evaluate, quoted=False))
            else:  # '`'
                self.backtick(key)
            first = False
        return "".join(parts)

    def backtick(self, key: str | None) -> None:
        self.fail(
            self.pos,
            "backquotes run a command",
            "write the value itself, or single-quote it if '`' is part of it",
            key,
        )
        self.pos += 1

    def single_quoted(self) -> str:
        start = self.pos
        end = self.text.find("'", start + 1)
        if end < 0:
            self.record(start, "single quote is never closed", "close the quote opened here with '")
            raise _UnterminatedQuote
        self.pos = end + 1
        return self.text[start + 1 : end]

    def double_quoted(self, key: str | None, evaluate: bool) -> str:
        start = self.pos
        self.pos += 1
        return self._scan_until('"', _DOUBLE_QUOTED_RUN, self._in_double_quotes, key, evaluate,
                                True, start, "double quote is never closed",
                                'close the quote opened here with "', None)

    def _scan_until(self, close: str, run_pattern: re.Pattern[str],
                    special: _Special, key: str | None, evaluate: bool, quoted: bool,
                    start: int, unclosed: str, hint: str, unclosed_key: str | None) -> str:
        """The word from ``self.pos`` up to ``close`` (consumed): literal
        runs are taken one regex match at a time (``run_pattern``), and each
        other character (a backslash, a quote, ``$``, a backquote) goes to
        ``special``, which moves ``self.pos`` past what it handles. A text
        that ends first records ``unclosed`` at ``start``. The one loop of
        double-quoted strings and of ``${NAME:-default}``."""
        text, n = self.text, self.n
        parts: list[str] = []
        while True:
            pos = self.pos
            if pos >= n:
                self.record(start, unclosed, hint, unclosed_key)
                raise _UnterminatedQuote
            run = run_pattern.match(text, pos)
            if run is not None:
                parts.append(run.group())
                self.pos = run.end()
                continue
            c = text[pos]
            if c == close:
                self.pos += 1
                return "".join(parts)
            special(c, pos, parts, key, evaluate, quoted)

    def _in_double_quotes(self, c: str, pos: int, parts: list[str], key: str | None,
                          evaluate: bool, quoted: bool) -> None:
        if c == "\\":
            following = self.text[pos + 1 : pos + 2]
            if following == "\n":
                self.pos += 2
            elif following in _DOUBLE_QUOTE_ESCAPES and following:
                parts.append(following)
                self.pos += 2
            else:  # POSIX: any other backslash is literal
                parts.append("\\")
                self.pos += 1
        elif c == "$":
            parts.append(self.dollar(key, evaluate, quoted=True))
        else:  # '`'
            self.backtick(key)

    def dollar(self, key: str | None, evaluate: bool, *, quoted: bool) -> str:
        text = self.text
        start = self.pos
        following = text[start + 1 : start + 2]
        if following == "(":
            if text.startswith("((", start + 1):
                self.fail(start, "'$((' is shell arithmetic", _HINT_PARSED, key)
                self.pos += 3
            else:
                self.fail(
                    start, "'$(' runs a command", "write the value itself; " + _HINT_PARSED, key
                )
                self.pos += 2
            return ""
        if following == "{":
            return self.braced(key, evaluate, quoted=quoted)
        name = _NAME.match(text, start + 1)
        if name is not None:
            self.pos = name.end()
            if text.startswith("\\\n", self.pos) and _NAME.match(text, self.pos + 2):
                self.fail(
                    self.pos,
                    "line continuation inside a variable name",
                    "keep $NAME on one line",
                    key,
                )
            return self.lookup(name.group(), start, key, evaluate)
        if following and following in _SPECIAL_PARAMETERS:
            self.fail(
                start,
                f"special parameter ${following} has no meaning here",
                "escape the dollar sign as \\$ or single-quote the value",
                key,
            )
            self.pos += 2
            return ""
        if not quoted and following in ("'", '"'):
            self.fail(
                start,
                f"${following}...{following} quoting differs between bash and sh",
                "use plain '...' or \"...\" quotes",
                key,
            )
            self.pos += 1
            return ""
        self.pos += 1  # a lone '$' is literal in sh
        return "$"

    def braced(self, key: str | None, evaluate: bool, *, quoted: bool) -> str:
        text = self.text
        start = self.pos
        name_match = _NAME.match(text, start + 2)
        if name_match is not None:
            name = name_match.group()
            self.pos = name_match.end()
            if text.startswith("}", self.pos):
                self.pos += 1
                return self.lookup(name, start, key, evaluate)
            if text.startswith(":-", self.pos):
                self.pos += 2
                current = self.get(name)
                use_default = not current
                default = self.brace_word(start, key, evaluate and use_default, quoted=quoted)
                return default if use_default else (current or "")
        self.fail(
            start,
            "unsupported ${...} expansion",
            "only ${NAME} and ${NAME:-default} are supported",
            key,
        )
        end = text.find("}", start)
        self.pos = self.n if end < 0 else end + 1
        return ""

    def brace_word(self, start: int, key: str | None, evaluate: bool, *, quoted: bool) -> str:
        """The default of ``${NAME:-default}``, up to the closing brace."""
        run_pattern = _BRACE_IN_DOUBLE_QUOTES_RUN if quoted else _BRACE_RUN
        return self._scan_until("}", run_pattern, self._in_brace, key, evaluate, quoted, start,
                                "'${' is never closed", "close it with '}'", key)

    def _in_brace(self, c: str, pos: int, parts: list[str], key: str | None, evaluate: bool,
                  quoted: bool) -> None:
        if c == "\\":
            following = self.text[pos + 1 : pos + 2]
            if following == "\n":
                self.pos += 2
            elif quoted and following not in _DOUBLE_QUOTE_ESCAPES | {"}"}:
                parts.append("\\")
                self.pos += 1
            else:
                parts.append(following)
                self.pos += 2
        elif c == "'":
            parts.append(self.single_quoted())
        elif c == '"':
            if quoted:
                # bash and dash disagree about quotes nested in "${X:-...}".
                self.fail(
                    pos,
                    'a double quote inside "${NAME:-...}"',
                    'write the default without quotes, e.g. "${NAME:-a b}"',
                    key,
                )
                self.pos += 1
            else:
                parts.append(self.double_quoted(key, evaluate))
        elif c == "$":
            parts.append(self.dollar(key, evaluate, quoted=quoted))
        else:  # '`'
            self.backtick(key)

    def get(self, name: str) -> str | None:
        if name in self.values:
            return self.values[name]
        return self.environ.get(name)

    def lookup(self, name: str, start: int, key: str | None, evaluate: bool) -> str:
        value = self.get(name)
        if value is not None:
            return value
        if evaluate and not self.failed:
            close = self.close_name(name) if self.keeps(start) else None
            hint = f"did you mean ${close}? " if close else ""
            hint += (
                f"assign {name} earlier in this file or in the environment, "
                f"or give a default: ${{{name}:-default}}"
            )
            self.fail(start, f"variable {name} is not defined", hint, key)
        return ""

    def close_name(self, name: str) -> str | None:
        """A defined name ``name`` may be a typo of, from a bounded set of
        candidates: hints are built for at most MAX_REPORTED problems, and
        each compares with at most 2 * _SUGGEST_FROM names."""
        import difflib  # only for the error hint: stemctl never pays for it
        from itertools import islice

        known = list(islice(reversed(self.values), _SUGGEST_FROM))
        known += islice((k for k in self.environ if k not in self.values), _SUGGEST_FROM)
        close = difflib.get_close_matches(name, known, n=1)
        return close[0] if close else None


def _decode(data: bytes | str) -> tuple[str, list[tuple[int, str, str]]]:
    """Text to lex, and (offset, message, hint) for what is not text."""
    from_bytes = isinstance(data, bytes)
    if isinstance(data, bytes):
        # surrogateescape keeps going past bad bytes, so every bad line is
        # reported, and maps each bad byte to one (lone surrogate) character.
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    else:
        text = data.removeprefix("\ufeff")
    text = _LINE_END_CR.sub("", text)
    findings = [
        (m.start(), "invalid UTF-8", "save the file as UTF-8, e.g. with iconv -t utf-8")
        for m in (_first_per_line(_UNDECODABLE, text) if from_bytes else ())
    ]
    findings += [
        (m.start(), "NUL byte", "an env file is text; it may be truncated or binary")
        for m in _first_per_line(_NUL, text)
    ]
    return text, findings


def _first_per_line(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    found: list[re.Match[str]] = []
    last_line_end = -1
    for match in pattern.finditer(text):
        if match.start() > last_line_end:
            found.append(match)
            end = text.find("\n", match.start())
            last_line_end = len(text) if end < 0 else end
    return found


def parse_envfile(
    data: bytes | str, path: str, environ: Mapping[str, str] | None = None
) -> list[Assignment]:
    """Parse an env file; raise :class:`ConfigError` listing every problem.

    ``environ`` (default ``os.environ``) supplies variables not assigned
    earlier in the file. ``path`` is only used in the problems.
    """
    text, findings = _decode(data)
    lexer = _Lexer(text, path, os.environ if environ is None else environ)
    for offset, message, hint in findings:
        lexer.record(offset, message, hint)
    lexer.run()
    if lexer.problem_count:
        problems = lexer.problems()
        raise ConfigError(problems, omitted=lexer.problem_count - len(problems))
    return lexer.assignments


def lex_envfile_leniently(
    data: bytes | str, path: str, environ: Mapping[str, str] | None = None
) -> tuple[list[Assignment], list[Problem]]:
    """Every assignment the lexer could read, and every problem, without
    raising. Only for finding the running master after a bad edit
    (:mod:`stem_core.locate`): the assignments of a file with problems are
    never a configuration to run."""
    text, findings = _decode(data)
    lexer = _Lexer(text, path, os.environ if environ is None else environ)
    for offset, message, hint in findings:
        lexer.record(offset, message, hint)
    lexer.run()
    return lexer.assignments, sorted(lexer.problems(), key=lambda p: (p.line or 0, p.column or 0))


def read_envfile(path: str, environ: Mapping[str, str] | None = None) -> list[Assignment]:
    """Read ``path`` (as bytes: the parser decodes and reports bad UTF-8)."""
    return parse_envfile(read_config_bytes(path), path, environ)


def read_config_bytes(path: str) -> bytes:
    """The bytes of a configuration file (env or TOML), at most
    :data:`MAX_CONFIG_BYTES`, or a ConfigError naming the file.

    A regular file is refused on its size before anything is read; anything
    else (a pipe, ``/dev/zero``) is read up to one byte over the limit, so
    memory stays bounded whatever the path names.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_CONFIG_BYTES:  # st_size is 0 for pipes and devices
                raise _too_large(path, f"{size} bytes")
            data = file.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise _too_large(path, f"more than {MAX_CONFIG_BYTES} bytes")
    except FileNotFoundError:
        raise ConfigError(
            Problem(
                "configuration file not found",
                path,
                hint="create it (see etc/default/stem) or name another with --config",
            )
        ) from None
    except OSError as error:
        raise ConfigError(
            Problem(
                f"cannot read configuration file: {error.strerror or error}",
                path,
                hint="check that it is a readable file for the user running stemd",
            )
        ) from None
    return data


def _too_large(path: str, size: str) -> ConfigError:
    return ConfigError(Problem(
        f"configuration file too large: {size}, the limit is {MAX_CONFIG_BYTES} bytes (1 MiB)",
        path,
        hint="a stemd configuration is a few kilobytes: check that --config names the right file",
    ))


_BARE_SAFE = re.compile(r"[A-Za-z0-9_@%+,./:=-]+")
_DOUBLE_QUOTE_SPECIAL = re.compile(r'([\\"$`])')


def quote_env_value(value: str) -> str:
    """Quote ``value`` for ``NAME=<here>`` so both sh and :func:`parse_envfile`
    read back exactly ``value``.

    A CR right before a LF would be taken for a CRLF line end and dropped, so
    such a pair is split by closing and reopening the quotes (``'a\\r''\\nb'``).
    """
    if "\x00" in value:
        raise BadValue("a value cannot contain a NUL byte", "remove the NUL character")
    if _BARE_SAFE.fullmatch(value):
        return value
    if "'" not in value:
        return "'" + value.replace("\r\n", "\r''\n") + "'"
    body = _DOUBLE_QUOTE_SPECIAL.sub(r"\\\1", value).replace("\r\n", '\r""\n')
    return '"' + body + '"'
