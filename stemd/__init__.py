"""stemd: the master process, its control server, and the stemctl client."""

from stem_core import __version__

__all__ = ["__version__"]
