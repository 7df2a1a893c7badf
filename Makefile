# Two entry points, each self-contained on a fresh machine:
#   make demo   - the main job on the embedded default (LanceDB on disk + all-MiniLM-L6-v2)
#   make test   - the test-suite, ruff and mypy
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LANCEDB_LOG := error
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint typecheck bench clean install

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pertinent demo

lint: $(STAMP)
	$(BIN)/ruff check pertinent tests bench examples
	$(BIN)/ruff format --check pertinent tests bench examples
	$(BIN)/mypy pertinent

test: $(STAMP) lint
	# pytest exits 5 when it collects no tests: not a failure of the code.
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo 'no tests collected'; exit 0; fi; exit $$rc

# The evaluation data live outside the repository (never copied in); override with
# `make bench CRANFIELD=path/to/cranfield`.
CRANFIELD ?= ../shared/data/cranfield

# Not part of `make test`: embeds the 10k-chunk corpus once (cached under
# ~/.cache/pertinent/bench), then runs the suite and rewrites docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python bench/corpus.py --chunks 10000
	$(BIN)/python bench/run_all.py --cranfield $(CRANFIELD)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache pertinent-demo-data
