"""Every filter of the payment listing is served by an index (migration 0006).

Tens of thousands of payments are written in one INSERT ... SELECT, in created_at order
as a live table fills, and ANALYZEd: a quarter belong to one big merchant, the rest to
hundreds of small ones. The statement the adapter runs for each kind of page is
EXPLAINed: it must read ``transactions`` through the index built for its filter, and
never sequentially for any merchant.

Two choices of the planner are left to it, both good: for the big merchant, a created
range may be read through the BRIN index on ``created_at`` (or a merchant index), skipping other
merchants' rows (a fourth of them match); for a small merchant, a metadata filter may be
checked on its hundred-odd rows read through a merchant index. So the created ranges are
asked of a small merchant, and metadata of the big one, where the GIN index matters.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ClauseElement, Executable, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from app.adapters.db.queries import payment_page_statement
from app.domain.payments import PaymentStatus
from app.services.ports import PageCursor, PaymentFilter
from tests.conftest import truncate_all

SMALL_MERCHANTS = 300
PAYMENTS = 40_000
START = datetime(2026, 1, 1, tzinfo=UTC)
SMALL = "merchant_plan_7"
BIG = "merchant_plan_big"
BY_MERCHANT = "ix_transactions_merchant_id_created_at_transaction_id"
BY_STATUS = "ix_transactions_merchant_id_status_created_at_transaction_id"
BY_METADATA = "ix_transactions_metadata"
BY_ID = "pk_transactions"


class Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON)`` of a statement, its parameters bound as the adapter binds
    them."""

    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(Explain)
def _explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A plan node and every node under it."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


async def plan(engine: AsyncEngine, statement: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        raw = (await conn.execute(Explain(statement))).scalar_one()
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(document[0]["Plan"]))


def index_names(nodes: list[dict[str, Any]]) -> set[str]:
    return {node["Index Name"] for node in nodes if "Index Name" in node}


def sequential_scans(nodes: list[dict[str, Any]]) -> list[str]:
    return [node.get("Relation Name", "?") for node in nodes if node["Node Type"] == "Seq Scan"]


@pytest.fixture(autouse=True)
def _empty_tables() -> None:
    """Instead of emptying the tables before each test: only EXPLAIN runs here, on the
    payments ``many_payments`` writes once for the module."""


@pytest.fixture(scope="module")
async def many_payments(engine: AsyncEngine) -> AsyncIterator[None]:
    """PAYMENTS payments, one a minute from START: every fourth is BIG's, the others go
    round SMALL_MERCHANTS merchants. Within each run of 300 payments all share a status
    (a tenth of the runs declined, a fiftieth failed, the rest captured); each payment
    has its own ``order_id`` and a ``channel`` shared by half of them."""
    await truncate_all(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO merchants (merchant_id, name, currencies)"
                " SELECT 'merchant_plan_' || m, 'Plan ' || m, ARRAY['USD']"
                " FROM generate_series(0, :last) AS m"
                " UNION ALL SELECT :big, 'Big', ARRAY['USD']"
            ),
            {"last": SMALL_MERCHANTS - 1, "big": BIG},
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (transaction_id, merchant_id, amount_minor, currency,"
                " status, payment_method, card_brand, card_last4, card_exp_month,"
                " card_exp_year, card_fingerprint, card_ciphertext, metadata, created_at,"
                " updated_at)"
                " SELECT 'txn_' || md5(i::text),"
                " CASE WHEN i % 4 = 0 THEN :big ELSE 'merchant_plan_' || (i % :small) END,"
                " 1000 + i, 'USD',"
                " CASE WHEN i / 300 % 10 = 0 THEN 'declined'"
                " WHEN i / 300 % 50 = 1 THEN 'failed' ELSE 'captured' END,"
                " 'credit_card', 'visa', '4242', 12, 2030, repeat('f', 64), 'ciphertext',"
                " jsonb_build_object('order_id', 'order-' || i,"
                " 'channel', CASE WHEN i % 2 = 0 THEN 'web' ELSE 'app' END),"
                " CAST(:start AS timestamptz) + i * interval '1 minute',"
                " CAST(:start AS timestamptz) + i * interval '1 minute'"
                " FROM generate_series(1, :payments) AS i"
            ),
            {"big": BIG, "small": SMALL_MERCHANTS, "payments": PAYMENTS, "start": START},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE transactions"))
    yield
    await truncate_all(engine)


async def a_payment_of(engine: AsyncEngine, merchant_id: str, *, offset: int) -> str:
    async with engine.connect() as conn:
        return str(
            (
                await conn.execute(
                    text(
                        "SELECT transaction_id FROM transactions WHERE merchant_id = :m"
                        " ORDER BY created_at DESC, transaction_id DESC OFFSET :n LIMIT 1"
                    ),
                    {"m": merchant_id, "n": offset},
                )
            ).scalar_one()
        )


PAGES: dict[str, tuple[str, PaymentFilter, str]] = {
    "no filter": (SMALL, PaymentFilter(), BY_MERCHANT),
    "status": (SMALL, PaymentFilter(status=PaymentStatus.DECLINED), BY_STATUS),
    "status, big merchant": (BIG, PaymentFilter(status=PaymentStatus.FAILED), BY_STATUS),
    "created range": (
        SMALL,
        PaymentFilter(created_gte=START + timedelta(days=3), created_lt=START + timedelta(days=4)),
        BY_MERCHANT,
    ),
    "created after": (SMALL, PaymentFilter(created_gt=START + timedelta(days=20)), BY_MERCHANT),
    "created before": (SMALL, PaymentFilter(created_lte=START + timedelta(days=2)), BY_MERCHANT),
    "status and created range": (
        SMALL,
        PaymentFilter(
            status=PaymentStatus.FAILED,
            created_gte=START + timedelta(days=3),
            created_lt=START + timedelta(days=10),
        ),
        BY_STATUS,
    ),
    "metadata": (BIG, PaymentFilter(metadata={"order_id": "order-20108"}), BY_METADATA),
    "metadata, two members": (
        BIG,
        PaymentFilter(metadata={"order_id": "order-20108", "channel": "web"}),
        BY_METADATA,
    ),
}


@pytest.mark.usefixtures("many_payments")
@pytest.mark.parametrize("kind", list(PAGES))
async def test_every_filter_reads_through_its_index(engine: AsyncEngine, kind: str) -> None:
    merchant_id, filters, expected = PAGES[kind]

    nodes = await plan(
        engine,
        payment_page_statement(merchant_id=merchant_id, filters=filters, limit=20, cursor=None),
    )

    assert sequential_scans(nodes) == [], nodes
    assert expected in index_names(nodes), nodes


CURSOR_PAGES = {
    "no filter": (PaymentFilter(), BY_MERCHANT),
    "status": (PaymentFilter(status=PaymentStatus.CAPTURED), BY_STATUS),
}


@pytest.mark.usefixtures("many_payments")
@pytest.mark.parametrize("newer", [False, True], ids=["starting_after", "ending_before"])
@pytest.mark.parametrize("kind", list(CURSOR_PAGES))
async def test_a_cursor_is_found_by_id_and_bounds_the_scan_of_the_listing_index(
    engine: AsyncEngine, newer: bool, kind: str
) -> None:
    filters, listing_index = CURSOR_PAGES[kind]
    cursor = PageCursor(await a_payment_of(engine, SMALL, offset=60), newer=newer)

    nodes = await plan(
        engine,
        payment_page_statement(merchant_id=SMALL, filters=filters, limit=20, cursor=cursor),
    )

    assert sequential_scans(nodes) == [], nodes
    assert {BY_ID, listing_index} <= index_names(nodes), nodes
    (page_scan,) = [n for n in nodes if n.get("Index Name") == listing_index]
    # The cursor bounds the index scan itself: no row before it is read and dropped.
    assert "ROW(created_at, (transaction_id)::text)" in page_scan["Index Cond"], page_scan


@pytest.mark.usefixtures("many_payments")
@pytest.mark.parametrize("merchant_id", [SMALL, BIG], ids=["small", "big"])
@pytest.mark.parametrize("kind", [*PAGES, "cursor"])
async def test_no_page_of_any_merchant_reads_the_table_sequentially(
    engine: AsyncEngine, kind: str, merchant_id: str
) -> None:
    filters = PAGES[kind][1] if kind in PAGES else PaymentFilter()
    cursor = None
    if kind == "cursor":
        cursor = PageCursor(await a_payment_of(engine, merchant_id, offset=50))

    nodes = await plan(
        engine,
        payment_page_statement(merchant_id=merchant_id, filters=filters, limit=20, cursor=cursor),
    )

    assert sequential_scans(nodes) == [], nodes
    assert index_names(nodes), nodes


@pytest.mark.usefixtures("many_payments")
async def test_the_sample_is_big_enough_for_the_planner_to_care(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = 'transactions'")
            )
        ).scalar_one()

    assert rows >= PAYMENTS * 0.9
