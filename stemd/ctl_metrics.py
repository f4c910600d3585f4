"""``stemctl metrics``: the master's Prometheus metrics in the text format,
for node_exporter's textfile collector (see etc/cron.d/stem-metrics).

The master builds the text (the same collector as its ``/metrics``
endpoint, stemd.metrics), so stemctl needs no prometheus_client of its own.
Write it atomically: node_exporter must never read a half-written file::

    stemctl metrics > /var/lib/prometheus/node-exporter/stemd.prom.$$ &&
        mv /var/lib/prometheus/node-exporter/stemd.prom.$$ \\
           /var/lib/prometheus/node-exporter/stemd.prom
"""

from __future__ import annotations

import argparse
import sys

# Annotations only (postponed): importing typing costs stemctl ~5 ms a run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from stemd.ctl import Ctl

NAME = "metrics"
HELP = "print Prometheus metrics (text format, for node_exporter's textfile collector)"
EXAMPLE = "stemctl metrics > /var/lib/prometheus/node-exporter/stemd.prom.$$ && mv ..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: every node, always (a scrape is the whole fleet)."""


def run(ctl: Ctl) -> int:
    from stemd.ctl import OK

    response = ctl.call("metrics")
    if not response["ok"]:
        return ctl.error(response)
    text = response["result"]["text"]
    if ctl.json:
        from stemd import render

        render.print_json({"text": text})
    else:
        sys.stdout.write(text)
    return OK
