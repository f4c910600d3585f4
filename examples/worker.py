#!/usr/bin/env python3
"""A tiny stand-in for a queue worker, for the demo and the docs.

It prints a heartbeat naming its node (stemd sets STEMD_NODE) and shuts down
warmly on SIGTERM, as a celery worker finishes its current task first.
"""

import os
import signal
import sys
import time

node = os.environ.get("STEMD_NODE", "?")
concurrency = sys.argv[sys.argv.index("-c") + 1] if "-c" in sys.argv else "1"
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
print(f"{node}: ready (pid {os.getpid()}, concurrency {concurrency})", flush=True)
beat = 0
while not stopping:
    time.sleep(1)
    beat += 1
    print(f"{node}: heartbeat {beat}", flush=True)
print(f"{node}: warm shutdown", flush=True)
