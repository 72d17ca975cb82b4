# One entry point per job. Every target installs what it needs first (Python venv, npm packages).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
RUNBOOK := $(VENV)/bin/runbook

.PHONY: setup lint demo test test-faults test-browser bench typecheck lab strip clean mutation wheel

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lab]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The main job on the embedded default: local deployment + sample data, the whole runbook headless.
demo: setup
	$(RUNBOOK) demo

# Everything but the benchmarks (the fault suite included).
test: setup typecheck
	$(PYTEST) -q

test-faults: setup
	$(PYTEST) -q -m faults

bench: setup
	$(PY) benchmarks/run_all.py

# Mutation testing of verify, apply and the conversion rules against the pure tests (not part of `make test`):
# prints the share of mutants killed per module and every survivor. MUTATION_CHILDREN bounds the workers.
MUTATION_CHILDREN ?= 2
mutation: setup
	$(PY) -m pip install --quiet -e '.[mutation]'
	rm -rf mutants
	RUNBOOK_MUTATION=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) >/dev/null
	$(PY) tests/mutation_report.py --mutmut $(VENV)/bin/mutmut --goal helpers/steps/verify.py=90 --goal helpers/steps/apply.py=90

# ruff over the Python, mypy over helpers/ (strict on the core: connection, steps, evidence; pyproject.toml).
lint: setup $(VENV)/.lint-installed
	$(VENV)/bin/ruff check helpers tests benchmarks setup.py
	$(VENV)/bin/mypy helpers

$(VENV)/.lint-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[lint]'
	touch $@

typecheck: node_modules/.installed
	npx --no-install tsc --noEmit -p convex
	npx --no-install tsc --noEmit -p local_deployment
	npx --no-install tsc --noEmit -p benchmarks

# JupyterLab on the template notebooks (widgets work out of the box with ipywidgets 8), on 127.0.0.1; as root
# (containers) it needs --allow-root. More options: make lab LAB_ARGS="--port=8890 --no-browser". A run is opened
# with `runbook lab <run folder>` (the command `runbook new-run` prints), which writes the same package.json.
LAB_ARGS ?=
lab: setup $(VENV)/package.json
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/

# The venv lies inside this ESM package ("type": "module"): without its own package.json, Node loads
# JupyterLab's bundled yarn.js as ESM and it fails ("Dynamic require of "util""), so lab cannot check its build.
$(VENV)/package.json: $(VENV)/.installed
	echo '{"type": "commonjs"}' > $@

# JupyterLab and the evidence pages in Debian's chromium, driven by Playwright (tests/browser/).
test-browser: setup $(VENV)/package.json $(VENV)/.browser-installed /usr/bin/chromium
	$(PYTEST) -q -m browser tests/browser

$(VENV)/.browser-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,lab,browser]'
	touch $@

/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The installable runbook (README, "Installing the runbook"): helpers/ with the notebooks inside, no development
# tooling (setup.py). build/ goes first: setuptools would carry stale files from an earlier build into the wheel.
wheel: setup
	rm -rf build dist
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

# Source notebooks are templates: committed without outputs.
strip: setup
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf $(VENV) node_modules runs .pytest_cache mutants build dist
