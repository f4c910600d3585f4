"""Entry point of the benchmark: ``python bench/run.py --help``.

A thin script so that ``make bench`` can run it by path; the code lives in
the :mod:`bench` package, which needs the repository root on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
