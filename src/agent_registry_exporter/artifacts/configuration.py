"""The settings tables of `docs/configuration.md`, rendered from `Settings` and `Thresholds`.

The page is committed; between its markers it is exactly what `render_configuration_page`
writes (`make rules` regenerates it, a test fails when it drifts), so a new setting cannot
go undocumented.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from ..registry import Thresholds
from ..settings import ENV_PREFIX, GO_FLAGS, SERVER_SETTINGS, Settings, ThresholdSettings, own_flag

__all__ = ["render_configuration_page", "render_settings_tables"]

BEGIN = "<!-- BEGIN generated from Settings by `make rules`: edit settings.py, not this table -->"
END = "<!-- END generated -->"


def render_settings_tables() -> str:
    """Every setting (name, environment variable, default, description), then the thresholds."""
    rows = [_row(name, field, field.default) for name, field in Settings.model_fields.items()]
    thresholds = [
        _row(name, Thresholds.model_fields[name], Thresholds.model_fields[name].default)
        for name in ThresholdSettings.model_fields
    ]
    head = ["| setting | environment variable | default | description |", "|---|---|---|---|"]
    return "\n".join(
        [
            *head,
            *rows,
            "",
            "Thresholds (each exceeded only when strictly greater; `serve` and `rules` read them,"
            " an embedding backend passes its own `Thresholds` to `AgentRegistry`):",
            "",
            *head,
            *thresholds,
            "",
            *_flag_rows(),
        ]
    )


def _flag_rows() -> list[str]:
    """The flags of `serve` and `sidecar` that set settings, own names and the Go ones."""
    own = [f"| `{own_flag(name)}` | `{name}` |" for name in SERVER_SETTINGS]
    go = [
        f"| `{f.flag}={f.metavar}` | {' and '.join(f'`{s}`' for s in f.settings)}"
        f" (as {' and '.join(f'`{own_flag(s)}`' for s in f.settings)}{f.more}) |"
        for f in GO_FLAGS
    ]
    return [
        "Flags of `serve` and `sidecar` (besides `--dry-run`, and `--socket-dir` for"
        " `sidecar`): a flag wins over its variable; the Go exporters' names may stand"
        " beside the own ones, and a setting given both ways must be given the same value,"
        " or start-up stops naming both:",
        "",
        "| flag | setting |",
        "|---|---|",
        *own,
        *go,
    ]


def render_configuration_page(page: str) -> str:
    """`page` with the text between its markers replaced by the current tables."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    return page[: start + len(BEGIN)] + "\n" + render_settings_tables() + "\n" + page[end:]


def _row(name: str, field: FieldInfo, default: Any) -> str:
    if not field.description:
        raise ValueError(f"setting {name} has no description: give its Field one")
    cells = [f"`{name}`", f"`{ENV_PREFIX}{name.upper()}`", _default(default), field.description]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return f"`{value}`"


if __name__ == "__main__":  # python -m agent_registry_exporter.artifacts.configuration PAGE
    target = Path(sys.argv[1])
    target.write_text(render_configuration_page(target.read_text(encoding="utf-8")))
