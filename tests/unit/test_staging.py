"""Staged inserts send only what is set on a row, so they refuse models with Python defaults."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.adapters.db.staging import StagedWrites, row_values


class _OtherBase(DeclarativeBase):
    pass


class _WithPythonDefault(_OtherBase):
    __tablename__ = "with_python_default"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(8), default="lost")


class _ServerDefaultsOnly(_OtherBase):
    __tablename__ = "server_defaults_only"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str | None] = mapped_column(String(8), server_default="kept")


def test_a_model_with_a_python_side_default_cannot_be_staged() -> None:
    with pytest.raises(TypeError, match=r"_WithPythonDefault\.label has a Python-side default"):
        StagedWrites().insert(_WithPythonDefault(id=1))  # type: ignore[arg-type]


def test_only_the_columns_set_on_a_row_are_sent() -> None:
    assert row_values(_ServerDefaultsOnly(id=7)) == (("id", 7),)  # type: ignore[arg-type]
    assert row_values(_ServerDefaultsOnly(id=7, label="x")) == (("id", 7), ("label", "x"))  # type: ignore[arg-type]
