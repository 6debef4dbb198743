"""The Datadog configuration under deploy/datadog, checked without an Agent or an account.

Agent YAML files parse and set what the service relies on; the logs pipeline remaps the
fields the app's log lines really have; the dashboard and monitors are structurally
importable; and the metric names agree in both directions: every ``payment_service.*``
metric a widget or monitor queries is one the code emits (:data:`CATALOGUE`), filtered or
grouped only by tags the code sends with it, and every metric the code emits is on the
dashboard.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.adapters.metrics import CATALOGUE, PREFIX, PaymentMetrics
from app.core.logging import build_handler
from app.services import telemetry
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
DATADOG = REPO / "deploy" / "datadog"
DASHBOARD = DATADOG / "dashboards" / "payment-service.json"
MONITORS = sorted((DATADOG / "monitors").glob("*.json"))
PIPELINE = DATADOG / "pipelines" / "payment-service-logs.json"

REQUEST_SPAN = "fastapi.request"
"""ddtrace 4's span name for a FastAPI request (tests/e2e/test_tracing.py asserts it)."""

BUSINESS_METRIC = re.compile(rf"{PREFIX}\.[a-z0-9_.]+?(?=\{{)")
TRACE_METRIC = re.compile(r"trace\.([a-z0-9_.]+?)(?:\.(?:hits|errors|duration))?(?=\{)")
CATALOGUED = {spec.full_name for spec in CATALOGUE}

WIDGET_TYPES = {"group", "note", "timeseries", "query_value", "toplist", "query_table"}
PROCESSOR_TYPES = {
    "pipeline",
    "grok-parser",
    "date-remapper",
    "status-remapper",
    "service-remapper",
    "message-remapper",
    "trace-id-remapper",
    "span-id-remapper",
    "attribute-remapper",
}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def widgets(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every widget definition, groups included, depth first."""
    for widget in node.get("widgets", []):
        definition = widget["definition"]
        yield definition
        yield from widgets(definition)


def dashboard_queries() -> list[str]:
    return [
        query["query"]
        for definition in widgets(load_json(DASHBOARD))
        for request in definition.get("requests", [])
        for query in request.get("queries", [])
    ]


def monitor_queries() -> list[str]:
    return [load_json(path)["query"] for path in MONITORS]


# -- Agent configuration --------------------------------------------------------------


def test_the_agent_listens_for_traces_metrics_and_logs_from_other_containers() -> None:
    config = yaml.safe_load((DATADOG / "datadog.yaml").read_text())
    assert config["apm_config"]["enabled"] is True
    assert config["apm_config"]["apm_non_local_traffic"] is True
    assert config["dogstatsd_non_local_traffic"] is True
    assert config["logs_enabled"] is True
    assert config["logs_config"]["container_collect_all"] is True
    assert "api_key" not in config  # from DD_API_KEY, never in a file


@pytest.mark.parametrize(
    "check", sorted(p.parent.name for p in (DATADOG / "conf.d").glob("*.d/conf.yaml"))
)
def test_every_integration_config_is_an_autodiscovery_template(check: str) -> None:
    config = yaml.safe_load((DATADOG / "conf.d" / check / "conf.yaml").read_text())
    assert config["ad_identifiers"]
    assert "init_config" in config
    assert config["instances"]
    for instance in config["instances"]:
        assert "%%host%%" in json.dumps(instance)
        for key, value in instance.items():
            if "password" in key:
                assert str(value).startswith("%%env_"), f"{check}: literal {key}"


def test_postgres_has_database_monitoring_with_explain_plans_and_schemas() -> None:
    config = yaml.safe_load((DATADOG / "conf.d" / "postgres.d" / "conf.yaml").read_text())
    instance = config["instances"][0]
    assert instance["dbm"] is True
    assert instance["username"] == "datadog"
    assert instance["query_samples"]["explain_function"] == "datadog.explain_statement"
    assert instance["query_samples"]["explain_parameterized_queries"] is True
    assert instance["collect_schemas"]["enabled"] is True
    assert "payments$" in instance["database_autodiscovery"]["include"]
    initdb = "\n".join(p.read_text() for p in (REPO / "deploy" / "postgres" / "initdb").glob("*"))
    assert "FUNCTION datadog.explain_statement" in initdb


def test_kafka_consumer_lag_is_collected_for_data_streams() -> None:
    config = yaml.safe_load((DATADOG / "conf.d" / "kafka_consumer.d" / "conf.yaml").read_text())
    instance = config["instances"][0]
    assert instance["kafka_connect_str"] == "%%host%%:9092"
    assert instance["monitor_unlisted_consumer_groups"] is True


# -- the logs pipeline ----------------------------------------------------------------


def processors(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for processor in node["processors"]:
        yield processor
        if processor["type"] == "pipeline":
            yield from processors(processor)


def app_log_line() -> dict[str, Any]:
    buffer = io.StringIO()
    logger = logging.getLogger("tests.unit.observability")
    logger.handlers = [build_handler(make_settings(), buffer)]
    logger.propagate = False
    logger.warning("a line")
    logger.handlers = []
    line: dict[str, Any] = json.loads(buffer.getvalue())
    return line


def test_the_logs_pipeline_remaps_fields_the_app_really_writes() -> None:
    pipeline = load_json(PIPELINE)
    assert pipeline["is_enabled"] is True
    assert "service:payment-service" in pipeline["filter"]["query"]
    found = list(processors(pipeline))
    assert {p["type"] for p in found} <= PROCESSOR_TYPES
    by_type: dict[str, list[dict[str, Any]]] = {}
    for processor in found:
        assert processor["name"]
        by_type.setdefault(processor["type"], []).append(processor)
    sources = {t: [s for p in ps for s in p.get("sources", [])] for t, ps in by_type.items()}
    assert "dd.trace_id" in sources["trace-id-remapper"]
    assert "dd.span_id" in sources["span-id-remapper"]
    assert "level" in sources["status-remapper"]
    assert "dd.service" in sources["service-remapper"]
    assert "timestamp" in sources["date-remapper"]
    line = app_log_line()
    top_level = [p for p in pipeline["processors"] if p["type"] != "pipeline"]
    for processor in top_level:
        for source in processor.get("sources", []):
            assert source in line, f"the pipeline reads {source!r}, the app does not write it"


# -- the dashboard --------------------------------------------------------------------


def test_the_dashboard_is_an_importable_ordered_dashboard() -> None:
    dashboard = load_json(DASHBOARD)
    assert dashboard["title"]
    assert dashboard["layout_type"] == "ordered"
    variables = {v["name"] for v in dashboard["template_variables"]}
    assert variables == {"env", "service"}
    for definition in widgets(dashboard):
        assert definition["type"] in WIDGET_TYPES, definition["type"]
        for request in definition.get("requests", []):
            names = {q["name"] for q in request["queries"]}
            assert all(q["data_source"] == "metrics" for q in request["queries"])
            for formula in request["formulas"]:
                used = set(re.findall(r"[a-z_][a-z0-9_]*", formula["formula"]))
                used -= {"per_minute", "per_second"}
                assert used <= names, (definition["title"], used - names)
            for query in request["queries"]:
                for variable in re.findall(r"\$([a-z_]+)", query["query"]):
                    assert variable in variables, query["query"]


def test_monitors_are_importable_and_their_thresholds_match_their_queries() -> None:
    assert {p.name for p in MONITORS} >= {
        "decline-rate-spike.json",
        "bank-circuit-open.json",
        "outbox-backlog.json",
        "outbox-oldest-age.json",
        "api-p99-latency.json",
        "webhook-backlog-age.json",
        "webhook-endpoint-disabled.json",
        "webhook-consumer-lag.json",
    }
    for path in MONITORS:
        monitor = load_json(path)
        types = {"query alert", "metric alert", "service check", "slo alert"}
        assert monitor["type"] in types, path.name
        assert monitor["name"] and monitor["message"], path.name
        assert "service:payment-service" in monitor["tags"]
        # Datadog replaced notify_no_data with on_missing_data: one or the other.
        assert not {"notify_no_data", "on_missing_data"} <= set(monitor["options"]), path.name
        if monitor["type"] == "service check":
            continue  # thresholds count check runs (tests/unit/test_datadog_config.py)
        match = re.search(r"(>=|<=|>|<)\s*(-?[0-9.]+)$", monitor["query"])
        assert match, f"{path.name}: no threshold comparison"
        thresholds = monitor["options"]["thresholds"]
        assert float(match.group(2)) == thresholds["critical"], path.name
        if "warning" in thresholds:
            if match.group(1).startswith("<"):
                assert thresholds["warning"] > thresholds["critical"], path.name
            else:
                assert thresholds["warning"] < thresholds["critical"], path.name


# -- metric names, both directions ----------------------------------------------------


def test_every_business_metric_queried_is_one_the_code_emits() -> None:
    queries = dashboard_queries() + monitor_queries()
    for query in queries:
        named = BUSINESS_METRIC.findall(query)
        assert len(named) == query.count(f"{PREFIX}."), f"unparsed metric name in {query!r}"
        for name in named:
            assert name in CATALOGUED, f"{name} is queried but never emitted"


AGENT_TAGS = {"env", "service", "version", "host"}
"""Tags every series carries from the Agent and unified service tagging, not from the code."""

METRIC_TAGS = re.compile(rf"({PREFIX}\.[a-z0-9_.]+?)\{{([^}}]*)\}}(?:\s*by\s*\{{([^}}]*)\}})?")


def queried_tags(query: str) -> Iterator[tuple[str, str]]:
    """Each (metric, tag) a query filters or groups a business metric by."""
    for name, scope, group in METRIC_TAGS.findall(query):
        for item in scope.split(","):
            item = item.strip().lstrip("!")
            if ":" in item and not item.startswith("$"):
                yield name, item.split(":", 1)[0]
        for tag in filter(None, (t.strip() for t in group.split(","))):
            yield name, tag


def test_every_tag_queried_is_one_the_metric_carries() -> None:
    """A query by a tag the code does not send (a merchant id, say) shows nothing."""
    tags = {spec.full_name: set(spec.tags) | AGENT_TAGS for spec in CATALOGUE}
    queried = [
        pair for query in dashboard_queries() + monitor_queries() for pair in queried_tags(query)
    ]
    assert ("payment_service.webhooks.backlog.oldest_age_s", "endpoint_id") in queried
    wrong = [(name, tag) for name, tag in queried if tag not in tags.get(name, AGENT_TAGS)]
    assert not wrong, f"queried by tags the code does not send: {sorted(set(wrong))}"


def test_every_metric_the_code_emits_is_on_the_dashboard() -> None:
    on_dashboard = {name for q in dashboard_queries() for name in BUSINESS_METRIC.findall(q)}
    missing = CATALOGUED - on_dashboard
    assert not missing, f"emitted but on no widget: {sorted(missing)}"


def test_apm_widgets_and_monitors_query_the_request_span_ddtrace_emits() -> None:
    spans = {
        name for q in dashboard_queries() + monitor_queries() for name in TRACE_METRIC.findall(q)
    }
    assert spans == {REQUEST_SPAN}


# -- the code side: the span helper and disabled metrics --------------------------------


def test_spans_cost_nothing_and_do_nothing_when_tracing_is_off() -> None:
    with telemetry.span("payment.process", merchant_id="m1") as flow:
        flow.tag(status="captured", decline_code=None)


@pytest.mark.parametrize(
    "tag", ["card_number", "card.number", "cvv", "card_cvc", "last4", "cardholder", "pan"]
)
def test_span_tags_that_would_carry_card_data_are_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="card data"):
        telemetry._check_tag_name(tag)


@pytest.mark.parametrize("tag", ["card_brand", "merchant_id", "decline_code", "status"])
def test_business_span_tags_are_allowed(tag: str) -> None:
    telemetry._check_tag_name(tag)


def test_disabled_metrics_send_nothing() -> None:
    metrics = PaymentMetrics.from_settings(make_settings(metrics_enabled=False))
    assert not metrics.enabled
    metrics.payment_processed(status="captured", currency="USD", amount_minor=100)
    metrics.bank_call(operation="authorization", outcome="answered", seconds=0.1)
    metrics.close()
