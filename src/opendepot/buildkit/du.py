"""`buildctl du --format '{{json .}}'` output: the cache records BuildKit reports, summed to bytes."""

from __future__ import annotations

import json


def total_size(output: bytes) -> int | None:
    """The total size of the records, or None when the output is not what buildctl prints."""
    try:
        return sum(int(record.get("size", 0)) for record in json.loads(output or b"[]") or [])
    except (ValueError, TypeError, AttributeError):
        return None
