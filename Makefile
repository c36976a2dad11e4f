# Two entry points for a fresh machine with Python 3.11+ and make:
#   make demo   migrate, seed and run every DAG against the embedded defaults
#   make test   lint, type-check and run the whole test suite
# Both bootstrap uv into .tools/ and the locked environment into .venv/.

UV := .tools/bin/uv
RUN := $(UV) run --frozen

.PHONY: demo test lint typecheck pytest bench clean

demo: .venv/.synced
	$(RUN) lethe demo

test: lint typecheck pytest

lint: .venv/.synced
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: .venv/.synced
	$(RUN) mypy

pytest: .venv/.synced
	$(RUN) pytest

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
