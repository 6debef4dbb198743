"""Merchant and API-key administration (the ``payments-admin`` CLI's use cases)."""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from dataclasses import dataclass

from app.domain.audit import ADMIN_ACTOR, AuditEntry, AuditOutcome
from app.domain.errors import ApiKeyNotFound, MerchantNotFound, ValidationFailed
from app.domain.merchants import ApiKey, Merchant, MerchantStatus
from app.domain.money import normalize_currency
from app.services.auth import API_KEY_SHAPE, hash_api_key
from app.services.context import ServiceContext
from app.services.ports import UnitOfWork

MIN_KEY_LENGTH = 16
MERCHANT_ID_SHAPE = r"^[A-Za-z0-9_.-]{1,64}$"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly issued key: the only moment it exists in clear."""

    merchant_id: str
    api_key: str = ""


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
                details={"currencies": codes, "key_prefix": key[:6]},
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
            key_prefix=key[:6],
        )
    )


async def issue_key(
    ctx: ServiceContext, *, merchant_id: str, api_key: str | None, pepper: bytes
) -> IssuedKey:
    """Issue another key for an existing merchant."""
    key = _check_key(api_key) if api_key else generate_api_key()
    async with ctx.uow_factory() as uow:
        if await uow.merchants.get(merchant_id) is None:
            raise MerchantNotFound(f"No merchant {merchant_id}.")
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
                details={"key_prefix": key[:6]},
            )
        )
        await _notify_change(uow, merchant_id)
        await uow.commit()
    return IssuedKey(merchant_id=merchant_id, api_key=key)


async def revoke_key(ctx: ServiceContext, *, api_key: str, pepper: bytes) -> str:
    """Revoke a key at once in every worker; returns its merchant id."""
    async with ctx.uow_factory() as uow:
        found = await uow.api_keys.get_by_hash(hash_api_key(api_key, pepper=pepper))
        if found is None or found.revoked:
            raise ApiKeyNotFound
        uow.api_keys.revoke(found, at=ctx.clock())
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action="api_key.revoke",
                resource_type="merchant",
                resource_id=found.merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=ctx.clock(),
                details={"key_prefix": found.key_prefix},
            )
        )
        await _notify_change(uow, found.merchant_id)
        await uow.commit()
        return found.merchant_id


async def disable_merchant(ctx: ServiceContext, *, merchant_id: str) -> None:
    """Disable a merchant: its keys then answer 403 merchant_inactive."""
    async with ctx.uow_factory() as uow:
        merchant = await uow.merchants.get(merchant_id)
        if merchant is None:
            raise MerchantNotFound(f"No merchant {merchant_id}.")
        uow.merchants.update(
            dataclasses.replace(merchant, status=MerchantStatus.DISABLED), at=ctx.clock()
        )
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action="merchant.disable",
                resource_type="merchant",
                resource_id=merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=ctx.clock(),
                details={},
            )
        )
        await _notify_change(uow, merchant_id)
        await uow.commit()


__all__ = [
    "IssuedKey",
    "create_merchant",
    "disable_merchant",
    "generate_api_key",
    "issue_key",
    "revoke_key",
]
