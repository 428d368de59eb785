# Sourced by auth.sh, run.sh and instructions.sh: a JWKS and an RS256 token for the
# benchmark, signed with openssl from the test key in tests/fixtures/auth (issuer
# "bench-idp", audience "api", sub "alice", valid for a day), and the policies
# scenario's additions to routes.toml.
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

# add_policies CONFIG JWKS UPSTREAM_PORT: the "policies" scenario. The catch-all route
# gets JWT auth (RS256, key from the JWKS file, sub forwarded), a sticky 5 % canary (to
# a second service on the same upstream) and a rate limit far above the load; metrics
# are always on. nginx and HAProxy keep their plain config: neither verifies JWTs here,
# so the ratio is what the policies cost against a plain nginx.
add_policies() {
    cp "$2" "$(dirname "$1")/jwks.json"
    python3 - "$1" "$3" <<'PY'
import sys
p, upstream_port = sys.argv[1], sys.argv[2]
s = open(p).read()
s = s.replace('service = "up"\n', 'service = "up"\nauth = "user"\n'
              'canary = { service = "up-canary", weight = 5, sticky = "header:x-user-id" }\n'
              'rate_limit = { per_second = 1000000, burst = 1000000, key = "jwt:sub" }\n', 1)
s += ('\n[services.up-canary]\nendpoints = ["127.0.0.1:%s"]\n'
      '\n[auth.user]\nissuer = "bench-idp"\naudiences = ["api"]\nalgorithms = ["RS256"]\n'
      'jwks = "file:jwks.json"\nforward_claims = { sub = "x-user-id" }\n') % upstream_port
open(p, "w").write(s)
PY
}
