"""S3 and S3-compatible stores through boto3.

A file is staged in memory (on local disk past SPOOL_BYTES), then published with one ``PUT``
carrying its SHA-256 (the store rejects a body that does not match) or, above the multipart
threshold, a multipart upload with SHA-256 part checksums that is only visible once
completed. After publishing, the ``PUT``'s answer gives the ETag when it echoes the SHA-256
(the store checked the body against it); otherwise, and after a multipart upload, a ``HEAD``
checks that the object is the one uploaded (its size, the ETag the upload was answered with,
and its SHA-256 where the store gives it), so an object replaced between the upload and the
check is never recorded. Readers never see a partial object.

Fencing (zombie workers): a partition's upload is conditional on the object the ledger last
recorded (``If-Match: <ETag>``, or ``If-None-Match: *`` when there is none), so the upload
of a worker stopped past its lease, after another worker published a newer file, is refused
(412). Such a refused upload is not an error: :meth:`S3Destination.sync` (called while the
ledger holds the claim's row) overwrites whatever is there if, and only if, the claim is
still ours (an ``exclusive`` one is refused if any object is there). Whether the endpoint honours
conditional writes is probed once per exporter; where not, uploads wait for ``sync``: safe, slower.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..exceptions import BadPartitionValue, DestinationUnavailable, NotFound, TerminalError
from ..masking import mask_url
from ..paths import shown
from ..specs import DestinationSettings
from ..validate import s3_bucket_problem
from . import SpooledUpload, Staged, remove_stale_spools
from .s3_multipart import MARKER_PREFIX, abort_abandoned, multipart, new_marker, object_sha256
from .s3_session import CREDENTIALS_HINT, NO_CREDENTIALS, continue_only_for_large_bodies, shared_session

if TYPE_CHECKING:
    from .s3_crt import CrtPuts

log = logging.getLogger("sluicegate")

KEY_MAX = 1024  # bytes in an S3 object key
PROBE_PREFIX = ".sluicegate-probe-"  # + a random name: the conditional-write probe's object
UPLOAD_STALE_AFTER = 24 * 3600.0  # seconds after which an unfinished multipart upload is abandoned
# Worth retrying: throttling, the store's own failures, and a body that arrived damaged or
# short (BadDigest: the checksum we sent does not match what the store received; the file on
# our disk is intact, so sending it again is the cure), whether answered 400 or 5xx.
_RETRYABLE_CODES = {
    *("BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch", "SlowDown", "RequestTimeout"),
    *("Throttling", "ThrottlingException", "InternalError", "ServiceUnavailable"),
    "NoSuchUpload",  # a live upload aborted by a clean-up (it outlasted a day): the next attempt starts anew
}


class S3Destination(SpooledUpload):
    """Publishes objects under ``s3://bucket/prefix``."""

    def __init__(self, settings: DestinationSettings) -> None:
        if problem := s3_bucket_problem(settings.url):  # a re-export's --destination: exit 2
            raise ValueError(problem)
        self.url = settings.url.rstrip("/")
        bucket_and_prefix = self.url[len("s3://") :]
        self.bucket, _, self.prefix = bucket_and_prefix.partition("/")
        self.threshold = settings.multipart_threshold
        self.uploads_in_flight = settings.uploads_in_flight
        with shared_session(settings) as session:
            self.client = session.client(
                "s3",
                endpoint_url=settings.endpoint_url,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    # One connection per upload in flight (and a few for HEADs and the ledger's
                    # place), so no upload waits for, or reopens, a connection.
                    max_pool_connections=settings.uploads_in_flight + 4,
                ),
            )
            continue_only_for_large_bodies(self.client)
            self._crt: CrtPuts | None = None
            if settings.s3_client == "crt":
                from .s3_crt import crt_puts  # awscrt only where it is used

                self._crt = crt_puts(settings, session, str(self.client.meta.endpoint_url), self.bucket)
        self._crt_lock = threading.Lock()
        self.endpoint = mask_url(settings.endpoint_url or "aws")
        self._conditional: bool | None = None  # probed on first use
        self.upload_stale_after = UPLOAD_STALE_AFTER
        self._probe_lock = threading.Lock()

    def key(self, path: str) -> str:
        """The object key for a relative path."""
        return f"{self.prefix}/{path}" if self.prefix else path

    def publish(self, staged: Staged) -> None:
        """Upload (conditionally, when ``staged.condition`` is set), then verify the size with HEAD.

        A conditional upload the store refuses (the object changed since the ledger recorded
        it) is left to :meth:`sync`, as is every conditional upload on an endpoint that does
        not honour conditions.
        """
        staged.handle.close()
        if staged.pending or (staged.condition is not None and not self.conditional()):
            staged.pending = True  # left to sync (so told: an earlier file whose ETag is unknown)
            return
        try:
            staged.etag = self._upload(staged, staged.condition)
        except _Refused:
            staged.pending = True
            return
        except BaseException:
            self.discard(staged)
            raise
        self.discard(staged)

    def sync(self, staged: Sequence[Staged] | None = None) -> None:
        """Upload what :meth:`publish` left pending; the caller holds the claims' ledger rows.

        The object is overwritten whatever it is now (a zombie's upload, or a file exported
        before conditional writes were used), still conditionally on that state, so a write
        racing this one makes it fail (and retry) rather than be lost.
        """
        for one in staged or ():
            if not one.pending:
                continue
            try:
                current = self._current(one.path) if one.exclusive or self.conditional() else None
                if one.exclusive and current != "*":
                    one.refused = True  # an object is there now: not ours to replace
                    continue
                one.etag = self._upload(one, current if self.conditional() else None)
                one.pending = False
            except _Refused:
                raise DestinationUnavailable(
                    f"{self.display(one.path)} changed while it was being written; will retry"
                ) from None
            finally:
                self.discard(one)

    def conditional(self) -> bool:
        """Whether the endpoint honours ``If-None-Match: *`` and ``If-Match`` (probed once)."""
        with self._probe_lock:
            if self._conditional is None:
                self._conditional = self._probe()
            return self._conditional

    def warnings(self) -> list[str]:
        """Say when the endpoint ignores conditional writes (uploads then wait for the ledger lock)."""
        if self.conditional():
            return []
        return [
            f"{self.url} at {self.endpoint} ignores conditional writes (If-None-Match, If-Match): uploads "
            "are fenced by holding the partitions' ledger rows while they run, which is safe but slower"
        ]

    def _probe(self) -> bool:
        key = self.key(f"{PROBE_PREFIX}{uuid.uuid4().hex}")

        def put(**condition: str) -> Callable[[], Any]:
            return lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", **condition)

        try:  # a store that refuses the headers (400, 501) instead of ignoring them honours none
            first = self._answer(put(IfNoneMatch="*"))
            if first == "not understood":  # unless a plain PUT is refused too (expired token, region)
                with self._errors(key):
                    put()()
            if first != "ok":
                return False
            return self._answer(put(IfNoneMatch="*")) == self._answer(put(IfMatch='"0"')) == "refused"
        finally:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def _answer(self, call: Callable[[], Any]) -> str:
        """How the store answered a probe's conditional PUT: "ok", "refused" or "not understood"."""
        try:
            with self._errors("probe", refusals=False):
                call()
        except ClientError as exc:
            if _precondition_failed(exc):
                return "refused"
            if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0) in (400, 501):
                return "not understood"
            with self._errors(self.key(PROBE_PREFIX)):
                raise
        return "ok"

    def _current(self, path: str) -> str:
        """The condition that matches the object now at ``path``: its ETag, or "*" when absent."""
        key = self.key(path)
        with self._errors(key):  # a lost connection is transient, like every other call's
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return "*"
                raise
        return str(head["ETag"])

    def _upload(self, staged: Staged, condition: str | None) -> str:
        """Upload ``staged`` under ``condition``; return the new object's ETag (raise _Refused on 412)."""
        key = self.key(staged.path)
        conditions = (
            {} if condition is None else {"IfNoneMatch": "*"} if condition == "*" else {"IfMatch": condition}
        )
        digest = base64.b64encode(bytes.fromhex(staged.file.sha256)).decode()
        single = staged.file.size < self.threshold
        with self._errors(key):
            try:
                if single:
                    answer = self._put(staged, key, digest, conditions)
                    if answer.get("ChecksumSHA256") == digest and answer.get("ETag"):
                        # The store checked the body against our SHA-256 and says so: it holds
                        # exactly these bytes, so the HEAD below would only cost a round trip.
                        return str(answer["ETag"])
                else:
                    answer = self._multipart(self.on_disk(staged), key, conditions)
            except ClientError as exc:  # If-Match on a missing object: AWS says 404, others 412
                if "IfMatch" in conditions and exc.response.get("Error", {}).get("Code") in (
                    "404",
                    "NoSuchKey",
                ):
                    raise _Refused(key) from exc
                raise
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            except ClientError as exc:  # as much a stranger's doing as an object replaced meanwhile
                if not _missing(exc):
                    raise
                gone = f"s3://{self.bucket}/{key} is gone after the upload (deleted meanwhile); will retry"
                raise DestinationUnavailable(gone) from exc
        _check_uploaded(
            f"s3://{self.bucket}/{key}", staged.file.size, answer, head, digest if single else None
        )
        return str(head["ETag"])

    def _put(self, staged: Staged, key: str, digest: str, conditions: dict[str, str]) -> Any:
        """One PutObject of ``staged``'s bytes, from memory when they never reached the disk."""
        data = staged.handle.value()
        if data is not None:
            crt = self._crt
            if crt is not None:
                answer = self._put_by_crt(crt, key, data, digest, conditions)
                if answer is not None:
                    return answer
            return self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ChecksumSHA256=digest, **conditions
            )
        with open(staged.local_path, "rb") as body:
            return self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ChecksumSHA256=digest, **conditions
            )

    def _put_by_crt(
        self, crt: CrtPuts, key: str, data: bytes, digest: str, conditions: dict[str, str]
    ) -> dict[str, str] | None:
        """The PUT through the CRT; None when it failed and botocore should send it again.

        A refused condition is final (412, or 404 to an ``If-Match``). A failure that may pass
        (no answer, 408, 429, 5xx, a body damaged on the way) is sent again through botocore,
        which retries it and reports it as ever. Any other answer (a signature, region or
        permission problem) would repeat: PUTs then stay on botocore for the rest of the run.
        """
        from .s3_crt import PutFailed

        try:
            answer = crt.put(key, data, digest, conditions)
        except PutFailed as exc:
            if exc.status == 412 or (exc.status == 404 and "IfMatch" in conditions):
                raise _Refused(key) from exc
            if not (exc.status in (0, 408, 429) or exc.status >= 500 or exc.code in _RETRYABLE_CODES):
                with self._crt_lock:
                    if self._crt is crt:
                        self._crt = None
                        where = f"s3://{self.bucket}/{key}"
                        log.warning("%s: the CRT's PUT failed (%s); PUTs go through botocore now", where, exc)
            return None
        return {
            "ETag": answer.get("etag", ""),
            "ChecksumSHA256": answer.get("x-amz-checksum-sha256", ""),
        }

    def _multipart(self, local_path: str, key: str, conditions: dict[str, str]) -> Any:
        """A multipart upload (recorded until done: see s3_multipart), completed under ``conditions``."""
        marker = self.key(new_marker())
        return multipart(self.client, self.bucket, key, marker, local_path, self.threshold, conditions)

    def check_path(self, path: str) -> None:
        """Refuse an object key over S3's limit of 1,024 bytes."""
        size = len(self.key(path).encode())
        if size > KEY_MAX:
            raise BadPartitionValue(
                f"object key {shown(self.key(path))} is {size:,} bytes, "
                f"over the {KEY_MAX:,}-byte limit of S3 keys; "
                "shorten the partition values, the path template or the prefix"
            )

    def exists(
        self, path: str, size: int | None = None, etag: str | None = None, sha256: str | None = None
    ) -> bool:
        """True when the object exists with ``size`` bytes and, when ``etag`` is given, that
        ETag: an object replaced by other bytes of the same size is not taken for ours (the
        ETag is the store's fingerprint of the bytes). Without ``etag`` (a file recorded before
        ETags were), ``sha256`` is compared instead: the store's, else that of the bytes read."""
        key, by_sha = self.key(path), etag is None and sha256 is not None
        with self._errors(key):
            try:
                mode = {"ChecksumMode": "ENABLED"} if by_sha else {}
                head = self.client.head_object(Bucket=self.bucket, Key=key, **mode)
            except ClientError as exc:
                if _missing(exc):
                    self._bucket_there(key)
                    return False
                raise
            same = etag is None or str(head.get("ETag", "")).strip('"') == etag.strip('"')  # quoted or not
            if not ((size is None or int(head["ContentLength"]) == size) and same):
                return False
            return not by_sha or object_sha256(self.client, self.bucket, key, head) == sha256

    def _bucket_there(self, key: str) -> None:
        """After a HEAD's 404, which has no body to say NoSuchBucket: raise the bucket's error when
        HeadBucket says it is gone too (any other answer, a 403 without s3:ListBucket, leaves the
        object missing)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _missing(exc):
                raise TerminalError(f"{self._no_bucket} (at {key})") from exc

    def read(self, path: str) -> bytes:
        """The object's bytes."""
        key = self.key(path)
        with self._errors(key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if _missing(exc):
                    raise NotFound(
                        f"{self.display(path)} does not exist; run the stage that writes it"
                    ) from None
                raise
            return bytes(body.read())

    def list_files(self, prefix: str, start_after: str = "", most: int | None = None) -> list[str]:
        """Object keys under ``prefix`` (relative to the destination's prefix), after ``start_after``
        (S3 lists keys in UTF-8 byte order: older manifest folders are skipped unlisted), ``most``."""
        base = self.key("")
        found: list[str] = []
        extra: dict[str, Any] = {"StartAfter": self.key(start_after)} if start_after else {}
        extra["PaginationConfig"] = {"MaxItems": most, "PageSize": most}  # one request for a few
        with self._errors(self.key(prefix)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(prefix), **extra
            )
            for page in pages:
                found += [str(o["Key"])[len(base) :] for o in page.get("Contents", [])]
        return sorted(found)

    def verify(self, path: str, size: int, sha256: str, etag: str | None = None) -> None:
        """Ask the store: ``size`` bytes, and the ETag that the upload (checked by SHA-256) got;
        without an ETag, ``sha256`` (a size alone passes other bytes of that size)."""
        if not self.exists(path, size, etag, sha256):
            raise DestinationUnavailable(f"{self.display(path)} is missing or not the object uploaded")

    def delete(self, path: str) -> None:
        """Delete the object (missing is fine)."""
        key = self.key(path)
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def check(self, *, write: bool = True) -> None:
        """Check the bucket is there and, with ``write``, writable (the write probe puts objects)."""
        with self._errors(self.key(".sluicegate-probe")):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:  # HeadBucket answers without a body: only "404 Not Found"
                if not _missing(exc):
                    raise
                raise TerminalError(self._no_bucket) from exc
        if write:  # not for health: objects put on every poll are requests billed
            self.conditional()

    def cleanup(self, older_than: float) -> int:
        """Remove dead processes' spools and probe objects older than ``older_than`` s, and abort
        the multipart uploads sluicegate recorded under the prefix more than a day (at least
        ``older_than``) ago: a live worker's large upload may well outlast its lease, which it
        renews. Other tools' uploads, even under the prefix, are never aborted (s3_multipart)."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max(older_than, self.upload_stale_after))
        aborted = remove_stale_spools(older_than)
        with self._errors(self.key(MARKER_PREFIX)):
            aborted += abort_abandoned(self.client, self.bucket, self.key(""), cutoff)
            # Probe objects of processes killed (or cut off) between the probe's PUT and DELETE.
            probes = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(PROBE_PREFIX)
            )
            for item in [i for page in pages for i in page.get("Contents", []) if i["LastModified"] < probes]:
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                aborted += 1
        return aborted

    @property
    def _no_bucket(self) -> str:
        return f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or fix the url"

    def display(self, path: str) -> str:
        """The ``s3://`` URL of ``path``."""
        return f"s3://{self.bucket}/{self.key(path)}"

    @contextlib.contextmanager
    def _errors(self, key: str, *, refusals: bool = True) -> Any:
        """Translate the SDK's errors: 5xx, throttling and lost connections are transient.

        With ``refusals=False`` a :class:`ClientError` passes through untouched (the caller
        looks at it); lost connections are still translated.
        """
        where = f"s3://{self.bucket}/{key} at {self.endpoint}"
        try:
            yield
        except ClientError as exc:
            if not refusals:
                raise
            if _precondition_failed(exc):
                raise _Refused(where) from exc
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if error.get("Code") == "NoSuchBucket":  # the bucket's fault, not the key's (a run's probe)
                raise TerminalError(f"{self._no_bucket} (at {key})") from exc
            message = f"{where}: {error.get('Code', status)} {error.get('Message', '')}".strip()
            if status == 501:  # the same request gets the same answer: no retry can cure it
                said = " ".join(str(v) for k in ("Code", "Message", "Header") if (v := error.get(k)))
                said = said.removeprefix("501").strip()  # a HEAD's answer has no body: "501 Not Implemented"
                raise TerminalError(
                    f"{self.endpoint} does not implement the {exc.operation_name} request sent for "
                    f"s3://{self.bucket}/{key} (501 {said}); use an S3 store that implements it"
                ) from exc
            if status >= 500 or status in (408, 429) or error.get("Code") in _RETRYABLE_CODES:
                raise DestinationUnavailable(message + "; will retry") from exc
            raise TerminalError(message + "; check the bucket, credentials and permissions") from exc
        except NO_CREDENTIALS as exc:  # retrying finds none
            raise TerminalError(f"{where}: {exc}; {CREDENTIALS_HINT}") from exc
        except BotoCoreError as exc:
            raise DestinationUnavailable(f"{where}: {exc}; will retry") from exc


def _check_uploaded(where: str, size: int, answer: Any, head: Any, sha256: str | None) -> None:
    """Raise DestinationUnavailable unless ``head`` describes the object the upload created.

    Another object may have replaced ours between the upload and the ``HEAD`` (a zombie
    worker, a person, a tool): its size, its ETag (unless the upload's answer had none), or its
    SHA-256 (single uploads, where the store returns it) would differ. It is then not recorded;
    the partition is exported again, and that upload replaces the stranger under the claim.
    """
    problems = []
    if int(head["ContentLength"]) != size:
        problems.append(f"has {head['ContentLength']} bytes, expected {size}")
    uploaded = answer.get("ETag") if isinstance(answer, dict) else None
    if uploaded and head.get("ETag") != uploaded:
        problems.append(f"has ETag {head.get('ETag')}, the upload made {uploaded}")
    stored = head.get("ChecksumSHA256")
    if sha256 and stored and "-" not in stored and stored != sha256:
        problems.append(f"has SHA-256 {stored}, expected {sha256}")
    if problems:
        raise DestinationUnavailable(
            f"{where} {' and '.join(problems)} after the upload: it was replaced meanwhile; will retry"
        )


class _Refused(Exception):
    """The store refused a conditional write: the object is not what the condition said."""


def _missing(exc: ClientError) -> bool:
    """Whether the store answered that the object (or key) is not there."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _precondition_failed(exc: ClientError) -> bool:
    """412, or the 409 ConditionalRequestConflict AWS answers to two racing conditional writes."""
    code = exc.response.get("Error", {}).get("Code")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")
