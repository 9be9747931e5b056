# Developer entry points. README's quick start uses `make dev` and `make test`;
# both set up what a fresh machine lacks first (a venv, the test binaries).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev test lint unit integration constraints chart clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,dev]'
	touch $@

# wrk is only for the benchmark's smoke test, the node packages only for tests/e2e
# (a real kubelet node) and hack/images.sh: if they cannot be installed here, setup
# goes on and those tests skip (CI, with MAILTRAP_CI set, fails them instead).
NODE_DEBS := containerd runc containernetworking-plugins nftables buildah mmdebstrap

setup: $(VENV)/.installed
	hack/testbins.sh >/dev/null
	@hack/install-debs.sh wrk || \
	  echo "setup: wrk is missing, so tests/integration/receiver/test_bench_smoke.py will skip" >&2
	@hack/install-debs.sh $(NODE_DEBS) || \
	  echo "setup: $(NODE_DEBS) are not all installed, so tests/e2e will skip" >&2

dev: setup
	$(BIN)/python hack/dev.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: setup lint
	$(BIN)/pytest

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

# The chart as users install it: dist/mailtrap-webhook-operator-<version>.tgz, its
# version and appVersion the package's (pyproject.toml), which Chart.yaml must equal.
VERSION = $(shell $(PYTHON) -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
CHART_DIST ?= dist
chart:
	$$(hack/testbins.sh helm)/helm package charts/mailtrap-webhook-operator \
	  --version $(VERSION) --app-version $(VERSION) --destination $(CHART_DIST)

constraints: $(VENV)/.installed
	{ echo '# Exact versions CI installs (pip install -c constraints.txt); refresh with `make constraints`.'; \
	  $(BIN)/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist
