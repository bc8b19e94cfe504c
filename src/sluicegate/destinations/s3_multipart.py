"""Multipart uploads to S3, each recorded by an object of its own while it is unfinished.

ListMultipartUploads says of an upload only its key, id, start, owner, storage class and
checksum algorithm: nothing sluicegate can set tells its uploads from another tool's. So each
multipart upload it starts is recorded under the destination's prefix, right after
``CreateMultipartUpload``, as ``.sluicegate-upload-<random>`` holding the upload's key and id;
the record is deleted once the upload is completed or aborted. Clean-up aborts only the
uploads such records name (and only under the prefix), so an unfinished upload of another tool,
at the bucket's root or under a prefix shared with it, is never touched.

A multipart upload's stored SHA-256 is of its parts: :func:`object_sha256` tells an object's
SHA-256 whatever way it was uploaded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

MARKER_PREFIX = ".sluicegate-upload-"  # + a random name: the record of an unfinished multipart upload


def multipart(
    client: Any,
    bucket: str,
    key: str,
    marker: str,
    local_path: str,
    part_size: int,
    conditions: dict[str, str],
) -> Any:
    """Upload ``local_path`` to ``key`` in parts of ``part_size`` with SHA-256 part checksums,
    completed under ``conditions``, recorded at ``marker`` until done; the completion's answer."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    try:
        record = json.dumps({"key": key, "upload_id": upload_id}).encode()
        client.put_object(Bucket=bucket, Key=marker, Body=record)
        parts: list[dict[str, Any]] = []
        with open(local_path, "rb") as fh:
            while chunk := fh.read(part_size):
                digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
                number = len(parts) + 1
                answer = client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=chunk, ChecksumSHA256=digest,
                )  # fmt: skip
                parts.append({"ETag": answer["ETag"], "PartNumber": number, "ChecksumSHA256": digest})
        answer = client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **conditions
        )
    except BaseException:
        with contextlib.suppress(ClientError, BotoCoreError):  # aborted: the record goes too; if not, stays
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            client.delete_object(Bucket=bucket, Key=marker)
        raise
    with contextlib.suppress(ClientError, BotoCoreError):  # a record left over: clean-up deletes it
        client.delete_object(Bucket=bucket, Key=marker)
    return answer


def abort_abandoned(client: Any, bucket: str, base: str, cutoff: dt.datetime) -> int:
    """Abort the uploads recorded under ``base`` (the prefix, as a folder) before ``cutoff``, and
    delete their records; return how many were aborted. Another clean-up running at the same
    time may take any of them first: an upload or record already gone is passed over."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base + MARKER_PREFIX)
    stale = [i["Key"] for page in pages for i in page.get("Contents", []) if i["LastModified"] < cutoff]
    aborted = 0
    for marker in stale:
        try:
            record = json.loads(client.get_object(Bucket=bucket, Key=marker)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                raise
            continue  # another clean-up took it
        except ValueError:
            record = None
        key, upload_id = (record.get("key"), record.get("upload_id")) if isinstance(record, dict) else (0, 0)
        if not (isinstance(key, str) and key.startswith(base) and isinstance(upload_id, str)):
            continue  # not a record sluicegate wrote, or one naming an upload outside the prefix
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            aborted += 1
        except ClientError as exc:  # completed, or aborted by another run's clean-up first: go on
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise
        client.delete_object(Bucket=bucket, Key=marker)
    return aborted


def new_marker() -> str:
    """A fresh record's name, relative to the destination's prefix."""
    return f"{MARKER_PREFIX}{uuid.uuid4().hex}"


def object_sha256(client: Any, bucket: str, key: str, head: Any) -> str | None:
    """The SHA-256 (hex) of the object ``head`` (a HEAD asked with ``ChecksumMode``) describes:
    the store's when it keeps one of the whole object, else hashed from the object's bytes (a
    multipart upload's is of its parts, "<digest>-<parts>"; a store may keep none); None when
    it is gone. The size and an ETag tell two objects apart only as far as they differ."""
    stored = str(head.get("ChecksumSHA256") or "")
    if stored and "-" not in stored and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        return base64.b64decode(stored).hex()
    digest = hashlib.sha256()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
