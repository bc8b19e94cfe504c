"""Reading a blocks task's ``task.toml``: its keys, its stages, callables and encrypted values.

Kept apart from :mod:`sluicegate.drivers.blocks` (the spec, the driver) so that module stays
one screenful per concern. Every error is a ConfigError naming the file and the setting.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import records, secrets, tables, validate
from ..exceptions import ConfigError, SluicegateError, SourceUnavailable, StopNow, TerminalError, printable
from ..masking import scrub
from ..specs import Settings

STAGE_TYPES = ("extract", "load", "publish")
STAGE_KEYS = {
    "extract": {"type", "callable", "time", "path", "encrypt", "config"},
    "load": {"type", "callable", "table", "key", "columns", "create", "url", "mode", "config"},
    "publish": {"type", "callable", "format", "path", "columns", "config"},
}
FILE_FORMATS = ("csv", "csv.gz", "parquet", "jsonl")
LOAD_MODES = ("upsert", "replace", "insert")  # the first is the default


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage of a blocks task: what it does (its ``type``) and how."""

    name: str
    type: str  # extract, load or publish
    callable: str | None = None  # "module:function" replacing the built-in
    time: str | None = None  # extract from select.sql: the column cut into blocks
    path: str | None = None  # extract: the artifact; publish: the file
    format: str = "jsonl"
    encrypt: bool = False  # extract: Fernet-encrypt the artifact
    target: tables.TableTarget | None = None  # load: the table, its database, the mode and key
    create: bool = False  # load: create the table from the declared columns when it is missing
    columns: tuple[tuple[str, str], ...] = ()  # load, and publish to a file: the columns and their kinds
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)


def resolve_values(raw: Any, settings: Settings, where: str) -> dict[str, Any]:
    """A ``[config]`` table with Fernet tokens decrypted (as :class:`~sluicegate.secrets.Secret`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table of settings, e.g. [config] then url = "https://..."')
    out: dict[str, Any] = {}
    for name, value in raw.items():
        here = f"{where}.{name}"
        if isinstance(value, str):
            out[name] = secrets.resolve(value, settings.fernet_key, here, key_name=settings.fernet_key_name)
        elif isinstance(value, dict):
            out[name] = resolve_values(value, settings, here)
        else:
            out[name] = value
    return out


def key_values(
    raw: Mapping[str, Any], settings: Settings, where: str
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``keys``: a list of key values, or a table of them with each one's settings."""
    keys = raw.get("keys", [])
    if isinstance(keys, list | dict):  # a NUL: PostgreSQL refuses it, SQLite's JSON cuts the value there
        check_nul(keys, f"{where} keys")
    if isinstance(keys, list):
        for k in keys:
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise ConfigError(
                    f"{where} keys: {k!r} is not a key value; use text or whole numbers,"
                    ' e.g. keys = ["lime", "bird"]'
                )
        if "" in keys:
            raise ConfigError(
                f'{where} keys: key value {keys.index("") + 1} is empty (""); remove it or write the value,'
                ' e.g. keys = ["lime", "bird"]'
            )
        texts = [str(k) for k in keys]
        for position, text in enumerate(texts):
            if (first := texts.index(text)) < position:  # run once, but planned (--dry-run) twice
                raise ConfigError(
                    f"{where} keys: key value {position + 1}, {text!r}, repeats key value"
                    f" {first + 1}; give each key value once"
                )
        return tuple(texts), {}
    if isinstance(keys, dict):
        if "" in keys:
            raise ConfigError(f'{where} keys: [keys.""] names an empty key value; name it, e.g. [keys.lime]')
        per_key = {
            str(k): resolve_values(v, settings, f"{where} keys.{printable(k)}") for k, v in keys.items()
        }
        return tuple(per_key), per_key
    raise ConfigError(
        f"{where} keys: use a list of key values, or a table per key ([keys.lime] then url = ...)"
    )


def check_nul(values: Any, where: str) -> None:
    """ConfigError naming the first key value that holds a NUL character: no ledger database keeps
    it whole, so its blocks were made but never claimed (pending for ever, exit 0)."""
    if (nul := next((v for v in values if "\0" in str(v)), None)) is not None:
        raise ConfigError(f"{where}: the key value {printable(nul)} holds a NUL character; remove it")


def import_callable(spec: str, root: Path, where: str) -> Callable[..., Any]:
    """The function named ``module:function``; modules are found in the project folder too."""
    module_name, sep, function = spec.partition(":")
    if not sep or not module_name or not function:
        raise ConfigError(
            f"{where}: {spec!r} is not a callable; write module:function, e.g. sluicegate.mds:trips"
        )
    if str(root) not in sys.path:
        sys.path.append(str(root))  # a project's own modules (after installed packages)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({exc}); check the module name") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise ConfigError(f"{where}: module {module_name!r} has no function {function!r}")
    return found  # type: ignore[no-any-return]


def stages(raw: Mapping[str, Any], folder: Path, settings: Settings, where: str) -> tuple[StageSpec, ...]:
    """The ordered stages: ``stages = [...]`` (default extract, load, publish), each from its section."""
    names = raw.get("stages", ["extract", "load", "publish"])
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f'{where} stages: use a list of stage names, e.g. stages = ["extract", "load"]')
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} stages: each stage name may appear once")
    out = []
    for position, name in enumerate(names):
        validate.identifier(name, f"{where} stages")
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{where} {name}: use a table, [{name}]")
        out.append(_stage(name, section, folder, settings, f"{where} [{name}]"))
        if (position == 0) != (out[-1].type == "extract"):
            raise ConfigError(
                f"{where} stages: the first stage, and only it, extracts (its type is 'extract'); "
                f"{name!r} is of type {out[-1].type!r}"
            )
    return tuple(out)


def _stage(name: str, raw: Mapping[str, Any], folder: Path, settings: Settings, where: str) -> StageSpec:
    kind = raw.get("type", name if name in STAGE_TYPES else None)
    if kind not in STAGE_TYPES:
        raise ConfigError(f"{where} type: say what the stage does; use one of {', '.join(STAGE_TYPES)}")
    validate.reject_unknown(raw, STAGE_KEYS[kind], where)
    common: dict[str, Any] = {
        "name": name,
        "type": kind,
        "config": resolve_values(raw.get("config", {}), settings, f"{where} config"),
    }
    if "callable" in raw:
        common["callable"] = str(raw["callable"])
        import_callable(common["callable"], folder.parent.parent, f"{where} callable")
    if kind == "extract":
        return _extract(raw, common, folder, settings, where)
    if kind == "load":
        return _load(raw, common, settings, where)
    return _publish(raw, common, where)


def _extract(
    raw: Mapping[str, Any], common: dict[str, Any], folder: Path, settings: Settings, where: str
) -> StageSpec:
    if ("callable" in common) == ("time" in raw):
        raise ConfigError(
            f'{where}: extract with a callable (callable = "module:function") or from select.sql '
            "(time = the column cut into blocks), one of the two"
        )
    encrypt = raw.get("encrypt", False)
    if not isinstance(encrypt, bool):
        raise ConfigError(f"{where} encrypt: use true or false")
    if encrypt and not settings.fernet_key:
        raise ConfigError(
            f"{where} encrypt: artifacts are encrypted, so set {secrets.KEY_ENV} "
            f"(or {secrets.LEGACY_KEY_ENV}) to a Fernet key"
        )
    if encrypt:
        # a malformed key fails here, at start-up, naming the variable it came from
        secrets.encrypt("", settings.fernet_key or "", key_name=settings.fernet_key_name)
    time = validate.identifier(raw["time"], f"{where} time") if "time" in raw else None
    if time is not None and not (folder / "select.sql").is_file():
        raise ConfigError(
            f"{folder / 'select.sql'} not found; an extract from SQL reads the task's select.sql"
        )
    path = raw.get("path", "{stage}/{task}/{label}.jsonl")
    return StageSpec(**common, time=time, path=str(path), encrypt=encrypt, format="jsonl")


def _load(raw: Mapping[str, Any], common: dict[str, Any], settings: Settings, where: str) -> StageSpec:
    """The built-in load: a table sink (``url``, ``table``, ``mode``, ``key``) and the records'
    declared ``columns``, optionally ``create``-d."""
    if "callable" in common:  # the built-in's settings would do nothing
        for key in ("table", "url", "mode", "key", "create", "columns"):
            if key in raw:
                raise ConfigError(
                    f"{where}: a load by callable writes where it likes; remove {key} (or callable)"
                )
        return StageSpec(**common)
    url = raw.get("url")
    if url is not None:
        url = secrets.reveal(
            secrets.resolve(str(url), settings.fernet_key, f"{where} url", key_name=settings.fernet_key_name)
        )
    sink = {k: raw[k] for k in ("table", "mode", "key") if k in raw}
    if "table" in sink and not isinstance(sink["table"], str):
        raise ConfigError(f'{where} table: use the name of a table, e.g. table = "trips"')
    target = tables.load_target(
        sink | ({"url": url} if url else {}),
        where,
        default_url=settings.source_url,
        root=settings.root,
        modes=LOAD_MODES,
    )
    columns = records.kinds(raw.get("columns"), where)
    if not columns:
        raise ConfigError(f'{where} columns: declare each column and its kind, e.g. {{ trip_id = "text" }}')
    names = {name for name, _ in columns}
    if any(k not in names for k in target.key):
        raise ConfigError(f'{where} key: name one or more of the declared columns, e.g. key = ["trip_id"]')
    create = raw.get("create", False)
    if not isinstance(create, bool):
        raise ConfigError(f"{where} create: use true or false")
    return StageSpec(**common, target=target, create=create, columns=columns)


def declared(stage: StageSpec) -> records.Columns:
    """A load's declared columns and key."""
    assert stage.target is not None
    return records.Columns(columns=stage.columns, key=stage.target.key)


def loaded(stages: Sequence[StageSpec]) -> records.Columns | None:
    """The declared columns and key of the first built-in load: the rows a built-in publish has
    (the last record per key), so file and table agree."""
    return next((declared(s) for s in stages if s.target is not None), None)


def _publish(raw: Mapping[str, Any], common: dict[str, Any], where: str) -> StageSpec:
    if "callable" in common:
        if "path" in raw or "format" in raw or "columns" in raw:
            raise ConfigError(
                f"{where}: publish to a callable or to a file (path, format, columns), not both"
            )
        return StageSpec(**common)
    if "path" not in raw:
        raise ConfigError(
            f"{where}: publish needs a callable (e.g. sluicegate.socrata:upsert) or a file path"
        )
    fmt = validate.choice(raw.get("format", "csv"), FILE_FORMATS, f"{where} format")
    columns = records.kinds(raw.get("columns", {}), where)
    if fmt != "jsonl" and not columns:
        raise ConfigError(
            f'{where} columns: declare the file\'s columns and kinds, e.g. {{ trip_id = "text" }}'
        )
    return StageSpec(**common, path=str(raw["path"]), format=fmt, columns=columns)


def callable_error(exc: BaseException, where: str) -> SluicegateError:
    """An error a stage's callable raised, as retried (network, 5xx, 429) or parked (anything else);
    a URL's credentials in its text (httpx's raise_for_status names the URL) are masked."""
    if isinstance(exc, StopNow):  # the operator's second signal: the run stops, no block fails
        raise exc
    if isinstance(exc, SluicegateError):
        return exc
    module, text = type(exc).__module__, scrub(str(exc))
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        if status >= 500 or status in (408, 429):
            return SourceUnavailable(f"{where}: HTTP {status}; will retry")
        return TerminalError(f"{where}: HTTP {status}: {text}")
    if module.startswith(("httpx", "httpcore")) or isinstance(exc, OSError | TimeoutError):
        return SourceUnavailable(f"{where}: {type(exc).__name__}: {text}; will retry")
    return TerminalError(f"{where}: {type(exc).__name__}: {text}")
