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

# One pytest-xdist worker per core (one torch thread each, tests/conftest.py), a file's tests on
# one worker so its module fixtures are built once; `make test TEST_WORKERS=0` runs in-process.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile

RUN ?= runs/demo

# The main job on the embedded default: pretrain once (~11 min on 2 cores), train the selection
# agent (experiments/digits.yaml, ~15 min; an interrupted run resumes), replay it on the held-out
# `mirrored` variant with the winning configuration: the reward model fitted on the training run's
# evaluations picks the mask (its zero-shot pick, then one refinement; 2 search evaluations).
demo: $(STAMP)
	test -f $(MODEL)/pretrain_metrics.json || $(VENV)/bin/memrl pretrain --out $(MODEL)
	if [ -f $(RUN)/config.yaml ]; then $(VENV)/bin/memrl train --out $(RUN) --resume; \
	else $(VENV)/bin/memrl train --config experiments/digits.yaml --out $(RUN) --pretrained $(MODEL); fi
	rm -rf $(RUN)/replay-mirrored
	$(VENV)/bin/memrl replay --policy $(RUN)/policy.zip --dataset mirrored --budget 2 --optimizer model --out $(RUN)/replay-mirrored
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(RUN)/tb"
	$(VENV)/bin/memrl report $(RUN) --out $(RUN)/report.html

clean:
	rm -rf $(VENV) runs .pytest_cache
