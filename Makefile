# Two set-up commands (see README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_out

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# Reinstall only when the package definition changes.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# One worker per core (pytest-xdist): each test pins torch to one thread.
test: $(STAMP)
	$(PY) -m pytest -n auto tests

lint: $(STAMP)
	$(VENV)/bin/ruff check attgmae cli pipelines tests benchmarks scripts

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache
