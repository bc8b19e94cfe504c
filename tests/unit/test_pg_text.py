"""A PostgreSQL error told from its text in every language the server writes (sluicegate.pg_text).

The texts below are what a PostgreSQL 15 server with ``lc_messages = 'de_DE.UTF-8'`` sent, as
ADBC's result stream (an ``OSError``) and psycopg (a refused connection) report them; the other
languages' words come from the server's catalogs, which the table must match.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import psycopg
import pytest

from plugins.common import service_unavailable
from sluicegate import db, pg_text, source_outage
from sluicegate.exceptions import PermissionDenied, SourceLost
from sluicegate.pg_words import DENIED, LANGUAGES, ROLLED_BACK, SEVERITIES, TRANSIENT, WORDS

REPO = Path(__file__).resolve().parents[2]
STREAM = "[libpq] Execution error [PGRES_FATAL_ERROR]: "


def test_the_words_are_those_of_postgresqls_catalogs() -> None:
    script = runpy.run_path(str(REPO / "scripts" / "pg_words.py"))  # its globals
    if not script["catalogs"](script["LOCALEDIR"]):
        service_unavailable(
            f"no PostgreSQL 15 message catalogs ({script['DOMAIN']}.mo) under {script['LOCALEDIR']}"
        )
    assert script["render"]() == script["MODULE"].read_text(encoding="utf-8"), (
        "run python scripts/pg_words.py --write"
    )
    assert {"de", "fr", "ja", "ru", "zh_CN"} <= set(LANGUAGES)


def _in(language: str, word: str) -> str:
    return WORDS[word].get(language, word)


@pytest.mark.parametrize("language", ["en", *LANGUAGES])
def test_a_severity_is_read_in_every_language(language: str) -> None:
    for severity in SEVERITIES:
        said = f"{STREAM}{_in(language, severity)}:  x\n"
        assert pg_text.severity(said) == severity, said
        refused = f'connection to server at "h", port 5432 failed: {_in(language, severity)}:  x\nDETAIL:  y'
        assert pg_text.severity(refused) == severity, refused
        assert pg_text.without_severity(said.removeprefix(STREAM)) == "x"


def test_no_severity_is_read_where_libpq_met_the_error_itself() -> None:
    assert pg_text.severity(f"{STREAM}server closed the connection unexpectedly") is None  # not PGRES_FATAL_
    assert pg_text.severity("IO: Failed to prepare query: no connection to the server") is None
    assert pg_text.without_severity("ERRORS:  x") == "ERRORS:  x"
    assert pg_text.severity(f"{STREAM}比致命错误还过分的错误:  x") == "PANIC"  # ends with 致命错误, 错误


@pytest.mark.parametrize("language", ["en", *LANGUAGES])
def test_a_message_is_read_in_every_language(language: str) -> None:
    for meaning, words in (("rolled_back", ROLLED_BACK), ("transient", TRANSIENT), ("denied", DENIED)):
        for word in words:
            said = re.sub(r"%(\d\$)?s", "public.measurements", _in(language, word))
            assert pg_text.says(f"{STREAM}{_in(language, 'ERROR')}:  {said}\n", meaning), said
    assert not pg_text.says(f"{STREAM}{_in(language, 'ERROR')}:  x\n", "transient")


def test_a_german_servers_error_on_adbcs_result_stream_is_the_querys() -> None:
    """German's "FEHLER:" was not English's "ERROR:": the query's error was an outage, and kept its word."""
    divided = OSError(f"{STREAM}FEHLER:  Division durch Null\n")
    assert db.classify(divided) == "terminal"
    assert str(db.translate(divided, "postgresql://u:pw@h/d")).endswith("/d: Division durch Null")
    locked = OSError(f"{STREAM}FEHLER:  storniere Anfrage wegen Zeitüberschreitung einer Sperre\n")
    assert db.classify(locked) == "transient" and not source_outage.connection_lost(locked)


def test_a_german_servers_end_of_the_session_is_a_lost_connection() -> None:
    ended = OSError(
        f"{STREAM}FATAL:  Verbindung wird abgebrochen aufgrund von Anweisung des Administrators\n"
    )
    assert db.classify(ended) == "transient" and source_outage.connection_lost(ended)
    assert isinstance(db.translate(ended, "postgresql://u:pw@h/d"), SourceLost)


def test_a_german_servers_refused_connection_for_want_of_connect_is_not_retried() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  keine'
        " Berechtigung für Datenbank »prod«\nDETAIL:  Benutzer hat das CONNECT-Privileg nicht."
    )
    assert db.denied(exc) and db.classify(exc) == "terminal"
    assert isinstance(db.translate(exc, "postgresql://u:pw@h/prod"), PermissionDenied)
