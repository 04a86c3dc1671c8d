# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/nas: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned below 2.14 in pyproject.toml so pip takes the CPU build that lies on disk.
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/nas

demo: $(BIN)/nas
	$(BIN)/nas search
	@echo
	@echo "Browse the front:  $(BIN)/nas serve   then open http://127.0.0.1:8000"

test: $(BIN)/nas
	$(BIN)/python -m pytest -q

# The ruff configuration is in pyproject.toml; CI (.ci/run) fails on any finding.
lint: $(BIN)/nas
	$(BIN)/ruff check .

# Every benchmark's --smoke mode (seconds each): proves the scripts still run. The full
# benchmarks take minutes to hours; run them one by one as BENCHMARKS.md says.
bench: $(BIN)/nas
	$(BIN)/python -m pytest -q tests/test_bench_smoke.py

clean:
	rm -rf $(VENV) nas.db nas.db-wal nas.db-shm
