"""The environment variables that fill or override ``sluicegate.toml``: ``SLUICEGATE_SECTION__KEY``,
the OpenAQ exporter's names (``LIMIT``, ``WRITE_FILE_LOCATION``, ``OPEN_DATA_BUCKET``, ...) and
``DATABASE_*``. :mod:`sluicegate.config` applies them; nothing here reads ``os.environ``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from . import validate
from .exceptions import ConfigError

# Every key of sluicegate.toml, by section.
SETTINGS_KEYS: dict[str, frozenset[str]] = {
    "source": frozenset({"url"}),
    "ledger": frozenset({"url", "schema"}),
    "destination": frozenset(
        {
            "url",
            "endpoint_url",
            "region",
            "access_key_id",
            "secret_access_key",
            "multipart_threshold",
            "uploads_in_flight",
            "s3_client",
            "sync",
            "manifests",
        }
    ),
    "defaults": frozenset(
        {"format", "batch_size", "limit", "lease", "max_attempts", "workers", "backoff", "log_level"}
    ),
    "service": frozenset({"public_metrics", "max_request_bytes"}),
    "testing": frozenset({"fault"}),
}


# Every environment variable that overrides or fills sluicegate.toml (see overrides): the
# OpenAQ exporter's names, the Common Knowledge service's, and the prefixes of
# SLUICEGATE_SECTION__KEY and DATABASE_*.
OVERRIDE_ENV_NAMES = (
    "DSL_PATH",
    "EXPORT_PATH",
    "LIMIT",
    "WRITE_FILE_LOCATION",
    "WRITE_FILE_FORMAT",
    "OPEN_DATA_BUCKET",
    "LOCAL_SAVE_DIRECTORY",
    "LOG_LEVEL",
)
OVERRIDE_ENV_PREFIXES = ("SLUICEGATE_", "DATABASE_")
# The SLUICEGATE_* variables that are not SECTION__KEY overrides (read by the service, the
# secrets module, the Lambda handler and the CLI). Any other plain SLUICEGATE_* is a typo.
PLAIN_ENV_NAMES = (
    "SLUICEGATE_API_TOKEN",
    "SLUICEGATE_READ_TOKEN",
    "SLUICEGATE_FERNET_KEY",
    "SLUICEGATE_PROJECT",
    "SLUICEGATE_TASK",
    "SLUICEGATE_LAMBDA_MARGIN",
)


def overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Collect overrides: OpenAQ exporter names first, then ``SLUICEGATE_SECTION__KEY`` on top."""
    out: dict[str, dict[str, str]] = {}

    def put(section: str, key: str, value: str) -> None:
        out.setdefault(section, {})[key] = value

    # The OpenAQ exporter's environment, so its users can switch without renaming.
    for name, key in (("LIMIT", "limit"), ("WRITE_FILE_FORMAT", "format"), ("LOG_LEVEL", "log_level")):
        if name in env:
            put("defaults", key, env[name])
    location = env.get("WRITE_FILE_LOCATION")
    if location == "s3" and env.get("OPEN_DATA_BUCKET"):
        put("destination", "url", f"s3://{env['OPEN_DATA_BUCKET']}")
    elif location == "local" or (location is None and "LOCAL_SAVE_DIRECTORY" in env):
        put("destination", "url", env.get("LOCAL_SAVE_DIRECTORY") or ".")
    elif location is not None and location not in ("s3", "local"):
        raise ConfigError(f"WRITE_FILE_LOCATION={location!r} is not a valid location; use 's3' or 'local'")
    for role, section in (("READ", "source"), ("WRITE", "ledger")):
        url = env.get(f"DATABASE_{role}_URL") or openaq_db_url(env, role)
        if url:
            put(section, "url", url)
    for name, value in env.items():
        if not name.startswith("SLUICEGATE_"):
            continue
        if "__" not in name:
            validate.reject_unknown({name: 1}, PLAIN_ENV_NAMES, "environment", what="variable")
            continue
        section, _, key = name[len("SLUICEGATE_") :].partition("__")
        section, key = section.lower(), key.lower()
        validate.reject_unknown({section: 1}, SETTINGS_KEYS, f"environment variable {name}", what="section")
        validate.reject_unknown({key: 1}, SETTINGS_KEYS[section], f"environment variable {name}")
        put(section, key, value)
    return out


def openaq_db_url(env: Mapping[str, str], role: str) -> str | None:
    host, db = env.get("DATABASE_HOST"), env.get("DATABASE_DB")
    if not host or not db or (role == "WRITE" and not env.get("DATABASE_WRITE_USER")):  # ledger: the source's
        return None
    user = quote(env.get(f"DATABASE_{role}_USER", ""), safe="")
    password = env.get(f"DATABASE_{role}_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    return f"postgresql://{auth}{host}:{env.get('DATABASE_PORT', '5432')}/{db}"


def origins(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """The environment variable each overridden ``(section, key)`` came from."""
    out = {("defaults", k): n for n, k in (("LIMIT", "limit"), ("WRITE_FILE_FORMAT", "format"),
                                          ("LOG_LEVEL", "log_level")) if n in env}  # fmt: skip
    for name in env:
        section, sep, key = name.removeprefix("SLUICEGATE_").partition("__")
        if name.startswith("SLUICEGATE_") and sep:
            out[(section.lower(), key.lower())] = name
    return out


def require_s3_destination(env: Mapping[str, str], raw: Mapping[str, Any]) -> None:
    """``WRITE_FILE_LOCATION=s3`` without ``OPEN_DATA_BUCKET`` (or an ``s3://`` destination in the
    file) is refused: the files went to the local folder without a word."""
    url = str(raw.get("destination", {}).get("url"))
    if env.get("WRITE_FILE_LOCATION") != "s3" or url.startswith("s3:"):
        return
    if env.get("OPEN_DATA_BUCKET"):  # SLUICEGATE_DESTINATION__URL, applied after it, named a folder
        raise ConfigError(
            f"WRITE_FILE_LOCATION=s3 names bucket {env['OPEN_DATA_BUCKET']!r}, but"
            f" SLUICEGATE_DESTINATION__URL sets the destination to {url!r}; unset one of the two"
        )
    raise ConfigError(
        'WRITE_FILE_LOCATION=s3 needs OPEN_DATA_BUCKET (or [destination] url = "s3://bucket/prefix");'
        " set it to the bucket, or set WRITE_FILE_LOCATION=local"
    )
