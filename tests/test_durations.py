"""Durations parsed once for the web config (Go's grammar) and the rules (Prometheus')."""

from __future__ import annotations

import pytest

from agent_registry_exporter.common.durations import parse_duration


class TestGoDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("0", 0.0),
            ("1s", 1.0),
            ("500ms", 0.5),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("2h45m", 9900.0),
            ("250us", 250e-6),
            ("250µs", 250e-6),
            ("100ns", 100e-9),
            ("1s1s", 2.0),  # Go adds repeated units up
        ],
    )
    def test_what_time_parse_duration_accepts(self, text: str, seconds: float) -> None:
        """Decimal numbers with ns to h, in any order, as exporter-toolkit reads them."""
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "text", ["", "1", "s", "1 s", " 1s", "-1s", "1d", "1sx", "1S", "\u0661s", "1.\u0665s"]
    )
    def test_anything_else_is_refused(self, text: str) -> None:
        """No unit, an unknown unit, a sign or spaces: one sentence with examples."""
        with pytest.raises(ValueError, match=r"^not a duration such as 1s, 500ms or 0$"):
            parse_duration(text)


class TestPrometheusDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("0", 0.0), ("5m", 300.0), ("90s", 90.0), ("1m30s", 90.0), ("1h", 3600.0),
         ("1d", 86400.0), ("1w2d", 9 * 86400.0), ("1s500ms", 1.5)],
    )  # fmt: skip
    def test_what_prometheus_accepts(self, text: str, seconds: float) -> None:
        """Whole numbers with y to ms, largest first (a rule's `for:`)."""
        assert parse_duration(text, prometheus=True) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "text", ["", "5", "1.5m", "30s1m", "1m1m", "500us", "5 m", "\u0665m", "\uff15m"]
    )
    def test_go_only_forms_are_refused(self, text: str) -> None:
        """Fractions, units out of order or repeated, Go-only units: refused."""
        with pytest.raises(ValueError, match=r"^not a duration such as 5m, 90s or 1m30s$"):
            parse_duration(text, prometheus=True)

    @pytest.mark.parametrize("text", ["1d", "500ms"])
    def test_units_narrow_the_grammar(self, text: str) -> None:
        """A rule's `for:` (at most 10m) takes hours, minutes and seconds only."""
        assert parse_duration(text, prometheus=True) > 0
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(text, prometheus=True, units=("h", "m", "s"))
