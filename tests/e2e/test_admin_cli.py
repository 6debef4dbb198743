"""``payments-admin``: merchants and API keys from the command line (docs/api.md)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from app import cli
from app.core.config import Settings
from tests.conftest import make_settings, payment_body

CHOSEN_KEY = "sk_cli_chosen_key_0123456789"
KEY_LINE = re.compile(r"^api_key: (\S+)$", re.MULTILINE)


def in_own_thread(coroutine: Awaitable[str]) -> str:
    """Run the CLI's coroutine on a fresh loop, so async tests can call the CLI too."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]


def admin(
    capsys: pytest.CaptureFixture[str], *argv: str, settings: Settings | None = None
) -> tuple[int, str, str]:
    """Run ``payments-admin argv...``; returns the exit code, stdout and stderr."""
    code = cli.main(
        list(argv),
        settings_factory=lambda: settings or make_settings(),
        runner=in_own_thread,
    )
    out, err = capsys.readouterr()
    return code, out, err


def printed_keys(out: str) -> list[str]:
    return KEY_LINE.findall(out)


@pytest.fixture
def db(migrated_database: str) -> Iterator[Engine]:
    engine = create_engine(migrated_database)
    yield engine
    engine.dispose()


def one(db: Engine, sql: str, **params: Any) -> Any:
    with db.connect() as conn:
        return conn.execute(text(sql), params).one()


def test_create_merchant_with_a_chosen_key(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    code, out, err = admin(
        capsys,
        "create-merchant",
        "shop_1",
        "--name",
        "Shop One",
        "--currencies",
        "usd,EUR",
        "--api-key",
        CHOSEN_KEY,
    )

    assert (code, err) == (0, "")
    assert "shop_1" in out
    assert printed_keys(out) == [CHOSEN_KEY]
    merchant = one(
        db, "SELECT name, status, currencies FROM merchants WHERE merchant_id = 'shop_1'"
    )
    assert merchant.name == "Shop One"
    assert merchant.status == "active"
    assert sorted(merchant.currencies) == ["EUR", "USD"]
    key = one(db, "SELECT key_hash, key_prefix FROM api_keys WHERE merchant_id = 'shop_1'")
    assert key.key_hash != CHOSEN_KEY
    assert len(key.key_hash) == 64


def test_create_merchant_generates_a_strong_key_and_prints_it_once(
    capsys: pytest.CaptureFixture[str], db: Engine
) -> None:
    code, out, _ = admin(capsys, "create-merchant", "shop_2", "--currencies", "USD")

    (key,) = printed_keys(out)
    assert code == 0
    assert len(key) >= 32
    assert out.count(key) == 1
    stored = one(db, "SELECT row_to_json(k)::text AS row FROM api_keys k").row
    assert key not in stored


async def test_a_created_key_is_accepted_by_the_api(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient
) -> None:
    code, out, _ = admin(capsys, "create-merchant", "shop_api", "--currencies", "USD")
    (key,) = printed_keys(out)

    response = await client.post(
        "/api/v1/payments/process",
        json=payment_body("shop_api"),
        headers={"Authorization": f"Bearer {key}"},
    )

    assert code == 0
    assert response.status_code == 200, response.text
    assert response.json()["merchant_id"] == "shop_api"


async def test_a_key_revoked_from_the_cli_is_refused_by_the_api(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient
) -> None:
    admin(capsys, "create-merchant", "shop_rev", "--api-key", CHOSEN_KEY)
    headers = {"Authorization": f"Bearer {CHOSEN_KEY}"}
    assert (await client.get("/api/v1/payments/txn_abc", headers=headers)).status_code == 404

    code, out, _ = admin(capsys, "revoke-key", CHOSEN_KEY)

    assert code == 0
    assert "shop_rev" in out
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:
        response = await client.get("/api/v1/payments/txn_abc", headers=headers)
        if response.status_code == 401 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 401


def test_issue_key_adds_a_second_key(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    admin(capsys, "create-merchant", "shop_3", "--api-key", CHOSEN_KEY)

    chosen = admin(capsys, "issue-key", "shop_3", "--api-key", "sk_second_key_abcdefghij")
    generated = admin(capsys, "issue-key", "shop_3")

    assert chosen[0] == generated[0] == 0
    assert printed_keys(chosen[1]) == ["sk_second_key_abcdefghij"]
    (new_key,) = printed_keys(generated[1])
    assert new_key not in (CHOSEN_KEY, "sk_second_key_abcdefghij")
    assert one(db, "SELECT count(*) AS n FROM api_keys WHERE merchant_id = 'shop_3'").n == 3


def test_revoke_key_marks_it_revoked(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    admin(capsys, "create-merchant", "shop_4", "--api-key", CHOSEN_KEY)

    code, _, err = admin(capsys, "revoke-key", CHOSEN_KEY)
    again = admin(capsys, "revoke-key", CHOSEN_KEY)

    assert (code, err) == (0, "")
    assert one(db, "SELECT revoked_at FROM api_keys WHERE merchant_id = 'shop_4'").revoked_at
    assert again[0] != 0
    assert again[2].startswith("payments-admin: ")


def test_disable_merchant(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    admin(capsys, "create-merchant", "shop_5", "--api-key", CHOSEN_KEY)

    code, out, err = admin(capsys, "disable-merchant", "shop_5")

    assert (code, err) == (0, "")
    assert "shop_5" in out
    assert one(db, "SELECT status FROM merchants WHERE merchant_id = 'shop_5'").status == "disabled"


def test_every_admin_operation_is_audited(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    admin(capsys, "create-merchant", "shop_6", "--api-key", CHOSEN_KEY)
    admin(capsys, "issue-key", "shop_6", "--api-key", "sk_second_key_abcdefghij")
    admin(capsys, "revoke-key", CHOSEN_KEY)
    admin(capsys, "disable-merchant", "shop_6")

    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT action, outcome, details::text AS details FROM audit_log ORDER BY id")
        ).all()

    assert [(row.action, row.outcome) for row in rows] == [
        ("merchant.create", "success"),
        ("api_key.issue", "success"),
        ("api_key.revoke", "success"),
        ("merchant.disable", "success"),
    ]
    assert not any(CHOSEN_KEY in row.details for row in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create-merchant", "shop_dup"], "already exists"),
        (["create-merchant", "shop_new", "--api-key", "short"], "16"),
        (["create-merchant", "shop_new", "--currencies", "XYZ"], "XYZ"),
        (["create-merchant", "bad id!"], "merchant_id"),
        (["issue-key", "no_such_merchant"], "no_such_merchant"),
        (["issue-key", "shop_dup", "--api-key", "short"], "16"),
        (["revoke-key", "sk_never_issued_key_000000"], "key"),
        (["disable-merchant", "no_such_merchant"], "no_such_merchant"),
    ],
    ids=[
        "duplicate-merchant",
        "short-key",
        "unknown-currency",
        "bad-merchant-id",
        "issue-for-unknown-merchant",
        "issue-short-key",
        "revoke-unknown-key",
        "disable-unknown-merchant",
    ],
)
def test_errors_exit_non_zero_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], db: Engine, argv: list[str], message: str
) -> None:
    admin(capsys, "create-merchant", "shop_dup", "--api-key", CHOSEN_KEY)

    code, out, err = admin(capsys, *argv)

    assert code != 0
    assert out == ""
    assert err.startswith("payments-admin: ")
    assert message.lower() in err.lower()
    assert "Traceback" not in err
    assert one(db, "SELECT count(*) AS n FROM merchants").n == 1
    assert one(db, "SELECT count(*) AS n FROM api_keys").n == 1


def test_an_unreachable_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = make_settings(
        database_url="postgresql+asyncpg://payments@127.0.0.1:1/payments_test"
    )

    code, out, err = admin(capsys, "disable-merchant", "shop_x", settings=unreachable)

    assert code != 0
    assert out == ""
    assert err.startswith("payments-admin: ")
    assert "Traceback" not in err


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["create-merchant"], settings_factory=make_settings, runner=in_own_thread)

    assert exited.value.code == 2
    assert "merchant_id" in capsys.readouterr().err
