"""A local folder: temp file in the same folder, made durable, renamed, the rename made durable.

The renames happen in :meth:`LocalDestination.sync`, which the pipeline calls while the
ledger transaction holds the claims' rows: a worker whose claim was taken over (stopped past
its lease, then continued) finds its claim gone and never renames its older file over the
newer one. Two ways to make it durable, chosen by ``[destination] sync``:

* ``file``: fsync each temp file on a publisher thread; in ``sync``, rename the group and
  fsync each folder a file was renamed into, before the ledger commit. Every file costs at
  least one journal commit of the file system.
* ``batch`` (``auto`` on Linux): write the group of temp files without fsync, then one
  ``syncfs`` per file system they are on makes all of them durable at once, then the renames,
  then a second ``syncfs`` makes the renames durable, then the ledger commit. A crash at any
  point leaves each target either the old file or the complete new one, as with ``file``; it
  is several times faster for small files. ``syncfs`` flushes the whole file system, so on a disk shared with
  heavy writers ``file`` may be the better choice.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ..exceptions import BadPartitionValue, ConfigError, DestinationUnavailable, NotFound
from ..paths import shown
from . import HashingWriter, Spool, Staged, full_disk

TEMP_MARK = ".sluicegate-"
TEMP_SUFFIX = ".tmp"
# The names of temp files exactly (``.<name>.sluicegate-<8 hex>-<serial>.tmp``, and the check's
# probe without a serial): only these are hidden from listings and removed when stale, and no
# published file may take such a name. Any name holding ".sluicegate-" and ending in ".tmp"
# was taken for a temp file, so a partition value could get its published file deleted.
TEMP_NAME = re.compile(r"\..*\.sluicegate-[0-9a-f]{8}(?:-[0-9]+)?\.tmp", re.DOTALL)
NAME_MAX = 255  # bytes in one file name on Linux file systems
PATH_MAX = 4095  # bytes in a whole path


class LocalDestination:
    """Publishes files under a root folder; nothing is ever written outside it."""

    uploads_in_flight = 0  # publish is local work (a temp file made durable): no upload threads

    def __init__(self, root: str, *, stale_after: float = 3600.0, sync: str = "auto") -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)
        self._root_prefix = os.path.join(self.url, "")  # with the trailing separator
        self.stale_after = stale_after
        self._syncfs = _syncfs() if sync in ("auto", "batch") else None
        if sync == "batch" and self._syncfs is None:
            raise ConfigError("[destination] sync = 'batch' needs Linux syncfs(2); use 'file' here")
        self.sync_mode = "batch" if self._syncfs is not None else "file"
        self._cleaned: set[str] = set()
        self._unsynced: set[str] = set()
        self._renames: list[tuple[Staged, str]] = []  # written, not yet in place
        # Unique temp names without a system call per file: a random prefix per process, then a counter.
        self._prefix = f"{uuid.uuid4().hex[:8]}-"
        self._serial = itertools.count()
        self._lock = threading.Lock()

    def _target(self, path: str) -> str:
        # Paths were checked by partitions.safe_relative_path; this lexical check is a second fence.
        # Strings, not Path objects: this runs twice per file (a Path cost ~5% of a run's CPU).
        target = os.path.normpath(os.path.join(self._root_prefix, path))
        if not target.startswith(self._root_prefix) or target == self._root_prefix:
            raise ConfigError(f"path {path!r} resolves outside the destination {self.root}")
        return target

    def stage(self, path: str) -> Staged:
        """Stage ``path``: bytes stay in memory up to SPOOL_BYTES, then go to ``.<name>.sluicegate-<id>.tmp``.

        No file-system call happens here for small files: creating, writing and renaming them is
        left to :meth:`publish`, which the engine runs on its publisher threads.
        """
        folder, name = os.path.split(self._target(path))
        tail = f"{TEMP_MARK}{self._prefix}{next(self._serial)}{TEMP_SUFFIX}"
        if len(f".{name}{tail}".encode()) > NAME_MAX:  # a long name: the temp name takes a digest of it
            name = hashlib.sha256(name.encode()).hexdigest()[:32]
        tmp = os.path.join(folder, f".{name}{tail}")
        spool = Spool(tmp, self._prepare)
        return Staged(path=path, file=HashingWriter(spool, tmp, str(self.root)), local_path=tmp, handle=spool)

    def _prepare(self, folder: str) -> None:
        """Create ``folder`` (once, unless it has gone since) and clear dead workers' temp files in it.

        A long-lived process (``run --every``, ``serve``) made each folder once; when someone
        then removed it (pruning ``_manifests``, or a partition's folder), every later file for
        it failed until the process restarted. A stat per file is what checking costs.
        """
        if folder in self._cleaned:
            if os.path.isdir(folder):
                return
            with self._lock:
                self._cleaned.discard(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise DestinationUnavailable(f"cannot write in {folder}: {exc.strerror}") from exc
        self._clean_orphans(folder)

    def publish(self, staged: Staged) -> None:
        """Write the temp file out (``file`` mode: and fsync it); :meth:`sync` renames it."""
        target = self._target(staged.path)
        raw = staged.handle
        try:
            raw.materialize()
            raw.flush()
            if self._syncfs is None:
                os.fsync(raw.fileno())
            info = os.fstat(raw.fileno())
            size, staged.device = info.st_size, info.st_dev
            raw.close()
            if size != staged.file.size:
                raise OSError(errno.EIO, f"{size} bytes written of {staged.file.size}")
        except OSError as exc:
            self.discard(staged)
            hint = full_disk(exc, self.root)
            raise DestinationUnavailable(f"cannot publish {target}: {exc.strerror}{hint}") from exc
        with self._lock:
            self._renames.append((staged, target))

    def sync(self, staged: Sequence[Staged] | None = None) -> None:
        """Rename ``staged`` (all published files when None) into place, durably.

        Files published for a later commit stay queued, so a failure here cannot touch them.
        """
        renames = self._take(staged)
        if self._syncfs is not None:
            self._sync_batch(self._syncfs, renames)
            return
        done = 0
        try:
            for done_staged, target in renames:
                _put_in_place(done_staged, target)
                done += 1
                with self._lock:
                    self._unsynced.add(os.path.dirname(target))
        except OSError as exc:
            for left, _ in renames[done:]:
                self.discard(left)
            raise DestinationUnavailable(f"cannot rename a file into {self.root}: {exc.strerror}") from exc
        with self._lock:
            folders, self._unsynced = self._unsynced, set()
        try:
            for folder in folders:
                dir_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise DestinationUnavailable(f"cannot fsync a folder under {self.root}: {exc.strerror}") from exc

    def _take(self, only: Sequence[Staged] | None) -> list[tuple[Staged, str]]:
        """Remove from the queue and return the renames of ``only`` (all when None)."""
        with self._lock:
            if only is None:
                renames, self._renames = self._renames, []
            else:
                wanted = {id(s) for s in only}
                renames = [r for r in self._renames if id(r[0]) in wanted]
                self._renames = [r for r in self._renames if id(r[0]) not in wanted]
        return renames

    def _sync_batch(self, syncfs: Callable[[int], int], renames: list[tuple[Staged, str]]) -> None:
        with self._lock:  # folders of files deleted since the last sync, perhaps on other mounts
            deleted, self._unsynced = self._unsynced, set()
        if not renames and not deleted:
            return
        done = 0
        try:
            fds = _file_systems([self.url, *deleted, *_one_folder_per_device(renames)])
            try:
                if renames:
                    for fd in fds:
                        _check(syncfs(fd))  # the new files' bytes are durable ...
                    for staged, target in renames:
                        _put_in_place(staged, target)  # ... before any takes a target's name
                        done += 1
                for fd in fds:
                    _check(syncfs(fd))  # the renames (and deletions) are durable
            finally:
                for fd in fds:
                    os.close(fd)
        except OSError as exc:
            for staged, _ in renames[done:]:
                self.discard(staged)
            raise DestinationUnavailable(
                f"cannot make files under {self.root} durable: {exc.strerror}"
            ) from exc

    def discard(self, staged: Staged) -> None:
        """Close and remove the temp file (if the spool reached the disk), and forget its rename."""
        self._take([staged])
        with contextlib.suppress(OSError):
            staged.handle.close()
        if staged.handle.on_disk:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.local_path)

    def exists(
        self, path: str, size: int | None = None, etag: str | None = None, sha256: str | None = None
    ) -> bool:
        """True when ``path`` exists (with ``size`` bytes, when given) and, when ``sha256`` is
        given, holds those bytes.

        Files have no ETag, and a size says little: a worker killed after putting its file in
        place and before its commit left a file the ledger does not record, often of the same
        size (a value 1.5 that became 2.5); taken for the recorded one, it stayed published.
        """
        target = self._target(path)
        try:
            found = os.stat(target).st_size  # one stat: missing is FileNotFoundError
            return (size is None or found == size) and (sha256 is None or _sha256(target) == sha256)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DestinationUnavailable(f"cannot look at {self.display(path)}: {exc.strerror}") from exc

    def delete(self, path: str) -> None:
        """Remove ``path`` if present (durably by the next :meth:`sync`)."""
        target = self._target(path)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DestinationUnavailable(f"cannot delete {target}: {exc.strerror}") from exc
        with self._lock:
            self._unsynced.add(os.path.dirname(target))

    def read(self, path: str) -> bytes:
        """The published file's bytes."""
        try:
            return Path(self._target(path)).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.display(path)} does not exist; run the stage that writes it") from None
        except IsADirectoryError:  # not an outage: no retry reads it
            raise ConfigError(f"{self.display(path)} is a folder, not a file; move the folder away") from None
        except OSError as exc:
            raise DestinationUnavailable(f"cannot read {self.display(path)}: {exc.strerror}") from exc

    def list_files(self, prefix: str, start_after: str = "", most: int | None = None) -> list[str]:
        """Files under ``prefix`` (relative, sorted), after ``start_after``; temp files left out;
        with ``most``, the walk stops once it found that many."""
        folder = self._target(prefix.rstrip("/"))
        found = []
        try:
            for dirpath, _dirs, names in os.walk(folder):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                found += [
                    f"{rel}/{n}" for n in names if not TEMP_NAME.fullmatch(n) and f"{rel}/{n}" > start_after
                ]
                if most is not None and len(found) >= most:
                    return sorted(found)[:most]
        except OSError as exc:
            raise DestinationUnavailable(f"cannot list {folder}: {exc.strerror}") from exc
        return sorted(found)

    def verify(self, path: str, size: int, sha256: str, etag: str | None = None) -> None:
        """Read the file back and compare its size and SHA-256 (files have no ETag)."""
        try:
            digest = _sha256(self._target(path))
        except OSError as exc:
            raise DestinationUnavailable(f"cannot read back {self.display(path)}: {exc.strerror}") from exc
        if digest != sha256:
            raise DestinationUnavailable(f"{self.display(path)} does not match what was written")

    def check(self, *, write: bool = True) -> None:
        """Check the root folder can be created and written (``write`` too: a local file is cheap)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe{TEMP_MARK}{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DestinationUnavailable(
                f"destination folder {self.root} is not writable: {exc.strerror}"
            ) from exc

    def warnings(self) -> list[str]:
        """None: renames under the ledger's row locks fence every write."""
        return []

    def check_path(self, path: str) -> None:
        """Refuse a file or folder name over 255 bytes, or a whole path over 4,095 bytes, and a
        file name of the form of sluicegate's temp files (which stale-file cleanup removes)."""
        if TEMP_NAME.fullmatch(path.rpartition("/")[2]):
            raise BadPartitionValue(
                f"file name {shown(path.rpartition('/')[2])} has the form of sluicegate's temp files, "
                "which are deleted when stale; change the partition value or the path template"
            )
        for part in path.split("/"):
            if len(part.encode()) > NAME_MAX:
                raise BadPartitionValue(
                    f"path component {shown(part)} is {len(part.encode()):,} bytes, over the {NAME_MAX}-byte "
                    "limit of file names; shorten the partition value or the path template"
                )
        full = len(self._root_prefix.encode()) + len(path.encode())  # display(path)'s length, cheaper
        if full > PATH_MAX:
            raise BadPartitionValue(
                f"path {shown(path)} would be {full:,} bytes long, over the {PATH_MAX:,}-byte limit; "
                "shorten the partition values or the path template"
            )

    def cleanup(self, older_than: float) -> int:
        """Nothing here: stale temp files are removed per folder when a file is next written there."""
        return 0

    def display(self, path: str) -> str:
        """The absolute file path."""
        return str(self.root / path)

    def _clean_orphans(self, folder: str) -> None:
        """Remove temp files a dead worker left in ``folder`` (older than ``stale_after``)."""
        with self._lock:
            if folder in self._cleaned:
                return
            self._cleaned.add(folder)
        cutoff = time.time() - self.stale_after
        with os.scandir(folder) as entries:
            for entry in entries:
                if TEMP_NAME.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)


def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None where there is none (not Linux)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def _file_systems(folders: list[str]) -> list[int]:
    """An open folder per file system among ``folders``: syncfs(2) of the root does not reach a
    folder under it that is a mount point, or a symlink to another file system."""
    fds: list[int] = []
    devices: set[int] = set()
    try:  # a stat per folder, an open per file system (a group passes a folder per device)
        for folder in dict.fromkeys(folders):
            device = os.stat(folder).st_dev
            if device not in devices:
                devices.add(device)
                fds.append(os.open(folder, os.O_RDONLY))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _one_folder_per_device(renames: list[tuple[Staged, str]]) -> list[str]:
    """The renames' folders, one per device of their temp files (each in its target's folder, so
    on its file system): a stat per folder was ~15 µs a file on the commit path (bench/README.md)."""
    folders: dict[int | str, str] = {}
    for staged, target in renames:
        folder = os.path.dirname(target)
        folders.setdefault(folder if staged.device is None else staged.device, folder)
    return list(folders.values())


def _put_in_place(staged: Staged, target: str) -> None:
    """Rename the temp file to ``target``; an ``exclusive`` one only where no file is: a hard link
    fails if one is (atomically), else the temp file goes and ``refused`` is set."""
    if not staged.exclusive:
        os.replace(staged.local_path, target)
        return
    try:
        os.link(staged.local_path, target)
    except FileExistsError:
        staged.refused = True
    except OSError as exc:  # a file system without hard links: checked first, then renamed
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(target):
            staged.refused = True
        else:
            os.replace(staged.local_path, target)
            return
    os.unlink(staged.local_path)


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _sha256(target: str) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
