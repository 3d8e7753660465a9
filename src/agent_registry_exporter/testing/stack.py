"""The local full-loop stack: real Prometheus and Alertmanager processes for the exporter.

Used by the end-to-end tests and by `agent-registry-exporter demo`. Everything listens on
127.0.0.1 on free ports and is stopped by process handle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..artifacts.alertmanager_route import AlertmanagerRoute, render_alertmanager_config
from ..artifacts.rules import RuleOptions, render_rules
from ..common.endpoints import WEBHOOK_PATH
from ..registry import Thresholds
from .ports import PortInUse, free_port, start_on_free_port
from .waiting import WaitTimeout, wait_until

__all__ = [
    "BINARIES",
    "INSTALL_HINT",
    "ExporterAccess",
    "LocalStack",
    "ManagedProcess",
    "StackError",
    "missing_binaries",
]

BINARIES = ("prometheus", "prometheus-alertmanager")
INSTALL_HINT = (
    "apt-get update && apt-get install -y --no-install-recommends "
    "prometheus prometheus-alertmanager"
)
JOB = "agent-registry-exporter"


class StackError(RuntimeError):
    """A stack process failed to start or answer."""


def missing_binaries() -> list[str]:
    """The stack's binaries that are not on PATH."""
    return [b for b in BINARIES if shutil.which(b) is None]


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a loopback URL and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.load(resp)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
            return True
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """One child process with its log file; stopped by handle, never by name."""

    name: str
    argv: list[str]
    log_path: Path
    address: str  # host:port it serves on
    env: dict[str, str] | None = field(default=None, repr=False)  # None: this process's
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/-/ready"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                log = self.log_tail()
                if "address already in use" in log.lower():
                    raise PortInUse(f"{self.name} on {self.address}")
                raise StackError(f"{self.name} exited with {process.returncode}:\n{log}")
            return _answers(self.ready_url)

        try:
            wait_until(ready, timeout=timeout, interval=0.1, message=f"{self.name} ready")
        except WaitTimeout:
            self.stop()
            raise StackError(
                f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}"
            ) from None

    @classmethod
    def start_on_free_port(
        cls,
        make: Callable[[int], ManagedProcess],
        timeout: float = 30.0,
        *,
        choose: Callable[[], int] = free_port,
    ) -> ManagedProcess:
        """`make(port)` started on a free port, and on another while the port is taken.

        The child binds the port itself, so it can only be chosen beforehand: another
        process may bind it in between, which the child's log then says.
        """

        def start(port: int) -> ManagedProcess:
            proc = make(port)
            proc.start(timeout)
            return proc

        return start_on_free_port(start, choose=choose)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ExporterAccess:
    """How Prometheus and Alertmanager reach exporters secured by a web config file."""

    ca_file: Path
    username: str | None = None
    password_file: Path | None = None

    def scrape_config(self) -> dict[str, Any]:
        """The keys a Prometheus scrape job needs: HTTPS, the CA, basic auth."""
        config: dict[str, Any] = {"scheme": "https", "tls_config": {"ca_file": str(self.ca_file)}}
        if self.username is not None:
            config["basic_auth"] = {
                "username": self.username,
                "password_file": str(self.password_file),
            }
        return config


@dataclass
class LocalStack:
    """Prometheus scraping the exporter with the project's rules, Alertmanager calling back.

    `targets` are the exporter addresses (host:port) Prometheus scrapes in job
    `agent-registry-exporter`; the webhook goes to `webhook_address`, by default the first.
    With `access`, both reach them over HTTPS (and Prometheus with basic auth);
    `relabel_configs` rewrite that job's target labels (e.g. `instance` to a pod name, as
    clusters do); `extra_scrape_configs` add jobs.
    With `alertmanager_pair`, Prometheus sends to a second, unclustered Alertmanager too
    (an HA pair whose gossip never dedupes: every notification is delivered twice).
    """

    workdir: Path
    targets: list[str]
    token: str
    webhook_address: str | None = None
    alertmanager_pair: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    interval: str = "1s"
    rule_options: RuleOptions = field(
        default_factory=lambda: RuleOptions(
            for_agents_per_user="0s",
            for_session_age="0s",
            for_total_agents="0s",
            for_cleanup_failing="0s",
            for_exporter_down="0s",
        )
    )
    access: ExporterAccess | None = None
    relabel_configs: list[dict[str, Any]] = field(default_factory=list)
    extra_scrape_configs: list[dict[str, Any]] = field(default_factory=list)
    prometheus: ManagedProcess | None = None
    alertmanager: ManagedProcess | None = None
    partner: ManagedProcess | None = None

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    @property
    def alertmanager_url(self) -> str:
        assert self.alertmanager is not None
        return self.alertmanager.url

    def start(self) -> None:
        """Write the configs, start Alertmanager then Prometheus, wait until both are ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        token_file = self.workdir / "webhook-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        try:
            self.alertmanager = self._start_alertmanager(token_file)
            if self.alertmanager_pair:
                self.partner = self._start_alertmanager(token_file, "alertmanager-1")
            self.prometheus = self._start_prometheus()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes (Prometheus first, so no alert is sent to a dead receiver)."""
        for proc in (self.prometheus, self.alertmanager, self.partner):
            if proc is not None:
                proc.stop()

    def _start_alertmanager(self, token_file: Path, name: str = "alertmanager") -> ManagedProcess:
        route = AlertmanagerRoute(
            webhook_url=f"{'https' if self.access else 'http'}://"
            f"{self.webhook_address or self.targets[0]}{WEBHOOK_PATH}",
            credentials_file=str(token_file),
            tls_ca_file=str(self.access.ca_file) if self.access else None,
            group_wait="1s",
            group_interval="2s",
            repeat_interval="1h",
        )
        config = self._write("alertmanager.yml", render_alertmanager_config(route))
        return self._spawn(
            name,
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={self.workdir / f'{name}-data'}",
            "--cluster.listen-address=",  # no HA gossip: a single local instance
        )

    def _start_prometheus(self) -> ManagedProcess:
        assert self.alertmanager is not None
        rules = self._write("rules.yml", render_rules(self.thresholds, self.rule_options))
        config = self._write(
            "prometheus.yml",
            {
                "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
                "rule_files": [str(rules)],
                "alerting": {
                    "alertmanagers": [
                        {"static_configs": [{"targets": self._alertmanager_addresses()}]}
                    ]
                },
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [{"targets": self.targets}],
                        **(
                            {"relabel_configs": self.relabel_configs}
                            if self.relabel_configs
                            else {}
                        ),
                        **(self.access.scrape_config() if self.access else {}),
                    },
                    *self.extra_scrape_configs,
                ],
            },
        )
        return self._spawn(
            "prometheus",
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            # Re-send firing alerts every interval instead of every minute.
            f"--rules.alert.resend-delay={self.interval}",
        )

    def _alertmanager_addresses(self) -> list[str]:
        return [am.address for am in (self.alertmanager, self.partner) if am is not None]

    def _write(self, name: str, config: dict[str, Any]) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _spawn(self, name: str, binary: str, *flags: str) -> ManagedProcess:
        def on(port: int) -> ManagedProcess:
            address = f"127.0.0.1:{port}"
            return ManagedProcess(
                name,
                [shutil.which(binary) or binary, *flags, f"--web.listen-address={address}"],
                self.workdir / f"{name}.log",
                address,
            )

        return ManagedProcess.start_on_free_port(on)

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        """Alerts Prometheus holds (pending and firing)."""
        alerts: list[dict[str, Any]] = get_json(f"{self.prometheus_url}/api/v1/alerts")["data"][
            "alerts"
        ]
        return alerts

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """Active alerts Alertmanager holds."""
        alerts: list[dict[str, Any]] = get_json(f"{self.alertmanager_url}/api/v2/alerts")
        return alerts

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query's result vector."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        result: list[dict[str, Any]] = get_json(url)["data"]["result"]
        return result

    def diagnostics(self) -> str:
        """Logs and alerts of both processes, for a failed test's report."""
        parts = []
        for proc in (self.prometheus, self.alertmanager, self.partner):
            if proc is not None:
                parts.append(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}")
        for name, fetch in (
            ("Prometheus alerts", self.prometheus_alerts),
            ("Alertmanager alerts", self.alertmanager_alerts),
        ):
            try:
                parts.append(f"--- {name} ---\n{json.dumps(fetch(), indent=1)[:6000]}")
            except (OSError, AssertionError, urllib.error.URLError) as exc:
                parts.append(f"--- {name} ---\n(unavailable: {exc})")
        return "\n".join(parts)
