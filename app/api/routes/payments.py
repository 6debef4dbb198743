"""Payment endpoints: thin adapters from HTTP to the payment use cases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from app.api.deps import CorrelationIdDep, IdempotencyKeyHeader, MerchantDep, Runtime, RuntimeDep
from app.api.exact_json import ExactJsonRoute
from app.api.schemas import (
    CaptureRequest,
    PaymentDetailResponse,
    PaymentList,
    PaymentListQuery,
    PaymentRequest,
    PaymentResponse,
    Problem,
    RefundRequest,
    RefundResponse,
    query_parameters,
)
from app.core.jsoncodec import dump_json
from app.services.authorizations import capture_payment, void_payment
from app.services.idempotency import (
    Answer,
    IdempotencyKey,
    legacy_request_fingerprint,
    request_fingerprint,
)
from app.services.listing import list_payments
from app.services.payments import CardDetails, get_payment, process_payment
from app.services.ports import PageCursor, PaymentFilter
from app.services.refunds import refund_payment

router = APIRouter(prefix="/api/v1/payments", tags=["payments"], route_class=ExactJsonRoute)

TransactionIdPath = Path(
    description="The payment's id; anything that is not one of yours answers 404.",
    examples=["txn_0f1e2d3c4b5a69788796a5b4c3d2e1f0"],
)


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
    409: _problem(
        "`idempotency_in_progress`, `payment_not_refundable`, `refund_exceeds_balance`, "
        "`payment_not_capturable`, `payment_not_voidable`."
    ),
    503: _problem(
        "`bank_unavailable`: the bank certainly did not receive the request; nothing was "
        "charged, the attempt is recorded as failed and its `transaction_id` is in the body. "
        "`service_unavailable`: the database cannot be reached; nothing was done. Both carry "
        "`Retry-After`; a retry may reuse the Idempotency-Key."
    ),
}


def _accepted(what: str, model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        202: {
            "description": (
                f"The bank's answer is unknown (a timeout, a 5xx, a lost connection): the "
                f"{what}, recorded and not yet settled. The reconciler asks the bank and "
                "settles it; `GET` the payment for the outcome (its event says it too). "
                "Remembered for the Idempotency-Key."
            ),
            "model": model,
        }
    }


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    media = "application/json" if status < 400 else "application/problem+json"
    return Response(dump_json(body), status_code=status, media_type=media, headers=headers)


def _respond(answer: Answer) -> Response:
    headers: dict[str, str] = {}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
        if answer.status == 503:  # an answer remembered by a release before 0.2
            headers["Retry-After"] = str(answer.body.get("retry_after_s", 30))
    return _json(answer.status, answer.body, headers)


async def _idempotency(
    runtime: Runtime, request: Request, key: str | None
) -> IdempotencyKey | None:
    if key is None:
        return None
    body = await request.json() if await request.body() else None
    secret, method, path = runtime.fingerprint_secret, request.method, request.url.path
    return IdempotencyKey(
        key=key,
        fingerprint=request_fingerprint(
            secret=secret,
            method=method,
            path=path,
            body=body,
            card_fingerprint=runtime.services.vault.fingerprint,
        ),
        legacy_fingerprint=legacy_request_fingerprint(
            secret=secret, method=method, path=path, body=body
        ),
    )


@router.post(
    "/process",
    summary="Process a payment",
    response_model=PaymentResponse,
    responses={
        **_accepted("payment, `processing`,", PaymentResponse),
        **COMMON_ERRORS,
        **IDEMPOTENT_ERRORS,
    },
)
async def process(
    body: PaymentRequest,
    request: Request,
    runtime: RuntimeDep,
    merchant: MerchantDep,
    correlation_id: CorrelationIdDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Authorize a card payment and, unless `capture_method` is `manual`, capture it.
    Declines answer 200 with `status: declined`; an unknown bank answer is a 202 with
    `status: processing`."""
    card = body.card_data
    answer = await process_payment(
        runtime.services,
        merchant=merchant,
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
        correlation_id=correlation_id,
        idempotency=await _idempotency(runtime, request, idempotency_key),
        capture_method=body.capture_method,
    )
    return _respond(answer)


async def listing_query(request: Request) -> PaymentListQuery:
    """The listing's query parameters, every bad one named in one 422."""
    return PaymentListQuery.from_query(request.query_params.multi_items())


@router.get(
    "",
    summary="List payments",
    operation_id="list_payments",
    response_model=PaymentList,
    responses={
        401: COMMON_ERRORS[401],
        403: _problem("`merchant_inactive`."),
        422: _problem(
            "`validation_error`: one entry per bad query parameter, named as sent "
            "(`limit`, `created[gte]`, `metadata[order_id]`, an unknown or repeated one); "
            "a cursor that is not one of your payments is named too."
        ),
        500: COMMON_ERRORS[500],
        503: _problem(
            "`service_unavailable`: the database cannot be reached; retry after `Retry-After`."
        ),
    },
    openapi_extra={"parameters": query_parameters(PaymentListQuery)},
)
async def listing(
    runtime: RuntimeDep,
    merchant: MerchantDep,
    query: Annotated[PaymentListQuery, Depends(listing_query)],
) -> Response:
    """Your payments, newest first, a page at a time (keyset pagination: pages stay put
    while new payments arrive). Follow `has_more` with `starting_after` set to the last
    `transaction_id` of the page (or `ending_before` set to the first, to go back)."""
    cursor = None
    if query.starting_after is not None:
        cursor = PageCursor(query.starting_after)
    elif query.ending_before is not None:
        cursor = PageCursor(query.ending_before, newer=True)
    body = await list_payments(
        runtime.services,
        merchant=merchant,
        filters=PaymentFilter(
            status=query.status,
            created_gte=query.created_gte,
            created_gt=query.created_gt,
            created_lte=query.created_lte,
            created_lt=query.created_lt,
            metadata=query.metadata,
        ),
        limit=query.limit,
        cursor=cursor,
    )
    return _json(200, body)


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
    body = await get_payment(runtime.services, merchant=merchant, transaction_id=transaction_id)
    return _json(200, body)


@router.post(
    "/{transaction_id}/refund",
    summary="Refund a payment",
    response_model=RefundResponse,
    responses={
        **_accepted("refund, `pending` (its amount reserved),", RefundResponse),
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
    body: RefundRequest | None = None,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Refund part (`amount`) or all (no `amount`) of what remains of a captured payment."""
    body = body or RefundRequest()
    answer = await refund_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        amount=body.amount_decimal,
        reason=body.reason,
        metadata=body.metadata,
        correlation_id=correlation_id,
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)


@router.post(
    "/{transaction_id}/capture",
    summary="Capture an authorized payment",
    response_model=PaymentResponse,
    responses={
        **_accepted("payment, still `authorized` with its capture pending,", PaymentResponse),
        **COMMON_ERRORS,
        **IDEMPOTENT_ERRORS,
        404: _problem("`payment_not_found`: unknown, or another merchant's."),
    },
)
async def capture(
    request: Request,
    runtime: RuntimeDep,
    merchant: MerchantDep,
    correlation_id: CorrelationIdDep,
    body: CaptureRequest | None = None,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Capture an `authorized` payment (`capture_method: manual`): all of it (no
    `amount`) or part, once; the rest of the authorization is released. Answers the
    payment `captured`, or still `authorized` when the bank refused the capture."""
    body = body or CaptureRequest()
    answer = await capture_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        amount=body.amount_decimal,
        correlation_id=correlation_id,
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)


@router.post(
    "/{transaction_id}/void",
    summary="Void an authorized payment",
    response_model=PaymentResponse,
    responses={
        **_accepted("payment, still `authorized` with its void pending,", PaymentResponse),
        **COMMON_ERRORS,
        **IDEMPOTENT_ERRORS,
        404: _problem("`payment_not_found`: unknown, or another merchant's."),
    },
)
async def void(
    request: Request,
    runtime: RuntimeDep,
    merchant: MerchantDep,
    correlation_id: CorrelationIdDep,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Release an `authorized` payment without capturing it. Answers the payment
    `voided`, or still `authorized` when the bank refused the void."""
    answer = await void_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        correlation_id=correlation_id,
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)
