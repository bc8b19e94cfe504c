#!/usr/bin/env bash
# Install the system packages the test suite and benchmark need (Debian/Ubuntu).
#
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres), major version >= 13,
#     for the throwaway test server started by tests/conftest.py
#   - pigz and GNU time (/usr/bin/time), used by the benchmark
#   - chromium, for the status-page screenshot test
#   - MariaDB server binaries (mariadbd, mariadb-install-db), version >= 10.6, for the
#     throwaway test server started by tests/plugins/mariadb_server.py
#   - MariaDB Connector/C headers (mariadb_config), a C compiler and the Python headers, to build
#     the `mariadb` driver (the `mysql` and `test` extras) from source: PyPI has no Linux wheels
#     of it. pkg-config too, for building mysqlclient, which bench/mysql_drivers.py compares.
#   - the de_DE.UTF-8 locale (Debian's `locales`, then localedef), for the test of a PostgreSQL
#     server whose messages are German (lc_messages needs a locale the C library has)
#
# Installing mariadb-server does not start a system-wide server where policy-rc.d forbids it
# (containers); the test fixture starts its own server as an unprivileged user either way.
#
# Idempotent: when everything is present, apt-get is not run at all.
# Not root: only reports what is missing (exit 0, so `make test` still runs and the
# fixtures skip loudly, or fail under CI=true).
set -euo pipefail

readonly PG_MIN_MAJOR=13
readonly MARIADB_MIN_VERSION=10.6
readonly TEST_LOCALE=de_DE.UTF-8

# Prints the bindir of the highest PostgreSQL >= PG_MIN_MAJOR with server binaries, if any.
find_pg_bindir() {
    local candidates=() dir best="" best_major=0 major
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -d "$dir" ]] && candidates+=("$dir")
    done
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    if command -v initdb >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v initdb)")")")
    fi
    for dir in "${candidates[@]}"; do
        [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]] || continue
        major="$("$dir/postgres" --version 2>/dev/null | sed -n 's/.*(PostgreSQL) \([0-9][0-9]*\).*/\1/p')"
        [[ -n "$major" ]] || continue
        if ((major >= PG_MIN_MAJOR && major > best_major)); then
            best="$dir"
            best_major="$major"
        fi
    done
    [[ -n "$best" ]] && echo "$best"
}

# Prints "<path> (<version>)" of a MariaDB server >= MARIADB_MIN_VERSION whose install-db script
# is also present, if any. Debian puts mariadbd in /usr/sbin, which is not on a user's PATH.
find_mariadbd() {
    local exe version oldest
    command -v mariadb-install-db >/dev/null 2>&1 || command -v mysql_install_db >/dev/null 2>&1 || return 1
    for exe in "$(command -v mariadbd || true)" /usr/sbin/mariadbd "$(command -v mysqld || true)" /usr/sbin/mysqld; do
        [[ -n "$exe" && -x "$exe" ]] || continue
        version="$("$exe" --version 2>/dev/null | sed -n 's/.*Ver \([0-9][0-9.]*\)-MariaDB.*/\1/p')"
        [[ -n "$version" ]] || continue
        oldest="$(printf '%s\n%s\n' "$MARIADB_MIN_VERSION" "$version" | sort -V | head -n1)"
        if [[ "$oldest" == "$MARIADB_MIN_VERSION" ]]; then
            echo "$exe ($version)"
            return 0
        fi
    done
    return 1
}

# Whether the C library has TEST_LOCALE (`locale -a` spells it de_DE.utf8).
has_test_locale() {
    locale -a 2>/dev/null | grep -ix 'de_DE\.utf-\?8' >/dev/null  # not -q: pipefail and SIGPIPE
}

missing=()
if pg_bindir="$(find_pg_bindir)"; then
    echo "install-system-deps: PostgreSQL server binaries: $pg_bindir"
else
    missing+=(postgresql)
fi
if command -v pigz >/dev/null 2>&1; then
    echo "install-system-deps: pigz: $(command -v pigz)"
else
    missing+=(pigz)
fi
if [[ -x /usr/bin/time ]]; then
    echo "install-system-deps: GNU time: /usr/bin/time"
else
    missing+=(time)
fi
# Headless Chromium for the status-page screenshot test.
if command -v chromium >/dev/null 2>&1; then
    echo "install-system-deps: chromium: $(command -v chromium)"
else
    missing+=(chromium)
fi

if mariadbd="$(find_mariadbd)"; then
    echo "install-system-deps: MariaDB server: $mariadbd"
else
    missing+=(mariadb-server)
fi
# Build dependencies of the `mariadb` driver (and of mysqlclient, for the driver benchmark).
if command -v mariadb_config >/dev/null 2>&1; then
    echo "install-system-deps: MariaDB Connector/C $(mariadb_config --cc_version): $(command -v mariadb_config)"
else
    missing+=(libmariadb-dev)
fi
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# Debian's own python3 keeps Python.h in python3-dev; other Pythons (pyenv, uv) ship theirs.
py_include="$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
if [[ "$py_include" == /usr/include/* && ! -f "$py_include/Python.h" ]]; then
    missing+=(python3-dev)
fi

need_locale=false
if has_test_locale; then
    echo "install-system-deps: locale $TEST_LOCALE"
else
    need_locale=true
    [[ -f /usr/share/i18n/locales/de_DE ]] || missing+=(locales)  # the locale's source, for localedef
fi

if ((${#missing[@]} == 0)) && ! $need_locale; then
    echo "install-system-deps: all system dependencies present"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    if ((${#missing[@]})); then
        echo "install-system-deps: MISSING system packages: ${missing[*]}" >&2
        echo "install-system-deps: run as root (e.g. sudo $0) or: sudo apt-get install -y ${missing[*]}" >&2
    fi
    if $need_locale; then
        echo "install-system-deps: MISSING locale $TEST_LOCALE: run as root (e.g. sudo $0)" >&2
    fi
    exit 0
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-system-deps: MISSING ${missing[*]} and apt-get is not available; install them manually" >&2
        exit 1
    fi
    echo "install-system-deps: installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ " ${missing[*]} " == *" postgresql "* ]] && ! find_pg_bindir >/dev/null; then
    echo "install-system-deps: installed postgresql but found no server binaries >= $PG_MIN_MAJOR" >&2
    exit 1
fi
if [[ " ${missing[*]} " == *" mariadb-server "* ]] && ! find_mariadbd >/dev/null; then
    echo "install-system-deps: installed mariadb-server but found no mariadbd >= $MARIADB_MIN_VERSION" >&2
    exit 1
fi
if $need_locale; then
    # Into /usr/lib/locale/locale-archive, in about a second; no apt-get when only this was missing.
    echo "install-system-deps: generating locale $TEST_LOCALE"
    localedef -i de_DE -f UTF-8 "$TEST_LOCALE"
    if ! has_test_locale; then
        echo "install-system-deps: generated $TEST_LOCALE but \`locale -a\` does not list it" >&2
        exit 1
    fi
fi
echo "install-system-deps: done"
