//! Verification keys of one policy: a JWKS (file, http or https URL) or an HMAC secret.
//!
//! A [`KeyStore`] holds the current [`KeySet`] behind an `ArcSwap`: the request path
//! reads it without a lock. A URL source is fetched when the store is created, again
//! every `refresh` in the background, and on an unknown `kid` at most once per
//! `refetch` (single-flight: the cooldown is checked lock-free first, so a flood of
//! random `kid`s costs one atomic load each and never reaches the identity provider).
//! A failed fetch keeps the cached keys.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::config::model::{CaBundle, KeySource};
use crate::upstream::tls;

/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Time limit of one JWKS fetch (connect, head and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Parse a JWKS document, keeping only keys usable for signature verification (RSA,
/// EC, Ed25519). `oct` keys are dropped: a JWKS never supplies an HMAC secret, so a
/// public key can never be mistaken for one. Keys marked `use = "enc"` or with an
/// algorithm that is not a signature algorithm are dropped too.
pub fn parse(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS document: no `keys` array")?;
    let mut out = Vec::new();
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        if Key::from_jwk(&jwk).is_some() {
            out.push(jwk);
        }
    }
    Ok(out)
}

/// One verification key.
pub struct Key {
    pub decoding: DecodingKey,
    /// The key type decides which algorithms may use it.
    pub family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
}

impl Key {
    fn from_jwk(jwk: &Jwk) -> Option<Key> {
        if matches!(
            jwk.algorithm,
            AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
        ) {
            return None;
        }
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return None;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
            None => None,
        };
        let decoding = DecodingKey::from_jwk(jwk).ok()?;
        let family = decoding.family();
        if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
            return None;
        }
        Some(Key {
            decoding,
            family,
            alg,
        })
    }

    /// May a token signed with `alg` be checked with this key?
    fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one source at one moment.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    all: Vec<Arc<Key>>,
}

impl KeySet {
    fn from_jwks(jwks: &[Jwk]) -> KeySet {
        let mut set = KeySet::default();
        for jwk in jwks {
            let Some(key) = Key::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(key);
            if let Some(kid) = &jwk.common.key_id {
                set.by_kid.insert(kid.clone(), key.clone());
            }
            set.all.push(key);
        }
        set
    }

    /// An HMAC secret (validation refuses empty ones; an unusable one gives no key).
    fn secret(bytes: &[u8]) -> KeySet {
        let all = DecodingKey::from_secret(bytes)
            .map(|decoding| {
                Arc::new(Key {
                    decoding,
                    family: AlgorithmFamily::Hmac,
                    alg: None,
                })
            })
            .into_iter()
            .collect();
        KeySet {
            by_kid: HashMap::new(),
            all,
        }
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, the one key that fits,
    /// if there is exactly one. A key whose type does not match the algorithm's family
    /// is never returned.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        if self.all.len() == 1 && self.by_kid.is_empty() {
            // A secret, or a JWKS of one key without `kid`.
            return self.all.first().filter(|k| k.fits(alg)).cloned();
        }
        match kid {
            Some(kid) => self.by_kid.get(kid).filter(|k| k.fits(alg)).cloned(),
            None => {
                let mut fitting = self.all.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The client of one JWKS URL. An https URL is verified against `ca` (the policy's
/// `jwks_ca`) or the system's root certificates, TLS 1.2/1.3 only, like upstream TLS.
/// If that verification cannot be set up, the client trusts nothing: fetches fail
/// (and are logged) rather than go out less verified than configured.
fn fetch_client(url: &http::Uri, ca: Option<&CaBundle>) -> FetchClient {
    let tls = if url.scheme_str() == Some("https") {
        let cfg = tls::roots(ca.map(|c| &c.0[..])).and_then(|roots| {
            if roots.is_empty() {
                tracing::warn!(url = %url, "no system root certificates found: this https JWKS fetch will fail; set `jwks_ca`");
            }
            Ok(tls::verifying(roots)?.with_no_client_auth())
        });
        cfg.unwrap_or_else(|e| {
            tracing::error!(url = %url, error = %e, "jwks TLS config failed; fetches will fail");
            tls::trust_nothing()
        })
    } else {
        // Never used: an http URL is fetched without TLS.
        tls::trust_nothing()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

struct Remote {
    url: http::Uri,
    refetch: Duration,
    client: FetchClient,
    /// Serialises fetches: one at a time, whoever causes them.
    fetching: tokio::sync::Mutex<()>,
    /// When the last fetch started, in ms since `epoch`; `u64::MAX`: never.
    last_fetch: AtomicU64,
    epoch: Instant,
}

/// The live keys of one source.
pub struct KeyStore {
    keys: ArcSwap<KeySet>,
    /// Bumped whenever `keys` is replaced; verified-token caches key on it.
    generation: AtomicU64,
    remote: Option<Remote>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.keys.load().len())
            .field("url", &self.remote.as_ref().map(|r| &r.url))
            .finish()
    }
}

impl KeyStore {
    /// A store that never changes (a JWKS file or a secret).
    fn fixed(set: KeySet) -> KeyStore {
        KeyStore {
            keys: ArcSwap::from_pointee(set),
            generation: AtomicU64::new(0),
            remote: None,
        }
    }

    /// Changes whenever the key set is replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key for a token; on an unknown `kid`, refetch a URL source if the cooldown
    /// allows it and look again.
    pub async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        if let Some(k) = self.keys.load().find(kid, alg) {
            return Some(k);
        }
        let kid = kid?;
        if self.keys.load().has_kid(kid) {
            // Known kid, wrong key type for the algorithm: no refetch changes that.
            return None;
        }
        if self.refetch_for(kid).await {
            self.keys.load().find(Some(kid), alg)
        } else {
            None
        }
    }

    /// Refetch because `kid` is unknown, at most once per `refetch`; true when the
    /// kid is known afterwards.
    async fn refetch_for(&self, kid: &str) -> bool {
        let Some(r) = &self.remote else { return false };
        if !r.cooldown_over() {
            return false;
        }
        let _one = r.fetching.lock().await;
        if self.keys.load().has_kid(kid) {
            return true;
        }
        if !r.cooldown_over() {
            return false;
        }
        self.fetch_locked(r).await;
        self.keys.load().has_kid(kid)
    }

    /// Fetch now (the background refresh); keeps the cached keys on failure.
    async fn refresh(&self) {
        if let Some(r) = &self.remote {
            let _one = r.fetching.lock().await;
            self.fetch_locked(r).await;
        }
    }

    async fn fetch_locked(&self, r: &Remote) {
        r.last_fetch.store(r.now_ms(), Ordering::Release);
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&r.client, &r.url)).await {
            Ok(Ok(jwks)) if !jwks.is_empty() => {
                let set = KeySet::from_jwks(&jwks);
                tracing::info!(url = %r.url, keys = set.len(), "jwks fetched");
                self.keys.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Ok(Ok(_)) => {
                tracing::warn!(url = %r.url, "jwks has no usable key; keeping the cached keys")
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %r.url, error = %e, "jwks fetch failed; keeping the cached keys")
            }
            Err(_) => {
                tracing::warn!(url = %r.url, "jwks fetch timed out; keeping the cached keys")
            }
        }
    }
}

impl Remote {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cooldown_over(&self) -> bool {
        let last = self.last_fetch.load(Ordering::Acquire);
        last == u64::MAX || self.now_ms().saturating_sub(last) >= self.refetch.as_millis() as u64
    }
}

async fn fetch(client: &FetchClient, url: &http::Uri) -> Result<Vec<Jwk>, String> {
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    // The client's own message is only "client error (Connect)": add the causes, so
    // an untrusted certificate or a refused connection shows in the log.
    let resp = client.request(req).await.map_err(|e| with_causes(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    parse(&body)
}

/// `e` and its sources, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// URL, refresh, refetch and CA bundle of a URL source.
type RegistryKey = (String, Duration, Duration, Option<CaBundle>);

/// Hands out key stores; a URL source's store is shared by every snapshot (and every
/// policy) that uses the same URL with the same intervals and CA bundle, so a reload
/// keeps its cache and its background refresh.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<RegistryKey, Weak<KeyStore>>>,
}

impl Registry {
    /// The store for `source`; a new URL store is fetched once before it is returned.
    pub async fn get(&self, source: &KeySource) -> Arc<KeyStore> {
        let (url, refresh, refetch, ca) = match source {
            KeySource::File(jwks) => return Arc::new(KeyStore::fixed(KeySet::from_jwks(jwks))),
            KeySource::Secret(s) => return Arc::new(KeyStore::fixed(KeySet::secret(&s.0))),
            KeySource::Url {
                url,
                refresh,
                refetch,
                ca,
            } => (url, *refresh, *refetch, ca),
        };
        let key = (url.to_string(), refresh, refetch, ca.clone());
        let store = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = live.get(&key).and_then(Weak::upgrade) {
                return s;
            }
            let store = Arc::new(KeyStore {
                keys: ArcSwap::from_pointee(KeySet::default()),
                generation: AtomicU64::new(0),
                remote: Some(Remote {
                    url: url.clone(),
                    refetch,
                    client: fetch_client(url, ca.as_ref()),
                    fetching: tokio::sync::Mutex::new(()),
                    last_fetch: AtomicU64::new(u64::MAX),
                    epoch: Instant::now(),
                }),
            });
            live.retain(|_, w| w.strong_count() > 0);
            live.insert(key, Arc::downgrade(&store));
            store
        };
        store.refresh().await;
        spawn_refresh(&store, refresh);
        store
    }
}

/// Refetch every `every`; ends when the store is dropped.
fn spawn_refresh(store: &Arc<KeyStore>, every: Duration) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            store.refresh().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn oct_and_encryption_keys_are_never_used() {
        let doc = format!(
            r#"{{"keys":[{RSA_JWK},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"RSA","use":"enc","kid":"e","n":"sXch","e":"AQAB"}}]}}"#
        );
        let keys = parse(doc.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        let set = KeySet::from_jwks(&keys);
        assert!(set.find(Some("r1"), Algorithm::RS256).is_some());
        // The RSA key is never an HMAC key, whatever the token's header says.
        assert!(set.find(Some("r1"), Algorithm::HS256).is_none());
        assert!(set.find(Some("h"), Algorithm::HS256).is_none());
        assert!(set.find(Some("r1"), Algorithm::ES256).is_none());
    }

    #[test]
    fn a_jwk_alg_restricts_the_token_alg() {
        let with_alg = RSA_JWK.replace(r#""kty":"RSA","#, r#""kty":"RSA","alg":"PS256","#);
        let keys = parse(format!(r#"{{"keys":[{with_alg}]}}"#).as_bytes()).unwrap();
        let set = KeySet::from_jwks(&keys);
        assert!(set.find(Some("r1"), Algorithm::RS256).is_none());
        assert!(set.find(Some("r1"), Algorithm::PS256).is_some());
    }

    #[test]
    fn not_a_jwks_is_an_error() {
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{").is_err());
        assert_eq!(parse(br#"{"keys":[]}"#).unwrap().len(), 0);
    }
}
