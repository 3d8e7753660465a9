"""`python -m agent_registry_exporter`: the `agent-registry-exporter` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
