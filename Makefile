# ParallelTunes: `make demo` (set up, make data, shard, train on 2 CPU ranks, predict), `make test`.
PY := .venv/bin/python
DEMO_DATA ?= data/synth
DEMO_SHARDS ?= shards
DEMO_RUN ?= runs/demo

.PHONY: setup demo test clean-demo

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) preprocess/synth.py $(DEMO_DATA) --per-class 20 --seconds 30
	$(PY) preprocess/make_shards.py $(DEMO_DATA) $(DEMO_SHARDS)
	$(PY) train.py --shards $(DEMO_SHARDS) --run-dir $(DEMO_RUN) --nproc auto --amp --epochs 12 --batch-size 8 --crops-per-track 1
	$(PY) predict.py --checkpoint $(DEMO_RUN)/best.pt $(DEMO_DATA)/metal/metal.00019.wav $(DEMO_DATA)/jazz/jazz.00019.wav

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal tests

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN) $(DEMO_SHARDS)/*.tar $(DEMO_SHARDS)/*.idx $(DEMO_SHARDS)/manifest.json
