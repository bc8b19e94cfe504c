"""Least privilege without a server: the GRANT text per task kind, and permission errors.

The integration tests (tests/integration/test_grants.py) prove the printed grants sufficient
against PostgreSQL; these pin what is printed and how SQLSTATE 42501 is reported.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

import sluicegate
from sluicegate import db, grants
from sluicegate.exceptions import (
    ConfigError,
    LedgerError,
    LedgerPermissionDenied,
    PermissionDenied,
    is_transient,
)
from sluicegate.grants import SourceNeeds
from sluicegate.sql import STORES
from support import cli, load, write_project

SOURCE = "postgresql://exporter:pw@db.example/prod"
LEDGER = "postgresql://exporter:pw@ledger.example/books"


def _project(tmp_path: Path, *, ledger: str | None = None) -> sluicegate.Project:
    """A partitioned task (openaq), an incremental one (studies) and an archive one (agency)."""
    root = write_project(tmp_path / "proj", source=SOURCE, destination=str(tmp_path / "out"), ledger=ledger)
    for name, toml, select in (
        ("studies", 'kind = "incremental"\nentity = "study_id"\ncursor = "uploaded_on"\n'
         'path = "{study_id}/{start:%Y%m%d}.{ext}"\n', "SELECT study_id, uploaded_on FROM records"),
        ("agency", 'kind = "archive"\n', "SELECT * FROM agency WHERE updated_at < %(export_boundary)s"),
    ):  # fmt: skip
        (root / "tasks" / name).mkdir()
        (root / "tasks" / name / "task.toml").write_text(toml)
        (root / "tasks" / name / "select.sql").write_text(select)
    (root / "tasks" / "agency" / "delete.sql").write_text(
        "DELETE FROM agency WHERE updated_at < %(export_boundary)s"
    )
    return load(root)


NEEDS = {
    "openaq": SourceNeeds(
        select=(("public", "locations"), ("public", "measurements"), ("public", "sensors"))
    ),
    "studies": SourceNeeds(select=(("public", "records"),)),
    "agency": SourceNeeds(select=(("public", "agency"),), delete=(("public", "agency"),)),
}


def _render(project: sluicegate.Project, names: list[str], **kw: object) -> str:
    databases = {
        "source_database": "prod",
        "ledger_database": "prod" if project.settings.shared_database else "books",
    }
    return grants.render(
        project.select(names),
        NEEDS,
        role="exporter",
        settings=project.settings,
        **databases,
        **kw,  # type: ignore[arg-type]
    )


def _statements(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("--")]


def test_partitioned_grants(tmp_path: Path) -> None:
    text = _render(_project(tmp_path), ["openaq"])
    stmts = _statements(text)
    assert 'GRANT CONNECT ON DATABASE "prod" TO "exporter";' in stmts
    assert 'GRANT USAGE ON SCHEMA "public" TO "exporter";' in stmts
    assert 'GRANT USAGE ON SCHEMA "sluicegate" TO "exporter";' in stmts
    for table in ("locations", "measurements", "sensors"):
        assert f'GRANT SELECT ON TABLE "public"."{table}" TO "exporter";' in stmts
    # The inbox is taken with DELETE ... FOR UPDATE SKIP LOCKED: locking rows needs UPDATE too.
    for inbox in ("change_runs", "changes"):  # PostgreSQL's runs, and single bins from triggers before 11
        assert f'GRANT SELECT, UPDATE, DELETE ON TABLE "sluicegate"."{inbox}" TO "exporter";' in stmts
    assert 'GRANT SELECT, INSERT, UPDATE ON TABLE "sluicegate"."partitions" TO "exporter";' in stmts
    assert 'GRANT USAGE ON SEQUENCE "sluicegate"."partitions_id_seq" TO "exporter";' in stmts
    assert 'GRANT SELECT ON TABLE "sluicegate"."meta" TO "exporter";' in stmts
    assert not any("watermarks" in s or "archive_runs" in s or "pg_read_all_stats" in s for s in stmts)
    assert not any(re.search(r"\bDELETE\b", s) for s in stmts if '"public"' in s)  # the source is read only
    assert len(stmts) == len(set(stmts)), "each statement once"


def test_incremental_grants_need_pg_read_all_stats(tmp_path: Path) -> None:
    stmts = _statements(_render(_project(tmp_path), ["studies"]))
    assert 'GRANT SELECT ON TABLE "public"."records" TO "exporter";' in stmts
    assert 'GRANT pg_read_all_stats TO "exporter";' in stmts
    assert any(
        s.startswith("GRANT SELECT, INSERT, UPDATE") and '"sluicegate"."watermarks"' in s for s in stmts
    )
    assert 'GRANT USAGE ON SEQUENCE "sluicegate"."watermarks_id_seq" TO "exporter";' in stmts
    assert not any("partitions" in s or "changes" in s for s in stmts)


def test_archive_grants_delete_on_the_source_table_only(tmp_path: Path) -> None:
    stmts = _statements(_render(_project(tmp_path), ["agency"]))
    assert 'GRANT SELECT, DELETE ON TABLE "public"."agency" TO "exporter";' in stmts
    assert [s for s in stmts if "DELETE" in s and "task_errors" not in s] == [
        'GRANT SELECT, DELETE ON TABLE "public"."agency" TO "exporter";'
    ]
    assert 'GRANT SELECT, INSERT, UPDATE ON TABLE "sluicegate"."archive_runs" TO "exporter";' in stmts
    assert not any("archive_commits" in s for s in stmts)  # the witness exists only with a separate ledger


def test_a_separate_ledger_gets_its_own_database_section(tmp_path: Path) -> None:
    text = _render(_project(tmp_path, ledger=LEDGER), ["openaq", "agency"])
    lines = text.splitlines()
    assert '\\connect "prod"' in lines and '\\connect "books"' in lines
    source_part = text.split('\\connect "prod"', 1)[1].split('\\connect "books"', 1)[0]
    assert '"sluicegate"."changes"' in source_part  # the inbox lives with the source
    assert '"sluicegate"."change_runs"' in source_part
    assert 'GRANT SELECT ON TABLE "sluicegate"."meta" TO "exporter";' in source_part  # its schema version
    assert '"sluicegate"."archive_commits"' in text.split('\\connect "prod"')[-1]
    assert 'GRANT CONNECT ON DATABASE "books" TO "exporter";' in lines


def test_read_only_grants_select_on_the_ledger_only(tmp_path: Path) -> None:
    stmts = _statements(_render(_project(tmp_path), [], read_only=True))
    tables = [s for s in stmts if " ON TABLE " in s]
    assert tables and all(s.startswith('GRANT SELECT ON TABLE "sluicegate".') for s in tables)
    assert any('"sluicegate"."partitions"' in s for s in tables)
    assert 'GRANT SELECT ON TABLE "sluicegate"."changes" TO "exporter";' in tables  # status counts the inbox
    assert 'GRANT SELECT ON TABLE "sluicegate"."change_runs" TO "exporter";' in tables
    assert not any("archive_commits" in s for s in tables)
    assert not any("SEQUENCE" in s or "pg_read_all_stats" in s for s in stmts)


def test_the_script_says_what_the_owner_does(tmp_path: Path) -> None:
    text = _render(_project(tmp_path), [])
    assert "Run them as the owner" in text and "sluicegate install" in text and "SECURITY DEFINER" in text


def test_every_declared_store_exists_and_ledger_privileges_cover_its_tables() -> None:
    for kind in ("partitioned", "incremental", "archive"):
        stores = grants.ledger_stores(type("T", (), {"kind": kind})())  # type: ignore[arg-type]
        assert stores and set(stores) <= set(STORES)
        for store in stores:
            privileges = grants.store_privileges(store)
            assert all("SELECT" in p for p in privileges.values())
    assert grants.store_privileges("runs")["task_errors"] >= {"INSERT", "UPDATE", "DELETE"}


# ---------------------------------------------------------------------------- errors


def test_sqlstate_42501_is_permission_denied_and_terminal() -> None:
    exc = psycopg.errors.InsufficientPrivilege("permission denied for table measurements")
    assert db.classify(exc) == "terminal"
    error = db.translate(exc, SOURCE)
    assert isinstance(error, PermissionDenied) and not is_transient(error)
    message = str(error)
    assert "permission denied for table measurements" in message and "sluicegate grants" in message
    assert "\n" not in message and "pw@" not in message
    on_ledger = db.translate(exc, LEDGER, ledger=True)
    assert isinstance(on_ledger, LedgerPermissionDenied) and isinstance(on_ledger, LedgerError)
    assert "will retry" not in str(on_ledger)


def test_a_refused_connection_without_connect_is_not_retried() -> None:
    exc = psycopg.OperationalError(
        'connection failed: FATAL:  permission denied for database "prod"\nDETAIL:  User does not have CONNECT privilege.'
    )
    assert db.classify(exc) == "terminal"  # an OperationalError, but waiting will not grant it
    assert isinstance(db.translate(exc, SOURCE), PermissionDenied)


def test_permission_denied_is_public() -> None:
    assert "PermissionDenied" in sluicegate.__all__ and sluicegate.PermissionDenied is PermissionDenied
    assert issubclass(sluicegate.LedgerPermissionDenied, PermissionDenied)


def test_grants_refuse_sqlite(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o")
    )
    with pytest.raises(sluicegate.ConfigError, match="PostgreSQL only"):
        grants.grants(load(root))


def test_names_with_line_breaks_stay_inside_their_comment_lines(tmp_path: Path) -> None:
    """A role, schema or table name with a newline ended its comment line, and what followed it
    (`DROP TABLE measurements; --`) became a statement of the printed script. In statements the
    names are quoted identifiers, where a newline is only a character."""
    evil = "bob\nDROP TABLE measurements; --"
    project = _project(tmp_path)
    text = grants.render(
        project.select(["openaq"]), NEEDS, role=evil, settings=project.settings,
        source_database="prod", ledger_database="prod",
    )  # fmt: skip
    assert "-- GRANTs for role bob\\nDROP TABLE measurements; -- (PostgreSQL)" in text, text
    assert 'TO "bob\nDROP TABLE measurements; --";' in text
    assert "\nDROP TABLE measurements; -- (PostgreSQL)" not in text
    with pytest.raises(ConfigError, match="holds a control character"):
        grants.render(
            project.select(["openaq"]), NEEDS, role="x", settings=project.settings,
            source_database="prod", ledger_database="bo\nks",
        )  # fmt: skip


def test_grants_refuses_a_role_name_on_two_lines(tmp_path: Path) -> None:
    proc = cli(_project(tmp_path).settings.root, "grants", "--role", "bob\nDROP TABLE measurements; --")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a role name; give the name as it is, on one line" in proc.stderr
