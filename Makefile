# Two entry points for a fresh machine with Python 3.11+ and make:
#   make demo   migrate, seed and run every DAG against the embedded defaults
#   make test   lint, type-check and run the whole test suite
# Both bootstrap uv into .tools/ and the locked environment into .venv/.

UV := .tools/bin/uv
RUN := $(UV) run --frozen

.PHONY: demo up down test lint typecheck pytest chromium bench clean

demo: .venv/.synced
	$(RUN) lethe demo

# A real local Airflow (api-server, scheduler, dag-processor, triggerer) with Lethe's DAGs and the
# Privacy compliance page; prints the URL and the admin's credentials. `make down` stops everything.
up: .venv/.synced
	$(RUN) lethe up

down: .venv/.synced
	$(RUN) lethe down

test: lint typecheck pytest

lint: .venv/.synced
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: .venv/.synced
	$(RUN) mypy

pytest: .venv/.synced chromium
	$(RUN) pytest

# The compliance page's browser test drives Debian's Chromium (never a downloaded browser):
# installed with apt when missing and apt can be used (as root, or sudo without a password),
# otherwise make stops here, before the suite, saying what to install.
CHROMIUM := /usr/bin/chromium
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (apt-get) for the browser test"; sh -c '$(APT_INSTALL)'; \
	  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    echo "installing Debian's chromium (sudo apt-get) for the browser test"; sudo sh -c '$(APT_INSTALL)'; \
	  else \
	    echo "make test needs Chromium at $(CHROMIUM) for the compliance page's browser test;" \
	      "install it first (Debian/Ubuntu: sudo apt-get install chromium)" >&2; exit 1; \
	  fi; \
	  [ -x $(CHROMIUM) ] || { echo "chromium was installed but $(CHROMIUM) is missing" >&2; exit 1; }; \
	fi

bench: .venv/.synced
	$(RUN) lethe bench all

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	touch $@

clean:
	rm -rf .venv .tools .lethe
