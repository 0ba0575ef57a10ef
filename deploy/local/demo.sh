#!/usr/bin/env bash
# The seed's experiment on this machine, in both queue modes: for each, issuer-bench starts
# an issuer-api and an issuer-worker, creates a coupon of 500, sends 5,000 distinct users at
# once, and prints the outcome beside the seed's numbers for the same design.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$ROOT/target/release/issuer-bench" seed --mode kafka --mode redis "$@"
echo "(service logs in ${TMPDIR:-/tmp}/issuer-bench)"
