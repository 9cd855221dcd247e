# Targets: test-deps, test, lint.  The Debian package list lives in .ci/debian-packages.txt.
SHELL := /bin/bash
PYTHON ?= python
export DEBIAN_FRONTEND := noninteractive

DEBIAN_PACKAGES := $(shell sed -e 's/\#.*//' .ci/debian-packages.txt)

.PHONY: test-deps test lint

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
	$(PYTHON) -m pip install -e '.[test]'

# pytest exit 5 means "no tests collected": that is a failure here, never a pass.
test: test-deps
	$(PYTHON) -m ruff check src tests fuzz
	$(PYTHON) -m mypy
	@rc=0; $(PYTHON) -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lint:
	$(PYTHON) -m ruff check src tests fuzz
	$(PYTHON) -m mypy
