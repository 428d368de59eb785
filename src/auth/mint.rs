//! The gateway-minted identity token: a short-lived JWT per request (`iss =
//! "switchyard"`, `aud` = the service, `sub` = the verified user, chosen claims),
//! signed with the gateway's own key, so services verify one issuer whose public keys
//! the admin API serves at `/.well-known/jwks.json`.

use http::HeaderValue;
use http::header::HeaderName;
use jsonwebtoken::{Header, encode, get_current_timestamp};
use serde_json::{Map, Value};

use crate::config::model::Identity;

/// The `iss` of every minted token.
pub const ISSUER: &str = "switchyard";

/// Signs identity tokens with `[identity]`'s key.
#[derive(Debug)]
pub struct Minter {
    identity: Identity,
    header: Header,
    bearer: bool,
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
        }
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
        out.insert("iat".into(), now.into());
        out.insert("exp".into(), (now + self.identity.ttl.as_secs()).into());
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
