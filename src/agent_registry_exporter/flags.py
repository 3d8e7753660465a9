"""The flags of `serve` and `sidecar` that set settings: the exporter's own names
(`--listen-port`, ...) and, beside them, the Go exporters' (`--web.listen-address`,
`--web.config.file`, `--log.level`, `--log.format`). Either may be given; a pair given both
ways must agree, or start-up stops naming both. A flag wins over its environment variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .common.addresses import split_listen_address
from .settings import Settings, log_level_name

__all__ = [
    "GO_FLAGS",
    "SERVER_SETTINGS",
    "GoFlag",
    "add_server_flags",
    "flags_of",
    "own_flag",
    "server_overrides",
    "setting_help",
]

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
