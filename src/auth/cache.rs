//! Verified tokens, remembered until they expire: a client sends the same token for
//! minutes, and verifying its signature again costs 0.1–0.3 ms (RS256/ES256) where a
//! lookup costs a fast hash of the token and one comparison.
//!
//! Only tokens that verified are kept. An entry holds the whole token, found by a 64-bit
//! hash of it (foldhash, seeded per cache from the address space's randomisation) and
//! used only when the token presented is the same, byte for byte (compared in constant
//! time): no other token can hit an entry, whatever its hash, so nothing rests on the
//! seed being secret. An entry is used only while `exp` (and `nbf`) still
//! pass with the policy's leeway, and only for the key set it was verified against: a
//! JWKS change (refresh, refetch, reload) makes every entry of the old set a miss.
//! Memory is bounded: 16 shards (no global lock) of at most 1,024 entries and 1 MiB of
//! tokens each (the claims parsed from a token take a few times its size); a full shard
//! drops entries one at a time until the new one fits.
//!
//! Keyed by the token's SHA-256 before: on the policies benchmark's 590-byte RS256 token
//! that was about 33 k of 63 k user-space instructions per request by callgrind (whose
//! CPU model lacks the SHA extensions; with them, `openssl speed -evp sha256 -bytes 512`
//! on the development machine: 1.17 GB/s, about 0.5 µs per token). `cargo bench --bench
//! micro -- auth/verify_RS256_cached`: 0.51 µs then, 0.19 µs now.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use constant_time_eq::constant_time_eq;
use serde_json::Value;

use super::Claims;

const SHARDS: usize = 16;
const PER_SHARD: usize = 1024;
/// Bytes of tokens per shard. Tokens are at most the policy's `max_token_bytes` (64 KiB
/// at most), so a shard of large tokens holds fewer than 1,024.
const PER_SHARD_BYTES: usize = 1 << 20;

struct Entry {
    token: Box<[u8]>,
    claims: Claims,
    exp: u64,
    nbf: u64,
    /// The key-set generation it was verified against.
    generation: u64,
}

#[derive(Default)]
struct Shard {
    /// By the token's hash: a second token of the same hash replaces the first.
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    /// The tokens' bytes.
    bytes: usize,
}

/// The cache of one policy.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    hasher: foldhash::fast::RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl TokenCache {
    /// The token's hash, and its shard (by the hash's top bits; the shard's map buckets
    /// by hashing the hash again).
    fn find(&self, token: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(token.as_bytes());
        (hash, &self.shards[(hash >> 60) as usize % SHARDS])
    }

    /// The claims of `token` if it verified before, still passes `now` with `leeway`,
    /// and was verified against key-set `generation`.
    pub fn get(&self, token: &str, now: u64, leeway: u64, generation: u64) -> Option<Claims> {
        let (hash, shard) = self.find(token);
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let e = shard.entries.get(&hash)?;
        let same = constant_time_eq(&e.token, token.as_bytes());
        let fresh = same
            && e.generation == generation
            && now <= e.exp.saturating_add(leeway)
            && e.nbf <= now.saturating_add(leeway);
        fresh.then(|| e.claims.clone())
    }

    /// Remember a verified token.
    pub fn put(&self, token: &str, claims: Claims, generation: u64) {
        let Some(exp) = claims.get("exp").and_then(timestamp) else {
            return;
        };
        // (A policy takes tokens of at most 64 KiB; this keeps the loop below finite
        // whatever the limits.)
        if token.len() > PER_SHARD_BYTES {
            return;
        }
        let nbf = claims.get("nbf").and_then(timestamp).unwrap_or(0);
        let (hash, shard) = self.find(token);
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if let Some(old) = shard.entries.remove(&hash) {
            shard.bytes -= old.token.len();
        }
        // Room for one more: arbitrary entries go (the first in the map's order), not
        // the whole shard, so whoever sends many large valid tokens evicts only about
        // as much as they add.
        while shard.entries.len() >= PER_SHARD || shard.bytes + token.len() > PER_SHARD_BYTES {
            let Some(&victim) = shard.entries.keys().next() else {
                break;
            };
            if let Some(old) = shard.entries.remove(&victim) {
                shard.bytes -= old.token.len();
            }
        }
        let entry = Entry {
            token: token.as_bytes().into(),
            claims,
            exp,
            nbf,
            generation,
        };
        shard.bytes += token.len();
        shard.entries.insert(hash, entry);
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
        c.put("a.b.c", claims(100), 1);
        assert!(c.get("a.b.c", 100, 0, 1).is_some());
        assert!(c.get("a.b.c", 101, 0, 1).is_none(), "expired");
        assert!(c.get("a.b.c", 105, 5, 1).is_some(), "within leeway");
        assert!(c.get("a.b.c", 100, 0, 2).is_none(), "another key set");
        assert!(c.get("a.b.d", 100, 0, 1).is_none());
    }

    #[test]
    fn another_token_under_the_same_hash_does_not_hit() {
        let c = TokenCache::default();
        c.put("a.b.c", claims(100), 1);
        // What a hash collision would find: the entry of "a.b.c" where "x.y.z" looks.
        let (hash, shard) = c.find("a.b.c");
        let entry = shard.lock().unwrap().entries.remove(&hash).unwrap();
        let (other, shard) = c.find("x.y.z");
        shard.lock().unwrap().entries.insert(other, entry);
        assert!(c.get("x.y.z", 100, 0, 1).is_none());
        assert!(c.get("a.b.c", 100, 0, 1).is_none());
        // A token that is a prefix or an extension of the stored one does not hit.
        c.put("a.b.c", claims(100), 1);
        assert!(c.get("a.b.c", 100, 0, 1).is_some());
        assert!(c.get("a.b.", 100, 0, 1).is_none());
        assert!(c.get("a.b.cc", 100, 0, 1).is_none());
    }

    #[test]
    fn memory_is_bounded_in_entries_and_in_bytes() {
        let c = TokenCache::default();
        for i in 0..100_000 {
            c.put(&i.to_string(), claims(u64::MAX), 1);
        }
        let total: usize = c
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert!(total <= SHARDS * PER_SHARD, "{total}");
        // Tokens of 64 KiB, the most a policy accepts: at most 16 per shard.
        for i in 0..1_000 {
            c.put(&format!("{i:065535}"), claims(u64::MAX), 1);
        }
        for s in &c.shards {
            let s = s.lock().unwrap();
            let bytes: usize = s.entries.values().map(|e| e.token.len()).sum();
            assert_eq!(bytes, s.bytes);
            assert!(bytes <= PER_SHARD_BYTES, "{bytes}");
        }
        // A replaced entry's bytes are given back.
        let c = TokenCache::default();
        c.put("a.b.c", claims(1), 1);
        c.put("a.b.c", claims(2), 1);
        let bytes: usize = c.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert_eq!(bytes, 5);
    }

    #[test]
    fn a_full_shard_makes_room_for_one_and_keeps_the_rest() {
        let c = TokenCache::default();
        let first = c.find("t-0").1 as *const Mutex<Shard>;
        let mut same = (0..)
            .map(|i| format!("t-{i}"))
            .filter(|t| std::ptr::eq(c.find(t).1, first));
        let tokens: Vec<String> = same.by_ref().take(PER_SHARD).collect();
        for t in &tokens {
            c.put(t, claims(100), 1);
        }
        let len = || c.find("t-0").1.lock().unwrap().entries.len();
        assert_eq!(len(), PER_SHARD);
        // The same token again: replaced, nothing else goes.
        c.put(&tokens[0], claims(100), 1);
        assert_eq!(len(), PER_SHARD);
        assert!(tokens.iter().all(|t| c.get(t, 100, 0, 1).is_some()));
        // A new one: one other entry goes, not the shard.
        let new = same.next().unwrap();
        c.put(&new, claims(100), 1);
        assert_eq!(len(), PER_SHARD);
        assert!(c.get(&new, 100, 0, 1).is_some());
        let kept = tokens
            .iter()
            .filter(|t| c.get(t, 100, 0, 1).is_some())
            .count();
        assert_eq!(kept, PER_SHARD - 1);
    }

    #[test]
    fn a_token_without_exp_is_not_kept() {
        let c = TokenCache::default();
        c.put("a.b.c", Arc::new(serde_json::Map::new()), 1);
        assert!(c.get("a.b.c", 0, 0, 1).is_none());
    }
}
