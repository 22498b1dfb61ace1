# attnlab: two set-up commands, `make demo` and `make test`; both build .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow grill-loop fuzz bench lint clean

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

# the differential fuzz suite's deep run: randomised, 4 properties x FUZZ_EXAMPLES (default
# 5500, so >= 20,000 examples) and the paged-cache state machine (400 runs x 50 steps =
# 20,000 steps); `make test` runs the same suite with the derandomised "ci"
# profile (tests/conftest.py)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=deep ATTNLAB_FUZZ_PAGED_EXAMPLES=400 $(BIN)/python -m pytest -q \
		tests/fuzz tests/test_paged_stress.py -p no:cacheprovider --hypothesis-show-statistics

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
