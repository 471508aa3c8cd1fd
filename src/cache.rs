//! Per-VM caches keyed by the token itself: verified access tokens ([`TokenCache`]), so that
//! a token's signature is checked once, not on every request; and introspection answers
//! ([`IntrospectionCache`]).
//!
//! A lookup hashes the token with the standard library's keyed hasher (SipHash, its key random
//! per VM, so that made-up tokens cannot be chosen to collide) and compares the whole token
//! on a hit: no digest of the token is computed per request (issue 13: the SHA-256 of the
//! token was most of a cached request's own cost). Bounded in entries, the oldest filed
//! first out; an entry never outlives its time. Only the token's own verification (or its
//! introspection) is cached: the binding, the route's requirement and every per-request check
//! still run each time.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::token::VerifiedToken;

/// Default for `token_cache_entries`.
pub const DEFAULT_ENTRIES: usize = 4096;
/// The largest `token_cache_entries` accepted.
pub const MAX_ENTRIES: usize = 1 << 20;
/// The longest token the token cache keeps (longer ones are verified on every request): it
/// bounds the cache's memory, `token_cache_entries` times this at most.
pub const MAX_CACHED_TOKEN_BYTES: usize = 4096;

struct Filed<V> {
    value: V,
    /// The value is not used at or after this time.
    until: u64,
    /// When it was filed, in filing order: its place in [`Bounded::order`].
    filed: u64,
}

/// Values by token, each until its time; at most `capacity`, the oldest filed forgotten first.
/// Each token is held once (the map and the eviction order share it).
struct Bounded<V> {
    capacity: usize,
    entries: HashMap<Rc<str>, Filed<V>>,
    /// Tokens in the order they were filed, with when; an entry whose `filed` differs (its
    /// value was filed again since, or it is gone) is skipped on eviction.
    order: VecDeque<(u64, Rc<str>)>,
    filed: u64,
}

impl<V: Clone> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            capacity,
            entries: HashMap::with_capacity(capacity.min(DEFAULT_ENTRIES)),
            order: VecDeque::new(),
            filed: 0,
        }
    }

    fn get(&mut self, token: &str, now: u64) -> Option<V> {
        let entry = self.entries.get(token)?;
        if now < entry.until {
            return Some(entry.value.clone());
        }
        self.entries.remove(token);
        None
    }

    fn insert(&mut self, token: &str, value: V, until: u64, now: u64) {
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
            Filed {
                value,
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

/// Verified tokens, by the token (up to [`MAX_CACHED_TOKEN_BYTES`]), each until its `exp`.
pub struct TokenCache {
    tokens: Bounded<Rc<VerifiedToken>>,
    /// Lookups since the counts were last taken ([`TokenCache::take_counts`]).
    counts: Lookups,
}

/// How many lookups found their token, and how many did not (of tokens the cache could hold:
/// none are counted while the cache is off, nor for tokens too long to be cached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    pub hits: u64,
    pub misses: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            tokens: Bounded::new(capacity),
            counts: Lookups::default(),
        }
    }

    /// The number of cached tokens.
    pub fn len(&self) -> usize {
        self.tokens.entries.len()
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.entries.is_empty()
    }

    /// The verified token, if cached and not yet expired at `now`. Nothing is hashed when
    /// caching is off or the token is too long to be cached.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Rc<VerifiedToken>> {
        if self.tokens.capacity == 0 || token.len() > MAX_CACHED_TOKEN_BYTES {
            return None;
        }
        let found = self.tokens.get(token, now);
        match found {
            Some(_) => self.counts.hits += 1,
            None => self.counts.misses += 1,
        }
        found
    }

    /// The lookups counted since the last call, and starts counting again: the host adds them
    /// to its counters on its tick, not on every request (issue 13).
    pub fn take_counts(&mut self) -> Lookups {
        std::mem::take(&mut self.counts)
    }

    /// Caches a verified token until its `exp`, forgetting the oldest entries when full.
    pub fn insert(&mut self, token: &str, verified: Rc<VerifiedToken>, now: u64) {
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let until = verified.expires_at();
        self.tokens.insert(token, verified, until, now);
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

/// Introspection answers per VM (issue 12), keyed by the token itself. An active answer is
/// kept for the endpoint's `cache_seconds`, never past the token's `exp`; an inactive one for
/// `negative_cache_seconds`.
pub struct IntrospectionCache {
    answers: Bounded<Introspected>,
}

impl IntrospectionCache {
    pub fn new(capacity: usize) -> Self {
        IntrospectionCache {
            answers: Bounded::new(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.answers.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.entries.is_empty()
    }

    /// The answer about `token`, if remembered at `now`.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Introspected> {
        self.answers.get(token, now)
    }

    /// Remembers `answer` about `token` for `seconds` from `now` (an active token never past
    /// its `exp`), forgetting the oldest answers when full.
    pub fn insert(&mut self, token: &str, answer: Introspected, seconds: u64, now: u64) {
        let mut until = now.saturating_add(seconds);
        if let Introspected::Active(verified) = &answer {
            until = until.min(verified.expires_at());
        }
        self.answers.insert(token, answer, until, now);
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
        assert!(cache.answers.order.len() <= 4);
    }

    fn key(i: u32) -> String {
        format!("token-{i}")
    }

    #[test]
    fn cached_token_is_returned_until_its_exp() {
        let mut cache = TokenCache::new(4);
        cache.insert(&key(1), Rc::new(verified_token_expiring_at(1000)), 900);
        assert!(cache.get(&key(1), 999).is_some());
        assert!(cache.get(&key(1), 1000).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_token_is_not_cached() {
        let mut cache = TokenCache::new(4);
        cache.insert(&key(1), Rc::new(verified_token_expiring_at(1000)), 1000);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_stays_bounded_evicting_the_oldest() {
        let mut cache = TokenCache::new(3);
        for i in 0..10 {
            cache.insert(&key(i), Rc::new(verified_token_expiring_at(5000)), 0);
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
            cache.insert(&key(i), Rc::new(verified_token_expiring_at(now + 5)), now);
            assert!(cache.get(&key(i), now + 6).is_none());
            assert!(cache.tokens.order.len() <= 4);
        }
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let mut cache = TokenCache::new(0);
        cache.insert(&key(1), Rc::new(verified_token_expiring_at(1000)), 0);
        assert!(cache.is_empty());
        assert!(cache.get(&key(1), 0).is_none());
    }

    #[test]
    fn a_cached_token_matches_the_whole_token_only() {
        let mut cache = TokenCache::new(4);
        cache.insert(
            "header.payload.sig",
            Rc::new(verified_token_expiring_at(1000)),
            0,
        );
        for other in [
            "header.payload.si",
            "header.payload.sig.",
            "HEADER.payload.sig",
            "",
        ] {
            assert!(cache.get(other, 1).is_none(), "{other:?}");
        }
        assert!(cache.get("header.payload.sig", 1).is_some());
    }

    #[test]
    fn tokens_too_long_to_cache_are_not_kept() {
        let mut cache = TokenCache::new(4);
        let long = "a".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        cache.insert(&long, Rc::new(verified_token_expiring_at(1000)), 0);
        assert!(cache.is_empty());
        assert!(cache.get(&long, 1).is_none());
        let longest = "a".repeat(MAX_CACHED_TOKEN_BYTES);
        cache.insert(&longest, Rc::new(verified_token_expiring_at(1000)), 0);
        assert!(cache.get(&longest, 1).is_some());
    }

    /// The token cache had the eviction fault the introspection cache had (issue 12's
    /// review): a token cached again after it expired was evicted by its stale place.
    #[test]
    fn a_token_cached_again_is_not_evicted_for_its_old_place() {
        let mut cache = TokenCache::new(2);
        cache.insert("a", Rc::new(verified_token_expiring_at(5)), 0);
        cache.insert("b", Rc::new(verified_token_expiring_at(100)), 1);
        assert!(cache.get("a", 10).is_none());
        cache.insert("a", Rc::new(verified_token_expiring_at(100)), 10);
        cache.insert("c", Rc::new(verified_token_expiring_at(100)), 11);
        assert!(cache.get("a", 12).is_some());
        assert!(cache.get("b", 12).is_none());
    }

    #[test]
    fn lookups_are_counted_until_taken() {
        let mut cache = TokenCache::new(4);
        assert!(cache.get(&key(1), 0).is_none());
        cache.insert(&key(1), Rc::new(verified_token_expiring_at(1000)), 0);
        assert!(cache.get(&key(1), 1).is_some());
        assert!(cache.get(&key(1), 2).is_some());
        assert!(cache.get(&key(1), 1000).is_none(), "expired: a miss");
        assert_eq!(cache.take_counts(), Lookups { hits: 2, misses: 2 });
        assert_eq!(
            cache.take_counts(),
            Lookups::default(),
            "taken: counted again from 0"
        );
        // Tokens the cache could never hold, and a cache that is off, are not counted.
        assert!(cache
            .get(&"a".repeat(MAX_CACHED_TOKEN_BYTES + 1), 3)
            .is_none());
        let mut off = TokenCache::new(0);
        assert!(off.get(&key(1), 0).is_none());
        assert_eq!(cache.take_counts(), Lookups::default());
        assert_eq!(off.take_counts(), Lookups::default());
    }
}
