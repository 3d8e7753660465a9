# The two commands a newcomer needs: `make demo` and `make test`.
# The venv holds the package (editable, with its dashboard extra) and the PEP 735 groups `dev`
# (the tools) and `docs` (the manual); pip knows `--group` since 25.1.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
DEBIAN_TOOLS := prometheus prometheus-alertmanager curl
# The container test runs the image's Python (3.11, see the Dockerfile) as other users: Debian's.
DEBIAN_PYTHON := python3.11-venv

.PHONY: demo test test-fast test-ranges lint typecheck pytest docs tools pytest-tools scan-tools lock rules dashboard bench dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e '.[dashboard]' --group dev --group docs
	touch $@

# Prometheus, Alertmanager and curl (a test reads a gzip scrape with it) come from Debian's
# packages; installing them starts nothing.
tools:
	@missing=0; for b in prometheus promtool prometheus-alertmanager amtool curl; do \
	  command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Prometheus/Alertmanager/curl missing: run as root, or: sudo apt-get install -y --no-install-recommends $(DEBIAN_TOOLS)"; exit 1; fi; \
	  echo "installing $(DEBIAN_TOOLS) from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_TOOLS) >/dev/null; \
	fi

pytest-tools: tools
	@if ! /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Debian's Python 3.11 with venv missing: sudo apt-get install -y --no-install-recommends $(DEBIAN_PYTHON)"; exit 1; fi; \
	  echo "installing $(DEBIAN_PYTHON) from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PYTHON) >/dev/null; \
	fi

demo: $(STAMP)
	@$(MAKE) --no-print-directory tools || echo "continuing without Prometheus/Alertmanager: the exporter runs alone"
	$(BIN)/agent-registry-exporter demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

typecheck: $(STAMP)
	$(BIN)/mypy

# checkov (tests/test_scanners.py) pins dozens of packages of its own: it gets its own
# environment, so it never moves the project's dependencies. One version: its checks change.
SCAN_VENV := .venv-scan
CHECKOV_VERSION := 3.3.30
SCAN_STAMP := $(SCAN_VENV)/.installed-checkov-$(CHECKOV_VERSION)

$(SCAN_STAMP):
	rm -rf $(SCAN_VENV)
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet "checkov==$(CHECKOV_VERSION)"
	touch $@

scan-tools: $(SCAN_STAMP)

pytest: $(STAMP) pytest-tools scan-tools
	$(BIN)/pytest

# The manual (docs/, mkdocs.yml; the site goes to build/site, which git ignores): any warning (a
# broken link or anchor, a page left out of the nav) fails the build. Not --quiet: it hides the
# warnings from --strict too. The variable silences mkdocs-material's banner about its successor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: docs lint typecheck pytest test-ranges

# The unit lane against the lowest allowed version of every runtime dependency, then against the
# newest (pyproject's ranges are tested at both ends), each in a throwaway venv made by uv.
test-ranges: $(STAMP)
	.ci/ranges $(BIN)/uv $(BIN)/python

# The unit lane, beside other work: no Prometheus, Alertmanager, uvicorn, container or any
# other process (tests/conftest.py refuses one in a test not marked `processes`).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not e2e and not processes" -p no:cacheprovider

# The image's runtime dependencies pinned with the hashes of their files (the Dockerfile installs
# them with --require-hashes), resolved for its Python on Linux from PyPI as it stood at
# LOCK_DATE: the same date gives the same lock (tests/test_lock.py resolves again and compares).
# Move the date to take newer releases; run it after changing pyproject's dependencies.
LOCK_DATE := 2026-12-01T00:00:00Z
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform linux --exclude-newer $(LOCK_DATE) -o requirements.lock

# A wheel and an sdist in $(DIST): uv builds the sdist from this tree (MANIFEST.in: every committed
# file, so its tests run), then the wheel from the unpacked sdist. tests/test_dist.py installs them.
DIST ?= dist
dist: $(STAMP)
	rm -f $(DIST)/agent_registry_exporter-*
	$(BIN)/uv build --quiet --out-dir $(DIST)

# Regenerate the committed artefacts (rules, Alertmanager example, dashboard, the jsonnet mixin,
# Kubernetes manifests,
# docs/metrics.md, the settings tables of docs/configuration.md).
rules: $(STAMP)
	$(BIN)/agent-registry-exporter rules > alerts/agent-registry.rules.yml
	$(BIN)/agent-registry-exporter alertmanager-config > alerts/alertmanager.example.yml
	$(BIN)/agent-registry-exporter dashboard > grafana/agent-registry.json
	$(BIN)/agent-registry-exporter mixin --output-dir mixin
	$(BIN)/agent-registry-exporter kubernetes --output-dir deploy/kubernetes
	$(BIN)/agent-registry-exporter metrics-doc > docs/metrics.md
	$(BIN)/python -m agent_registry_exporter.artifacts.configuration docs/configuration.md

# Each prints ratios measured in its own run. make bench RENDER_SIZES=10000,100000,1000000
# adds the million-user render: 9 minutes more (the render step 10 minutes in all, 3 GiB
# peak RSS; measured on the 2-core machine shared with other work, see docs/performance.md)
RENDER_SIZES ?= 10000,100000
bench: $(STAMP)
	$(BIN)/python benchmarks/scrape.py
	$(BIN)/python benchmarks/sidecar.py
	cd benchmarks && ../$(BIN)/python render.py --sizes $(RENDER_SIZES) --stock
	$(BIN)/python benchmarks/hot_path.py
	$(BIN)/python benchmarks/hostile.py
	$(BIN)/python benchmarks/registry_memory.py
	$(BIN)/python benchmarks/series.py
	$(BIN)/python benchmarks/cache_memory.py

clean:
	rm -rf $(VENV) $(SCAN_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
