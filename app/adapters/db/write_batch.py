"""A unit of work's writes -- inserts of new rows and keyed updates -- sent as one statement.

Committing a payment writes several rows: the payment, its outbox event, its audit entry,
its idempotency answer. Sent one by one between ``BEGIN`` and ``COMMIT`` that is several
round trips; sent as the data-modifying CTEs of a single statement it is one, and a
single statement is atomic on its own. PostgreSQL runs every part of such a statement
against the same snapshot and checks constraints (foreign keys included) at its end, so
the parts may reference each other's rows but none may depend on another's *effects*
being visible -- which inserts of new rows and updates of other tables never do.

A write may carry an *expectation* (``UPDATE ... WHERE status = 'processing'``), or be a
registered conditional statement (the ``INSERT ... ON CONFLICT`` that claims an
idempotency key): it then becomes the batch's guard, every other part runs only if the
guard matched a row, and the statement returns how many it matched -- so "someone else
changed it first" or "the key is taken" writes nothing at all and is reported as
:class:`~app.services.ports.ConcurrentUpdate`.

A part never sees the rows another part of the same statement inserts (they share one
snapshot): a row is written whole by the one part that creates it.

Statements are built once per *shape* (which tables, which columns, which part guards)
with bound parameters, so SQLAlchemy's compiled cache is hit on every later commit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import CTE

_ONE: ColumnClause[Any] = literal_column("1")

_STATEMENT_CACHE_MAX = 256
"""Distinct write shapes kept (a handful in practice: payment, settlement, refund, admin)."""

_Shape = tuple[Table | str, tuple[str, ...], tuple[str, ...], bool, bool]
"""What a write's statement depends on: its table (or the name of a registered guard),
value columns, key columns, whether it is the guard, and whether it deletes."""

_REGISTERED_GUARDS: dict[str, Insert | Update] = {}


def register_guard(name: str, statement: Insert | Update) -> str:
    """Register a conditional statement (``... RETURNING`` one row when it applies) that
    :meth:`WriteBatch.guard_with` can make the condition of a batch; returns ``name``."""
    if _REGISTERED_GUARDS.setdefault(name, statement) is not statement:
        raise ValueError(f"a different guard is already registered as {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class _Write:
    table: Table | str
    values: tuple[tuple[str, Any], ...]
    where: tuple[tuple[str, Any], ...] = ()
    guard: bool = False
    delete: bool = False

    @property
    def shape(self) -> _Shape:
        return (
            self.table,
            tuple(key for key, _ in self.values),
            tuple(key for key, _ in self.where),
            self.guard,
            self.delete,
        )


@dataclass(frozen=True, slots=True)
class BatchStatement:
    """The one statement of a batch, its parameters, and whether a guard decides it."""

    statement: Executable
    params: dict[str, Any]
    guarded: bool


class WriteBatch:
    """Inserts of new rows and keyed updates, in the order they were added."""

    def __init__(self) -> None:
        self._writes: list[_Write] = []

    def __bool__(self) -> bool:
        return bool(self._writes)

    def insert(self, table: Table, values: Mapping[str, Any]) -> None:
        """Add the insert of a new row; columns not given keep their server default."""
        self._writes.append(_Write(table, tuple(values.items())))

    def update(
        self,
        table: Table,
        *,
        where: Mapping[str, Any],
        values: Mapping[str, Any],
        guard: bool = False,
    ) -> None:
        """Add ``UPDATE table SET values WHERE`` every ``where`` column equals its value.

        With ``guard``, the whole batch is written only if this update matches a row (at
        most one guard per batch).
        """
        self._check_one_guard(guard)
        self._writes.append(_Write(table, tuple(values.items()), tuple(where.items()), guard))

    def delete(self, table: Table, *, where: Mapping[str, Any]) -> None:
        """Add ``DELETE FROM table WHERE`` every ``where`` column equals its value."""
        self._writes.append(_Write(table, (), tuple(where.items()), delete=True))

    def guard_with(self, name: str, params: Mapping[str, Any]) -> None:
        """Make the registered statement ``name`` (:func:`register_guard`) the batch's
        guard, with its own bound parameters."""
        if name not in _REGISTERED_GUARDS:
            raise ValueError(f"no guard is registered as {name!r}")
        self._check_one_guard(True)
        self._writes.append(_Write(name, tuple(params.items()), guard=True))

    def _check_one_guard(self, guard: bool) -> None:
        if guard and any(write.guard for write in self._writes):
            raise ValueError("a batch has at most one guard")

    def clear(self) -> None:
        """Forget every write (they were sent, or the unit of work rolled back)."""
        self._writes.clear()

    def statement(self) -> BatchStatement:
        """One statement doing every write, and its parameters."""
        if not self._writes:
            raise ValueError("nothing is staged")
        writes = sorted(self._writes, key=lambda write: not write.guard)  # the guard first
        statement = _combined_statement(tuple(write.shape for write in writes))
        params: dict[str, Any] = {}
        for index, write in enumerate(writes):
            if isinstance(write.table, str):  # a registered guard binds its own names
                params.update(write.values)
                continue
            for key, value in write.values:
                params[f"w{index}_{key}"] = value
            for key, value in write.where:
                params[f"w{index}_where_{key}"] = value
        return BatchStatement(statement, params, guarded=writes[0].guard)


@functools.lru_cache(maxsize=_STATEMENT_CACHE_MAX)
def _combined_statement(shapes: tuple[_Shape, ...]) -> Executable:
    if shapes[0][3]:
        return _guarded_statement(shapes)
    *leading, last = (_single_statement(index, shape) for index, shape in enumerate(shapes))
    if not leading:
        return last
    return last.add_cte(*(part.cte(f"w{index}") for index, part in enumerate(leading)))


def _guarded_statement(shapes: tuple[_Shape, ...]) -> Executable:
    """``WITH w0 AS (guard RETURNING ...), w1 AS (... only if w0 matched), ...
    SELECT count(*) FROM w0``."""
    first = shapes[0][0]
    if isinstance(first, str):
        guard = _REGISTERED_GUARDS[first].cte("w0")
    else:
        guard = _single_statement(0, shapes[0]).returning(_ONE.label("matched")).cte("w0")
    parts: list[CTE] = [guard]
    for index, shape in enumerate(shapes[1:], start=1):
        parts.append(_single_statement(index, shape, only_if=guard).cte(f"w{index}"))
    return select(func.count()).select_from(guard).add_cte(*parts[1:])


def _single_statement(
    index: int, shape: _Shape, *, only_if: CTE | None = None
) -> Insert | Update | Delete:
    table, value_keys, where_keys, _, deletes = shape
    if isinstance(table, str):
        raise ValueError(f"the registered guard {table!r} can only come first")
    columns = table.c
    values = {
        columns[key]: bindparam(f"w{index}_{key}", type_=columns[key].type) for key in value_keys
    }
    if not where_keys:
        if only_if is None:
            return insert(table).values(values)
        # INSERT ... SELECT <values> WHERE EXISTS (SELECT FROM guard)
        chosen = select(*values.values()).where(exists(select(_ONE).select_from(only_if)))
        return insert(table).from_select(list(values), chosen)
    conditions = [
        columns[key] == bindparam(f"w{index}_where_{key}", type_=columns[key].type)
        for key in where_keys
    ]
    if only_if is not None:
        conditions.append(exists(select(_ONE).select_from(only_if)))
    if deletes:
        return delete(table).where(*conditions)
    return update(table).where(*conditions).values(values)
