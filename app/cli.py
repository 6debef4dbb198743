"""``payments-admin``: manage merchants and API keys (docs/api.md, "Authentication"), and
settle unknown bank outcomes on demand (docs/runbook.md).

Reads the same configuration as the service (``DATABASE_URL``, ``.env``). Prints a
generated key once; exits non-zero with a one-line message on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from app.adapters.bank import build_bank_gateway
from app.adapters.db.engine import build_engine
from app.core.config import Settings, get_settings
from app.domain.errors import PaymentServiceError
from app.main import build_services
from app.services import merchants
from app.services.context import ServiceContext
from app.services.reconciliation import ReconcileReport, reconcile_once

DEFAULT_CURRENCIES = "USD,EUR,GBP,JPY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payments-admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create-merchant", help="create a merchant and its first key")
    create.add_argument("merchant_id")
    create.add_argument("--name")
    create.add_argument("--currencies", default=DEFAULT_CURRENCIES, help="e.g. USD,EUR,JPY")
    create.add_argument("--api-key", help="use this key (at least 16 characters)")

    issue = commands.add_parser("issue-key", help="issue another key for a merchant")
    issue.add_argument("merchant_id")
    issue.add_argument("--api-key", help="use this key (at least 16 characters)")

    revoke = commands.add_parser("revoke-key", help="revoke a key")
    revoke.add_argument("key")

    disable = commands.add_parser("disable-merchant", help="disable a merchant")
    disable.add_argument("merchant_id")

    reconcile = commands.add_parser(
        "reconcile",
        help="settle payments and refunds whose bank answer is unknown, from the bank's "
        "status lookup (every worker also does this on its own)",
    )
    reconcile.add_argument(
        "--once", action="store_true", help="one round over what is due now, then exit"
    )
    return parser


def _describe(report: ReconcileReport) -> str:
    settled = ", ".join(
        f"{count} {kind} {outcome}" for (kind, outcome), count in sorted(report.settled.items())
    )
    return (
        f"reconciled: {sum(report.settled.values())} settled"
        + (f" ({settled})" if settled else "")
        + f", {report.deferred} asked again later, {report.overdue} overdue"
    )


async def _reconcile(ctx: ServiceContext, *, once: bool, interval_s: float) -> str:
    while True:
        report = await reconcile_once(ctx)
        line = _describe(report)
        if once:
            return line
        if report.claimed:
            print(line, flush=True)
        await asyncio.sleep(interval_s)


async def _run(args: argparse.Namespace, settings: Settings) -> str:
    engine = build_engine(settings, application_name="payments-admin")
    ctx = build_services(settings, engine, bank=build_bank_gateway(settings))
    pepper = settings.api_key_pepper.get_secret_value().encode()
    try:
        if args.command == "create-merchant":
            issued = await merchants.create_merchant(
                ctx,
                merchant_id=args.merchant_id,
                name=args.name,
                currencies=args.currencies.split(","),
                api_key=args.api_key,
                pepper=pepper,
            )
            return f"created merchant {issued.merchant_id}\napi_key: {issued.api_key}"
        if args.command == "issue-key":
            issued = await merchants.issue_key(
                ctx, merchant_id=args.merchant_id, api_key=args.api_key, pepper=pepper
            )
            return f"issued key for {issued.merchant_id}\napi_key: {issued.api_key}"
        if args.command == "revoke-key":
            merchant_id = await merchants.revoke_key(ctx, api_key=args.key, pepper=pepper)
            return f"revoked key of {merchant_id}"
        if args.command == "reconcile":
            if not settings.bank_api_url:
                raise ValueError(
                    "reconcile asks the bank's status lookup, and BANK_API_URL is not set: "
                    "the in-process simulator only knows what its own process decided"
                )
            return await _reconcile(ctx, once=args.once, interval_s=settings.reconcile_interval_s)
        await merchants.disable_merchant(ctx, merchant_id=args.merchant_id)
        return f"disabled merchant {args.merchant_id}"
    finally:
        await ctx.bank.aclose()
        await engine.dispose()


def main(
    argv: Sequence[str] | None = None,
    *,
    settings_factory: Callable[[], Settings] = get_settings,
    runner: Callable[[Coroutine[Any, Any, str]], str] = asyncio.run,
) -> int:
    """Entry point of ``payments-admin``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = settings_factory()
        print(runner(_run(args, settings)))
    except PaymentServiceError as exc:
        print(f"payments-admin: {exc.detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"payments-admin: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
