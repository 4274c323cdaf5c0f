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
FASTREID_DATASETS ?= ../shared/datasets
export FASTREID_DATASETS

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PKGS)
	# FastReID's metadata pins torch 1.13.1: install it without its dependencies
	$(PIP) install -q --no-deps $(FASTREID)
	$(PIP) install -q -e ".[dev,clip]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fastreid_plugins.tools.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/eval_speed.py
	$(PY) bench/rerank.py
	$(PY) bench/extract_speed.py

clean:
	rm -rf $(VENV) logs
