"""stem_core: the pure library behind stemd.

Configuration, the node model, templates, PID files, the control protocol and
the node states. It never imports :mod:`stemd`, so ``stemctl`` and tests can
use it without loading the master.
"""

__version__ = "0.1.0"
