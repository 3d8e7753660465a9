"""The served certificate's validity: exported as its expiry, and named when it is not valid.

Read from the certificate's own DER (its `validity` field, RFC 5280 4.1.2.5): the standard
library loads a certificate into a context but tells nothing about it, and a dependency for
two dates is not worth it.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from ...common.loggers import logger_name
from ...exporting import catalogue as c

if TYPE_CHECKING:
    from .reload import WebConfigWatcher
    from .webconfig import TLSServerConfig

__all__ = ["CertificateExpiry", "Validity", "certificate_validity", "served_validity"]

_log = logging.getLogger(logger_name("security.reload"))

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_SEQUENCE, _INTEGER, _VERSION = 0x30, 0x02, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


@dataclass(frozen=True)
class Validity:
    """When a certificate starts and stops being valid."""

    not_before: datetime
    not_after: datetime

    def problem(self, now: datetime) -> str | None:
        """Why the certificate is not valid at `now`, naming its dates; None when it is."""
        dates = f"valid from {self.not_before.isoformat()} until {self.not_after.isoformat()}"
        if now > self.not_after:
            return f"expired: {dates}"
        if now < self.not_before:
            return f"not valid yet: {dates}"
        return None


def certificate_validity(pem: str) -> Validity:
    """The validity of the first certificate in `pem` (the served one); ValueError if none."""
    block = _PEM.search(pem)
    if block is None:
        raise ValueError("no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(block[0])
    _, start, _ = _tlv(der, 0, _SEQUENCE)  # Certificate
    _, pos, _ = _tlv(der, start, _SEQUENCE)  # TBSCertificate
    if der[pos] == _VERSION:
        pos = _tlv(der, pos, _VERSION)[2]
    pos = _tlv(der, pos, _INTEGER)[2]  # serialNumber
    pos = _tlv(der, pos, _SEQUENCE)[2]  # signature
    pos = _tlv(der, pos, _SEQUENCE)[2]  # issuer
    _, pos, _ = _tlv(der, pos, _SEQUENCE)  # validity
    not_before, pos = _time(der, pos)
    not_after, _ = _time(der, pos)
    return Validity(not_before, not_after)


def served_validity(tls: TLSServerConfig) -> Validity | None:
    """The validity of the certificate `tls` serves; None when it cannot be read here (the
    TLS context, which loaded it, says what is wrong with it)."""
    try:
        pem = Path(tls.cert_file).read_text("ascii") if tls.cert_file else tls.cert or ""
        return certificate_validity(pem)
    except (OSError, ValueError, IndexError):
        return None


def warn_if_invalid(validity: Validity | None, where: str) -> None:
    """One warning when the certificate just loaded is not valid now."""
    problem = validity.problem(datetime.now(UTC)) if validity is not None else None
    if problem is not None:
        _log.warning(
            "the server certificate of %s is %s: every client verifying it will refuse it",
            where,
            problem,
        )


class CertificateExpiry:
    """`agent_registry_exporter_tls_cert_expiry_timestamp_seconds`, as the cert exporters
    name it: the served certificate's notAfter, the newest one after a rotation."""

    def __init__(self, watcher: WebConfigWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[Metric]:
        validity = self._watcher.current().certificate
        if validity is None:
            return
        family = c.TLS_CERT_EXPIRY
        yield GaugeMetricFamily(
            family.name, family.help, value=validity.not_after.timestamp(), unit=family.unit
        )


def _tlv(der: bytes, pos: int, tag: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `pos`, which must have `tag`."""
    if der[pos] != tag:
        raise ValueError(f"DER tag {der[pos]:#x} where {tag:#x} belongs")
    length, start = der[pos + 1], pos + 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4:
            raise ValueError("DER length out of range")
        length, start = int.from_bytes(der[start : start + size], "big"), start + size
    end = start + length
    if end > len(der):
        raise ValueError("DER element runs past the end")
    return tag, start, end


def _time(der: bytes, pos: int) -> tuple[datetime, int]:
    tag = der[pos]
    if tag not in (_UTC_TIME, _GENERALIZED_TIME):
        raise ValueError(f"DER tag {tag:#x} is no time")
    _, start, end = _tlv(der, pos, tag)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME:  # RFC 5280: YY below 50 is 20YY
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC), end
