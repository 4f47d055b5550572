# The README's two commands are `make demo` and `make test`; both set up everything themselves.
# torch is installed first, from the pinned CPU wheel, and every later install is constrained to it
# (otherwise pip pulls the newest torch with GBs of CUDA packages).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test demo demo-all bench fuzz clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Two workers (the CI machine's cores); each test file runs whole on one worker, so a file's session-cached
# exports are made once per worker that needs them.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 -n $(TEST_WORKERS) --dist loadfile

demo: setup
	$(PY) examples/demo.py --out demo-out

demo-all: setup
	$(PY) examples/demo.py --out demo-out --all

bench: setup
	$(PY) benchmarks/run.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/executorch_bench.py --out benchmarks/RESULTS.md

fuzz: setup
	XLSTM_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
