"""The control protocol, shared by the server (stemd) and the client (stemctl).

One JSON object per line over a Unix stream socket, each with ``"v"``, the
protocol version. A request is ``{"v": 1, "cmd": "status", "args": {...}}``;
a response is ``{"v": 1, "ok": true, "result": ...}`` or
``{"v": 1, "ok": false, "error": {"code": ..., "message": ..., "hint": ...}}``.
A command that streams (``shutdown`` waits for the master to exit) keeps the
connection open; the client reads until EOF.
"""

from __future__ import annotations

import json
from collections import namedtuple
from enum import StrEnum

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes, newline included
# Deepest nesting of arrays and objects a request may have. json has no
# limit of its own: 50,000 '[' (well under MAX_REQUEST) made the decoder
# raise RecursionError, and the client got no answer. The deepest real
# request is 3 (the request, its args, a list of names); 32 leaves room for
# future arguments while keeping the decoder's recursion, whatever the
# interpreter's recursion limit, trivially shallow.
MAX_DEPTH = 32
MAX_RESPONSE = 64 * 1024 * 1024
READ_TIMEOUT = 5.0  # seconds a client has to send its request line
WRITE_TIMEOUT = 10.0  # seconds a client has to read its response


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # not JSON, not an object, too large, wrong version
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENT = "bad_argument"
    NOT_FOUND = "not_found"  # no such node or program
    PERMISSION_DENIED = "permission_denied"
    FAILED = "failed"  # the operation ran and did not succeed
    BUSY = "busy"  # the master is shutting down
    # reported by stemctl itself, before or instead of a response, in the
    # same error object (scripts parse one shape)
    NOT_RUNNING = "not_running"  # nobody answers on the socket
    TIMEOUT = "timeout"  # the master did not answer in time
    BAD_CONFIG = "bad_config"  # the config file cannot be read: which master is unknown


class Request(namedtuple("Request", "cmd args")):
    # collections.namedtuple, not a dataclass or typing.NamedTuple: importing
    # dataclasses costs stemctl ~10 ms and typing ~5 ms, of a ~50 ms budget.
    __slots__ = ()
    cmd: str
    args: dict[str, Any]


class ProtocolError(Exception):
    """A command that fails with ``code``; ``result`` (optional) travels in
    the error response beside it (the nodes' states after a failed start)."""

    def __init__(self, code: ErrorCode, message: str, hint: str | None = None,
                 result: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.result = result


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def request(cmd: str, **args: Any) -> dict[str, Any]:
    return {"v": VERSION, "cmd": cmd, "args": args}


def ok(result: Any = None) -> dict[str, Any]:
    return {"v": VERSION, "ok": True, "result": result}


def error(code: ErrorCode, message: str, hint: str | None = None,
          result: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": str(code), "message": message}
    if hint:
        body["hint"] = hint
    response: dict[str, Any] = {"v": VERSION, "ok": False, "error": body}
    if result is not None:
        response["result"] = result
    return response


# A JSON string (skipped whole, so brackets inside it do not count), or one
# bracket. A string left open runs to the end of the line: the pattern then
# never fails once it starts, so no position is scanned twice (a pattern that
# must find the closing quote took 6.8 s on 64 KiB of '\\"'). Such a line
# is not JSON anyway; json.loads says so.
_STRUCTURE = rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)|[\[{\]}]'


def nesting_depth(line: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays and objects in ``line``, counted
    outside strings, stopping as soon as it exceeds ``limit`` (so the scan
    is linear and a hostile line costs no more than a normal one)."""
    import re  # already loaded by stemctl's argparse; only the server calls this

    depth = deepest = 0
    for match in re.finditer(_STRUCTURE, line, re.S):
        char = match.group()[0]
        if char in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char in b"]}":
            depth -= 1
    return deepest


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ProtocolError with the reason."""
    if len(line) > MAX_REQUEST:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"request over {MAX_REQUEST} bytes")
    if nesting_depth(line) > MAX_DEPTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"request nested deeper than {MAX_DEPTH} arrays or objects")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from None
    except RecursionError:  # not reachable past the depth check; kept as a net
        raise ProtocolError(ErrorCode.BAD_REQUEST, "request nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request is a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"protocol version {message.get('v')!r} not supported",
                            hint=f"this master speaks version {VERSION}; upgrade stemctl")
    cmd = message.get("cmd")
    args = message.get("args", {})
    if not isinstance(cmd, str) or not isinstance(args, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request needs a string cmd and an "
                            "object args")
    return Request(cmd, args)


def flag(args: dict[str, Any], name: str, default: bool) -> bool:
    """The boolean argument ``name``: ``default`` when absent, else it must
    be a JSON ``true`` or ``false``. ``bool(args.get(...))`` read
    ``"wait": "no"`` as true; a typed client never sends a string, so
    anything but a real boolean is a mistake to report, not to guess."""
    value = args.get(name, default)
    if value is True or value is False:
        return value
    shown = json.dumps(value, default=str)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"argument {name!r} must be true or false, "
                        f"got {shown}", hint="send a JSON boolean")


def decode_response(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad response from the master: {exc}"
                            ) from None
    if not isinstance(message, dict) or "ok" not in message:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bad response from the master")
    return message
