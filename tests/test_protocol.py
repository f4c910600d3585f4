"""The wire protocol (stem_core.protocol): one JSON object per line, each
with the protocol version; every malformed request is a ProtocolError with a
code the client maps to an exit status."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_core import protocol as P


def test_request_and_responses_carry_the_version() -> None:
    assert P.request("status", names=["a"]) == {"v": P.VERSION, "cmd": "status",
                                                "args": {"names": ["a"]}}
    assert P.ok([1]) == {"v": P.VERSION, "ok": True, "result": [1]}
    err = P.error(P.ErrorCode.NOT_FOUND, "no such node", hint="see status")
    assert err == {"v": P.VERSION, "ok": False,
                   "error": {"code": "not_found", "message": "no such node", "hint": "see status"}}
    assert "hint" not in P.error(P.ErrorCode.FAILED, "x")["error"]
    assert P.error(P.ErrorCode.FAILED, "x", result=["p"])["result"] == ["p"]
    assert "result" not in P.error(P.ErrorCode.FAILED, "x")


def test_encode_is_one_line() -> None:
    data = P.encode(P.request("logs", names=["a\nb"], text="x\ny"))
    assert data.endswith(b"\n") and data.count(b"\n") == 1


def test_round_trip() -> None:
    req = P.decode_request(P.encode(P.request("kill", names=["a"], signal="USR1")))
    assert req == P.Request("kill", {"names": ["a"], "signal": "USR1"})
    assert P.decode_request(b'{"v": 1, "cmd": "status"}\n') == P.Request("status", {})
    assert P.decode_response(P.encode(P.ok({"x": 1}))) == P.ok({"x": 1})


@given(st.text(), st.dictionaries(st.text(), st.one_of(st.integers(), st.text(),
                                                       st.lists(st.text()))))
def test_round_trip_any_command_and_args(cmd: str, args: dict[str, object]) -> None:
    line = P.encode({"v": P.VERSION, "cmd": cmd, "args": args})
    if len(line) <= P.MAX_REQUEST:
        assert P.decode_request(line) == P.Request(cmd, args)


@pytest.mark.parametrize(("line", "fragment"), [
    (b"garbage\n", "not JSON"),
    (b"\xff\xfe\x00\n", "not JSON"),
    (b'{"v": 1, "cmd": \n', "not JSON"),
    (b"[1, 2]\n", "JSON object"),
    (b'"status"\n', "JSON object"),
    (b"null\n", "JSON object"),
    (b'{"cmd": "status"}\n', "version None"),
    (b'{"v": 2, "cmd": "status"}\n', "version 2"),
    (b'{"v": "1", "cmd": "status"}\n', "version '1'"),
    (b'{"v": 1}\n', "string cmd"),
    (b'{"v": 1, "cmd": ["status"]}\n', "string cmd"),
    (b'{"v": 1, "cmd": "status", "args": [1]}\n', "object args"),
    (b'{"v": 1, "cmd": "status", "args": null}\n', "object args"),
])
def test_malformed_requests_are_bad_requests(line: bytes, fragment: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(line)
    assert info.value.code is P.ErrorCode.BAD_REQUEST
    assert fragment in info.value.message


def test_wrong_version_hints_at_an_upgrade() -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(b'{"v": 0, "cmd": "status"}\n')
    assert info.value.hint and "upgrade" in info.value.hint


def test_the_size_limit() -> None:
    def sized(n: int) -> bytes:
        head = b'{"v":1,"cmd":"status","args":{"p":"'
        tail = b'"}}\n'
        return head + b"x" * (n - len(head) - len(tail)) + tail

    assert P.decode_request(sized(P.MAX_REQUEST)).cmd == "status"
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(sized(P.MAX_REQUEST + 1))
    assert info.value.code is P.ErrorCode.BAD_REQUEST
    assert str(P.MAX_REQUEST) in info.value.message


@pytest.mark.parametrize("line", [b"nonsense\n", b"[]\n", b'{"v": 1}\n', b"\xff\n"])
def test_bad_responses(line: bytes) -> None:
    with pytest.raises(P.ProtocolError):
        P.decode_response(line)


def test_error_codes_are_the_strings_on_the_wire() -> None:
    assert {str(c) for c in P.ErrorCode} == {
        "bad_request", "unknown_command", "bad_argument", "not_found", "permission_denied",
        "failed", "busy",
        # stemctl's own, in the same error object (--json)
        "not_running", "timeout", "bad_config"}
    assert json.loads(P.encode(P.error(P.ErrorCode.BUSY, "x")))["error"]["code"] == "busy"


def test_encode_survives_values_json_cannot_represent() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert json.loads(P.encode(P.ok(Odd())))["result"] == "odd"


# -- abuse (issue 11 §2, "control abuse") --------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_a_bad_request_not_a_recursion_error(opener: bytes) -> None:
    # 50,000 '[' fit in a request line and made json.loads raise RecursionError.
    line = (opener * 50_000)[: P.MAX_REQUEST - 1] + b"\n"
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(line)
    assert info.value.code is P.ErrorCode.BAD_REQUEST
    assert f"nested deeper than {P.MAX_DEPTH}" in info.value.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    inner: object = "x"
    for _ in range(P.MAX_DEPTH - 2):  # the request object and args are two levels
        inner = [inner]
    req = P.decode_request(P.encode(P.request("status", names=inner)))
    assert req.args["names"] == inner
    too_deep = P.encode(P.request("status", names=[inner]))
    with pytest.raises(P.ProtocolError, match="nested deeper"):
        P.decode_request(too_deep)


def test_brackets_inside_strings_do_not_count() -> None:
    text = '[[[["\\"' * 20  # brackets and escaped quotes inside one string
    req = P.decode_request(P.encode(P.request("status", names=[text])))
    assert req.args["names"] == [text]
    assert P.nesting_depth(P.encode(P.request("status", names=[text]))) == 3


@pytest.mark.parametrize("line", [
    b'"' + b'\\"' * 21_000,  # a string that never closes: escaped quotes only
    b'"a"' * 21_000,
    b'"' * 65_000,
    b"\\" * 65_000 + b'"',
])
def test_depth_scan_is_linear_on_hostile_strings(line: bytes) -> None:
    # A first scan pattern had to find each string's closing quote; on the
    # first line it re-scanned from every quote: 6.8 s of CPU for 64 KiB.
    import time

    started = time.process_time()
    with pytest.raises(P.ProtocolError):
        P.decode_request(line[: P.MAX_REQUEST - 1] + b"\n")
    assert time.process_time() - started < 0.5


def test_depth_scan_stops_at_the_limit() -> None:
    assert P.nesting_depth(b"[" * 10, limit=3) == 4
    assert P.nesting_depth(b"[[]][[[]]]") == 3


@pytest.mark.parametrize(("args", "expected"), [
    ({}, True), ({"wait": True}, True), ({"wait": False}, False)])
def test_flag_takes_real_booleans_and_the_default(args: dict[str, object],
                                                  expected: bool) -> None:
    assert P.flag(args, "wait", True) is expected
    assert P.flag({}, "stats", False) is False


@pytest.mark.parametrize("value", ["no", "false", "", 0, 1, None, [], {}, "x" * 100])
def test_flag_refuses_anything_but_a_boolean(value: object) -> None:
    # "wait": "no" counted as true.
    with pytest.raises(P.ProtocolError) as info:
        P.flag({"wait": value}, "wait", True)
    assert info.value.code is P.ErrorCode.BAD_ARGUMENT
    assert info.value.message.startswith("argument 'wait' must be true or false, got ")
    assert len(info.value.message) < 100
