"""A PostgreSQL error read from its text, in whatever language the server writes (``lc_messages``).

Most errors come with a SQLSTATE, which says what happened in any language. Some come with the
server's words alone: ADBC's result stream reports an error met mid-read as an ``OSError`` of
libpq's text (``[libpq] Execution error [PGRES_FATAL_ERROR]: FEHLER:  Division durch Null``),
and libpq reports a connection the server refused as text, through psycopg and ADBC alike
(``FATAL:  keine Berechtigung für Datenbank »x«``). Those are read here by the words of every
language PostgreSQL 15 ships (:mod:`sluicegate.pg_words`, generated from its catalogs). A
language it does not know reads as a message of no severity: an error libpq met itself.
"""

from __future__ import annotations

import functools
import re
from typing import Literal, cast

from .pg_words import DENIED, ROLLED_BACK, SEVERITIES, TRANSIENT, WORDS

Severity = Literal["ERROR", "FATAL", "PANIC"]
Meaning = Literal["rolled_back", "transient", "denied"]
_MEANINGS: dict[Meaning, tuple[str, ...]] = {
    "rolled_back": ROLLED_BACK,
    "transient": (*ROLLED_BACK, *TRANSIENT),
    "denied": DENIED,
}
# A printf directive of a message (%s, %u, %2$s): any text of the line in the server's message.
_DIRECTIVE = re.compile(r"%(?:\d+\$)?[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|z)?[a-zA-Z]")


def _said(word: str) -> list[str]:
    """``word`` (an English message) and its translations."""
    return [word, *WORDS.get(word, {}).values()]


@functools.cache
def _severities() -> tuple[dict[str, Severity], re.Pattern[str]]:
    """Each severity word, by language, and where one starts a message: libpq writes a server
    message as ``<severity>:  <message>`` (two spaces), at the start of its text or after a space."""
    words = {w: cast(Severity, s) for s in SEVERITIES for w in _said(s)}
    longest = sorted(words, key=len, reverse=True)  # 比致命错误还过分的错误 before 错误
    return words, re.compile(r"(?:^|(?<=\s))(" + "|".join(map(re.escape, longest)) + r"):  ", re.M)


def severity(text: str) -> Severity | None:
    """The severity of the first server message in libpq's ``text``, by its English name, in any
    language; None when it has none (an error of libpq's own: a refused or broken connection)."""
    words, at = _severities()
    found = at.search(text)
    return words[found.group(1)] if found else None


def without_severity(line: str) -> str:
    """``line`` without the severity it starts with: ``FEHLER:  Division durch Null`` is
    ``Division durch Null``, as ``ERROR:  division by zero`` is ``division by zero``."""
    found = _severities()[1].match(line)
    return line[found.end() :].strip() if found else line


@functools.cache
def _pattern(meaning: Meaning) -> re.Pattern[str]:
    said = [text for word in _MEANINGS[meaning] for text in _said(word)]
    return re.compile("|".join("[^\n]*?".join(map(re.escape, _DIRECTIVE.split(text))) for text in said))


def says(text: str, meaning: Meaning) -> bool:
    """Whether ``text`` holds one of the messages of ``meaning`` (a transaction rolled back, an
    error worth retrying, a privilege the role lacks), in any language."""
    return _pattern(meaning).search(text) is not None
