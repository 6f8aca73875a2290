"""Offset paging shared by every List RPC: the page token is the offset of the next page."""

from __future__ import annotations

from posttrain.rpc.errors import InvalidArgument
from posttrain.v1 import common_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_bounds(page: common_pb2.PageRequest, field: str = "page") -> tuple[int, int]:
    """(offset, limit) of a page request; errors name `<field>.page_size|page_token`."""
    size = page.page_size or DEFAULT_PAGE_SIZE
    if not 0 < size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field}.page_size", f"must be 1..{MAX_PAGE_SIZE} (got {size})")
    token = page.page_token or "0"
    if not token.isdigit():
        raise InvalidArgument(f"{field}.page_token", "is not a token this service handed out")
    return int(token), size


def page_response(offset: int, returned: int, total: int) -> common_pb2.PageResponse:
    end = offset + returned
    return common_pb2.PageResponse(next_page_token=str(end) if end < total else "", total=total)
