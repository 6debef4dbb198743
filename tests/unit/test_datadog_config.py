"""Monitors, SLOs and synthetic tests under deploy/datadog, and ``make datadog-apply``.

Offline, no Datadog account: every metric any query names is one the code emits
(:data:`CATALOGUE`) or one of the few ddtrace and Agent metrics listed in
:data:`EXTERNAL_METRICS`; the monitors that must page when the service goes silent
do, and every other one says why it does not; every monitor, SLO and synthetic test
points at a runbook section that exists; the SLOs measure the route the app really
serves; and ``scripts/datadog_apply.py`` validates every definition (a malformed one
fails its dry run) and applies them idempotently by name, checked against a small fake
of the Datadog API on 127.0.0.1 (the list, read, create and update endpoints the script
uses, answering what the real API answers, server-side defaults and ids included).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from app.adapters.metrics import CATALOGUE, PaymentMetrics
from app.main import create_app
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
DATADOG = REPO / "deploy" / "datadog"
RUNBOOK = REPO / "docs" / "runbook.md"
MANAGED_TAG = "managed-by:deploy/datadog"

EXTERNAL_METRICS = {
    "trace.fastapi.request": "ddtrace 4: the fastapi.request span's latency distribution",
    "trace.fastapi.request.hits": "ddtrace 4: fastapi.request spans, every request",
    "trace.fastapi.request.errors": "ddtrace 4: fastapi.request spans marked error (5xx)",
    "kafka.consumer_lag": "the Agent's kafka_consumer check (conf.d/kafka_consumer.d)",
}
"""The only metrics queried that the service's code does not send itself, and who does."""

EXTERNAL_SERVICE_CHECKS = {
    "http.can_connect": "the Agent's http_check (conf.d/http_check.d)",
}

PAGE_ON_SILENCE = {
    "api-requests-stopped.json": "no request span: no API replica serves",
    "api-ready-http-check.json": "no readiness check result: no API container, or no Agent",
    "outbox-backlog.json": "no MetricsReporter gauge: no API worker reports",
    "webhook-dispatcher-silent.json": "no backlog total: no webhook dispatcher reports",
}
"""The monitors whose silence is an outage, and what the silence means."""

METRIC = re.compile(
    r"(?<![\w.$])(?:(?:sum|avg|min|max|count|p\d{2,3}):)?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)(?=\{)"
)
SCOPE = re.compile(r"(?<!by )\{")
SERVICE_CHECK = re.compile(r'^"([a-z0-9_.]+)"\.over\(')
RUNBOOK_REFERENCE = re.compile(r'docs/runbook\.md, "([^"]+)"')
BURN_RATE = re.compile(
    r'^burn_rate\("\$\{slo:([^}]+)\}"\)\.over\("(\d+d)"\)'
    r'\.long_window\("(\w+)"\)\.short_window\("(\w+)"\) > ([0-9.]+)$'
)


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def files(folder: str) -> list[Path]:
    return sorted((DATADOG / folder).glob("*.json"))


MONITORS = {path.name: load(path) for path in files("monitors")}
SLOS = {path.name: load(path) for path in files("slos")}
SYNTHETICS = {path.name: load(path) for path in files("synthetics")}
PATHS: dict[str, dict[str, Any]] = create_app(make_settings()).openapi()["paths"]
"""The routes the app serves: {path: {method: operation}}."""


def widgets(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for widget in node.get("widgets", []):
        yield widget["definition"]
        yield from widgets(widget["definition"])


def slo_queries(slo: dict[str, Any]) -> list[str]:
    if slo["type"] == "metric":
        return [slo["query"]["numerator"], slo["query"]["denominator"]]
    time_slice = slo["sli_specification"]["time_slice"]
    return [query["query"] for query in time_slice["query"]["queries"]]


def metric_queries() -> dict[str, list[str]]:
    """Every metric query, by the file it is in."""
    dashboard = load(DATADOG / "dashboards" / "payment-service.json")
    found = {
        "dashboards/payment-service.json": [
            query["query"]
            for definition in widgets(dashboard)
            for request in definition.get("requests", [])
            for query in request.get("queries", [])
        ]
    }
    for name, monitor in MONITORS.items():
        if monitor["type"] in {"query alert", "metric alert"}:
            found[f"monitors/{name}"] = [monitor["query"]]
    for name, slo in SLOS.items():
        found[f"slos/{name}"] = slo_queries(slo)
    return found


def metrics_in(query: str) -> list[str]:
    names = METRIC.findall(query)
    assert len(names) == len(SCOPE.findall(query)), f"a metric name was not recognised: {query}"
    return names


def test_the_metric_parser_finds_every_name_and_sees_what_it_cannot_read() -> None:
    query = "sum(last_5m):100 * sum:a.b{x:1} by {env}.as_count() / p99:trace.c.d{y:2} > 1"
    assert metrics_in(query) == ["a.b", "trace.c.d"]
    with pytest.raises(AssertionError, match="not recognised"):
        metrics_in("avg(last_5m):avg:Weird-Name{x:1} > 1")


# -- what the queries name ---------------------------------------------------------------


def test_every_metric_queried_is_emitted_by_the_code_or_listed_as_external() -> None:
    catalogued = {spec.full_name for spec in CATALOGUE}
    unknown = {
        (where, name)
        for where, queries in metric_queries().items()
        for query in queries
        for name in metrics_in(query)
        if name not in catalogued and name not in EXTERNAL_METRICS
    }
    assert not unknown, f"queried, but neither emitted nor listed as external: {sorted(unknown)}"


def test_every_service_check_is_listed_as_external() -> None:
    checks = [
        SERVICE_CHECK.match(m["query"]) for m in MONITORS.values() if m["type"] == "service check"
    ]
    assert checks, "no service check monitor"
    assert all(checks)
    assert {match.group(1) for match in checks if match} <= set(EXTERNAL_SERVICE_CHECKS)


def test_the_external_lists_are_minimal() -> None:
    used = {name for qs in metric_queries().values() for q in qs for name in metrics_in(q)}
    assert set(EXTERNAL_METRICS) <= used, f"listed, queried nowhere: {set(EXTERNAL_METRICS) - used}"
    assert not set(EXTERNAL_METRICS) & {spec.full_name for spec in CATALOGUE}
    checks = {SERVICE_CHECK.match(m["query"]) for m in MONITORS.values()} - {None}
    assert {match.group(1) for match in checks if match} == set(EXTERNAL_SERVICE_CHECKS)


def test_the_slos_measure_the_payment_route_the_app_serves() -> None:
    served = {f"{method}_{path}" for path, methods in PATHS.items() for method in methods}
    for name, slo in SLOS.items():
        for query in slo_queries(slo):
            resources = set(re.findall(r"resource_name:([^,}\s]+)", query))
            # Every scope of the query is filtered on the route: none counts other routes.
            assert query.count("resource_name:") == query.count("{"), (name, query)
            assert resources == {"post_/api/v1/payments/process"}, (name, query)
            assert resources <= served, (name, resources)
            assert "service:payment-service" in query and "env:production" in query, name


def test_the_http_check_probes_the_readiness_route_of_the_api_containers_only() -> None:
    config = yaml.safe_load((DATADOG / "conf.d" / "http_check.d" / "conf.yaml").read_text())
    (instance,) = config["instances"]
    assert urlsplit(instance["url"].replace("%%host%%", "h")).path == "/health/ready"
    assert instance["http_response_status_code"] == "200"
    assert re.search(
        instance["content_match"], json.dumps({"status": "ready"}, separators=(",", ":"))
    )
    assert not re.search(instance["content_match"], '{"status":"draining"}')
    assert "get" in PATHS["/health/ready"]
    monitor = MONITORS["api-ready-http-check.json"]
    assert f'.over("instance:{instance["name"]}")' in monitor["query"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    check_id = "com.datadoghq.ad.check.id"
    assert config["ad_identifiers"] == [compose["app"]["labels"][check_id]]
    assert check_id not in (compose["webhooks"].get("labels") or {})


def test_the_synthetic_test_checks_readiness_from_outside() -> None:
    (test,) = SYNTHETICS.values()
    request = test["config"]["request"]
    assert request["method"] == "GET"
    assert request["url"] == "${PUBLIC_BASE_URL}/health/ready"
    assertions = {a["type"]: a for a in test["config"]["assertions"]}
    assert assertions["statusCode"]["target"] == 200
    assert assertions["body"]["target"] == {
        "jsonPath": "$.status",
        "operator": "is",
        "targetValue": "ready",
    }
    assert len(test["locations"]) >= test["options"]["min_location_failed"] >= 2


# -- what pages, and on silence ----------------------------------------------------------


def window_minutes(query: str) -> int:
    match = re.match(r"^\w+\(last_(\d+)([mh])\):", query)
    assert match, query
    return int(match.group(1)) * (60 if match.group(2) == "h" else 1)


@pytest.mark.parametrize("name", sorted(PAGE_ON_SILENCE))
def test_a_silence_that_means_down_pages(name: str) -> None:
    monitor = MONITORS[name]
    options = monitor["options"]
    assert options["notify_no_data"] is True
    assert "on_missing_data" not in options
    timeframe = options["no_data_timeframe"]
    if monitor["type"] == "service check":
        assert 2 <= timeframe <= 10
    else:
        assert window_minutes(monitor["query"]) <= timeframe <= 30
    no_data = re.search(r"\{\{#is_no_data\}\}(.*?)\{\{/is_no_data\}\}", monitor["message"], re.S)
    assert no_data, f"{name}: no {{{{#is_no_data}}}} text"
    assert "@pagerduty-payments" in monitor["message"]
    # A heartbeat is a gauge sent at every report interval: a count is silent when idle.
    gauges = {spec.full_name for spec in CATALOGUE if spec.type == "gauge"}
    for metric in METRIC.findall(monitor["query"]):
        assert metric in gauges or metric in EXTERNAL_METRICS, (name, metric)


def test_only_those_page_on_silence_and_the_others_say_why_not() -> None:
    paging = {n for n, m in MONITORS.items() if m["options"].get("notify_no_data")}
    assert paging == set(PAGE_ON_SILENCE)
    for name, monitor in MONITORS.items():
        if name not in PAGE_ON_SILENCE:
            assert "No data:" in monitor["message"], f"{name}: why silence does not page"


def test_the_dispatcher_heartbeat_is_sent_with_an_empty_backlog() -> None:
    sent: list[tuple[str, float, list[str] | None]] = []

    class Statsd:
        def gauge(self, name: str, value: float, tags: list[str] | None = None) -> None:
            sent.append((name, value, tags))

    metrics = PaymentMetrics(Statsd())  # type: ignore[arg-type]
    metrics.webhook_backlog([])
    assert sent == [("webhooks.backlog.total", 0, None)]
    sent.clear()
    metrics.webhook_backlog([("we_1", 3, 12.5), ("we_2", 2, 1.0)])
    assert ("webhooks.backlog.total", 5, None) in sent


@pytest.mark.parametrize(
    "name", sorted([*MONITORS, *SLOS, *SYNTHETICS]), ids=lambda n: n.removesuffix(".json")
)
def test_every_alert_points_at_a_runbook_section_that_exists(name: str) -> None:
    body = MONITORS.get(name) or SLOS.get(name) or SYNTHETICS[name]
    text = body.get("message") or body.get("description", "")
    sections = RUNBOOK_REFERENCE.findall(text)
    assert sections, f'{name}: no `Runbook: docs/runbook.md, "…"`'
    headings = {
        line.lstrip("#").strip() for line in RUNBOOK.read_text().splitlines() if line[:1] == "#"
    }
    assert set(sections) <= headings, f"{name}: {set(sections) - headings}"
    assert MANAGED_TAG in body["tags"] and "service:payment-service" in body["tags"], name


def test_every_service_check_monitor_counts_enough_runs_for_its_thresholds() -> None:
    for name, monitor in MONITORS.items():
        if monitor["type"] != "service check":
            continue
        runs = int(re.search(r"\.last\((\d+)\)", monitor["query"]).group(1))  # type: ignore[union-attr]
        assert runs >= max(monitor["options"]["thresholds"].values()), name


# -- SLOs and their burn-rate alerts -----------------------------------------------------


def test_each_slo_has_a_target_and_a_fast_and_a_slow_burn_rate_alert() -> None:
    burns: dict[str, list[tuple[str, str, float, str]]] = {}
    for name, monitor in MONITORS.items():
        if monitor["type"] != "slo alert":
            continue
        match = BURN_RATE.match(monitor["query"])
        assert match, f"{name}: {monitor['query']}"
        slo, over, long_window, short_window, rate = match.groups()
        assert float(rate) == monitor["options"]["thresholds"]["critical"], name
        assert monitor["options"]["notify_no_data"] is False, name
        slo_timeframes = {
            t["timeframe"] for s in SLOS.values() if s["name"] == slo for t in s["thresholds"]
        }
        assert over in slo_timeframes, f"{name}: SLO {slo!r} has no {over} target"
        handle = "@pagerduty-payments" if float(rate) >= 14.4 else "@slack-payments-alerts"
        assert handle in monitor["message"], name
        burns.setdefault(slo, []).append((long_window, short_window, float(rate), over))
    assert set(burns) == {slo["name"] for slo in SLOS.values()}
    for windows in burns.values():
        assert sorted(windows) == [("1h", "5m", 14.4, "30d"), ("6h", "30m", 6.0, "30d")]
    for name, slo in SLOS.items():
        targets = {t["timeframe"]: t["target"] for t in slo["thresholds"]}
        assert targets["30d"] == slo["target_threshold"], name
        assert 99.0 <= slo["target_threshold"] < 100, name


# -- scripts/datadog_apply.py ------------------------------------------------------------


def _apply_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "datadog_apply", REPO / "scripts" / "datadog_apply.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["datadog_apply"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


apply_script = _apply_script()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of deploy/datadog to break."""
    root = tmp_path / "datadog"
    for kind in apply_script.KINDS:
        shutil.copytree(DATADOG / kind.folder, root / kind.folder)
    return root


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DD_API_KEY", "DD_APP_KEY", "APPLY", apply_script.HOST_VARIABLE):
        monkeypatch.delenv(variable, raising=False)


def test_the_dry_run_validates_every_definition(
    no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    definitions = apply_script.load_definitions()
    assert {d.path.name for d in definitions if d.kind.folder == "monitors"} == set(MONITORS)
    assert len(definitions) == 1 + len(MONITORS) + len(SLOS) + len(SYNTHETICS)
    assert apply_script.check_definitions(definitions) == []
    assert apply_script.main([]) == 0
    out = capsys.readouterr().out
    assert "all valid" in out
    assert out.count("  valid ") == len(definitions)


def _edit(root: Path, relative: str, change: Any) -> None:
    path = root / relative
    body = load(path)
    change(body)
    path.write_text(json.dumps(body))


BREAKAGES = {
    "unknown monitor option": (
        "monitors/outbox-backlog.json",
        lambda m: m["options"].update(notify_no_dta=True),
        "notify_no_dta",
    ),
    "unknown monitor type": (
        "monitors/api-error-rate.json",
        lambda m: m.update(type="query alrt"),
        "query alrt",
    ),
    "threshold of the wrong type": (
        "monitors/api-error-rate.json",
        lambda m: m["options"]["thresholds"].update(critical="five"),
        "critical",
    ),
    "unknown widget type in a group": (
        "dashboards/payment-service.json",
        lambda d: d["widgets"][0]["definition"]["widgets"][1]["definition"].update(
            type="timeseriez"
        ),
        "timeseriez",
    ),
    "misspelt widget field": (
        "dashboards/payment-service.json",
        lambda d: d["widgets"][1]["definition"]["widgets"][0]["definition"].update(titel="x"),
        "titel",
    ),
    "time-slice comparator": (
        "slos/payments-latency.json",
        lambda s: s["sli_specification"]["time_slice"].update(comparator="=<"),
        "=<",
    ),
    "SLO without thresholds": (
        "slos/payments-availability.json",
        lambda s: s.pop("thresholds"),
        "thresholds",
    ),
    "burn rate on an SLO nobody defines": (
        "monitors/slo-availability-fast-burn.json",
        lambda m: m.update(query=m["query"].replace("availability", "availabilty")),
        "which no slos/*.json defines",
    ),
    "synthetic assertion operator": (
        "synthetics/api-ready.json",
        lambda t: t["config"]["assertions"][0].update(operator="iz"),
        "assertions",
    ),
    "two monitors with one name": (
        "monitors/api-p99-latency.json",
        lambda m: m.update(name=MONITORS["api-error-rate.json"]["name"]),
        "same name as monitors/api-error-rate.json",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_malformed_definition_fails_the_dry_run(
    breakage: str, tree: Path, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    relative, change, expected = BREAKAGES[breakage]
    assert apply_script.main(["--root", str(tree)]) == 0
    capsys.readouterr()
    _edit(tree, relative, change)
    assert apply_script.main(["--root", str(tree)]) == 1
    err = capsys.readouterr().err
    assert relative.split("/")[1] in err and expected in err, err


def test_a_file_that_is_not_json_fails_the_dry_run(tree: Path, no_keys: None) -> None:
    (tree / "monitors" / "api-error-rate.json").write_text('{"name": "x",')
    assert apply_script.main(["--root", str(tree)]) == 1


def test_apply_needs_keys(no_keys: None) -> None:
    assert apply_script.main(["--apply"]) == 2


# -- idempotency by name, against a fake of the API --------------------------------------


class FakeDatadog:
    """Just the endpoints the script calls, holding objects in memory. Like the real API
    it pages lists, fills in ids and defaults the request left out, and answers 404 to
    anything else."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            "dashboard": {},
            "monitor": {},
            "slo": {},
            "synthetic": {},
        }
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDatadog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method in {"POST", "PUT"}]

    def add(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store ``body`` as the API would, with an id and server-side defaults."""
        n = next(self._ids)
        stored = json.loads(json.dumps(body))
        if kind == "dashboard":
            stored.update(id=f"abc-def-{n:03d}", url=f"/dashboard/abc-def-{n:03d}")
            for i, widget in enumerate(_all_widgets(stored)):
                widget.setdefault("id", 1000 * n + i)
        elif kind == "monitor":
            stored.update(id=n, overall_state="No Data", created="2026-01-01T00:00:00+00:00")
            stored.setdefault("options", {}).setdefault("notify_audit", False)
            stored.setdefault("tags", [])
        elif kind == "slo":
            stored.update(id=f"{n:032x}", created_at=1767225600, modified_at=1767225600)
        else:
            stored.update(public_id=f"abc-{n:03d}-xyz", monitor_id=90000 + n)
        key = stored["public_id"] if kind == "synthetic" else stored["id"]
        self.objects[kind][str(key)] = stored
        return stored

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                return body

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                with fake._lock:
                    fake.requests.append((method, split.path))
                    if self.headers.get("DD-API-KEY") != "fake-api-key":
                        self._answer(403, {"errors": ["Forbidden"]})
                        return
                    try:
                        answer = fake.route(method, split.path, query, self._body)
                    except Exception as exc:  # a bug of the fake: fail the test, not hang
                        fake.unexpected.append(f"{method} {self.path}: {exc!r}")
                        self._answer(500, {"errors": [repr(exc)]})
                        return
                if answer is None:
                    fake.unexpected.append(f"{method} {self.path}")
                    self._answer(404, {"errors": ["Not found"]})
                else:
                    self._answer(200, answer)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        objects = self.objects
        page = _page(method, path, query)
        if page is not None:
            kind, start, size = page
            items = list(objects[kind].values())[start : start + size]
            if kind == "dashboard":
                return {"dashboards": [{"id": d["id"], "title": d["title"]} for d in items]}
            if kind == "slo":
                return {"data": items}
            if kind == "synthetic":
                return {"tests": items}
            return items
        if method == "POST":
            kind = {
                "/api/v1/dashboard": "dashboard",
                "/api/v1/monitor": "monitor",
                "/api/v1/slo": "slo",
                "/api/v1/synthetics/tests/api": "synthetic",
            }.get(path)
            if kind is None:
                return None
            stored = self.add(kind, body())
            return {"data": [stored]} if kind == "slo" else stored
        match = re.fullmatch(r"/api/v1/(dashboard|monitor|slo|synthetics/tests/api)/([^/]+)", path)
        if not match:
            return None
        kind = {"synthetics/tests/api": "synthetic"}.get(match.group(1), match.group(1))
        current = objects[kind].get(match.group(2))
        if current is None:
            return None
        if method == "GET" and kind in {"dashboard", "synthetic"}:
            return current
        if method != "PUT":
            return None
        keep = {
            k: current[k]
            for k in ("id", "public_id", "monitor_id", "created", "url")
            if k in current
        }
        if kind == "monitor":  # PUT /monitor/{id} changes what the body has
            current.update(body(), **keep)
        else:  # the others replace the object
            replaced = dict(body(), **keep)
            objects[kind][match.group(2)] = current = replaced
        return {"data": [current]} if kind == "slo" else current


def _page(method: str, path: str, query: dict[str, str]) -> tuple[str, int, int] | None:
    if method != "GET":
        return None
    if path == "/api/v1/dashboard":
        return "dashboard", int(query.get("start", 0)), int(query.get("count", 100))
    if path == "/api/v1/monitor":
        size = int(query.get("page_size", 100))
        return "monitor", int(query.get("page", 0)) * size, size
    if path == "/api/v1/slo":
        return "slo", int(query.get("offset", 0)), int(query.get("limit", 1000))
    if path == "/api/v1/synthetics/tests":
        size = int(query.get("page_size", 100))
        return "synthetic", int(query.get("page_number", 0)) * size, size
    return None


def _all_widgets(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for widget in node.get("widgets", []):
        yield widget
        yield from _all_widgets(widget["definition"])


@pytest.fixture
def fake() -> Iterator[FakeDatadog]:
    with FakeDatadog() as server:
        yield server
    assert server.unexpected == [], "the script called an endpoint the fake does not know"


def _run(fake: FakeDatadog, *, apply: bool, root: Path = DATADOG) -> Any:
    config = apply_script.configuration(fake.url)
    config.api_key["apiKeyAuth"] = "fake-api-key"
    config.api_key["appKeyAuth"] = "fake-app-key"
    config.enable_retry = False
    definitions = apply_script.load_definitions(root)
    with apply_script.ApiClient(config) as client:
        return apply_script.run(
            definitions,
            apply_script.Account(client),
            apply=apply,
            public_url="https://payments.example.com",
            out=lambda line: None,
        )


def _actions(outcome: Any) -> dict[str, str]:
    return {step.definition.label: step.action for step in outcome.steps}


def test_the_first_apply_creates_everything_the_second_changes_nothing(fake: FakeDatadog) -> None:
    definitions = apply_script.load_definitions()

    first = _run(fake, apply=True)
    assert first.errors == []
    assert set(_actions(first).values()) == {"create"}
    assert {k: len(v) for k, v in fake.objects.items()} == {
        "dashboard": 1,
        "monitor": len(MONITORS),
        "slo": len(SLOS),
        "synthetic": len(SYNTHETICS),
    }
    assert len(fake.writes()) == len(definitions)

    # Burn-rate monitors point at the ids the SLOs got, created in the same run.
    slo_ids = {slo["name"]: slo_id for slo_id, slo in fake.objects["slo"].items()}
    for monitor in fake.objects["monitor"].values():
        if monitor["type"] == "slo alert":
            (name,) = re.findall(r'burn_rate\("([0-9a-f]{32})"\)', monitor["query"])
            assert name in slo_ids.values()
            assert "${" not in monitor["query"]
        assert MANAGED_TAG in monitor["tags"]
    (synthetic,) = fake.objects["synthetic"].values()
    assert synthetic["config"]["request"]["url"] == "https://payments.example.com/health/ready"

    before = json.dumps(fake.objects, sort_keys=True)
    second = _run(fake, apply=True)
    assert second.errors == []
    assert set(_actions(second).values()) == {"unchanged"}
    assert len(fake.writes()) == len(definitions), "the second apply wrote something"
    assert json.dumps(fake.objects, sort_keys=True) == before


def test_a_changed_file_updates_its_object_only(fake: FakeDatadog, tree: Path) -> None:
    _run(fake, apply=True, root=tree)
    _edit(tree, "monitors/outbox-backlog.json", lambda m: m["options"].update(no_data_timeframe=30))
    _edit(tree, "slos/payments-availability.json", lambda s: s.update(description="changed"))

    plan = _run(fake, apply=False, root=tree)
    writes = len(fake.writes())
    changed = {label: a for label, a in _actions(plan).items() if a != "unchanged"}
    assert changed == {
        "monitors/outbox-backlog.json": "update",
        "slos/payments-availability.json": "update",
    }
    step = next(s for s in plan.steps if s.definition.path.name == "outbox-backlog.json")
    assert step.detail == "changes options"

    applied = _run(fake, apply=True, root=tree)
    assert {label: a for label, a in _actions(applied).items() if a != "unchanged"} == changed
    assert len(fake.writes()) == writes + 2
    (monitor,) = [m for m in fake.objects["monitor"].values() if m["name"] == step.definition.name]
    assert monitor["options"]["no_data_timeframe"] == 30
    assert len(fake.objects["monitor"]) == len(MONITORS)
    assert set(_actions(_run(fake, apply=True, root=tree)).values()) == {"unchanged"}


def test_an_object_of_the_same_name_made_by_hand_is_adopted_not_duplicated(
    fake: FakeDatadog,
) -> None:
    by_hand = dict(MONITORS["bank-circuit-open.json"], tags=["service:payment-service"])
    existing = fake.add("monitor", by_hand)
    outcome = _run(fake, apply=True)
    assert _actions(outcome)["monitors/bank-circuit-open.json"] == "update"
    assert len(fake.objects["monitor"]) == len(MONITORS)
    assert MANAGED_TAG in fake.objects["monitor"][str(existing["id"])]["tags"]


def test_a_dry_run_reads_the_account_and_writes_nothing(fake: FakeDatadog) -> None:
    outcome = _run(fake, apply=False)
    assert set(_actions(outcome).values()) == {"create"}
    burn = [s for s in outcome.steps if "burn" in s.definition.path.name]
    assert burn and all("after SLO" in s.detail for s in burn)
    assert fake.writes() == []
    assert {method for method, _ in fake.requests} == {"GET"}


def test_two_objects_with_one_name_are_an_error_and_left_alone(fake: FakeDatadog) -> None:
    for _ in range(2):
        fake.add("monitor", MONITORS["decline-rate-spike.json"])
    outcome = _run(fake, apply=True)
    assert _actions(outcome)["monitors/decline-rate-spike.json"] == "error"
    assert any("2 objects have this name" in error for error in outcome.errors)
    names = [m["name"] for m in fake.objects["monitor"].values()]
    assert names.count(MONITORS["decline-rate-spike.json"]["name"]) == 2


def test_a_managed_object_without_a_file_is_reported_never_deleted(fake: FakeDatadog) -> None:
    fake.add(
        "monitor",
        dict(MONITORS["api-error-rate.json"], name="[payment-service] gone", tags=[MANAGED_TAG]),
    )
    outcome = _run(fake, apply=True)
    assert outcome.orphans and "[payment-service] gone" in outcome.orphans[0]
    assert not [r for r in fake.requests if r[0] == "DELETE"]
    assert len(fake.objects["monitor"]) == len(MONITORS) + 1


def test_make_datadog_apply_runs_the_script_against_the_account_it_is_given(
    fake: FakeDatadog, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(apply_script.HOST_VARIABLE, fake.url)
    monkeypatch.setenv("DD_API_KEY", "fake-api-key")
    monkeypatch.setenv("DD_APP_KEY", "fake-app-key")
    monkeypatch.delenv(apply_script.PUBLIC_URL_VARIABLE, raising=False)
    monkeypatch.setenv("APPLY", "1")
    assert apply_script.main([]) == 0
    out = capsys.readouterr().out
    # No public URL: the synthetic test is skipped, everything else created.
    assert f"{len(MONITORS) + len(SLOS) + 1} create" in out and "1 skipped" in out
    assert fake.objects["synthetic"] == {}
    assert apply_script.main([]) == 0
    assert "0 create, 0 update" in capsys.readouterr().out
