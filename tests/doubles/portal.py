"""A double of a Socrata open-data portal's SODA upsert API: a real HTTP server on 127.0.0.1.

``POST /resource/<dataset>.json`` takes a JSON array of rows and upserts them by the
dataset's row-identifier column, answering as Socrata does::

    {"By RowIdentifier": 0, "By SID": 0, "Rows Created": 2, "Rows Updated": 1, "Rows Deleted": 0, "Errors": 0}

A row ``{"<key>": ..., ":deleted": true}`` deletes by key. A row is an *Error* (counted,
not stored; the other rows of the request still apply) when it has no key, when a
value does not fit its declared column type, when it names an undeclared column (if
columns are declared), or when the test's ``reject_if`` predicate says so.

``GET /resource/<dataset>.json`` returns the current rows; ``?<column>=<value>`` filters
by equality (compared as strings).

``GET /api/views/<dataset>.json`` returns the dataset's metadata as Socrata does: ``columns``
(each with an ``id``, ``fieldName`` and ``dataTypeName``) and, when the dataset has a row
identifier, ``rowIdentifierColumnId`` (the id of its column). A dataset without a row
identifier (``Dataset(key=None)``) *appends* every posted row, as Socrata does: a retried
post adds its rows again. ``PortalDouble(views=False)`` is a portal without the views API
(404).

Authentication, when configured: an app token in ``X-App-Token`` (or ``$$app_token`` in
the query), else 403; HTTP basic auth, else 401. Error answers have Socrata's shape
``{"code": ..., "error": true, "message": ...}``.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

from ._http import HttpDouble, Recorded, Request, Response

Row = dict[str, Any]

COLUMN_TYPES: dict[str, Callable[[Any], bool]] = {
    "text": lambda value: isinstance(value, str),
    # Socrata accepts numbers as JSON numbers or numeric strings.
    "number": lambda value: _is_number(value),
    "checkbox": lambda value: isinstance(value, bool),
    "calendar_date": lambda value: _is_floating_timestamp(value),
    "point": lambda value: (
        isinstance(value, dict)
        and value.get("type") == "Point"
        and isinstance(value.get("coordinates"), list)
        and len(value["coordinates"]) == 2
        and all(_is_number(c) for c in value["coordinates"])
    ),
}
"""Declarable column types and the values they accept (``None`` is accepted by every type)."""


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _is_floating_timestamp(value: Any) -> bool:
    """Socrata's floating timestamp: ISO 8601 without a zone, e.g. ``2020-01-01T13:00:00.000``."""
    if not isinstance(value, str):
        return False
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dataset:
    """A dataset's schema.

    ``key``: the row-identifier column (``None``: no row identifier, every posted row is
    appended). ``columns``: column name to a type in :data:`COLUMN_TYPES`; ``None`` accepts
    any columns and values.
    """

    key: str | None = "trip_id"
    columns: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        unknown = set((self.columns or {}).values()) - set(COLUMN_TYPES)
        if unknown:
            raise ValueError(f"unknown column types {sorted(unknown)}; use {sorted(COLUMN_TYPES)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PortalCall:
    """One request to the portal and how it was answered."""

    record: Recorded
    dataset: str | None
    rows: list[Row] | None
    """The posted rows (None when the body was not a JSON array or it was a GET)."""
    status: int
    response: Any
    applied: bool
    """Whether the call changed the dataset (a failure injected with ``apply=True`` did)."""

    @property
    def method(self) -> str:
        return self.record.request.method

    @property
    def headers(self) -> dict[str, str]:
        return self.record.headers

    @property
    def at(self) -> float:
        """``time.monotonic()`` when the call arrived."""
        return self.record.at


@dataclasses.dataclass
class _Failure:
    remaining: int
    status: int
    apply: bool
    after: int = 0


class PortalDouble(HttpDouble):
    """A Socrata-like portal holding datasets in memory.

    :param datasets: dataset id (e.g. ``"mds-trips"``) to its :class:`Dataset`, or to the name
        of its key column.
    :param app_token: required in ``X-App-Token`` (or ``$$app_token``) when set.
    :param username, password: required as HTTP basic auth when ``username`` is set.
    :param views: whether ``/api/views/<dataset>.json`` answers (a portal without it: 404).
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset | str] | None = None,
        *,
        app_token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        views: bool = True,
    ) -> None:
        super().__init__()
        self.views = views
        self.datasets: dict[str, Dataset] = {
            name: spec if isinstance(spec, Dataset) else Dataset(key=spec)
            for name, spec in (datasets or {"mds-trips": Dataset()}).items()
        }
        self.app_token = app_token
        self.username = username
        self.password = password
        self._rows: dict[str, dict[Any, Row]] = {name: {} for name in self.datasets}
        self._writes: dict[str, collections.Counter[Any]] = {
            name: collections.Counter() for name in self.datasets
        }
        self._calls: list[PortalCall] = []
        self._failures: list[_Failure] = []
        self._rejecters: dict[str, Callable[[Row], bool]] = {}

    # ------------------------------------------------------------------ addresses

    def resource_url(self, dataset: str) -> str:
        """``<url>/resource/<dataset>.json``: where a client posts rows."""
        return f"{self.url}/resource/{dataset}.json"

    # ------------------------------------------------------------------ behaviours

    def fail_next(self, count: int = 1, *, status: int = 500, apply: bool = False, after: int = 0) -> None:
        """Answer the next ``count`` upserts with ``status`` (after those already queued), once
        ``after`` upserts were answered as usual (``after=1``: the second batch fails).

        With ``apply=True`` the rows are stored first and only the answer fails: the lost
        response a client must retry without creating duplicates.
        """
        with self.lock:
            self._failures.append(_Failure(remaining=count, status=status, apply=apply, after=after))

    def reject_if(self, dataset: str, predicate: Callable[[Row], bool] | None) -> None:
        """Count rows for which ``predicate(row)`` is true as Errors (None removes it)."""
        with self.lock:
            if predicate is None:
                self._rejecters.pop(dataset, None)
            else:
                self._rejecters[dataset] = predicate

    # ------------------------------------------------------------------ state and records

    def rows(self, dataset: str) -> list[Row]:
        """The dataset's current rows, in the order their keys were first created (copies)."""
        with self.lock:
            return [dict(row) for row in self._rows[dataset].values()]

    def row(self, dataset: str, key: Any) -> Row | None:
        with self.lock:
            found = self._rows[dataset].get(key)
            return None if found is None else dict(found)

    def writes(self, dataset: str) -> collections.Counter[Any]:
        """How many times each key was created or updated (applied writes only)."""
        with self.lock:
            return collections.Counter(self._writes[dataset])

    @property
    def calls(self) -> list[PortalCall]:
        """Every request, in arrival order (a copy)."""
        with self.lock:
            return list(self._calls)

    def upserts(self, dataset: str | None = None, *, status: int | None = None) -> list[PortalCall]:
        """The POST calls, optionally of one dataset or with one answer status."""
        return [
            call
            for call in self.calls
            if call.method == "POST"
            and (dataset is None or call.dataset == dataset)
            and (status is None or call.status == status)
        ]

    # ------------------------------------------------------------------ serving

    def handle(self, request: Request) -> Response:
        """Answer; ``note`` carries ``(dataset, posted rows, applied)`` to :meth:`_record`."""
        dataset, resource = _dataset_id(request.path)
        if dataset is None or dataset not in self.datasets or (resource == "views" and not self.views):
            return _soda_error(404, "not_found", f"no such dataset: {request.path}")
        denied = self._check_auth(request)
        if denied is not None:
            return dataclasses.replace(denied, note=(dataset, None, False))
        if resource == "views":
            if request.method != "GET":
                return _soda_error(405, "method_not_allowed", f"{request.method} is not supported", dataset)
            return Response(status=200, body=self._metadata(dataset), note=(dataset, None, False))
        if request.method == "GET":
            return Response(
                status=200, body=self._select(dataset, request.query), note=(dataset, None, False)
            )
        if request.method != "POST":
            return _soda_error(405, "method_not_allowed", f"{request.method} is not supported", dataset)
        try:
            rows = json.loads(request.body)
        except ValueError:
            return _soda_error(400, "invalid_request", "the body is not JSON", dataset)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            return _soda_error(400, "invalid_request", "the body must be a JSON array of objects", dataset)
        return self._post(dataset, rows)

    def _post(self, dataset: str, rows: list[Row]) -> Response:
        with self.lock:
            failure = self._take_failure()
            if failure is not None and not failure.apply:
                return dataclasses.replace(
                    _soda_error(failure.status, "internal_error", "internal error"),
                    note=(dataset, rows, False),
                )
            counts = self._upsert(dataset, rows)
        if failure is not None:
            return dataclasses.replace(
                _soda_error(failure.status, "internal_error", "internal error"), note=(dataset, rows, True)
            )
        return Response(status=200, body=counts, note=(dataset, rows, True))

    def _record(self, record: Recorded, response: Response) -> None:
        # A double that raised answered 599 without a note; record the call all the same.
        dataset, rows, applied = response.note or (None, None, False)
        with self.lock:
            super()._record(record, response)
            self._calls.append(
                PortalCall(
                    record=record,
                    dataset=dataset,
                    rows=rows,
                    status=record.status,
                    response=response.body,
                    applied=applied,
                )
            )

    def _check_auth(self, request: Request) -> Response | None:
        if self.app_token is not None:
            token = request.headers.get("x-app-token") or request.query.get("$$app_token")
            if token != self.app_token:
                return _soda_error(403, "invalid_app_token", "the app token is missing or invalid")
        if self.username is not None:
            expected = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return _soda_error(401, "authentication_required", "valid basic authentication is required")
        return None

    def _take_failure(self) -> _Failure | None:
        while self._failures and self._failures[0].remaining <= 0:
            self._failures.pop(0)
        if not self._failures:
            return None
        if self._failures[0].after > 0:
            self._failures[0].after -= 1
            return None
        self._failures[0].remaining -= 1
        return self._failures[0]

    def _metadata(self, dataset: str) -> dict[str, Any]:
        spec = self.datasets[dataset]
        declared = dict(spec.columns or {})
        if spec.key is not None:
            declared = {spec.key: declared.get(spec.key, "text"), **declared}
        columns = [
            {"id": 1000 + i, "name": name, "fieldName": name, "dataTypeName": kind}
            for i, (name, kind) in enumerate(declared.items())
        ]
        found = {"id": dataset, "name": dataset, "columns": columns}
        if spec.key is not None:
            found["rowIdentifierColumnId"] = 1000
        return found

    def _upsert(self, dataset: str, rows: list[Row]) -> dict[str, int]:
        spec, stored = self.datasets[dataset], self._rows[dataset]
        counts = {"Rows Created": 0, "Rows Updated": 0, "Rows Deleted": 0, "Errors": 0}
        for row in rows:
            if not self._valid(dataset, spec, row):
                counts["Errors"] += 1
            elif spec.key is None:  # no row identifier: Socrata appends, a retry adds the row again
                counts["Rows Created"] += 1
                sid = f"row-{len(stored) + 1}"
                stored[sid] = {name: value for name, value in row.items() if not name.startswith(":")}
                self._writes[dataset][sid] += 1
            elif row.get(":deleted") is True:
                counts["Rows Deleted" if stored.pop(row[spec.key], None) is not None else "Errors"] += 1
            else:
                key = row[spec.key]
                counts["Rows Updated" if key in stored else "Rows Created"] += 1
                fields = {name: value for name, value in row.items() if not name.startswith(":")}
                stored[key] = {**stored.get(key, {}), **fields}
                self._writes[dataset][key] += 1
        return {"By RowIdentifier": 0, "By SID": 0, **counts}

    def _valid(self, dataset: str, spec: Dataset, row: Row) -> bool:
        if spec.key is None:
            if row.get(":deleted") is True:  # deleting needs a row identifier (or a :id)
                return False
        elif not isinstance(row.get(spec.key), str | int | float):
            return False
        elif row.get(":deleted") is True:
            return True
        if spec.columns is not None:
            for name, value in row.items():
                if name not in spec.columns or (
                    value is not None and not COLUMN_TYPES[spec.columns[name]](value)
                ):
                    return False
        rejecter = self._rejecters.get(dataset)
        return rejecter is None or not rejecter(row)

    def _select(self, dataset: str, query: Mapping[str, str]) -> list[Row]:
        filters = {name: value for name, value in query.items() if not name.startswith("$")}
        return [
            row
            for row in self.rows(dataset)
            if all(name in row and str(row[name]) == value for name, value in filters.items())
        ]


def _dataset_id(path: str) -> tuple[str | None, str]:
    """``(dataset, "resource")`` for ``/resource/<dataset>.json``, ``(dataset, "views")`` for
    ``/api/views/<dataset>.json``, else ``(None, "")``."""
    parts = path.strip("/").split("/")
    if not parts[-1].endswith(".json"):
        return None, ""
    if parts[:-1] == ["resource"]:
        return parts[-1].removesuffix(".json"), "resource"
    if parts[:-1] == ["api", "views"]:
        return parts[-1].removesuffix(".json"), "views"
    return None, ""


def _soda_error(status: int, code: str, message: str, dataset: str | None = None) -> Response:
    return Response(
        status=status, body={"code": code, "error": True, "message": message}, note=(dataset, None, False)
    )
