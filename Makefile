# The project's commands. `make demo` and `make test` work on a fresh machine: they bring
# up what is missing first.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Local development defaults; every service reads the same variables.
export ISSUER_ADMIN_TOKEN ?= dev-admin-token
# Users' tokens are HS256 JWTs signed with this development secret (README: Authentication).
export ISSUER_JWT_SECRET ?= dev-only-hs256-secret-never-use-in-production
# The API refuses the two above unless told this is development; a deployment never says so.
export ISSUER_DEV_SECRETS ?= allow
# What the development tokens name as their issuer and audience (mint-token.sh, the bench).
export ISSUER_JWT_ISSUER ?= coupon-issuance-dev
export ISSUER_JWT_AUDIENCE ?= coupon-api
export RUST_LOG ?= info

RELEASE_BIN := target/release
SERVICES := -p issuer-api -p issuer-worker

.PHONY: up down build run demo bench bench-cluster bench-redis-cost bench-buckets test test-cluster chaos contract-fuzz fuzz validate-deploy image lint fmt clean-test-dbs

up: ## Redis, PostgreSQL and a Kafka-API broker on their standard ports (installs what is missing)
	@bash deploy/local/up.sh

down: ## stop what `make up` started
	@bash deploy/local/down.sh

build:
	cargo build --release $(SERVICES) -p issuer-bench

run: up build ## both services in the foreground; Ctrl-C stops them
	@bash deploy/local/run.sh

demo: up build ## the seed's experiment in both queue modes: 500 coupons, 5,000 users at once
	@bash deploy/local/demo.sh

bench: demo ## the seed comparison table (`issuer-bench --help` lists the other scenarios)

bench-cluster: ## one Redis node against a Redis Cluster, alternating rounds (ROUNDS=3), release builds
	$(MAKE) up
	$(MAKE) up REDIS_MODE=cluster
	cargo build --release -p issuer-api -p issuer-worker -p issuer-bench
	bash deploy/local/bench-cluster.sh

bench-redis-cost: ## Redis µs and CPU µs per admitted request, the product beside the ceiling (ROUNDS=3; BEFORE=<issuer-api> to compare builds), release builds
	$(MAKE) up
	cargo build --release -p issuer-api -p issuer-worker -p issuer-bench
	CARGO_TARGET_DIR=.local/ceiling-target cargo build --release --manifest-path ../shared/tools/ceiling/Cargo.toml
	bash deploy/local/bench-redis-cost.sh

bench-buckets: ## one hot coupon on a Redis Cluster in 1 bucket and in 3, alternating (ROUNDS=3), release builds
	$(MAKE) up
	$(MAKE) up REDIS_MODE=cluster
	cargo build --release -p issuer-api -p issuer-worker -p issuer-bench
	bash deploy/local/bench-buckets.sh

test: up clean-test-dbs test-cluster ## the whole suite against the real services
	cargo test --workspace --no-fail-fast

# The suite's own Redis Cluster (testkit's redis_cluster::SHARED_NODES), emptied at each run:
# its nodes are bounded (deploy/redis/cluster.sh), and every run's keys are under prefixes
# no later run reads.
TEST_CLUSTER_PORTS := 7101,7102,7103,7104,7105,7106
test-cluster:
	@bash deploy/redis/cluster.sh start .local/redis-cluster-test $(TEST_CLUSTER_PORTS)
	@for port in $$(echo $(TEST_CLUSTER_PORTS) | tr , ' '); do \
	  [ "$$(redis-cli -p $$port ROLE | head -1)" = master ] && redis-cli -p $$port FLUSHALL >/dev/null; \
	done; true
	@grep -qx redis-cluster-test .local/started || echo redis-cluster-test >>.local/started

# Seconds of load under faults; CI runs a shorter one. The queue modes to run it in, and the
# Redis topologies (one node; a primary and replicas under Sentinel).
CHAOS_SECONDS ?= 120
CHAOS_QUEUES ?= kafka redis
CHAOS_REDIS ?= single sentinel
# Each chaos coupon's buckets (above 1: Kafka mode only).
CHAOS_BUCKETS ?= 1

chaos: up ## faults under load on a cluster of its own, in each queue mode and Redis topology, then every invariant checked
	cargo build -p issuer-api -p issuer-worker -p issuer-bench
	for queue in $(CHAOS_QUEUES); do for redis in $(CHAOS_REDIS); do \
	  target/debug/issuer-bench chaos --queue $$queue --redis-topology $$redis \
	    --duration-secs $(CHAOS_SECONDS) --buckets $(CHAOS_BUCKETS) || exit 1; \
	done; done

# Seconds the contract fuzz runs (CI: this default).
FUZZ_SECONDS ?= 120

contract-fuzz: up ## schemathesis against the running API and its OpenAPI document: no 5xx, every answer as documented
	cargo build -p issuer-api -p issuer-worker
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash deploy/local/contract-fuzz.sh

# Seconds each cargo-fuzz target runs.
FUZZ_TARGET_SECONDS ?= 60

fuzz: ## cargo fuzz (nightly, libFuzzer) on request parsing and event decoding, FUZZ_TARGET_SECONDS each
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for target in request_parsing event_decoding; do \
	  mkdir -p ../.local/fuzz-corpus/$$target && \
	  cargo +nightly fuzz run $$target ../.local/fuzz-corpus/$$target seeds/$$target -- \
	    -max_total_time=$(FUZZ_TARGET_SECONDS) || exit 1; \
	done

validate-deploy: ## the Kubernetes manifests and docker-compose.yml against their schemas (no cluster, no engine)
	@bash deploy/local/validate-deploy.sh

# The image tag: the crates' version. REGISTRY unset builds a local image only.
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' crates/issuer-api/Cargo.toml)
REGISTRY ?=
IMAGE := $(if $(REGISTRY),$(REGISTRY)/,)coupon-issuance:$(VERSION)

image: ## build the image (BuildKit), tagged $(IMAGE); with REGISTRY=host/path, push it too
	DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t $(IMAGE) .
	$(if $(REGISTRY),docker push $(IMAGE),@echo "built $(IMAGE); REGISTRY=host/path pushes it")
	@echo "deploy it: set newName/newTag in deploy/k8s/kustomization.yaml to $(IMAGE), then kubectl apply -k deploy/k8s"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Each integration test migrates its own database; drop those left by earlier runs.
clean-test-dbs:
	@bash deploy/local/clean-test-dbs.sh
