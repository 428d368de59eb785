//! The gateway-minted identity token: a short-lived JWT per request (`iss =
//! "switchyard"`, `aud` = the service, `sub` = the verified user, chosen claims),
//! signed with the gateway's own key, so services verify one issuer whose public keys
//! the admin API serves at `/.well-known/jwks.json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use http::header::HeaderName;
use jsonwebtoken::{Header, encode, get_current_timestamp};
use serde_json::{Map, Value};

use super::Claims;
use crate::config::model::Identity;

/// Minted tokens kept for reuse; a full map is emptied.
const MAX_CACHED: usize = 4096;

/// The `iss` of every minted token.
pub const ISSUER: &str = "switchyard";

/// Signs identity tokens with `[identity]`'s key.
pub struct Minter {
    identity: Identity,
    header: Header,
    bearer: bool,
    /// Minted tokens by (verified claims, service), reused for a quarter of the TTL:
    /// one signature per user and service every ttl/4 instead of one per request.
    cache: Mutex<HashMap<(usize, Arc<str>), Minted>>,
}

struct Minted {
    /// Held so that the allocation (whose address is the key) stays this one.
    claims: Claims,
    value: HeaderValue,
    iat: u64,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Minter {
    pub fn new(identity: Identity) -> Minter {
        let mut header = Header::new(identity.algorithm);
        header.kid = Some(identity.kid.clone());
        let bearer = identity.header == http::header::AUTHORIZATION;
        Minter {
            identity,
            header,
            bearer,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The token for this request: reused when the same verified claims (the same
    /// user token, thanks to the verified-token cache) went to `service` less than a
    /// quarter of the TTL ago, so the service always gets at least 3/4 of the TTL.
    pub fn token_for(&self, user: &Claims, service: &Arc<str>) -> Option<HeaderValue> {
        let now = get_current_timestamp();
        let fresh_for = (self.identity.ttl.as_secs() / 4).max(1);
        let key = (Arc::as_ptr(user) as usize, service.clone());
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = cache.get(&key)
                && Arc::ptr_eq(&m.claims, user)
                && now.saturating_sub(m.iat) < fresh_for
            {
                return Some(m.value.clone());
            }
        }
        let value = self.mint(user, service)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            key,
            Minted {
                claims: user.clone(),
                value: value.clone(),
                iat: now,
            },
        );
        Some(value)
    }

    /// The header the token goes in.
    pub fn header_name(&self) -> &HeaderName {
        &self.identity.header
    }

    /// The claims of a token for `service`, minted now, from the user's verified claims.
    pub fn claims(&self, user: &Map<String, Value>, service: &str) -> Map<String, Value> {
        let now = get_current_timestamp();
        let mut out = Map::new();
        for c in &self.identity.claims {
            if let Some(v) = user.get(c) {
                out.insert(c.clone(), v.clone());
            }
        }
        if let Some(sub) = user.get("sub") {
            out.insert("sub".into(), sub.clone());
        }
        out.insert("iss".into(), ISSUER.into());
        out.insert("aud".into(), service.into());
        // Never valid for longer than the user's own token.
        let mut exp = now + self.identity.ttl.as_secs();
        if let Some(user_exp) = user.get("exp").and_then(serde_json::Value::as_u64) {
            exp = exp.min(user_exp);
        }
        out.insert("iat".into(), now.into());
        out.insert("exp".into(), exp.into());
        out
    }

    /// A signed token for `service`, as the header value to send; `None` only if
    /// signing fails (it does not with a key that validation accepted).
    pub fn mint(&self, user: &Map<String, Value>, service: &str) -> Option<HeaderValue> {
        let token = encode(
            &self.header,
            &self.claims(user, service),
            &self.identity.key,
        )
        .map_err(|e| tracing::error!(error = %e, "minting the identity token failed"))
        .ok()?;
        let value = if self.bearer {
            format!("Bearer {token}")
        } else {
            token
        };
        HeaderValue::try_from(value).ok()
    }

    /// The public JWKS: the current key first, then the previous ones.
    pub fn jwks(&self) -> Value {
        serde_json::json!({ "keys": self.identity.public })
    }
}
