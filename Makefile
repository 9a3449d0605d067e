.PHONY: test lint world demo serve

VENV := .venv
PY := $(VENV)/bin/python
# Test processes side by side (pytest-xdist), each with its share of the cores (tests/conftest.py); 0 runs the
# tests in this process. Two on 2 cores: a cold CI run took 30.5 min, against 46.6 min in one process (same day).
TEST_WORKERS ?= 2

# torch first and exactly pinned: anything looser pulls a multi-GB CUDA build.
$(VENV)/bin/lethe: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/bin/lethe
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --timeout=1200 --durations=40

lint: $(VENV)/bin/lethe
	$(VENV)/bin/ruff check unlearning core lethe server workers migrations tests bench
	# The benches and the test checkpoints call into the science library too: a changed signature fails here, not
	# after a cold build of the checkpoints.
	$(VENV)/bin/mypy unlearning core lethe server workers bench tests/checkpoints.py
	$(VENV)/bin/lint-imports

world: $(VENV)/bin/lethe
	$(VENV)/bin/lethe world build

demo: $(VENV)/bin/lethe
	$(VENV)/bin/lethe demo --subject p000

serve: $(VENV)/bin/lethe
	$(VENV)/bin/lethe serve
