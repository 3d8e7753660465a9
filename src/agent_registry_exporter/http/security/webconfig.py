"""The web config file, in the exporter-toolkit schema that Go exporters read with
`--web.config.file`: TLS, client certificates, bcrypt basic auth, response headers, a rate
limit.

`load_web_config(path)` reads and checks all of it, certificates included, the way
exporter-toolkit's `Validate` does; relative paths are taken from the file's directory.
Every problem is a `WebConfigError` naming the key. Reloading lives in `security/`.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...common.durations import parse_duration

__all__ = [
    "HTTPServerConfig",
    "RateLimit",
    "ResponseHeaders",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "error_reason",
    "load_web_config",
]


class WebConfigError(ValueError):
    """The web config file cannot be used; the message names the file and the key."""


# Go's crypto/tls names (what the file holds) -> OpenSSL's (what `set_ciphers` takes).
# TLS 1.3 suites are accepted and, as in Go, not configurable: `None`.
_CIPHERS: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python's ssl verifies every client certificate it asks for: the two Go policies that ask
# without verifying cannot be honoured, and exporter-toolkit itself calls them insecure.
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Names a key accepts: (what they are, the names, how an error points to the right ones).
_NAMES: dict[str, tuple[str, Mapping[str, object], str]] = {
    "min_version": ("TLS version", _VERSIONS, f"; one of {', '.join(_VERSIONS)}"),
    "max_version": ("TLS version", _VERSIONS, f"; one of {', '.join(_VERSIONS)}"),
    "cipher_suites": ("cipher", _CIPHERS, " (names as in Go's tls.CipherSuites)"),
    "curve_preferences": ("curve", _CURVES, f"; one of {', '.join(_CURVES)}"),
}
_BCRYPT = re.compile(r"\$2[aby]?\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")


def _blank_is_unset(value: Any) -> Any:
    return None if value == "" else value


def _scalar_text(value: Any) -> Any:
    # Go's YAML reads `X-XSS-Protection: 1` into a string; so do we.
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


# Go reads a blank string as unset.
_Text = Annotated[str | None, BeforeValidator(_blank_is_unset)]
_Path = _Text
_HeaderValue = Annotated[str, BeforeValidator(_scalar_text)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TLSServerConfig(_Section):
    """`tls_server_config`: the server certificate and the client-certificate policy."""

    cert: _Text = None
    key: Annotated[SecretStr | None, BeforeValidator(_blank_is_unset)] = None
    client_ca: _Text = None
    cert_file: _Path = None
    key_file: _Path = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: _Path = None
    client_allowed_sans: list[str] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = Field(default_factory=list)

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _from_config_dir(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        return str(Path(base, value)) if value is not None and base is not None else value

    @field_validator("min_version", "max_version", "cipher_suites", "curve_preferences")
    @classmethod
    def _known_names(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        what, known, hint = _NAMES[str(info.field_name)]
        for name in [value] if isinstance(value, str) else value:
            if name not in known:
                raise ValueError(f"unknown {what} {name!r}{hint}")
        return value

    @property
    def enabled(self) -> bool:
        """True when any TLS key is set (then the port serves HTTPS only)."""
        files = (self.cert, self.key, self.client_ca, self.cert_file, self.key_file)
        explicit_policy = "client_auth_type" in self.model_fields_set
        return explicit_policy or any(v is not None for v in (*files, self.client_ca_file))

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if not self.enabled:
            return self
        for inline, path in (("cert", "cert_file"), ("key", "key_file")):
            if getattr(self, inline) is None and getattr(self, path) is None:
                raise ValueError(f"missing one of {inline} or {path}")
            if getattr(self, inline) is not None and getattr(self, path) is not None:
                raise ValueError(f"set {inline} or {path}, not both")
        if self.client_ca is not None and self.client_ca_file is not None:
            raise ValueError("set client_ca or client_ca_file, not both")
        if self.client_auth_type in _UNVERIFIED_CLIENT_AUTH:
            raise ValueError(
                f"client_auth_type {self.client_auth_type} asks for a client certificate "
                "without verifying it, which Python's ssl cannot do; use "
                "RequireAndVerifyClientCert with client_ca_file"
            )
        has_ca = self.client_ca is not None or self.client_ca_file is not None
        if has_ca and self.client_auth_type == "NoClientCert":
            raise ValueError("client CAs are set but client_auth_type is NoClientCert")
        if self.client_allowed_sans is not None and (
            self.client_auth_type != "RequireAndVerifyClientCert"
        ):
            raise ValueError(
                "client_allowed_sans requires client_auth_type RequireAndVerifyClientCert"
            )
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version")
        return self

    @property
    def versions(self) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
        """(minimum, maximum) protocol version."""
        return _VERSIONS[self.min_version], _VERSIONS[self.max_version]

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return _VERIFY_MODES[self.client_auth_type]

    @property
    def openssl_ciphers(self) -> str:
        """`cipher_suites` as an OpenSSL cipher string ("" keeps the defaults)."""
        return ":".join(n for c in self.cipher_suites if (n := _CIPHERS[c]) is not None)

    @property
    def ecdh_curve(self) -> str | None:
        """The most preferred curve: Python's ssl sets one ECDH group only."""
        return _CURVES[self.curve_preferences[0]] if self.curve_preferences else None

    def allows_sans(self, sans: list[tuple[str, str]]) -> bool:
        """True when a verified client certificate carries one of `client_allowed_sans`."""
        if self.client_allowed_sans is None:
            return True
        allowed = {_normal_san(v) for v in self.client_allowed_sans}
        return any(_normal_san(value) in allowed for _, value in sans)


def _normal_san(value: str) -> str:
    # Python prints IPv6 SANs in full upper case; Go in short form.
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


class ResponseHeaders(_Section):
    """`http_server_config.headers`: the security headers exporter-toolkit lets one set."""

    content_security_policy: _HeaderValue = Field("", alias="Content-Security-Policy")
    x_frame_options: Literal["", "deny", "sameorigin"] = Field("", alias="X-Frame-Options")
    x_content_type_options: Literal["", "nosniff"] = Field("", alias="X-Content-Type-Options")
    x_xss_protection: _HeaderValue = Field("", alias="X-XSS-Protection")
    strict_transport_security: _HeaderValue = Field("", alias="Strict-Transport-Security")

    def as_dict(self) -> dict[str, str]:
        """The headers to add to every response (a blank value is unset)."""
        return {k: v for k, v in self.model_dump(by_alias=True).items() if v}


class HTTPServerConfig(_Section):
    """`http_server_config`. `http2` is accepted and ignored: aiohttp serves HTTP/1.1."""

    http2: bool = True
    headers: ResponseHeaders = Field(default_factory=ResponseHeaders)


class RateLimit(_Section):
    """`rate_limit`: a token bucket over all requests but the probes (interval 0: off)."""

    interval: float = 0.0
    burst: int = Field(0, ge=0)

    @field_validator("interval", mode="before")
    @classmethod
    def _go_duration(cls, value: Any) -> float:
        if value == 0:
            return 0.0
        return parse_duration(value if isinstance(value, str) else "")


class WebConfig(_Section):
    """The whole file. Empty: plain HTTP, no authentication."""

    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    rate_limit: RateLimit = Field(default_factory=RateLimit)

    @model_validator(mode="before")
    @classmethod
    def _null_sections_are_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, hashed in users.items():
            if not _BCRYPT.fullmatch(hashed.get_secret_value()):
                # The value itself is never repeated: it may be a password typed in clear.
                raise ValueError(
                    f"the password of {name!r} is not a bcrypt hash "
                    "(make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                )
        return users


def load_web_config(path: Path | str) -> WebConfig:
    """Read and check the file at `path`; relative paths are resolved from its directory.

    Certificates are not read here: `security.ActiveWebConfig.load` does, with the rest.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"web config {path}: cannot be read: {error_reason(exc)}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(
            f"web config {path}: expected a mapping of keys, got a {type(data).__name__}"
        )
    try:
        config = WebConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise WebConfigError(f"web config {path}: {_describe(exc)}") from None
    return config


def error_reason(exc: BaseException) -> str:
    """A short reason for a failed file or TLS operation, for an error naming the key."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} at line {mark.line + 1}" if mark is not None else problem


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys (Go's strict YAML does; PyYAML keeps the last)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)
