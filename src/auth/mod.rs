//! JWT verification at the edge, verified identity towards upstreams, and the
//! gateway-minted identity token.
//!
//! Request path, in the order [`crate::proxy`] calls it:
//!
//! ```text
//! Auth::strip           every request, every route, before routing: remove each header
//!                       that any policy (or [identity]) may set, so none is spoofed
//! Policy::authenticate  routes with `auth = "NAME"`: token from `Authorization: Bearer`
//!                       (or the policy's cookie) -> size limit -> header -> alg in the
//!                       allow-list -> key by kid of the alg's family -> signature, exp,
//!                       nbf, iss, aud -> `require` / `allow` (403)
//! Policy::forward       verified claims -> headers (`forward_claims`)
//! mint::Minter::mint    [identity]: a short-lived JWT for the upstream (aud = service)
//! ```
//!
//! Keys live in [`jwks::KeyStore`]s; URL stores are kept in the long-lived
//! [`Registry`] so that a reload does not refetch them.

pub mod cache;
pub mod jwks;
pub mod mint;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::config::model::AuthPolicy;
use crate::http::headers as fields;

/// Verified claims of a request's token, shared with later phases (traffic policy,
/// rate-limit keys).
pub type Claims = Arc<Map<String, Value>>;

/// Auth state that outlives snapshots: JWKS caches of URL sources.
#[derive(Debug, Default)]
pub struct Registry {
    pub jwks: jwks::Registry,
}

/// The auth part of a snapshot.
#[derive(Debug, Default)]
pub struct Auth {
    /// Same index as `config.auth`.
    pub policies: Vec<Policy>,
    /// Headers removed from every client request: every `forward_claims` target of
    /// every policy, and the minted identity header (unless that is `authorization`,
    /// which carries the client's own token and is replaced where a token is minted).
    pub identity_headers: Vec<HeaderName>,
    /// `[identity]`, when configured.
    pub minter: Option<mint::Minter>,
}

impl Auth {
    /// Build from a validated config; URL key stores come from (and stay in) `registry`.
    pub async fn build(config: &Config, registry: &Registry) -> Auth {
        let mut policies = Vec::with_capacity(config.auth.len());
        for p in &config.auth {
            policies.push(Policy::new(p.clone(), registry.jwks.get(&p.keys).await));
        }
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        let targets = config
            .auth
            .iter()
            .flat_map(|p| p.forward_claims.iter().map(|(_, h)| h.clone()));
        let minted = config
            .identity
            .as_ref()
            .map(|i| i.header.clone())
            .filter(|h| h != header::AUTHORIZATION);
        for h in targets.chain(minted) {
            if !identity_headers.contains(&h) {
                identity_headers.push(h);
            }
        }
        Auth {
            policies,
            identity_headers,
            minter: config.identity.clone().map(mint::Minter::new),
        }
    }

    /// Remove every identity header the client sent. Cheap when no policy exists: the
    /// list is empty.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for h in &self.identity_headers {
            fields::remove(headers, h);
        }
    }
}

/// Why a request did not pass its route's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token, and the policy requires one (401).
    Missing,
    /// A token that does not verify (401); the reason is for logs only.
    Invalid(&'static str),
    /// A valid token without a required claim, or from a caller not allowed (403).
    Forbidden(&'static str),
}

/// One policy, ready to verify.
pub struct Policy {
    pub spec: AuthPolicy,
    keys: Arc<jwks::KeyStore>,
    /// One `Validation` per allowed algorithm, built once: `jsonwebtoken` wants every
    /// algorithm of a validation to fit the key, so each token uses the one of its alg.
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens that verified, until they expire or the keys change.
    cache: cache::TokenCache,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.spec.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A token found in a request.
enum Found<'a> {
    None,
    /// `Authorization: Bearer` without a usable token, or several `Authorization`s.
    Bad,
    Token(&'a str),
}

impl Policy {
    pub fn new(spec: AuthPolicy, keys: Arc<jwks::KeyStore>) -> Policy {
        let validations = spec
            .algorithms
            .iter()
            .map(|&alg| (alg, validation(&spec, alg)))
            .collect();
        Policy {
            spec,
            keys,
            validations,
            cache: cache::TokenCache::default(),
        }
    }

    /// Phase: the request's token, verified and authorised. `Ok(None)`: no token and
    /// the policy lets anonymous requests pass.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Claims>, Failure> {
        let token = match find_token(headers, self.spec.cookie.as_deref()) {
            Found::None if self.spec.required => return Err(Failure::Missing),
            Found::None => return Ok(None),
            Found::Bad => return Err(Failure::Invalid("malformed authorization header")),
            Found::Token(t) => t,
        };
        let claims = self.verify(token).await?;
        self.authorize(&claims)?;
        Ok(Some(claims))
    }

    /// Signature and registered claims of one token, from the cache of verified tokens
    /// when it was seen before.
    pub async fn verify(&self, token: &str) -> Result<Claims, Failure> {
        if token.len() > self.spec.max_token_bytes {
            return Err(Failure::Invalid("token too large"));
        }
        let generation = self.keys.generation();
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.spec.leeway.as_secs();
        if let Some(claims) = self.cache.get(token, now, leeway, generation) {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(token).await?);
        self.cache.put(token, claims.clone(), generation);
        Ok(claims)
    }

    /// [`Policy::verify`] without the cache: every check, every time.
    pub async fn verify_uncached(&self, token: &str) -> Result<Map<String, Value>, Failure> {
        if token.len() > self.spec.max_token_bytes {
            return Err(Failure::Invalid("token too large"));
        }
        let head =
            jsonwebtoken::decode_header(token).map_err(|_| Failure::Invalid("malformed token"))?;
        if head.crit.is_some() {
            return Err(Failure::Invalid("unsupported crit header"));
        }
        // The allow-list decides before any key is looked at: the key must then be of
        // the algorithm's family (an RSA key never becomes an HMAC secret).
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == head.alg)
            .map(|(_, v)| v)
            .ok_or(Failure::Invalid("algorithm not allowed"))?;
        let key = self
            .keys
            .find(head.kid.as_deref(), head.alg)
            .await
            .ok_or(Failure::Invalid("no key for the token's kid and alg"))?;
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map(|d| d.claims)
            .map_err(|e| Failure::Invalid(reason(e.kind())))
    }

    /// `require` and `allow`.
    fn authorize(&self, claims: &Map<String, Value>) -> Result<(), Failure> {
        for (claim, want) in &self.spec.require {
            let list = matches!(claim.as_str(), "scope" | "scp");
            if !claims.get(claim).is_some_and(|v| has_value(v, want, list)) {
                return Err(Failure::Forbidden("required claim missing"));
            }
        }
        if !self.spec.allow.is_empty() {
            let caller = |k: &str| claims.get(k).and_then(Value::as_str);
            let allowed = [caller("sub"), caller("service")]
                .into_iter()
                .flatten()
                .any(|c| self.spec.allow.iter().any(|a| a == c));
            if !allowed {
                return Err(Failure::Forbidden("caller not allowed"));
            }
        }
        Ok(())
    }

    /// Phase: verified claims -> headers towards the upstream. A claim that cannot be
    /// a header value (control characters) is left out.
    pub fn forward(&self, claims: &Map<String, Value>, headers: &mut HeaderMap) {
        for (claim, name) in &self.spec.forward_claims {
            if let Some(v) = claims.get(claim).and_then(header_value) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

fn validation(spec: &AuthPolicy, alg: Algorithm) -> Validation {
    // Every field set explicitly: the defaults (60 s leeway, nbf unchecked, iss/aud
    // unchecked) are not what a gateway wants.
    let mut v = Validation::new(alg);
    v.leeway = spec.leeway.as_secs();
    v.reject_tokens_expiring_in_less_than = 0;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    v.iss = None;
    if !spec.issuers.is_empty() {
        v.set_issuer(&spec.issuers);
        required.push("iss");
    }
    v.aud = None;
    v.validate_aud = !spec.audiences.is_empty();
    if v.validate_aud {
        v.set_audience(&spec.audiences);
        required.push("aud");
    }
    v.sub = None;
    v.set_required_spec_claims(&required);
    v
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::MissingRequiredClaim(_) => "missing registered claim",
        ErrorKind::InvalidAlgorithm => "algorithm does not fit the key",
        _ => "malformed token",
    }
}

/// `Authorization: Bearer …`, else the policy's cookie.
fn find_token<'a>(headers: &'a HeaderMap, cookie: Option<&str>) -> Found<'a> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    match (auth.next(), auth.next()) {
        (Some(_), Some(_)) => return Found::Bad,
        (Some(v), None) => {
            let b = v.as_bytes();
            if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
                return match std::str::from_utf8(&b[7..]).map(str::trim) {
                    Ok(t) if !t.is_empty() => Found::Token(t),
                    _ => Found::Bad,
                };
            }
            // Another scheme (Basic, …) carries no bearer token.
        }
        _ => {}
    }
    let Some(name) = cookie else {
        return Found::None;
    };
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k == name
                && !val.is_empty()
            {
                return Found::Token(val);
            }
        }
    }
    Found::None
}

/// Does claim value `v` carry `want`? Strings compare whole (or, for `scope`, as a
/// space-separated list); arrays must contain it; numbers and booleans compare as text.
fn has_value(v: &Value, want: &str, space_list: bool) -> bool {
    match v {
        Value::String(s) if space_list => s.split(' ').any(|p| p == want),
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as text,
/// arrays of strings joined with `,`, anything else as JSON.
fn header_value(v: &Value) -> Option<HeaderValue> {
    match v {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            HeaderValue::from_str(&parts.join(",")).ok()
        }
        Value::Null => None,
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests;
