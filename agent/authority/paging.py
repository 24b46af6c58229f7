"""Paging of listings: one page in a stable order after the position a NextToken names, and
the tokens themselves (base64 JSON of the last key returned and the query it belongs to)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from agent.authority.apierror import ApiError, validation_error
from agent.errors import Violation

#: each service's page size when a request does not give MaxResults / maxResults
PANORAMA_PAGE = 25
SNOW_PAGE = 100

Item = dict[str, Any]
#: the query a token belongs to: the operation's name, then its filters and sort
Scope = list[str | None]


def paginate(
    items: list[Item],
    key: Callable[[Item], list[Any]],
    scope: Scope,
    next_token: str | None,
    limit: int,
    descending: bool = False,
) -> tuple[list[Item], str | None]:
    """One page of ``items`` in ``key`` order after the position ``next_token`` names.

    The token holds the last key returned and the query it belongs to, so pages stay
    consistent when items are added or removed between calls.
    """
    ordered = sorted(items, key=key, reverse=descending)
    start = 0
    last = token_position(next_token, scope)
    if last is not None:
        start = len(ordered)
        for index, item in enumerate(ordered):
            k = key(item)
            if (k < last) if descending else (k > last):
                start = index
                break
    page = ordered[start : start + limit]
    token = None
    if start + limit < len(ordered) and page:
        token = make_token(key(page[-1]), scope)
    return page, token


def token_position(next_token: str | None, scope: Scope) -> Any:
    """The last key a NextToken names (None without one); a token of another query is refused."""
    if not next_token:
        return None
    try:
        data = json.loads(base64.b64decode(next_token, validate=True))
        last, token_scope = data["k"], data["s"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise unissued_token(next_token) from None
    if token_scope != scope:
        raise validation_error(
            "NextToken belongs to a different query (filters and sort must stay the same while paging)",
            [Violation("NextToken", next_token, "issued for a different query")],
        )
    return last


def unissued_token(next_token: str) -> ApiError:
    """The refusal of a NextToken this authority cannot have issued."""
    return validation_error(
        "NextToken is not a token this authority issued", [Violation("NextToken", next_token, "invalid token")]
    )


def make_token(last: list[Any], scope: Scope) -> str:
    return base64.b64encode(json.dumps({"k": last, "s": scope}).encode()).decode()


def with_token(out: dict[str, Any], name: str, token: str | None) -> dict[str, Any]:
    """``out`` with the next page's token under ``name`` when there is a next page."""
    if token:
        out[name] = token
    return out
