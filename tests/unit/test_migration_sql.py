"""What a DBA reviews: ``alembic upgrade ... --sql``, and squawk on it (``make lint``).

No database: the SQL is rendered offline, as ``alembic upgrade head --sql`` does.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

REPO = Path(__file__).resolve().parents[2]
LINT = REPO / "scripts" / "squawk_migrations.py"


def _config(output: io.StringIO | None = None, x: list[str] | None = None) -> Config:
    cfg = Config(str(REPO / "alembic.ini"), output_buffer=output)
    cfg.attributes["configure_logger"] = False
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg2://render@localhost/render")
    if x is not None:
        cfg.cmd_opts = argparse.Namespace(x=x)
    return cfg


def _sql(revisions: str = "head", x: list[str] | None = None) -> str:
    output = io.StringIO()
    command.upgrade(_config(output, x), revisions, sql=True)
    return output.getvalue()


def _statements(sql: str) -> list[str]:
    """Statements (on one line each) and alembic's ``-- Running upgrade`` markers, in order."""
    statements = []
    for chunk in sql.split(";\n"):
        lines = []
        for line in chunk.splitlines():
            if line.startswith("-- Running upgrade"):
                statements.append(line.strip())
            elif line.strip() and not line.startswith("--"):
                lines.append(line)
        if lines:
            statements.append(" ".join(" ".join(lines).split()))
    return statements


@pytest.fixture(autouse=True)
def _default_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATION_LOCK_TIMEOUT", raising=False)
    monkeypatch.delenv("MIGRATION_STATEMENT_TIMEOUT", raising=False)


def test_the_sql_script_runs_each_migration_in_a_transaction_of_its_own() -> None:
    statements = _statements(_sql())
    revisions = [rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()]

    # The session timeouts come first, before any transaction.
    assert statements[:3] == ["SET lock_timeout = '5s'", "SET statement_timeout = '60s'", "BEGIN"]

    in_transaction = False
    runs = stamps = 0
    for i, statement in enumerate(statements):
        if statement == "BEGIN":
            assert not in_transaction, statements[i - 3 : i + 1]
            in_transaction = True
        elif statement == "COMMIT":
            assert in_transaction, statements[i - 3 : i + 1]
            in_transaction = False
        elif statement.startswith("-- Running upgrade"):
            # Each revision opens a transaction of its own (0001's also creates the table).
            runs += 1
            assert in_transaction
            opened = statements[:i][::-1].index("BEGIN")
            assert opened == 0 or statements[i - 1].startswith("CREATE TABLE alembic_version")
        elif "alembic_version" in statement and statement.startswith(("INSERT", "UPDATE")):
            # ... and commits it with its version stamp, the timeouts set again.
            stamps += 1
            assert in_transaction
            assert statements[i + 1 : i + 4] == [
                "SET lock_timeout = '5s'",
                "SET statement_timeout = '60s'",
                "COMMIT",
            ]
        elif "CONCURRENTLY" in statement or "VALIDATE CONSTRAINT" in statement:
            assert not in_transaction, statement  # an autocommit block
        elif not statement.startswith("SET "):
            assert in_transaction, statement
    assert not in_transaction
    assert runs == stamps == len(revisions)


def test_one_step_renders_one_transaction() -> None:
    assert _statements(_sql("0001:0002")) == [
        "SET lock_timeout = '5s'",
        "SET statement_timeout = '60s'",
        "BEGIN",
        "-- Running upgrade 0001 -> 0002",
        "ALTER TABLE outbox_events ADD COLUMN claimed_by TEXT",
        "ALTER TABLE outbox_events ADD COLUMN claimed_until TIMESTAMP WITH TIME ZONE",
        "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'",
        "SET lock_timeout = '5s'",
        "SET statement_timeout = '60s'",
        "COMMIT",
    ]


def test_the_timeouts_are_overridden_by_x_arguments_then_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "2s")
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "5min")
    assert _statements(_sql("0001:0002"))[:2] == [
        "SET lock_timeout = '2s'",
        "SET statement_timeout = '5min'",
    ]
    sql = _statements(_sql("0001:0002", x=["statement_timeout=0", "lock_timeout=1500ms"]))
    assert sql[:2] == ["SET lock_timeout = '1500ms'", "SET statement_timeout = '0'"]


@pytest.mark.parametrize("value", ["5 seconds", "5s; DROP TABLE merchants", "-1", ""])
def test_a_timeout_that_is_not_a_duration_is_refused(value: str) -> None:
    with pytest.raises(CommandError, match="lock_timeout"):
        _sql("0001:0002", x=[f"lock_timeout={value}" if value else "lock_timeout= "])


# -- squawk -------------------------------------------------------------------------------


def _scratch(folder: Path, revision: str, down: str, upgrade: str) -> None:
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    (folder / f"scratch_{revision}.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def test_squawk_passes_the_shipped_migrations_and_fails_an_unsafe_new_one(tmp_path: Path) -> None:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    scratch = tmp_path / "versions"
    scratch.mkdir()
    # A plain index on an existing table blocks its writes while it builds.
    _scratch(
        scratch, "9001", head, 'op.create_index("ix_t_currency", "transactions", ["currency"])'
    )
    # The same index built CONCURRENTLY, outside a transaction, with IF NOT EXISTS: clean.
    _scratch(
        scratch,
        "9002",
        "9001",
        """
        with op.get_context().autocommit_block():
            op.execute("SET statement_timeout = 0")
            op.create_index(
                "ix_t_currency_2", "transactions", ["currency"],
                postgresql_concurrently=True, if_not_exists=True,
            )
        """,
    )
    # And one that adds a NOT NULL column without a default to an existing table.
    _scratch(
        scratch,
        "9003",
        "9002",
        'op.add_column("refunds", sa.Column("note", sa.Text(), nullable=False))',
    )
    # An exemption nothing needs any more fails the lint too.
    exemptions = tmp_path / "exemptions.toml"
    exemptions.write_text(
        (REPO / "migrations" / "squawk-exemptions.toml").read_text()
        + '\n["0002"]\nprefer-robust-stmts = "no longer needed"\n'
    )

    result = subprocess.run(
        [sys.executable, str(LINT), "--version-location", str(scratch), "--exemptions", exemptions],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    findings = {
        (Path(line.split(":", 1)[0]).stem, line.split(": ")[1])
        for line in result.stdout.splitlines()
    }
    assert findings == {
        ("scratch_9001", "require-concurrent-index-creation"),
        ("scratch_9003", "adding-required-field"),
    }, result.stdout
    assert "[0002] prefer-robust-stmts matches no finding" in result.stderr
    shipped = len(list(ScriptDirectory.from_config(_config()).walk_revisions()))
    reviewed = sum(len(rules) for rules in tomllib.loads(exemptions.read_text()).values())
    assert f"{shipped + 3} migration(s), {reviewed} reviewed exemption(s): FAILED" in result.stderr
