"""The Go exporters' flags (`--web.listen-address`, `--web.config.file`, `--log.level`,
`--log.format`) beside the exporter's own names: same settings, and a disagreeing pair
stops start-up naming both."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent_registry_exporter import Settings
from agent_registry_exporter.cli import main
from agent_registry_exporter.settings import (
    add_server_flags,
    describe_validation_error,
    server_overrides,
)

from .cli_process import console_script, fetch, start_command
from .doc_blocks import block
from .doc_sessions import run_block, session
from .test_log_formats import RFC3339_MS, parse_logfmt

CONFIGURATION = Path(__file__).parent.parent / "docs" / "configuration.md"


def overrides(*argv: str) -> dict[str, Any]:
    """The settings the `serve` flags `argv` set."""
    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    return server_overrides(parser.parse_args(argv))


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `serve ARGV --check-config` prints when it refuses them (exit 2)."""
    assert main(["serve", *argv, "--check-config"]) == 2
    return capsys.readouterr().err.strip()


class TestWebListenAddress:
    @pytest.mark.parametrize(
        ("address", "host", "port"),
        [
            ("127.0.0.1:9000", "127.0.0.1", 9000),
            ("[::1]:9000", "::1", 9000),
            ("[fd00::1]:8464", "fd00::1", 8464),
            ("exporter.example:8464", "exporter.example", 8464),
            (":9000", "0.0.0.0", 9000),
            ("127.0.0.1:0", "127.0.0.1", 0),
        ],
    )
    def test_sets_host_and_port(self, address: str, host: str, port: int) -> None:
        """HOST:PORT, [IPv6]:PORT and Go's :PORT (every interface) set both settings."""
        assert overrides(f"--web.listen-address={address}") == {
            "listen_host": host,
            "listen_port": port,
        }

    @pytest.mark.parametrize(
        ("address", "why"),
        [
            ("127.0.0.1", "'127.0.0.1' has no port"),
            ("::1:9000", "'::1:9000' has no port"),
            ("[::1]9000", "'[::1]9000' is not host:port"),
            ("127.0.0.1:http", "'127.0.0.1:http' has no valid port"),
            ("127.0.0.1:70000", "'127.0.0.1:70000' has no valid port"),
            ("127.0.0.1:\u0663\u0663", "'127.0.0.1:\u0663\u0663' has no valid port"),
            ("127.0.0.1:\u00b9", "'127.0.0.1:\u00b9' has no valid port"),
            (":\u0663\u0663", "':\u0663\u0663' has no valid port"),
            ("[::1]:\u00b2", "'[::1]:\u00b2' has no valid port"),
        ],
    )
    def test_a_bad_address_is_refused_naming_the_flag(self, capsys, address, why) -> None:
        """Exit 2 with one line naming the flag and what is wrong with the value."""
        assert refusal(capsys, f"--web.listen-address={address}") == (
            f"invalid option: --web.listen-address={address}: {why} (an IPv6 address in"
            " brackets: [::1]:8464)"
        )

    @pytest.mark.parametrize(
        ("flag", "host"),
        [
            ("--web.listen-address=ho\nst:9000", "ho\nst"),
            ("--web.listen-address=[a b]:9000", "a b"),
            ("--listen-host=[::1]", "[::1]"),
            ("--listen-host=\x1b[2J", "\x1b[2J"),
        ],
    )
    def test_a_host_no_address_can_be_is_refused_by_the_check(self, capsys, flag, host) -> None:
        """--check-config refuses a host with spaces, controls or brackets (it said valid,
        and start-up then failed to resolve it)."""
        err = refusal(capsys, flag)
        assert err.startswith("invalid setting listen_host"), err
        assert repr(host) in err
        assert "\n" not in err
        assert "\x1b" not in err

    def test_given_twice_is_refused(self, capsys) -> None:
        """Go exporters listen on each address given; one listener here, so say so."""
        assert refusal(
            capsys, "--web.listen-address=127.0.0.1:9000", "--web.listen-address=[::1]:9000"
        ) == ("invalid option: --web.listen-address is given 2 times: this exporter listens on one")

    def test_disagreeing_with_listen_port_names_both(self, capsys) -> None:
        """--web.listen-address and --listen-port with different ports: which one is meant?"""
        assert refusal(capsys, "--web.listen-address=127.0.0.1:9000", "--listen-port", "8464") == (
            "invalid option: --web.listen-address=127.0.0.1:9000 and --listen-port=8464 disagree"
            " (listen_port): give one of them"
        )

    def test_disagreeing_with_listen_host_names_both(self, capsys) -> None:
        assert refusal(capsys, "--web.listen-address=[::1]:9000", "--listen-host=::") == (
            "invalid option: --web.listen-address=[::1]:9000 and --listen-host=:: disagree"
            " (listen_host): give one of them"
        )

    def test_agreeing_with_the_own_flags_is_fine(self) -> None:
        """The same address said both ways is no conflict."""
        argv = ["--web.listen-address=[::1]:9000", "--listen-host", "::1", "--listen-port", "9000"]
        assert overrides(*argv) == {"listen_host": "::1", "listen_port": 9000}

    def test_flags_win_over_the_environment(self, monkeypatch) -> None:
        """As for every flag: the variable is the default the flag overrides, no conflict."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_LISTEN_PORT", "7000")
        chosen = overrides("--web.listen-address=127.0.0.1:9000")
        assert Settings(**chosen).listen_port == 9000


class TestWebConfigFile:
    def test_sets_the_web_config_file(self) -> None:
        assert overrides("--web.config.file=/etc/are/web.yml") == {
            "web_config_file": "/etc/are/web.yml"
        }

    def test_a_bad_file_is_named_as_the_setting(self, tmp_path: Path, capsys) -> None:
        """The same check as --web-config-file: the setting and the key are named."""
        path = tmp_path / "web.yml"
        path.write_text("tls_server_config:\n  client_auth: x\n")
        assert refusal(capsys, "--web.config.file", str(path)) == (
            "invalid setting web_config_file (AGENT_REGISTRY_EXPORTER_WEB_CONFIG_FILE): "
            f"web config {path}: tls_server_config.client_auth: unknown key"
        )

    def test_disagreeing_with_web_config_file_names_both(self, capsys) -> None:
        assert refusal(capsys, "--web.config.file=a.yml", "--web-config-file=b.yml") == (
            "invalid option: --web.config.file=a.yml and --web-config-file=b.yml disagree"
            " (web_config_file): give one of them"
        )


class TestLogFlags:
    @pytest.mark.parametrize(
        ("given", "level"),
        [
            ("debug", "DEBUG"),
            ("DEBUG", "DEBUG"),
            ("Info", "INFO"),
            ("warn", "WARNING"),
            ("warning", "WARNING"),
            ("error", "ERROR"),
        ],
    )
    def test_log_level_in_any_case(self, given: str, level: str) -> None:
        """Go exporters say debug, info, warn, error: any case, warn for WARNING."""
        assert Settings(**overrides(f"--log.level={given}")).log_level == level
        assert Settings(**overrides("--log-level", given)).log_level == level

    def test_log_level_from_the_environment_in_lower_case(self, monkeypatch) -> None:
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_LOG_LEVEL", "debug")
        assert Settings().log_level == "DEBUG"

    def test_an_unknown_level_names_the_setting_and_the_levels(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Settings(**overrides("--log.level=verbose"))
        assert describe_validation_error(caught.value) == (
            "invalid setting log_level (AGENT_REGISTRY_EXPORTER_LOG_LEVEL): 'verbose' is no"
            " level: debug, info, warn (warning), error, in any case"
        )

    @pytest.mark.parametrize("given", ["auto", "json", "text", "logfmt", "JSON", "Logfmt"])
    def test_log_format_takes_logfmt_too(self, given: str) -> None:
        assert Settings(**overrides(f"--log.format={given}")).log_format == given.lower()

    def test_disagreeing_levels_name_both(self, capsys) -> None:
        """Case aside: debug and DEBUG agree, debug and info do not."""
        assert overrides("--log.level=debug", "--log-level=DEBUG") == {"log_level": "debug"}
        assert refusal(capsys, "--log.level=debug", "--log-level=info") == (
            "invalid option: --log.level=debug and --log-level=info disagree (log_level):"
            " give one of them"
        )

    def test_disagreeing_formats_name_both(self, capsys) -> None:
        assert refusal(capsys, "--log.format=logfmt", "--log-format=json") == (
            "invalid option: --log.format=logfmt and --log-format=json disagree (log_format):"
            " give one of them"
        )


@pytest.mark.parametrize("command", ["serve", "sidecar"])
def test_help_shows_both_names(capsys, monkeypatch, command: str) -> None:
    """Each Go flag is in --help, saying which of the own flags it stands for."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--web.listen-address HOST:PORT" in text
    assert "as --listen-host and --listen-port" in text
    for go, own in (
        ("--web.config.file", "--web-config-file"),
        ("--log.level", "--log-level"),
        ("--log.format", "--log-format"),
    ):
        assert f"{go} " in text
        assert f"as {own}" in text


class TestDocumented:
    @pytest.mark.parametrize("command", ["serve", "sidecar"])
    def test_every_flag_is_on_the_configuration_page(self, capsys, monkeypatch, command) -> None:
        """Each flag `--help` lists is named on docs/configuration.md (its table is generated
        from the same lists the parser reads)."""
        monkeypatch.setenv("COLUMNS", "1000")
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = set(re.findall(r"(--[a-z][\w.-]*)", capsys.readouterr().out))
        assert {"--web.listen-address", "--log.level", "--log-format"} <= shown
        page = CONFIGURATION.read_text()
        for flag in shown - {"--help", "--check-config", "--demo"}:
            assert f"`{flag}" in page, flag

    @pytest.mark.processes
    def test_the_configuration_pages_session_prints_what_it_shows(self, tmp_path) -> None:
        """The page's `--web.listen-address` session, run: valid, then the pair refused."""
        shown = block("docs/configuration.md", "console", "--web.listen-address")
        with session(tmp_path) as running:
            run_block(running, shown, [])


@pytest.mark.processes
class TestStartedForReal:
    @pytest.mark.parametrize(
        "host",
        ["127.0.0.1", "::1"],  # loopback has both families here, as in a dual-stack pod
    )
    def test_go_flags_serve_and_log_debug_lines_as_json(self, host: str) -> None:
        """`serve --web.listen-address=... --log.level=debug --log.format=json`: it serves
        there, and the debug line of the settings in force is JSON with an RFC 3339 time."""
        bracketed = f"[{host}]" if ":" in host else host

        def command(port: int) -> list[str]:
            return [console_script(), "serve", "--demo", f"--web.listen-address={bracketed}:{port}"]

        before = datetime.now(UTC)
        running = start_command(
            lambda port: [*command(port), "--log.level=debug", "--log.format=json"],
            lambda port: f"http://{bracketed}:{port}/-/healthy",
            env=_env(),
        )
        try:
            assert "agent_registry_users " in fetch(f"http://{bracketed}:{running.port}/metrics")
        finally:
            assert running.stop() == 0, running.stderr
        lines = [json.loads(line) for line in running.stderr.splitlines()]
        (shown,) = [line for line in lines if line["message"] == "settings in force"]
        assert shown["level"] == "debug"
        assert (shown["listen_host"], shown["listen_port"]) == (host, running.port)
        assert shown["webhook_token"] == "**********"
        _assert_between(shown["time"], before, datetime.now(UTC))

    def test_logfmt_lines_at_the_default_level(self) -> None:
        """`--log.format=logfmt`: every line parses as logfmt; INFO hides the debug line."""
        before = datetime.now(UTC)
        running = start_command(
            lambda port: [
                console_script(),
                "serve",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.format=logfmt",
            ],
            lambda port: f"http://127.0.0.1:{port}/-/healthy",
            env=_env(),
        )
        assert running.stop() == 0, running.stderr
        lines = [parse_logfmt(line) for line in running.stderr.splitlines()]
        assert lines, running.stderr
        assert all(line["level"] in ("info", "warning") for line in lines), lines
        assert not [line for line in lines if line["message"] == "settings in force"]
        _assert_between(lines[0]["time"], before, datetime.now(UTC))


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": "t0ken"}


def _assert_between(text: str, before: datetime, after: datetime) -> None:
    """Milliseconds and a zone, and a time between `before` and `after` (to the ms)."""
    assert re.fullmatch(RFC3339_MS, text), text
    when = datetime.fromisoformat(text)
    assert before - timedelta(milliseconds=1) <= when <= after, (before, text, after)
