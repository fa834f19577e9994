# The README's quick start: `make demo` and `make test` each set everything up on a fresh machine
# (idempotent: a second run reinstalls nothing) and then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test-tools demo test lint clean-venv

setup: $(STAMP)

# Debian's chromium and ffmpeg: the headless browser the viewers' tests draw pages in, and what `ns-render` needs
# (it refuses to start without ffmpeg). Installed only where this runs as root with apt-get (the tests that need
# them skip, saying why, without them); checked on every run, so a machine set up before gets them too.
test-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	    || echo "warning: could not install$$missing: the tests that need them will skip"; \
	fi

# libusb-1.0-0 is the system library open3d (pulled in by nerfstudio) needs at import time.
$(STAMP): pyproject.toml
	@if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0; \
	  else \
	    echo "warning: libusb-1.0-0 is missing (open3d needs it): install it with your system's package manager"; \
	  fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo's folder belongs to this target, so a second `make demo` replaces it (the CLI itself never overwrites).
demo: setup
	rm -rf outputs/demo
	$(BIN)/sync-splat demo --out outputs/demo $(ARGS)

test: setup test-tools
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
