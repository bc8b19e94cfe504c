"""One masker for secrets in URLs and in the messages that mention them.

Database and endpoint URLs carry secrets in two places: the password of the userinfo
(``postgresql://user:pw@host/db``) and query parameters (``?password=pw``,
``?sslpassword=pw``, ``?aws_secret_access_key=...``, ``?token=...``). :func:`mask_url` hides
both; :func:`scrub` also removes every secret of the given URLs from a free text such as a
driver's error message, which may echo a connection string. Everything that prints, logs or
stores a URL or a driver message goes through here.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

MASK = "***"
# Query parameter names whose values are secrets: exact names, and names containing a word.
_SECRET_NAMES = {"password", "sslpassword", "pass", "pwd"}
_SECRET_WORDS = ("secret", "token", "key", "password")
# name=value pairs in free text (libpq conninfo strings, echoed settings) whose name says secret.
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_PAIR = re.compile(r"(?i)\b([a-z_]*(?:password|passwd|secret|token)[a-z_]*)\s*=\s*('[^']*'|[^\s&;,]+)")


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def _split(url: str) -> tuple[str, str, str, str] | None:
    """``(scheme://, userinfo, rest-of-authority-and-path, query-and-fragment)`` or None.

    The userinfo ends at the last ``@`` before the first ``/``, even past a ``?`` or ``#``:
    libpq reads ``postgresql://u:pa?ss@h/db`` as the password ``pa?ss``, and it connects. Without
    a ``:`` before it, an ``@`` after a ``?`` or ``#`` is the query's (``h/?token=t&to=a@b``).
    A raw ``/`` in the password (``u:pa/ss@h/db``, which no driver reads) leaves ``u:pa`` before
    the first ``/``, a host with no port number: the userinfo then ends at the last ``@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    slash = rest.find("/")
    query = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, slash if slash >= 0 else len(rest))
    if at >= 0 and ":" not in rest[:at]:
        at = rest.rfind("@", 0, min(query, slash) if slash >= 0 else query)
    elif at < 0 and 0 <= slash < query and not rest[:slash].rpartition(":")[2].isdigit():
        at = rest.rfind("@") if ":" in rest[:slash] else at  # u:pa/ss@h, not host:port/...
    userinfo, rest = (rest[:at], rest[at:]) if at >= 0 else ("", rest)
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return f"{scheme}{sep}", userinfo, rest[:cut], rest[cut:]


def _mask_query(tail: str) -> str:
    if not tail.startswith("?"):
        return tail
    query, hash_, fragment = tail[1:].partition("#")
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and _secret_name(unquote(name)) else item)
    return "?" + "&".join(parts) + hash_ + fragment


def mask_url(url: str) -> str:
    """Return ``url`` with its userinfo password and secret query parameters replaced by ``***``."""
    split = _split(url)
    if split is None:
        return _PAIR.sub(lambda m: f"{m.group(1)}={MASK}", url)
    scheme, userinfo, rest, tail = split
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + MASK
    return f"{scheme}{userinfo}{rest}{_mask_query(tail)}"


def secrets_of(url: str) -> list[str]:
    """The secret values in ``url`` (raw and percent-decoded), longest first."""
    found: list[str] = []
    split = _split(url)
    if split is not None:
        _, userinfo, _, tail = split
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        query = tail[1:].partition("#")[0] if tail.startswith("?") else ""
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if eq and value and _secret_name(unquote(name)):
                found.append(value)
    found += [m.group(2).strip("'") for m in _PAIR.finditer(url)]
    values = {v for s in found for v in (s, unquote(s)) if len(v) >= 1}
    return sorted(values, key=len, reverse=True)


# A secret this short also turns up inside words ("a" in "table"): it is masked where it stands
# alone. A longer one is masked wherever it appears (a driver may glue it to other text).
_SHORT = 6


def _masked(text: str, secret: str) -> str:
    if len(secret) >= _SHORT:
        return text.replace(secret, MASK)
    # Only an end that is a letter, digit or _ could be inside a word ("#1" is masked in "key#1").
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.sub(before + re.escape(secret) + after, MASK, text)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every secret of ``urls`` and every ``password=...``-style pair masked."""
    for url in urls:
        if url:
            for secret in secrets_of(url):
                text = _masked(text, secret)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _PAIR.sub(lambda m: f"{m.group(1)}={MASK}", text)


class ScrubFilter(logging.Filter):
    """A logging filter that masks the secrets of ``urls`` (and any URL password) in every record."""

    def __init__(self, *urls: str | None) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, masked, so arguments cannot carry a secret past the filter."""
        message = record.getMessage()
        cleaned = scrub(message, *self.urls)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info:  # a driver's exception in the traceback may repeat a password
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), *self.urls)
            record.exc_info = None  # formatters print exc_text (no handler formats the raw one)
        return True
