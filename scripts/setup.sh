#!/usr/bin/env bash
# Idempotent setup for dbbackup development, tests and the demo.
#
# - Deno 2.9.6: uses a deno of that version on PATH, else installs it from npm into .tools/.
# - Debian packages the tests need (PostgreSQL 15 server binaries, zstd, util-linux's runuser):
#   installed with apt when running as root, otherwise the missing ones are printed.
#
# Run it directly, or source it: it then exports DENO (the deno binary to use) and PG_BIN.
set -euo pipefail

DENO_VERSION="2.9.6"
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

setup_deno() {
  if command -v deno >/dev/null 2>&1 && deno --version 2>/dev/null | head -1 | grep -q "^deno ${DENO_VERSION} "; then
    DENO="$(command -v deno)"
    return
  fi
  local local_deno="${root_dir}/.tools/node_modules/.bin/deno"
  if [ -x "$local_deno" ] && "$local_deno" --version 2>/dev/null | head -1 | grep -q "^deno ${DENO_VERSION} "; then
    DENO="$local_deno"
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: deno ${DENO_VERSION} is not on PATH and npm is missing; install Node.js/npm or deno ${DENO_VERSION}" >&2
    return 1
  fi
  echo "setup: installing deno ${DENO_VERSION} from npm into .tools/" >&2
  mkdir -p "${root_dir}/.tools"
  (cd "${root_dir}/.tools" && npm install --no-save --no-audit --no-fund --loglevel=error --prefix . "deno@${DENO_VERSION}" >&2)
  DENO="$local_deno"
  "$DENO" --version | head -1 >&2
}

find_pg_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_dump" ]; then
      PG_BIN="$dir"
      return 0
    fi
  done
  return 1
}

setup_packages() {
  local missing=()
  find_pg_bin || missing+=(postgresql)
  command -v zstd >/dev/null 2>&1 || missing+=(zstd)
  command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    find_pg_bin
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}

setup_deno
setup_packages
export DENO PG_BIN
# Fetch the npm dependencies pinned in deno.lock (a no-op when they are cached).
(cd "$root_dir" && "$DENO" install --frozen --quiet >&2)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "deno: $DENO"
  echo "postgresql: $PG_BIN"
fi
