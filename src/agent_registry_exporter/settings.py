"""Settings, read from arguments or `AGENT_REGISTRY_EXPORTER_*` environment variables, and
the command line's flags for them."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .common.addresses import (
    format_host_port,
    parse_peers,
    split_host_port,
    split_listen_address,
)
from .common.keyfile import read_key_file
from .common.logs import LogFormat
from .common.setting_checks import run_setting_check
from .registry import DEFAULT_LEAK_GRACE_SECONDS, Thresholds

# Sits low in the layers: the domain and small validators of `common/` only. Every
# default is written here, once; the receiver's policy and the socket API read them back.

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "ENV_PREFIX",
    "GO_FLAGS",
    "MAX_WORKER_ANSWER_BYTES",
    "NO_WEBHOOK_TOKEN",
    "SERVER_SETTINGS",
    "SOCKET_DIR_ENV",
    "GoFlag",
    "Settings",
    "ThresholdSettings",
    "add_server_flags",
    "describe_validation_error",
    "flags_of",
    "log_level_name",
    "own_flag",
    "server_overrides",
    "setting_help",
    "unknown_environment",
]

ENV_PREFIX = "AGENT_REGISTRY_EXPORTER_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# The workers' `serve_registry` reads the same variable as the sidecar's setting.
SOCKET_DIR_ENV = f"{ENV_PREFIX}SOCKET_DIR"
DEFAULT_SOCKET_DIR = Path("/run/agent-registry")
# 16 MiB: about 300,000 users per worker at the measured 56 bytes per user (UUID ids).
MAX_WORKER_ANSWER_BYTES = 16 << 20
# Said at start-up, by `--check-config` and in the webhook's 403 answer: one sentence.
NO_WEBHOOK_TOKEN = (
    f"webhook disabled: no token configured; set {ENV_PREFIX}WEBHOOK_TOKEN or"
    f" {ENV_PREFIX}WEBHOOK_TOKEN_FILE (or {ENV_PREFIX}WEBHOOK_ALLOW_UNAUTHENTICATED=true on a"
    " trusted network)"
)


def log_level_name(text: str) -> LogLevel:
    """`debug`, `Info`, `warn`... as the level's name; ValueError listing the levels."""
    name = text.strip().upper()
    name = "WARNING" if name == "WARN" else name  # the Go exporters' name
    if name not in get_args(LogLevel):
        raise ValueError(f"{text!r} is no level: debug, info, warn (warning), error, in any case")
    return cast(LogLevel, name)


class Settings(BaseSettings):
    """How the exporter server listens, exports and remediates."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    listen_host: str = Field(default="0.0.0.0", min_length=1, description="address to bind")
    listen_port: int = Field(
        default=8464, ge=0, le=65535, description="port to bind; 0 picks a free port"
    )
    max_connections: int = Field(
        default=256,
        gt=0,
        description="open connections at most (also capped at half the process's file"
        " descriptor limit); past it the oldest connection not serving a request is closed",
    )
    idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a connection must complete a request's headers within this of connecting"
        " or of its previous answer: bounds slow headers and idle keep-alive alike",
    )
    body_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a webhook body must arrive within this (else 408)"
    )
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="on SIGTERM or stop(): how long in-flight and background cleanups may"
        " still run; each one unfinished then is logged with its user and agents left",
    )
    web_config_file: Path | None = Field(
        default=None,
        description="exporter-toolkit web config file: TLS, client certificates, basic auth,"
        " headers; reloaded when it or a file it names changes",
    )
    max_user_series: int = Field(
        default=10_000,
        gt=0,
        description="users with per-user series at most: past it the users closest to or over"
        " a threshold are kept and the healthiest dropped first; totals stay exact",
    )
    user_series_min_pressure: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="export a user's own series only when its agents or its session age are at"
        " least this fraction of a threshold (violators always, first); 0 exports every user"
        " up to max_user_series. The histograms and totals still describe everyone",
    )
    user_id_hmac_key_file: Path | None = Field(
        default=None,
        description="file holding a secret key: every exported user_id becomes h: plus a keyed"
        " hash, mapped back to the session when an alert comes in",
    )
    export_session_age: bool = Field(
        default=True,
        description="export agent_registry_user_session_age_seconds; the rules use the created"
        " timestamp, so turning it off saves a third of every scrape",
    )
    leak_grace_seconds: float = Field(
        default=DEFAULT_LEAK_GRACE_SECONDS,
        ge=0,
        description="a cleaned agent still alive this long after its cleanup counts as not freed",
    )
    socket_dir: Path = Field(
        default=DEFAULT_SOCKET_DIR,
        description="sidecar mode: the directory where each worker serves its registry socket",
    )
    worker_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="sidecar mode: how long one worker may take to answer; never past the"
        " scraper's own timeout (X-Prometheus-Scrape-Timeout-Seconds, less a margin for the"
        " render): a worker late for a scrape is down for it",
    )
    max_worker_answer_bytes: int = Field(
        default=MAX_WORKER_ANSWER_BYTES,
        gt=0,
        description="sidecar mode: the most bytes read of one worker's answer (more: that"
        " worker is down for the scrape). A snapshot is about 56 bytes per user with UUID ids:"
        " the default holds about 300,000 users per worker. The sidecar's memory limit must"
        " hold every worker's answer at once and what it decodes to (docs: the sidecar's"
        " memory)",
    )

    webhook_token: SecretStr | None = Field(
        default=None, description="the bearer token the webhook requires"
    )
    webhook_token_file: Path | None = Field(
        default=None,
        description="file holding the webhook's bearer token, re-read when the file changes:"
        " Secret rotation needs no restart",
    )
    webhook_allow_unauthenticated: bool = Field(
        default=False,
        description="serve the webhook without a token; otherwise, with no token set, it"
        " answers 403 and acts on nothing",
    )
    webhook_max_body_bytes: int = Field(
        default=1 << 20, gt=0, description="a larger webhook body is answered 413"
    )
    instance: str | None = Field(
        default=None,
        description="the `instance` label Prometheus gives this replica (host:port, IPv6 as"
        " [addr]:port); alerts naming another instance are forwarded to it when it is a"
        " peer, and never acted on here. Unset (and no instance_host): every alert is for this"
        " replica.",
    )
    instance_host: str | None = Field(
        default=None,
        description="this replica's IP address, any family (in Kubernetes $(POD_IP) from the"
        " downward API): when `instance` is unset it becomes `<host>:<listen_port>`, an IPv6"
        " host in brackets (`[fd00::1]:8464`), the form Prometheus writes for the pod's target",
    )
    peers: str | None = Field(
        default=None,
        description="the other replicas: a DNS name (a headless Service; every A/AAAA record"
        " with the port of `instance`) or a comma-separated list of host:port. Alerts for a"
        " peer are forwarded to it. Needs `instance` (or `instance_host`).",
    )
    forward_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a peer's whole answer to a forwarded alert"
    )
    dry_run: bool = Field(
        default=False,
        description="decide, never act: the outcome is dry_run where a cleanup would run",
    )
    cleanup_rate_per_minute: float = Field(
        default=60.0,
        gt=0,
        description="the global cleanup rate limit; alerts past it are answered 429",
    )
    cleanup_burst: int = Field(
        default=20, gt=0, description="cleanups the rate limit allows at once"
    )
    breaker_max_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="circuit breaker: a payload that would clean more than this share of all"
        " users is refused whole",
    )
    breaker_min_users: int = Field(
        default=10,
        gt=0,
        description="the circuit breaker applies from this many users on",
    )
    cleanup_concurrency: int = Field(default=8, gt=0, description="cleanups running at once")
    cleanup_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how long the webhook waits for its cleanups; one still running then"
        " finishes in the background, one not started is left untouched",
    )
    dedupe_cache_size: int = Field(
        default=10_000,
        gt=0,
        description="alerts remembered as handled (same fingerprint and startsAt)",
    )

    log_format: LogFormat = Field(
        default="auto",
        description="auto (JSON when not on a terminal), json, text or logfmt, in any case;"
        " JSON and logfmt lines carry an RFC 3339 time in UTC with milliseconds",
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="level of the package's loggers: debug, info, warn (or warning) or error,"
        " in any case",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return log_level_name(value) if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_in_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("peers")
    @classmethod
    def _peers_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_peers(value)
        return value

    @field_validator("listen_host")
    @classmethod
    def _host_can_be_bound(cls, value: str) -> str:
        # Refused here, where --check-config sees it: start-up would fail to resolve it.
        if value.startswith("["):
            raise ValueError(f"{value!r}: give an IPv6 address without brackets, as ::1")
        if not value.isprintable() or any(c.isspace() for c in value):
            raise ValueError(
                f"{value!r} is no host name or address: it holds a space or a control character"
            )
        return value

    @field_validator("instance_host")
    @classmethod
    def _host_is_an_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address: give the pod's IP (IPv4 or IPv6, no"
                    " brackets, no port), in Kubernetes $(POD_IP) from the downward API"
                ) from None
        return value

    # Runs before `_peers_need_instance` (after-validators run in definition order).
    @model_validator(mode="after")
    def _instance_from_host(self) -> Settings:
        if self.instance is not None or self.instance_host is None:
            return self
        if self.listen_port == 0:
            raise ValueError(
                f"instance_host ({ENV_PREFIX}INSTANCE_HOST) needs a fixed listen_port"
                f" ({ENV_PREFIX}LISTEN_PORT): 0 picks a port at bind time, unknown to the"
                " `instance` it gives"
            )
        # Frozen: set once here, while the model is being built.
        object.__setattr__(self, "instance", format_host_port(self.instance_host, self.listen_port))
        return self

    @model_validator(mode="after")
    def _peers_need_instance(self) -> Settings:
        if self.peers is None:
            return self
        if not self.instance:
            raise ValueError(
                f"peers ({ENV_PREFIX}PEERS) needs instance ({ENV_PREFIX}INSTANCE) or"
                f" instance_host ({ENV_PREFIX}INSTANCE_HOST): forwarding must know which alerts"
                " are this replica's; in Kubernetes set instance_host to $(POD_IP) from the"
                " downward API"
            )
        try:
            split_host_port(self.instance, port_required=True)
        except ValueError as exc:
            raise ValueError(f"instance ({ENV_PREFIX}INSTANCE) must be host:port: {exc}") from None
        return self

    @field_validator("web_config_file")
    @classmethod
    def _usable_web_config(cls, path: Path | None) -> Path | None:
        if path is not None:
            # The same load a reload does, certificates included (registered by http/).
            run_setting_check("web_config_file", path)
        return path

    @field_validator("user_id_hmac_key_file")
    @classmethod
    def _usable_key(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_key_file(path)
        return path

    @model_validator(mode="after")
    def _one_token_source(self) -> Settings:
        if self.webhook_token is not None and self.webhook_token_file is not None:
            raise ValueError("set webhook_token or webhook_token_file, not both")
        if self.webhook_token is not None and not self.webhook_token.get_secret_value().strip():
            raise ValueError("webhook_token is empty")
        if self.webhook_token_file is not None:
            self.read_token_file(self.webhook_token_file)
        return self

    def webhook_disabled(self) -> bool:
        """No token and no explicit unauthenticated mode: the webhook refuses every alert."""
        return self.resolved_webhook_token() is None and not self.webhook_allow_unauthenticated

    def resolved_webhook_token(self) -> str | None:
        """The bearer token the webhook requires, or None when none is configured."""
        if self.webhook_token is not None:
            return self.webhook_token.get_secret_value().strip()
        if self.webhook_token_file is not None:
            return self.read_token_file(self.webhook_token_file)
        return None

    @staticmethod
    def read_token_file(path: Path) -> str:
        """The token in `path`, stripped; ValueError naming the file when unusable."""
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"webhook_token_file {str(path)!r} cannot be read: {exc.strerror}"
            ) from None
        if not token:
            raise ValueError(f"webhook_token_file {str(path)!r} is empty")
        return token


class ThresholdSettings(BaseSettings):
    """Threshold overrides; anything unset keeps the default in `Thresholds`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    agents_per_user: int | None = None
    session_age_seconds: float | None = None
    total_agents: int | None = None

    def to_thresholds(self) -> Thresholds:
        return Thresholds(**self.model_dump(exclude_none=True))


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per `AGENT_REGISTRY_EXPORTER_*` variable that names no setting.

    The valid names are read from every settings model using the prefix, so a setting added
    anywhere is known at once. Like pydantic-settings, names are compared case-insensitively.
    """
    known = {
        name.upper() for model in _prefixed_models(BaseSettings) for name in model.model_fields
    }
    problems = []
    for variable in sorted(os.environ if environ is None else environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        name = variable.upper().removeprefix(ENV_PREFIX)
        if name in known:
            continue
        # Compared without the prefix, which every name shares.
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        hint = (
            f"did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else "docs/configuration.md lists every name"
        )
        problems.append(f"unknown setting {variable}: {hint}")
    return problems


def _prefixed_models(model: type[BaseSettings]) -> Iterator[type[BaseSettings]]:
    if model.model_config.get("env_prefix") == ENV_PREFIX:
        yield model
    for sub in model.__subclasses__():
        yield from _prefixed_models(sub)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the setting and its environment variable."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if field:
            lines.append(f"invalid setting {field} ({ENV_PREFIX}{field.upper()}): {message}")
        else:
            lines.append(f"invalid settings: {message}")
    return "\n".join(lines)


# The flags of `serve` and `sidecar` that set settings: the exporter's own names
# (`--listen-port`, ...) and, beside them, the Go exporters' (`--web.listen-address`,
# `--web.config.file`, `--log.level`, `--log.format`). Either may be given; a pair given both
# ways must agree, or start-up stops naming both. A flag wins over its environment variable.
# Here, beside the settings they spell: the command reads them, and so does the
# configuration page's generator (`artifacts/`, which may not import the command).

# The settings `serve` and `sidecar` take as flags of their own name, and the type argparse
# reads each as.
SERVER_SETTINGS: dict[str, type] = {
    "listen_host": str,
    "listen_port": int,
    "max_user_series": int,
    "webhook_token_file": str,
    "web_config_file": str,
    "user_id_hmac_key_file": str,
    "instance_host": str,
    "log_level": str,
    "log_format": str,
}


def _listen_address(text: str) -> dict[str, Any]:
    try:
        host, port = split_listen_address(text)
    except ValueError as exc:
        raise ValueError(
            f"--web.listen-address={text}: {exc} (an IPv6 address in brackets: [::1]:8464)"
        ) from None
    return {"listen_host": host, "listen_port": port}


@dataclass(frozen=True)
class GoFlag:
    """A Go exporter's flag and the settings it stands for."""

    flag: str
    settings: tuple[str, ...]
    metavar: str
    parse: Callable[[str], dict[str, Any]]
    more: str = ""

    @property
    def dest(self) -> str:
        return "go_" + self.flag.removeprefix("--").replace(".", "_").replace("-", "_")


def _one(setting: str) -> Callable[[str], dict[str, Any]]:
    return lambda text: {setting: text}


GO_FLAGS = (
    GoFlag(
        "--web.listen-address",
        ("listen_host", "listen_port"),
        "HOST:PORT",
        _listen_address,
        ": [IPv6]:PORT for IPv6, :PORT for every IPv4 interface, port 0 picks a free one",
    ),
    GoFlag("--web.config.file", ("web_config_file",), "FILE", _one("web_config_file")),
    GoFlag("--log.level", ("log_level",), "LEVEL", _one("log_level")),
    GoFlag("--log.format", ("log_format",), "FORMAT", _one("log_format")),
)


def own_flag(setting: str) -> str:
    """The flag of the setting's own name: `listen_port` -> `--listen-port`."""
    return f"--{setting.replace('_', '-')}"


def flags_of(setting: str) -> tuple[str, ...]:
    """Every flag of `serve` and `sidecar` that sets `setting` (none: only its variable)."""
    own = (own_flag(setting),) if setting in SERVER_SETTINGS else ()
    return own + tuple(go.flag for go in GO_FLAGS if setting in go.settings)


def setting_help(model: type[BaseModel], name: str) -> str:
    """The help of the flag setting `name`: the field's description and default, read from
    `model` (never restated)."""
    field = model.model_fields[name]
    text = (field.description or name.replace("_", " ")).replace("%", "%%")
    default = field.get_default(call_default_factory=True)
    if default is None or isinstance(default, bool):
        return text
    return f"{text} (default: {default})"


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The settings' flags, own names first, then the Go exporters' in a group of their own."""
    for name, type_ in SERVER_SETTINGS.items():
        parser.add_argument(own_flag(name), type=type_, help=setting_help(Settings, name))
    group = parser.add_argument_group(
        "the Go exporters' names (given with the own name too, both must agree)"
    )
    for go in GO_FLAGS:
        same = " and ".join(own_flag(s) for s in go.settings)
        group.add_argument(
            go.flag, dest=go.dest, metavar=go.metavar, action="append", help=f"as {same}{go.more}"
        )


def server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags in `args` set; ValueError naming both flags of a pair that
    disagrees, or a Go flag given more than once."""
    chosen = {n: getattr(args, n) for n in SERVER_SETTINGS if getattr(args, n, None) is not None}
    for go in GO_FLAGS:
        given: list[str] | None = getattr(args, go.dest, None)
        if not given:
            continue
        if len(given) > 1:
            why = "this exporter listens on one" if "listen_host" in go.settings else "give one"
            raise ValueError(f"{go.flag} is given {len(given)} times: {why}")
        for setting, value in go.parse(given[0]).items():
            if setting in chosen and _same(setting, chosen[setting]) != _same(setting, value):
                raise ValueError(
                    f"{go.flag}={given[0]} and {own_flag(setting)}={chosen[setting]} disagree"
                    f" ({setting}): give one of them"
                )
            chosen[setting] = value
    return chosen


def _same(setting: str, value: Any) -> Any:
    """`value` as compared with the same setting given the other way."""
    if setting == "log_level":
        try:
            return log_level_name(value)
        except ValueError:
            return value  # refused by Settings, naming the setting
    if setting == "log_format":
        return str(value).strip().lower()
    if setting == "web_config_file":
        return Path(value)
    return value
