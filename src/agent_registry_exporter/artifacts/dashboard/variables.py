"""The dashboard's variables: data source, job, instance, worker, user."""

from __future__ import annotations

from ...exporting import catalogue as c
from .promql import SEL
from .sdk import DATASOURCE, Dashboard, DatasourceVariable, QueryVariable, TextBoxVariable, model

__all__ = ["variables"]


def _query_variable(name: str, label: str, definition: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": definition, "refId": name})
        .definition(definition)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def _all_of(variable: QueryVariable) -> QueryVariable:
    """Multi-select with an All whose value `.*` also matches series lacking the label."""
    return (
        variable.multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(text="All", value="$__all"))
    )


def variables(board: Dashboard) -> Dashboard:
    return (
        board.with_variable(
            DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            _query_variable("job", "Job", f"label_values({c.BUILD_INFO.sample}, job)")
            .multi(False)
            .include_all(False)
        )
        .with_variable(
            _all_of(
                _query_variable(
                    "instance",
                    "Instance",
                    f'label_values({c.BUILD_INFO.sample}{{job=~"$job"}}, instance)',
                )
            )
        )
        .with_variable(
            _all_of(
                _query_variable(
                    "worker",
                    "Worker",
                    f"label_values({c.SOURCE_UP.sample}{{{SEL}}}, worker)",
                )
            ).description(
                "Sidecar mode: the backend workers. Empty in embedded mode, where All (.*) "
                "matches the series that have no worker label."
            )
        )
        .with_variable(
            TextBoxVariable("user_id")
            .label("User (regex)")
            .default_value(".*")
            .current(model.VariableOption(text=".*", value=".*"))
            .description(
                "Optional: a user id or regex to narrow the per-user panels (with private "
                "user ids, its h:... label: agent-registry-exporter user-id-label)."
            )
        )
    )
