"""``payments-admin``: merchants and API keys from the command line (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from app import cli
from app.core.config import Settings
from tests.conftest import (
    BEHIND_POOLER,
    TEST_DATABASE_URL,
    MerchantCredentials,
    make_settings,
    payment_body,
)
from tests.e2e.api_calls import assert_problem, eventually, pay

CHOSEN_KEY = "sk_cli_chosen_key_0123456789"
SECOND_KEY = "sk_second_key_abcdefghij"
SAME_PREFIX_KEY = "sk_cli_another_key_9876543210"  # shares "sk_cli" with CHOSEN_KEY
KEY_LINE = re.compile(r"^api_key: (\S+)$", re.MULTILINE)
KEY_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
UNREACHABLE_DATABASE = "postgresql+asyncpg://payments@127.0.0.1:1/payments_test"
SCRIPT = Path(sys.executable).with_name("payments-admin")


def in_own_thread(coroutine: Awaitable[str]) -> str:
    """Run the CLI's coroutine on a fresh loop, so async tests can call the CLI too."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]


def admin(
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    settings: Settings | None = None,
    settings_factory: Callable[[], Settings] | None = None,
) -> tuple[int, str, str]:
    """Run ``payments-admin argv...`` in this process; the exit code, stdout and stderr."""
    code = cli.main(
        list(argv),
        settings_factory=settings_factory or (lambda: settings or make_settings()),
        runner=in_own_thread,
    )
    out, err = capsys.readouterr()
    return code, out, err


def printed_keys(out: str) -> list[str]:
    return KEY_LINE.findall(out)


def admin_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run a listing command with ``--json``; its parsed output."""
    code, out, err = admin(capsys, *argv, "--json")
    # Beside an in-process app, stderr also holds the app's log noise: look for ours only.
    assert code == 0, err
    assert "payments-admin" not in err
    return json.loads(out)


def table(out: str) -> list[dict[str, str]]:
    """The rows of a printed table, by column header (a cell may hold spaces)."""
    header, *lines = out.rstrip("\n").splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    columns = list(zip(header.split(), starts, [*starts[1:], None], strict=True))
    return [{name: line[start:end].strip() for name, start, end in columns} for line in lines]


def fields(out: str) -> dict[str, str]:
    """``name:  value`` lines as a dict."""
    return {
        name.removesuffix(":"): value.strip()
        for name, _, value in (line.partition(" ") for line in out.splitlines())
    }


def run_script(
    *argv: str, cwd: Path, database_url: str = TEST_DATABASE_URL
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``payments-admin`` console script in its own process, with the
    test profile and no ``.env`` (``cwd`` has none)."""
    env = {**os.environ, "ENVIRONMENT": "test", "DATABASE_URL": database_url}
    env.pop("BANK_API_URL", None)
    return subprocess.run(
        [str(SCRIPT), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(err: str, *fragments: str) -> None:
    """The error is one line, ``payments-admin: ...``, naming every fragment; no traceback."""
    assert err.startswith("payments-admin: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), err


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
    response = await eventually(
        lambda: client.get("/api/v1/payments/txn_abc", headers=headers),
        lambda r: r.status_code == 401,
    )
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
    admin(capsys, "issue-key", "shop_6", "--api-key", SECOND_KEY)
    admin(capsys, "revoke-key", CHOSEN_KEY)
    admin(capsys, "disable-merchant", "shop_6")
    admin(capsys, "enable-merchant", "shop_6")
    admin(capsys, "revoke-key", "--prefix", "sk_sec")

    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT action, outcome, details::text AS details FROM audit_log ORDER BY id")
        ).all()

    assert [(row.action, row.outcome) for row in rows] == [
        ("merchant.create", "success"),
        ("api_key.issue", "success"),
        ("api_key.revoke", "success"),
        ("merchant.disable", "success"),
        ("merchant.enable", "success"),
        ("api_key.revoke", "success"),
    ]
    assert not any(key in row.details for row in rows for key in (CHOSEN_KEY, SECOND_KEY))


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
        (["revoke-key", "--prefix", "sk_nev"], "no active api key has the prefix 'sk_nev'"),
        (["revoke-key", "--prefix", "sk_cli", "--merchant", "no_such_merchant"], "no_such"),
        (["revoke-key", "--id", "6f1c1f0e-0000-4000-8000-000000000000"], "6f1c1f0e"),
        (["disable-merchant", "no_such_merchant"], "no_such_merchant"),
        (["enable-merchant", "no_such_merchant"], "no_such_merchant"),
        (["show-merchant", "no_such_merchant"], "no_such_merchant"),
        (["list-keys", "no_such_merchant"], "no_such_merchant"),
        (["list-keys", "--merchant", "no_such_merchant", "--json"], "no_such_merchant"),
    ],
    ids=[
        "duplicate-merchant",
        "short-key",
        "unknown-currency",
        "bad-merchant-id",
        "issue-for-unknown-merchant",
        "issue-short-key",
        "revoke-unknown-key",
        "revoke-unknown-prefix",
        "revoke-prefix-of-unknown-merchant",
        "revoke-unknown-id",
        "disable-unknown-merchant",
        "enable-unknown-merchant",
        "show-unknown-merchant",
        "list-keys-of-unknown-merchant",
        "list-keys-json-of-unknown-merchant",
    ],
)
def test_errors_exit_non_zero_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], db: Engine, argv: list[str], message: str
) -> None:
    admin(capsys, "create-merchant", "shop_dup", "--api-key", CHOSEN_KEY)

    code, out, err = admin(capsys, *argv)

    assert code == cli.EXIT_REFUSED
    assert out == ""
    assert_one_line_error(err, message)
    assert one(db, "SELECT count(*) AS n FROM merchants").n == 1
    assert one(db, "SELECT count(*) AS n FROM api_keys WHERE revoked_at IS NULL").n == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["disable-merchant", "shop_x"],
        ["enable-merchant", "shop_x"],
        ["list-merchants"],
        ["list-merchants", "--json"],
        ["show-merchant", "shop_x"],
        ["list-keys", "shop_x", "--json"],
        ["revoke-key", "--prefix", "sk_abc"],
        ["issue-key", "shop_x"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_an_unreachable_database_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    unreachable = make_settings(database_url=UNREACHABLE_DATABASE)

    code, out, err = admin(capsys, *argv, settings=unreachable)

    assert code == cli.EXIT_DATABASE
    assert out == ""
    assert_one_line_error(err, "database unavailable", "ConnectionRefusedError")


def test_bad_configuration_is_a_one_line_error_without_the_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pepper = "development-pepper-the-operator-must-not-see"

    code, out, err = admin(
        capsys,
        "list-merchants",
        settings=None,
        settings_factory=lambda: make_settings(environment="production", api_key_pepper=pepper),
    )

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert_one_line_error(err, "configuration", "API_KEY_PEPPER is the development pepper")
    assert pepper not in err


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["create-merchant"], settings_factory=make_settings, runner=in_own_thread)

    assert exited.value.code == cli.EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "merchant_id", "create-merchant --help")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["revoke-key"], "one of the arguments --prefix --id key is required"),
        (["revoke-key", "--prefix", "sk_cli", CHOSEN_KEY], "not allowed with"),
        (["revoke-key", "--id", CHOSEN_KEY], "not a key id"),
        (["revoke-key", CHOSEN_KEY, "--merchant", "shop_1"], "--merchant only narrows --prefix"),
        (["list-keys"], "one of the arguments merchant_id --merchant is required"),
        (["list-keys", "shop_1", "--merchant", "shop_2"], "not allowed with"),
        (["enable-merchant"], "merchant_id"),
        (["list-merchants", "--yaml"], "unrecognized arguments: --yaml"),
    ],
    ids=[
        "revoke-nothing",
        "revoke-two-ways",
        "revoke-id-not-a-uuid",
        "merchant-without-prefix",
        "list-keys-of-nobody",
        "list-keys-of-two",
        "enable-nobody",
        "unknown-option",
    ],
)
def test_bad_arguments_are_a_one_line_usage_error_that_never_echoes_a_key(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv, settings_factory=make_settings, runner=in_own_thread)

    out, err = capsys.readouterr()
    assert exited.value.code == cli.EXIT_USAGE
    assert out == ""
    assert_one_line_error(err, message)
    assert CHOSEN_KEY not in err


# -- listing and showing -------------------------------------------------------------------


@pytest.fixture
def two_merchants(capsys: pytest.CaptureFixture[str]) -> None:
    """``shop_a`` (active; CHOSEN_KEY revoked, SECOND_KEY active) and ``shop_b`` (disabled,
    one generated key)."""
    admin(capsys, "create-merchant", "shop_a", "--name", "Shop A", "--currencies", "usd,EUR")
    admin(capsys, "issue-key", "shop_a", "--api-key", CHOSEN_KEY)
    admin(capsys, "issue-key", "shop_a", "--api-key", SECOND_KEY)
    admin(capsys, "revoke-key", CHOSEN_KEY)
    admin(capsys, "create-merchant", "shop_b", "--currencies", "JPY")
    admin(capsys, "disable-merchant", "shop_b")
    capsys.readouterr()


def stored_keys(db: Engine, merchant_id: str) -> list[Any]:
    with db.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id, key_prefix, key_hash, created_at, revoked_at FROM api_keys "
                    "WHERE merchant_id = :m ORDER BY created_at, id"
                ),
                {"m": merchant_id},
            )
        )


def test_list_merchants_prints_a_table(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    code, out, err = admin(capsys, "list-merchants")

    assert (code, err) == (0, "")
    rows = table(out)
    assert [{k: v for k, v in row.items() if k != "CREATED_AT"} for row in rows] == [
        {
            "MERCHANT_ID": "shop_a",
            "NAME": "Shop A",
            "STATUS": "active",
            "CURRENCIES": "EUR,USD",
            "ACTIVE_KEYS": "2",
        },
        {
            "MERCHANT_ID": "shop_b",
            "NAME": "shop_b",
            "STATUS": "disabled",
            "CURRENCIES": "JPY",
            "ACTIVE_KEYS": "1",
        },
    ]
    created = one(db, "SELECT created_at FROM merchants WHERE merchant_id = 'shop_a'").created_at
    assert datetime.fromisoformat(rows[0]["CREATED_AT"]) == created.replace(microsecond=0)


def test_list_merchants_json(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    listed = admin_json(capsys, "list-merchants")

    with db.connect() as conn:
        created = dict(conn.execute(text("SELECT merchant_id, created_at FROM merchants")).all())
    assert listed == [
        {
            "merchant_id": "shop_a",
            "name": "Shop A",
            "status": "active",
            "currencies": ["EUR", "USD"],
            "created_at": created["shop_a"].isoformat(),
            "active_keys": 2,
        },
        {
            "merchant_id": "shop_b",
            "name": "shop_b",
            "status": "disabled",
            "currencies": ["JPY"],
            "created_at": created["shop_b"].isoformat(),
            "active_keys": 1,
        },
    ]


def test_list_merchants_with_none(capsys: pytest.CaptureFixture[str], db: Engine) -> None:
    assert admin(capsys, "list-merchants") == (0, "no merchants\n", "")
    assert admin_json(capsys, "list-merchants") == []


def test_show_merchant_prints_the_merchant_and_its_keys(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    code, out, err = admin(capsys, "show-merchant", "shop_a")

    assert (code, err) == (0, "")
    about, keys = out.split("\n\n")
    assert {k: v for k, v in fields(about).items() if k != "created_at"} == {
        "merchant_id": "shop_a",
        "name": "Shop A",
        "status": "active",
        "currencies": "EUR,USD",
        "keys": "2 active of 3",
    }
    stored = stored_keys(db, "shop_a")
    assert [(row["KEY_ID"], row["PREFIX"], row["STATUS"]) for row in table(keys)] == [
        (str(key.id), key.key_prefix, "revoked" if key.revoked_at else "active") for key in stored
    ]
    assert sorted(key.key_prefix for key in stored if key.revoked_at) == ["sk_cli"]
    assert [row["REVOKED_AT"] == "-" for row in table(keys)] == [
        key.revoked_at is None for key in stored
    ]


def test_show_merchant_json(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    shown = admin_json(capsys, "show-merchant", "shop_a")

    created = one(db, "SELECT created_at FROM merchants WHERE merchant_id = 'shop_a'").created_at
    assert {k: v for k, v in shown.items() if k != "keys"} == {
        "merchant_id": "shop_a",
        "name": "Shop A",
        "status": "active",
        "currencies": ["EUR", "USD"],
        "created_at": created.isoformat(),
        "active_keys": 2,
    }
    assert shown["keys"] == [
        {
            "key_id": str(key.id),
            "merchant_id": "shop_a",
            "prefix": key.key_prefix,
            "status": "revoked" if key.revoked_at else "active",
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in stored_keys(db, "shop_a")
    ]


def test_list_keys_by_argument_or_option(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    by_argument = admin(capsys, "list-keys", "shop_a")
    by_option = admin(capsys, "list-keys", "--merchant", "shop_a")
    listed = admin_json(capsys, "list-keys", "shop_a")

    assert by_argument == by_option
    assert by_argument[0] == 0
    stored = stored_keys(db, "shop_a")
    assert [(row["KEY_ID"], row["PREFIX"], row["STATUS"]) for row in table(by_argument[1])] == [
        (str(key.id), key.key_prefix, "revoked" if key.revoked_at else "active") for key in stored
    ]
    assert [(key["key_id"], key["prefix"], key["status"]) for key in listed] == [
        (str(key.id), key.key_prefix, "revoked" if key.revoked_at else "active") for key in stored
    ]
    assert {key["merchant_id"] for key in listed} == {"shop_a"}


def test_no_command_but_creation_prints_a_key_or_its_digest(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None
) -> None:
    printed = [
        admin(capsys, *argv)
        for argv in (
            ["list-merchants"],
            ["list-merchants", "--json"],
            ["show-merchant", "shop_a"],
            ["show-merchant", "shop_a", "--json"],
            ["list-keys", "shop_a"],
            ["list-keys", "shop_a", "--json"],
            ["list-keys", "shop_b", "--json"],
            ["revoke-key", "--prefix", "sk_sec"],
            ["revoke-key", "--prefix", "sk_sec"],
            ["enable-merchant", "shop_b"],
        )
    ]

    text_out = "".join(out + err for _, out, err in printed)
    secrets = [CHOSEN_KEY, SECOND_KEY, CHOSEN_KEY[:7], SECOND_KEY[:7]]
    secrets += [key.key_hash for m in ("shop_a", "shop_b") for key in stored_keys(db, m)]
    assert [secret for secret in secrets if secret in text_out] == []
    assert "key_hash" not in text_out


# -- enabling, and revoking by prefix ---------------------------------------------------


async def test_enable_after_disable_lets_the_merchant_pay_again(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient, db: Engine
) -> None:
    admin(capsys, "create-merchant", "shop_on", "--currencies", "USD", "--api-key", CHOSEN_KEY)
    shop = MerchantCredentials("shop_on", CHOSEN_KEY)
    assert (await pay(client, shop)).status_code == 200  # the active merchant is now cached

    admin(capsys, "disable-merchant", "shop_on")
    refused = await eventually(lambda: pay(client, shop), lambda r: r.status_code == 403)
    assert_problem(refused, 403, "merchant_inactive")  # the disabled one is cached now

    code, out, _ = admin(capsys, "enable-merchant", "shop_on")

    # (stderr is not checked here: it also holds the in-process app's own log output)
    assert (code, out) == (0, "enabled merchant shop_on\n")
    paid = await eventually(lambda: pay(client, shop), lambda r: r.status_code == 200)
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "captured"
    assert one(db, "SELECT status FROM merchants WHERE merchant_id = 'shop_on'").status == "active"
    assert admin_json(capsys, "show-merchant", "shop_on")["status"] == "active"


def test_enable_an_active_merchant_changes_nothing_but_is_audited(
    capsys: pytest.CaptureFixture[str], db: Engine
) -> None:
    admin(capsys, "create-merchant", "shop_up", "--api-key", CHOSEN_KEY)

    code, _, err = admin(capsys, "enable-merchant", "shop_up")

    assert (code, err) == (0, "")
    assert one(db, "SELECT status FROM merchants WHERE merchant_id = 'shop_up'").status == "active"
    last = one(db, "SELECT action, details FROM audit_log ORDER BY id DESC LIMIT 1")
    assert (last.action, last.details) == ("merchant.enable", {"previous_status": "active"})


async def test_revoke_by_prefix_makes_that_key_401_and_leaves_the_others(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient, db: Engine
) -> None:
    admin(capsys, "create-merchant", "shop_px", "--currencies", "USD", "--api-key", CHOSEN_KEY)
    admin(capsys, "issue-key", "shop_px", "--api-key", SECOND_KEY)
    leaked = MerchantCredentials("shop_px", CHOSEN_KEY)
    spare = MerchantCredentials("shop_px", SECOND_KEY)
    assert (await pay(client, leaked)).status_code == 200  # the key is now cached
    (prefix,) = [
        k["prefix"] for k in admin_json(capsys, "list-keys", "shop_px") if "cli" in k["prefix"]
    ]

    code, out, _ = admin(capsys, "revoke-key", "--prefix", prefix)

    (revoked,) = [key for key in stored_keys(db, "shop_px") if key.revoked_at]
    assert code == 0
    assert out == f"revoked key sk_cli ({revoked.id}) of shop_px\n"
    refused = await eventually(lambda: pay(client, leaked), lambda r: r.status_code == 401)
    assert_problem(refused, 401, "unauthorized")
    assert (await pay(client, spare)).status_code == 200
    statuses = {k["prefix"]: k["status"] for k in admin_json(capsys, "list-keys", "shop_px")}
    assert statuses == {"sk_cli": "revoked", "sk_sec": "active"}


@pytest.fixture
def shared_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """Active keys ``sk_cli…`` of ``shop_c`` and ``shop_d``, and ``sk_sec…`` of ``shop_c``."""
    admin(capsys, "create-merchant", "shop_c", "--api-key", CHOSEN_KEY)
    admin(capsys, "issue-key", "shop_c", "--api-key", SECOND_KEY)
    admin(capsys, "create-merchant", "shop_d", "--api-key", SAME_PREFIX_KEY)
    capsys.readouterr()


def active_prefixes(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT merchant_id, key_prefix FROM api_keys WHERE revoked_at IS NULL "
                "ORDER BY merchant_id, key_prefix"
            )
        )
        return [(row.merchant_id, row.key_prefix) for row in rows]


@pytest.mark.parametrize("prefix", ["sk_cli", "sk_c", "sk_"])
def test_an_ambiguous_prefix_revokes_nothing_and_names_the_candidates(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None, prefix: str
) -> None:
    code, out, err = admin(capsys, "revoke-key", "--prefix", prefix)

    assert code == cli.EXIT_REFUSED
    assert out == ""
    candidates = [
        key.id
        for m in ("shop_c", "shop_d")
        for key in stored_keys(db, m)
        if key.key_prefix.startswith(prefix)
    ]
    assert_one_line_error(
        err, f"matches {len(candidates)} active keys", "--merchant", "--id", "nothing was revoked"
    )
    assert all(str(key_id) in err for key_id in candidates)
    assert active_prefixes(db) == [("shop_c", "sk_cli"), ("shop_c", "sk_sec"), ("shop_d", "sk_cli")]


def test_an_ambiguous_prefix_names_at_most_five_candidates(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None
) -> None:
    for n in range(5):
        admin(capsys, "issue-key", "shop_d", "--api-key", f"sk_cli_extra_key_{n:04d}_abcdef")

    code, _, err = admin(capsys, "revoke-key", "--prefix", "sk_cli")

    assert code == cli.EXIT_REFUSED
    assert_one_line_error(err, "matches 7 active keys", "and 2 more")
    assert len(KEY_ID.findall(err)) == 5
    assert len(active_prefixes(db)) == 8


def test_merchant_narrows_an_ambiguous_prefix(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None
) -> None:
    code, out, err = admin(capsys, "revoke-key", "--prefix", "sk_cli", "--merchant", "shop_d")

    assert (code, err) == (0, "")
    assert out.endswith(" of shop_d\n")
    assert active_prefixes(db) == [("shop_c", "sk_cli"), ("shop_c", "sk_sec")]


def test_revoke_by_id(capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None) -> None:
    (target,) = [k for k in stored_keys(db, "shop_c") if k.key_prefix == "sk_cli"]

    code, out, err = admin(capsys, "revoke-key", "--id", str(target.id))
    again = admin(capsys, "revoke-key", "--id", str(target.id))

    assert (code, out, err) == (0, f"revoked key sk_cli ({target.id}) of shop_c\n", "")
    assert active_prefixes(db) == [("shop_c", "sk_sec"), ("shop_d", "sk_cli")]
    assert again[0] == cli.EXIT_REFUSED
    assert_one_line_error(again[2], f"no active api key has the id {target.id}")


def test_a_revoked_key_no_longer_matches_its_prefix(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None
) -> None:
    admin(capsys, "revoke-key", "--prefix", "sk_sec")

    code, out, err = admin(capsys, "revoke-key", "--prefix", "sk_sec")

    assert (code, out) == (cli.EXIT_REFUSED, "")
    assert_one_line_error(err, "no active api key has the prefix 'sk_sec'")
    assert active_prefixes(db) == [("shop_c", "sk_cli"), ("shop_d", "sk_cli")]


@pytest.mark.parametrize("prefix", [CHOSEN_KEY, "sk_cli_", ""])
def test_a_prefix_longer_than_the_stored_one_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None, prefix: str
) -> None:
    code, out, err = admin(capsys, "revoke-key", "--prefix", prefix)

    assert (code, out) == (cli.EXIT_REFUSED, "")
    assert_one_line_error(err, "a key prefix is 1 to 6 characters")
    assert not prefix or prefix not in err
    assert len(active_prefixes(db)) == 3


def test_like_wildcards_in_a_prefix_are_taken_literally(
    capsys: pytest.CaptureFixture[str], db: Engine, shared_prefix: None
) -> None:
    code, _, err = admin(capsys, "revoke-key", "--prefix", "sk%")
    underscore = admin(capsys, "revoke-key", "--prefix", "sk_s_c")

    assert code == underscore[0] == cli.EXIT_REFUSED
    assert_one_line_error(err, "no active api key has the prefix 'sk%'")
    assert_one_line_error(underscore[2], "no active api key")
    assert len(active_prefixes(db)) == 3


# -- the installed console script, in its own process -----------------------------------


def test_the_console_script_lists_merchants_as_json(
    capsys: pytest.CaptureFixture[str], db: Engine, two_merchants: None, tmp_path: Path
) -> None:
    done = run_script("list-merchants", "--json", cwd=tmp_path)

    assert (done.returncode, done.stderr) == (0, "")
    listed = json.loads(done.stdout)
    assert [(m["merchant_id"], m["status"], m["active_keys"]) for m in listed] == [
        ("shop_a", "active", 2),
        ("shop_b", "disabled", 1),
    ]


NO_DATABASE_ERROR = "ProtocolViolationError" if BEHIND_POOLER else "InvalidCatalogNameError"


@pytest.mark.parametrize(
    ("argv", "database_url", "status", "message"),
    [
        (["show-merchant", "nobody"], TEST_DATABASE_URL, cli.EXIT_REFUSED, "no merchant nobody"),
        (["revoke-key", "--prefix", "sk_cli"], TEST_DATABASE_URL, cli.EXIT_REFUSED, "matches 2"),
        (["revoke-key"], TEST_DATABASE_URL, cli.EXIT_USAGE, "one of the arguments"),
        (["list-merchants"], UNREACHABLE_DATABASE, cli.EXIT_DATABASE, "database unavailable"),
        (
            ["list-keys", "shop_c", "--json"],
            TEST_DATABASE_URL.rsplit("/", 1)[0] + "/payments_no_such_database",
            cli.EXIT_DATABASE,
            # PgBouncer relays the server's refusal of the login as a protocol error.
            f'database error: {NO_DATABASE_ERROR}: database "payments_no_such_database"',
        ),
    ],
    ids=["unknown-merchant", "ambiguous-prefix", "bad-arguments", "database-down", "no-database"],
)
def test_the_console_script_fails_in_one_line_with_its_exit_status(
    db: Engine,
    shared_prefix: None,
    tmp_path: Path,
    argv: list[str],
    database_url: str,
    status: int,
    message: str,
) -> None:
    done = run_script(*argv, cwd=tmp_path, database_url=database_url)

    assert done.returncode == status, done.stderr
    assert done.stdout == ""
    assert_one_line_error(done.stderr, message)
    assert len(active_prefixes(db)) == 3
