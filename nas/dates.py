"""The one way a time is shown to people: pages, the offline report, plot hover text.

``2026-12-01 21:46 UTC``: minutes are enough to tell runs apart, the zone is always said, and
the store's timestamps are aware UTC already (naive ones are taken as UTC). The pages' script
(``nas/service/static/search.js``, ``when``) writes the same format for what it draws.
"""

from __future__ import annotations

from datetime import datetime, timezone

WHEN_FORMAT = "%Y-%m-%d %H:%M UTC"


def format_when(value: datetime | None, missing: str = "–") -> str:
    """``value`` in UTC as ``YYYY-MM-DD HH:MM UTC``; ``missing`` for None."""
    if value is None:
        return missing
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime(WHEN_FORMAT)
