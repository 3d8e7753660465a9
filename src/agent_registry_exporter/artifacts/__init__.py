"""What is rendered as code and committed: alert rules, Alertmanager route, Grafana dashboard."""

from .alertmanager_route import (
    AlertmanagerRoute,
    render_alertmanager_config,
    render_alertmanager_yaml,
)
from .dashboard import render_dashboard, render_dashboard_json
from .rules import GROUP_NAME, RuleOptions, render_rules, render_rules_yaml

__all__ = [
    "GROUP_NAME",
    "AlertmanagerRoute",
    "RuleOptions",
    "render_alertmanager_config",
    "render_alertmanager_yaml",
    "render_dashboard",
    "render_dashboard_json",
    "render_rules",
    "render_rules_yaml",
]
