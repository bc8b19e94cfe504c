"""S3 and S3-compatible stores through boto3.

A file is staged on local disk, then published with one ``PUT`` carrying its SHA-256 (the
store rejects a body that does not match) or, above the multipart threshold, a multipart
upload with SHA-256 part checksums that is only visible once completed. After publishing,
the object's size is checked with ``HEAD``. Readers never see a partial object.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..exceptions import BadPartitionValue, DestinationUnavailable, TerminalError
from ..masking import mask_url
from ..paths import shown
from ..specs import DestinationSettings
from . import SpooledUpload, Staged, remove_stale_spools

KEY_MAX = 1024  # bytes in an S3 object key
_RETRYABLE_CODES = {
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
}


class S3Destination(SpooledUpload):
    """Publishes objects under ``s3://bucket/prefix``."""

    def __init__(self, settings: DestinationSettings) -> None:
        self.url = settings.url.rstrip("/")
        bucket_and_prefix = self.url[len("s3://") :]
        self.bucket, _, self.prefix = bucket_and_prefix.partition("/")
        self.threshold = settings.multipart_threshold
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        self.client = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60
            ),
        )
        self.endpoint = mask_url(settings.endpoint_url or "aws")

    def key(self, path: str) -> str:
        """The object key for a relative path."""
        return f"{self.prefix}/{path}" if self.prefix else path

    def publish(self, staged: Staged) -> None:
        """Upload with a SHA-256 checksum, then verify the size with HEAD."""
        key = self.key(staged.path)
        staged.handle.close()
        digest = base64.b64encode(bytes.fromhex(staged.file.sha256)).decode()
        try:
            with self._errors(key):
                if staged.file.size < self.threshold:
                    with open(staged.local_path, "rb") as body:
                        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumSHA256=digest)
                else:
                    config = TransferConfig(
                        multipart_threshold=self.threshold, multipart_chunksize=self.threshold
                    )
                    self.client.upload_file(
                        staged.local_path,
                        self.bucket,
                        key,
                        ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                        Config=config,
                    )
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            if int(head["ContentLength"]) != staged.file.size:
                raise DestinationUnavailable(
                    f"s3://{self.bucket}/{key} has {head['ContentLength']} bytes after upload, "
                    f"expected {staged.file.size}; will retry"
                )
        finally:
            self.discard(staged)

    def check_path(self, path: str) -> None:
        """Refuse an object key over S3's limit of 1,024 bytes."""
        size = len(self.key(path).encode())
        if size > KEY_MAX:
            raise BadPartitionValue(
                f"object key {shown(self.key(path))} is {size:,} bytes, "
                f"over the {KEY_MAX:,}-byte limit of S3 keys; "
                "shorten the partition values, the path template or the prefix"
            )

    def exists(self, path: str, size: int) -> bool:
        """True when the object exists with ``size`` bytes."""
        key = self.key(path)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            with self._errors(key):
                raise
        return int(head["ContentLength"]) == size

    def read(self, path: str) -> bytes:
        """The object's bytes."""
        key = self.key(path)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise TerminalError(
                    f"{self.display(path)} does not exist; run the stage that writes it"
                ) from None
            with self._errors(key):
                raise
        with self._errors(key):
            return bytes(body.read())

    def verify(self, path: str, size: int, sha256: str) -> None:
        """Ask the store: the object must have ``size`` bytes (a PUT was checked by its SHA-256)."""
        if not self.exists(path, size):
            raise DestinationUnavailable(f"{self.display(path)} is missing or has the wrong size")

    def delete(self, path: str) -> None:
        """Delete the object (missing is fine)."""
        key = self.key(path)
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def check(self) -> None:
        """Check the bucket is reachable and writable."""
        with self._errors(self.key(".sluicegate-probe")):
            self.client.head_bucket(Bucket=self.bucket)

    def cleanup(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix and remove local spools older than ``older_than`` s."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        aborted = remove_stale_spools(older_than)
        with self._errors(self.prefix):
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            for upload in listing.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def display(self, path: str) -> str:
        """The ``s3://`` URL of ``path``."""
        return f"s3://{self.bucket}/{self.key(path)}"

    @contextlib.contextmanager
    def _errors(self, key: str) -> Any:
        where = f"s3://{self.bucket}/{key} at {self.endpoint}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = f"{where}: {error.get('Code', status)} {error.get('Message', '')}".strip()
            if status >= 500 or status in (408, 429) or error.get("Code") in _RETRYABLE_CODES:
                raise DestinationUnavailable(message + "; will retry") from exc
            raise TerminalError(message + "; check the bucket, credentials and permissions") from exc
        except BotoCoreError as exc:
            raise DestinationUnavailable(f"{where}: {exc}; will retry") from exc
