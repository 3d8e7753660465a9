"""Decisions stay visible when embedded, whatever the host did (or did not do) to logging.

Each case runs in its own interpreter: logging is process-wide state.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent_registry_exporter import configure_logging
from agent_registry_exporter.cli import main
from agent_registry_exporter.remediation import Alert, InstanceRouter
from agent_registry_exporter.testing.log_handlers import no_stray_log_handlers

from .conftest import DATA

_PROBE = "agent_registry_exporter.tests.probe"

# A backend embedding the exporter; `{setup}` is what the host does to logging first.
_EMBEDDING = """
import asyncio, logging, urllib.request
from agent_registry_exporter import AgentRegistry, Settings, start_exporter
{setup}

async def main():
    registry = AgentRegistry()
    for n in range(60):
        await registry.register_user_agent("leaky", f"agent-{{n}}", object())
    server = await start_exporter(
        registry,
        Settings(listen_host="127.0.0.1", listen_port=0, webhook_token="t0ken"),
        log_decisions={log_decisions},
    )
    request = urllib.request.Request(
        server.url + "/webhook/alertmanager",
        data={payload!r},
        headers={{"Authorization": "Bearer t0ken"}},
    )
    def post():
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    print("status", await asyncio.to_thread(post), flush=True)
    await server.stop()

asyncio.run(main())
"""

HOSTS = {
    # uvicorn and many hosts configure only their own loggers, never the root.
    "unconfigured": "",
    "root-at-warning": "logging.basicConfig(level=logging.WARNING)",
}


def run_embedded(setup: str, *, log_decisions: bool) -> subprocess.CompletedProcess:
    payload = (DATA / "webhook" / "firing-too-many-agents.json").read_bytes()
    code = _EMBEDDING.format(setup=setup, log_decisions=log_decisions, payload=payload)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def decision_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "remediation decision" in line]


class TestDecisionsWhenEmbedded:
    @pytest.mark.processes
    def test_log_decisions_shows_one_line_per_decision_in_an_unconfigured_host(self) -> None:
        """start_exporter(..., log_decisions=True): each decision is one line with its fields."""
        done = run_embedded(HOSTS["unconfigured"], log_decisions=True)
        assert "status 200" in done.stdout, done.stderr
        (line,) = decision_lines(done.stderr)
        assert "leaky" in line
        assert "cleaned" in line

    @pytest.mark.processes
    def test_a_host_with_its_own_logging_gets_each_decision_once_in_its_format(self) -> None:
        """The host's handler and format are kept; the level lets decisions through, once."""
        done = run_embedded(HOSTS["root-at-warning"], log_decisions=True)
        assert "status 200" in done.stdout, done.stderr
        (line,) = decision_lines(done.stderr)
        assert line.startswith("INFO:agent_registry_exporter.remediation.policy:")

    @pytest.mark.processes
    def test_without_it_an_unconfigured_host_shows_no_decisions(self) -> None:
        """The default leaves the host's logging alone (Python shows warnings only)."""
        done = run_embedded(HOSTS["unconfigured"], log_decisions=False)
        assert "status 200" in done.stdout, done.stderr
        assert decision_lines(done.stderr) == []


class TestConfigureLogging:
    @pytest.mark.processes
    def test_json_lines_carry_the_structured_fields(self, capsys) -> None:
        """The helper's JSON format puts each field of a decision in the line."""
        code = (
            "import logging\n"
            "from agent_registry_exporter import configure_logging\n"
            "configure_logging(log_format='json')\n"
            "fields = {'user_id': 'u1', 'outcome': 'cleaned'}\n"
            "logging.getLogger('agent_registry_exporter.remediation.policy').info(\n"
            "    'remediation decision', extra={'fields': fields})\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        (line,) = [json.loads(x) for x in done.stderr.splitlines()]
        assert line["logger"] == "agent_registry_exporter.remediation.policy"
        assert (line["user_id"], line["outcome"]) == ("u1", "cleaned")


class TestNoHandlerOnAClosedStream:
    def test_the_default_handler_follows_stderr_when_it_is_replaced_and_closed(
        self, monkeypatch
    ) -> None:
        """Configured while stderr was a stream now closed, it writes to today's stderr."""
        then, now = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", then)
        configure_logging(log_format="text", logger=_PROBE)
        try:
            then.close()  # what pytest does to a test's captured stderr
            monkeypatch.setattr(sys, "stderr", now)
            logging.getLogger(_PROBE).warning("still seen")
        finally:
            logging.getLogger(_PROBE).handlers.clear()
        assert "still seen" in now.getvalue()
        assert "Logging error" not in now.getvalue()

    def test_check_config_leaves_the_process_logging_alone(self, capsys) -> None:
        """`serve --check-config` validates and exits: no handler, no level changed."""
        root = logging.getLogger()
        before = (list(root.handlers), root.level)
        assert main(["serve", "--check-config", "--listen-port", "0"]) == 0
        assert (list(root.handlers), root.level) == before
        assert "configuration is valid" in capsys.readouterr().out

    def test_a_handler_left_behind_fails_the_guard_and_is_removed(self) -> None:
        """The guard every test runs under names the handler and takes it away."""
        with (
            pytest.raises(AssertionError, match="log handlers left behind"),
            no_stray_log_handlers(),
        ):
            configure_logging(logger=_PROBE, stream=io.StringIO())
        assert logging.getLogger(_PROBE).handlers == []

    def test_a_handler_removed_again_passes_the_guard(self) -> None:
        """Adding and removing within the block is fine."""
        with no_stray_log_handlers():
            configure_logging(logger=_PROBE, stream=io.StringIO())
            logging.getLogger(_PROBE).handlers.clear()


# What an attacker would put in a label: a forged next line, and terminal escapes.
FORGED = "10.0.0.9:8464\n2026-11-27 12:00:00,000 INFO cleaned session of user 'root'\x1b[2J\x9b"


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """The package's loggers, in the text format, into a buffer (restored afterwards)."""
    package = logging.getLogger("agent_registry_exporter")
    handlers, level = package.handlers[:], package.level
    out = io.StringIO()
    configure_logging("INFO", "text", logger="agent_registry_exporter", stream=out)
    yield out
    package.handlers[:] = handlers
    package.setLevel(level)


def assert_one_clean_line(text: str) -> str:
    (line,) = text.splitlines()
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in line), repr(line)
    return line


class TestControlCharactersInTextLogs:
    """Issue 20, finding 7: an alert's `instance` with a newline and ESC, forwarded with the
    hop header and a valid token, was written raw into the text log."""

    async def test_a_misrouted_forward_with_a_forged_instance_is_one_escaped_line(
        self, text_log
    ) -> None:
        """The forged line and the terminal escapes come out as visible escapes."""
        alert = Alert(
            status="firing",
            labels={"instance": FORGED, "user_id": "u1", "remediation": "cleanup"},
            starts_at=datetime(2026, 11, 27, tzinfo=UTC),
            fingerprint="f1",
        )
        await InstanceRouter("10.0.0.1:8464").route([alert], forwarded=True)
        line = assert_one_clean_line(text_log.getvalue())
        assert "misrouted forward" in line
        assert "\\n2026-11-27" in line
        assert "\\x1b[2J" in line

    def test_structured_fields_of_any_type_are_escaped(self, text_log) -> None:
        """A field's value is escaped whatever its type, even one with its own repr."""

        class Shifty:
            def __repr__(self) -> str:
                return "shifty\nforged line\x1b[0m"

        logging.getLogger("agent_registry_exporter.server").warning(
            "decision", extra={"fields": {"instance": FORGED, "odd": Shifty(), "n": 3}}
        )
        line = assert_one_clean_line(text_log.getvalue())
        assert "n=3" in line

    def test_an_exception_message_cannot_forge_a_line(self, text_log) -> None:
        """A traceback keeps its lines, each indented, so none reads as a log line."""
        log = logging.getLogger("agent_registry_exporter.server")
        try:
            raise ValueError(FORGED)
        except ValueError:
            log.exception("webhook failed")
        first, *rest = text_log.getvalue().splitlines()
        assert first.endswith("webhook failed")
        assert rest
        assert all(line.startswith(" ") for line in rest), rest
        assert not any("\x1b" in line or "\x9b" in line for line in rest)
