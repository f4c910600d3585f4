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


class Request(namedtuple("Request", "cmd args")):
    # collections.namedtuple, not a dataclass or typing.NamedTuple: importing
    # dataclasses costs stemctl ~10 ms and typing ~5 ms, of a ~50 ms budget.
    __slots__ = ()
    cmd: str
    args: dict[str, Any]


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


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


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ProtocolError with the reason."""
    if len(line) > MAX_REQUEST:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"request over {MAX_REQUEST} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from None
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


def decode_response(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad response from the master: {exc}"
                            ) from None
    if not isinstance(message, dict) or "ok" not in message:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bad response from the master")
    return message
