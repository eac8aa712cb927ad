# Two commands do all set-up: `make demo` and `make test`. Both create or update .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-3class test test-slow lint format clean-venv

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test]"
	@touch $(STAMP)

# The demo: the main command on the built-in phantom set, offline (random-init ResNet50: no weight download),
# small images so that it ends in a few minutes on 2 CPU cores. Each run writes results/resnet_stage2-<time>/.
DEMO_ARGS ?= --weights none --image-size 64 --num-samples 4 --max-epochs 6 --grace-period 4

demo: $(STAMP)
	$(PY) -m tuning.data
	$(PY) -m tuning.search --space resnet_stage2 $(DEMO_ARGS)

# The same on a three-class phantom set (no mass, a round mass, an irregular mass): N-class reports.
demo-3class: $(STAMP)
	$(PY) -m modules.phantom results/.cache/phantom-3class --n-per-class 30 --size 96 --classes none round irregular
	$(PY) -m tuning.search --space resnet_stage2 --data results/.cache/phantom-3class $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-venv:
	rm -rf $(VENV)
