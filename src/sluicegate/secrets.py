"""Fernet-encrypted configuration values, and a string type that will not leak them.

A configuration value (a provider's API token, a portal password) may be stored as a
`Fernet <https://github.com/fernet/spec/blob/master/Spec.md>`_ token instead of in plain
text. :func:`resolve` decrypts such a value with the key from ``SLUICEGATE_FERNET_KEY``
(or ``ATD_MDS_FERNET_KEY``, the variable City of Austin's atd-mds ETL used, so its
encrypted configuration keeps working) and hands back a :class:`Secret`, whose ``str``,
``repr`` and format are ``***``: only :meth:`Secret.reveal` gives the text, so a secret
written to a log or a JSON document by accident shows as ``***``.

Values that are not tokens pass through unchanged, so plain-text configuration keeps
working. Errors are :class:`~sluicegate.exceptions.ConfigError` with one sentence naming
the field (``where``); they never contain the key or a decrypted value.

The environment is read only at the edge: pass ``os.environ`` (or a test's mapping) to
:func:`fernet_key`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from sluicegate.exceptions import ConfigError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = [
    "KEY_ENV",
    "LEGACY_KEY_ENV",
    "Secret",
    "decrypt",
    "encrypt",
    "fernet_key",
    "fernet_key_name",
    "generate_key",
    "is_token",
    "resolve",
    "reveal",
]

KEY_ENV: Final = "SLUICEGATE_FERNET_KEY"
LEGACY_KEY_ENV: Final = "ATD_MDS_FERNET_KEY"

# A token is base64url (with padding) of: version 0x80 | 8-byte timestamp | 16-byte IV |
# AES-128-CBC ciphertext (whole 16-byte blocks, at least one) | 32-byte HMAC-SHA256.
_VERSION: Final = 0x80
_HEADER_BYTES: Final = 1 + 8 + 16
_HMAC_BYTES: Final = 32
_AES_BLOCK: Final = 16
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# Version byte 0x80 and a timestamp before 2106 encode as "gAAAAA": what a token looks like.
_TOKEN_PREFIX: Final = "gAAAAA"
_REDACTED: Final = "***"


class Secret:
    """A secret string that prints as ``***``; call :meth:`reveal` for the text.

    It is deliberately not a ``str`` subclass: ``json.dumps`` would write a ``str``
    subclass's real content, and string methods would leak pieces of it. Two secrets are
    equal when their texts are (compared in constant time).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """Return the secret text. Call it only where the text is used, never to print it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_REDACTED}')"

    def __str__(self) -> str:
        return _REDACTED

    def __format__(self, format_spec: str) -> str:
        return format(_REDACTED, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        # Pickling (e.g. to a worker process) keeps the value; only its display is redacted.
        return (Secret, (self._value,))


def reveal(value: str | Secret) -> str:
    """Return the text of a value :func:`resolve` returned, whether it was a token or not."""
    return value.reveal() if isinstance(value, Secret) else value


def generate_key() -> str:
    """Return a new random Fernet key (44 characters of base64url) for ``SLUICEGATE_FERNET_KEY``."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def encrypt(value: str, key: str, *, key_name: str | None = None) -> str:
    """Encrypt ``value`` with ``key``; return the Fernet token as text.

    Raises :class:`ConfigError` when ``key`` is not a Fernet key (naming ``key_name``, the
    environment variable it came from, when given).
    """
    phrase = f"the key in {key_name}" if key_name else "the key"
    return _fernet(key, phrase, None).encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str, key: str, *, key_name: str | None = None) -> str:
    """Decrypt the Fernet ``token`` with ``key`` and return the text.

    Raises :class:`ConfigError` when ``token`` is not a token, ``key`` is not a Fernet
    key, or the token was not made with ``key`` (or was damaged).
    """
    return _decrypt(token, key, "The value", f"the key in {key_name}" if key_name else "the given key")


def is_token(value: str) -> bool:
    """Return True when ``value`` has the structure of a Fernet token.

    It must be padded base64url that decodes to the version byte 0x80, an 8-byte
    timestamp, a 16-byte IV, one or more whole 16-byte cipher blocks and a 32-byte HMAC.
    Only the key can prove that a well-formed token is genuine.
    """
    if not isinstance(value, str) or len(value) % 4 or not _BASE64URL.fullmatch(value):
        return False
    try:
        data = base64.urlsafe_b64decode(value)
    except (binascii.Error, ValueError):
        return False
    ciphertext = len(data) - _HEADER_BYTES - _HMAC_BYTES
    return bool(data) and data[0] == _VERSION and ciphertext >= _AES_BLOCK and ciphertext % _AES_BLOCK == 0


def fernet_key(env: Mapping[str, str]) -> str | None:
    """Return the key from ``SLUICEGATE_FERNET_KEY``, else ``ATD_MDS_FERNET_KEY``, else None.

    Surrounding whitespace is dropped and an empty variable counts as unset.
    """
    name = _key_variable(env)
    return None if name is None else env[name].strip()


def fernet_key_name(env: Mapping[str, str]) -> str:
    """Name the variable :func:`fernet_key` reads the key from (``SLUICEGATE_FERNET_KEY`` if none)."""
    return _key_variable(env) or KEY_ENV


def resolve(value: str, key: str | None, where: str, *, key_name: str = KEY_ENV) -> str | Secret:
    """Decrypt ``value`` if it is a Fernet token; return any other value unchanged.

    :param value: a configuration value, plain text or a token.
    :param key: the Fernet key (from :func:`fernet_key`), or None when none is set.
    :param where: the file and field the value came from, e.g. ``"providers.toml: lime.token"``;
        error messages start with it.
    :param key_name: the environment variable ``key`` came from, named in error messages
        (pass :func:`fernet_key_name`).
    :returns: a :class:`Secret` holding the decrypted text, or ``value`` itself.
        (A plain-text value that happens to be a Fernet token itself, such as an API token
        issued as one, is taken for an encrypted value: encrypt it to store it.)
    :raises ConfigError: the value is a token but no key is set, the key is not a Fernet
        key, the key does not decrypt it, or the value looks like a token but is damaged.
    """
    candidate = value.strip()
    if not is_token(candidate):
        if candidate.startswith(_TOKEN_PREFIX):
            raise ConfigError(
                f"{where} looks like a Fernet token but is damaged (wrong length or characters); "
                "paste the whole token again or encrypt the value again."
            )
        return value
    if not key:
        raise ConfigError(
            f"{where} is encrypted; set {KEY_ENV} (or {LEGACY_KEY_ENV}) "
            "to the Fernet key it was encrypted with."
        )
    return Secret(_decrypt(candidate, key, where, f"the key in {key_name}"))


def _key_variable(env: Mapping[str, str]) -> str | None:
    for name in (KEY_ENV, LEGACY_KEY_ENV):
        if env.get(name, "").strip():
            return name
    return None


def _fernet(key: str, key_phrase: str, where: str | None) -> Fernet:
    """Build a Fernet from ``key``; ``key_phrase`` says where the key came from."""
    # Imported here, not at the top: most commands never decrypt, and cryptography costs
    # ~10 ms of every start-up.
    from cryptography.fernet import Fernet

    try:
        # Checked here too: cryptography 51 takes a key without its "=" padding, which 50 refused
        # and our docs and users' other tools (atd-mds) call malformed.
        if not (isinstance(key, str) and len(key) == 44 and _BASE64URL.fullmatch(key)):
            raise ValueError("not 44 characters of padded base64url")
        return Fernet(key)
    except (ValueError, TypeError):
        # `from None`: the causes are cryptography's and binascii's messages; never print the key.
        problem = f"{key_phrase} is not a Fernet key (32 bytes in base64url, 44 characters)"
        if where is None:
            raise ConfigError(
                f"{problem[0].upper()}{problem[1:]}; make one with 'sluicegate secret key'"
                " (or sluicegate.secrets.generate_key())."
            ) from None
        raise ConfigError(
            f"{where} cannot be decrypted: {problem}; use the key it was encrypted with."
        ) from None


def _decrypt(token: str, key: str, where: str, key_phrase: str) -> str:
    if not is_token(token):
        raise ConfigError(f"{where} is not a Fernet token; give the whole token as encrypt() returned it.")
    from cryptography.fernet import InvalidToken

    fernet = _fernet(key, key_phrase, where)
    try:
        plain = fernet.decrypt(token)
    except InvalidToken:
        raise ConfigError(
            f"{where} could not be decrypted with {key_phrase}; use the key it was encrypted with, "
            "or encrypt the value again with this key."
        ) from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where} decrypts to bytes that are not UTF-8 text; encrypt the text again."
        ) from None
