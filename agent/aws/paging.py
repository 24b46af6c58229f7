"""Loop over NextToken pages (Panorama ships no paginators)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def pages(
    call: Callable[..., dict[str, Any]], items_key: str, *, token_key: str = "NextToken", **params: Any
) -> Iterator[dict[str, Any]]:
    """Yield every item of every page of ``call(**params)``."""
    seen: set[str] = set()
    while True:
        response = call(**params)
        yield from response.get(items_key) or []
        token = response.get(token_key)
        if not token:
            return
        if token in seen:  # a broken peer must not make us loop forever
            from agent.errors import ServiceError

            raise ServiceError(
                f"{items_key}: the service returned the same {token_key} twice (it breaks the protocol)",
                reason="paging-loop",
                hint="the service is misbehaving; report it",
            )
        seen.add(token)
        params[token_key] = token
