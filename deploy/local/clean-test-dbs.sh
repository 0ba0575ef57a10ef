#!/usr/bin/env bash
# Drops the per-test databases (coupon_test_*) that earlier test runs left behind.
set -euo pipefail
URL=${DATABASE_URL:-postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance}
# FORCE cannot end a session of another role ("must be a member of the role whose process is
# being terminated" stopped make test once): such a database is tried again once, then left
# for the next run; a leftover costs only disk.
drop() { psql "$URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1; }
for db in $(psql "$URL" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'coupon\_test\_%'"); do
  drop "$db" || { sleep 1; drop "$db"; } || echo "[clean] $db is busy; left for the next run" >&2
done
