#!/usr/bin/env bash
# mint-token.sh USER [ROLE]: prints an HS256 JWT for USER (and ROLE in its `roles` claim),
# valid for an hour, signed with $ISSUER_JWT_SECRET. Standard tools only (openssl, base64
# through openssl, tr). For the development secret: openssl takes the key on its command line.
set -euo pipefail
user=${1:?usage: mint-token.sh USER [ROLE]}
: "${ISSUER_JWT_SECRET:?set ISSUER_JWT_SECRET (make sets a development one)}"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
roles=${2:+,\"roles\":[\"$2\"]}
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"sub":"%s","exp":%d%s}' "$user" $(( $(date +%s) + 3600 )) "$roles" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" |
  openssl dgst -sha256 -hmac "$ISSUER_JWT_SECRET" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
