"""What a ``celery multi`` user writes, and what stemd wants instead.

People arrive with an ``/etc/default/celeryd`` for celery's generic init
script and a ``celery multi`` command line. Most of it carries over (node
lists, ``-c:NAME`` options, ``%n``), and the rest fails *quietly*: stemd
ignores ``CELERYD_NODES``, creates a file literally named ``w1%I.log``, or
restarts a ``--detach``-ed worker forever. This module holds that knowledge
as data, and returns findings as ``(message, hint)`` pairs; the loader
(:mod:`stem_core.config`) adds the file, line and key and files them as
warnings -- the configuration is valid, just probably not what was meant.
Unknown ``STEMD_*`` keys stay errors (SPEC §1.1); this module only improves
their hint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["argv_findings", "legacy_key_finding", "needs_node_names", "runs_celery_worker",
           "setting_hint", "template_finding"]

# The keys of celery's generic init scripts (extra/generic-init.d/celeryd and
# celerybeat) -> what does the job in stemd.
_INIT_SCRIPT_KEYS: dict[str, str] = {
    "CELERYD_NODES": "use STEMD_NODES: node names or a count, as in CELERYD_NODES",
    "CELERYD_OPTS": "use STEMD_OPTS: per-node options such as -c:w1 4 work the same",
    "CELERY_BIN": "start STEMD_COMMAND with it, e.g. "
                  "STEMD_COMMAND=\"/srv/venv/bin/celery -A proj worker\"",
    "CELERYD": "start STEMD_COMMAND with it, e.g. STEMD_COMMAND=\"celery -A proj worker\"",
    "CELERY_APP": "put -A APP in STEMD_COMMAND, e.g. STEMD_COMMAND=\"celery -A proj worker\"",
    "CELERYD_CHDIR": "use STEMD_CHDIR",
    "CELERYD_USER": "use STEMD_USER",
    "CELERYD_GROUP": "use STEMD_GROUP",
    "CELERYD_LOG_FILE": "use STEMD_LOG_FILE; %n works there, %I does not: stemd opens one "
                        "file per node, and %I is expanded by celery in its own --logfile",
    "CELERYD_PID_FILE": "use STEMD_PID_FILE; %n works there, %I does not",
    "CELERYD_LOG_LEVEL": "add --loglevel=LEVEL to STEMD_OPTS; STEMD_LOG_LEVEL is the level "
                         "of stemd's own log, not the workers'",
    "CELERY_CREATE_DIRS": "use STEMD_CREATE_DIRS",
    "CELERY_CREATE_RUNDIR": "use STEMD_CREATE_DIRS",
    "CELERY_CREATE_LOGDIR": "use STEMD_CREATE_DIRS",
    "CELERYD_MULTI": "not needed: stemd replaces celery multi and runs the worker command "
                     "(STEMD_COMMAND) itself",
    "CELERYCTL": "not needed: use stemctl, or celery inspect / celery control",
    "CELERYD_SU": "not needed: stemd switches to STEMD_USER and STEMD_GROUP itself",
    "CELERYD_SU_ARGS": "not needed: stemd switches to STEMD_USER and STEMD_GROUP itself",
    "CELERY_DEFAULTS": "not needed: name the configuration with stemd --config",
}
_BEAT_HINT = ("the scheduler is one node of its own: "
              "STEM_SCHEDULER_COMMAND=\"celery -A proj beat\" (with its options)")

# Celery worker options people try as keys (STEMD_CONCURRENCY, or an old
# Celery 3 setting such as CELERYD_CONCURRENCY) -> where they belong. The
# key is the name without its STEMD_/CELERYD_/CELERY_ prefix.
_OPTIONS: dict[str, str] = {
    "CONCURRENCY": "-c N (--concurrency=N) in STEMD_OPTS, e.g. STEMD_OPTS=\"-c 8 -c:w2 4\"",
    "QUEUES": "-Q NAMES (--queues=NAMES) in STEMD_OPTS",
    "QUEUE": "-Q NAMES (--queues=NAMES) in STEMD_OPTS",
    "LOGLEVEL": "--loglevel=LEVEL in STEMD_OPTS for the workers; STEMD_LOG_LEVEL is stemd's "
                "own log level",
    "APP": "-A APP in STEMD_COMMAND, e.g. STEMD_COMMAND=\"celery -A proj worker\"",
    "POOL": "-P POOL (--pool=POOL) in STEMD_OPTS",
    "AUTOSCALE": "--autoscale=MAX,MIN in STEMD_OPTS",
    "HOSTNAME": "-n %n@%h in STEMD_OPTS",
    "NODENAME": "-n %n@%h in STEMD_OPTS",
    "MAX_TASKS_PER_CHILD": "--max-tasks-per-child=N in STEMD_OPTS",
    "MAX_MEMORY_PER_CHILD": "--max-memory-per-child=KIB in STEMD_OPTS",
    "TIME_LIMIT": "--time-limit=SECONDS in STEMD_OPTS",
    "TASK_TIME_LIMIT": "--time-limit=SECONDS in STEMD_OPTS",
    "SOFT_TIME_LIMIT": "--soft-time-limit=SECONDS in STEMD_OPTS",
    "TASK_SOFT_TIME_LIMIT": "--soft-time-limit=SECONDS in STEMD_OPTS",
    "PREFETCH_MULTIPLIER": "--prefetch-multiplier=N in STEMD_OPTS",
    "WORKDIR": "STEMD_CHDIR",
    "PIDFILE": "STEMD_PID_FILE, where stemd writes each node's PID file",
    "LOGFILE": "STEMD_LOG_FILE, the log file stemd opens for each node",
    "DETACH": "nothing: stemd is the daemon, its nodes stay in the foreground",
    "UID": "STEMD_USER",
    "GID": "STEMD_GROUP",
    "BEAT": _BEAT_HINT,
}


def _option_hint(name: str) -> str | None:
    for prefix in ("STEMD_", "CELERYD_", "CELERY_"):
        if name.startswith(prefix):
            found = _OPTIONS.get(name[len(prefix):].replace("-", "_"))
            if found:
                return found
    return None


def setting_hint(name: str) -> str | None:
    """A hint for an unknown ``STEMD_*`` key that is really a celery option
    (``STEMD_CONCURRENCY`` -> ``-c N in STEMD_OPTS``), or None."""
    found = _option_hint(name)
    return f"stemd has no such key: use {found}" if found else None


def legacy_key_finding(name: str, exported: bool, known: Mapping[str, object]
                       ) -> tuple[str, str] | None:
    """(message, hint) for a name in a stemd env file that is not a stemd
    setting but looks like a celery one or a typo of a stemd key, else None.

    ``known`` holds the stemd keys (for ``STEM_CREATE_DIRS``-style typos).
    A ``CELERY*`` name that is exported and unknown here is passed to the
    nodes, where celery or the application may read it: no finding.
    """
    if name in _INIT_SCRIPT_KEYS:
        return ("celery init-script setting, not read by stemd", _INIT_SCRIPT_KEYS[name])
    if name.startswith("CELERYBEAT_"):
        return ("celery init-script setting, not read by stemd", _BEAT_HINT)
    if name.startswith(("CELERYD_", "CELERY_")):
        option = _option_hint(name)
        if option:
            return ("celery setting, not read by stemd", f"use {option}")
        if not exported:
            return ("not a stemd setting, nor passed to the nodes: it is not exported",
                    f"export {name}=... if the worker reads it from its "
                    "environment; stemd's own settings are STEMD_*")
        return None
    # Exported STEM_* names are the application's (passed to the nodes).
    if name.startswith("STEM_") and name not in known and not exported:
        candidate = "STEMD_" + name[len("STEM_"):]
        if candidate in known:
            return ("not a stemd setting: stemd keys start with STEMD_",
                    f"did you mean {candidate}?")
        import difflib

        close = difflib.get_close_matches(candidate, [k for k in known if k.startswith(
            "STEMD_")], n=1, cutoff=0.8)
        if close:
            return ("not a stemd setting: stemd keys start with STEMD_",
                    f"did you mean {close[0]}?")
    return None


_OPTION = re.compile(r"(--?[A-Za-z][A-Za-z0-9-]*)(?::[^=]*)?(?:=.*)?\Z", re.S)

_DETACH = ("makes the worker fork into the background: its main process exits at once, "
           "so stemd sees the node exit and restarts it, over and over",
           "remove it: stemd is the daemon, and a node must stay in the foreground")
_PIDFILE = ("makes the worker write a PID file of its own: stemd already writes each node's "
            "(STEMD_PID_FILE), and celery refuses to start while a stale one is left after "
            "a crash", "remove it; STEMD_PID_FILE names the node's PID file")
_LOGFILE = ("makes the worker log to a file of its own instead of stdout/stderr, which stemd "
            "sends to STEMD_LOG_FILE: that file, and stemctl logs, stay nearly empty",
            "remove it and set STEMD_LOG_FILE, unless you want celery's per-process "
            "--logfile=...%n%I.log files")


def runs_celery_worker(words: list[str]) -> bool:
    """Whether a command line runs ``celery ... worker`` (directly, through
    ``python -m celery``, or an absolute path to a virtualenv's celery)."""
    return any(os.path.basename(w) == "celery" for w in words) and "worker" in words


def argv_findings(words: list[str], celery: bool) -> list[tuple[str, str]]:
    """(message, hint) for options in a command line or STEMD_OPTS that
    fight stemd: ``--detach``/``-D``, ``--pidfile``, ``--logfile`` (and its
    ``-f`` when ``celery`` says the command runs a celery worker), and
    ``celery multi`` itself. A ``--logfile`` with ``%I`` is deliberate (one
    log per pool process) and not reported. Options may carry a ``:NODE`` selector or an
    ``=value``, as in STEMD_OPTS."""
    found: list[tuple[str, str]] = []
    for index, word in enumerate(words):
        if (word == "multi" and index > 0 and os.path.basename(words[index - 1]) == "celery"):
            found.append(("celery multi starts detached workers and exits: stemd would see "
                          "every node exit and restart it",
                          "run the worker itself: STEMD_COMMAND=\"celery -A proj worker\" (stemd "
                          "does what celery multi did)"))
            continue
        match = _OPTION.match(word)
        if match is None:
            continue
        option = match.group(1)
        if option in ("--detach", "-D"):
            found.append((f"{option} {_DETACH[0]}", _DETACH[1]))
        elif option == "--pidfile":
            found.append((f"{option} {_PIDFILE[0]}", _PIDFILE[1]))
        elif (option == "--logfile" or (celery and option == "-f")) and "%I" not in word:
            # With %I the operator wants celery's per-process files: deliberate.
            found.append((f"{option} {_LOGFILE[0]}", _LOGFILE[1]))
    return found


def needs_node_names(words: list[str], node_count: int) -> tuple[str, str] | None:
    """celery multi adds ``-n %n@%h`` to each worker; stemd adds nothing. A
    celery worker without ``-n``/``--hostname`` is named ``celery@HOST``, so
    several nodes would share one name (celery warns of duplicate nodenames,
    and inspect/control cannot tell them apart)."""
    if node_count < 2 or not runs_celery_worker(words):
        return None
    for word in words:
        match = _OPTION.match(word)
        if match is not None and match.group(1) in ("-n", "--hostname"):
            return None
    return (f"the {node_count} nodes run celery workers without -n/--hostname: all would be "
            "named celery@HOST (celery multi adds -n %n@%h, stemd does not)",
            "add -n %n@%h to STEMD_OPTS")


def template_finding(template: str, what: str, example: str) -> tuple[str, str] | None:
    """(message, hint) for celery's ``%I`` in a file template stemd expands
    (``STEMD_LOG_FILE``, ``STEMD_PID_FILE``), else None. ``example`` is the
    template expanded for the first node: the file stemd would create."""
    if "%I" not in template.replace("%%", ""):
        return None
    hint = "use %n, the node name, or %i, its index, here"
    if what == "STEMD_LOG_FILE":
        hint += ("; for one log per pool process put --logfile=/var/log/celery/%n%I.log in "
                 "STEMD_OPTS, which celery expands itself")
    return (f"%I is celery's pool-process index, which stemd does not expand: it opens one "
            f"file per node, and would create {example}", hint)
