"""``stemctl logs``: print or follow nodes' logs, read by stemctl itself."""

from __future__ import annotations

import os
import sys

from stem_core.protocol import ErrorCode as E
from stemd.ctl import OK

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from stemd.ctl import Ctl


def show_logs(ctl: Ctl) -> int:
    """The master names each node's log; stemctl reads the files itself, as
    the operator (issue 11 B1: a node controls its log's size and shape, and
    reading it inside the master stalled supervision). One named node: its
    lines as they are. No name or several: each line prefixed ``node | ``.
    On a terminal, control characters in a line are shown escaped, not sent
    (:func:`stemd.logtail.visible`); piped, the output is byte-exact."""
    from stemd import logtail

    response = ctl.call("logs", names=ctl.args.names)
    if not response["ok"]:
        return ctl.error(response)
    # One stream per file: a node whose stderr has a file of its own
    # (stderr_log_file) shows both, its stderr as "NODE:stderr".
    logs: list[tuple[str, str, str, str]] = []  # (node, label, stream, path)
    for e in response["result"]["logs"]:
        logs.append((e["node"], e["node"], "stdout", e["path"]))
        if e.get("stderr_path"):
            logs.append((e["node"], f"{e['node']}:stderr", "stderr", e["stderr_path"]))
    single = len(ctl.args.names) == 1 and len(logs) == 1
    elsewhere = [label for _node, label, _stream, path in logs if path == "-"]
    if elsewhere:
        message = (f"{', '.join(elsewhere)}: logs to the master's output; see the "
                   "container's or the journal's log")
        if single:
            return ctl.fail(E.FAILED, message)
        sys.stderr.write(f"stemctl: {message}\n")
    logs = [entry for entry in logs if entry[3] != "-"]
    tails: list[tuple[str, str, str, str, list[bytes], int]] = []
    status = OK
    for node, label, stream, path in logs:
        try:
            lines, size = logtail.tail(path, ctl.args.lines)
        except FileNotFoundError:
            if not ctl.args.follow:
                status = ctl.fail(E.FAILED, f"cannot read {path}: no such file "
                                  f"(has {node} written anything yet?)")
                continue
            lines, size = [], 0  # nothing written yet: follow waits for it
        except OSError as exc:
            status = ctl.fail(E.FAILED, logtail.cannot_read(path, exc))
            continue
        tails.append((node, label, stream, path, lines, size))
    if ctl.json and not ctl.args.follow:
        from stemd.render import print_json

        records: dict[str, dict[str, Any]] = {}  # per node; its stderr file nested
        for node, _label, stream, path, lines, size in tails:
            record = {"node": node, "path": path, "size": size,
                      "lines": [line.decode("utf-8", "replace") for line in lines]}
            if stream == "stderr":
                records.setdefault(node, {"node": node})["stderr"] = record
            else:
                records[node] = {**record, **records.get(node, {})}
        listed = list(records.values())
        print_json(listed[0] if len(ctl.args.names) == 1 and len(listed) == 1 else listed)
        return status
    # On a terminal a node's control characters are shown, not sent
    # (logtail.visible); piped, the bytes are the node's own (scripts, less -R).
    terminal = sys.stdout.isatty()
    colour = terminal and not os.environ.get("NO_COLOR")
    marks = [b""] * len(tails) if single else logtail.prefixes([t[1] for t in tails], colour)
    out = sys.stdout.buffer
    try:
        for (_node, _label, _stream, _path, lines, _size), mark in zip(tails, marks,
                                                                        strict=True):
            out.write(logtail.block(lines, mark, terminal))
        out.flush()
        if ctl.args.follow and tails:
            followed = [logtail.Followed(label, path, size, mark, terminal) for
                        (_node, label, _stream, path, _lines, size), mark
                        in zip(tails, marks, strict=True)]
            refresh = None if ctl.args.names else _newcomers(ctl, followed, colour, terminal)
            logtail.follow(followed, refresh=refresh)
    except KeyboardInterrupt:
        return status
    except BrokenPipeError:
        raise  # the reader (head, less) is gone: stemd.ctl.main says nothing more
    except OSError as exc:
        return ctl.fail(E.FAILED, f"cannot follow: {exc}")
    return status


def _newcomers(ctl: Ctl, followed: list[Any], colour: bool,
               terminal: bool) -> Callable[[], list[Any]]:
    """For ``logs -f`` of every node: the nodes the master has gained since
    (a reload, ``stemctl scale``), each shown from its last lines and then
    followed. A master that does not answer leaves the files followed as
    they are."""
    from stemd import logtail

    known = {(f.name, f.path) for f in followed}
    labels = [f.name for f in followed]

    def refresh() -> list[Any]:
        try:
            response = ctl.call("logs", names=[])
        except Exception:  # gone, busy or refusing: keep following, ask again later
            return []
        if not response.get("ok"):
            return []
        new: list[tuple[str, str]] = []
        for e in response["result"]["logs"]:
            streams = [(e["node"], e["path"])]
            if e.get("stderr_path"):
                streams.append((f"{e['node']}:stderr", e["stderr_path"]))
            new += [s for s in streams if s[1] != "-" and s not in known]
        if not new:
            return []
        marks = logtail.prefixes([*labels, *(label for label, _ in new)], colour)[len(labels):]
        out = sys.stdout.buffer
        added = []
        for (label, path), mark in zip(new, marks, strict=True):
            try:
                lines, size = logtail.tail(path, ctl.args.lines)
            except FileNotFoundError:
                lines, size = [], 0
            except OSError:
                continue  # unreadable: not followed, as at the start
            known.add((label, path))
            labels.append(label)
            out.write(logtail.block(lines, mark, terminal))
            added.append(logtail.Followed(label, path, size, mark, terminal))
        out.flush()
        return added
    return refresh
