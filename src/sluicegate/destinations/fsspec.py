"""Any other fsspec URL (``gs://``, ``az://``, ``memory://`` ...): staged locally, then put.

Atomicity is what the filesystem's ``put_file`` gives: object stores publish whole objects,
but a network filesystem may not. Use a local folder or ``s3://`` for the full guarantee.
The uploads happen in :meth:`FsspecDestination.sync`, while the ledger transaction holds the
claims' rows, so a worker whose claim was taken over never uploads (no conditional writes
are needed, at the cost of uploading while those rows are locked).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import fsspec

from ..exceptions import ConfigError, DestinationUnavailable, NotFound
from ..masking import mask_url
from ..specs import DestinationSettings
from . import SpooledUpload, Staged, remove_stale_spools


class FsspecDestination(SpooledUpload):
    """Publishes files through an fsspec filesystem."""

    uploads_in_flight = 0  # fsspec filesystems are not all thread-safe: the publisher threads only

    def __init__(self, settings: DestinationSettings) -> None:
        scheme, sep, rest = settings.url.partition("://")  # "memory://" must keep its "//":
        self.url = scheme + sep + rest.rstrip("/")  # fsspec reads "memory:" as a local path
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as exc:  # an unknown protocol, or its package is missing
            raise ConfigError(
                f"destination URL {mask_url(self.url)!r}: {exc}; use a folder, s3://BUCKET/prefix"
                " or an fsspec URL whose package is installed"
            ) from exc
        except OSError as exc:  # a filesystem that connects at once (ftp://, sftp://) and cannot
            raise DestinationUnavailable(f"destination URL {mask_url(self.url)!r}: {exc}") from exc

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}"

    def publish(self, staged: Staged) -> None:
        """Close the spool file; :meth:`sync` uploads it."""
        staged.handle.close()

    def sync(self, staged: Sequence[Staged] | None = None) -> None:
        """Upload ``staged`` (under the ledger's row locks), each verified by its size."""
        for one in staged or ():
            if one.exclusive and self.exists(one.path):  # checked, then written: not atomic here
                one.refused = True
                self.discard(one)
                continue
            self._upload(one)

    def warnings(self) -> list[str]:
        """Atomicity is the filesystem's."""
        return [f"{self.url}: files are as atomic as this filesystem's put_file; prefer a folder or s3://"]

    def _upload(self, staged: Staged) -> None:
        full = self._full(staged.path)
        try:
            parent = full.rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.put_file(self.on_disk(staged), full)
            if self.fs.size(full) != staged.file.size:
                raise DestinationUnavailable(f"{self.display(staged.path)} has the wrong size after upload")
        except OSError as exc:
            raise DestinationUnavailable(f"cannot write {self.display(staged.path)}: {exc}") from exc
        finally:
            self.discard(staged)

    def check_path(self, path: str) -> None:
        """No limit is known for an arbitrary fsspec filesystem; its own errors apply."""

    def exists(
        self, path: str, size: int | None = None, etag: str | None = None, sha256: str | None = None
    ) -> bool:
        """True when ``path`` exists (with ``size`` bytes, when given) and, when ``sha256`` is
        given, those bytes (no ETag to compare; a same-sized file left by a killed worker is not ours)."""
        full = self._full(path)
        try:
            if not (self.fs.exists(full) and (size is None or self.fs.size(full) == size)):
                return False
            return sha256 is None or hashlib.sha256(bytes(self.fs.cat_file(full))).hexdigest() == sha256
        except OSError as exc:
            raise DestinationUnavailable(f"cannot look at {self.display(path)}: {exc}") from exc

    def read(self, path: str) -> bytes:
        """The published object's bytes."""
        try:
            return bytes(self.fs.cat_file(self._full(path)))
        except FileNotFoundError:
            raise NotFound(f"{self.display(path)} does not exist; run the stage that writes it") from None
        except OSError as exc:
            raise DestinationUnavailable(f"cannot read {self.display(path)}: {exc}") from exc

    def list_files(self, prefix: str, start_after: str = "", most: int | None = None) -> list[str]:
        """Files under ``prefix`` (relative, sorted), after ``start_after``."""
        base = self.root.rstrip("/") + "/"
        try:
            names = self.fs.find(self._full(prefix.rstrip("/")))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DestinationUnavailable(f"cannot list {self.display(prefix)}: {exc}") from exc
        found = [str(n)[len(base) :] if str(n).startswith(base) else str(n) for n in names]
        return sorted(p for p in found if p > start_after)[:most]

    def verify(self, path: str, size: int, sha256: str, etag: str | None = None) -> None:
        """The object must exist with ``size`` bytes."""
        if not self.exists(path, size):
            raise DestinationUnavailable(f"{self.display(path)} is missing or has the wrong size")

    def delete(self, path: str) -> None:
        """Remove ``path`` if present."""
        try:
            self.fs.rm(self._full(path))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DestinationUnavailable(f"cannot delete {self.display(path)}: {exc}") from exc

    def check(self, *, write: bool = True) -> None:
        """Check an object can be written under the root (and remove it): ``makedirs`` alone does
        nothing on an object store, so read-only credentials passed and every export failed.
        Without ``write`` (health): ``makedirs`` alone."""
        probe = f"{self.root}/.sluicegate-probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            if not write:
                return
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except (OSError, NotImplementedError) as exc:
            raise DestinationUnavailable(f"destination {self.url} is not writable: {exc}") from exc

    def cleanup(self, older_than: float) -> int:
        """Remove stale local spool files of dead workers."""
        return remove_stale_spools(older_than)

    def display(self, path: str) -> str:
        """The full URL of ``path``."""
        return f"{self.url}/{path}"
