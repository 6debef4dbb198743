"""Payment endpoints: thin adapters from HTTP to the payment use cases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from app.api.deps import CorrelationIdDep, IdempotencyKeyHeader, MerchantDep, Runtime, RuntimeDep
from app.api.problems import render_error
from app.api.routing import ExactJsonRoute
from app.api.schemas import (
    PaymentDetailResponse,
    PaymentRequest,
    PaymentResponse,
    Problem,
    RefundRequestBody,
    RefundResponse,
)
from app.core.jsoncodec import dump_json
from app.domain.errors import (
    BankUnavailable,
    MerchantInactive,
    PaymentNotFound,
    PaymentServiceError,
)
from app.services import idempotency
from app.services.idempotency import IdempotencyClaim, StoredResponse
from app.services.payments import (
    TRANSACTION_ID_SHAPE,
    CardDetails,
    ProcessPayment,
    RefundPayment,
    get_payment,
    new_refund_id,
    new_transaction_id,
    process_payment,
    refund_payment,
)

router = APIRouter(prefix="/api/v1/payments", tags=["payments"], route_class=ExactJsonRoute)

TransactionIdPath = Path(
    description="The payment's id; anything that is not one of yours answers 404.",
    examples=["txn_0f1e2d3c4b5a69788796a5b4c3d2e1f0"],
)


def _known_shape(transaction_id: str) -> str:
    # A malformed id is just an unknown one (SPEC: 404), answered without a query.
    if not TRANSACTION_ID_SHAPE.fullmatch(transaction_id):
        raise PaymentNotFound
    return transaction_id


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": Problem,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem("Malformed JSON (`malformed_json`)."),
    401: _problem("Missing, malformed or unknown API key (`unauthorized`)."),
    403: _problem("`merchant_mismatch` or `merchant_inactive`."),
    413: _problem("Body over 64 KiB (`payload_too_large`)."),
    422: _problem(
        "`validation_error` (one entry per bad field), `currency_not_supported`, "
        "or `idempotency_key_reused`."
    ),
    500: _problem("Unexpected failure (`internal_error`); nothing was kept."),
}

IDEMPOTENT_ERRORS: dict[int | str, dict[str, Any]] = {
    409: _problem("`idempotency_in_progress`, `payment_not_refundable`, `refund_exceeds_balance`."),
    503: _problem(
        "`bank_unavailable`: the bank gave no answer; the attempt is recorded as failed and "
        "its `transaction_id` is in the body. See `Retry-After`."
    ),
}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    media = "application/json" if status < 400 else "application/problem+json"
    return Response(dump_json(body), status_code=status, media_type=media, headers=headers)


def _replay(stored: StoredResponse) -> Response:
    headers = {"Idempotent-Replayed": "true"}
    if stored.status == 503:
        headers["Retry-After"] = str(stored.body.get("retry_after_s", 30))
    return _json(stored.status, stored.body, headers)


async def _run_idempotently(
    runtime: Runtime,
    *,
    request: Request,
    merchant_id: str,
    key: str | None,
    new_resource_id: str,
    action: Callable[[IdempotencyClaim | None], Awaitable[dict[str, Any]]],
    operation: str,
) -> Response:
    if key is None:
        return _json(200, await action(None))
    fingerprint = idempotency.request_fingerprint(
        secret=runtime.fingerprint_secret,
        method=request.method,
        path=request.url.path,
        body=await request.json() if await request.body() else None,
    )
    outcome = await idempotency.claim_or_replay(
        runtime.services,
        merchant_id=merchant_id,
        key=key,
        fingerprint=fingerprint,
        new_resource_id=new_resource_id,
        render_error=render_error,
    )
    if isinstance(outcome, StoredResponse):
        runtime.services.metrics.idempotent_replay(operation=operation)
        return _replay(outcome)
    try:
        body = await action(outcome)
    except BankUnavailable:
        raise  # recorded with the claim: retries replay this answer
    except PaymentServiceError:
        # A refusal that changed nothing: forget the key so a corrected retry can run.
        await asyncio.shield(idempotency.release(runtime.services, outcome))
        raise
    # Anything else (a crash, a cancelled request) may have happened after the bank said
    # yes: the claim is left to expire, and the retry that takes it over reuses the same
    # transaction id, which the bank deduplicates — never a second charge.
    return _json(200, body)


@router.post(
    "/process",
    summary="Process a payment",
    response_model=PaymentResponse,
    responses={**COMMON_ERRORS, **IDEMPOTENT_ERRORS},
)
async def process(
    body: PaymentRequest,
    request: Request,
    runtime: RuntimeDep,
    merchant: MerchantDep,
    correlation_id: CorrelationIdDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Authorize and capture a card payment. Declines answer 200 with `status: declined`."""
    card = body.card_data
    command = ProcessPayment(
        merchant_id=body.merchant_id,
        amount=body.money,
        payment_method=body.payment_method,
        card=CardDetails(
            number=card.card_number,
            cvv=card.cvv,
            exp_month=card.expiry_month,
            exp_year=card.expiry_year,
            holder_name=card.cardholder_name,
        ),
        description=body.description,
        metadata=body.metadata,
    )
    return await _run_idempotently(
        runtime,
        request=request,
        merchant_id=merchant.merchant_id,
        key=idempotency_key,
        new_resource_id=new_transaction_id(),
        operation="payment",
        action=lambda claim: process_payment(
            runtime.services,
            merchant=merchant,
            command=command,
            correlation_id=correlation_id,
            claim=claim,
        ),
    )


@router.get(
    "/{transaction_id}",
    summary="Get a payment",
    response_model=PaymentDetailResponse,
    responses={
        401: COMMON_ERRORS[401],
        403: COMMON_ERRORS[403],
        404: _problem("`payment_not_found`: unknown, or another merchant's."),
        422: COMMON_ERRORS[422],
        500: COMMON_ERRORS[500],
    },
)
async def read(
    runtime: RuntimeDep,
    merchant: MerchantDep,
    transaction_id: str = TransactionIdPath,
) -> Response:
    """A payment with its refunds, oldest first."""
    if not merchant.active:
        raise MerchantInactive
    return _json(
        200,
        await get_payment(
            runtime.services, merchant=merchant, transaction_id=_known_shape(transaction_id)
        ),
    )


@router.post(
    "/{transaction_id}/refund",
    summary="Refund a payment",
    response_model=RefundResponse,
    responses={
        **COMMON_ERRORS,
        **IDEMPOTENT_ERRORS,
        404: _problem("`payment_not_found`: unknown, or another merchant's."),
    },
)
async def refund(
    request: Request,
    runtime: RuntimeDep,
    merchant: MerchantDep,
    correlation_id: CorrelationIdDep,
    body: RefundRequestBody | None = None,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Refund part (`amount`) or all (no `amount`) of what remains of a captured payment."""
    if not merchant.active:
        raise MerchantInactive
    body = body or RefundRequestBody()
    command = RefundPayment(
        transaction_id=_known_shape(transaction_id),
        amount=body.amount if not isinstance(body.amount, str) else None,
        reason=body.reason,
        metadata=body.metadata,
    )
    return await _run_idempotently(
        runtime,
        request=request,
        merchant_id=merchant.merchant_id,
        key=idempotency_key,
        new_resource_id=new_refund_id(),
        operation="refund",
        action=lambda claim: refund_payment(
            runtime.services,
            merchant=merchant,
            command=command,
            correlation_id=correlation_id,
            claim=claim,
        ),
    )
