"""Node lists (``STEMD_NODES``) and per-node options (``STEMD_OPTS``).

Node names end up in file paths (``/var/run/stem/%n.pid``), in log lines and
on command lines, so they are restricted to a set that is safe in all three:
``[A-Za-z0-9][A-Za-z0-9_.@-]*``, at most 64 characters. A leading ``-`` would
read as an option, a leading ``.`` hides the file or climbs out of the
directory, ``/`` escapes it, and ``%`` would be taken for a template.

Per-node options follow ``celery multi``: ``-c:beta 4`` or
``--concurrency:beta=4`` applies to node ``beta`` only. See
:func:`expand_opts` for the exact rules.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from stem_core.errors import BadValue
from stem_core.templates import expand_name

__all__ = ["MAX_NODES", "expand_opts", "parse_node_list", "pattern_names", "validate_node_name"]

MAX_NODES = 10000
MAX_NAME_LENGTH = 64

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_COUNT = re.compile(r"[+-]?[0-9]+")
_NEGATIVE_NUMBER = re.compile(r"-[0-9][0-9.]*")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_NAME_HINT = (
    "a node name starts with a letter or digit, continues with letters, digits, "
    f"'_', '.', '@' or '-', and has at most {MAX_NAME_LENGTH} characters"
)


def validate_node_name(name: str) -> None:
    """Raise :class:`BadValue` unless ``name`` is safe as a node name."""
    if _NODE_NAME.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return
    if not name:
        reason = "is empty"
    elif len(name) > MAX_NAME_LENGTH:
        reason = f"is longer than {MAX_NAME_LENGTH} characters"
    elif "/" in name:
        reason = "contains '/', which would escape the PID and log directories"
    elif name in (".", ".."):
        reason = "is a directory reference"
    elif name[0] == ".":
        reason = "starts with '.'"
    elif name[0] == "-":
        reason = "starts with '-', which reads as an option"
    elif any(c.isspace() or not c.isprintable() for c in name):
        reason = "contains whitespace or a control character"
    elif "%" in name:
        reason = "contains '%', which would be taken for a template"
    else:
        reason = "contains a character that is not allowed"
    raise BadValue(f"node name {name!r} {reason}", _NAME_HINT)


def parse_node_list(value: str, prefix: str = "worker") -> tuple[str, ...]:
    """``'alpha beta'`` -> the names; ``'3'`` -> ``prefix1 .. prefix3``.

    A single integer is a count (so a lone node cannot be named ``3``; several
    numeric names such as ``'1 2'`` are names). Names are separated by
    whitespace; a comma is not a separator and is rejected as a name
    character, which catches ``alpha,beta``.
    """
    words = value.split()
    if not words:
        raise BadValue(
            "the node list is empty", "give node names separated by spaces, or a count such as 3"
        )
    if len(words) == 1 and _COUNT.fullmatch(words[0]):
        count = _count(words[0])
        names = tuple(f"{prefix}{i}" for i in range(1, count + 1))
        validate_node_name(names[-1])  # the prefix could be unsafe
        return names
    if len(words) > MAX_NODES:
        raise BadValue(f"{len(words)} nodes is more than {MAX_NODES}", "list fewer nodes")
    seen: set[str] = set()
    for name in words:
        validate_node_name(name)
        if name in seen:
            raise BadValue(f"node {name!r} is listed twice", "give each node a unique name")
        seen.add(name)
    return tuple(words)


def _count(word: str) -> int:
    count = int(word)
    if count < 1:
        raise BadValue(f"node count {word} is not positive", "give a count of at least 1")
    if count > MAX_NODES:
        raise BadValue(
            f"node count {count} is more than {MAX_NODES}",
            f"give a count between 1 and {MAX_NODES}",
        )
    return count


def pattern_names(value: str, pattern: str, program: str) -> tuple[str, ...]:
    """Node names for a count and a ``name`` pattern (``'4'``, ``'%p_%02i'``
    -> ``worker_01 .. worker_04``). The pattern names counted nodes only: a
    list of names is already the names. Each name must be valid and unique
    (without ``%i`` a count above 1 repeats one name)."""
    words = value.split()
    if len(words) != 1 or not _COUNT.fullmatch(words[0]):
        raise BadValue(
            "a name pattern applies to a count of nodes, not to a list of names",
            "write nodes = 4 with the pattern, or list the names and drop the pattern",
        )
    count = _count(words[0])
    names = tuple(expand_name(pattern, program, i) for i in range(1, count + 1))
    seen: set[str] = set()
    for name in names:
        validate_node_name(name)
        if name in seen:
            raise BadValue(f"name pattern {pattern!r} gives {name!r} twice",
                           "put %i in the pattern")
        seen.add(name)
    return names


@dataclass(frozen=True, slots=True)
class _Option:
    """One option or positional word of ``STEMD_OPTS``, selector stripped.

    ``key`` is the option name (``-c``, ``--concurrency``), or None for a
    positional word; ``argv`` is what goes on the command line.
    """

    key: str | None
    argv: tuple[str, ...]
    selector: str | None


def expand_opts(opts: str, nodes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The argv tail of each node for a ``celery multi``-style option string.

    ``opts`` is split with POSIX shell word rules. A word starting with ``-``
    is an option; the part of it before any ``=`` may end in ``:SELECTOR``:
    a node name, a 1-based index, a range ``a-b`` of indexes, or a comma list
    of these. A selector part that is a node name means that node, even if
    it looks like a number. Only the name part carries a selector, so in
    ``--broker=redis://h:6379`` or ``-Q:beta a:b`` the ':' in the value is
    just text.

    An option's value is the text after ``=``, or else the next word if that
    does not start with ``-`` -- or is a negative number (``-c:beta -1``
    gives beta ``-c -1``: a worker's options are rarely digits, its values
    often are). Otherwise the option is a flag. The output keeps the input's
    form: ``-c 4`` -> ``-c 4``, ``--concurrency=4`` -> ``--concurrency=4``.
    A word that is not an option or a value (including ``-``) applies to
    every node; so does everything from a ``--`` word on, taken literally.

    For each node: the general options (no selector) in their order, except
    that an option that also has values selected for this node is replaced,
    at the position of its first general occurrence, by all of those values
    (a repeated option such as ``-Q:beta a -Q:beta b`` keeps both). Options
    that appear only with selectors follow, in order of appearance (before a
    general ``--``, so that they stay options). ``-c``
    and ``--concurrency`` are different options to this function: it does
    not know the worker's aliases.
    """
    try:
        words = shlex.split(opts, posix=True)
    except ValueError as error:
        raise BadValue(
            f"cannot split the options: {error}", "balance the quotes in the options"
        ) from None
    options = _read_options(words)
    node_list = list(nodes)
    selected: dict[str, list[_Option]] = {node: [] for node in node_list}
    for option in options:
        if option.selector is not None:
            for node in _resolve_selector(option.selector, option.key or "", node_list):
                selected[node].append(option)
    general = [option for option in options if option.selector is None]
    return {node: _node_argv(general, selected[node]) for node in node_list}


def _node_argv(general: list[_Option], specific: list[_Option]) -> tuple[str, ...]:
    """One node's argv: general options with this node's overrides merged in."""
    overridden = {option.key for option in specific}
    placed: set[str | None] = set()
    only_here = [option for option in specific if option.key not in {o.key for o in general}]
    argv: list[str] = []
    for option in general:
        if option.argv == ("--",) and only_here:
            # After "--" the worker would take them as arguments, not options.
            argv.extend(word for o in only_here for word in o.argv)
            only_here = []
        if option.key is None or option.key not in overridden:
            argv.extend(option.argv)
        elif option.key not in placed:
            placed.add(option.key)
            argv.extend(word for o in specific if o.key == option.key for word in o.argv)
    argv.extend(word for o in only_here for word in o.argv)
    return tuple(argv)


def _read_options(words: list[str]) -> list[_Option]:
    options: list[_Option] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":  # the rest are the worker's arguments, not options
            options.extend(_Option(None, (rest,), None) for rest in words[i - 1 :])
            break
        if not _is_option(word):
            options.append(_Option(None, (word,), None))
            continue
        name, equals, inline = word.partition("=")
        key, colon, selector = name.partition(":")
        if colon and not selector:
            raise BadValue(
                f"option {word!r} has an empty node selector",
                "write -c:NODE 4, or drop the ':'",
            )
        if equals:
            argv: tuple[str, ...] = (f"{key}={inline}",)
        elif i < len(words) and (not words[i].startswith("-") or _is_negative_number(words[i])):
            argv = (key, words[i])
            i += 1
        else:
            argv = (key,)
        options.append(_Option(key, argv, selector if colon else None))
    return options


def _is_option(word: str) -> bool:
    return word.startswith("-") and word not in ("-", "--") and not _is_negative_number(word)


def _is_negative_number(word: str) -> bool:
    return _NEGATIVE_NUMBER.fullmatch(word) is not None


def _resolve_selector(selector: str, option: str, nodes: list[str]) -> list[str]:
    """The nodes a selector names, in node order, without duplicates."""
    chosen: set[str] = set()
    hint = (
        f"nodes are {', '.join(nodes)} (indexes 1-{len(nodes)}); "
        "if the ':' is part of a value, pass the value as a separate word or after '='"
    )
    for part in selector.split(","):
        if part in nodes:
            chosen.add(part)
            continue
        span = _RANGE.fullmatch(part)
        if part.isdigit():
            first = last = int(part)
        elif span is not None:
            first, last = int(span.group(1)), int(span.group(2))
            if first > last:
                raise BadValue(f"selector {selector!r} of {option}: range {part} is reversed", hint)
        else:
            raise BadValue(f"selector {selector!r} of {option}: no node {part!r}", hint)
        if first < 1 or last > len(nodes):
            raise BadValue(f"selector {selector!r} of {option}: index {part} is out of range", hint)
        chosen.update(nodes[first - 1 : last])
    return [node for node in nodes if node in chosen]
