#!/usr/bin/env bash
# mint-token.sh USER [ROLE]: prints an HS256 JWT for USER (and ROLE in its `roles` claim),
# issued now and valid for an hour, for $ISSUER_JWT_ISSUER and $ISSUER_JWT_AUDIENCE (make
# sets development ones), signed with $ISSUER_JWT_SECRET. Standard tools only (openssl, base64
# through openssl, tr). For the development secret: openssl takes the key on its command line.
set -euo pipefail
user=${1:?usage: mint-token.sh USER [ROLE]}
: "${ISSUER_JWT_SECRET:?set ISSUER_JWT_SECRET (make sets a development one)}"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
roles=${2:+,\"roles\":[\"$2\"]}
issuer=${ISSUER_JWT_ISSUER:-coupon-issuance-dev}
audience=${ISSUER_JWT_AUDIENCE:-coupon-api}
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"sub":"%s","iss":"%s","aud":"%s","iat":%d,"exp":%d%s}' \
  "$user" "$issuer" "$audience" "$now" $((now + 3600)) "$roles" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" |
  openssl dgst -sha256 -hmac "$ISSUER_JWT_SECRET" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
