# Two commands do all the set-up: `make serve` and `make test`.
# Virtual environments live in the checkout; a stamp file rebuilds one when its requirements change.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPOSITORY ?= models
export HOST PORT MODEL_REPOSITORY

SERVE_VENV := .venv-serve
DEV_VENV := .venv-dev
PIP_FLAGS := --quiet --disable-pip-version-check --no-input
PYTEST_ARGS ?=

.PHONY: serve test train export bench clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(SERVE_VENV)/.stamp: requirements-serve.txt
	rm -rf $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install $(PIP_FLAGS) -r requirements-serve.txt
	touch $@

$(DEV_VENV)/.stamp: requirements-serve.txt requirements-train.txt requirements-dev.txt
	rm -rf $(DEV_VENV)
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install $(PIP_FLAGS) -r requirements-dev.txt
	touch $@

serve: $(SERVE_VENV)/.stamp ## serve models/ with gunicorn on HOST:PORT (default 127.0.0.1:8000)
	exec $(SERVE_VENV)/bin/python -m server

test: $(DEV_VENV)/.stamp $(SERVE_VENV)/.stamp ## install what the tests need and run them
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean: ## remove virtual environments and caches (keeps data/ and runs/)
	rm -rf $(SERVE_VENV) $(DEV_VENV) .pytest_cache .hypothesis
