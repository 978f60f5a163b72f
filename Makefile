# nailseg: `make demo` sets everything up and trains on synthetic data; `make test` runs the tests.
# Installs go into .venv with pip (pip, not uv/poetry: torch 2.14.1 comes from this machine's wheels).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# constraints.txt: the exact versions the tests ran with (pyproject.toml keeps ranges for users).
PIP    := $(BIN)/python -m pip
PIN    := -c $(CURDIR)/constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test install install-torch browser lint clean help notebooks docs

help:
	@echo "make demo   - create .venv, install nailseg[torch], draw synthetic data, train, eval, predict"
	@echo "make test   - install nailseg[$(TEST_EXTRAS)] + MMDetection and run the test suite (two pytest processes: torch, then TensorFlow)"
	@echo "make notebooks - execute the tutorial notebooks (docs/tutorials/NN-*.py -> .ipynb with outputs)"
	@echo "make docs   - build the docs site into site/ (mkdocs, strict, offline), executing missing notebooks"
	@echo "make lint   - ruff over src/ and tests/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77,<82" wheel

# Re-install when the dependency declarations change. The demo needs the Lightning stack;
# the tests need every stack that runs on a CPU (mmdet through scripts/install-mmdet.sh,
# which takes mmcv from ../shared/wheels when present and builds it otherwise).
TEST_EXTRAS := torch,hf,gpuaug,dali,tf,onnx,serve,export,weights,tune,cluster,docs,dev

$(VENV)/.installed-torch: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q $(PIN) -e ".[torch]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt scripts/install-mmdet.sh | $(BIN)/python
	$(PIP) install -q $(PIN) -e ".[$(TEST_EXTRAS)]"
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt PIP="$(PIP)" bash scripts/install-mmdet.sh
	touch $@ $(VENV)/.installed-torch

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-torch
	BIN=$(BIN) bash scripts/demo.sh

# The upload-page test drives Debian's chromium through Selenium: installed here where apt-get runs as
# root; elsewhere that one test skips.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed: the browser test will skip"

# Three parts, each run whatever the others did (scripts/test-parts.sh): the torch tests, the
# TensorFlow tests (TensorFlow and torch must not share a process, see tests/stacks/keras/conftest.py)
# and the docs build. One summary line per part at the end; the exit status fails if any part did.
# The notebook tests keep the executed notebooks in docs/tutorials, and the docs site is built from them.
test: $(VENV)/.installed-test browser
	BIN=$(BIN) PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/test-parts.sh

# The tutorials: each jupytext source executed into its .ipynb (generated, never edited, not committed).
NOTEBOOK_SOURCES := $(wildcard docs/tutorials/[0-9][0-9]-*.py)
NOTEBOOKS := $(NOTEBOOK_SOURCES:.py=.ipynb)

docs/tutorials/%.ipynb: docs/tutorials/%.py src/nailseg/tutorial.py | $(VENV)/.installed-test
	$(BIN)/python scripts/notebooks.py $* --cwd build/notebooks

notebooks: $(NOTEBOOKS)

# A notebook that cannot run here (mmdet not installed) is left out with a note; mkdocs then fails on
# the missing page, so CI (which installs everything) always builds the whole site.
docs: $(VENV)/.installed-test notebooks
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs data/synth data/synth-unseen .pytest_cache site build/notebooks docs/tutorials/*.ipynb
