# saecli developer tasks. `make run` and `make test` set everything up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The PyTorch to install first. The default is the CPU build (on our machines pip takes it from
# local disk). With a GPU: install the torch build for your CUDA first, then `make install TORCH=`.
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: install browser run test test-fast lint format bench-baseline clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(if $(strip $(TORCH)),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $@

# The report.html tests drive headless Chromium (tests/report/test_html.py, marker `browser`). Installed
# with apt-get where it is missing and we are root; otherwise one line says those tests will skip.
# Never fails: a machine without the browser still runs the rest of the suite.
browser:                ## chromium + chromedriver for the report.html browser tests
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: installing chromium and chromium-driver with apt-get (report.html tests)"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "browser: apt-get could not install chromium: the report.html browser tests will be skipped"; \
	else echo "browser: no chromium/chromedriver and no apt-get as root: the report.html browser tests will be skipped"; fi

run: install            ## the main job on the embedded default preset
	$(VENV)/bin/saecli run $(ARGS)

test: install browser   ## the whole test suite (offline, a few minutes on 2 cores)
	$(PY) -m pytest -q

test-fast: install browser  ## tests without the `slow` marker
	$(PY) -m pytest -q -m "not slow"

lint: install            ## ruff check, ruff format --check, and the import contracts of pyproject.toml
	$(VENV)/bin/ruff check saecli tests scripts
	$(VENV)/bin/ruff format --check saecli tests scripts
	$(VENV)/bin/lint-imports

bench-baseline: install  ## saecli against the research algorithm and plain forward passes (README figures)
	$(PY) scripts/baselines.py --preset gpt2-small-shape --limit 64 --research-limit 16 --batch-size 16 $(ARGS)

format: install
	$(VENV)/bin/ruff format saecli tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
