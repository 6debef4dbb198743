# Payment service — developer workflow. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv is installed with pip when missing; `python3 -m uv` works even before a PATH rehash.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
export UV

.PHONY: help
help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Install uv if missing and sync the locked dependencies
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen

.PHONY: services-up
services-up: install ## Start the local stack (PostgreSQL, ZooKeeper, Kafka, MockServer, test agent)
	@bash scripts/stack.sh up

.PHONY: services-down
services-down: ## Stop the local stack
	@bash scripts/stack.sh down

.PHONY: migrate
migrate: install ## Apply migrations (alembic upgrade head) to DATABASE_URL
	@$(UV) run --frozen alembic upgrade head

.PHONY: run
run: install ## Serve the API on 127.0.0.1:8000 and run the webhook dispatcher (starts PostgreSQL unless DATABASE_URL is set)
	@if [ -z "$${DATABASE_URL:-}" ]; then bash scripts/stack.sh up postgres; fi
	@$(UV) run --frozen alembic upgrade head
	@HOST=$(HOST) PORT=$(PORT) WORKERS=$(WORKERS) exec bash scripts/run_dev.sh

.PHONY: test
test: install ## Run the whole suite with coverage against the local stack
	@bash scripts/run_tests.sh

.PHONY: test-pgbouncer
test-pgbouncer: install ## The end-to-end suite once more, the service under test going through PgBouncer (transaction pooling)
	@TEST_POOLER_SERVER=postgresql+asyncpg://payments@127.0.0.1:$${PGBOUNCER_PORT:-6432} \
		bash scripts/run_tests.sh tests/e2e --no-cov

.PHONY: lint
lint: install ## ruff, ruff format --check, mypy strict on app/, import-linter layer contracts, squawk on the SQL of every migration
	@$(UV) run --frozen ruff check app tests scripts migrations
	@$(UV) run --frozen ruff format --check app tests scripts migrations
	@$(UV) run --frozen mypy app
	@$(UV) run --frozen lint-imports
	@$(UV) run --frozen python scripts/squawk_migrations.py

.PHONY: format
format: install ## Apply ruff's fixes and formatting
	@$(UV) run --frozen ruff check --fix app tests scripts migrations
	@$(UV) run --frozen ruff format app tests scripts migrations

.PHONY: bank-expectations
bank-expectations: install ## Regenerate deploy/mockserver/expectations.json from the test-card table
	@$(UV) run --frozen python scripts/generate_bank_expectations.py

# --- Documentation -------------------------------------------------------------------------
# The diagram targets need Java 11+ and, for the first PlantUML download only, Maven.

.PHONY: openapi
openapi: install ## Export the app's OpenAPI document to docs/openapi.json (sorted keys; a unit test compares it)
	@$(UV) run --frozen python scripts/export_openapi.py

.PHONY: client
client: install ## Regenerate the typed Python client in clients/python from docs/openapi.json (openapi-python-client)
	@bash scripts/client.sh generate

.PHONY: client-check
client-check: install ## Fail if clients/python is not what docs/openapi.json generates
	@bash scripts/client.sh check

.PHONY: diagrams
diagrams: ## Render docs/architecture/*.puml to SVG with the pinned PlantUML (smetana layout, no Graphviz)
	@bash scripts/render_diagrams.sh

.PHONY: diagrams-check
diagrams-check: ## Fail if a diagram no longer renders or a committed SVG differs from a fresh render
	@bash scripts/render_diagrams.sh --check

# --- API tests and Docker ------------------------------------------------------------------
# Docker targets need a Docker engine with Compose v2.24+. `docker-config` does not: it uses
# the static Compose binary and hadolint from the dev dependencies.
COMPOSE ?= docker compose
DEMO_MERCHANT_ID ?= merchant_demo
DEMO_KEY_FILE ?= .stack/docker/demo-api-key

.PHONY: test-api
test-api: install ## API tests (scripts/test_api.sh) against a local server on the local stack, no Docker
	@bash scripts/test_api_local.sh

.PHONY: fuzz
fuzz: install ## schemathesis, every phase incl. stateful, against a local server (scripts/fuzz_api.sh); fails on any failure or warning
	@bash scripts/fuzz_api.sh $(FUZZ_ARGS)

.PHONY: test-api-docker
test-api-docker: ## API tests against `make docker-up` (BASE_URL, API_KEY, MERCHANT_ID; demo merchant by default)
	@key="$${API_KEY:-$$(cat $(DEMO_KEY_FILE) 2>/dev/null)}"; \
	if [ -z "$$key" ]; then echo "no API_KEY and no $(DEMO_KEY_FILE): run make docker-up first" >&2; exit 2; fi; \
	BASE_URL="$${BASE_URL:-http://localhost:$${APP_PORT:-8000}}" CREATE_MERCHANT="$${CREATE_MERCHANT:-0}" \
	API_KEY="$$key" MERCHANT_ID="$${MERCHANT_ID:-$(DEMO_MERCHANT_ID)}" \
	ADMIN_TESTS="$${ADMIN_TESTS:-1}" PAYMENTS_ADMIN="$${PAYMENTS_ADMIN:-$(COMPOSE) exec -T app payments-admin}" \
	bash scripts/test_api.sh

.PHONY: docker-up
docker-up: ## Build and start the whole stack in Docker, wait until healthy, print a demo merchant's key
	@$(COMPOSE) up -d --build --wait --wait-timeout 300
	@mkdir -p "$(dir $(DEMO_KEY_FILE))"; \
	if [ ! -s "$(DEMO_KEY_FILE)" ]; then \
		(umask 077; printf 'sk_demo_%s\n' "$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" > "$(DEMO_KEY_FILE)"); \
	fi; \
	key=$$(cat "$(DEMO_KEY_FILE)"); \
	if out=$$($(COMPOSE) exec -T app payments-admin create-merchant $(DEMO_MERCHANT_ID) \
			--api-key "$$key" --currencies USD,EUR,GBP,JPY 2>&1); then :; \
	elif ! grep -q "already exists" <<<"$$out"; then echo "$$out" >&2; exit 1; \
	elif out=$$($(COMPOSE) exec -T app payments-admin issue-key $(DEMO_MERCHANT_ID) --api-key "$$key" 2>&1); then :; \
	elif ! grep -q "already in use" <<<"$$out"; then echo "$$out" >&2; exit 1; fi; \
	echo; echo "Payment service: http://localhost:$${APP_PORT:-8000}  (docs: /docs)"; \
	echo "Demo merchant:   $(DEMO_MERCHANT_ID)"; \
	echo "Demo API key:    $$key   (kept in $(DEMO_KEY_FILE))"; \
	echo "Try:             make test-api-docker"

.PHONY: docker-logs
docker-logs: ## Follow the logs of every Docker service (SERVICE=app for one)
	@$(COMPOSE) logs -f --tail=200 $(SERVICE)

.PHONY: docker-down
docker-down: ## Stop and remove the Docker stack (data volumes kept; `docker compose down -v` drops them)
	@$(COMPOSE) down --remove-orphans

.PHONY: docker-config
docker-config: install ## Static checks without a Docker engine: docker-compose config -q and hadolint
	@$(UV) run --frozen docker-compose config -q && echo "docker-compose.yml: valid"
	@$(UV) run --frozen hadolint Dockerfile && echo "Dockerfile: hadolint clean"
	@$(UV) run --frozen hadolint deploy/pgbouncer/Dockerfile && echo "deploy/pgbouncer/Dockerfile: hadolint clean"

.PHONY: datadog-apply
datadog-apply: install ## deploy/datadog (dashboards, monitors, SLOs, synthetics) to Datadog by name: a validated plan; APPLY=1 applies (DD_API_KEY, DD_APP_KEY, DD_SITE)
	@$(UV) run --frozen python scripts/datadog_apply.py $(if $(filter 1 true yes,$(APPLY)),--apply,)

.PHONY: helm-check
helm-check: install ## Helm chart, offline: pinned helm (Go-built into .stack/bin), lint --strict, kubernetes-validate, scripts/check_chart.py
	@bash scripts/helm_check.sh

# --- Load and fault drills ---------------------------------------------------------------
.PHONY: bench
bench: install ## Load-test 2 uvicorn workers: wrk closed loop, vegeta open loop, targets (.bench/results.json, report.html)
	@bash scripts/bench.sh

.PHONY: bench-compare
bench-compare: ## Before/after Markdown tables of two bench runs: make bench-compare BEFORE=a.json AFTER=b.json
	@if [ -z "$(BEFORE)" ] || [ -z "$(AFTER)" ]; then \
		echo "usage: make bench-compare BEFORE=old-results.json AFTER=.bench/results.json" >&2; exit 2; fi
	@$(UV) run --frozen python scripts/bench_compare.py "$(BEFORE)" "$(AFTER)"

.PHONY: bench-webhooks
bench-webhooks: install ## One webhook dispatcher: deliveries/s and commit-to-delivery latency (.bench/webhooks.json)
	@$(UV) run --frozen python scripts/bench_webhooks.py

.PHONY: soak
soak: install ## Bounded soak: Kafka and PostgreSQL restarts, a slow bank, a killed worker; checks the invariants
	@bash scripts/soak.sh

.PHONY: soak-replicas
soak-replicas: install ## The soak on 2 service instances x 2 workers + 2 webhook dispatchers, through PgBouncer
	@SOAK_INSTANCES=$${SOAK_INSTANCES:-2} SOAK_PGBOUNCER=$${SOAK_PGBOUNCER:-1} bash scripts/soak.sh
