"""pytest plugin: a throwaway MariaDB server per test session and a fresh database per test.

Fixtures:

* ``mariadb_server`` (session): a :class:`MariaDbServer` for a ``mariadbd`` started from the
  machine's binaries (``mariadb-install-db`` + ``mariadbd``, MariaDB >= 10.6) in a new temp
  folder, bound to 127.0.0.1 on a free port, with its own socket, pid file and error log. As
  root it runs as the unprivileged ``mysql`` OS user (``postgres`` if there is none). On
  teardown exactly the process it started is stopped, by PID (SIGTERM, SIGKILL after a
  grace period), and the temp folder is removed.
* ``mariadb_url`` (function): ``mariadb://exporter:<password>@127.0.0.1:<port>/test_<hex>``,
  a fresh empty database, dropped afterwards (its connections are killed first).

Tests that use either fixture get the ``mariadb`` marker. When the binaries are missing the
fixture skips with a loud reason, or fails under ``CI=true``.

The server logic (:func:`find_binaries`, :class:`MariaDbInstance`) raises plain exceptions and
does not need pytest, so ``bench/mysql_drivers.py`` starts its server the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import pytest

MARIADB_USER = "exporter"
MARIADB_PASSWORD = "s3cr3t-pw"
MARIADB_MIN_VERSION = (10, 6)
# As root the server must not run as root; Debian's mariadb-server package creates `mysql`.
MARIADB_OS_USERS = ("mysql", "postgres")
# mariadbd lives in an sbin dir, which is not on an ordinary user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")

# mariadbd options (None = a flag without value). --no-defaults keeps /etc/mysql/ and ~/.my.cnf out.
MARIADB_SETTINGS: dict[str, str | None] = {
    "bind-address": "127.0.0.1",
    "skip-name-resolve": None,
    "default-time-zone": "+00:00",  # named zones would need the time zone tables loaded
    "character-set-server": "utf8mb4",
    # Pinned: the default utf8mb4 collation differs between 10.x (general_ci) and 11.x (uca1400).
    "collation-server": "utf8mb4_unicode_ci",
    "innodb-flush-log-at-trx-commit": "2",  # write the redo log at commit, fsync once a second
    "innodb-doublewrite": "0",
    "max-connections": "200",
}

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
START_ATTEMPTS = 3  # retries with a fresh port if it got taken between probing and binding

_STARTUP_SECONDS: dict[str, float] = {}  # printed in the terminal summary


# --------------------------------------------------------------------------- server (no pytest)


class MariaDbUnavailable(Exception):
    """The MariaDB binaries, or an OS user to run them as, are missing."""


class MariaDbStartError(RuntimeError):
    """mariadb-install-db or mariadbd failed; the message carries the log."""


@dataclasses.dataclass(frozen=True)
class MariaDbBinaries:
    server: Path  # mariadbd (or its mysqld alias)
    install_db: Path  # mariadb-install-db (or mysql_install_db)
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The OS user the server runs as (None: the current user)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None


@dataclasses.dataclass(frozen=True)
class MariaDbServer:
    """A running throwaway MariaDB server."""

    version: tuple[int, int, int]
    base_dir: Path
    host: str
    port: int
    user: str
    password: str
    pid: int

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mariadbd.sock"

    @property
    def log_path(self) -> Path:
        """The server's error log."""
        return self.base_dir / "error.log"

    def url(self, dbname: str = "") -> str:
        return f"mariadb://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"


def default_search_path() -> str:
    """$PATH followed by the sbin dirs, where distributions put mariadbd."""
    return os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])


def _server_version(server: Path) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [str(server), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)"
    match = re.search(r"\bVer\s+(\d+)\.(\d+)\.(\d+)-MariaDB", out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _which(names: Sequence[str], search_path: str) -> Path | None:
    for name in names:
        found = shutil.which(name, path=search_path)
        if found:
            return Path(found)
    return None


def find_binaries(search_path: str | None = None) -> MariaDbBinaries:
    """mariadbd >= MARIADB_MIN_VERSION and its install-db script on ``search_path``.

    ``search_path`` defaults to :func:`default_search_path`. Raises MariaDbUnavailable.
    """
    search_path = default_search_path() if search_path is None else search_path
    server = _which(("mariadbd", "mysqld"), search_path)
    install_db = _which(("mariadb-install-db", "mysql_install_db"), search_path)
    if server is None or install_db is None:
        raise MariaDbUnavailable(
            "no MariaDB server binaries (mariadbd and mariadb-install-db) found on "
            f"PATH or in {', '.join(SBIN_DIRS)} (Debian package: mariadb-server)"
        )
    version = _server_version(server)
    minimum = ".".join(map(str, MARIADB_MIN_VERSION))
    if version is None:
        raise MariaDbUnavailable(f"{server} is not a MariaDB server (MySQL is not supported here)")
    if version[:2] < MARIADB_MIN_VERSION:
        found = ".".join(map(str, version))
        raise MariaDbUnavailable(f"{server} is MariaDB {found}; the tests need MariaDB >= {minimum}")
    return MariaDbBinaries(server, install_db, version)


def default_run_as() -> RunAs:
    """The current user, or as root the first of MARIADB_OS_USERS. Raises MariaDbUnavailable."""
    if os.geteuid() != 0:
        return RunAs()
    for name in MARIADB_OS_USERS:
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(name)
            return RunAs(name, account.pw_uid, account.pw_gid)
    raise MariaDbUnavailable(
        f"running as root but there is none of the OS users {MARIADB_OS_USERS} to run MariaDB as"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_excerpt(path: Path, offset: int = 0, tail: int = 40) -> str:
    """The last lines of a log from byte ``offset`` on, for error messages."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            lines = file.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(lines[-tail:])


# "[ERROR] Can't start server: Bind on TCP/IP port. Got error: 98: Address already in use"
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)


def _handshake_version(port: int, timeout: float) -> str | None:
    """The server version from the initial handshake on 127.0.0.1:``port``, None if none came.

    mariadbd creates its TCP socket before it is ready; connections wait in the backlog
    until it is, so the first packet arriving means the server accepts logins.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            packet = sock.recv(1024)
    except OSError:
        return None
    # 3-byte length, sequence id, then protocol version 10 and the NUL-terminated version string
    if len(packet) < 6 or packet[4] != 10:
        return None
    return packet[5:].split(b"\0", 1)[0].decode(errors="replace")


class MariaDbInstance:
    """One mariadbd in its own folder: install-db, start on a free port, stop by PID.

    Use as a context manager: leaving it stops the server (if started) and removes the folder.
    """

    def __init__(
        self,
        binaries: MariaDbBinaries,
        run_as: RunAs,
        settings: Mapping[str, str | None] = MARIADB_SETTINGS,
    ) -> None:
        self.binaries = binaries
        self.run_as = run_as
        self.settings = dict(settings)
        # /tmp explicitly when root: the server's OS user must be able to traverse the parent.
        root_tmp = "/tmp" if os.geteuid() == 0 else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="sluicegate-mariadb-", dir=root_tmp))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "error.log"
        self.pid_path = self.base_dir / "mariadbd.pid"
        self.socket_path = self.base_dir / "mariadbd.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._own(self.base_dir)
        for sub in ("tmp", "files"):
            (self.base_dir / sub).mkdir(mode=0o700)
            self._own(self.base_dir / sub)
        self.log_path.touch(mode=0o600)  # mariadbd appends to it as run_as
        self._own(self.log_path)

    def __enter__(self) -> MariaDbInstance:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _own(self, path: Path) -> None:
        if self.run_as.uid is not None and self.run_as.gid is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _popen_kwargs(self) -> dict[str, Any]:
        """Run as ``run_as`` with a minimal environment (no MYSQL_* variables leak in)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base_dir), "TZ": "UTC"}
        env["LANG"] = env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {"env": env, "cwd": self.base_dir, "stdin": subprocess.DEVNULL}
        if self.run_as.uid is not None:
            kwargs.update(user=self.run_as.uid, group=self.run_as.gid, extra_groups=[])
        return kwargs

    def initialise(self, user: str = MARIADB_USER, password: str = MARIADB_PASSWORD) -> None:
        """Create the data dir with ``user``@127.0.0.1/localhost holding all privileges."""
        init_sql = self.base_dir / "init.sql"
        # Bootstrap mode starts without the grant tables loaded; FLUSH loads them so that
        # CREATE USER works. The password travels in a 0600 file that is deleted right after.
        statements = ["FLUSH PRIVILEGES;"]
        for host in ("127.0.0.1", "localhost"):
            statements += [
                f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';",
                f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}' WITH GRANT OPTION;",
            ]
        init_sql.write_text("\n".join(statements) + "\n")
        init_sql.chmod(0o600)
        self._own(init_sql)
        try:
            result = subprocess.run(
                [
                    str(self.binaries.install_db), "--no-defaults", f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve",
                    f"--extra-file={init_sql}",
                ],
                capture_output=True, text=True, timeout=120, check=False, **self._popen_kwargs(),
            )  # fmt: skip
        finally:
            init_sql.unlink()
        if result.returncode != 0:
            raise MariaDbStartError(
                f"{self.binaries.install_db.name} failed (rc={result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )

    def _command(self, port: int) -> list[str]:
        options = {
            **self.settings,
            "datadir": str(self.data_dir),
            "port": str(port),
            "socket": str(self.socket_path),
            "pid-file": str(self.pid_path),
            "log-error": str(self.log_path),
            "tmpdir": str(self.base_dir / "tmp"),
            "secure-file-priv": str(self.base_dir / "files"),
        }
        flags = [f"--{key}" if value is None else f"--{key}={value}" for key, value in options.items()]
        return [str(self.binaries.server), "--no-defaults", *flags]

    def start(self, user: str = MARIADB_USER, password: str = MARIADB_PASSWORD) -> MariaDbServer:
        """Start on a free port (retrying if a port was taken); MariaDbStartError on failure."""
        problem = "no attempt made"
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            # Its own session: Ctrl-C in the terminal reaches pytest, whose teardown stops the server.
            # Early warnings go to stderr before --log-error applies: into the same log.
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._command(port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    **self._popen_kwargs(),
                )  # fmt: skip
            problem = self._wait_ready(self._proc, port)
            if problem is None:
                return MariaDbServer(self.binaries.version, self.base_dir, "127.0.0.1", port, user, password,
                                     self._proc.pid)  # fmt: skip
            self.stop()
            if not _PORT_TAKEN.search(_log_excerpt(self.log_path, offset)):
                break
        raise MariaDbStartError(
            f"mariadbd failed to start: {problem}\n--- {self.log_path} ---\n{_log_excerpt(self.log_path)}"
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> str | None:
        """None once ``proc`` itself answers on ``port``, else why not."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"mariadbd exited with code {proc.returncode}"
            if _handshake_version(port, timeout=1.0) is None or proc.poll() is not None:
                time.sleep(0.05)
                continue
            # Someone else's server could have taken the port after ours failed to bind.
            try:
                pid = int(self.pid_path.read_text())
            except (OSError, ValueError):  # not written yet
                time.sleep(0.05)
                continue
            if pid == proc.pid:
                return None
            return f"pid file says {pid}, not ours ({proc.pid}); someone else's server on port {port}?"
        return f"no answer on port {port} after {STARTUP_TIMEOUT_S:.0f}s"

    def stop(self) -> None:
        """Stop the process this instance started: SIGTERM, then SIGKILL after STOP_GRACE_S."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # mariadbd shuts down cleanly on SIGTERM
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE_S)
        self._proc = None  # only now: if anything above raised, close() tries again

    def close(self) -> None:
        """Stop the server and remove the folder."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


# --------------------------------------------------------------------------- pytest side


def _mariadb_unavailable(message: str) -> NoReturn:
    """Fail under CI=true, otherwise skip loudly (the policy of tests/conftest.py)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message} (CI=true, so this is an error rather than a skip)", pytrace=False)
    pytest.skip(
        f"!!! SERVICE UNAVAILABLE: {message}. Run `sudo scripts/install-system-deps.sh`; "
        "set CI=true to turn this skip into a failure."
    )


def mariadb_binaries_or_unavailable(search_path: str | None = None) -> MariaDbBinaries:
    """:func:`find_binaries`, skipping (or failing under CI=true) when they are missing."""
    try:
        return find_binaries(search_path)
    except MariaDbUnavailable as exc:
        _mariadb_unavailable(str(exc))


def mariadb_connect(url: str, **kwargs: Any) -> Any:
    """A ``mariadb`` (MariaDB Connector/Python) connection to a ``mariadb://`` URL; autocommit on.

    ``kwargs`` go to ``mariadb.connect`` and win over the URL's parts.
    """
    import mariadb  # the `mysql` extra's driver; bench/README.md says why this one

    parts = urllib.parse.urlsplit(url)
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "database": parts.path.lstrip("/"),
        "connect_timeout": 10,
        "autocommit": True,
    }
    return mariadb.connect(**{**params, **kwargs})


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDbServer]:
    """Throwaway MariaDB on 127.0.0.1:<free port>; user ``exporter`` with a password and all privileges."""
    binaries = mariadb_binaries_or_unavailable()
    try:
        import mariadb
    except ImportError as exc:
        _mariadb_unavailable(f"the MariaDB driver does not import ({exc}); run `make venv`")
    try:
        run_as = default_run_as()
    except MariaDbUnavailable as exc:
        _mariadb_unavailable(str(exc))
    started = time.perf_counter()
    with MariaDbInstance(binaries, run_as) as instance:
        try:
            instance.initialise()
            server = instance.start()
            mariadb_connect(server.url()).close()  # the test user can log in over TCP
        except (MariaDbStartError, OSError, mariadb.Error) as exc:
            pytest.fail(f"MariaDB {binaries.version_text} did not start: {exc}", pytrace=False)
        _STARTUP_SECONDS[f"mariadb {binaries.version_text}"] = time.perf_counter() - started
        yield server


def _quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@contextlib.contextmanager
def fresh_database(server: MariaDbServer) -> Iterator[str]:
    """URL of a new empty database ``test_<uuid hex>``, dropped on exit with its connections killed."""
    import mariadb

    dbname = f"test_{uuid.uuid4().hex}"
    with contextlib.closing(mariadb_connect(server.url())) as conn:
        conn.cursor().execute(f"CREATE DATABASE {_quote_name(dbname)}")
    try:
        yield server.url(dbname)
    finally:
        with contextlib.closing(mariadb_connect(server.url())) as conn:
            cur = conn.cursor()
            cur.execute("SET SESSION lock_wait_timeout = 30")  # fail rather than wait for a day
            # Like PostgreSQL's DROP DATABASE ... WITH (FORCE): a connection left open in a
            # transaction would hold a metadata lock and make the DROP wait.
            cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                (dbname,),
            )
            for (thread_id,) in cur.fetchall():
                with contextlib.suppress(mariadb.OperationalError):  # "Unknown thread id": gone meanwhile
                    cur.execute(f"KILL {int(thread_id)}")
            cur.execute(f"DROP DATABASE IF EXISTS {_quote_name(dbname)}")


@pytest.fixture
def mariadb_url(mariadb_server: MariaDbServer) -> Iterator[str]:
    """``mariadb://exporter:<password>@127.0.0.1:<port>/test_<hex>``: a fresh empty database, dropped afterwards."""
    with fresh_database(mariadb_server) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag tests that use the MariaDB fixtures with the `mariadb` marker."""
    for item in items:
        if {"mariadb_server", "mariadb_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker("mariadb")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, seconds in _STARTUP_SECONDS.items():
        terminalreporter.write_line(f"test service startup: {name} {seconds:.2f}s")
