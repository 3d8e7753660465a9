"""The exporter's own metrics, in a private prometheus_client registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, ProcessCollector

from . import catalogue as c

__all__ = ["ExporterMetrics"]


class ExporterMetrics:
    """The exporter's own metrics, in a private registry (never prometheus_client's global).

    Names, help texts, labels and units come from the catalogue.
    """

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Memory beside the agents: resident memory, open fds, collections per generation.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._gauge(c.BUILD_INFO).labels(version=version).set(1)
        self.exporter_info = self._gauge(c.EXPORTER_INFO)
        self.scrape_duration = self._gauge(c.SCRAPE_DURATION)
        self.cleanups = self._counter(c.CLEANUPS)
        self.cleaned_agents = self._counter(c.CLEANED_AGENTS)
        self.render_failures = self._counter(c.RENDER_FAILURES)
        self.webhook_requests = self._counter(c.WEBHOOK_REQUESTS)
        self.auth_failures = self._counter(c.AUTH_FAILURES)

    def _gauge(self, family: c.Family) -> Gauge:
        assert family.kind is c.Kind.GAUGE
        return Gauge(
            family.name, family.help, family.labels, unit=family.unit, registry=self.registry
        )

    def _counter(self, family: c.Family) -> Counter:
        assert family.kind is c.Kind.COUNTER
        return Counter(
            family.name, family.help, family.labels, unit=family.unit, registry=self.registry
        )
