"""The side-by-side benchmark of stemd, supervisord and circus (issue 6).

Run it with ``python bench/run.py`` (``make bench``); ``--quick`` is the smoke
mode that the test suite runs. It is a measuring tool, not part of the
product: it may poll ``/proc``, which the master itself must never do.
"""
