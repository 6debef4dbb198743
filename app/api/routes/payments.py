"""Payment endpoints: thin adapters from HTTP to the payment use cases."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import Example
from starlette.responses import Response

from app.api.deps import (
    IdempotencyKeyHeader,
    MerchantDep,
    Runtime,
    RuntimeDep,
    request_correlation_id,
    runtime_of,
)
from app.api.exact_json import ExactJsonRoute
from app.api.openapi import idempotent_answer, payment_links, problem_responses
from app.api.schemas import (
    EXAMPLE_TRANSACTION_ID,
    PAYMENT_REQUEST_EXAMPLE,
    CaptureRequest,
    PaymentDetailResponse,
    PaymentList,
    PaymentListQuery,
    PaymentRequest,
    PaymentResponse,
    RefundRequest,
    RefundResponse,
    query_parameters,
)
from app.core.jsoncodec import dump_json
from app.domain.ids import TRANSACTION_ID_SHAPE
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
    description=(
        "The payment's id, `txn_` and 32 hex digits; anything that is not one of yours "
        "(another merchant's, unknown, or not shaped like an id) answers 404."
    ),
    examples=[EXAMPLE_TRANSACTION_ID],
    # Documented, not enforced: a malformed id is answered 404 like an unknown one.
    json_schema_extra={"pattern": TRANSACTION_ID_SHAPE.pattern},
)

_IDEMPOTENT_NOTES = {
    503: (
        "`bank_unavailable`: the bank certainly did not receive the request; nothing was "
        "charged or refunded, the attempt is recorded as failed and its id is in the body. "
        "`service_unavailable`: the database cannot be reached; nothing was done. Both carry "
        "`Retry-After`, and are not remembered: a retry may reuse the `Idempotency-Key`."
    ),
}
# What each operation can answer besides its 2xx; docs/api.md, "Errors", says what each
# code means. Every route may fail unexpectedly (500) or lose its database (503).
_ALWAYS = ("unauthorized", "merchant_inactive", "internal_error", "service_unavailable")
# A POST on an existing payment: a JSON body (or none), an Idempotency-Key.
_ON_A_PAYMENT = (
    *_ALWAYS,
    "malformed_json",
    "payload_too_large",
    "validation_error",
    "payment_not_found",
    "idempotency_key_reused",
    "idempotency_in_progress",
    "bank_unavailable",
)
CREATE_PAYMENT_PROBLEMS = (
    *_ALWAYS,
    "malformed_json",
    "payload_too_large",
    "validation_error",
    "merchant_mismatch",
    "currency_not_supported",
    "idempotency_key_reused",
    "idempotency_in_progress",
    "bank_unavailable",
)
GET_PAYMENT_PROBLEMS = (*_ALWAYS, "payment_not_found")
LIST_PAYMENTS_PROBLEMS = (*_ALWAYS, "validation_error")
REFUND_PAYMENT_PROBLEMS = (*_ON_A_PAYMENT, "payment_not_refundable", "refund_exceeds_balance")
CAPTURE_PAYMENT_PROBLEMS = (*_ON_A_PAYMENT, "payment_not_capturable")
VOID_PAYMENT_PROBLEMS = (*_ON_A_PAYMENT, "payment_not_voidable")

# Links say which operation may follow an answer, with its transaction_id: what a client
# generator documents and what schemathesis' stateful phase chains.
_ON_A_PAYMENT_LINKS = payment_links(
    "get_payment", "refund_payment", "capture_payment", "void_payment"
)
_CAPTURED_LINKS = payment_links("get_payment", "refund_payment")
_REFUND_LINKS = payment_links("get_payment", "refund_payment")
_READ_LINKS = payment_links("get_payment")


def _answers(
    model: type[Any], accepted: str, *, links: dict[str, Any]
) -> dict[int | str, dict[str, Any]]:
    """The 200 and 202 of an idempotent POST; ``accepted`` says what a 202 carries."""
    ok = idempotent_answer()
    unknown = idempotent_answer(
        f"The bank's answer is unknown (a timeout, a 5xx, a lost connection): the {accepted} "
        "recorded and not yet settled. The reconciler asks the bank and settles it; `GET` "
        "the payment for the outcome (its event says it too). Remembered for the "
        "Idempotency-Key."
    )
    ok["links"] = unknown["links"] = links
    return {200: ok, 202: {"model": model, **unknown}}


PAYMENT_REQUEST_EXAMPLES: dict[str, Example] = {
    "captured": {
        "summary": "Pay 99.99 USD, captured at once (approved test Visa)",
        "value": PAYMENT_REQUEST_EXAMPLE,
    },
    "manual_capture": {
        "summary": "Authorize 80 EUR now, capture or void it later (test Mastercard)",
        "value": {
            "merchant_id": "merchant_test_123",
            "amount": "80.00",
            "currency": "EUR",
            "payment_method": "credit_card",
            "capture_method": "manual",
            "card_data": {
                "card_number": "5555 5555 5555 4444",
                "expiry_month": 6,
                "expiry_year": 2031,
                "cvv": "321",
                "cardholder_name": "Max Mustermann",
            },
            "description": "Hotel reservation 77",
            "metadata": {"reservation": "77"},
        },
    },
    "declined": {
        "summary": "A decline is a 200 with `status: declined` (`insufficient_funds` card)",
        "value": {
            "merchant_id": "merchant_test_123",
            "amount": 1500,
            "currency": "JPY",
            "payment_method": "debit_card",
            "card_data": {
                "card_number": "4000-0000-0000-9995",
                "expiry_month": 1,
                "expiry_year": 2030,
                "cvv": "123",
                "cardholder_name": "Yamada Hanako",
            },
        },
    },
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


async def _json_body(request: Request) -> Any:
    """The body as JSON (``None`` when empty). A route with a body model has parsed it
    already; one without (void) parses it here, and answers malformed JSON the same way:
    400 ``malformed_json``, not a 500."""
    if not await request.body():
        return None
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}]
        ) from None


async def _idempotency(
    runtime: Runtime, request: Request, key: str | None
) -> IdempotencyKey | None:
    if key is None:
        return None
    body = await _json_body(request)
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
        # Only a key stored before v2 needs it: computed if a stored key is compared.
        legacy=lambda: legacy_request_fingerprint(
            secret=secret, method=method, path=path, body=body
        ),
    )


@router.post(
    "/process",
    name="create_payment",
    summary="Process a payment",
    response_model=PaymentResponse,
    responses={
        **_answers(PaymentResponse, "payment, `processing`,", links=_ON_A_PAYMENT_LINKS),
        **problem_responses(*CREATE_PAYMENT_PROBLEMS, notes=_IDEMPOTENT_NOTES),
    },
)
async def process(
    body: Annotated[PaymentRequest, Body(openapi_examples=PAYMENT_REQUEST_EXAMPLES)],
    request: Request,
    merchant: MerchantDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Authorize a card payment and, unless `capture_method` is `manual`, capture it.
    Declines answer 200 with `status: declined`; an unknown bank answer is a 202 with
    `status: processing`."""
    runtime = runtime_of(request)
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
        correlation_id=request_correlation_id(),
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
    name="list_payments",
    response_model=PaymentList,
    responses=problem_responses(
        *LIST_PAYMENTS_PROBLEMS,
        notes={
            422: (
                "One entry per bad query parameter, named as sent (`limit`, `created[gte]`, "
                "`metadata[order_id]`, an unknown or repeated one); a cursor that is not "
                "one of your payments is named too."
            )
        },
    ),
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
    name="get_payment",
    summary="Get a payment",
    response_model=PaymentDetailResponse,
    responses=problem_responses(*GET_PAYMENT_PROBLEMS),
)
async def read(
    runtime: RuntimeDep,
    merchant: MerchantDep,
    transaction_id: str = TransactionIdPath,
) -> Response:
    """A payment with its refunds, oldest first."""
    body = await get_payment(runtime.services, merchant=merchant, transaction_id=transaction_id)
    return Response(body, media_type="application/json")


@router.post(
    "/{transaction_id}/refund",
    name="refund_payment",
    summary="Refund a payment",
    response_model=RefundResponse,
    responses={
        **_answers(RefundResponse, "refund, `pending` (its amount reserved),", links=_REFUND_LINKS),
        **problem_responses(*REFUND_PAYMENT_PROBLEMS, notes=_IDEMPOTENT_NOTES),
    },
)
async def refund(
    request: Request,
    merchant: MerchantDep,
    body: RefundRequest | None = None,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Refund part (`amount`) or all (no `amount`) of what remains of a captured payment."""
    runtime = runtime_of(request)
    body = body or RefundRequest()
    answer = await refund_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        amount=body.amount_decimal,
        reason=body.reason,
        metadata=body.metadata,
        correlation_id=request_correlation_id(),
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)


@router.post(
    "/{transaction_id}/capture",
    name="capture_payment",
    summary="Capture an authorized payment",
    response_model=PaymentResponse,
    responses={
        **_answers(
            PaymentResponse,
            "payment, still `authorized` with its capture pending,",
            links=_CAPTURED_LINKS,
        ),
        **problem_responses(*CAPTURE_PAYMENT_PROBLEMS, notes=_IDEMPOTENT_NOTES),
    },
)
async def capture(
    request: Request,
    merchant: MerchantDep,
    body: CaptureRequest | None = None,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Capture an `authorized` payment (`capture_method: manual`): all of it (no
    `amount`) or part, once; the rest of the authorization is released. Answers the
    payment `captured`, or still `authorized` when the bank refused the capture."""
    runtime = runtime_of(request)
    body = body or CaptureRequest()
    answer = await capture_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        amount=body.amount_decimal,
        correlation_id=request_correlation_id(),
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)


@router.post(
    "/{transaction_id}/void",
    name="void_payment",
    summary="Void an authorized payment",
    response_model=PaymentResponse,
    responses={
        **_answers(
            PaymentResponse, "payment, still `authorized` with its void pending,", links=_READ_LINKS
        ),
        **problem_responses(*VOID_PAYMENT_PROBLEMS, notes=_IDEMPOTENT_NOTES),
    },
)
async def void(
    request: Request,
    merchant: MerchantDep,
    transaction_id: str = TransactionIdPath,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Release an `authorized` payment without capturing it. Answers the payment
    `voided`, or still `authorized` when the bank refused the void."""
    runtime = runtime_of(request)
    answer = await void_payment(
        runtime.services,
        merchant=merchant,
        transaction_id=transaction_id,
        correlation_id=request_correlation_id(),
        idempotency=await _idempotency(runtime, request, idempotency_key),
    )
    return _respond(answer)
