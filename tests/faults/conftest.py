"""The fault suite: hostile users, hostile files and bad timing, against the
real stemd and stemctl (see docs/architecture.md, threat model)."""

from __future__ import annotations

from tests.fleet import fleet

__all__ = ["fleet"]
