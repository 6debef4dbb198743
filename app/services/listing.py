"""Listing a merchant's payments (docs/api.md, "Listing payments").

A page is one statement (one snapshot), newest first, keyset-paginated on
``(created_at, transaction_id)``: a cursor is a payment of the merchant's, and the page
starts right next to it. Payments recorded while a client pages are newer than any page
it has already read, so they never shift or repeat the older pages it reads next.
"""

from __future__ import annotations

from typing import Any, Final

from app.domain.errors import ValidationFailed
from app.domain.ids import is_transaction_id
from app.domain.merchants import Merchant
from app.services.context import ServiceContext
from app.services.ports import PageCursor, PaymentFilter
from app.services.responses import payment_list_response

DEFAULT_PAGE_SIZE: Final = 10
MAX_PAGE_SIZE: Final = 100
MAX_METADATA_FILTERS: Final = 10
"""How many ``metadata[KEY]`` conditions one listing may combine."""


async def list_payments(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    filters: PaymentFilter,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: PageCursor | None = None,
) -> dict[str, Any]:
    """A page of the merchant's payments that match ``filters``, newest first, as the
    list object: the newest ones, or those right next to ``cursor``.

    Raises:
        ValidationFailed: ``limit`` is outside 1-``MAX_PAGE_SIZE``, there are more than
            ``MAX_METADATA_FILTERS`` metadata conditions, or the cursor is not one of the
            merchant's payments (another merchant's is answered exactly like an unknown
            id: its existence is never revealed).
    """
    merchant.ensure_active()
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}.", field="limit")
    if len(filters.metadata) > MAX_METADATA_FILTERS:
        raise ValidationFailed(
            f"At most {MAX_METADATA_FILTERS} metadata filters.", field="metadata"
        )
    if cursor is not None and not is_transaction_id(cursor.transaction_id):
        raise _unknown_cursor(cursor)  # answered without a query
    page = await ctx.queries.payment_page(
        merchant_id=merchant.merchant_id, filters=filters, limit=limit, cursor=cursor
    )
    if page is None:
        assert cursor is not None  # only a cursor can be unknown
        raise _unknown_cursor(cursor)
    return payment_list_response(page.payments, has_more=page.has_more)


def _unknown_cursor(cursor: PageCursor) -> ValidationFailed:
    """Named after the query parameter the cursor came from."""
    field = "ending_before" if cursor.newer else "starting_after"
    return ValidationFailed("Not the id of one of your payments.", field=field)
