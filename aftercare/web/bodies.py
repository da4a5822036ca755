"""Reading a request body with a hard cap, for every route that takes one (webhooks, the approval,
survey and unsubscribe forms)."""

from __future__ import annotations

from fastapi import Request


class BodyTooLarge(Exception):
    """More than the cap; `size` says how much, as far as we know."""

    def __init__(self, size: str):
        super().__init__(size)
        self.size = size


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes whether or not Content-Length is honest.
    Reading stops at the cap: a body that never ends costs us `limit` bytes, not more."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{int(declared)} bytes (Content-Length)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"more than {limit} bytes (read so far: {size})")
        chunks.append(chunk)
    return b"".join(chunks)
