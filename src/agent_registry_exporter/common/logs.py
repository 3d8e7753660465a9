"""One line per event (JSON or text), structured fields included, on the exporter's loggers."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from .loggers import LOGGER, LOGGER_NAMES

__all__ = ["LOGGER", "LOGGER_NAMES", "LOG_FORMATS", "LogFormat", "configure_logging", "rfc3339"]


LogFormat = Literal["auto", "json", "text", "logfmt"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text", "logfmt")


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 in UTC with milliseconds: `2026-12-01T18:54:26.123Z`."""
    when = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return when.replace("+00:00", "Z")


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """What a JSON or logfmt line holds, in this order: time, level, logger, message, the
    record's own fields, the exception."""
    line: dict[str, Any] = {
        "time": rfc3339(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    line.update(getattr(record, "fields", {}))
    if record.exc_info:
        line["exception"] = formatter.formatException(record.exc_info)
    return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record), default=str)


# Escaped in every text line: C0 and C1 controls, DEL, the Unicode line and paragraph
# separators and the bidirectional overrides. Any of them coming from a request (a label,
# a header) could forge a line or rewrite the terminal; JSON lines escape them already.
_CONTROL_CODES = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_CONTROLS = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROL_CODES} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def escape_controls(text: str) -> str:
    """`text` with every control character written as a visible escape (one line)."""
    return text.translate(_CONTROLS)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return escape_controls(line)

    def formatException(self, ei: Any) -> str:
        # A traceback keeps its lines, each indented, so that none reads as a log line.
        return "\n".join(
            "    " + escape_controls(line) for line in super().formatException(ei).splitlines()
        )

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + escape_controls(line) for line in stack_info.splitlines())

    def format(self, record: logging.LogRecord) -> str:
        # logging caches the traceback text on the record for every handler: ours is
        # indented and escaped, so it is made here and never left there.
        cached, record.exc_text = record.exc_text, None
        try:
            text = super().format(record)
        finally:
            record.exc_text = cached
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(
                f"{escape_controls(str(k))}={escape_controls(repr(v))}" for k, v in fields.items()
            )
        return text


# Written as JSON's \uXXXX inside a quoted logfmt value (JSON escapes C0 itself): DEL, C1,
# the line separators and the bidirectional overrides, so a value cannot forge a line or
# rewrite the terminal, and a quoted value unquotes as a JSON string.
_LOGFMT_ESCAPES = {c: f"\\u{c:04x}" for c in _CONTROL_CODES if c >= 0x20}
_LOGFMT_QUOTED = re.compile("[" + re.escape("".join(map(chr, _CONTROL_CODES)) + '="\\') + r"\s]")
_LOGFMT_KEY_UNSAFE = re.compile(r"[^!#-<>-~]")  # printable ASCII but space, " and =


def _logfmt_value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    if text and not _LOGFMT_QUOTED.search(text):
        return text
    return json.dumps(text, ensure_ascii=False).translate(_LOGFMT_ESCAPES)


class _LogfmtFormatter(logging.Formatter):
    """`key=value` pairs, the JSON line's keys in its order; a value is quoted (as a JSON
    string) when it holds a space, `=`, a quote, a backslash or a control character."""

    def format(self, record: logging.LogRecord) -> str:
        line = _fields(self, record)
        return " ".join(
            f"{_LOGFMT_KEY_UNSAFE.sub('_', str(key)) or '_'}={_logfmt_value(value)}"
            for key, value in line.items()
        )


def _formatter(log_format: LogFormat, out: IO[str]) -> logging.Formatter:
    if log_format == "logfmt":
        return _LogfmtFormatter()
    if log_format == "json" or (log_format == "auto" and not out.isatty()):
        return _JsonFormatter()
    return _TextFormatter("%(asctime)s %(levelname)s %(message)s")


class _Handler(logging.StreamHandler[IO[str]]):
    """Ours, so configuring again replaces it instead of adding a second one."""


class _StderrHandler(_Handler):
    """Writes to whatever `sys.stderr` is when a line is logged, as `logging.lastResort` does.

    A handler holding the stream `sys.stderr` was at configuration time keeps writing to it
    after it is replaced and closed (pytest's capture, a host redirecting stderr): every
    later line then fails with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """Ignored: the handler always follows `sys.stderr`."""


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = "auto",
    *,
    logger: str = "",
    stream: IO[str] | None = None,
) -> None:
    """Log one line per event to `stream` (stderr): JSON when not a terminal, or as asked
    (`json`, `text`, `logfmt`). JSON and logfmt lines carry an RFC 3339 time in UTC with
    milliseconds.

    `logger=""` configures the root logger (what the command does). An embedding host
    passes `logger="agent_registry_exporter"` to see the exporter's lines without touching
    its own logging; calling again replaces the handler set up before.
    """
    out = stream if stream is not None else sys.stderr
    handler = _Handler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_formatter(log_format, out))
    target = logging.getLogger(logger)
    target.handlers[:] = [h for h in target.handlers if not isinstance(h, _Handler)]
    if not logger:
        target.handlers.clear()
    target.addHandler(handler)
    target.setLevel(level)


def show_decisions(level: str, log_format: LogFormat) -> None:
    """Make the exporter's INFO lines (one per decision) visible, and shown once.

    When the host's logging already has a handler the lines reach, only the level is set;
    otherwise (uvicorn and most hosts leave the root unconfigured) a handler is added.
    """
    package = logging.getLogger(LOGGER)
    package.setLevel(level)
    reached = any(not isinstance(h, _Handler) for h in _handlers_above(package))
    if not reached:
        configure_logging(level, log_format, logger=LOGGER)


def _handlers_above(logger: logging.Logger) -> list[logging.Handler]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found
