# hipdisloc task runner. The README's two commands are `make demo` and `make test`.
VENV ?= $(or $(HIPDISLOC_VENV),.venv)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint bench

install:            ## set up .venv with the whole stack (seconds when already done)
	scripts/install.sh

demo: install       ## run the main job on the embedded default (the phantom cohort)
	scripts/demo.sh

test: install       ## the test suite CI runs (everything but `slow`)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install  ## the slow tests (paper-scale phantom, long training)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check hipdisloc tests benchmarks

bench: install      ## benchmarks: ratios against baselines measured in the same run
	$(PY) -m benchmarks.run
