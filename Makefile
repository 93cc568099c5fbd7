# The two commands: `make run` (the whole system) and `make test` (the full suite).
# Both install what they need on a fresh Debian machine: apt packages (as root), a venv, pip.

VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
APT_PACKAGES := postgresql redis-server rabbitmq-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps test-deps venv lint token clean

run: deps venv ## start Postgres, Redis, RabbitMQ and the four services (CLUSTER=1: clustered engines); Ctrl-C stops them all
	$(PY) -m devtools.stack run $(if $(CLUSTER),--cluster)

test: deps test-deps venv ## the full test suite (starts its own private servers)
	$(PY) -m pytest

deps: ## Debian packages for the three servers (skipped when they are there)
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/sbin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test-deps: ## Debian's Chromium (the browser test; Playwright downloads no browser) and promtool (the alert rules)
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

lint: venv ## ruff (lint, import order, format check) and mypy --strict on the five packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

token: venv ## print a development token: make token USER=alice (CLUSTER=1: for make run CLUSTER=1)
	@$(PY) -m devtools.tokens $(USER) $(if $(CLUSTER),--state .state-cluster)

clean:
	rm -rf .state $(VENV) *.egg-info
