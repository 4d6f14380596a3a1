# agentexp: `make loop` runs the offline loop on the built-in data, `make test` the fast tests.
PY      := .venv/bin/python
STAMP   := .venv/.installed
PORT    ?= 5000
ARGS    ?=

.DEFAULT_GOAL := help
.PHONY: help install loop start stop status watch train sweep ui server report test test-all test-live test-slurm lint bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install agentexp with everything it needs

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

loop: $(STAMP)  ## the offline loop on the built-in digits data: a budget of 6 trainings (ARGS="llm=codex loop.max_trainings=20")
	.venv/bin/agentexp loop loop.max_trainings=6 loop.max_cycles=60 $(ARGS)

start: $(STAMP)  ## the loop as a background daemon (ARGS="--run-hours 8")
	.venv/bin/agentexp start $(ARGS)

stop: $(STAMP)  ## stop the daemon and wait for it
	.venv/bin/agentexp stop --wait

status: $(STAMP)  ## one-shot status: running/stopped, heartbeat, active runs, top-3
	.venv/bin/agentexp status

watch: $(STAMP)  ## refreshing status view
	.venv/bin/agentexp watch

train: $(STAMP)  ## one training run on the built-in offline data (ARGS="model=efficientnet_b0 aug=strong")
	$(PY) -m trainers.train $(ARGS)

sweep: $(STAMP)  ## a small example multirun: 2 models x 2 learning rates
	$(PY) -m trainers.train -m model=resnet18,mobilenetv3_small_100 optim.lr=1e-3,3e-4 trainer.epochs=2 $(ARGS)

ui: $(STAMP)  ## MLflow UI on 127.0.0.1:$(PORT) over the same store
	.venv/bin/agentexp ui --port $(PORT)

server: $(STAMP)  ## shared MLflow server on PostgreSQL at 127.0.0.1:$(PORT) (ARGS="--host 0.0.0.0")
	.venv/bin/agentexp server --port $(PORT) $(ARGS)

report: $(STAMP)  ## leaderboard and paper-style report from MLflow
	.venv/bin/agentexp report $(ARGS)

test: $(STAMP)  ## fast offline tests
	$(PY) -m pytest -m "not slow and not slurm and not live_llm" -q $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included
	$(PY) -m pytest -m "not live_llm" -q $(ARGS)

test-slurm: $(STAMP)  ## slurm tests on a one-node cluster brought up here and torn down (root, apt)
	PY=$(PY) tests/slurm/ci.sh --strict $(ARGS)

test-live: $(STAMP)  ## opt-in: the loop on a real small model via llama-cpp-python's server (first run builds it, minutes)
	nice $(PY) -m pip install -q -e '.[dev,live]'
	$(PY) -m pytest -m live_llm -q -s $(ARGS)

lint: $(STAMP)  ## ruff
	.venv/bin/ruff check .

bench: $(STAMP)  ## benchmarks: ratios against a baseline measured in the same run
	$(PY) bench/throughput.py
	$(PY) bench/loop_overhead.py
	$(PY) bench/report.py
	$(PY) bench/slots.py
