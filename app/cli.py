"""``payments-admin``: manage merchants and API keys (docs/api.md, "Authentication"),
merchants' webhook endpoints (docs/webhooks.md), and settle unknown bank outcomes on
demand (docs/runbook.md).

Reads the same configuration as the service (``DATABASE_URL``, ``.env``). Prints a
generated key or webhook secret once, at creation, and otherwise never a key, its digest
or a secret: keys are shown by id and prefix. Listings print a table, or JSON with
``--json``. Every error is one line on stderr and a non-zero exit status:
:data:`EXIT_REFUSED`, :data:`EXIT_USAGE`, :data:`EXIT_DATABASE` or :data:`EXIT_UNEXPECTED`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pydantic
import sqlalchemy.exc

from app.adapters.bank import build_bank_gateway
from app.adapters.db.engine import build_engine, database_unavailable
from app.core.config import Settings, get_settings
from app.dispatcher import build_admin
from app.domain.errors import PaymentServiceError
from app.domain.merchants import Merchant
from app.domain.webhooks import WebhookEndpoint
from app.main import build_services
from app.services import merchants, webhooks
from app.services.context import ServiceContext
from app.services.merchants import ApiKeySummary
from app.services.reconciliation import ReconcileReport, reconcile_once

DEFAULT_CURRENCIES = "USD,EUR,GBP,JPY"

EXIT_REFUSED = 1
"""The operation was refused: unknown merchant or key, ambiguous prefix, invalid value."""
EXIT_USAGE = 2
"""Bad arguments (argparse's own status) or bad configuration."""
EXIT_DATABASE = 3
"""The database could not be reached, or refused the connection or the statement."""
EXIT_UNEXPECTED = 4
"""Anything else (a bug): still one line, never a traceback."""

Command = Callable[[ServiceContext, argparse.Namespace, Settings], Awaitable[str]]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr; the full usage is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"payments-admin: {message} (see: {self.prog} --help)\n")


# -- commands ----------------------------------------------------------------------------


def _pepper(settings: Settings) -> bytes:
    return settings.api_key_pepper.get_secret_value().encode()


async def _create_merchant(
    ctx: ServiceContext, args: argparse.Namespace, settings: Settings
) -> str:
    issued = await merchants.create_merchant(
        ctx,
        merchant_id=args.merchant_id,
        name=args.name,
        currencies=args.currencies.split(","),
        api_key=args.api_key,
        pepper=_pepper(settings),
    )
    return f"created merchant {issued.merchant_id}\napi_key: {issued.api_key}"


async def _issue_key(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    issued = await merchants.issue_key(
        ctx, merchant_id=args.merchant_id, api_key=args.api_key, pepper=_pepper(settings)
    )
    return f"issued key for {issued.merchant_id}\napi_key: {issued.api_key}"


async def _revoke_key(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    if args.key is not None:
        merchant_id = await merchants.revoke_key(ctx, api_key=args.key, pepper=_pepper(settings))
        return f"revoked key of {merchant_id}"
    if args.key_id is not None:
        revoked = await merchants.revoke_key_by_id(ctx, key_id=args.key_id)
    else:
        revoked = await merchants.revoke_key_by_prefix(
            ctx, prefix=args.prefix, merchant_id=args.merchant_id
        )
    return f"revoked key {revoked.prefix} ({revoked.key_id}) of {revoked.merchant_id}"


async def _disable_merchant(
    ctx: ServiceContext, args: argparse.Namespace, _settings: Settings
) -> str:
    await merchants.disable_merchant(ctx, merchant_id=args.merchant_id)
    return f"disabled merchant {args.merchant_id}"


async def _enable_merchant(
    ctx: ServiceContext, args: argparse.Namespace, _settings: Settings
) -> str:
    await merchants.enable_merchant(ctx, merchant_id=args.merchant_id)
    return f"enabled merchant {args.merchant_id}"


async def _list_merchants(
    ctx: ServiceContext, args: argparse.Namespace, _settings: Settings
) -> str:
    summaries = await merchants.list_merchants(ctx)
    if args.json:
        return _json([_merchant_json(s.merchant, active_keys=s.active_keys) for s in summaries])
    if not summaries:
        return "no merchants"
    return _table(
        [
            ("MERCHANT_ID", "NAME", "STATUS", "CURRENCIES", "CREATED_AT", "ACTIVE_KEYS"),
            *(
                (
                    s.merchant.merchant_id,
                    s.merchant.name,
                    s.merchant.status.value,
                    ",".join(sorted(s.merchant.currencies)),
                    _when(s.merchant.created_at),
                    str(s.active_keys),
                )
                for s in summaries
            ),
        ]
    )


async def _show_merchant(ctx: ServiceContext, args: argparse.Namespace, _settings: Settings) -> str:
    detail = await merchants.show_merchant(ctx, merchant_id=args.merchant_id)
    merchant = detail.merchant
    if args.json:
        shown = _merchant_json(merchant, active_keys=detail.active_keys)
        return _json({**shown, "keys": [_key_json(key) for key in detail.keys]})
    about = _table(
        [
            ("merchant_id:", merchant.merchant_id),
            ("name:", merchant.name),
            ("status:", merchant.status.value),
            ("currencies:", ",".join(sorted(merchant.currencies))),
            ("created_at:", _when(merchant.created_at)),
            ("keys:", f"{detail.active_keys} active of {len(detail.keys)}"),
        ]
    )
    return f"{about}\n\n{_keys_table(detail.keys)}"


async def _list_keys(ctx: ServiceContext, args: argparse.Namespace, _settings: Settings) -> str:
    keys = await merchants.list_keys(ctx, merchant_id=args.merchant_id or args.merchant)
    return _json([_key_json(key) for key in keys]) if args.json else _keys_table(keys)


async def _add_webhook(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    issued = await webhooks.add_endpoint(
        build_admin(settings, ctx.uow_factory),
        merchant_id=args.merchant_id,
        url=args.url,
        event_types=(args.events or "").split(","),
    )
    return (
        f"added webhook {issued.endpoint.endpoint_id} for {args.merchant_id}\n"
        f"signing_secret: {issued.secret}"
    )


async def _list_webhooks(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    endpoints = await webhooks.list_endpoints(
        build_admin(settings, ctx.uow_factory), merchant_id=args.merchant_id
    )
    if args.json:
        return _json([_endpoint_json(endpoint) for endpoint in endpoints])
    if not endpoints:
        return "no webhooks"
    return _table(
        [
            ("ENDPOINT_ID", "STATUS", "EVENTS", "URL", "CREATED_AT", "FAILING_SINCE"),
            *(
                (
                    e.endpoint_id,
                    e.status.value,
                    ",".join(sorted(e.event_types)) or "*",
                    e.url,
                    _when(e.created_at),
                    _when(e.failing_since),
                )
                for e in endpoints
            ),
        ]
    )


async def _remove_webhook(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    endpoint = await webhooks.remove_endpoint(
        build_admin(settings, ctx.uow_factory), endpoint_id=args.endpoint_id
    )
    return f"removed webhook {endpoint.endpoint_id} of {endpoint.merchant_id}"


async def _disable_webhook(
    ctx: ServiceContext, args: argparse.Namespace, settings: Settings
) -> str:
    endpoint = await webhooks.disable_endpoint(
        build_admin(settings, ctx.uow_factory), endpoint_id=args.endpoint_id
    )
    return (
        f"disabled webhook {endpoint.endpoint_id} of {endpoint.merchant_id} "
        "(its events wait; enable-webhook sends them)"
    )


async def _enable_webhook(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    endpoint = await webhooks.enable_endpoint(
        build_admin(settings, ctx.uow_factory), endpoint_id=args.endpoint_id
    )
    return f"enabled webhook {endpoint.endpoint_id} of {endpoint.merchant_id}"


async def _rotate_webhook_secret(
    ctx: ServiceContext, args: argparse.Namespace, settings: Settings
) -> str:
    issued = await webhooks.rotate_secret(
        build_admin(settings, ctx.uow_factory), endpoint_id=args.endpoint_id
    )
    expires = issued.endpoint.previous_secret_expires_at
    grace = f"; the old secret also signs until {_when(expires)}" if expires else ""
    return (
        f"rotated the secret of {issued.endpoint.endpoint_id}{grace}\n"
        f"signing_secret: {issued.secret}"
    )


async def _replay_webhooks(
    ctx: ServiceContext, args: argparse.Namespace, settings: Settings
) -> str:
    now = datetime.now(UTC)
    since = args.since(now)
    until = args.until(now) if args.until else None
    queued = await webhooks.replay(
        build_admin(settings, ctx.uow_factory),
        merchant_id=args.merchant_id,
        since=since,
        until=until,
        endpoint_id=args.endpoint_id,
    )
    return (
        f"queued {queued} deliveries of {args.merchant_id}'s events from {_when(since)} "
        f"to {_when(until or now)}"
    )


def _describe(report: ReconcileReport) -> str:
    settled = ", ".join(
        f"{count} {kind} {outcome}" for (kind, outcome), count in sorted(report.settled.items())
    )
    return (
        f"reconciled: {sum(report.settled.values())} settled"
        + (f" ({settled})" if settled else "")
        + f", {report.deferred} asked again later, {report.overdue} overdue"
    )


async def _reconcile(ctx: ServiceContext, args: argparse.Namespace, settings: Settings) -> str:
    if not settings.bank_api_url:
        raise ValueError(
            "reconcile asks the bank's status lookup, and BANK_API_URL is not set: "
            "the in-process simulator only knows what its own process decided"
        )
    while True:
        report = await reconcile_once(ctx)
        line = _describe(report)
        if args.once:
            return line
        if report.claimed:
            print(line, flush=True)
        await asyncio.sleep(settings.reconcile_interval_s)


# -- output ------------------------------------------------------------------------------


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).isoformat(timespec="seconds")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _merchant_json(merchant: Merchant, *, active_keys: int) -> dict[str, Any]:
    return {
        "merchant_id": merchant.merchant_id,
        "name": merchant.name,
        "status": merchant.status.value,
        "currencies": sorted(merchant.currencies),
        "created_at": _iso(merchant.created_at),
        "active_keys": active_keys,
    }


def _key_json(key: ApiKeySummary) -> dict[str, Any]:
    # Built field by field: a summary has no key and no digest, and nothing else is added.
    return {
        "key_id": str(key.key_id),
        "merchant_id": key.merchant_id,
        "prefix": key.prefix,
        "status": "active" if key.active else "revoked",
        "created_at": _iso(key.created_at),
        "revoked_at": _iso(key.revoked_at),
    }


def _endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    # Field by field: never a secret, sealed or not.
    return {
        "endpoint_id": endpoint.endpoint_id,
        "merchant_id": endpoint.merchant_id,
        "url": endpoint.url,
        "events": sorted(endpoint.event_types),
        "status": endpoint.status.value,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": _iso(endpoint.failing_since),
        "previous_secret_expires_at": _iso(endpoint.previous_secret_expires_at),
        "created_at": _iso(endpoint.created_at),
        "updated_at": _iso(endpoint.updated_at),
    }


def _keys_table(keys: Sequence[ApiKeySummary]) -> str:
    if not keys:
        return "no keys"
    return _table(
        [
            ("KEY_ID", "PREFIX", "STATUS", "CREATED_AT", "REVOKED_AT"),
            *(
                (
                    str(key.key_id),
                    key.prefix,
                    "active" if key.active else "revoked",
                    _when(key.created_at),
                    _when(key.revoked_at),
                )
                for key in keys
            ),
        ]
    )


def _table(lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# -- parsing -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="payments-admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    as_json = _Parser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="print JSON on stdout instead of a table"
    )

    create = commands.add_parser("create-merchant", help="create a merchant and its first key")
    create.add_argument("merchant_id")
    create.add_argument("--name")
    create.add_argument("--currencies", default=DEFAULT_CURRENCIES, help="e.g. USD,EUR,JPY")
    create.add_argument("--api-key", help="use this key (at least 16 characters)")
    create.set_defaults(run=_create_merchant)

    issue = commands.add_parser("issue-key", help="issue another key for a merchant")
    issue.add_argument("merchant_id")
    issue.add_argument("--api-key", help="use this key (at least 16 characters)")
    issue.set_defaults(run=_issue_key)

    _add_revoke_key(commands)

    for name, run, verb in (
        ("disable-merchant", _disable_merchant, "disable a merchant: its keys answer 403"),
        ("enable-merchant", _enable_merchant, "enable a disabled merchant again"),
    ):
        command = commands.add_parser(name, help=verb)
        command.add_argument("merchant_id")
        command.set_defaults(run=run)

    listing = commands.add_parser(
        "list-merchants", parents=[as_json], help="every merchant, with its active keys"
    )
    listing.set_defaults(run=_list_merchants)

    show = commands.add_parser(
        "show-merchant", parents=[as_json], help="one merchant and its keys (prefixes only)"
    )
    show.add_argument("merchant_id")
    show.set_defaults(run=_show_merchant)

    keys = commands.add_parser(
        "list-keys", parents=[as_json], help="a merchant's keys: ids and prefixes, never a key"
    )
    whose = keys.add_mutually_exclusive_group(required=True)
    whose.add_argument("merchant_id", nargs="?")
    whose.add_argument("--merchant", metavar="MERCHANT_ID", help="the same, as an option")
    keys.set_defaults(run=_list_keys)

    _add_webhook_commands(commands, as_json)

    reconcile = commands.add_parser(
        "reconcile",
        help="settle payments and refunds whose bank answer is unknown, from the bank's "
        "status lookup (every worker also does this on its own)",
    )
    reconcile.add_argument(
        "--once", action="store_true", help="one round over what is due now, then exit"
    )
    reconcile.set_defaults(run=_reconcile)
    return parser


_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _instant(text: str) -> Callable[[datetime], datetime]:
    """An RFC 3339 instant, or a duration before now (``90m``, ``6h``, ``3d``)."""
    if match := _RELATIVE.fullmatch(text.strip()):
        delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return lambda now: now - delta
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "not an instant: use RFC 3339 (2026-12-04T10:00:00Z) or a duration (6h, 3d)"
        ) from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("give the instant's offset (Z or +hh:mm)")
    return lambda _now: at


def _add_webhook_commands(commands: Any, as_json: argparse.ArgumentParser) -> None:
    add = commands.add_parser(
        "add-webhook",
        help="register a merchant's webhook endpoint (HTTPS; prints its signing secret once)",
    )
    add.add_argument("merchant_id")
    add.add_argument("url")
    add.add_argument(
        "--events",
        help="comma-separated event types (default: every type), e.g. "
        "payment.captured,refund.succeeded",
    )
    add.set_defaults(run=_add_webhook)

    listing = commands.add_parser(
        "list-webhooks", parents=[as_json], help="a merchant's webhook endpoints (never a secret)"
    )
    listing.add_argument("merchant_id")
    listing.set_defaults(run=_list_webhooks)

    for name, run, verb in (
        ("remove-webhook", _remove_webhook, "stop delivering to an endpoint, for good"),
        (
            "disable-webhook",
            _disable_webhook,
            "stop delivering to an endpoint for now (its events wait)",
        ),
        ("enable-webhook", _enable_webhook, "deliver to a disabled endpoint again"),
        (
            "rotate-webhook-secret",
            _rotate_webhook_secret,
            "give an endpoint a new secret (printed once); the old one also signs for "
            "WEBHOOK_SECRET_GRACE_S",
        ),
    ):
        command = commands.add_parser(name, help=verb)
        command.add_argument("endpoint_id")
        command.set_defaults(run=run)

    replay = commands.add_parser(
        "replay-webhooks", help="send a merchant's recorded events of a time range again"
    )
    replay.add_argument("merchant_id")
    replay.add_argument(
        "--since", type=_instant, required=True, help="RFC 3339 instant, or a duration ago (6h)"
    )
    replay.add_argument("--until", type=_instant, help="default: now")
    replay.add_argument(
        "--endpoint", dest="endpoint_id", metavar="ENDPOINT_ID", help="only this endpoint"
    )
    replay.set_defaults(run=_replay_webhooks)


def _key_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        # Not echoed: what was typed may be the key itself.
        raise argparse.ArgumentTypeError("not a key id (a UUID, as list-keys shows it)") from None


def _add_revoke_key(commands: Any) -> None:
    revoke = commands.add_parser(
        "revoke-key",
        help="revoke a key by its prefix, as list-keys shows it (or by its id)",
        description="Revoke one active key. A prefix that matches no active key, or "
        "several, is refused and nothing is revoked: narrow it with --merchant, or name "
        "the key by --id.",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix", help="the key's prefix, as list-keys shows it")
    which.add_argument("--id", dest="key_id", type=_key_id, metavar="KEY_ID", help="the key's id")
    which.add_argument(
        "key", nargs="?", help="the key itself, in clear (kept for scripts; prefer --prefix)"
    )
    revoke.add_argument(
        "--merchant",
        dest="merchant_id",
        metavar="MERCHANT_ID",
        help="with --prefix: only this merchant's keys",
    )
    revoke.set_defaults(run=_revoke_key)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "revoke-key" and args.merchant_id and args.prefix is None:
        parser.error("revoke-key: --merchant only narrows --prefix")
    return args


# -- running -----------------------------------------------------------------------------


async def _run(args: argparse.Namespace, settings: Settings) -> str:
    engine = build_engine(settings, application_name="payments-admin")
    ctx = build_services(settings, engine, bank=build_bank_gateway(settings))
    try:
        command: Command = args.run
        return await command(ctx, args, settings)
    finally:
        await ctx.bank.aclose()
        await engine.dispose()


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception behind ``exc`` (SQLAlchemy wraps the driver's twice)."""
    seen = {id(exc)}
    while True:
        inner = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _named(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _failure(exc: Exception) -> tuple[str, int]:
    """What to tell the operator about an error, and the exit status."""
    if isinstance(exc, pydantic.ValidationError):
        # Each error's message only: the input may be a secret (a pepper, a key).
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])).upper() or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        return f"configuration: {problems}", EXIT_USAGE
    if database_unavailable(exc):
        return f"database unavailable: {_named(_root_cause(exc))}", EXIT_DATABASE
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return f"database error: {_named(_root_cause(exc))}", EXIT_DATABASE
    if isinstance(exc, ValueError):
        return _named(exc), EXIT_USAGE
    return f"unexpected error: {_named(exc)}", EXIT_UNEXPECTED


def _fail(message: str, status: int) -> int:
    print("payments-admin: " + " ".join(message.split()), file=sys.stderr)
    return status


def main(
    argv: Sequence[str] | None = None,
    *,
    settings_factory: Callable[[], Settings] = get_settings,
    runner: Callable[[Coroutine[Any, Any, str]], str] = asyncio.run,
) -> int:
    """Entry point of ``payments-admin``; returns the exit code."""
    args = _parse(argv)
    try:
        settings = settings_factory()
        print(runner(_run(args, settings)))
    except PaymentServiceError as exc:
        return _fail(exc.detail, EXIT_REFUSED)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every other error is one line too, never a traceback
        return _fail(*_failure(exc))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
