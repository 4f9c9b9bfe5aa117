# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast bench bench-train bench-rehearsal clean

$(STAMP): setup.py constraints.txt scripts/setup_venv.sh
	VENV=$(VENV) bash scripts/setup_venv.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fairseq-subnets demo --out demo_output

# Test workers (pytest-xdist): one per core of the 2-core development machine; each takes whole
# files, so a file's module fixtures are built once, in the order tests/conftest.py sets
# (--no-loadscope-reorder keeps it). TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
TEST_ARGS = -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS) tests

test-fast: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS) -m "not slow" tests

bench: $(STAMP)
	$(VENV)/bin/fairseq-subnets bench prune

bench-train: $(STAMP)
	$(VENV)/bin/fairseq-subnets bench train

# The whole workflow at XLS-R 300M size on this machine's CPU; starts from an empty folder each time.
bench-rehearsal: $(STAMP)
	rm -rf rehearsal_output
	$(VENV)/bin/fairseq-subnets bench rehearsal --out rehearsal_output

clean:
	rm -rf demo_output rehearsal_output .pytest_cache
