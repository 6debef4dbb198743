"""The in-process bank answers every test card as the one test-card table says."""

from __future__ import annotations

import re
import time

import pytest

from app.adapters.bank import HttpBankGateway, SimulatedBankGateway, build_bank_gateway
from app.core.config import Settings
from app.domain.cards import DECLINE_MESSAGES, TEST_CARDS, BankBehaviour, TestCard
from app.domain.errors import BankUnavailable
from app.services.ports import AuthorizationRequest, BankRefundRequest


def _authorization(card_number: str) -> AuthorizationRequest:
    return AuthorizationRequest(
        transaction_id="txn_simulator_test",
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
            with pytest.raises(BankUnavailable) as caught:
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
    result = await bank.refund(
        BankRefundRequest(
            refund_id="re_1",
            transaction_id="txn_1",
            authorization_code="ABC123",
            amount_minor=500,
            currency="USD",
        )
    )

    assert result.succeeded
    assert result.bank_reference
    assert result.failure_code is None


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
