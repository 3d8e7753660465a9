"""What an unlucky operator sees: one line naming the setting, the right exit code, no traceback."""

from __future__ import annotations

import socket
import subprocess

import pytest

from agent_registry_exporter import Settings
from agent_registry_exporter.cli import main
from agent_registry_exporter.settings import ENV_PREFIX, ThresholdSettings

from .conftest import console_script


def run_console_script(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [console_script(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


class TestBindFailures:
    @pytest.mark.processes
    def test_port_in_use_is_one_line_naming_the_setting_and_exit_1(self) -> None:
        """Attack of bad luck: the port is taken. One line, exit 1, no traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = run_console_script(
                "serve", "--listen-host", "127.0.0.1", "--listen-port", str(port)
            )
        assert done.returncode == 1, done.stderr
        errors = [line for line in done.stderr.splitlines() if "cannot listen" in line]
        assert len(errors) == 1, done.stderr
        assert "listen_port" in errors[0]
        assert f"127.0.0.1:{port}" in errors[0]
        assert "Traceback" not in done.stderr

    @pytest.mark.processes
    def test_the_hint_names_every_flag_of_the_setting(self) -> None:
        """Given the Go exporters' --web.listen-address, the hint names that flag too, not
        only --listen-port and the variable."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = run_console_script("serve", "--web.listen-address", f"127.0.0.1:{port}")
        assert done.returncode == 1, done.stderr
        (error,) = [line for line in done.stderr.splitlines() if "cannot listen" in line]
        hint = error.rsplit("; set ", 1)[1]
        assert hint == f"--listen-port or --web.listen-address or {ENV_PREFIX}LISTEN_PORT"

    @pytest.mark.processes
    def test_address_not_on_this_machine_is_one_line_naming_the_setting(self) -> None:
        """A host address this machine does not have (TEST-NET-1) is named, exit 1."""
        done = run_console_script("serve", "--listen-host", "192.0.2.1", "--listen-port", "0")
        assert done.returncode == 1, done.stderr
        (error,) = [line for line in done.stderr.splitlines() if "cannot listen" in line]
        assert "listen_host" in error
        assert "192.0.2.1" in error
        assert "Traceback" not in done.stderr


class TestUnknownEnvironment:
    @pytest.mark.parametrize("args", [["serve"], ["serve", "--check-config"]])
    def test_misspelt_variable_stops_start_up_with_the_closest_name(
        self, capsys, monkeypatch, args
    ) -> None:
        """Attack of a typo: LISTEN_PROT names no setting; the error suggests LISTEN_PORT."""
        monkeypatch.setenv(f"{ENV_PREFIX}LISTEN_PROT", "9000")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{ENV_PREFIX}LISTEN_PROT" in err
        assert f"did you mean {ENV_PREFIX}LISTEN_PORT?" in err

    def test_lower_case_variables_are_recognised_like_upper_case_ones(
        self, capsys, monkeypatch
    ) -> None:
        """pydantic-settings reads names case-insensitively, and so does the check."""
        monkeypatch.setenv(f"{ENV_PREFIX}listen_port".lower(), "0")
        assert main(["serve", "--check-config"]) == 0

    def test_every_setting_and_threshold_is_a_known_variable(self, capsys, monkeypatch) -> None:
        """Names come from the settings models: a setting added later is known at once."""
        valid = {"agents_per_user": "60", "session_age_seconds": "100", "total_agents": "600"}
        for name in (*Settings.model_fields, *ThresholdSettings.model_fields):
            monkeypatch.setenv(f"{ENV_PREFIX}{name.upper()}", valid.get(name, "x"))
        from agent_registry_exporter.settings import unknown_environment

        assert unknown_environment() == []

    def test_variable_far_from_any_name_gets_no_suggestion(self, capsys, monkeypatch) -> None:
        """No near name: the error lists where the valid names are instead of guessing."""
        monkeypatch.setenv(f"{ENV_PREFIX}ZZZZ", "1")
        assert main(["serve", "--check-config"]) == 2
        err = capsys.readouterr().err
        assert f"{ENV_PREFIX}ZZZZ" in err
        assert "did you mean" not in err


class TestCheckConfig:
    def test_check_config_warns_when_the_webhook_has_no_token(self, capsys) -> None:
        """Valid, but the webhook would refuse Alertmanager: say so (exit 0)."""
        assert main(["serve", "--check-config", "--listen-port", "0"]) == 0
        captured = capsys.readouterr()
        assert "valid" in captured.out
        assert "warning" in captured.err
        assert "WEBHOOK_TOKEN" in captured.err

    def test_check_config_is_quiet_with_a_token(self, capsys, tmp_path) -> None:
        """With a token file, nothing to warn about."""
        token = tmp_path / "token"
        token.write_text("t0ken\n")
        assert main(["serve", "--check-config", "--webhook-token-file", str(token)]) == 0
        assert "warning" not in capsys.readouterr().err
