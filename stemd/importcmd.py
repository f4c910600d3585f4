"""``stemctl import FORMAT FILE``: write a stemd configuration from another
supervisor's (supervisord's ini, or celery's ``/etc/default/celeryd``).

It needs no master and no stemd configuration. The translation itself is in
``stem_core.importers``; this module only writes its result and picks the
exit status:

- 0: everything was translated;
- 1: something was left untranslated (the output is still written; each
  such setting is listed on stderr with file:line and what to do instead);
- 2: usage error, or the input cannot be read or parsed (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stemd.ctl import Ctl

OK, UNTRANSLATED, USAGE = 0, 1, 2

FORMATS = ("supervisord", "celeryd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="the source's format")
    parser.add_argument("file", metavar="FILE",
                        help="supervisord.conf, or /etc/default/celeryd (parsed, never run)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the stemd configuration here (default: stdout)")
    parser.add_argument("--toml", action="store_true",
                        help="celeryd: write TOML instead of an /etc/default/stem env file "
                             "(supervisord always gives TOML)")
    parser.epilog = (
        "examples:\n"
        "  stemctl import supervisord /etc/supervisor/supervisord.conf -o /etc/stem.toml\n"
        "  stemctl import celeryd /etc/default/celeryd -o /etc/default/stem\n\n"
        "Settings stemd cannot express are listed on stderr with file:line.\n"
        "exit status: 0 all translated, 1 something left untranslated (output written),\n"
        "2 usage error or unreadable input.\n")


def render(result: Any) -> str:
    """The configuration text of an :class:`~stem_core.importers.ImportResult`."""
    header = "".join(f"# {line}\n" for line in result.comments)
    if result.toml is not None:
        import tomli_w

        return header + ("\n" if header else "") + tomli_w.dumps(result.toml)
    from stem_core.envfile import quote_env_value

    lines = [f"{'export ' if exported else ''}{name}={quote_env_value(value)}"
             for name, value, exported in result.env]
    return header + ("\n" if header else "") + "\n".join(lines) + "\n"


def _usage(ctl: Ctl, *messages: str) -> int:
    """A usage error, unreadable input or unwritable output (exit 2): each
    message on stderr, or with --json the error object stemctl's other
    errors are, on stdout."""
    if ctl.json:
        from stem_core.protocol import ErrorCode as E

        return ctl.fail(E.BAD_ARGUMENT, *(f"import: {m}" for m in messages))
    for message in messages:
        sys.stderr.write(f"stemctl import: {message}\n")
    return USAGE


def run(ctl: Ctl) -> int:
    from stem_core.errors import ConfigError, StemError

    args = ctl.args
    if args.output and os.path.abspath(args.output) == os.path.abspath(args.file):
        return _usage(ctl, "the output would overwrite the input")
    if args.toml and args.format != "celeryd":
        return _usage(ctl, "--toml is for celeryd (supervisord always gives TOML)")
    try:
        with open(args.file, "rb"):
            pass
    except OSError as exc:
        return _usage(ctl, f"cannot read {args.file}: {exc.strerror}")
    try:
        if args.format == "supervisord":
            from stem_core.importers.supervisord import import_supervisord

            result = import_supervisord(args.file)
        else:
            from stem_core.importers.celeryd import import_celeryd

            result = import_celeryd(args.file, toml=args.toml)
        text = render(result)
    except ConfigError as exc:
        return _usage(ctl, *(str(problem) for problem in exc.problems))
    except StemError as exc:  # a value the env-file quoting cannot hold
        return _usage(ctl, str(exc))
    if args.output:
        try:
            _write(args.output, text)
        except OSError as exc:
            return _usage(ctl, f"cannot write {args.output}: {exc.strerror}")
    status = OK if result.complete else UNTRANSLATED
    if ctl.json:
        json.dump({"format": args.format, "source": os.path.abspath(args.file),
                   "output": args.output, "complete": result.complete,
                   "config": None if args.output else text,
                   "notes": [{"file": n.file, "line": n.line, "setting": n.setting,
                              "advice": n.advice, "translated": n.translated}
                             for n in result.notes]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return status
    if not args.output:
        sys.stdout.write(text)
    _report(result)
    return status


def _report(result: Any) -> None:
    untranslated = [n for n in result.notes if not n.translated]
    explained = [n for n in result.notes if n.translated]
    for note in explained:
        sys.stderr.write(f"note: {note}\n")
    if untranslated:
        sys.stderr.write(f"{len(untranslated)} setting(s) not translated:\n")
        for note in untranslated:
            sys.stderr.write(f"untranslated: {note}\n")


def _write(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a failed run never leaves a
    half-written configuration where a master would read it."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
