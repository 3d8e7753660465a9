"""Request bodies are never decompressed: a compressed one is refused before anything reads it."""

from __future__ import annotations

from aiohttp import hdrs, web

from .json_errors import Handler, json_error

__all__ = ["refuse_encoded_bodies"]


@web.middleware
async def refuse_encoded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a compressed body, before anything reads it: inflating costs the server CPU.

    Runners using it never decompress either (`auto_decompress=False`), so an unread body
    is drained as the bytes on the wire, whatever it claims to inflate to.
    """
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding in ("", "identity"):
        return await handler(request)
    refused = json_error(
        415, f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed"
    )
    refused.headers[hdrs.ACCEPT_ENCODING] = "identity"
    refused.force_close()  # the rest of the body is not worth reading
    return refused
