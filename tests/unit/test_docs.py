"""The documentation says what the code does: OpenAPI, diagrams, settings, errors, cards.

No database, broker or Java is needed: the OpenAPI document comes from ``app.openapi()``
(the lifespan never runs), and the diagrams are checked as text. ``make diagrams-check``
renders them with PlantUML; here each committed SVG only has to embed its current source.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from app.api.problems import STATUS_BY_CODE
from app.core.config import Settings
from app.domain.cards import TEST_CARDS
from app.domain.errors import ERROR_CODES
from app.main import create_app
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "architecture"
OPENAPI_FILE = DOCS / "openapi.json"
RENDER_SCRIPT = REPO / "scripts" / "render_diagrams.sh"

# Files other work streams are writing at the same time as these docs; the docs link to
# them already. Once they are committed, the link check below covers them like any file.
WRITTEN_ELSEWHERE = frozenset(
    {
        "docs/observability.md",
        "docs/performance.md",
        "deploy/datadog/dashboards/payment-service.json",
    }
)


# -- OpenAPI ---------------------------------------------------------------------------


def _export_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "export_openapi", REPO / "scripts" / "export_openapi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_openapi_matches_the_app() -> None:
    default_version = Settings.model_fields["version"].default
    app = create_app(make_settings(version=default_version))
    committed = OPENAPI_FILE.read_text(encoding="utf-8")

    assert json.loads(committed) == app.openapi(), (
        "docs/openapi.json does not describe the app: run `make openapi` and commit it"
    )
    assert committed == _export_script().openapi_json(), (
        "docs/openapi.json is not in the exported format: run `make openapi`"
    )


# -- diagrams --------------------------------------------------------------------------


@dataclass(frozen=True)
class MacroCall:
    """One C4-PlantUML macro call: ``Name(arg, "arg", $named="value")``."""

    source: str
    line: int
    macro: str
    args: tuple[str, ...]
    named: dict[str, str]


_CALL = re.compile(r"^\s*(?P<macro>[A-Za-z_][A-Za-z0-9_]*)\((?P<args>.*)\)\s*\{?\s*$")


def _split_args(text: str) -> list[str]:
    """Split on top-level commas, outside double quotes and parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def parse_calls(text: str, *, source: str = "<text>") -> list[MacroCall]:
    """Every single-line macro call in a PlantUML source (comments skipped)."""
    calls: list[MacroCall] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("'"):
            continue
        match = _CALL.match(raw)
        if match is None:
            continue
        args: list[str] = []
        named: dict[str, str] = {}
        for part in _split_args(match["args"]):
            name, sep, value = part.partition("=")
            if part.startswith("$") and sep:
                named[name.strip()] = _unquote(value.strip())
            else:
                args.append(_unquote(part))
        calls.append(MacroCall(source, number, match["macro"], tuple(args), named))
    return calls


def _diagram_calls(name: str) -> list[MacroCall]:
    path = ARCHITECTURE / name
    return parse_calls(path.read_text(encoding="utf-8"), source=path.name)


COMPONENT_MACROS = frozenset({"Component", "ComponentDb", "ComponentQueue"})


def code_names(call: MacroCall) -> list[str]:
    """The code names a component's label lists (the convention in components.puml)."""
    return [name.strip() for name in call.args[1].split(",")]


def missing_code_names(calls: list[MacroCall]) -> list[str]:
    """Components whose module or names do not exist, as ``file:line: problem`` strings."""
    problems: list[str] = []
    for call in calls:
        where = f"{call.source}:{call.line}"
        if len(call.args) < 3:
            problems.append(f"{where}: {call.macro} needs an alias, code names and a module")
            continue
        module_name = call.args[2]
        if not re.fullmatch(r"app(\.[a-z_][a-z0-9_]*)*", module_name):
            problems.append(f"{where}: technology {module_name!r} is not a module of app")
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{where}: cannot import {module_name}: {exc}")
            continue
        problems.extend(
            f"{where}: {module_name} has no {name!r}"
            for name in code_names(call)
            if not name.isidentifier() or not hasattr(module, name)
        )
    return problems


def test_every_component_in_the_diagram_exists_in_the_code() -> None:
    components = [c for c in _diagram_calls("components.puml") if c.macro in COMPONENT_MACROS]
    named = {name for component in components for name in code_names(component)}

    assert len(components) >= 15, "the component diagram lost its components (parser?)"
    assert {
        "KafkaEventPublisher",
        "OutboxRelay",
        "HttpBankGateway",
        "SimulatedBankGateway",
        "CardVault",
        "SqlUnitOfWork",
        "UnitOfWork",
        "Payment",
        "Authenticator",
        "CacheInvalidationListener",
        "process_payment",
        "refund_payment",
        "reconcile_once",
    } <= named
    assert missing_code_names(components) == []


def test_the_component_check_reports_a_name_the_code_does_not_have() -> None:
    calls = parse_calls(
        'Component(a, "OutboxRelay, KafkaPublisher", "app.adapters.messaging", "x")\n'
        'Component(b, "CardVault", "app.adapters.nowhere", "y")\n'
        'Component(c, "UnitOfWork", "App.Adapters", "z")\n'
        '\' Component(d, "Ghost", "app.main", "a comment")\n'
    )

    problems = missing_code_names(calls)

    assert len(problems) == 3
    assert "has no 'KafkaPublisher'" in problems[0]
    assert "cannot import app.adapters.nowhere" in problems[1]
    assert "is not a module of app" in problems[2]


def _resolve_compose_defaults(value: str) -> str:
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_the_deployment_diagram_shows_every_compose_service_with_its_image() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    images = {
        name: _resolve_compose_defaults(service["image"])
        for name, service in compose["services"].items()
    }
    nodes = {
        call.args[1]: call.args[2]
        for call in _diagram_calls("deployment.puml")
        if call.macro == "Deployment_Node" and call.named.get("$tags") == "compose"
    }

    assert set(nodes) == set(images)
    assert nodes == images


def _pinned_plantuml_version() -> str:
    match = re.search(
        r"^PLANTUML_VERSION=\$\{PLANTUML_VERSION:-([0-9.]+)\}$",
        RENDER_SCRIPT.read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert match is not None, "PLANTUML_VERSION not found in scripts/render_diagrams.sh"
    return match[1]


_PLANTUML_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
_BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def embedded_source(svg: str) -> str:
    """The diagram text PlantUML embeds in an SVG (its deflate + base64 variant)."""
    match = re.search(r"<\?plantuml-src (\S+)\?>", svg)
    assert match is not None, "no <?plantuml-src?> in the SVG"
    text = match[1].translate(str.maketrans(_PLANTUML_ALPHABET, _BASE64_ALPHABET))
    raw = base64.b64decode(text + "=" * (-len(text) % 4))
    return zlib.decompress(raw, -15).decode("utf-8")


def diagram_body(source: str) -> str:
    """The lines between ``@startuml`` and ``@enduml``: what PlantUML embeds."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("@startuml"))
    end = next(i for i, line in enumerate(lines) if line.strip() == "@enduml")
    return "\n".join(lines[start + 1 : end]).strip("\n")


@cache
def _sources() -> tuple[Path, ...]:
    return tuple(sorted(ARCHITECTURE.glob("*.puml")))


def test_the_four_c4_views_are_there() -> None:
    assert {p.stem for p in _sources()} >= {"context", "containers", "components", "deployment"}


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.name)
def test_each_committed_svg_was_rendered_from_its_current_source(source: Path) -> None:
    svg_path = source.with_suffix(".svg")
    assert svg_path.exists(), f"{svg_path.name} is missing: run `make diagrams`"
    svg = svg_path.read_text(encoding="utf-8")
    text = source.read_text(encoding="utf-8")

    assert "!pragma layout smetana" in text, "render without Graphviz"
    assert embedded_source(svg) == diagram_body(text), (
        f"{svg_path.name} is stale: run `make diagrams`"
    )
    assert f"<?plantuml {_pinned_plantuml_version()}?>" in svg, (
        f"{svg_path.name} was not rendered by the pinned PlantUML: run `make diagrams`"
    )


# -- guides ----------------------------------------------------------------------------


def _setting_variables() -> set[str]:
    variables = {(field.alias or name).upper() for name, field in Settings.model_fields.items()}
    return variables | {"SECRETS_DIR"}


@pytest.mark.parametrize("guide", ["README.md", "docs/deployment.md"])
def test_every_setting_is_documented(guide: str) -> None:
    text = (REPO / guide).read_text(encoding="utf-8")

    undocumented = sorted(v for v in _setting_variables() if f"`{v}`" not in text)

    assert undocumented == [], f"{guide} does not document {undocumented}"


def test_every_error_code_is_in_the_api_guide_with_its_status() -> None:
    rows = dict(
        re.findall(
            r"^\| `([a-z_]+)` \| (\d{3}) \|", (DOCS / "api.md").read_text("utf-8"), re.MULTILINE
        )
    )

    assert set(rows) == set(ERROR_CODES)
    assert {code: int(status) for code, status in rows.items()} == {
        code: STATUS_BY_CODE[code] for code in ERROR_CODES
    }


def test_every_test_card_is_in_the_api_guide() -> None:
    text = (DOCS / "api.md").read_text("utf-8")

    assert [card.number for card in TEST_CARDS if f"`{card.number}`" not in text] == []


_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")


def _own_markdown() -> list[Path]:
    return [
        REPO / "README.md",
        DOCS / "api.md",
        DOCS / "deployment.md",
        DOCS / "runbook.md",
        DOCS / "events.md",
        DOCS / "webhooks.md",
        *sorted(ARCHITECTURE.glob("*.md")),
        *sorted((DOCS / "adr").glob("*.md")),
    ]


@pytest.mark.parametrize("page", _own_markdown(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        resolved = (page.parent / target).resolve()
        relative = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else ""
        if not resolved.exists() and relative not in WRITTEN_ELSEWHERE:
            broken.append(target)

    assert broken == []


_DOC_SECTION_REFERENCE = re.compile(r'(docs/[a-z_/]+\.md), "([^"]+)"')


def _headings(markdown: str) -> set[str]:
    return {line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")}


def test_every_reference_from_the_code_to_a_doc_section_names_a_heading_that_exists() -> None:
    references = {
        (path.relative_to(REPO).as_posix(), doc, section)
        for path in (REPO / "app").rglob("*.py")
        for doc, section in _DOC_SECTION_REFERENCE.findall(path.read_text("utf-8"))
    }
    assert references, "the code names no doc section any more: drop this test"
    broken = [
        f"{source} -> {doc}, {section!r}"
        for source, doc, section in sorted(references)
        if section not in _headings((REPO / doc).read_text("utf-8"))
    ]
    assert broken == []
