# psfkit: every target creates .venv itself. Python 3.11 on Debian is all it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the bundled real sample image.
demo: $(STAMP)
	$(VENV)/bin/psfkit demo --outdir demo-output

# Debian's chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null; fi; fi

# The whole test suite (the README's command).
test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks && $(PY) -m pytest -n 2 -q

# The fast tier while you work: everything but the long statistical tests and the browser.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow and not browser"

# Benchmarks against sep, photutils and simple floors; writes benchmarks/results/*.md
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
