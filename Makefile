# Two commands on a fresh machine:  `make serve`  and  `make test`.
# Each creates .venv when missing. torch is pinned to 2.13.0, the CPU wheel on the development
# machines (other versions download gigabytes). Every install uses constraints.txt, the exact versions
# the Dockerfile installs too (regenerate: .venv/bin/python scripts/update-constraints.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: serve test system-deps venv bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev,batch]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps 'basic-pitch==0.4.0' 'resampy>=0.4.3,<0.5'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

serve: $(VENV)/.installed
	$(PY) -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m benchmarks.complex_conv
