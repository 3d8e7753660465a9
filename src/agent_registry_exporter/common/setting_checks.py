"""Checks of a setting that only a layer above `settings` can make.

`settings` sits low in the layers and must not import `http/`; yet a bad web config file
must stop `Settings(...)` with the loader's own sentence. So `http/security` registers its
loader here and `Settings` runs whatever is registered. The package root imports `http/`,
so by the time anything can build `Settings` the check is in place; without it the file is
still loaded (and refused) when a server starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["SettingCheck", "register_setting_check", "run_setting_check"]

# Raises ValueError (a sentence naming the file and the problem) when the value is unusable.
SettingCheck = Callable[[Path], object]

_CHECKS: dict[str, SettingCheck] = {}


def register_setting_check(setting: str, check: SettingCheck) -> None:
    """Make `Settings` run `check(value)` when validating `setting` (one check per setting)."""
    _CHECKS[setting] = check


def run_setting_check(setting: str, value: Path) -> None:
    """Run the check registered for `setting`, if any; its ValueError propagates."""
    check = _CHECKS.get(setting)
    if check is not None:
        check(value)
