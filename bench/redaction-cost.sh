#!/usr/bin/env bash
# What redaction costs on the hot path: bench/migration-cost.sh on a
# database without sql/0014_redaction.sql against one with every
# migration.  Needs the cluster of scripts/cluster.sh.
#   bench/redaction-cost.sh [rounds]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
last=$(basename "$(ls "$root"/sql/[0-9][0-9][0-9][0-9]_*.sql | tail -1)" | cut -c1-4)
last=$((10#$last))
exec "$root/bench/migration-cost.sh" "${1:-3}" "$last-14" "$last"
