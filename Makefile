# The README's two commands: `make demo` and `make test`. Both create .venv/ when it is missing or
# older than pyproject.toml / constraints.txt, install the toolkit into it in editable mode with the
# pinned versions of constraints.txt, then run.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The local mirror of the downloaded samples (toolkit.datasets), for machines without internet:
# ../shared/data beside this checkout, or beside the repository it was cloned from.
MIRROR_CANDIDATES := ../shared/data $(shell git config --get remote.origin.url 2>/dev/null)/../shared/data
TOOLKIT_DATA_MIRROR ?= $(firstword $(foreach d,$(MIRROR_CANDIDATES),$(if $(wildcard $(d)/banepa),$(abspath $(d)))))
export TOOLKIT_DATA_MIRROR
# Models saved by arcgis.learn 2.4.4 with reference outputs of its own code (tests only).
FIXTURE_CANDIDATES := $(patsubst %/data,%/fixtures/arcgis_learn_2_4_4,$(MIRROR_CANDIDATES))
TOOLKIT_ARCGIS_FIXTURES ?= $(firstword $(foreach d,$(FIXTURE_CANDIDATES),$(if $(wildcard $(d)/regenerate.py),$(abspath $(d)))))
export TOOLKIT_ARCGIS_FIXTURES
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo venv lab clean

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) scripts/demo.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

clean:
	rm -rf $(VENV) demo_output .pytest_cache
