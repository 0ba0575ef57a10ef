#!/usr/bin/env bash
# Drops the per-test databases (coupon_test_*) that earlier test runs left behind.
set -euo pipefail
URL=${DATABASE_URL:-postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance}
for db in $(psql "$URL" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'coupon\_test\_%'"); do
  psql "$URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
done
