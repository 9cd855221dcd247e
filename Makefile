# Targets: test (everything), check (lint, types, fast tests), lint, venv, test-deps, lock, man.
#
# Every Python tool runs from a virtual environment ($(VENV)) made from $(PYTHON) and filled
# from requirements.lock with hash checking, so this works on an externally-managed
# interpreter (Debian's, Ubuntu's, Kali's python3) as on any other 3.11+:
#   make test                      # python3 from PATH
#   make test PYTHON=python3.13    # another interpreter (the venv is remade when it changes)
# The Debian package list lives in .ci/debian-packages.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
LOCK := requirements.lock
UV ?= uv
export DEBIAN_FRONTEND := noninteractive

DEBIAN_PACKAGES := $(shell sed -e 's/\#.*//' .ci/debian-packages.txt)

# Tests that start real servers, build network namespaces, load or soak a service, or take
# long: `make check` leaves them to `make test` (markers are set in tests/conftest.py).
SLOW_MARKERS := not slow and not realserver and not netns and not load and not soak

.PHONY: test check lint venv test-deps lock man

test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f '$${Status}\n' "$$p" 2>/dev/null | grep -q 'ok installed' || echo "$$p"; \
	  done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install -y" $$missing; \
	    apt-get update && apt-get install -y $$missing; \
	  fi; \
	else \
	  echo "not root or no apt-get: install these Debian packages yourself: $(DEBIAN_PACKAGES)"; \
	fi
	@$(MAKE) --no-print-directory venv

# The venv is (re)made when the interpreter, the lock or pyproject.toml changed; otherwise
# this is a no-op. The project goes in editable, without dependencies: they all come from the
# lock (setuptools and wheel too, so the build needs nothing unhashed).
venv:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: no $(PYTHON) on PATH (give another with PYTHON=/path/to/python3.11+)" >&2; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  v=$$($(PYTHON) -c 'import platform; print(platform.python_version())'); \
	  echo "error: $(PYTHON) is Python $$v; vncaudit needs 3.11 or newer" >&2; exit 1; }
	@want="$$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])') \
	$$(cat $(LOCK) pyproject.toml | sha256sum | cut -c1-16)"; \
	if [ -x $(VPY) ] && [ "$$(cat $(VENV)/.vncaudit-stamp 2>/dev/null)" = "$$want" ]; then \
	  exit 0; fi; \
	echo "making $(VENV) from $$want"; \
	$(PYTHON) -m venv --clear $(VENV) || { \
	  echo "error: $(PYTHON) -m venv failed; on Debian, Ubuntu or Kali: apt install python3-venv" >&2; \
	  exit 1; }; \
	$(VPY) -m pip install -q --require-hashes --no-deps --use-pep517 -r $(LOCK) && \
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e . && \
	echo "$$want" > $(VENV)/.vncaudit-stamp

# pytest exit 5 means "no tests collected": that is a failure here, never a pass.
test: test-deps
	$(VPY) -m ruff check src tests fuzz
	$(VPY) -m mypy
	@rc=0; $(VPY) -m pytest -q --durations=25 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The fast lane for every change: lint, types and the tests that need no real server,
# namespace or long run (under a minute on a 2-core machine). No apt, no root.
check: venv
	$(VPY) -m ruff check src tests fuzz
	$(VPY) -m mypy
	@rc=0; $(VPY) -m pytest -q -m "$(SLOW_MARKERS)" || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lint: venv
	$(VPY) -m ruff check src tests fuzz
	$(VPY) -m mypy

# Refresh requirements.lock after a change to the dependencies in pyproject.toml (needs uv:
# `pipx install uv`). Pins already in the lock are kept where they still fit; `make lock
# UPGRADE=1` moves every package to its newest version in range. Then run `make test`.
lock:
	printf 'setuptools>=68\nwheel\n' | $(UV) pip compile pyproject.toml - \
	  --extra test --universal --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o $(LOCK)

# The man page, from the same help text as --help (`vncaudit manpage`).
man: venv
	mkdir -p build
	$(VPY) -m vncaudit manpage --output-file build/vncaudit.1
