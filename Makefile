# The two commands a newcomer needs (see README):
#   make demo   set up, then run the end-to-end job on the embedded default corpus
#   make test   set up, then run the default (fast) test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test test-slow demo bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# PyLate pins fast-plaid (-> torch 2.11) and exact sentence-transformers/transformers versions;
	# its models.ColBERT needs none of those pins, so it is installed without its dependencies.
	$(PY) -m pip install -q -c constraints.txt --no-deps pylate==1.6.0 ujson==5.12.0
	touch $@

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

demo: setup
	$(VENV)/bin/mmbert demo --out out/demo

clean-venv:
	rm -rf $(VENV)
