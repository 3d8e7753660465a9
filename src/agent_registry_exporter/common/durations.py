"""Durations as Go and Prometheus write them (`1m30s`, `500ms`, `0`), parsed once.

Go's `time.ParseDuration` (the web config file, read as exporter-toolkit reads it) takes
decimal numbers with the units ns, us (µs), ms, s, m, h in any order; Prometheus' own
durations (a rule's `for:`) take whole numbers with the units y, w, d, h, m, s, ms, each at
most once, from the largest down.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["parse_duration"]

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Largest first: the order Prometheus requires.
_PROMETHEUS_UNITS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
}
# ASCII digits only: \d takes any script's digits, which float() reads and Go and
# Prometheus refuse (a rule file promtool would not load).
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zµμ]+)")


def parse_duration(
    text: str, *, prometheus: bool = False, units: Collection[str] | None = None
) -> float:
    """`text` in seconds; ValueError saying what a duration looks like.

    `prometheus=True`: Prometheus' grammar (whole numbers, y to ms, largest first), else
    Go's; `units` narrows the grammar's units further. "0" is zero in both; a sign, spaces or
    an empty text are refused.
    """
    example = "5m, 90s or 1m30s" if prometheus else "1s, 500ms or 0"
    problem = ValueError(f"not a duration such as {example}")
    if text == "0":
        return 0.0
    grammar = _PROMETHEUS_UNITS if prometheus else _GO_UNITS
    order = list(grammar)
    allowed = grammar if units is None else {u: grammar[u] for u in units}
    total, end, last = 0.0, 0, -1
    for match in _PART.finditer(text):
        number, unit = match.groups()
        if match.start() != end or unit not in allowed:
            raise problem
        if prometheus:
            rank = order.index(unit)
            if not number.isdigit() or rank <= last:
                raise problem
            last = rank
        total += float(number) * allowed[unit]
        end = match.end()
    if end == 0 or end != len(text):
        raise problem
    return total
