# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv and installs what it needs; torch is pinned through constraints.txt so
# this machine's CPU wheel is used (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memrl-installed
MODEL ?= runs/digits-base
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install test demo clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra

demo: $(STAMP)
	test -f $(MODEL)/pretrain_metrics.json || $(VENV)/bin/memrl pretrain --out $(MODEL)
	$(VENV)/bin/memrl sample --model $(MODEL) --prompt "digit 0" --prompt "digit 1" --prompt "digit 2" --prompt "digit 3" --prompt "digit 4" --prompt "digit 5" --prompt "digit 6" --prompt "digit 7" --prompt "digit 8" --prompt "digit 9" -n 8 --out runs/demo/samples.png

clean:
	rm -rf $(VENV) runs .pytest_cache
