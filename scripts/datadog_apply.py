"""Apply deploy/datadog (dashboards, synthetic tests, SLOs, monitors) to a Datadog account.

``make datadog-apply`` runs it. Every object is matched **by name** (a dashboard by its
title): updated when one with that name exists, created otherwise, left alone when it
already says what the file says. Nothing is ever duplicated or deleted: an object that
carries the managed-by tag but has no file any more is only reported (``orphan``).

**Dry run by default.** Every file is validated offline first, by building the
datadog-api-client model of the request body (unknown fields, wrong types and values that
are not in an enum all fail), so a malformed file fails the dry run without keys or
network. With ``DD_API_KEY`` and ``DD_APP_KEY`` (and ``DD_SITE``, default datadoghq.com)
the dry run also reads the account, read-only, and prints the plan: ``create``,
``update`` (with the fields that differ), ``unchanged``. ``--apply`` (or ``APPLY=1``)
carries the plan out; it needs the keys.

Placeholders, resolved here:

- ``${slo:<SLO name>}`` in a monitor's query: the id of the SLO of that name (SLOs are
  applied before monitors, so a burn-rate monitor can point at an SLO created in the same
  run; in a dry run an SLO still to be created has no id yet).
- ``${PUBLIC_BASE_URL}`` in a synthetic test: the service's public base URL, from
  ``PAYMENT_SERVICE_PUBLIC_URL`` (e.g. ``https://payments.example.com``). Without it the
  synthetic tests are validated but skipped.

Monitors, SLOs and synthetic tests get the tag ``managed-by:deploy/datadog`` if their file
lacks it. Dashboards cannot carry such a tag (the API takes only ``team:`` tags there):
they are matched by title, and their description says where they come from.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import OpenApiException
from datadog_api_client.model_utils import (
    ModelComposed,
    ModelNormal,
    ModelSimple,
    OpenApiModel,
    UnparsedObject,
    model_to_dict,
    validate_and_convert_types,
)
from datadog_api_client.v1.api.dashboards_api import DashboardsApi
from datadog_api_client.v1.api.monitors_api import MonitorsApi
from datadog_api_client.v1.api.service_level_objectives_api import ServiceLevelObjectivesApi
from datadog_api_client.v1.api.synthetics_api import SyntheticsApi
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor
from datadog_api_client.v1.model.monitor_update_request import MonitorUpdateRequest
from datadog_api_client.v1.model.service_level_objective import ServiceLevelObjective
from datadog_api_client.v1.model.service_level_objective_request import (
    ServiceLevelObjectiveRequest,
)
from datadog_api_client.v1.model.synthetics_api_test import SyntheticsAPITest

REPO = Path(__file__).resolve().parents[1]
DATADOG = REPO / "deploy" / "datadog"

MANAGED_TAG = "managed-by:deploy/datadog"
SLO_REFERENCE = re.compile(r"\$\{slo:([^}]+)\}")
PUBLIC_BASE_URL = "${PUBLIC_BASE_URL}"
PUBLIC_URL_VARIABLE = "PAYMENT_SERVICE_PUBLIC_URL"
# What placeholders become when a definition is only validated.
EXAMPLE_SLO_ID = "0123456789abcdef0123456789abcdef"
EXAMPLE_PUBLIC_URL = "https://payment-service.example.com"
# Compared as sets: Datadog may return them in another order.
UNORDERED = frozenset({"tags", "locations"})
# What a call to the account may raise: an answer that is not 2xx, or no answer.
FAILURES = (OpenApiException, urllib3.exceptions.HTTPError, OSError)
# Where the API is instead of https://api.<DD_SITE> (a proxy, or a test's fake).
HOST_VARIABLE = "DATADOG_APPLY_HOST"


@dataclass(frozen=True)
class Kind:
    """One kind of object: where its files are and how it is sent."""

    name: str
    folder: str
    name_field: str
    model: type[OpenApiModel]
    tagged: bool


DASHBOARD = Kind("dashboard", "dashboards", "title", Dashboard, tagged=False)
SYNTHETIC = Kind("synthetic", "synthetics", "name", SyntheticsAPITest, tagged=True)
SLO = Kind("slo", "slos", "name", ServiceLevelObjectiveRequest, tagged=True)
MONITOR = Kind("monitor", "monitors", "name", Monitor, tagged=True)
KINDS = (DASHBOARD, SYNTHETIC, SLO, MONITOR)
"""In the order they are applied: SLOs before the monitors that name them."""


@dataclass
class Definition:
    """One file under deploy/datadog."""

    kind: Kind
    path: Path
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get(self.kind.name_field, ""))

    @property
    def label(self) -> str:
        return f"{self.kind.folder}/{self.path.name}"

    def slo_references(self) -> list[str]:
        return SLO_REFERENCE.findall(json.dumps(self.body))


class InvalidDefinitionError(Exception):
    """A file that is not a valid request body."""


# -- loading and validating ---------------------------------------------------------


def load_definitions(root: Path = DATADOG) -> list[Definition]:
    """Every definition under ``root``, in the order they are applied (monitors that
    name an SLO last)."""
    definitions: list[Definition] = []
    for kind in KINDS:
        for path in sorted((root / kind.folder).glob("*.json")):
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InvalidDefinitionError(f"{kind.folder}/{path.name}: not JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise InvalidDefinitionError(f"{kind.folder}/{path.name}: not a JSON object")
            definitions.append(Definition(kind, path, body))
    definitions.sort(key=lambda d: (KINDS.index(d.kind), bool(d.slo_references())))
    return definitions


def substitute(value: Any, replace: Callable[[str], str]) -> Any:
    """``value`` with ``replace`` applied to every string in it."""
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [substitute(item, replace) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, replace) for key, item in value.items()}
    return value


def resolve(definition: Definition, slo_ids: dict[str, str], public_url: str) -> dict[str, Any]:
    """The request body: placeholders replaced, the managed-by tag added."""

    def replace(text: str) -> str:
        text = SLO_REFERENCE.sub(lambda match: slo_ids[match.group(1)], text)
        return text.replace(PUBLIC_BASE_URL, public_url)

    body: dict[str, Any] = substitute(copy.deepcopy(definition.body), replace)
    if definition.kind.tagged and MANAGED_TAG not in body.setdefault("tags", []):
        body["tags"].append(MANAGED_TAG)
    return body


def build(model: type[OpenApiModel], body: dict[str, Any]) -> OpenApiModel:
    """The datadog-api-client model of ``body``; raises on anything it does not accept."""
    try:
        built = validate_and_convert_types(
            copy.deepcopy(body), (model,), ["body"], True, True, configuration=Configuration()
        )
    except (OpenApiException, TypeError, ValueError) as exc:
        raise InvalidDefinitionError(str(exc)) from exc
    problems = list(model_problems(built, (model,), "$"))
    if problems:
        raise InvalidDefinitionError("; ".join(problems))
    assert isinstance(built, model)
    return built


def validate(model: type[OpenApiModel], body: dict[str, Any]) -> None:
    """Raise :class:`InvalidDefinitionError` unless :func:`build` accepts ``body``."""
    error = _validation_error(model, json.dumps(body, sort_keys=True))
    if error:
        raise InvalidDefinitionError(error)


@functools.lru_cache(maxsize=512)
def _validation_error(model: type[OpenApiModel], body: str) -> str | None:
    # Building a dashboard's model takes seconds (every widget tries every oneOf schema):
    # the same body is validated once per process.
    try:
        build(model, json.loads(body))
    except InvalidDefinitionError as exc:
        return str(exc)
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def model_problems(value: Any, expected: tuple[Any, ...], path: str) -> Iterator[str]:
    """What the lenient client accepted without understanding: fields the model does not
    have, enum values it does not know, objects that match none of a oneOf's schemas."""
    if isinstance(value, UnparsedObject):
        yield from _unmatched(dict(value._data_store), expected, path)
    elif isinstance(value, ModelSimple):
        if value._unparsed:
            allowed = sorted(map(str, getattr(value, "allowed_values", ())))
            yield f"{path}: {value.value!r} is not one of {allowed}"
    elif isinstance(value, ModelComposed):
        instances = value._composed_instances
        parsed = [i for i in instances if not isinstance(i, UnparsedObject)]
        if parsed:
            yield from model_problems(parsed[0], (type(parsed[0]),), path)
        else:
            raw = next((dict(i._data_store) for i in instances), {})
            yield from _unmatched(raw, (type(value),), path)
    elif isinstance(value, ModelNormal):
        types = value.openapi_types
        for key, item in value._data_store.items():
            if key not in value.attribute_map:
                yield f"{path}.{key}: {type(value).__name__} has no such field"
            else:
                yield from model_problems(item, types[key], f"{path}.{value.attribute_map[key]}")
    elif isinstance(value, list):
        inner = tuple(t[0] for t in expected if isinstance(t, list) and t)
        for index, item in enumerate(value):
            yield from model_problems(item, inner, f"{path}[{index}]")


def _unmatched(raw: dict[str, Any], expected: tuple[Any, ...], path: str) -> Iterator[str]:
    """Explain an object none of a oneOf's schemas accepted: the problems inside the
    schema it was meant for (the one with its ``type`` and all its fields), if any."""
    for model in expected:
        if not (isinstance(model, type) and issubclass(model, ModelComposed)):
            continue
        for candidate in model._composed_schemas.get("oneOf", []):
            if not (isinstance(candidate, type) and issubclass(candidate, ModelNormal)):
                continue
            if not set(raw) <= set(candidate.attribute_map.values()):
                continue
            kind = candidate.openapi_types.get("type", (None,))[0]
            typed = "type" in raw and isinstance(kind, type) and issubclass(kind, ModelSimple)
            if typed and raw["type"] not in getattr(kind, "allowed_values", ()):
                continue
            try:
                built = validate_and_convert_types(
                    copy.deepcopy(raw), (candidate,), [path], True, True, Configuration()
                )
            except (OpenApiException, TypeError, ValueError) as exc:
                yield f"{path}: {exc}"
                return
            found = list(model_problems(built, (candidate,), path))
            if found:
                yield from found
                return
    if "type" in raw:
        yield f"{path}: no schema the API accepts here has type {raw['type']!r}: {_short(raw)}"
    else:
        yield f"{path}: matches no schema the API accepts here: {_short(raw)}"


def check_definitions(definitions: list[Definition]) -> list[str]:
    """Every problem of every definition, found offline: names, duplicates, SLO
    references, and the request body the model accepts."""
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    slo_names = {d.name for d in definitions if d.kind is SLO}
    for definition in definitions:
        label = definition.label
        if not definition.name:
            problems.append(f"{label}: no {definition.kind.name_field}")
        key = (definition.kind.name, definition.name)
        if key in seen:
            problems.append(f"{label}: same {definition.kind.name_field} as {seen[key]}")
        seen.setdefault(key, label)
        for name in definition.slo_references():
            if name not in slo_names:
                problems.append(f"{label}: names SLO {name!r}, which no slos/*.json defines")
        example_ids = dict.fromkeys(definition.slo_references(), EXAMPLE_SLO_ID)
        try:
            validate(definition.kind.model, resolve(definition, example_ids, EXAMPLE_PUBLIC_URL))
        except InvalidDefinitionError as exc:
            problems.append(f"{label}: {exc}")
    return problems


# -- the account --------------------------------------------------------------------


def as_json(model: Any) -> dict[str, Any]:
    """A model as the API's JSON (field names as on the wire)."""
    if isinstance(model, OpenApiModel):
        result: dict[str, Any] = model_to_dict(model, serialize=True)
        return result
    return dict(model)


class Account:
    """The list, read, create and update calls used, per kind, with datadog-api-client."""

    def __init__(self, client: ApiClient) -> None:
        self.dashboards = DashboardsApi(client)
        self.monitors = MonitorsApi(client)
        self.slos = ServiceLevelObjectivesApi(client)
        self.synthetics = SyntheticsApi(client)

    def existing(self, kind: Kind) -> list[dict[str, Any]]:
        """Every object of ``kind``, as JSON with an ``id``; summaries for dashboards and
        synthetic tests (:meth:`read` has the whole object)."""
        if kind is DASHBOARD:
            found = self.dashboards.list_dashboards_with_pagination(filter_shared=False)
            return [as_json(d) for d in found]
        if kind is MONITOR:
            return [as_json(m) for m in self.monitors.list_monitors_with_pagination()]
        if kind is SLO:
            return [as_json(s) for s in self.slos.list_slos_with_pagination()]
        tests = [as_json(t) for t in self.synthetics.list_tests_with_pagination()]
        return [dict(t, id=t["public_id"]) for t in tests if t.get("type") == "api"]

    def read(self, kind: Kind, found: dict[str, Any]) -> dict[str, Any]:
        """The whole object behind a listed one."""
        if kind is DASHBOARD:
            return as_json(self.dashboards.get_dashboard(str(found["id"])))
        if kind is SYNTHETIC:
            return as_json(self.synthetics.get_api_test(str(found["id"])))
        return found

    def create(self, kind: Kind, body: dict[str, Any]) -> str:
        """Create; the new object's id."""
        if kind is DASHBOARD:
            return str(self.dashboards.create_dashboard(build(Dashboard, body)).id)
        if kind is MONITOR:
            return str(self.monitors.create_monitor(build(Monitor, body)).id)
        if kind is SLO:
            created = self.slos.create_slo(build(ServiceLevelObjectiveRequest, body))
            return str(created.data[0].id)
        return str(
            self.synthetics.create_synthetics_api_test(build(SyntheticsAPITest, body)).public_id
        )

    def update(self, kind: Kind, object_id: str, body: dict[str, Any]) -> None:
        """Replace what the file sets (what it does not set is left as it is)."""
        if kind is DASHBOARD:
            self.dashboards.update_dashboard(object_id, build(Dashboard, body))
        elif kind is MONITOR:
            self.monitors.update_monitor(int(object_id), build(MonitorUpdateRequest, body))
        elif kind is SLO:
            self.slos.update_slo(object_id, build(ServiceLevelObjective, body))
        else:
            self.synthetics.update_api_test(object_id, build(SyntheticsAPITest, body))


def configuration(host: str | None = None) -> Configuration:
    """DD_API_KEY, DD_APP_KEY and DD_SITE from the environment (datadog-api-client reads
    them); ``host`` replaces the site's URL (tests)."""
    config = Configuration(host=host) if host else Configuration()
    config.enable_retry = True
    config.max_retries = 3
    return config


def has_keys(config: Configuration) -> bool:
    return bool(config.api_key.get("apiKeyAuth") and config.api_key.get("appKeyAuth"))


# -- planning and applying -----------------------------------------------------------


def differences(desired: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` does not say what ``desired`` says (fields ``desired`` leaves out,
    which Datadog fills with its defaults, are not compared)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            where = f"{path}.{key}" if path else key
            if key not in actual:
                if value is not None and value != [] and value != {}:
                    found.append(where)
                continue
            if key in UNORDERED and isinstance(value, list) and isinstance(actual[key], list):
                if sorted(map(str, value)) != sorted(map(str, actual[key])):
                    found.append(where)
                continue
            found += differences(value, actual[key], where)
        return found
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return [path]
        return [
            d
            for i, (a, b) in enumerate(zip(desired, actual, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    if isinstance(desired, bool) or isinstance(actual, bool):
        return [] if desired is actual else [path]
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return [] if float(desired) == float(actual) else [path]
    return [] if desired == actual else [path]


def _top_level(paths: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for p in paths:
        top = re.split(r"[.\[]", p, maxsplit=1)[0]
        if top not in seen:
            seen.append(top)
    return seen


@dataclass
class Step:
    """What is done, or would be, to one definition."""

    definition: Definition
    action: str
    object_id: str | None = None
    detail: str = ""

    def line(self) -> str:
        d = self.definition
        detail = f"  ({self.detail})" if self.detail else ""
        where = f" [{self.object_id}]" if self.object_id else ""
        return f"  {self.action:<9} {d.kind.name:<9} {d.label:<45} {d.name}{where}{detail}"


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for step in self.steps if step.action == action)


def run(
    definitions: list[Definition],
    account: Account,
    *,
    apply: bool,
    public_url: str | None,
    out: Callable[[str], None] = print,
) -> Outcome:
    """Plan every definition against the account and, with ``apply``, carry it out."""
    outcome = Outcome()
    slo_ids: dict[str, str] = {}
    existing: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        try:
            existing[kind.name] = account.existing(kind)
        except FAILURES as exc:
            outcome.errors.append(f"listing {kind.folder}: {str(exc).strip()[:500]}")
            existing[kind.name] = []
    if outcome.errors:
        for error in outcome.errors:
            out(f"  ERROR     {error}")
        return outcome

    for definition in definitions:
        kind = definition.kind
        step = _step(definition, existing[kind.name], account, slo_ids, public_url, apply)
        outcome.steps.append(step)
        out(step.line())
        if step.action == "error":
            outcome.errors.append(f"{definition.label}: {step.detail}")
        if kind is SLO and step.object_id:
            slo_ids[definition.name] = step.object_id

    names = {(d.kind.name, d.name) for d in definitions}
    for kind in KINDS:
        for found in existing[kind.name]:
            name = str(found.get(kind.name_field, ""))
            if MANAGED_TAG in (found.get("tags") or []) and (kind.name, name) not in names:
                outcome.orphans.append(f"{kind.name} {name} [{found.get('id')}]")
                out(f"  orphan    {kind.name:<9} {'(no file)':<45} {name} [{found.get('id')}]")
    return outcome


def _step(
    definition: Definition,
    existing: list[dict[str, Any]],
    account: Account,
    slo_ids: dict[str, str],
    public_url: str | None,
    apply: bool,
) -> Step:
    kind = definition.kind
    matches = [found for found in existing if found.get(kind.name_field) == definition.name]
    if len(matches) > 1:
        ids = ", ".join(str(m.get("id")) for m in matches)
        return Step(
            definition,
            "error",
            detail=f"{len(matches)} objects have this name ({ids}): delete the extra ones",
        )
    current = matches[0] if matches else None
    object_id = str(current["id"]) if current else None
    if kind is SYNTHETIC and not public_url:
        return Step(definition, "skip", object_id, f"set {PUBLIC_URL_VARIABLE} to apply it")
    missing = [name for name in definition.slo_references() if name not in slo_ids]
    if missing and apply:
        return Step(definition, "error", object_id, f"SLO {missing[0]!r} has no id: see its line")
    if missing:
        # Its SLO is still to be created: it gets an id with --apply, before this monitor.
        action = "update" if current else "create"
        return Step(definition, action, object_id, f"after SLO {missing[0]!r} is created")
    body = resolve(definition, slo_ids, public_url or EXAMPLE_PUBLIC_URL)
    try:
        if current is None:
            if apply:
                object_id = account.create(kind, body)
            return Step(definition, "create", object_id)
        changed = _top_level(differences(body, account.read(kind, current)))
        if not changed:
            return Step(definition, "unchanged", object_id)
        if apply:
            account.update(kind, str(object_id), body)
        return Step(definition, "update", object_id, "changes " + ", ".join(changed))
    except (*FAILURES, InvalidDefinitionError) as exc:
        return Step(definition, "error", object_id, str(exc).strip().replace("\n", " ")[:500])


# -- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--apply",
        action="store_true",
        default=os.environ.get("APPLY", "") in {"1", "true", "yes"},
        help="carry the plan out (default: dry run; APPLY=1 does the same)",
    )
    parser.add_argument("--root", type=Path, default=DATADOG, help="the deploy/datadog folder")
    args = parser.parse_args(argv)

    try:
        definitions = load_definitions(args.root)
    except InvalidDefinitionError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    problems = check_definitions(definitions)
    counts = ", ".join(
        f"{sum(1 for d in definitions if d.kind is kind)} {kind.folder}" for kind in KINDS
    )
    print(f"{len(definitions)} definitions under {args.root} ({counts})")
    if problems:
        print(f"{len(problems)} invalid:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("all valid (each built as its datadog-api-client request model)")

    public_url = os.environ.get(PUBLIC_URL_VARIABLE, "").rstrip("/") or None
    if public_url and not re.match(r"^https?://[^/\s]+$", public_url):
        print(f"{PUBLIC_URL_VARIABLE} must be a scheme and a host: {public_url!r}", file=sys.stderr)
        return 2
    host = os.environ.get(HOST_VARIABLE) or None
    config = configuration(host)
    if not has_keys(config):
        if args.apply:
            print("--apply needs DD_API_KEY and DD_APP_KEY (and DD_SITE)", file=sys.stderr)
            return 2
        print(
            "dry run without DD_API_KEY/DD_APP_KEY: the account is not read, so whether each "
            "object would be created or updated is not known:"
        )
        for definition in definitions:
            print(Step(definition, "valid").line())
        return 0

    site = config.server_variables.get("site", "datadoghq.com")
    mode = "APPLYING" if args.apply else "dry run (nothing is changed; --apply or APPLY=1 applies)"
    print(f"{mode} on {host or site}:")
    with ApiClient(config) as client:
        outcome = run(definitions, Account(client), apply=args.apply, public_url=public_url)
    verb = "done" if args.apply else "plan"
    print(
        f"{verb}: {outcome.count('create')} create, {outcome.count('update')} update, "
        f"{outcome.count('unchanged')} unchanged, {outcome.count('skip')} skipped, "
        f"{len(outcome.orphans)} orphaned (never deleted), {len(outcome.errors)} errors"
    )
    return 1 if outcome.errors else 0


if __name__ == "__main__":
    sys.exit(main())
