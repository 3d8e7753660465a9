"""Settings and the CLI: every bad value stops start-up with a message naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_registry_exporter import Settings, Thresholds, __version__
from agent_registry_exporter.cli import main
from agent_registry_exporter.settings import ThresholdSettings, describe_validation_error


class TestSettings:
    def test_environment_is_read_with_the_prefix(self, monkeypatch) -> None:
        """AGENT_REGISTRY_EXPORTER_LISTEN_PORT sets listen_port."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_LISTEN_PORT", "9999")
        assert Settings().listen_port == 9999

    def test_defaults(self, monkeypatch) -> None:
        """The default port is 8464 and the webhook has no token."""
        s = Settings()
        assert (s.listen_port, s.max_user_series, s.resolved_webhook_token()) == (
            8464,
            10_000,
            None,
        )

    @pytest.mark.parametrize(
        ("env", "value", "fragment"),
        [
            (
                "LISTEN_PORT",
                "70000",
                "invalid setting listen_port (AGENT_REGISTRY_EXPORTER_LISTEN_PORT)",
            ),
            ("LISTEN_PORT", "http", "invalid setting listen_port"),
            ("MAX_USER_SERIES", "0", "invalid setting max_user_series"),
            ("BREAKER_MAX_SHARE", "1.5", "invalid setting breaker_max_share"),
            ("USER_SERIES_MIN_PRESSURE", "1.5", "invalid setting user_series_min_pressure"),
            ("USER_SERIES_MIN_PRESSURE", "-0.1", "invalid setting user_series_min_pressure"),
            ("DRY_RUN", "perhaps", "invalid setting dry_run"),
        ],
    )
    def test_bad_environment_value_names_the_setting(self, monkeypatch, env, value, fragment):
        """The message says which setting, and which variable, is wrong."""
        monkeypatch.setenv(f"AGENT_REGISTRY_EXPORTER_{env}", value)
        with pytest.raises(ValidationError) as info:
            Settings()
        assert fragment in describe_validation_error(info.value)

    def test_unknown_argument_is_rejected(self) -> None:
        """A misspelt setting is an error."""
        with pytest.raises(ValidationError, match="listen_prot"):
            Settings(listen_prot=1)  # type: ignore[call-arg]

    def test_token_file_is_read_and_stripped(self, tmp_path: Path) -> None:
        """The token file's trailing newline is not part of the token."""
        path = tmp_path / "token"
        path.write_text("s3cret\n")
        assert Settings(webhook_token_file=path).resolved_webhook_token() == "s3cret"

    @pytest.mark.parametrize("content", [None, ""], ids=["missing", "empty"])
    def test_unusable_token_file_stops_start_up(self, tmp_path: Path, content) -> None:
        """A missing or empty token file is a start-up error naming the file."""
        path = tmp_path / "token"
        if content is not None:
            path.write_text(content)
        with pytest.raises(ValidationError, match="webhook_token_file"):
            Settings(webhook_token_file=path)

    def test_token_and_token_file_together_are_refused(self, tmp_path: Path) -> None:
        """Two sources for one secret is ambiguous."""
        path = tmp_path / "token"
        path.write_text("a")
        with pytest.raises(ValidationError, match="not both"):
            Settings(webhook_token="b", webhook_token_file=path)

    def test_threshold_settings_fill_only_what_is_set(self, monkeypatch) -> None:
        """Unset thresholds keep the defaults of Thresholds."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_AGENTS_PER_USER", "7")
        assert ThresholdSettings().to_thresholds() == Thresholds(agents_per_user=7)


class TestCli:
    def test_version(self, capsys) -> None:
        """--version prints the package version."""
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert __version__ in capsys.readouterr().out

    def test_check_config_accepts_valid_settings(self, capsys) -> None:
        """serve --check-config exits 0 on valid settings without serving."""
        assert main(["serve", "--check-config", "--listen-port", "0"]) == 0
        assert "valid" in capsys.readouterr().out

    def test_sidecar_takes_every_serve_setting_and_the_socket_dir(self, capsys, socket_dir) -> None:
        """sidecar --check-config accepts the serve options plus --socket-dir."""
        argv = ["--check-config", "--listen-port", "0", "--dry-run", "--max-user-series", "5"]
        assert main(["sidecar", *argv, "--socket-dir", str(socket_dir)]) == 0
        assert "valid" in capsys.readouterr().out

    def test_socket_dir_is_read_from_the_variable_serve_registry_reads(self, monkeypatch) -> None:
        """One variable names the directory for the sidecar and for the workers."""
        from agent_registry_exporter.sources import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV

        assert Settings().socket_dir == DEFAULT_SOCKET_DIR == Path("/run/agent-registry")
        monkeypatch.setenv(SOCKET_DIR_ENV, "/srv/sockets")
        assert Settings().socket_dir == Path("/srv/sockets")

    @pytest.mark.parametrize("command", ["serve", "sidecar"])
    def test_help_takes_descriptions_and_defaults_from_the_models(
        self, capsys, monkeypatch, command
    ) -> None:
        """Each option's help is its field's description and default: none restated."""
        monkeypatch.setenv("COLUMNS", "1000")  # one line per option: nothing wrapped
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        options = ["listen_host", "listen_port", "max_user_series", "web_config_file", "dry_run"]
        fields = {name: Settings.model_fields[name] for name in options}
        if command == "sidecar":
            fields["socket_dir"] = Settings.model_fields["socket_dir"]
        else:
            fields.update(Thresholds.model_fields)
        for name, field in fields.items():
            assert field.description, name
            flag = "--" + name.replace("_", "-")
            expected = " ".join(field.description.split())
            if field.default is not None and not isinstance(field.default, bool):
                expected += f" (default: {field.default})"
            assert f"{flag} " in text, flag
            assert expected in text, name

    def test_bad_threshold_stops_start_up(self, capsys, monkeypatch) -> None:
        """A zero limit exits 2 naming the setting."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_AGENTS_PER_USER", "0")
        assert main(["serve", "--check-config"]) == 2
        assert "agents_per_user" in capsys.readouterr().err

    @pytest.mark.parametrize("limit", ["inf", "-inf", "nan", "Infinity"])
    def test_a_session_age_limit_that_is_no_number_of_seconds_stops_start_up(
        self, capsys, monkeypatch, limit
    ) -> None:
        """An infinite limit is no limit of seconds: it printed a second +Inf bucket, spelt
        le="inf", beside the histogram's own. Exit 2 naming the setting, as for zero."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_SESSION_AGE_SECONDS", limit)
        assert main(["serve", "--check-config"]) == 2
        assert "session_age_seconds" in capsys.readouterr().err

    @pytest.mark.processes
    def test_console_script_reports_bad_port(self) -> None:
        """The installed command exits 2 and names the setting on stderr."""
        done = subprocess.run(
            [sys.executable, "-m", "agent_registry_exporter.cli", "serve", "--listen-port", "-5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "invalid setting listen_port (AGENT_REGISTRY_EXPORTER_LISTEN_PORT)" in done.stderr


class TestRemediationPolicy:
    def test_defaults_are_the_settings_own(self) -> None:
        """The policy carries no second copy of the receiver's defaults: Settings hold them."""
        from agent_registry_exporter.remediation import RemediationPolicy

        assert RemediationPolicy.from_settings(Settings()) == RemediationPolicy()

    def test_settings_reach_the_policy(self, monkeypatch) -> None:
        """An environment value ends up in the policy the receiver uses."""
        from agent_registry_exporter.remediation import RemediationPolicy

        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_CLEANUP_BURST", "3")
        settings = Settings(dry_run=True, instance="10.0.0.1:8464")
        policy = RemediationPolicy.from_settings(settings)
        assert (policy.cleanup_burst, policy.dry_run, policy.instance) == (3, True, "10.0.0.1:8464")


class TestReplicaSettings:
    def test_peers_without_instance_stops_start_up(self, capsys, monkeypatch) -> None:
        """Forwarding must know who we are: the message names both settings and the fix."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_PEERS", "agents-headless")
        assert main(["serve", "--check-config"]) == 2
        err = capsys.readouterr().err
        assert "peers (AGENT_REGISTRY_EXPORTER_PEERS) needs instance" in err
        assert "AGENT_REGISTRY_EXPORTER_INSTANCE_HOST" in err
        assert "$(POD_IP)" in err

    def test_instance_without_port_is_refused_with_peers(self) -> None:
        """Peers found by DNS take our instance's port: it must have one."""
        with pytest.raises(ValidationError, match=r"instance .* must be host:port"):
            Settings(peers="agents-headless", instance="10.0.0.1")

    @pytest.mark.parametrize("value", ["", "a,,b", "host:http", "a:b:c"])
    def test_malformed_peers_name_the_setting(self, monkeypatch, value) -> None:
        """A bad list stops start-up naming `peers` and its variable."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_PEERS", value)
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_INSTANCE", "10.0.0.1:8464")
        with pytest.raises(ValidationError) as info:
            Settings()
        assert "invalid setting peers (AGENT_REGISTRY_EXPORTER_PEERS)" in (
            describe_validation_error(info.value)
        )

    def test_kubernetes_values_are_accepted(self, monkeypatch) -> None:
        """The manifests' values: the pod IP with the port, the headless Service's name."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_INSTANCE", "10.244.1.7:8464")
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_PEERS", "agent-registry-exporter-peers")
        settings = Settings()
        assert (settings.instance, settings.peers) == (
            "10.244.1.7:8464",
            "agent-registry-exporter-peers",
        )


class TestInstanceHost:
    @pytest.mark.parametrize(
        ("host", "instance"),
        [
            ("10.244.1.7", "10.244.1.7:8464"),
            ("fd00::1", "[fd00::1]:8464"),
            ("2001:db8:0:0:1::7", "[2001:db8:0:0:1::7]:8464"),
        ],
    )
    def test_instance_host_gives_instance_as_prometheus_writes_it(
        self, monkeypatch, host, instance
    ) -> None:
        """The pod IP plus the listen port, IPv6 bracketed: the pod target's `instance`."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_INSTANCE_HOST", host)
        assert Settings().instance == instance

    def test_instance_host_takes_the_listen_port(self) -> None:
        """The port is the one the exporter listens on, the one Prometheus scrapes."""
        assert Settings(instance_host="fd00::1", listen_port=9000).instance == "[fd00::1]:9000"

    def test_an_explicit_instance_wins_over_instance_host(self) -> None:
        """`instance_host` fills `instance` only when it is unset."""
        settings = Settings(instance="pod-a:8464", instance_host="fd00::1")
        assert settings.instance == "pod-a:8464"

    def test_instance_host_is_enough_for_peers(self) -> None:
        """Peers need to know our instance: `instance_host` gives it (with a port)."""
        settings = Settings(instance_host="fd00::1", peers="agents-headless")
        assert (settings.instance, settings.peers) == ("[fd00::1]:8464", "agents-headless")

    @pytest.mark.parametrize(
        "value", ["", "pod-a", "10.0.0.1:8464", "[fd00::1]", "[fd00::1]:8464", "10.0.0.256"]
    )
    def test_bad_instance_host_stops_start_up_naming_the_setting(
        self, capsys, monkeypatch, value
    ) -> None:
        """Anything but a bare IP address is refused at start-up (exit 2), naming it."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_INSTANCE_HOST", value)
        assert main(["sidecar", "--check-config"]) == 2
        err = capsys.readouterr().err
        assert "invalid setting instance_host (AGENT_REGISTRY_EXPORTER_INSTANCE_HOST)" in err
        assert "IP address" in err

    def test_instance_host_with_a_port_picked_at_bind_is_refused(self) -> None:
        """listen_port=0 picks a port nobody knows yet: no `instance` can be derived."""
        with pytest.raises(ValidationError) as info:
            Settings(instance_host="10.0.0.1", listen_port=0)
        message = describe_validation_error(info.value)
        assert "instance_host (AGENT_REGISTRY_EXPORTER_INSTANCE_HOST)" in message
        assert "listen_port" in message

    def test_instance_host_flag_sets_it(self, capsys) -> None:
        """`--instance-host` is the option of the setting, as for the other settings."""
        assert main(["serve", "--check-config", "--instance-host", "fd00::1"]) == 0
        assert main(["serve", "--check-config", "--instance-host", "pod-a"]) == 2
        assert "invalid setting instance_host" in capsys.readouterr().err

    def test_the_receiver_owns_the_derived_instance(self) -> None:
        """The receiver's own instance is the derived one (alerts naming it are its own)."""
        from agent_registry_exporter.remediation import RemediationPolicy

        settings = Settings(instance_host="fd00::1")
        assert RemediationPolicy.from_settings(settings).instance == "[fd00::1]:8464"
