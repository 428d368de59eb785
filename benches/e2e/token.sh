# Sourced by auth.sh and run.sh: a JWKS and an RS256 token for the benchmark, signed with
# openssl from the test key in tests/fixtures/auth (issuer "bench-idp", audience "api",
# sub "alice", valid for a day).
# make_token DIR KEYS -> writes DIR/jwks.json, sets TOKEN
b64url() { python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())'; }
make_token() {
    local dir=$1 keys=$2 n now head body sig
    n=$(openssl rsa -in "$keys/rsa.pem" -noout -modulus | cut -d= -f2 | python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' | b64url)
    printf '{"keys":[{"kty":"RSA","kid":"bench","n":"%s","e":"AQAB"}]}' "$n" >"$dir/jwks.json"
    now=$(date +%s)
    head=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
    body=$(printf '{"iss":"bench-idp","aud":"api","sub":"alice","email":"alice@example.com","scope":"orders:read","iat":%d,"exp":%d}' "$now" $((now + 86400)) | b64url)
    sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -sign "$keys/rsa.pem" -binary | b64url)
    TOKEN="$head.$body.$sig"
}
