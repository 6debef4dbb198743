# syntax=docker/dockerfile:1
# Payment service image. The builder resolves the locked dependencies with uv; the runtime
# stage carries only the virtual environment, alembic.ini + migrations and a non-root user:
# no uv, no pip, no compilers, no dev dependencies, no tests.
#
# PYTHON_VERSION defaults to 3.13, the interpreter CI tests on (.python-version). Every
# runtime dependency in uv.lock also ships cp314 manylinux wheels (x86_64 and aarch64), so
# `--build-arg PYTHON_VERSION=3.14` builds too; 3.15 does not (no aiokafka/ddtrace wheels).
#
# Migrations are not run here: the compose service `migrate` runs `alembic upgrade head`
# once, as the schema owner, before any replica starts.
ARG PYTHON_VERSION=3.13

# ---------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-trixie AS builder

ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app

# Dependencies alone first: this layer is rebuilt only when pyproject.toml or uv.lock
# change, not on every code edit. --no-build: wheels only (the runtime has no compiler).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --no-build

# Then the project itself, installed as a wheel (non-editable) into the same venv.
COPY README.md ./
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-trixie AS runtime

LABEL org.opencontainers.image.title="payment-service" \
      org.opencontainers.image.description="Payment processing API (FastAPI, PostgreSQL, Kafka outbox)"

# Unprivileged user with no home and no shell; the code it runs is owned by root.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app \
    && python -m pip uninstall --yes --quiet pip

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY alembic.ini ./
COPY migrations ./migrations

# WEB_CONCURRENCY is uvicorn's own default for --workers. APP_ENV=production refuses to
# start with the built-in development keys; compose sets `development` for local use.
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    WEB_CONCURRENCY=2

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4).status == 200 else 1)"]

# Exec form: uvicorn is PID 1 and gets SIGTERM itself (graceful drain, then exit).
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--no-access-log", "--timeout-graceful-shutdown", "20"]
