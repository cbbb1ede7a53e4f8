# Entry points for developers and CI. The scripts in scripts/ do the work;
# `make` with no target lists what is here.

DATA_DIR ?= .data
CARGO ?= cargo
# Extra arguments of scripts/bench.sh (make bench ARGS=--quick).
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help up test build fmt lint bench fuzz clean clean-data

help: ## list the targets
	@echo "Targets:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-11s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo "Env switches: DATA_DIR, WAKE_LISTEN, WAKE_COMPUTE_PORTS, GATEWAY_LISTEN, GATEWAY_ADMIN_LISTEN, RUST_LOG (up);"
	@echo "              SKIP_RUST=1, SKIP_NODE=1, NODE_TESTS="test/x.test.js" (test);"
	@echo "              ARGS=--quick or BENCH_QUICK=1 (bench: every scenario, smaller, about 2.5 minutes; ARGS="--only flood": the flood test alone);"
	@echo "              FUZZ_SECONDS=60 (fuzz: seconds per target), FUZZ_TARGETS=\"a b\" (fuzz: only those)"

up: ## build and run the local stack (wake service + gateway, endpoint db) in the foreground
	bash scripts/dev-up.sh

test: ## everything CI runs: fmt, clippy, cargo test, the Node sdk-tests suite
	bash scripts/test.sh

build: ## release build of the whole workspace
	$(CARGO) build --workspace --release

fmt: ## format the Rust code
	$(CARGO) fmt --all

lint: ## fmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: ## the gateway next to direct Postgres and PgBouncer, as ratios (writes BENCHMARKS.md)
	bash scripts/bench.sh $(ARGS)

fuzz: ## fuzz every gateway parser, FUZZ_SECONDS (default 60) per target; fails on a crash (not in test)
	bash scripts/fuzz.sh

clean: ## remove build output (keeps the dev data in DATA_DIR, default .data)
	$(CARGO) clean

clean-data: ## stop any Postgres/PgBouncer left under DATA_DIR (default .data) and delete it
	@case "$(DATA_DIR)" in ""|/) echo "refusing to delete DATA_DIR='$(DATA_DIR)'"; exit 1;; esac
	bash scripts/stop-computes.sh "$(DATA_DIR)"
	rm -rf -- "$(DATA_DIR)"
