"""The generated client (clients/python, `make client`) drives the real service.

A uvicorn process of the service (the in-process bank simulator, as `make run`; the test
database) is called over HTTP only through ``payment_service_client``: the typed models
go out, the typed answers -- payments, pages, refunds and problems -- come back, as a
merchant's integration would see them. What the client cannot do is said here too: it
sends a ``metadata[KEY]`` filter as a plain ``KEY`` parameter (openapi-python-client has
no ``deepObject`` style), and the API refuses that by name.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from payment_service_client import AuthenticatedClient
from payment_service_client.api.payments import (
    capture_payment,
    create_payment,
    get_payment,
    list_payments,
    refund_payment,
    void_payment,
)
from payment_service_client.models import (
    CaptureMethod,
    CaptureRequest,
    CardRequest,
    ListPaymentsMetadata,
    PaymentDetailResponse,
    PaymentList,
    PaymentMethod,
    PaymentRequest,
    PaymentRequestCurrency,
    PaymentRequestMetadata,
    PaymentResponse,
    PaymentStatus,
    Problem,
    ProblemCode,
    RefundRequest,
    RefundResponse,
    RefundStatus,
)

from app.core.config import Settings
from tests.conftest import MerchantCredentials
from tests.e2e.service_process import ServiceProcess, running_service, service_env


@pytest.fixture(scope="module")
def service(settings: Settings, migrated_database: str) -> Iterator[ServiceProcess]:
    """The service for the whole module, on the bank simulator (its tables are emptied
    before each test; each test has a merchant of its own)."""
    env = service_env(
        settings.database_url, bank_api_url="", purger_enabled="false", log_level="WARNING"
    )
    with running_service(env, workers=1, name="generated-client") as process:
        yield process


@pytest.fixture
async def client_merchant(create_merchant: Callable[..., Any]) -> MerchantCredentials:
    suffix = uuid.uuid4().hex[:12]
    creds: MerchantCredentials = await create_merchant(
        merchant_id=f"merchant_client_{suffix}", api_key=f"sk_test_client_{suffix}_abcdefgh"
    )
    return creds


@pytest.fixture
async def client(
    service: ServiceProcess, client_merchant: MerchantCredentials
) -> AsyncIterator[AuthenticatedClient]:
    async with AuthenticatedClient(
        base_url=service.base_url, token=client_merchant.api_key, raise_on_unexpected_status=True
    ) as authenticated:
        yield authenticated


def payment(
    merchant: MerchantCredentials,
    amount: str = "99.99",
    *,
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC,
    card_number: str = "4242 4242 4242 4242",
    order: str = "1234",
) -> PaymentRequest:
    return PaymentRequest(
        merchant_id=merchant.merchant_id,
        amount=amount,
        currency=PaymentRequestCurrency.USD,
        payment_method=PaymentMethod.CREDIT_CARD,
        capture_method=capture_method,
        card_data=CardRequest(
            card_number=card_number,
            expiry_month=12,
            expiry_year=2031,
            cvv="123",
            cardholder_name="Jane Doe",
        ),
        description=f"Order {order}",
        metadata=PaymentRequestMetadata.from_dict({"order_id": order}),
    )


async def create(client: AuthenticatedClient, body: PaymentRequest) -> PaymentResponse:
    created = await create_payment.asyncio(client=client, body=body, idempotency_key=new_key())
    assert isinstance(created, PaymentResponse), created
    return created


def new_key() -> str:
    return f"client-{uuid.uuid4().hex}"


async def test_a_payment_is_made_read_and_refunded_with_typed_answers(
    client: AuthenticatedClient, client_merchant: MerchantCredentials
) -> None:
    made = await create(client, payment(client_merchant))

    assert made.status is PaymentStatus.CAPTURED
    assert (made.amount, made.currency, made.captured_amount) == ("99.99", "USD", "99.99")
    assert made.card.last4 == "4242"
    assert made.metadata.to_dict() == {"order_id": "1234"}
    assert made.created_at.tzinfo is not None

    refund = await refund_payment.asyncio(
        made.transaction_id,
        client=client,
        body=RefundRequest(amount="40.00", reason="customer request"),
        idempotency_key=new_key(),
    )
    assert isinstance(refund, RefundResponse), refund
    assert (refund.status, refund.amount) == (RefundStatus.SUCCEEDED, "40.00")

    read = await get_payment.asyncio(made.transaction_id, client=client)
    assert isinstance(read, PaymentDetailResponse), read
    assert read.status is PaymentStatus.PARTIALLY_REFUNDED
    assert (read.refunded_amount, read.refundable_amount) == ("40.00", "59.99")
    assert [r.refund_id for r in read.refunds] == [refund.refund_id]


async def test_a_retry_with_the_same_key_is_answered_as_a_replay(
    client: AuthenticatedClient, client_merchant: MerchantCredentials
) -> None:
    key, body = new_key(), payment(client_merchant)

    first = await create_payment.asyncio_detailed(client=client, body=body, idempotency_key=key)
    again = await create_payment.asyncio_detailed(client=client, body=body, idempotency_key=key)

    assert isinstance(first.parsed, PaymentResponse)
    assert isinstance(again.parsed, PaymentResponse)
    assert again.parsed.transaction_id == first.parsed.transaction_id
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["X-Correlation-ID"]


async def test_an_authorization_is_captured_in_part_or_voided(
    client: AuthenticatedClient, client_merchant: MerchantCredentials
) -> None:
    manual = CaptureMethod.MANUAL
    to_capture = await create(client, payment(client_merchant, "80.00", capture_method=manual))
    to_void = await create(client, payment(client_merchant, "20.00", capture_method=manual))
    assert (to_capture.status, to_void.status) == (PaymentStatus.AUTHORIZED,) * 2

    captured = await capture_payment.asyncio(
        to_capture.transaction_id,
        client=client,
        body=CaptureRequest(amount="50.00"),
        idempotency_key=new_key(),
    )
    voided = await void_payment.asyncio(to_void.transaction_id, client=client)

    assert isinstance(captured, PaymentResponse), captured
    assert (captured.status, captured.captured_amount) == (PaymentStatus.CAPTURED, "50.00")
    assert captured.refundable_amount == "50.00"
    assert isinstance(voided, PaymentResponse), voided
    assert voided.status is PaymentStatus.VOIDED
    again = await void_payment.asyncio(to_capture.transaction_id, client=client)
    assert isinstance(again, Problem), again
    assert (again.status, again.code) == (409, ProblemCode.PAYMENT_NOT_VOIDABLE)


async def test_pages_are_followed_with_a_cursor_and_filtered_by_status_and_time(
    client: AuthenticatedClient, client_merchant: MerchantCredentials
) -> None:
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    made = [await create(client, payment(client_merchant, order=str(n))) for n in range(3)]
    declined = await create(client, payment(client_merchant, card_number="4000000000000002"))
    assert declined.status is PaymentStatus.DECLINED

    first = await list_payments.asyncio(client=client, limit=2, status=PaymentStatus.CAPTURED)
    assert isinstance(first, PaymentList), first
    rest = await list_payments.asyncio(
        client=client,
        limit=2,
        status=PaymentStatus.CAPTURED,
        starting_after=first.data[-1].transaction_id,
    )
    assert isinstance(rest, PaymentList), rest

    newest_first = [p.transaction_id for p in reversed(made)]
    assert (first.object_, first.url) == ("list", "/api/v1/payments")
    assert [p.transaction_id for p in first.data + rest.data] == newest_first
    assert (first.has_more, rest.has_more) == (True, False)
    since = await list_payments.asyncio(client=client, createdgte=before, limit=100)
    assert isinstance(since, PaymentList), since
    assert len(since.data) == 4
    later = await list_payments.asyncio(
        client=client, createdgt=datetime.datetime.now(datetime.UTC)
    )
    assert isinstance(later, PaymentList), later
    assert later.data == []


async def test_errors_come_back_as_typed_problems(
    client: AuthenticatedClient, client_merchant: MerchantCredentials, service: ServiceProcess
) -> None:
    made = await create(client, payment(client_merchant, "10.00"))

    unknown = await get_payment.asyncio_detailed(f"txn_{uuid.uuid4().hex}", client=client)
    over = await refund_payment.asyncio(
        made.transaction_id,
        client=client,
        body=RefundRequest(amount="10.01"),
        idempotency_key=new_key(),
    )
    async with AuthenticatedClient(base_url=service.base_url, token="sk_test_nobody") as stranger:
        refused = await get_payment.asyncio(made.transaction_id, client=stranger)

    assert unknown.status_code == 404
    assert isinstance(unknown.parsed, Problem)
    assert unknown.parsed.code is ProblemCode.PAYMENT_NOT_FOUND
    assert unknown.parsed.correlation_id == unknown.headers["X-Correlation-ID"]
    assert isinstance(over, Problem), over
    assert (over.code, over.refundable_amount) == (ProblemCode.REFUND_EXCEEDS_BALANCE, "10.00")
    assert isinstance(refused, Problem), refused
    assert (refused.status, refused.code) == (401, ProblemCode.UNAUTHORIZED)


async def test_a_metadata_filter_is_not_sent_as_the_api_names_it(
    client: AuthenticatedClient, client_merchant: MerchantCredentials
) -> None:
    await create(client, payment(client_merchant, order="77"))

    answer = await list_payments.asyncio(
        client=client, metadata=ListPaymentsMetadata.from_dict({"order_id": "77"})
    )

    # openapi-python-client sends `order_id=77`, not `metadata[order_id]=77`: the API says
    # which parameter it does not know (docs/api.md, "The generated client").
    assert isinstance(answer, Problem), answer
    assert answer.code is ProblemCode.VALIDATION_ERROR
    assert [e.field for e in answer.errors or []] == ["order_id"]
