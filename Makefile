# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

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

clean:
	rm -rf $(VENV) nas.db nas.db-wal nas.db-shm
