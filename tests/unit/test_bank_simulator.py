"""The in-process bank answers every test card as the one test-card table says, and
remembers what it decided, like a real bank."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from app.adapters.bank import HttpBankGateway, SimulatedBankGateway, build_bank_gateway
from app.core.config import Settings
from app.domain.cards import DECLINE_MESSAGES, TEST_CARDS, BankBehaviour, TestCard
from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankRefundRequest,
)

ERROR_CARD = "4000000000000119"
TIMEOUT_CARD = "4000000000000903"


def _authorization(card_number: str, transaction_id: str | None = None) -> AuthorizationRequest:
    return AuthorizationRequest(
        transaction_id=transaction_id or f"txn_sim_{uuid.uuid4().hex}",
        merchant_id="merchant_test_123",
        amount_minor=9999,
        currency="USD",
        card_number=card_number,
        cvv="1234" if card_number.startswith(("34", "37")) else "123",
        expiry_month=12,
        expiry_year=2030,
        cardholder_name="Jane Doe",
    )


@pytest.fixture
def bank() -> SimulatedBankGateway:
    return SimulatedBankGateway()


@pytest.mark.parametrize("card", TEST_CARDS, ids=lambda card: f"{card.number}-{card.behaviour}")
async def test_every_test_card_is_answered_as_the_table_says(
    bank: SimulatedBankGateway, card: TestCard
) -> None:
    request = _authorization(card.number)
    match card.behaviour:
        case BankBehaviour.APPROVE:
            result = await bank.authorize(request)
            assert result.approved
            assert result.authorization_code is not None
            assert re.fullmatch(r"[A-Z0-9]{6}", result.authorization_code)
            assert result.decline_code is None
        case BankBehaviour.DECLINE:
            result = await bank.authorize(request)
            assert not result.approved
            assert result.authorization_code is None
            assert result.decline_code == card.code
            assert card.code is not None
            assert result.decline_message == DECLINE_MESSAGES[card.code]
        case BankBehaviour.ERROR | BankBehaviour.TIMEOUT:
            started = time.monotonic()
            with pytest.raises(BankAnswerUnknown) as caught:
                await bank.authorize(request)
            assert caught.value.failure_code == card.code
            # The timeout card fails at once in-process; only the HTTP bank makes it wait.
            assert time.monotonic() - started < 1.0


async def test_spaced_test_card_number_gets_the_same_answer(bank: SimulatedBankGateway) -> None:
    result = await bank.authorize(_authorization("4000 0000 0000 9995"))

    assert result.decline_code == "insufficient_funds"


async def test_any_other_valid_card_is_approved(bank: SimulatedBankGateway) -> None:
    result = await bank.authorize(_authorization("6011111111111117"))

    assert result.approved
    assert result.authorization_code is not None


async def test_authorization_codes_differ_between_payments(bank: SimulatedBankGateway) -> None:
    codes = {
        (await bank.authorize(_authorization("4242424242424242"))).authorization_code
        for _ in range(20)
    }

    assert len(codes) > 1


async def test_refunds_succeed_with_a_bank_reference(bank: SimulatedBankGateway) -> None:
    result = await bank.refund(_refund("re_1"))

    assert result.succeeded
    assert result.bank_reference
    assert result.failure_code is None


def _refund(refund_id: str) -> BankRefundRequest:
    return BankRefundRequest(
        refund_id=refund_id,
        transaction_id="txn_1",
        authorization_code="ABC123",
        amount_minor=500,
        currency="USD",
    )


# -- memory: idempotent like a real bank, and the lookups answer from it -----------------------


async def test_the_same_transaction_id_gets_the_first_decision(
    bank: SimulatedBankGateway,
) -> None:
    first = await bank.authorize(_authorization("4242424242424242", "txn_same"))
    again = await bank.authorize(_authorization("4242424242424242", "txn_same"))
    # Even if the retry carried another card, the bank answers what it decided.
    other_card = await bank.authorize(_authorization("4000000000000002", "txn_same"))

    assert first.approved
    assert again == first
    assert other_card == first
    assert await bank.authorization_status("txn_same") == first


async def test_a_decline_is_remembered(bank: SimulatedBankGateway) -> None:
    declined = await bank.authorize(_authorization("4000000000009995", "txn_declined"))

    assert await bank.authorization_status("txn_declined") == declined
    assert declined == AuthorizationResult(
        approved=False,
        decline_code="insufficient_funds",
        decline_message=DECLINE_MESSAGES["insufficient_funds"],
    )


async def test_the_error_card_keeps_no_record(bank: SimulatedBankGateway) -> None:
    for _ in range(2):
        with pytest.raises(BankAnswerUnknown) as caught:
            await bank.authorize(_authorization(ERROR_CARD, "txn_error"))
        assert caught.value.failure_code == "processing_error"

    assert await bank.authorization_status("txn_error") is None


async def test_the_timeout_card_is_approved_but_the_answer_is_lost(
    bank: SimulatedBankGateway,
) -> None:
    with pytest.raises(BankAnswerUnknown) as caught:
        await bank.authorize(_authorization(TIMEOUT_CARD, "txn_slow"))
    assert caught.value.failure_code == "bank_timeout"

    decided = await bank.authorization_status("txn_slow")

    assert decided is not None
    assert decided.approved
    assert decided.authorization_code is not None
    assert re.fullmatch(r"[A-Z0-9]{6}", decided.authorization_code)
    # A retry times out again, and the decision stays the first one.
    with pytest.raises(BankAnswerUnknown):
        await bank.authorize(_authorization(TIMEOUT_CARD, "txn_slow"))
    assert await bank.authorization_status("txn_slow") == decided


async def test_each_timeout_card_payment_gets_its_own_code(bank: SimulatedBankGateway) -> None:
    codes = set()
    for index in range(20):
        with pytest.raises(BankAnswerUnknown):
            await bank.authorize(_authorization(TIMEOUT_CARD, f"txn_slow_{index}"))
        decided = await bank.authorization_status(f"txn_slow_{index}")
        assert decided is not None
        codes.add(decided.authorization_code)

    assert len(codes) > 1


async def test_lookups_of_unknown_ids_find_no_record(bank: SimulatedBankGateway) -> None:
    assert await bank.authorization_status("txn_never_seen") is None
    assert await bank.refund_status("re_never_seen") is None


async def test_a_refund_is_remembered_and_idempotent(bank: SimulatedBankGateway) -> None:
    first = await bank.refund(_refund("re_same"))
    again = await bank.refund(_refund("re_same"))
    other = await bank.refund(_refund("re_other"))

    assert again == first
    assert other.bank_reference != first.bank_reference
    assert await bank.refund_status("re_same") == first
    assert await bank.refund_status("re_other") == other


async def test_the_memory_is_bounded_and_forgets_the_least_recently_used() -> None:
    bank = SimulatedBankGateway(memory_entries=2)
    for transaction_id in ("txn_a", "txn_b"):
        await bank.authorize(_authorization("4242424242424242", transaction_id))
    await bank.authorization_status("txn_a")  # used again: txn_b is now the oldest
    await bank.authorize(_authorization("4242424242424242", "txn_c"))
    for refund_id in ("re_a", "re_b", "re_c"):
        await bank.refund(_refund(refund_id))

    assert await bank.authorization_status("txn_a") is not None
    assert await bank.authorization_status("txn_b") is None
    assert await bank.authorization_status("txn_c") is not None
    assert await bank.refund_status("re_a") is None
    assert await bank.refund_status("re_c") is not None


async def test_simulators_do_not_share_their_memory() -> None:
    one, other = SimulatedBankGateway(), SimulatedBankGateway()
    decided = await one.authorize(_authorization("4242424242424242", "txn_one"))

    assert await one.authorization_status("txn_one") == decided
    assert await other.authorization_status("txn_one") is None


async def test_simulator_is_always_healthy_with_a_closed_circuit(
    bank: SimulatedBankGateway,
) -> None:
    assert bank.circuit_state == "closed"
    assert await bank.ping()
    await bank.aclose()


async def test_build_bank_gateway_uses_the_simulator_without_a_bank_url() -> None:
    gateway = build_bank_gateway(Settings(bank_api_url=None))

    assert isinstance(gateway, SimulatedBankGateway)


async def test_build_bank_gateway_uses_http_when_a_bank_url_is_set() -> None:
    gateway = build_bank_gateway(Settings(bank_api_url="http://127.0.0.1:1"))
    try:
        assert isinstance(gateway, HttpBankGateway)
        assert gateway.circuit_state == "closed"
    finally:
        await gateway.aclose()
