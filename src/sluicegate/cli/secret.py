"""``secret``: encrypt configuration values with a Fernet key, decrypt them, make a key."""

from __future__ import annotations

import os
import sys

import click

from .. import secrets
from ..exceptions import ConfigError, UsageError
from .app import handled, main


@main.group()
def secret() -> None:
    """Fernet-encrypted configuration values (key in SLUICEGATE_FERNET_KEY or ATD_MDS_FERNET_KEY)."""


def _key() -> str:
    key = secrets.fernet_key(os.environ)
    if not key:
        raise ConfigError(
            f"set {secrets.KEY_ENV} (or {secrets.LEGACY_KEY_ENV}) to a Fernet key; "
            "'sluicegate secret key' makes one"
        )
    return key


def _value(value: str) -> str:
    if value != "-":
        return value
    try:
        return sys.stdin.buffer.read().decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise UsageError("standard input is not UTF-8 text; give the value as UTF-8") from None


@secret.command()
@click.argument("value")
@handled
def encrypt(value: str) -> None:
    """Print VALUE (- reads it from stdin) as a Fernet token to paste into task.toml."""
    click.echo(secrets.encrypt(_value(value), _key(), key_name=secrets.fernet_key_name(os.environ)))


@secret.command()
@click.argument("token")
@handled
def decrypt(token: str) -> None:
    """Print the text of a Fernet TOKEN (- reads it from stdin)."""
    click.echo(secrets.decrypt(_value(token).strip(), _key(), key_name=secrets.fernet_key_name(os.environ)))


@secret.command()
def key() -> None:
    """Print a new random Fernet key for SLUICEGATE_FERNET_KEY."""
    click.echo(secrets.generate_key())
