"""Generate MockServer's bank expectations from the one test-card table.

``deploy/mockserver/expectations.json`` is what MockServer loads at start; it simulates the
bank's wire protocol (see ``app/adapters/bank/http.py``) exactly as
:data:`app.domain.cards.TEST_CARDS` says, so the in-process simulator and MockServer never
disagree. Edit the table, not the JSON.

The status lookups (``GET /v1/authorizations/{id}``, ``GET /v1/refunds/{id}``) answer
404 ``no_such_record`` by default, at the lowest priority; tests register the answer for
the ids they create (``tests/mockserver_bank.py``).

Usage::

    uv run python scripts/generate_bank_expectations.py            # rewrite the file
    uv run python scripts/generate_bank_expectations.py --check    # exit 1 if out of date
    uv run python scripts/generate_bank_expectations.py --load http://127.0.0.1:1080
        # also reset a running MockServer and load the generated expectations into it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

import httpx

from app.domain.cards import (
    BANK_ERROR_STATUS,
    BANK_TIMEOUT_DELAY_S,
    DECLINE_MESSAGES,
    TEST_CARDS,
    BankBehaviour,
    TestCard,
)

EXPECTATIONS_PATH: Final = (
    Path(__file__).resolve().parents[1] / "deploy/mockserver/expectations.json"
)

CARD_PRIORITY: Final = 10
"""Card-specific answers win over the default approval (MockServer: higher wins)."""

DEFAULT_PRIORITY: Final = 0

LOOKUP_DEFAULT_PRIORITY: Final = -10
"""The status lookups' default "no record" answer loses to anything a test registers."""

NO_SUCH_RECORD: Final = {"error": "no_such_record"}

DEFAULT_AUTHORIZATION_CODE: Final = "MOCK01"
SLOW_AUTHORIZATION_CODE: Final = "SLOW01"
REFUND_REFERENCE: Final = "mock_refund_01"

UNLIMITED: Final = {"unlimited": True}

# Every bank call must carry an Idempotency-Key; a request without one matches nothing
# and MockServer answers 404, which the gateway treats as a processing error.
_IDEMPOTENT_POST_HEADERS: Final = {"Idempotency-Key": [".+"]}


def _json_response(status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status_code,
        "headers": {"Content-Type": ["application/json"]},
        "body": {"type": "JSON", "json": body},
    }


def _card_response(card: TestCard) -> dict[str, Any]:
    match card.behaviour:
        case BankBehaviour.DECLINE:
            code = card.code or "card_declined"
            return _json_response(
                200,
                {
                    "status": "declined",
                    "decline_code": code,
                    "decline_message": DECLINE_MESSAGES[code],
                },
            )
        case BankBehaviour.ERROR:
            return _json_response(BANK_ERROR_STATUS, {"error": card.code or "processing_error"})
        case BankBehaviour.TIMEOUT:
            # The answer itself is an approval; no sane client waits long enough to see it.
            response = _json_response(
                200, {"status": "approved", "authorization_code": SLOW_AUTHORIZATION_CODE}
            )
            response["delay"] = {"timeUnit": "SECONDS", "value": BANK_TIMEOUT_DELAY_S}
            return response
        case BankBehaviour.APPROVE:  # pragma: no cover - approvals use the default
            raise ValueError("approving cards are answered by the default expectation")


def _card_expectation(card: TestCard) -> dict[str, Any]:
    slug = (card.code or card.behaviour.value).replace("_", "-")
    return {
        "id": f"bank-authorization-{slug}-{card.number}",
        "priority": CARD_PRIORITY,
        "httpRequest": {
            "method": "POST",
            "path": "/v1/authorizations",
            "headers": _IDEMPOTENT_POST_HEADERS,
            "body": {
                "type": "JSON",
                "json": {"card": {"number": card.number}},
                "matchType": "ONLY_MATCHING_FIELDS",
            },
        },
        "httpResponse": _card_response(card),
        "times": UNLIMITED,
    }


def build_expectations() -> list[dict[str, Any]]:
    """Every expectation, in a stable order, each with a stable ``id``."""
    expectations: list[dict[str, Any]] = [
        {
            "id": "bank-health",
            "priority": DEFAULT_PRIORITY,
            "httpRequest": {"method": "GET", "path": "/health"},
            "httpResponse": _json_response(200, {"status": "ok"}),
            "times": UNLIMITED,
        }
    ]
    expectations.extend(
        _card_expectation(card) for card in TEST_CARDS if card.behaviour != BankBehaviour.APPROVE
    )
    expectations.append(
        {
            "id": "bank-authorization-approve-default",
            "priority": DEFAULT_PRIORITY,
            "httpRequest": {
                "method": "POST",
                "path": "/v1/authorizations",
                "headers": _IDEMPOTENT_POST_HEADERS,
            },
            "httpResponse": _json_response(
                200, {"status": "approved", "authorization_code": DEFAULT_AUTHORIZATION_CODE}
            ),
            "times": UNLIMITED,
        }
    )
    expectations.append(
        {
            "id": "bank-refund-succeeded",
            "priority": DEFAULT_PRIORITY,
            "httpRequest": {
                "method": "POST",
                "path": "/v1/refunds",
                "headers": _IDEMPOTENT_POST_HEADERS,
            },
            "httpResponse": _json_response(
                200, {"status": "succeeded", "reference": REFUND_REFERENCE}
            ),
            "times": UNLIMITED,
        }
    )
    expectations.extend(
        {
            "id": f"bank-{kind}-succeeded",
            "priority": DEFAULT_PRIORITY,
            "httpRequest": {
                "method": "POST",
                "path": f"/v1/{kind}s",
                "headers": _IDEMPOTENT_POST_HEADERS,
            },
            "httpResponse": _json_response(200, {"status": "succeeded"}),
            "times": UNLIMITED,
        }
        for kind in ("capture", "void")
    )
    expectations.extend(
        {
            "id": f"bank-{kind}-status-no-record-default",
            "priority": LOOKUP_DEFAULT_PRIORITY,
            "httpRequest": {"method": "GET", "path": f"/v1/{kind}s/.*"},
            "httpResponse": _json_response(404, NO_SUCH_RECORD),
            "times": UNLIMITED,
        }
        for kind in ("authorization", "refund", "capture", "void")
    )
    return expectations


def render() -> str:
    """The file's exact content."""
    return json.dumps(build_expectations(), indent=2, ensure_ascii=False) + "\n"


def is_in_sync(path: Path = EXPECTATIONS_PATH) -> bool:
    """Whether the file at ``path`` is exactly what :func:`render` produces."""
    try:
        return path.read_text(encoding="utf-8") == render()
    except FileNotFoundError:
        return False


def load_into(base_url: str, path: Path = EXPECTATIONS_PATH) -> None:
    """Reset a running MockServer and load the expectations file into it.

    Raises:
        httpx.HTTPError: If MockServer is unreachable or refuses the expectations.
    """
    expectations = json.loads(path.read_text(encoding="utf-8"))
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        client.put("/mockserver/reset").raise_for_status()
        client.put("/mockserver/expectation", json=expectations).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=EXPECTATIONS_PATH)
    parser.add_argument("--load", metavar="MOCKSERVER_URL", help="then load into MockServer")
    args = parser.parse_args(argv)

    if args.check:
        if is_in_sync(args.output):
            return 0
        print(
            f"{args.output} is out of date with app/domain/cards.py TEST_CARDS; "
            "run: uv run python scripts/generate_bank_expectations.py",
            file=sys.stderr,
        )
        return 1

    args.output.write_text(render(), encoding="utf-8")
    print(f"wrote {len(build_expectations())} expectations to {args.output}")
    if args.load:
        load_into(args.load, args.output)
        print(f"loaded them into {args.load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
