# fastreid-plugins: `make demo` and `make test` build .venv from nothing on first use.
# Re-running with a ready .venv installs nothing (the stamp file below is the marker).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-stamp
# torch/torchvision as the machine docs describe: these versions install from local wheels
TORCH_PKGS := torch==2.14.1 torchvision==0.29.1
FASTREID   := fastreid==1.4.0
# The datasets folder of this Makefile's own commands (shown on each command line): the real
# 57-image VeRi-776 sample. Everywhere else (train_net.py, the tools) FASTREID_DATASETS defaults to
# FastReID's `datasets`. Override: `make demo FASTREID_DATASETS=/path/to/datasets`.
FASTREID_DATASETS ?= ../shared/datasets

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PKGS)
	# FastReID's metadata pins torch 1.13.1: install it without its dependencies
	$(PIP) install -q --no-deps $(FASTREID)
	$(PIP) install -q -e ".[dev,clip,gallery]"
	touch $(STAMP)

demo: $(STAMP)
	FASTREID_DATASETS=$(FASTREID_DATASETS) $(PY) -m fastreid_plugins.tools.demo

# ruff (ruff.toml: pycodestyle, pyflakes, isort, bugbear, simplify, complexity <= 15, lines <= 100)
# first, then every test and the 15 slowest
test: lint
	FASTREID_DATASETS=$(FASTREID_DATASETS) $(PY) -m pytest -q --durations=15 tests

# the inner loop: tests not marked slow (pytest.ini), under 2 minutes on a 2-core machine; one
# torch thread unless FASTREID_PLUGINS_THREADS says otherwise (2 threads took 193 s instead of
# 67 s on the shared 2-core machine)
test-fast: $(STAMP)
	FASTREID_PLUGINS_THREADS=$${FASTREID_PLUGINS_THREADS:-1} \
		FASTREID_DATASETS=$(FASTREID_DATASETS) $(PY) -m pytest -q -m "not slow" --durations=15 tests

# ruff (ruff.toml); the first step of `make test`
lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/eval_speed.py
	$(PY) bench/rerank.py
	$(PY) bench/extract_speed.py

clean:
	rm -rf $(VENV) logs
