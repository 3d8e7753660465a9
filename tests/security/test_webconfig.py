"""The web config file's schema: exporter-toolkit's examples load, each bad file is refused
with one sentence naming the key (the sentence is the first line of each data file)."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from agent_registry_exporter import Settings
from agent_registry_exporter.cli import main
from agent_registry_exporter.http.security import ActiveWebConfig
from agent_registry_exporter.http.security.webconfig import WebConfigError, load_web_config
from agent_registry_exporter.settings import describe_validation_error

from ..conftest import DATA
from ..doc_blocks import block
from .conftest import Pki

CASES = DATA / "webconfig"
BAD = sorted(p.name for p in CASES.glob("bad-*.yml"))
GOOD = sorted(p.name for p in CASES.glob("good-*.yml"))
EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "web-config.yml"


def placed(pki: Pki, name: str) -> Path:
    """The case file copied beside the test's certificates (paths are relative to it)."""
    return Path(shutil.copy(CASES / name, pki.dir / name))


def inline_tls(pki: Pki) -> Path:
    """A web config holding the server's certificate and key as PEM text."""
    cert = (pki.dir / "server.crt").read_text()
    key = (pki.dir / "server.key").read_text()

    def block(text: str) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in text.splitlines())

    return pki.write(f"tls_server_config:\n  cert: {block(cert)}  key: {block(key)}")


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path.name} must start with '# error: <sentence>'"
    return first.removeprefix("# error: ").replace("{dir}", str(path.parent))


class TestInvalidFiles:
    @pytest.mark.parametrize("name", BAD)
    def test_bad_file_is_refused_with_its_key_named(self, pki: Pki, name: str) -> None:
        """Loading fails with exactly the sentence the case file announces."""
        pki.server_cert("other")  # a second key pair, for the mismatch case
        path = placed(pki, name)
        with pytest.raises(WebConfigError) as refused:
            ActiveWebConfig.load(path)
        assert str(refused.value) == f"web config {path}: {expected_error(path)}"

    def test_there_is_a_case_per_rule(self) -> None:
        """Every rule of the schema has its own bad file (keeps the corpus from shrinking)."""
        assert len(BAD) >= 24

    def test_missing_file_is_named(self, tmp_path: Path) -> None:
        """A path that does not exist stops loading with the path and the reason."""
        path = tmp_path / "nope.yml"
        with pytest.raises(WebConfigError) as refused:
            load_web_config(path)
        assert str(refused.value) == f"web config {path}: cannot be read: No such file or directory"

    def test_secret_is_never_echoed(self, pki: Pki) -> None:
        """A password typed in clear instead of a hash is not repeated in the error."""
        path = placed(pki, "bad-password-not-bcrypt.yml")
        with pytest.raises(WebConfigError) as refused:
            load_web_config(path)
        assert "correct-horse" not in str(refused.value)

    def test_bad_file_stops_settings_naming_setting_and_key(self, pki: Pki) -> None:
        """Settings refuse it: the message names the setting, its variable and the key."""
        path = placed(pki, "bad-unknown-tls-key.yml")
        with pytest.raises(ValidationError) as refused:
            Settings(web_config_file=path)
        assert describe_validation_error(refused.value) == (
            "invalid setting web_config_file (AGENT_REGISTRY_EXPORTER_WEB_CONFIG_FILE): "
            f"web config {path}: tls_server_config.client_auth: unknown key"
        )


class TestValidFiles:
    @pytest.mark.parametrize("name", GOOD)
    def test_exporter_toolkit_examples_load(self, pki: Pki, name: str) -> None:
        """The exporter-toolkit documentation's example and its test files load as they are."""
        ActiveWebConfig.load(placed(pki, name))

    def test_docs_example_means_what_it_says(self, pki: Pki) -> None:
        """TLS on, two users, a 1/s rate limit with a burst of 20."""
        active = ActiveWebConfig.load(placed(pki, "good-exporter-toolkit-docs-example.yml"))
        assert isinstance(active.ssl_context, ssl.SSLContext)
        assert set(active.users) == {"alice", "bob"}
        assert active.rate_limit is not None
        assert (active.rate_limit.rate, active.rate_limit.burst) == (1.0, 20)

    def test_defaults_are_exporter_toolkits(self) -> None:
        """An empty file: no TLS, no users, TLS 1.2 to 1.3, server cipher order, HTTP/2 on."""
        config = load_web_config(CASES / "good-empty.yml")
        tls = config.tls_server_config
        assert not tls.enabled
        assert (tls.min_version, tls.max_version) == ("TLS12", "TLS13")
        assert tls.client_auth_type == "NoClientCert"
        assert tls.prefer_server_cipher_suites
        assert config.http_server_config.http2
        assert not config.basic_auth_users
        assert config.rate_limit.interval == 0

    def test_relative_paths_are_taken_from_the_files_directory(self, pki: Pki) -> None:
        """As exporter-toolkit does: cert_file is joined with the config's directory."""
        tls = load_web_config(placed(pki, "good-exporter-toolkit-client-sans.yml"))
        assert tls.tls_server_config.cert_file == str(pki.dir / "server.crt")
        assert tls.tls_server_config.client_ca_file == str(pki.dir / "ca.pem")

    def test_headers_are_read_as_text(self, pki: Pki) -> None:
        """`X-XSS-Protection: 1` is a YAML integer; Go reads it as the text "1"."""
        active = ActiveWebConfig.load(placed(pki, "good-exporter-toolkit-headers.yml"))
        assert active.headers["X-XSS-Protection"] == "1"
        assert active.headers["X-Frame-Options"] == "deny"
        assert len(active.headers) == 5

    def test_inline_certificate_and_key_load(self, pki: Pki) -> None:
        """cert/key given as PEM text in the file work like cert_file/key_file."""
        assert ActiveWebConfig.load(inline_tls(pki)).ssl_context is not None

    @pytest.mark.parametrize("inline", [False, True], ids=["cert-files", "inline-pem"])
    def test_certificates_load_without_any_temporary_directory(
        self, pki: Pki, inline: bool, monkeypatch
    ) -> None:
        """No temporary file is made: tempfile finding no usable directory changes nothing."""

        def no_directory() -> str:
            raise FileNotFoundError("No usable temporary directory found")

        monkeypatch.setattr(tempfile, "_get_default_tempdir", no_directory)
        monkeypatch.setattr(tempfile, "tempdir", None)
        path = (
            inline_tls(pki)
            if inline
            else pki.write("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
        )
        active = ActiveWebConfig.load(path)
        assert active.ssl_context is not None
        assert active.peer_context is not None

    def test_inline_pem_where_memory_files_are_missing_names_the_key(
        self, pki: Pki, monkeypatch
    ) -> None:
        """Without memfd_create, inline PEM is refused naming the key and the fix."""
        monkeypatch.delattr(os, "memfd_create")
        with pytest.raises(WebConfigError) as caught:
            ActiveWebConfig.load(inline_tls(pki))
        assert str(caught.value) == (
            f"web config {pki.dir / 'web.yml'}: tls_server_config.cert: inline PEM is read from"
            " memory, which needs Linux (memfd_create and /proc); use cert_file"
        )

    def test_many_loads_of_inline_pem_leave_no_descriptor_open(self, pki: Pki) -> None:
        """Hot reloads, good and refused (a key of another certificate), keep no memfd."""
        good = inline_tls(pki)
        other = pki.ca.issue_cert("other.example")
        bad = pki.write(
            "tls_server_config:\n  cert: |\n"
            + "".join(f"    {line}\n" for line in (pki.dir / "server.crt").read_text().splitlines())
            + "  key: |\n"
            + "".join(
                f"    {line}\n" for line in other.private_key_pem.bytes().decode().splitlines()
            ),
            name="bad.yml",
        )
        ActiveWebConfig.load(good)  # anything opened once (a library's first use) is open now
        before = sorted(os.listdir("/proc/self/fd"))
        for _ in range(100):
            assert ActiveWebConfig.load(good).ssl_context is not None
            with pytest.raises(WebConfigError, match="cannot be used with the certificate"):
                ActiveWebConfig.load(bad)
        assert sorted(os.listdir("/proc/self/fd")) == before

    def test_committed_example_loads(self, pki: Pki) -> None:
        """examples/web-config.yml loads with certificates where it says they are."""
        (pki.dir / "tls").mkdir()
        for name in ("tls.crt", "tls.key", "ca.crt"):
            source = {"tls.crt": "server.crt", "tls.key": "server.key", "ca.crt": "ca.pem"}[name]
            shutil.copy(pki.dir / source, pki.dir / "tls" / name)
        active = ActiveWebConfig.load(Path(shutil.copy(EXAMPLE, pki.dir / "web-config.yml")))
        assert active.ssl_context is not None
        assert active.users
        assert active.headers


def test_docs_show_the_committed_example() -> None:
    """The security page's web config block says what examples/web-config.yml says."""
    shown = block("docs/security.md", "yaml", "basic_auth_users").text
    assert yaml.safe_load(shown) == yaml.safe_load(EXAMPLE.read_text())


class TestCommandLine:
    @pytest.mark.parametrize("command", ["serve", "sidecar"])
    def test_check_config_names_the_bad_key(self, pki: Pki, command: str, capsys) -> None:
        """`--web-config-file` with a bad file: exit 2, the setting and the key named."""
        path = placed(pki, "bad-unknown-tls-key.yml")
        assert main([command, "--web-config-file", str(path), "--check-config"]) == 2
        assert capsys.readouterr().err.strip() == (
            "invalid setting web_config_file (AGENT_REGISTRY_EXPORTER_WEB_CONFIG_FILE): "
            f"web config {path}: tls_server_config.client_auth: unknown key"
        )

    def test_check_config_accepts_the_docs_example(self, pki: Pki, capsys) -> None:
        """exporter-toolkit's documented example passes `serve --check-config`."""
        path = placed(pki, "good-exporter-toolkit-docs-example.yml")
        assert main(["serve", "--web-config-file", str(path), "--check-config"]) == 0
        assert "configuration is valid" in capsys.readouterr().out
