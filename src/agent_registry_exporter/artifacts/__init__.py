"""What is rendered as code and committed: alert rules, Alertmanager route, Grafana dashboard,
Kubernetes manifests, the monitoring mixin, the metrics page of the docs.

The dashboard (`artifacts.dashboard`) is not imported here: it needs Grafana's SDK, the optional
`dashboard` extra, which serving metrics never does.
"""

from .alertmanager_route import (
    AlertmanagerRoute,
    render_alertmanager_config,
    render_alertmanager_yaml,
)
from .kubernetes import KubernetesOptions, render_kubernetes, render_kubernetes_files
from .kubernetes import label_problem as kubernetes_label_problem
from .metrics_doc import render_metrics_markdown
from .mixin import render_mixin_files
from .rules import GROUP_NAME, RuleOptions, render_rules, render_rules_yaml

__all__ = [
    "GROUP_NAME",
    "AlertmanagerRoute",
    "KubernetesOptions",
    "RuleOptions",
    "kubernetes_label_problem",
    "render_alertmanager_config",
    "render_alertmanager_yaml",
    "render_kubernetes",
    "render_kubernetes_files",
    "render_metrics_markdown",
    "render_mixin_files",
    "render_rules",
    "render_rules_yaml",
]
