#!/usr/bin/env bash
# Install the system packages the test suite and benchmark need (Debian/Ubuntu).
#
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres), major version >= 13,
#     for the throwaway test server started by tests/conftest.py
#   - pigz and GNU time (/usr/bin/time), used by the benchmark
#   - chromium, for the status-page screenshot test
#
# Idempotent: when everything is present, apt-get is not run at all.
# Not root: only reports what is missing (exit 0, so `make test` still runs and the
# fixtures skip loudly, or fail under CI=true).
set -euo pipefail

readonly PG_MIN_MAJOR=13

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

if ((${#missing[@]} == 0)); then
    echo "install-system-deps: all system dependencies present"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-system-deps: MISSING system packages: ${missing[*]}" >&2
    echo "install-system-deps: run as root (e.g. sudo $0) or: sudo apt-get install -y ${missing[*]}" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: MISSING ${missing[*]} and apt-get is not available; install them manually" >&2
    exit 1
fi

echo "install-system-deps: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

if [[ " ${missing[*]} " == *" postgresql "* ]] && ! find_pg_bindir >/dev/null; then
    echo "install-system-deps: installed postgresql but found no server binaries >= $PG_MIN_MAJOR" >&2
    exit 1
fi
echo "install-system-deps: done"
