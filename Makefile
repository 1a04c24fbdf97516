# `make run` and `make test` are the two commands of the README's contract.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The tested torch/torchvision pair; pyproject.toml keeps the ranges users can install.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-all bench chromium clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test]' $(TORCH_PIN)
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium drives the browser test and kaleido's static export; never `playwright install`.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium (browser test, static figure export)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests and static export will be skipped"; }

run: setup
	$(PY) -m streamlit run app.py --server.headless true --browser.gatherUsageStats false

# Two workers, a file each at a time (module fixtures stay whole), one torch thread each: on the 2-core
# machines CI uses this takes ~3/4 of a serial run's time (docs/architecture.md, "Tests").
test: setup chromium
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile --timeout 600 --durations=25

test-all: setup chromium
	$(PY) -m pytest -q --timeout 1800

bench: setup
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) cache/*
