"""The exposition formats: one object per format says how a body in it looks."""

from __future__ import annotations

import pytest

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import (
    FORMATS,
    OPENMETRICS,
    TEXT,
    ExporterMetrics,
    Format,
    catalogue,
    choose_format,
    render,
)

from .conftest import T0


def body(fmt: Format) -> str:
    snapshot = RegistrySnapshot(
        taken_at=T0,
        thresholds=Thresholds(),
        sessions=[SessionRow("u1", 3, T0 - 5)],
        cleaned_agents_untracked=1,
    )
    return render(snapshot, ExporterMetrics("1"), format=fmt).body.decode()


class TestFormat:
    def test_text_names_a_counter_family_with_total_and_openmetrics_without(self) -> None:
        """The `_total` rule: the family header differs, the sample name never does."""
        untracked = catalogue.CLEANED_AGENTS_UNTRACKED
        assert "# TYPE agent_registry_cleaned_agents_untracked_total counter\n" in body(TEXT)
        assert "# TYPE agent_registry_cleaned_agents_untracked counter\n" in body(OPENMETRICS)
        for fmt in FORMATS:
            assert f"\n{untracked.sample} 1\n" in body(fmt)

    def test_only_openmetrics_writes_unit_lines_for_the_families_with_a_unit(self) -> None:
        """`# UNIT` for the age, created and duration families in OpenMetrics; none in text."""
        om = body(OPENMETRICS)
        for family in (
            catalogue.USER_SESSION_AGE,
            catalogue.USER_SESSION_CREATED,
            catalogue.SCRAPE_DURATION,
        ):
            assert f"# UNIT {family.name} seconds\n" in om
        assert "# UNIT agent_registry_user_agents" not in om
        assert "# UNIT" not in body(TEXT)

    @pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
    def test_the_trailer_ends_the_body_exactly_once(self, fmt: Format) -> None:
        """OpenMetrics' `# EOF` once, at the end (prometheus_client's own one removed)."""
        text = body(fmt)
        assert text.endswith("# EOF\n") is (fmt is OPENMETRICS)
        assert text.count("# EOF") == (1 if fmt is OPENMETRICS else 0)

    def test_a_rendered_body_carries_its_format_and_content_type(self) -> None:
        """The content type is the chosen format's, read from the render, not re-decided."""
        snapshot = RegistrySnapshot(taken_at=T0, thresholds=Thresholds(), sessions=[])
        for fmt in FORMATS:
            rendered = render(snapshot, ExporterMetrics("1"), format=fmt)
            assert rendered.format is fmt
            assert rendered.content_type == fmt.content_type

    @pytest.mark.parametrize(
        ("accept", "expected"),
        [
            ("application/openmetrics-text;version=1.0.0", OPENMETRICS),
            ("text/plain;q=0.5, application/openmetrics-text ; version=0.0.1", OPENMETRICS),
            ("application/openmetrics-textual", TEXT),
            ("", TEXT),
        ],
    )
    def test_choose_format_reads_the_media_types_of_accept(self, accept, expected) -> None:
        """Only the media type itself selects OpenMetrics, wherever it is listed."""
        assert choose_format(accept) is expected
