"""aiohttp's request logger, with a malformed request logged as the client's doing.

aiohttp logs a request it cannot parse (a request line or a header past 8190 bytes, a
header without a colon) at ERROR with a traceback on `aiohttp.server`: anyone who reaches
the port could fill the backend's log with errors that are nobody's fault here. Given to the
runner as its `logger`, this logs each such request at INFO in one line naming the client
and the parser's complaint (never the client's bytes); everything else passes unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

__all__ = ["RequestLogger"]


class RequestLogger(logging.LoggerAdapter[logging.Logger]):
    """The `logger` of an aiohttp `AppRunner`, logging on `logger`."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if _malformed(exc_info):
            client = args[0] if args else "a client"
            self.logger.info(
                "malformed request from %s answered 400: %s", client, type(exc_info).__name__
            )
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs  # as given: the adapter adds no fields of its own


def _malformed(exc: object) -> bool:
    # aiohttp's parser errors (HttpProcessingError: LineTooLong, BadStatusLine, ...) are not
    # in its public API; they carry the status they are answered with and a message.
    return (
        isinstance(exc, Exception)
        and getattr(exc, "code", None) == 400
        and isinstance(getattr(exc, "message", None), str)
    )
