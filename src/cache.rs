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

/// What the introspection endpoint said of a token, as long as it is remembered.
#[derive(Clone, Debug)]
pub enum Introspected {
    /// Active, and acceptable: the token as verified.
    Active(Rc<VerifiedToken>),
    /// `active: false` (the negative cache, so that a flood of made-up tokens is not a
    /// flood of calls).
    Inactive,
    /// The call failed (`introspection_unavailable` or `introspection_invalid`): remembered
    /// only long enough for the requests that waited on it to be refused together.
    Failed(crate::reject::Reason),
}

struct Answered {
    answer: Introspected,
    /// The answer is not used at or after this time.
    until: u64,
    /// When it was filed, in insertion order: its place in [`IntrospectionCache::order`].
    filed: u64,
}

/// Introspection answers per VM (issue 12), keyed by the token itself: a lookup compares the
/// whole token, never a digest of it. Bounded in entries; the oldest answer is forgotten
/// first. An active answer is kept for the endpoint's `cache_seconds`, never past the token's
/// `exp`; an inactive one for `negative_cache_seconds`. Each token is held once (the map and
/// the eviction order share it).
pub struct IntrospectionCache {
    capacity: usize,
    entries: HashMap<Rc<str>, Answered>,
    /// Tokens in the order they were filed, with when; an entry whose `filed` differs (its
    /// answer was filed again since, or it is gone) is skipped on eviction.
    order: VecDeque<(u64, Rc<str>)>,
    filed: u64,
}

impl IntrospectionCache {
    pub fn new(capacity: usize) -> Self {
        IntrospectionCache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            filed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer about `token`, if remembered at `now`.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Introspected> {
        let entry = self.entries.get(token)?;
        if now < entry.until {
            return Some(entry.answer.clone());
        }
        self.entries.remove(token);
        None
    }

    /// Remembers `answer` about `token` for `seconds` from `now` (an active token never past
    /// its `exp`), forgetting the oldest answers when full.
    pub fn insert(&mut self, token: &str, answer: Introspected, seconds: u64, now: u64) {
        let mut until = now.saturating_add(seconds);
        if let Introspected::Active(verified) = &answer {
            until = until.min(verified.expires_at());
        }
        if self.capacity == 0 || until <= now {
            self.entries.remove(token);
            return;
        }
        let key: Rc<str> = match self.entries.get_key_value(token) {
            Some((key, _)) => Rc::clone(key),
            None => Rc::from(token),
        };
        while self.entries.len() >= self.capacity && !self.entries.contains_key(token) {
            let Some((filed, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.filed == filed) {
                self.entries.remove(&oldest);
            }
        }
        self.filed += 1;
        let filed = self.filed;
        self.entries.insert(
            Rc::clone(&key),
            Answered {
                answer,
                until,
                filed,
            },
        );
        self.order.push_back((filed, key));
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(filed, key)| entries.get(key).is_some_and(|e| e.filed == *filed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::verified_token_expiring_at;

    #[test]
    fn introspection_answers_are_kept_for_their_time_and_never_past_exp() {
        let mut cache = IntrospectionCache::new(4);
        let active = || Introspected::Active(Rc::new(verified_token_expiring_at(1030)));
        // cache_seconds 60 from 1000, but exp at 1030.
        cache.insert("opaque-1", active(), 60, 1000);
        assert!(matches!(
            cache.get("opaque-1", 1029),
            Some(Introspected::Active(_))
        ));
        assert!(cache.get("opaque-1", 1030).is_none());
        // cache_seconds shorter than exp.
        cache.insert("opaque-2", active(), 10, 1000);
        assert!(cache.get("opaque-2", 1009).is_some());
        assert!(cache.get("opaque-2", 1010).is_none());
        // The negative cache.
        cache.insert("junk", Introspected::Inactive, 5, 1000);
        assert!(matches!(
            cache.get("junk", 1004),
            Some(Introspected::Inactive)
        ));
        assert!(cache.get("junk", 1005).is_none());
        // Nothing kept for no time, or with the cache off.
        cache.insert("now", Introspected::Inactive, 0, 1000);
        assert!(cache.get("now", 1000).is_none());
        let mut off = IntrospectionCache::new(0);
        off.insert("t", Introspected::Inactive, 5, 1000);
        assert!(off.is_empty());
    }

    #[test]
    fn introspection_answers_match_the_whole_token_only() {
        let mut cache = IntrospectionCache::new(4);
        cache.insert("abcdef", Introspected::Inactive, 5, 1000);
        for other in ["abcde", "abcdefg", "ABCDEF", ""] {
            assert!(cache.get(other, 1000).is_none(), "{other:?}");
        }
        assert!(cache.get("abcdef", 1000).is_some());
    }

    #[test]
    fn the_introspection_cache_is_bounded_and_forgets_the_oldest_first() {
        let mut cache = IntrospectionCache::new(3);
        for i in 0..10 {
            cache.insert(&format!("t{i}"), Introspected::Inactive, 60, 0);
            assert!(cache.len() <= 3);
        }
        assert!(cache.get("t9", 1).is_some());
        assert!(cache.get("t7", 1).is_some());
        assert!(cache.get("t6", 1).is_none());
        // A newer answer about a remembered token replaces it in place.
        cache.insert(
            "t9",
            Introspected::Failed(crate::reject::Reason::IntrospectionInvalid),
            1,
            0,
        );
        assert!(matches!(cache.get("t9", 0), Some(Introspected::Failed(_))));
        assert_eq!(cache.len(), 3);
    }

    /// Found by an attacker's review of issue 12: a token whose answer expired and was filed
    /// again was forgotten first, by its stale place in the eviction order.
    #[test]
    fn an_answer_filed_again_is_not_forgotten_for_its_old_place() {
        let mut cache = IntrospectionCache::new(2);
        cache.insert("a", Introspected::Inactive, 5, 0);
        cache.insert("b", Introspected::Inactive, 60, 1);
        assert!(cache.get("a", 10).is_none());
        cache.insert("a", Introspected::Inactive, 60, 10);
        cache.insert("c", Introspected::Inactive, 60, 11);
        // "b" is the oldest answer now: it goes, the fresh "a" stays.
        assert!(cache.get("a", 12).is_some());
        assert!(cache.get("b", 12).is_none());
        assert!(cache.get("c", 12).is_some());
        assert!(cache.order.len() <= 4);
    }

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
