# One-command set-up: `make demo` and `make test` create the virtualenv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo report-demo test check bench bench-sim bench-transports bench-kill-window bench-files soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## a job on the embedded simulator: no key, no network
	rm -rf demo-out
	@echo '$$ runner run samples/mixed.jsonl --out demo-out --provider sim --no-progress'
	@$(BIN)/runner run samples/mixed.jsonl --out demo-out --provider sim --no-progress; \
	  rc=$$?; echo '$$ runner status demo-out'; $(BIN)/runner status demo-out; \
	  echo '$$ runner report demo-out'; $(BIN)/runner report demo-out; \
	  echo "(exit $$rc) runner is in $(BIN): '. $(BIN)/activate' puts it on your PATH"

report-demo: $(STAMP)  ## a 6,000-row job with 429s, filtered rows and a resume; docs/report.png
	$(BIN)/python bench/report_demo.py --screenshot docs/report.png

test: $(STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench
	$(BIN)/mypy

bench-sim: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/sim_bench.py

bench-files: $(STAMP)  ## peak RSS and CPU per MiB for 200 / 1,000 / 2,000 rows of 5 MiB images
	$(BIN)/python bench/files_bench.py

bench-transports: $(STAMP)  ## CPU µs per request of each HTTP transport candidate
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/transport_cpu.py

bench: $(STAMP)  ## the runner against its peers on the simulator (docs/BENCHMARKS.md)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_bench.py

bench-kill-window: $(STAMP)  ## answers a kill -9 costs at C=500, against those in flight
	$(BIN)/python bench/kill_window.py --repeat 3

soak: $(STAMP)  ## 100+ SIGKILLs, a fault storm, 200 hostile specs; prints the figures
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) demo-out report-demo .pytest_cache .mypy_cache .ruff_cache
