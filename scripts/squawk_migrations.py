"""Lint every migration's SQL with squawk (part of ``make lint``).

Each revision is rendered offline exactly as a DBA reviews it (``alembic upgrade
<down_revision>:<revision> --sql``: the session timeouts, alembic's BEGIN/COMMIT, the
CONCURRENTLY statements outside them) into its own file, and squawk checks every file with
the repository's .squawk.toml (PostgreSQL 15).

Reviewed findings are exempted per revision and rule in migrations/squawk-exemptions.toml,
each with its reason, and written into that revision's SQL only, as
``-- squawk-ignore-file <rule>``. An exemption that matches no finding fails the lint.

    uv run --frozen python scripts/squawk_migrations.py              # every revision
    uv run --frozen python scripts/squawk_migrations.py 0008         # some revisions
    uv run --frozen python scripts/squawk_migrations.py --keep out/  # keep the SQL
    ... --version-location DIR   # also lint revisions kept outside migrations/versions
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory

REPO = Path(__file__).resolve().parents[1]
SQUAWK_CONFIG = REPO / ".squawk.toml"
EXEMPTIONS = REPO / "migrations" / "squawk-exemptions.toml"
# Offline rendering needs a dialect, not a server.
RENDER_URL = "postgresql+psycopg2://render@localhost/render"


@dataclass(frozen=True)
class Rendered:
    revision: str
    source: Path  # the migration's .py file
    sql: str

    @property
    def name(self) -> str:
        """Where squawk reports it: the migration's own path, with .sql."""
        try:
            relative = self.source.relative_to(REPO)
        except ValueError:
            relative = Path("scratch") / self.source.name
        return str(relative.with_suffix(".sql"))


def _config(extra_locations: list[Path], output: io.StringIO | None = None) -> Config:
    cfg = Config(str(REPO / "alembic.ini"), output_buffer=output)
    cfg.attributes["configure_logger"] = False
    cfg.set_main_option("sqlalchemy.url", RENDER_URL)
    if extra_locations:
        locations = [str(REPO / "migrations" / "versions"), *map(str, extra_locations)]
        cfg.set_main_option("version_locations", os.pathsep.join(locations))
    return cfg


def _revisions(script: ScriptDirectory, wanted: list[str]) -> list[Script]:
    ordered = list(reversed(list(script.walk_revisions())))  # base first
    if not wanted:
        return ordered
    known = {rev.revision: rev for rev in ordered}
    missing = [rev for rev in wanted if rev not in known]
    if missing:
        raise SystemExit(f"unknown revision(s): {', '.join(missing)}")
    return [rev for rev in ordered if rev.revision in wanted]


def render(extra_locations: list[Path], wanted: list[str]) -> list[Rendered]:
    # The lint checks what env.py emits by default, whatever this shell overrides.
    for variable in ("MIGRATION_LOCK_TIMEOUT", "MIGRATION_STATEMENT_TIMEOUT"):
        os.environ.pop(variable, None)
    script = ScriptDirectory.from_config(_config(extra_locations))
    rendered = []
    for rev in _revisions(script, wanted):
        if isinstance(rev.down_revision, tuple | list):
            raise SystemExit(f"{rev.revision} merges branches: lint its SQL by hand")
        output = io.StringIO()
        start = rev.down_revision or "base"
        command.upgrade(_config(extra_locations, output), f"{start}:{rev.revision}", sql=True)
        rendered.append(Rendered(rev.revision, Path(rev.path), output.getvalue()))
    return rendered


def load_exemptions(path: Path, revisions: set[str]) -> dict[str, dict[str, str]]:
    exemptions: dict[str, dict[str, str]] = tomllib.loads(path.read_text("utf-8"))
    for revision, rules in exemptions.items():
        for rule, reason in rules.items():
            if not isinstance(reason, str) or not reason.strip():
                raise SystemExit(f"{path}: [{revision}] {rule} needs a reason")
    return {rev: rules for rev, rules in exemptions.items() if rev in revisions}


def _squawk() -> str:
    local = Path(sys.executable).with_name("squawk")
    found = str(local) if local.exists() else shutil.which("squawk")
    if found is None:
        raise SystemExit("squawk not found: uv sync --frozen installs squawk-cli")
    return found


def _run_squawk(workdir: Path, files: list[str], reporter: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_squawk(), "--config", str(SQUAWK_CONFIG), f"--reporter={reporter}", *files],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _write(workdir: Path, rendered: list[Rendered], exemptions: dict[str, dict[str, str]]) -> None:
    for item in rendered:
        header = [
            f"-- squawk-ignore-file {rule} -- reviewed: {reason}"
            for rule, reason in sorted(exemptions.get(item.revision, {}).items())
        ]
        path = workdir / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*header, item.sql]), "utf-8")


def lint(
    rendered: list[Rendered], exemptions: dict[str, dict[str, str]], source: Path, workdir: Path
) -> int:
    files = [item.name for item in rendered]
    # 1. Without exemptions: every finding, to tell which exemptions still match one.
    _write(workdir, rendered, {})
    raw = _run_squawk(workdir, files, "json")
    try:
        findings = {(v["file"], v["rule_name"]) for v in json.loads(raw.stdout or "[]")}
    except json.JSONDecodeError:
        print(raw.stdout, raw.stderr, sep="\n", file=sys.stderr)
        return 2
    names = {item.revision: item.name for item in rendered}
    stale = [
        f"{source}: [{revision}] {rule} matches no finding any more: remove it"
        for revision, rules in exemptions.items()
        for rule in rules
        if (names[revision], rule) not in findings
    ]
    # 2. With them, as squawk reports it (its code frames on a terminal, one line each else).
    _write(workdir, rendered, exemptions)
    if sys.stdout.isatty():
        result = _run_squawk(workdir, files, "tty")
        sys.stdout.write(result.stdout)
    else:
        result = _run_squawk(workdir, files, "json")
        for v in json.loads(result.stdout or "[]"):
            # squawk counts lines and columns from 0.
            where = f"{v['file']}:{v['line'] + 1}:{v['column'] + 1}"
            print(f"{where}: {v['rule_name']}: {v['message']} {v.get('help') or ''}".rstrip())
    sys.stderr.write(result.stderr)
    for message in stale:
        print(message, file=sys.stderr)
    exempted = sum(len(rules) for rules in exemptions.values())
    status = "clean" if result.returncode == 0 and not stale else "FAILED"
    print(
        f"squawk: {len(rendered)} migration(s), {exempted} reviewed exemption(s): {status}",
        file=sys.stderr,
    )
    return result.returncode or (1 if stale else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="*", help="only these revisions (default: all)")
    parser.add_argument("--keep", type=Path, help="write the rendered SQL to this directory")
    parser.add_argument("--exemptions", type=Path, default=EXEMPTIONS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--version-location",
        type=Path,
        action="append",
        default=[],
        help="another folder of revisions (e.g. a scratch migration)",
    )
    args = parser.parse_args()
    rendered = render([p.resolve() for p in args.version_location], args.revisions)
    exemptions = load_exemptions(args.exemptions, {item.revision for item in rendered})
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return lint(rendered, exemptions, args.exemptions, args.keep.resolve())
    with tempfile.TemporaryDirectory(prefix="squawk-migrations-") as workdir:
        return lint(rendered, exemptions, args.exemptions, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
