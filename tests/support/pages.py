"""Every item of a paginated list RPC (Connect JSON: `pageToken` in, `nextPageToken` out), whatever client
makes the calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def every_item(
    fetch: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any], key: str
) -> list[Any]:
    """Calls fetch with request and each next page token until the last page; the items under key."""
    items: list[Any] = []
    page_token = None
    while True:
        page = fetch({**request, "pageToken": page_token} if page_token else request)
        items += page.get(key, [])
        page_token = page.get("nextPageToken")
        if not page_token:
            return items
