# The two commands a newcomer needs (see README):
#   make demo   set up, then run the end-to-end job on the embedded default corpus
#   make test   set up, then run the default (fast) test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test test-slow test-compat demo bench clean-venv

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

# Opt-in: the config zoo, the parity tests and the downstream-library tests against the NEWEST
# transformers and sentence-transformers releases (not the pinned ones), in a separate venv.
# pip reports that mmbert's pins are violated there: that is the point. Results: README.
COMPAT_VENV ?= .venv-compat
COMPAT_TESTS ?= tests/model tests/test_integrations.py tests/test_inference.py tests/test_tokenizer.py
test-compat:
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0 -e '.[dev]'
	$(COMPAT_VENV)/bin/python -m pip install -q -c constraints.txt --no-deps pylate==1.6.0 ujson==5.12.0
	$(COMPAT_VENV)/bin/python -m pip install -q -c constraints.txt --upgrade transformers sentence-transformers 2>&1 \
		| grep -v "dependency resolver\|requires transformers\|requires sentence-transformers" || true
	$(COMPAT_VENV)/bin/python -c "import torch, transformers, sentence_transformers as st; \
		print(f'test-compat: torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers {st.__version__}')"
	$(COMPAT_VENV)/bin/python -m pytest -q $(COMPAT_TESTS)

demo: setup
	$(VENV)/bin/mmbert demo --out out/demo

clean-venv:
	rm -rf $(VENV)
