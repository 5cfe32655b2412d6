# `make train`, `make test` and `make lint` work on a fresh machine: they make .venv first when it
# is missing or out of date (the stamp file is newer than everything the install reads), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gridclip-installed

.PHONY: setup train test test-fast lint clean-venv

$(STAMP): requirements.txt scripts/install_detectron2.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) scripts/install_detectron2.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) train_net.py --config-file configs/GridCLIP_synthetic.yaml

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports  # the package's layers (pyproject.toml [tool.importlinter])

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

clean-venv:
	rm -rf $(VENV)
