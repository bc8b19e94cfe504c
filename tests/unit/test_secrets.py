"""Fernet-encrypted configuration values: round trips, clear errors that leak nothing, redaction."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import pickle
import traceback

import pytest
from cryptography.fernet import Fernet

from sluicegate.exceptions import ConfigError
from sluicegate.secrets import (
    Secret,
    decrypt,
    encrypt,
    fernet_key,
    fernet_key_name,
    generate_key,
    is_token,
    resolve,
    reveal,
)

PLAIN = "hunter2-provider-api-token"
WHERE = "providers.toml: providers.lime.token"
KEY = generate_key()
OTHER_KEY = generate_key()


def assert_leaks_nothing(exc: ConfigError, *secrets: str) -> None:
    """Neither the message nor the printed traceback holds a key or the plaintext."""
    printed = "".join(traceback.format_exception(exc))
    for secret in (PLAIN, KEY, OTHER_KEY, *secrets):
        assert secret not in str(exc)
        assert secret not in printed
    # No chained cryptography or binascii errors that the CLI would print as causes.
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    message = str(exc)
    assert message.endswith(".") and "\n" not in message


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("text", ["", "x", PLAIN, "pässwörd with ünïcode ✓", "a" * 1000])
def test_encrypt_then_decrypt_gives_the_text_back(text: str) -> None:
    token = encrypt(text, KEY)

    assert is_token(token)
    assert decrypt(token, KEY) == text
    assert encrypt(text, KEY) != token  # a fresh IV every time
    assert Fernet(KEY.encode()).decrypt(token.encode()).decode() == text  # plain Fernet, interoperable


def test_tokens_made_by_the_original_etl_decrypt() -> None:
    """atd-mds encrypted with cryptography's Fernet directly; those values resolve as they are."""
    legacy_token = Fernet(KEY.encode()).encrypt(PLAIN.encode()).decode()

    resolved = resolve(legacy_token, fernet_key({"ATD_MDS_FERNET_KEY": KEY}), WHERE)

    assert isinstance(resolved, Secret) and resolved.reveal() == PLAIN


def test_resolve_returns_plain_values_unchanged_even_without_a_key() -> None:
    for value in ["https://mds.lime.example/api", "", "AAAAAA", "xAAAAAlooks-like-the-old-heuristic"]:
        assert resolve(value, None, WHERE) is value
        assert resolve(value, KEY, WHERE) is value


def test_resolve_decrypts_tokens_into_a_secret() -> None:
    token = encrypt(PLAIN, KEY)

    resolved = resolve(token, KEY, WHERE)
    padded = resolve(f"  {token}\n", KEY, WHERE)  # as read from a file or a YAML block

    assert isinstance(resolved, Secret) and resolved.reveal() == PLAIN
    assert padded == resolved
    assert reveal(resolved) == PLAIN and reveal("plain") == "plain"


def test_generate_key_makes_distinct_usable_keys() -> None:
    keys = {generate_key() for _ in range(5)}

    assert len(keys) == 5
    assert all(len(key) == 44 and len(base64.urlsafe_b64decode(key)) == 32 for key in keys)


# --------------------------------------------------------------------------- errors


def test_wrong_key_is_a_config_error_that_names_the_field_and_leaks_nothing() -> None:
    token = encrypt(PLAIN, KEY)

    with pytest.raises(ConfigError) as caught:
        resolve(token, OTHER_KEY, WHERE)

    assert str(caught.value).startswith(
        f"{WHERE} could not be decrypted with the key in SLUICEGATE_FERNET_KEY; "
    )
    assert_leaks_nothing(caught.value, token)


def test_wrong_key_message_names_the_variable_the_key_came_from() -> None:
    env = {"ATD_MDS_FERNET_KEY": OTHER_KEY}

    with pytest.raises(ConfigError, match="with the key in ATD_MDS_FERNET_KEY;") as caught:
        resolve(encrypt(PLAIN, KEY), fernet_key(env), WHERE, key_name=fernet_key_name(env))

    assert_leaks_nothing(caught.value)


def test_decrypt_with_the_wrong_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="could not be decrypted with the given key") as caught:
        decrypt(encrypt(PLAIN, KEY), OTHER_KEY)

    assert_leaks_nothing(caught.value)


def test_tampered_token_does_not_decrypt() -> None:
    data = bytearray(base64.urlsafe_b64decode(encrypt(PLAIN, KEY)))
    data[30] ^= 0x01  # one bit of the ciphertext: the structure is intact, the HMAC is not
    tampered = base64.urlsafe_b64encode(bytes(data)).decode()
    assert is_token(tampered)

    with pytest.raises(ConfigError, match="could not be decrypted") as caught:
        resolve(tampered, KEY, WHERE)

    assert_leaks_nothing(caught.value)


@pytest.mark.parametrize("key", [None, ""])
def test_encrypted_value_without_a_key_says_which_variable_to_set(key: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(encrypt(PLAIN, KEY), key, WHERE)

    assert str(caught.value) == (
        f"{WHERE} is encrypted; set SLUICEGATE_FERNET_KEY (or ATD_MDS_FERNET_KEY) "
        "to the Fernet key it was encrypted with."
    )


@pytest.mark.parametrize(
    "bad_key",
    ["not-a-key", KEY[:-4], KEY.replace("=", ""), "é" * 44, base64.urlsafe_b64encode(b"k" * 16).decode()],
)
def test_malformed_key_is_a_config_error_that_leaks_nothing(bad_key: str) -> None:
    token = encrypt(PLAIN, KEY)

    with pytest.raises(ConfigError) as resolved:
        resolve(token, bad_key, WHERE)
    with pytest.raises(ConfigError) as encrypted:
        encrypt(PLAIN, bad_key)

    assert str(resolved.value).startswith(
        f"{WHERE} cannot be decrypted: the key in SLUICEGATE_FERNET_KEY is not a Fernet key"
    )
    assert str(encrypted.value).startswith("The key is not a Fernet key")
    assert_leaks_nothing(resolved.value, bad_key)
    assert_leaks_nothing(encrypted.value, bad_key)


def damaged_tokens() -> list[str]:
    token = encrypt(PLAIN, KEY)
    return [
        token[:-4],  # truncated by a whole base64 quantum
        token[:-1],  # lost its padding
        token[:40] + "!" + token[41:],  # a character outside base64url
        token.replace("-", "+").replace("_", "/") if ("-" in token or "_" in token) else token[:-5] + "+===",
        token[:60] + " " + token[60:],  # a space inside
    ]


@pytest.mark.parametrize("damaged", damaged_tokens())
def test_damaged_token_is_reported_not_passed_through_as_plain_text(damaged: str) -> None:
    assert not is_token(damaged)

    with pytest.raises(ConfigError) as resolved:
        resolve(damaged, KEY, WHERE)
    with pytest.raises(ConfigError, match="is not a Fernet token") as decrypted:
        decrypt(damaged, KEY)

    assert str(resolved.value).startswith(f"{WHERE} looks like a Fernet token but is damaged")
    assert_leaks_nothing(resolved.value, damaged)
    assert_leaks_nothing(decrypted.value, damaged)


# --------------------------------------------------------------------------- is_token


def test_is_token_accepts_real_tokens() -> None:
    for length in range(0, 70, 7):  # ciphertexts of one to five AES blocks
        assert is_token(encrypt("p" * length, KEY))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@pytest.mark.parametrize(
    "look_alike",
    [
        "gAAAAA",  # the prefix alone
        "gAAAAABhello-world",  # prefix and text
        "gAAAAAB" + "x" * 93,  # right alphabet and padding, 75 bytes: no whole cipher block
        "xAAAAAxyz",  # passes the original `s[1:6] == "AAAAA"` heuristic
        b64(bytes(range(100))),  # random-looking base64 with the wrong version byte
        b64(b"\x80" + b"\x00" * 8 + b"\x11" * (16 + 16 + 31)),  # version ok, HMAC a byte short
        b64(b"\x80" + b"\x00" * 8 + b"\x11" * (16 + 24 + 32)),  # ciphertext not whole blocks
        b64(b"\x80" + b"\x00" * 8 + b"\x11" * (16 + 32)),  # no ciphertext at all
        "",
    ],
)
def test_is_token_rejects_look_alikes(look_alike: str) -> None:
    assert not is_token(look_alike)


def test_is_token_rejects_tokens_with_surrounding_whitespace_and_non_strings() -> None:
    token = encrypt(PLAIN, KEY)

    assert not is_token(token + "\n")
    assert not is_token(" " + token)
    assert not is_token(token.encode())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the key


def test_fernet_key_prefers_the_sluicegate_variable() -> None:
    both = {"SLUICEGATE_FERNET_KEY": KEY, "ATD_MDS_FERNET_KEY": OTHER_KEY}
    legacy = {"ATD_MDS_FERNET_KEY": f" {OTHER_KEY}\n"}
    blank = {"SLUICEGATE_FERNET_KEY": "  ", "ATD_MDS_FERNET_KEY": OTHER_KEY}

    assert (fernet_key(both), fernet_key_name(both)) == (KEY, "SLUICEGATE_FERNET_KEY")
    assert (fernet_key(legacy), fernet_key_name(legacy)) == (OTHER_KEY, "ATD_MDS_FERNET_KEY")
    assert (fernet_key(blank), fernet_key_name(blank)) == (OTHER_KEY, "ATD_MDS_FERNET_KEY")
    assert (fernet_key({}), fernet_key_name({})) == (None, "SLUICEGATE_FERNET_KEY")
    assert fernet_key({"SLUICEGATE_FERNET_KEY": ""}) is None


# --------------------------------------------------------------------------- Secret


@dataclasses.dataclass(frozen=True)
class ProviderSettings:
    name: str
    token: Secret


def test_secret_is_redacted_in_repr_str_and_formatting() -> None:
    secret = Secret(PLAIN)
    settings = ProviderSettings(name="lime", token=secret)

    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***" and f"{secret!r}" == "Secret('***')" and f"{secret:>5}" == "  ***"
    assert "%s %r" % (secret, secret) == "*** Secret('***')"  # noqa: UP031 - the logging style
    assert "{}".format(secret) == "***"  # noqa: UP032
    assert PLAIN not in repr(settings) and PLAIN not in repr([secret, {"token": secret}])
    assert secret.reveal() == PLAIN


def test_secret_is_redacted_in_json() -> None:
    document = {"provider": "lime", "token": Secret(PLAIN)}

    dumped = json.dumps(document, default=str)

    assert json.loads(dumped) == {"provider": "lime", "token": "***"}
    with pytest.raises(TypeError):  # without default= it refuses instead of writing the text
        json.dumps(document)


def test_secret_is_redacted_in_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = resolve(encrypt(PLAIN, KEY), KEY, WHERE)
    logger = logging.getLogger("sluicegate.test_secrets")

    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("token %s", secret)
        logger.debug("token %r", secret)
        logger.debug(f"token {secret}")  # the careless style this guards against
        logger.debug("settings %s", {"token": secret})
        try:
            raise RuntimeError(f"request failed with {secret}")
        except RuntimeError:
            logger.debug("failed", exc_info=True)

    assert len(caplog.records) == 5
    assert PLAIN not in caplog.text
    assert "token ***" in caplog.text and "Secret('***')" in caplog.text


def test_secret_compares_hashes_and_copies_by_value() -> None:
    secret = Secret(PLAIN)

    assert secret == Secret(PLAIN) and secret != Secret("other") and hash(secret) == hash(Secret(PLAIN))
    assert secret != PLAIN  # never equal to a str: comparisons cannot probe it
    assert copy.deepcopy(secret).reveal() == PLAIN
    assert pickle.loads(pickle.dumps(secret)).reveal() == PLAIN
    assert bool(secret) and not bool(Secret(""))
    assert not hasattr(secret, "__dict__")
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]
