# Two commands: `make demo` runs the whole pipeline on the embedded demo corpus,
# `make test` runs the test suite (`make lint`: ruff, configured in pyproject.toml).
# All create or reuse the local virtual environment .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE ?= 1
export PYANNOTE_METRICS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint install clean-demo

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(PY) reproduce.py $(ARGS)

# -n auto: one pytest worker per CPU core (pytest-xdist); --dist loadfile keeps a file's tests, and
# its module fixtures, on one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean-demo:
	rm -rf demo_data preprocessed_iemocap results
