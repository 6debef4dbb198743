"""Export the service's OpenAPI document to docs/openapi.json (``make openapi``).

The app is built exactly as it serves (``create_app``) but with the test profile and the
code's default version, so the output depends on the code only, never on the caller's
environment or ``.env``; no database or broker is needed, because ``app.openapi()`` does
not run the lifespan. Keys are sorted and the file ends with a newline, so an export of
unchanged code is byte-identical and a diff shows only real API changes.

tests/unit/test_docs.py fails when the committed file differs from :func:`openapi_json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/export_openapi.py` from anywhere
    sys.path.insert(0, str(REPO))

from app.core.config import Environment, Settings  # noqa: E402
from app.main import create_app  # noqa: E402

OUTPUT = REPO / "docs" / "openapi.json"


def export_settings() -> Settings:
    """Test-profile settings whose documented values are the code's defaults.

    Explicit values win over the environment, so a developer's ``DD_VERSION`` or
    ``DD_TRACE_ENABLED`` cannot change the export.
    """
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment=Environment.TEST,
        version=Settings.model_fields["version"].default,
        tracing_enabled=False,
        metrics_enabled=False,
    )


def openapi_json() -> str:
    """The OpenAPI document as committed: sorted keys, two-space indent, final newline."""
    document = create_app(export_settings()).openapi()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the document (or, with ``--check``, compare it with the committed file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: docs/openapi.json")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from a fresh export"
    )
    args = parser.parse_args(argv)
    text = openapi_json()
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is out of date: run make openapi", file=sys.stderr)
            return 1
        print(f"{output} is up to date")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output.relative_to(REPO) if output.is_relative_to(REPO) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
