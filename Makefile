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
# Extra pip arguments for torch/torchvision, e.g. a CPU-only index (not tried on this machine):
# make venv TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
# The datasets folder of this Makefile's own commands (shown on each command line): the real
# 57-image VeRi-776 sample, ../shared/datasets, passed only when that folder exists (else the
# variable is empty and not passed: `make demo` then falls back to a synthetic dataset in its own
# logs/demo_synthetic/ folders, and says so). A value given here or in the environment is used as
# given: `make demo FASTREID_DATASETS=/path/to/datasets` stops with an error if it has no VeRi
# layout. Everywhere else (train_net.py, the tools) FASTREID_DATASETS defaults to FastReID's
# `datasets`.
FASTREID_DATASETS ?= $(wildcard ../shared/datasets)
DATASETS_ENV := $(if $(FASTREID_DATASETS),FASTREID_DATASETS=$(FASTREID_DATASETS))

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIP_ARGS) $(TORCH_PKGS)
	$(PIP) install -q -e ".[dev,clip,deploy,gallery,gallery-server]"
	# FastReID last, without its dependencies: its metadata pins torch 1.13.1 (and older
	# torchvision / opencv / tabulate / termcolor); pip checks no conflicts with --no-deps, so no
	# ERROR block (`pip check` still lists those five pins: README "Install")
	$(PIP) install -q --no-deps $(FASTREID)
	touch $(STAMP)

demo: $(STAMP)
	$(DATASETS_ENV) $(PY) -m fastreid_plugins.tools.demo

# ruff (ruff.toml: pycodestyle, pyflakes, isort, bugbear, simplify, complexity <= 15, lines <= 100)
# first, then every test and the 15 slowest
test: lint
	$(DATASETS_ENV) $(PY) -m pytest -q --durations=15 tests

# the inner loop: tests not marked slow (pytest.ini); its time: README "The two commands" (5 min 47 s
# of pytest on an idle 2-core machine, 2026-12-07). One torch thread unless
# FASTREID_PLUGINS_THREADS says otherwise (2 threads took 193 s instead of 67 s on the shared
# 2-core machine)
test-fast: $(STAMP)
	FASTREID_PLUGINS_THREADS=$${FASTREID_PLUGINS_THREADS:-1} \
		$(DATASETS_ENV) $(PY) -m pytest -q -m "not slow" --durations=15 tests

# ruff (ruff.toml); the first step of `make test`
lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/eval_speed.py
	$(PY) bench/rerank.py
	$(PY) bench/extract_speed.py

clean:
	rm -rf $(VENV) logs
