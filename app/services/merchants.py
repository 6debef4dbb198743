"""Merchant and API-key administration (the ``payments-admin`` CLI's use cases)."""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from app.domain.audit import ADMIN_ACTOR, AuditEntry, AuditOutcome
from app.domain.errors import ApiKeyNotFound, MerchantNotFound, ValidationFailed
from app.domain.merchants import ApiKey, Merchant, MerchantStatus
from app.domain.money import normalize_currency
from app.services.auth import API_KEY_SHAPE, hash_api_key
from app.services.context import ServiceContext
from app.services.ports import MerchantSummary, UnitOfWork

MIN_KEY_LENGTH = 16
MERCHANT_ID_SHAPE = r"^[A-Za-z0-9_.-]{1,64}$"
KEY_PREFIX_LENGTH = 6
"""How much of a key is stored (and shown) in clear: ``sk_`` and three characters."""
AMBIGUOUS_LISTED = 5
"""How many of the keys an ambiguous prefix matches are named in the error."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly issued key: the only moment it exists in clear."""

    merchant_id: str
    api_key: str = ""


@dataclass(frozen=True, slots=True)
class ApiKeySummary:
    """What an operator may see of a key: its id and prefix, never the key or its digest."""

    key_id: uuid.UUID
    merchant_id: str
    prefix: str
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """Whether the key still authenticates."""
        return self.revoked_at is None

    @classmethod
    def of(cls, api_key: ApiKey) -> ApiKeySummary:
        """The summary of a stored key."""
        return cls(
            key_id=api_key.id,
            merchant_id=api_key.merchant_id,
            prefix=api_key.key_prefix,
            created_at=api_key.created_at,
            revoked_at=api_key.revoked_at,
        )


@dataclass(frozen=True, slots=True)
class MerchantDetail:
    """A merchant with all its keys, revoked or not, oldest first."""

    merchant: Merchant
    keys: tuple[ApiKeySummary, ...]

    @property
    def active_keys(self) -> int:
        """How many of its keys still authenticate."""
        return sum(key.active for key in self.keys)


def generate_api_key() -> str:
    """A strong random key (256 bits)."""
    return "sk_" + secrets.token_urlsafe(32)


def _check_key(api_key: str) -> str:
    if len(api_key) < MIN_KEY_LENGTH or not API_KEY_SHAPE.fullmatch(api_key):
        raise ValidationFailed(
            f"An API key must be at least {MIN_KEY_LENGTH} characters of "
            "letters, digits and ._~+/=-",
            field="api_key",
        )
    return api_key


async def _notify_change(uow: UnitOfWork, merchant_id: str) -> None:
    # Delivered on commit to every process LISTENing, which clears its auth cache.
    await uow.merchants.announce_change(merchant_id)


async def create_merchant(
    ctx: ServiceContext,
    *,
    merchant_id: str,
    name: str | None,
    currencies: list[str],
    api_key: str | None,
    pepper: bytes,
) -> IssuedKey:
    """Create an active merchant with one API key."""

    if not re.fullmatch(MERCHANT_ID_SHAPE, merchant_id):
        raise ValidationFailed(
            "merchant_id must be 1-64 letters, digits, '_', '.' or '-'", field="merchant_id"
        )
    codes = sorted({normalize_currency(code.strip()) for code in currencies if code.strip()})
    if not codes:
        raise ValidationFailed("at least one currency is required", field="currencies")
    key = _check_key(api_key) if api_key else generate_api_key()
    now = ctx.clock()
    async with ctx.uow_factory() as uow:
        if await uow.merchants.get(merchant_id) is not None:
            raise ValidationFailed(f"merchant {merchant_id} already exists", field="merchant_id")
        uow.merchants.add(
            Merchant(
                merchant_id=merchant_id,
                name=name or merchant_id,
                status=MerchantStatus.ACTIVE,
                currencies=frozenset(codes),
            )
        )
        _add_key(uow, merchant_id=merchant_id, key=key, pepper=pepper)
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action="merchant.create",
                resource_type="merchant",
                resource_id=merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=now,
                details={"currencies": codes, "key_prefix": key[:KEY_PREFIX_LENGTH]},
            )
        )
        await _notify_change(uow, merchant_id)
        await uow.commit()
    return IssuedKey(merchant_id=merchant_id, api_key=key)


def _add_key(uow: UnitOfWork, *, merchant_id: str, key: str, pepper: bytes) -> None:
    uow.api_keys.add(
        ApiKey(
            id=uuid.uuid4(),
            merchant_id=merchant_id,
            key_hash=hash_api_key(key, pepper=pepper),
            key_prefix=key[:KEY_PREFIX_LENGTH],
        )
    )


async def issue_key(
    ctx: ServiceContext, *, merchant_id: str, api_key: str | None, pepper: bytes
) -> IssuedKey:
    """Issue another key for an existing merchant."""
    key = _check_key(api_key) if api_key else generate_api_key()
    async with ctx.uow_factory() as uow:
        await _merchant_or_raise(uow, merchant_id)
        if await uow.api_keys.get_by_hash(hash_api_key(key, pepper=pepper)) is not None:
            raise ValidationFailed("that API key is already in use", field="api_key")
        _add_key(uow, merchant_id=merchant_id, key=key, pepper=pepper)
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action="api_key.issue",
                resource_type="merchant",
                resource_id=merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=ctx.clock(),
                details={"key_prefix": key[:KEY_PREFIX_LENGTH]},
            )
        )
        await _notify_change(uow, merchant_id)
        await uow.commit()
    return IssuedKey(merchant_id=merchant_id, api_key=key)


async def revoke_key(ctx: ServiceContext, *, api_key: str, pepper: bytes) -> str:
    """Revoke a key given in clear, at once in every worker; returns its merchant id."""
    async with ctx.uow_factory() as uow:
        found = await uow.api_keys.get_by_hash(hash_api_key(api_key, pepper=pepper))
        if found is None or found.revoked:
            raise ApiKeyNotFound
        await _revoke(ctx, uow, found)
        return found.merchant_id


async def revoke_key_by_prefix(
    ctx: ServiceContext, *, prefix: str, merchant_id: str | None = None
) -> ApiKeySummary:
    """Revoke the one active key whose prefix starts with ``prefix`` (of ``merchant_id``
    when given), at once in every worker.

    Raises:
        ValidationFailed: The prefix is empty or longer than a stored prefix, or it
            matches more than one active key (then none is revoked).
        MerchantNotFound: ``merchant_id`` names no merchant.
        ApiKeyNotFound: No active key has this prefix.
    """
    if not 0 < len(prefix) <= KEY_PREFIX_LENGTH:
        # Never echoed: a long "prefix" may be the key itself.
        raise ValidationFailed(
            f"a key prefix is 1 to {KEY_PREFIX_LENGTH} characters, as list-keys shows it",
            field="prefix",
        )
    async with ctx.uow_factory() as uow:
        if merchant_id is not None:
            await _merchant_or_raise(uow, merchant_id)
        found = await uow.api_keys.active_with_prefix(prefix, merchant_id=merchant_id)
        if not found:
            of = f" of merchant {merchant_id}" if merchant_id else ""
            raise ApiKeyNotFound(f"No active API key{of} has the prefix {prefix!r}.")
        if len(found) > 1:
            raise _ambiguous(prefix, found)
        await _revoke(ctx, uow, found[0])
        return ApiKeySummary.of(found[0])


async def revoke_key_by_id(ctx: ServiceContext, *, key_id: uuid.UUID) -> ApiKeySummary:
    """Revoke the active key with this id (as list-keys shows it), at once in every worker.

    Raises:
        ApiKeyNotFound: No active key has this id.
    """
    async with ctx.uow_factory() as uow:
        found = await uow.api_keys.get(key_id)
        if found is None or found.revoked:
            raise ApiKeyNotFound(f"No active API key has the id {key_id}.")
        await _revoke(ctx, uow, found)
        return ApiKeySummary.of(found)


def _ambiguous(prefix: str, keys: list[ApiKey]) -> ValidationFailed:
    named = ", ".join(f"{key.id} ({key.merchant_id})" for key in keys[:AMBIGUOUS_LISTED])
    more = f" and {len(keys) - AMBIGUOUS_LISTED} more" if len(keys) > AMBIGUOUS_LISTED else ""
    return ValidationFailed(
        f"the prefix {prefix!r} matches {len(keys)} active keys: {named}{more}; nothing "
        "was revoked. Narrow it with --merchant, or revoke one by --id",
        field="prefix",
    )


async def _revoke(ctx: ServiceContext, uow: UnitOfWork, api_key: ApiKey) -> None:
    uow.api_keys.revoke(api_key, at=ctx.clock())
    uow.audit.append(
        AuditEntry(
            actor=ADMIN_ACTOR,
            action="api_key.revoke",
            resource_type="merchant",
            resource_id=api_key.merchant_id,
            outcome=AuditOutcome.SUCCESS,
            correlation_id=None,
            occurred_at=ctx.clock(),
            details={"key_prefix": api_key.key_prefix, "key_id": str(api_key.id)},
        )
    )
    await _notify_change(uow, api_key.merchant_id)
    await uow.commit()


async def disable_merchant(ctx: ServiceContext, *, merchant_id: str) -> None:
    """Disable a merchant: its keys then answer 403 merchant_inactive."""
    await _set_status(ctx, merchant_id=merchant_id, status=MerchantStatus.DISABLED)


async def enable_merchant(ctx: ServiceContext, *, merchant_id: str) -> None:
    """Enable a disabled merchant again: its unrevoked keys authenticate at once in every
    worker (the inverse of :func:`disable_merchant`)."""
    await _set_status(ctx, merchant_id=merchant_id, status=MerchantStatus.ACTIVE)


_STATUS_ACTIONS = {
    MerchantStatus.ACTIVE: "merchant.enable",
    MerchantStatus.DISABLED: "merchant.disable",
}


async def _set_status(ctx: ServiceContext, *, merchant_id: str, status: MerchantStatus) -> None:
    async with ctx.uow_factory() as uow:
        merchant = await _merchant_or_raise(uow, merchant_id)
        uow.merchants.update(dataclasses.replace(merchant, status=status), at=ctx.clock())
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action=_STATUS_ACTIONS[status],
                resource_type="merchant",
                resource_id=merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=ctx.clock(),
                details={"previous_status": merchant.status.value},
            )
        )
        # Every worker clears its auth cache on commit: a disabled merchant is refused
        # from the next request, an enabled one accepted (no cached 403 outlives it).
        await _notify_change(uow, merchant_id)
        await uow.commit()


async def list_merchants(ctx: ServiceContext) -> list[MerchantSummary]:
    """Every merchant, by id, with how many of its keys still authenticate."""
    async with ctx.uow_factory() as uow:
        return await uow.merchants.list_summaries()


async def show_merchant(ctx: ServiceContext, *, merchant_id: str) -> MerchantDetail:
    """One merchant with all its keys (ids and prefixes only).

    Raises:
        MerchantNotFound: No merchant has this id.
    """
    async with ctx.uow_factory() as uow:
        merchant = await _merchant_or_raise(uow, merchant_id)
        keys = await uow.api_keys.of_merchant(merchant_id)
    return MerchantDetail(merchant=merchant, keys=tuple(ApiKeySummary.of(key) for key in keys))


async def list_keys(ctx: ServiceContext, *, merchant_id: str) -> list[ApiKeySummary]:
    """A merchant's keys, revoked or not, oldest first (ids and prefixes only).

    Raises:
        MerchantNotFound: No merchant has this id.
    """
    return list((await show_merchant(ctx, merchant_id=merchant_id)).keys)


async def _merchant_or_raise(uow: UnitOfWork, merchant_id: str) -> Merchant:
    merchant = await uow.merchants.get(merchant_id)
    if merchant is None:
        raise MerchantNotFound(f"No merchant {merchant_id}.")
    return merchant


__all__ = [
    "ApiKeySummary",
    "IssuedKey",
    "MerchantDetail",
    "create_merchant",
    "disable_merchant",
    "enable_merchant",
    "generate_api_key",
    "issue_key",
    "list_keys",
    "list_merchants",
    "revoke_key",
    "revoke_key_by_id",
    "revoke_key_by_prefix",
    "show_merchant",
]
