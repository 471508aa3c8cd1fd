//! A per-VM cache of verified access tokens, so that a token's signature is checked once,
//! not on every request.
//!
//! Keyed by the SHA-256 of the token; bounded in entries (oldest inserted evicted first);
//! an entry never outlives the token's `exp`. Only the token's own verification is cached:
//! the binding, the route's requirement and every per-request check still run each time.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::token::VerifiedToken;

/// Default for `token_cache_entries`.
pub const DEFAULT_ENTRIES: usize = 4096;
/// The largest `token_cache_entries` accepted.
pub const MAX_ENTRIES: usize = 1 << 20;

struct Entry {
    token: Rc<VerifiedToken>,
    /// The token's `exp`: the entry is not used at or after it.
    expires_at: u64,
}

/// Verified tokens by the SHA-256 of their compact form.
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Entry>,
    /// Insertion order, for eviction. May hold keys already removed (expired); they are
    /// skipped on eviction and compacted away when they would make it grow unbounded.
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            entries: HashMap::with_capacity(capacity.min(DEFAULT_ENTRIES)),
            order: VecDeque::new(),
        }
    }

    /// The number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cache key of a token; `None` when caching is off (no hashing at all then).
    pub fn key(&self, token: &str) -> Option<[u8; 32]> {
        (self.capacity > 0).then(|| Sha256::digest(token.as_bytes()).into())
    }

    /// The verified token, if cached and not yet expired at `now`.
    pub fn get(&mut self, key: &[u8; 32], now: u64) -> Option<Rc<VerifiedToken>> {
        let entry = self.entries.get(key)?;
        if now < entry.expires_at {
            return Some(Rc::clone(&entry.token));
        }
        self.entries.remove(key);
        None
    }

    /// Caches a verified token until its `exp`, evicting the oldest entries when full.
    pub fn insert(&mut self, key: [u8; 32], token: Rc<VerifiedToken>, now: u64) {
        let expires_at = token.expires_at();
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        if self
            .entries
            .insert(key, Entry { token, expires_at })
            .is_none()
        {
            self.order.push_back(key);
        }
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::verified_token_expiring_at;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn cached_token_is_returned_until_its_exp() {
        let mut cache = TokenCache::new(4);
        cache.insert(key(1), Rc::new(verified_token_expiring_at(1000)), 900);
        assert!(cache.get(&key(1), 999).is_some());
        assert!(cache.get(&key(1), 1000).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_token_is_not_cached() {
        let mut cache = TokenCache::new(4);
        cache.insert(key(1), Rc::new(verified_token_expiring_at(1000)), 1000);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_stays_bounded_evicting_the_oldest() {
        let mut cache = TokenCache::new(3);
        for i in 0..10 {
            cache.insert(key(i), Rc::new(verified_token_expiring_at(5000)), 0);
            assert!(cache.len() <= 3);
        }
        assert!(cache.get(&key(9), 1).is_some());
        assert!(cache.get(&key(6), 1).is_none());
    }

    #[test]
    fn eviction_order_does_not_grow_with_expired_entries() {
        let mut cache = TokenCache::new(2);
        for i in 0..1000u32 {
            let now = u64::from(i) * 10;
            cache.insert(key(i), Rc::new(verified_token_expiring_at(now + 5)), now);
            assert!(cache.get(&key(i), now + 6).is_none());
            assert!(cache.order.len() <= 4);
        }
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let mut cache = TokenCache::new(0);
        assert!(cache.key("token").is_none());
        cache.insert(key(1), Rc::new(verified_token_expiring_at(1000)), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn key_is_the_sha256_of_the_token() {
        let cache = TokenCache::new(1);
        // SHA-256("abc") begins ba7816bf.
        assert_eq!(cache.key("abc").unwrap()[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
