"""Staged writes: a unit of work's new rows and keyed updates, sent as one statement.

Committing a payment writes four rows -- the payment, its outbox event, its audit entry
and its idempotency record. Sent one by one between ``BEGIN`` and ``COMMIT`` that is six
round trips and an ORM flush; sent as the data-modifying CTEs of a single statement it is
one round trip, and a single statement is atomic on its own. PostgreSQL runs every part
of such a statement against the same snapshot and checks constraints (foreign keys
included) at its end, so the parts may reference each other's rows but none may depend
on another's *effects* being visible -- which inserts of new rows and updates of other
tables never do.

Statements are built once per *shape* (which tables, which columns) with bound
parameters, so SQLAlchemy's compiled cache is hit on every later commit instead of
rebuilding and re-hashing the clauses per request.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Column, Table, bindparam, insert, inspect, update
from sqlalchemy.sql.dml import Insert, Update

from app.adapters.db.models import Base

_STATEMENT_CACHE_MAX = 256
"""Distinct write shapes kept (a handful in practice: payment, refund, refusal, admin)."""


_Shape = tuple[Table, tuple[str, ...], tuple[str, ...]]
"""What a write's statement depends on: its table, value columns and key columns."""


@dataclass(frozen=True, slots=True)
class _Write:
    table: Table
    values: tuple[tuple[str, Any], ...]
    where: tuple[tuple[str, Any], ...] = ()

    @property
    def shape(self) -> _Shape:
        return (
            self.table,
            tuple(key for key, _ in self.values),
            tuple(key for key, _ in self.where),
        )


@functools.cache
def _mapped_columns(cls: type[Base]) -> tuple[tuple[str, Column[Any]], ...]:
    """(attribute name, column) for every mapped column of an ORM class."""
    mapper = inspect(cls)
    columns = tuple((prop.key, cast(Column[Any], prop.columns[0])) for prop in mapper.column_attrs)
    for attribute, column in columns:
        if column.default is not None:
            # A staged insert sends only what is set; a Python-side default would be lost.
            raise TypeError(
                f"{cls.__name__}.{attribute} has a Python-side default; staged inserts "
                "rely on server defaults only"
            )
    return columns


def row_values(row: Base) -> tuple[tuple[str, Any], ...]:
    """The column values set on a new ORM object (unset columns keep their server default)."""
    state = vars(row)
    return tuple(
        (column.key, state[attribute])
        for attribute, column in _mapped_columns(type(row))
        if attribute in state
    )


class StagedWrites:
    """Inserts of new rows and keyed updates, in the order they were staged."""

    def __init__(self) -> None:
        self._writes: list[_Write] = []

    def __bool__(self) -> bool:
        return bool(self._writes)

    def insert(self, row: Base) -> None:
        """Stage the insert of a new ORM object (it stays transient: no identity map)."""
        self._writes.append(_Write(cast(Table, row.__table__), row_values(row)))

    def update(self, table: Table, *, where: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        """Stage ``UPDATE table SET values WHERE`` every ``where`` column equals its value."""
        self._writes.append(_Write(table, tuple(values.items()), tuple(where.items())))

    def clear(self) -> None:
        """Forget everything staged (it was written, or the unit of work rolled back)."""
        self._writes.clear()

    def statement(self) -> tuple[Insert | Update, dict[str, Any]]:
        """One statement doing every staged write, and its parameters."""
        if not self._writes:
            raise ValueError("nothing is staged")
        statement = _combined_statement(tuple(write.shape for write in self._writes))
        params: dict[str, Any] = {}
        for index, write in enumerate(self._writes):
            for key, value in write.values:
                params[f"w{index}_{key}"] = value
            for key, value in write.where:
                params[f"w{index}_where_{key}"] = value
        return statement, params


@functools.lru_cache(maxsize=_STATEMENT_CACHE_MAX)
def _combined_statement(shapes: tuple[_Shape, ...]) -> Insert | Update:
    *leading, last = (_single_statement(index, *shape) for index, shape in enumerate(shapes))
    if not leading:
        return last
    return last.add_cte(*(part.cte(f"w{index}") for index, part in enumerate(leading)))


def _single_statement(
    index: int, table: Table, value_keys: tuple[str, ...], where_keys: tuple[str, ...]
) -> Insert | Update:
    columns = table.c
    values = {
        columns[key]: bindparam(f"w{index}_{key}", type_=columns[key].type) for key in value_keys
    }
    if not where_keys:
        return insert(table).values(values)
    conditions = [
        columns[key] == bindparam(f"w{index}_where_{key}", type_=columns[key].type)
        for key in where_keys
    ]
    return update(table).where(*conditions).values(values)
