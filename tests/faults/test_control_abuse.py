"""Issue 11 §2, control abuse, at the protocol level: whatever a client
sends, it gets a JSON answer and the master keeps serving."""

from __future__ import annotations

import json
import socket

from tests.fleet import Fleet


def raw_call(path: str, payload: bytes) -> dict[str, object] | None:
    """Send ``payload`` as is; the decoded response line, or None on EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data) if data else None


def test_50000_nested_brackets_get_an_error_and_the_master_keeps_serving(
        fleet: Fleet) -> None:
    # Once: RecursionError in the master, the connection closed, no answer.
    fleet.write(nodes="alpha")
    fleet.start()
    sock = str(fleet.run_dir / "stemd.sock")
    for payload in (b"[" * 50_000 + b"\n", b'{"v":1,"cmd":"status","args":{"names":'
                    + b"[" * 40_000 + b"\n"):
        response = raw_call(sock, payload)
        assert response is not None, "no answer"
        assert response["ok"] is False
        assert response["error"]["code"] == "bad_request"  # type: ignore[index]
        assert "nested deeper than 32" in response["error"]["message"]  # type: ignore[index]
    ok = raw_call(sock, b'{"v":1,"cmd":"status","args":{}}\n')
    assert ok is not None and ok["ok"] is True
    assert fleet.status()["alpha"]["state"] in ("STARTING", "RUNNING")
    assert "RecursionError" not in fleet.master_log()


def test_a_handler_that_crashes_still_answers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A bug in a handler is logged and answered ``failed``: a client never
    waits on a silently closed connection (the server on a real socket; the
    handler is the test's, as no real one is known to crash)."""
    import asyncio
    import logging

    from stemd.control import ControlServer

    async def broken(args: dict[str, object]) -> object:
        raise ValueError("boom")

    async def main() -> dict[str, object] | None:
        path = str(tmp_path / "s.sock")
        server = ControlServer(path, None, {"broken": broken}, logging.getLogger("test"))
        await server.start()
        try:
            return await asyncio.to_thread(raw_call, path, b'{"v":1,"cmd":"broken"}\n')
        finally:
            server.close()

    response = asyncio.run(main())
    assert response is not None, "no answer"
    assert response["ok"] is False
    assert response["error"]["code"] == "failed"  # type: ignore[index]
    assert "ValueError('boom')" in response["error"]["message"]  # type: ignore[index]
