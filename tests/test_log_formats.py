"""The log line formats: JSON and logfmt carry an RFC 3339 time with milliseconds and a zone,
the same keys, and every structured field; no value can break a line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator

import pytest

from agent_registry_exporter import configure_logging

from .conftest import T0

_PROBE = "agent_registry_exporter.tests.formats"
# 2026-11-27T12:00:00.123Z: T0 and 123.4 ms.
CREATED = T0 + 0.1234
RFC3339_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)"

_PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s+|$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line's keys and values (quoted values unescaped); AssertionError when the
    line is not logfmt."""
    pairs = _PAIR.findall(line)
    assert "".join(m.group(0) for m in _PAIR.finditer(line)) == line, f"not logfmt: {line!r}"
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


@pytest.fixture
def logged() -> Iterator[Callable[..., str]]:
    """Log one line with this format at a known time; the text written."""
    logger = logging.getLogger(_PROBE)

    def at_created(record: logging.LogRecord) -> bool:
        record.created = CREATED
        record.msecs = (CREATED % 1) * 1000
        return True

    def log(log_format: str, message: str, **fields: object) -> str:
        out = io.StringIO()
        configure_logging("DEBUG", log_format, logger=_PROBE, stream=out)  # type: ignore[arg-type]
        logger.warning(message, extra={"fields": fields} if fields else None)
        return out.getvalue()

    logger.addFilter(at_created)
    yield log
    logger.removeFilter(at_created)
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)


class TestJson:
    def test_time_is_rfc3339_with_milliseconds_and_a_zone(self, logged) -> None:
        """Not `2026-11-27T12:00:00` (no zone, no sub-seconds): the record's time, in UTC."""
        line = json.loads(logged("json", "hello"))
        assert line["time"] == "2026-11-27T12:00:00.123Z"
        assert re.fullmatch(RFC3339_MS, line["time"])

    def test_keys_and_fields(self, logged) -> None:
        line = json.loads(logged("json", "cleanup decided", user_id="u1", agents=3))
        assert line == {
            "time": "2026-11-27T12:00:00.123Z",
            "level": "warning",
            "logger": _PROBE,
            "message": "cleanup decided",
            "user_id": "u1",
            "agents": 3,
        }


class TestLogfmt:
    def test_a_line_parses_with_the_json_lines_keys(self, logged) -> None:
        """time, level, logger, message, then each field, as in a JSON line."""
        text = logged("logfmt", "cleanup decided", user_id="u1", agents=3, dry_run=False)
        assert text.endswith("\n")
        assert text.count("\n") == 1
        assert parse_logfmt(text.rstrip("\n")) == {
            "time": "2026-11-27T12:00:00.123Z",
            "level": "warning",
            "logger": _PROBE,
            "message": "cleanup decided",
            "user_id": "u1",
            "agents": "3",
            "dry_run": "false",
        }

    def test_plain_values_are_bare_and_others_quoted(self, logged) -> None:
        text = logged("logfmt", "x", simple="w0", spaced="a b", empty="", eq="k=v", none=None)
        assert 'message=x simple=w0 spaced="a b" empty="" eq="k=v" none=null' in text

    def test_no_value_can_forge_a_line_or_a_key(self, logged) -> None:
        """Newlines, quotes, backslashes, terminal escapes and a forged key=value stay
        inside their value, each written as a visible escape."""
        forged = 'u1" level=info message="cleaned\n2026 fake\x1b[2J\x9b\u202e\\'
        text = logged("logfmt", forged, instance=forged, **{"odd key=": "v"})
        (line,) = text.splitlines()
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 or c == "\u202e" for c in line)
        parsed = parse_logfmt(line)
        assert parsed["level"] == "warning"
        assert parsed["message"] == parsed["instance"]
        assert "\\u001b[2J" in line
        assert parsed["odd_key_"] == "v"

    def test_an_exception_stays_on_the_line(self, logged) -> None:
        logger = logging.getLogger(_PROBE)
        out = io.StringIO()
        configure_logging("DEBUG", "logfmt", logger=_PROBE, stream=out)
        try:
            raise ValueError("boom\nsecond")
        except ValueError:
            logger.exception("failed")
        (line,) = out.getvalue().splitlines()
        parsed = parse_logfmt(line)
        assert parsed["level"] == "error"
        assert parsed["exception"].startswith("Traceback")
        assert "ValueError: boom\nsecond" in parsed["exception"]
