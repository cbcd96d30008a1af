#!/usr/bin/env bash
# dbbackup's main job end to end on two scratch PostgreSQL servers it creates and removes:
# seed, backup cluster, verify --deep, restore into the second server, compare.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
exec "$DENO" run -A scripts/demo.ts
