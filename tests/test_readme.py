"""The README stays true: its embedding example runs, its settings table is complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from agent_registry_exporter import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_embedding_example_runs() -> None:
    """The Python block serves /metrics (on loopback and a free port here)."""
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "start_exporter" in b
    ]
    code = example.replace('"0.0.0.0"', '"127.0.0.1"').replace("listen_port=8464", "listen_port=0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"serving http://127\.0\.0\.1:\d+/metrics", done.stdout)


def test_every_setting_is_documented() -> None:
    """Each Settings field has its row, with its environment variable."""
    for name in Settings.model_fields:
        assert f"| `{name}` | `AGENT_REGISTRY_EXPORTER_{name.upper()}` |" in README, name
