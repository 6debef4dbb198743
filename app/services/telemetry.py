"""Custom APM spans for the payment flow: ``payment.process`` and ``refund.process`` and
the steps under them (see docs/observability.md for the tree).

:func:`span` opens a child of whatever span is active (the request's, in the API) when
tracing is on, and costs one function call when it is off. An exception leaving the
``with`` block marks the span as an error. Tags describe the business outcome (merchant,
currency, status, decline and failure codes, card brand); card numbers, CVVs and card
digits never go on a span, and :func:`span` refuses tag names that say they would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from app.core.tracing import active_tracer, context_from_headers

if TYPE_CHECKING:
    from ddtrace.trace import Span

TagValue = str | int | None

FORBIDDEN_TAG_WORDS: Final = frozenset(
    {"pan", "number", "cvv", "cvc", "last4", "holder", "cardholder"}
)
"""Tag names with any of these words (split on ``.`` and ``_``) are refused: card data
stays out of traces."""


class FlowSpan:
    """One step of the payment flow, as the services tag it (a no-op when not traced)."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def tag(self, **tags: TagValue) -> None:
        """Set tags; ``None`` values are skipped."""
        if self._span is None:
            return
        for key, value in tags.items():
            if value is None:
                continue
            _check_tag_name(key)
            self._span.set_tag(key, str(value))


_NOT_TRACED: Final = FlowSpan(None)


def _check_tag_name(key: str) -> None:
    words = set(key.lower().replace(".", "_").split("_"))
    if words & FORBIDDEN_TAG_WORDS:
        raise ValueError(f"span tag {key!r} would carry card data")


@contextmanager
def span(
    name: str, *, links_to: Mapping[str, str] | None = None, **tags: TagValue
) -> Iterator[FlowSpan]:
    """Trace a step of the flow as ``name`` (also its resource), with these tags; with
    ``links_to``, trace headers (a Kafka message's), the span links to their trace."""
    tracer = active_tracer()
    if tracer is None:
        yield _NOT_TRACED
        return
    with tracer.trace(name, resource=name) as current:
        if links_to and (linked := context_from_headers(links_to)) is not None:
            current.link_span(linked, attributes={"link.kind": "event"})
        flow = FlowSpan(current)
        flow.tag(**tags)
        yield flow
