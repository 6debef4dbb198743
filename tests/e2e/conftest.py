"""Every test here starts from empty tables in the real database."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import truncate_all


@pytest.fixture(autouse=True)
async def _empty_tables(engine: AsyncEngine) -> None:
    await truncate_all(engine)
