"""What the dashboard needs of Grafana's foundation SDK: builders, typed helpers, JSON both ways.

The SDK (`grafana-foundation-sdk`, the `dashboard` extra) shapes the JSON by Grafana's own
schema. It has no notion of our conventions (every target on the `$datasource` variable, refIds
A, B, ..., unique panel ids, a visible legend), so those are applied here, once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any, Protocol, Self, TypeVar

with warnings.catch_warnings():
    # The SDK warns on import that it prefers its v2 schema. Grafana's dashboard import and file
    # provisioning read the v1 JSON model, which is what we publish. Every SDK module the
    # dashboard uses is imported here, under this filter, and re-exported (`__all__`).
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import histogram, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.builders.dashboard import (
        Dashboard,
        DatasourceVariable,
        QueryVariable,
        Row,
        TextBoxVariable,
    )
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = [
    "DATASOURCE",
    "Dashboard",
    "DatasourceVariable",
    "PanelBuilder",
    "QueryVariable",
    "Row",
    "TextBoxVariable",
    "common",
    "common_builders",
    "decode",
    "encode",
    "graph_panel",
    "histogram",
    "legend",
    "model",
    "number_panels",
    "panel",
    "prometheus",
    "query",
    "stat",
    "stat_panel",
    "table",
    "table_panel",
    "timeseries",
]

DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")


class PanelBuilder(Protocol):
    """What every SDK panel builder (timeseries, stat, table, ...) offers under the same names."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def datasource(self, datasource: common.DataSourceRef) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def build(self) -> model.Panel: ...


P = TypeVar("P", bound=PanelBuilder)


def query(expr: str, legend: str = "__auto", *, instant: bool = False) -> prometheus.Dataquery:
    """A PromQL target on the `$datasource` variable; `instant` ones are read as a table."""
    target = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    if instant:
        target = target.instant().format(PromQueryFormat.TABLE)
    return target


def panel(
    builder: P,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    w: int,
    h: int,
) -> P:
    """`builder` with the fields every panel of ours has; targets get refIds A, B, ..."""
    builder = (
        builder.title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(w)
        .height(h)
    )
    for n, target in enumerate(targets):
        builder = builder.with_target(target.ref_id(chr(ord("A") + n)))
    return builder


def legend() -> common_builders.VizLegendOptions:
    """A visible list legend: the SDK's default hides it, Grafana's own default shows it."""
    return (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
    )


def number_panels(board: model.Dashboard) -> model.Dashboard:
    """Give rows and panels the ids 1, 2, ... in order (the SDK leaves them unset)."""
    for n, item in enumerate(board.panels or [], start=1):
        item.id_val = n
    return board


def encode(board: model.Dashboard) -> str:
    """The dashboard as JSON text, in the SDK's field order, with a final newline."""
    return JSONEncoder(indent=2).encode(board) + "\n"


def decode(text: str) -> model.Dashboard:
    """Read dashboard JSON back into the SDK's model (panels and queries typed by plugin)."""
    register_default_plugins()
    data: dict[str, Any] = json.loads(text)
    return model.Dashboard.from_json(data)


def stat_panel(
    title: str,
    description: str,
    expr: str,
    legend_format: str = "__auto",
    *,
    w: int = 6,
    h: int = 4,
) -> stat.Panel:
    """One number per series: an instant query reduced to its last value."""
    return panel(
        stat.Panel(),
        title,
        description,
        "none",
        [query(expr, legend_format, instant=True)],
        w=w,
        h=h,
    ).reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))


def graph_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    w: int,
    h: int,
) -> timeseries.Panel:
    """A graph over time with a visible legend."""
    return panel(timeseries.Panel(), title, description, unit, targets, w=w, h=h).legend(legend())


def table_panel(title: str, description: str, unit: str, expr: str) -> table.Panel:
    """One instant query as a half-width table, one row per series."""
    return panel(table.Panel(), title, description, unit, [query(expr, instant=True)], w=12, h=9)
