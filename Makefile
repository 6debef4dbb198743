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
run: install ## Serve the API on 127.0.0.1:8000 (starts PostgreSQL unless DATABASE_URL is set)
	@if [ -z "$${DATABASE_URL:-}" ]; then bash scripts/stack.sh up postgres; fi
	@$(UV) run --frozen alembic upgrade head
	@exec $(UV) run --frozen uvicorn app.main:create_app --factory --host $(HOST) --port $(PORT) \
		--workers $(WORKERS) --no-access-log --timeout-graceful-shutdown 20

.PHONY: test
test: install ## Run the whole suite with coverage against the local stack
	@bash scripts/run_tests.sh

.PHONY: lint
lint: install ## ruff, ruff format --check, mypy strict on app/, import-linter layer contracts
	@$(UV) run --frozen ruff check app tests scripts migrations
	@$(UV) run --frozen ruff format --check app tests scripts migrations
	@$(UV) run --frozen mypy app
	@$(UV) run --frozen lint-imports

.PHONY: format
format: install ## Apply ruff's fixes and formatting
	@$(UV) run --frozen ruff check --fix app tests scripts migrations
	@$(UV) run --frozen ruff format app tests scripts migrations

.PHONY: bank-expectations
bank-expectations: install ## Regenerate deploy/mockserver/expectations.json from the test-card table
	@$(UV) run --frozen python scripts/generate_bank_expectations.py
