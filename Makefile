# napari-lgg-seg: `make demo` and `make test` set everything up from scratch (a venv in .venv).
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: the CPU wheel lies on local disk; a bare "torch" requirement would pull a CUDA build
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.napari-lgg-seg-setup
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
PYTEST_ARGS ?=
DEMO_ARGS ?=

# Debian packages for the GUI tests: a virtual X server and the libraries Qt 6's xcb platform loads
XVFB_PACKAGES := xvfb xauth
QT_PACKAGES := libgl1 libegl1 libglib2.0-0 libdbus-1-3 libfontconfig1 libfreetype6 libx11-xcb1 libxkbcommon0 \
	libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 \
	libxcb-util1
OPTIONAL_PACKAGES := libtcmalloc-minimal4

.PHONY: help setup system-deps demo test lint screenshot clean

help:
	@echo "make demo   - set up .venv if needed and run the demo (napari, or headless without a display)"
	@echo "make test   - set up .venv (and Xvfb when root) and run the test suite under a virtual display"
	@echo "make lint   - ruff"
	@echo "make screenshot - regenerate docs/screenshot.png (napari under Xvfb, sample patient segmented)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[gui,testing]"
	@touch $@

# Installs what is missing through apt when run as root; otherwise only reports it.
system-deps:
	@missing=""; \
	for p in $(XVFB_PACKAGES) $(QT_PACKAGES) $(OPTIONAL_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "note: system packages missing (install them for the GUI tests):$$missing"; exit 0; \
	fi; \
	echo "installing system packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq; \
	apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	  for p in $$missing; do apt-get install -y -qq --no-install-recommends "$$p" >/dev/null || echo "note: could not install $$p"; done; \
	command -v xvfb-run >/dev/null || { echo "error: xvfb-run is still missing"; exit 1; }

demo: setup
	$(BIN)/napari-lgg-seg demo $(DEMO_ARGS)

test: setup system-deps
	@preload=""; if [ -e $(TCMALLOC) ]; then preload=$(TCMALLOC); fi; \
	if command -v xvfb-run >/dev/null; then \
	  echo "xvfb-run -a $(BIN)/python -m pytest -q $(PYTEST_ARGS)"; \
	  xvfb-run -a -s "-screen 0 1280x1024x24" env -u QT_QPA_PLATFORM LD_PRELOAD=$$preload \
	    $(BIN)/python -m pytest -q $(PYTEST_ARGS); \
	else \
	  echo "xvfb-run not found: running with QT_QPA_PLATFORM=offscreen"; \
	  env QT_QPA_PLATFORM=offscreen LD_PRELOAD=$$preload $(BIN)/python -m pytest -q $(PYTEST_ARGS); \
	fi

screenshot: setup system-deps
	xvfb-run -a -s "-screen 0 1400x1000x24" env -u QT_QPA_PLATFORM $(BIN)/python docs/make_screenshot.py --out docs/screenshot.png

lint: setup
	$(BIN)/ruff check src tests training benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis demo_output
