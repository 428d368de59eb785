//! Verified tokens, remembered until they expire: a client sends the same token for
//! minutes, and verifying its signature again costs 0.1–0.3 ms (RS256/ES256) where a
//! lookup costs a SHA-256 of the token.
//!
//! Only tokens that verified are kept, keyed by the SHA-256 of the whole token (no
//! other token can hit an entry). An entry is used only while `exp` (and `nbf`) still
//! pass with the policy's leeway, and only for the key set it was verified against:
//! a JWKS change (refresh, refetch, reload) makes every entry of the old set a miss.
//! Memory is bounded: 16 shards (no global lock) of at most 1,024 entries; a full
//! shard is emptied.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Claims;

const SHARDS: usize = 16;
const PER_SHARD: usize = 1024;

struct Entry {
    claims: Claims,
    exp: u64,
    nbf: u64,
    /// The key-set generation it was verified against.
    generation: u64,
}

/// Hashes a SHA-256 digest by its own bytes. The digest is already uniform, so SipHash
/// on top of it (the std default, about 270 instructions per request on the policies
/// benchmark) buys nothing. A client cannot pick keys to collide either: it can choose
/// tokens, not their digests, and only tokens that verified are ever inserted.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes: fold both in. Of a digest,
        // bytes 8..16: byte 0 already picked the shard, and would leave every key of a
        // shard with the same low hash bits (the bucket index).
        let src = bytes.get(8..16).unwrap_or(bytes);
        let mut word = [0u8; 8];
        let n = src.len().min(8);
        word[..n].copy_from_slice(&src[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<[u8; 32], Entry, BuildHasherDefault<DigestHasher>>;

/// The cache of one policy.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

/// The cache key of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    fn shard(&self, key: &[u8; 32]) -> &Mutex<Shard> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The claims of a token verified before, if they still pass `now` with `leeway`
    /// and were verified against key-set `generation`.
    pub fn get(&self, key: &[u8; 32], now: u64, leeway: u64, generation: u64) -> Option<Claims> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let e = shard.get(key)?;
        let fresh = e.generation == generation
            && now <= e.exp.saturating_add(leeway)
            && e.nbf <= now.saturating_add(leeway);
        fresh.then(|| e.claims.clone())
    }

    /// Remember a verified token.
    pub fn put(&self, key: [u8; 32], claims: Claims, generation: u64) {
        let Some(exp) = claims.get("exp").and_then(timestamp) else {
            return;
        };
        let nbf = claims.get("nbf").and_then(timestamp).unwrap_or(0);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        shard.insert(
            key,
            Entry {
                claims,
                exp,
                nbf,
                generation,
            },
        );
    }
}

/// A NumericDate claim (seconds; fractions rounded down).
fn timestamp(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn claims(exp: u64) -> Claims {
        let mut m = serde_json::Map::new();
        m.insert("exp".into(), exp.into());
        Arc::new(m)
    }

    #[test]
    fn entries_expire_with_the_token_and_with_the_key_set() {
        let c = TokenCache::default();
        let k = digest("a.b.c");
        c.put(k, claims(100), 1);
        assert!(c.get(&k, 100, 0, 1).is_some());
        assert!(c.get(&k, 101, 0, 1).is_none(), "expired");
        assert!(c.get(&k, 105, 5, 1).is_some(), "within leeway");
        assert!(c.get(&k, 100, 0, 2).is_none(), "another key set");
        assert!(c.get(&digest("a.b.d"), 100, 0, 1).is_none());
    }

    #[test]
    fn digests_of_one_shard_spread_over_the_buckets() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<DigestHasher>::default();
        let mut low = std::collections::HashSet::new();
        let mut n = 0;
        for i in 0..20_000u32 {
            let key = digest(&format!("token-{i}"));
            if usize::from(key[0]) % SHARDS == 0 {
                n += 1;
                low.insert(build.hash_one(key) & 0x3ff);
            }
        }
        // ~1,250 keys into 1,024 low-bit values: a uniform hash fills most of them.
        assert!(n > 1000, "{n}");
        assert!(low.len() > 600, "{} of 1024 values for {n} keys", low.len());
    }

    #[test]
    fn memory_is_bounded() {
        let c = TokenCache::default();
        for i in 0..100_000 {
            c.put(digest(&i.to_string()), claims(u64::MAX), 1);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * PER_SHARD, "{total}");
    }
}
