# edge — two commands matter: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the project needs at run and test time (binary -> package).
APT_NEEDS := /usr/sbin/mosquitto:mosquitto /usr/bin/dbus-daemon:dbus-daemon /usr/bin/openssl:openssl \
  /usr/lib/postgresql/15/bin/initdb:postgresql /usr/bin/bluetoothctl:bluez \
  /usr/bin/chromium:chromium /usr/bin/strace:strace /usr/bin/faketime:faketime
# No bluetoothd needs to run: the tests point bluetoothctl and bleak at the simulator's private
# D-Bus (DBUS_SYSTEM_BUS_ADDRESS); PostgreSQL runs as throwaway clusters the tests start; the
# browser tests drive Debian's Chromium through Playwright (never a downloaded browser); the
# clock test gives `edge run` a wrong wall clock through libfaketime (never the machine's clock).

FUZZ_SECONDS ?= 300
SOAK_MINUTES ?= 30

.PHONY: setup system-deps test test-unit lint demo bench install clean fuzz sbom soak

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for pair in $(APT_NEEDS); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$(basename $$bin) >/dev/null 2>&1 || [ -x $$bin ] || missing="$$missing $$pkg"; done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,clinic]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check edge firmware_sim clinic devtools fuzz tools soak tests bench
	$(VENV)/bin/mypy --strict edge firmware_sim clinic devtools fuzz tools soak tests bench

demo: setup
	$(PY) -m devtools.demo

bench: setup
	$(PY) -m bench

fuzz: setup
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q -e '.[fuzz]'
	$(PY) -m fuzz --total-seconds $(FUZZ_SECONDS)

soak: setup
	$(PY) -m soak --minutes $(SOAK_MINUTES)

sbom: setup
	@test -x $(VENV)/bin/cyclonedx-py || $(PY) -m pip install -q -e '.[sbom]'
	$(PY) tools/sbom.py

install: setup
	./systemd/install.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
