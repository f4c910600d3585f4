"""``stemctl logs``: print or follow nodes' logs, read by stemctl itself."""

from __future__ import annotations

import os
import sys

from stem_core.protocol import ErrorCode as E
from stemd.ctl import OK

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:

    from stemd.ctl import Ctl


def show_logs(ctl: Ctl) -> int:
    """The master names each node's log; stemctl reads the files itself, as
    the operator (issue 11 B1: a node controls its log's size and shape, and
    reading it inside the master stalled supervision). One named node: its
    lines as they are. No name or several: each line prefixed ``node | ``."""
    from stemd import logtail

    response = ctl.call("logs", names=ctl.args.names)
    if not response["ok"]:
        return ctl.error(response)
    logs = [(e["node"], e["path"]) for e in response["result"]["logs"]]
    single = len(ctl.args.names) == 1 and len(logs) == 1
    elsewhere = [name for name, path in logs if path == "-"]
    if elsewhere:
        message = (f"{', '.join(elsewhere)}: logs to the master's output; see the "
                   "container's or the journal's log")
        if single:
            return ctl.fail(E.FAILED, message)
        sys.stderr.write(f"stemctl: {message}\n")
    logs = [(name, path) for name, path in logs if path != "-"]
    tails: list[tuple[str, str, list[bytes], int]] = []
    status = OK
    for name, path in logs:
        try:
            lines, size = logtail.tail(path, ctl.args.lines)
        except FileNotFoundError:
            if not ctl.args.follow:
                status = ctl.fail(E.FAILED, f"cannot read {path}: no such file "
                                  f"(has {name} written anything yet?)")
                continue
            lines, size = [], 0  # nothing written yet: follow waits for it
        except OSError as exc:
            status = ctl.fail(E.FAILED, logtail.cannot_read(path, exc))
            continue
        tails.append((name, path, lines, size))
    if ctl.json and not ctl.args.follow:
        from stemd.render import print_json

        records = [{"node": name, "path": path, "size": size,
                    "lines": [line.decode("utf-8", "replace") for line in lines]}
                   for name, path, lines, size in tails]
        print_json(records[0] if single and records else records)
        return status
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    marks = [b""] if single else logtail.prefixes([t[0] for t in tails], colour)
    out = sys.stdout.buffer
    try:
        for (_name, _path, lines, _size), mark in zip(tails, marks, strict=True):
            out.write(b"".join(mark + line + b"\n" for line in lines))
        out.flush()
        if ctl.args.follow and tails:
            logtail.follow([logtail.Followed(name, path, size, mark) for
                            (name, path, _lines, size), mark in zip(tails, marks, strict=True)])
    except KeyboardInterrupt:
        return status
    except BrokenPipeError:
        # the reader (head, less) is gone: no traceback, and no second one at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status
    except OSError as exc:
        return ctl.fail(E.FAILED, f"cannot follow: {exc}")
    return status
