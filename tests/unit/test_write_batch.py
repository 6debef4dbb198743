"""The write batch: one statement per unit of work, and a guard that decides all of it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects import postgresql

from app.adapters.db.repositories import AUDIT_LOG, PAYMENTS, REFUNDS
from app.adapters.db.write_batch import WriteBatch


def sql(batch: WriteBatch) -> str:
    compiled = batch.statement().statement.compile(dialect=postgresql.dialect())
    return re.sub(r"\s+", " ", str(compiled))


def test_nothing_staged_has_no_statement() -> None:
    with pytest.raises(ValueError, match="nothing is staged"):
        WriteBatch().statement()


def test_unguarded_writes_are_the_ctes_of_the_last_one() -> None:
    batch = WriteBatch()
    batch.insert(REFUNDS, {"refund_id": "re_1"})
    batch.insert(AUDIT_LOG, {"actor": "a"})
    statement = batch.statement()
    assert not statement.guarded
    text = sql(batch)
    assert text.startswith("WITH w0 AS (INSERT INTO refunds")
    assert "INSERT INTO audit_log" in text
    assert statement.params == {"w0_refund_id": "re_1", "w1_actor": "a"}


def test_a_guarded_update_goes_first_and_every_other_part_waits_for_it() -> None:
    batch = WriteBatch()
    batch.insert(AUDIT_LOG, {"actor": "a"})
    batch.update(
        PAYMENTS,
        where={"transaction_id": "txn_1", "status": "processing"},
        values={"status": "captured"},
        guard=True,
    )
    batch.update(REFUNDS, where={"refund_id": "re_1"}, values={"status": "succeeded"})
    statement = batch.statement()
    assert statement.guarded
    text = sql(batch)
    assert text.startswith("WITH w0 AS (UPDATE transactions SET status=")
    assert "RETURNING 1" in text or "RETURNING %(param_1)s" in text
    # the insert and the other update only happen when the guard matched a row
    assert text.count("EXISTS (SELECT") == 2
    assert text.endswith("SELECT count(*) AS count_1 FROM w0")
    assert statement.params["w0_where_status"] == "processing"
    assert statement.params["w1_actor"] == "a"


def test_a_batch_has_at_most_one_guard() -> None:
    batch = WriteBatch()
    batch.update(PAYMENTS, where={"transaction_id": "a"}, values={"status": "x"}, guard=True)
    with pytest.raises(ValueError, match="at most one guard"):
        batch.update(PAYMENTS, where={"transaction_id": "b"}, values={"status": "y"}, guard=True)


def test_statements_of_the_same_shape_are_built_once() -> None:
    def one(transaction_id: str) -> object:
        batch = WriteBatch()
        batch.insert(REFUNDS, {"refund_id": transaction_id})
        batch.update(PAYMENTS, where={"transaction_id": transaction_id}, values={"status": "x"})
        return batch.statement().statement

    assert one("txn_a") is one("txn_b")
