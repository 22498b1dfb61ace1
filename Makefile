# attnlab: two set-up commands, `make demo` and `make test`; both build .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow grill-loop bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,viz,train,fast,hf]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/attnlab grill

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# `attnlab grill` 20 times in a row, timing checks included; prints each run and the count.
grill-loop: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow tests/test_grill_loop.py

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]" || echo "bench extras unavailable; peers that are missing are reported as such"
	$(BIN)/python -m benchmarks.run_all

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
