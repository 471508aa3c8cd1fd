//! Replay protection for request signatures and DPoP proofs: each is accepted once.
//!
//! The record is shared by all of an Envoy's worker VMs (proxy-wasm shared data, in the
//! glue) and bounded: it is split into buckets by the id's hash, each holding at most
//! [`BUCKET_ENTRIES`] live entries. An entry is the id and the time it was signed (`iat`),
//! kept while any configuration sharing the record could still accept that `iat`: each bucket
//! carries the widest window any of them has used, raised in every bucket by a configuration
//! that widens it ([`WindowRecord`]), so that every entry then lives longer at once. A full
//! bucket refuses new ids (fail closed) rather than forget one that could then be replayed.

use crate::abi::Status;
use crate::reject::Reason;
use crate::shared::SharedData;

/// Entries per bucket.
pub const BUCKET_ENTRIES: usize = 64;
/// Bytes of the signature hash kept per entry: 128 bits, collision-free in practice.
const ID_BYTES: usize = 16;
const ENTRY_BYTES: usize = ID_BYTES + 8;
/// A bucket starts with its window (seconds, big-endian).
const WINDOW_BYTES: usize = 8;
/// The widest window a bucket may claim: the widest `max_age_seconds` a configuration can set.
/// A larger one (written by another plugin sharing the data) would only keep entries longer.
pub const MAX_WINDOW_SECONDS: u64 = 3600;

/// Where replayed signatures are recorded.
pub trait ReplayStore {
    /// Records the first use of `id`, signed at `iat`, for as long as the record's window
    /// could accept `iat`; refuses a second use (`RequestSignatureReplayed`).
    fn first_use(&mut self, id: &[u8; 32], iat: u64, now: u64) -> Result<(), Reason>;

    /// The earliest `iat` whose signature the record is sure to remember: an older one may
    /// have been forgotten under a shorter window (see [`WindowRecord`]), and is refused.
    fn remembers_since(&self) -> u64 {
        0
    }
}

/// The replay window of the record, shared by the VMs of the record's namespace, which
/// survives configuration changes: the widest `max_age_seconds` any configuration has used. It
/// never narrows, since VMs of a wider configuration may still be serving.
///
/// When a new configuration widens it (60 to 600, say), an entry already dropped under the old
/// window would be inside the new one: replayable once. So a widening remembers since when the
/// record is complete: `iat` must be at least the widening's time minus the old window (found
/// by the review of issue 7). Entries still held at the widening live on under the new window:
/// the widening VM raises the window of every bucket before it agrees on this record (found by
/// the review of issue 9: with expiry times fixed when an entry was written, they were dropped
/// on the old schedule, and a used proof was accepted again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowRecord {
    pub max_age_seconds: u64,
    /// Signatures with an earlier `iat` may have been forgotten.
    pub remembers_since: u64,
}

impl WindowRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.max_age_seconds.to_be_bytes().to_vec();
        out.extend_from_slice(&self.remembers_since.to_be_bytes());
        out
    }

    /// `None` for bytes that are no record (absent, or another version's).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        (bytes.len() == 16).then_some(())?;
        Some(WindowRecord {
            max_age_seconds: word(0)?,
            remembers_since: word(1)?,
        })
    }

    /// The record after a VM configured with `max_age_seconds` at `now` has seen `stored`.
    pub fn configure(stored: Option<WindowRecord>, max_age_seconds: u64, now: u64) -> Self {
        match stored {
            // The first configuration: nothing was ever forgotten.
            None => WindowRecord {
                max_age_seconds,
                remembers_since: 0,
            },
            // Wider: what the old window let go is inside the new one.
            Some(old) if max_age_seconds > old.max_age_seconds => WindowRecord {
                max_age_seconds,
                remembers_since: old
                    .remembers_since
                    .max(now.saturating_sub(old.max_age_seconds)),
            },
            // The same or narrower: the record keeps the wider window.
            Some(old) => old,
        }
    }
}

/// The bucket a signature id belongs to, among `buckets`.
pub fn bucket_of(id: &[u8; 32], buckets: usize) -> usize {
    let n = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) as usize;
    n % buckets.max(1)
}

/// One bucket: its window, and `(id prefix, iat)` entries, encoded as fixed-size records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The widest `max_age_seconds` of any configuration that wrote or prepared this bucket:
    /// an entry is kept while its `iat` is inside it.
    window: u64,
    entries: Vec<([u8; ID_BYTES], u64)>,
}

impl Bucket {
    /// Decodes a bucket. One without a window (written by the version before windows were
    /// kept in buckets, whose entries held expiry times, later than their `iat`: read as
    /// `iat`, they are only kept longer) has window 0. Malformed trailing bytes are ignored:
    /// dropping them only forgets what another writer put there.
    pub fn decode(bytes: &[u8]) -> Self {
        let (window, entries) = match bytes.len() % ENTRY_BYTES {
            WINDOW_BYTES => {
                let (head, rest) = bytes.split_at(WINDOW_BYTES);
                let window = head
                    .try_into()
                    .map_or(0, u64::from_be_bytes)
                    .min(MAX_WINDOW_SECONDS);
                (window, rest)
            }
            _ => (0, bytes),
        };
        let entries = entries
            .chunks_exact(ENTRY_BYTES)
            .filter_map(|chunk| {
                let id: [u8; ID_BYTES] = chunk.get(..ID_BYTES)?.try_into().ok()?;
                let iat: [u8; 8] = chunk.get(ID_BYTES..)?.try_into().ok()?;
                Some((id, u64::from_be_bytes(iat)))
            })
            .collect();
        Bucket { window, entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WINDOW_BYTES + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(&self.window.to_be_bytes());
        for (id, iat) in &self.entries {
            out.extend_from_slice(id);
            out.extend_from_slice(&iat.to_be_bytes());
        }
        out
    }

    /// The bucket's window.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Widens the bucket's window to `max_age_seconds`; whether it changed.
    pub fn widen(&mut self, max_age_seconds: u64) -> bool {
        let widened = max_age_seconds.min(MAX_WINDOW_SECONDS) > self.window;
        if widened {
            self.window = max_age_seconds.min(MAX_WINDOW_SECONDS);
        }
        widened
    }

    /// Drops the entries no configuration can accept any more (`iat` outside the wider of the
    /// bucket's window and `max_age_seconds`, the writer's), then records `id` signed at
    /// `iat`: `Err(RequestSignatureReplayed)` if it is already there, `Err(ReplayStoreFull)`
    /// if there is no room.
    pub fn record(
        &mut self,
        id: &[u8; 32],
        iat: u64,
        now: u64,
        max_age_seconds: u64,
    ) -> Result<(), Reason> {
        self.widen(max_age_seconds);
        let window = self.window.max(max_age_seconds);
        self.entries
            .retain(|(_, signed_at)| signed_at.saturating_add(window) >= now);
        let prefix: [u8; ID_BYTES] = id[..ID_BYTES]
            .try_into()
            .map_err(|_| Reason::ReplayStoreFull)?;
        if self.entries.iter().any(|(seen, _)| *seen == prefix) {
            return Err(Reason::RequestSignatureReplayed);
        }
        if self.entries.len() >= BUCKET_ENTRIES {
            return Err(Reason::ReplayStoreFull);
        }
        self.entries.push((prefix, iat));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Buckets of [`BUCKET_ENTRIES`] entries each: 524288 live signatures. With the default
/// 60-second window, about 6000 signed requests per second keep fewer than 1% of buckets full
/// (a bucket fills before the average does). Each live entry takes 24 bytes of shared memory,
/// 12 MiB when all are full.
pub const BUCKETS: usize = 8192;
/// Compare-and-swap attempts before giving up (fail closed).
const ATTEMPTS: usize = 8;

/// The replay record in shared data: one for all of an Envoy's worker VMs. Buckets are
/// separate keys, updated with compare-and-swap, so that two workers seeing the same
/// signature at once cannot both accept it.
pub struct SharedReplay<S> {
    data: S,
    namespace: String,
    buckets: usize,
    /// The earliest `iat` the record is sure to remember (see [`WindowRecord`]).
    remembers_since: u64,
    /// This configuration's window: the least the record's window can be.
    max_age_seconds: u64,
}

impl<S: SharedData> SharedReplay<S> {
    /// The record under `namespace`, set up for a configuration with `max_age_seconds`: every
    /// bucket created, and widened to it, then the window agreed with the other VMs at the
    /// time `now` gives once that is done.
    pub fn configure(
        data: S,
        namespace: String,
        max_age_seconds: u64,
        now: impl Fn() -> u64,
    ) -> Self {
        SharedReplay::with_buckets(data, namespace, BUCKETS, max_age_seconds, now)
    }

    fn with_buckets(
        data: S,
        namespace: String,
        buckets: usize,
        max_age_seconds: u64,
        now: impl Fn() -> u64,
    ) -> Self {
        let mut record = SharedReplay {
            data,
            namespace,
            buckets: buckets.max(1),
            remembers_since: 0,
            max_age_seconds: max_age_seconds.min(MAX_WINDOW_SECONDS),
        };
        record.prepare_buckets();
        // After the walk: a VM of an older, narrower configuration may have dropped entries
        // from a bucket until the walk widened it, all of them older than now minus its window.
        record.remembers_since = record.agree_window(max_age_seconds, now());
        record
    }

    fn key(&self, bucket: usize) -> String {
        format!("{}.replay.{bucket}", self.namespace)
    }

    fn window_key(&self) -> String {
        format!("{}.replay.window", self.namespace)
    }

    /// Creates every bucket that does not exist yet, empty, and widens every bucket's window
    /// to this configuration's.
    ///
    /// Shared data has no atomic "create if absent": a write to a missing key succeeds
    /// whatever compare-and-swap token it carries. When the first write to a bucket also
    /// recorded a signature, two workers seeing the same fresh signature at once could both
    /// create the bucket, and both accept it (issue 7, finding 8). Created here, at configure
    /// time (Envoy configures a plugin on its main thread before any worker serves with it),
    /// every later write is a compare-and-swap on an existing key.
    ///
    /// A bucket's window decides how long its entries are kept by every VM that writes it,
    /// whatever that VM's own configuration: once this walk has widened a bucket, a VM of an
    /// older, narrower configuration still serving keeps its entries as long as this one
    /// accepts them (its write of a bucket it read before the walk fails its compare-and-swap,
    /// and it reads the bucket again).
    ///
    /// Every VM walks every bucket (a few milliseconds at configure): a marker saying "done"
    /// could be written by another plugin to stop the walk.
    fn prepare_buckets(&self) {
        let empty = Bucket {
            window: self.max_age_seconds,
            entries: Vec::new(),
        }
        .encode();
        for bucket in 0..self.buckets {
            let key = self.key(bucket);
            for _ in 0..ATTEMPTS {
                let (bytes, cas) = match self.data.get(&key) {
                    Ok(Some(current)) => current,
                    Ok(None) => {
                        let _ = self.data.set(&key, &empty, None);
                        break;
                    }
                    Err(_) => break,
                };
                let mut current = Bucket::decode(&bytes);
                if !current.widen(self.max_age_seconds) {
                    break;
                }
                match self.data.set(&key, &current.encode(), Some(cas)) {
                    Err(Status::CasMismatch) => continue,
                    _ => break,
                }
            }
        }
    }

    /// Reads and updates the shared [`WindowRecord`]; the earliest `iat` to accept. If the
    /// record cannot be read or written, only signatures made from now on (fail closed: a
    /// request signed just before is refused once, as expired).
    fn agree_window(&self, max_age_seconds: u64, now: u64) -> u64 {
        let key = self.window_key();
        for _ in 0..ATTEMPTS {
            let Ok(current) = self.data.get(&key) else {
                return now;
            };
            let stored = current
                .as_ref()
                .and_then(|(bytes, _)| WindowRecord::decode(bytes));
            let record = WindowRecord::configure(stored, max_age_seconds, now);
            // Never later than now: a record claiming more is not Tether's.
            let since = record.remembers_since.min(now);
            if stored == Some(record) {
                return since;
            }
            match self
                .data
                .set(&key, &record.encode(), current.map(|(_, cas)| cas))
            {
                Ok(()) => return since,
                Err(Status::CasMismatch) => continue,
                Err(_) => return now,
            }
        }
        now
    }
}

impl<S: SharedData> ReplayStore for &SharedReplay<S> {
    fn first_use(&mut self, id: &[u8; 32], iat: u64, now: u64) -> Result<(), Reason> {
        let key = self.key(bucket_of(id, self.buckets));
        for _ in 0..ATTEMPTS {
            // Every bucket was created at configure time; one missing now was never created
            // (a host that dropped it): fail closed rather than write without a token.
            let Some((bytes, cas)) = self.data.get(&key).map_err(|_| Reason::ReplayStoreFull)?
            else {
                return Err(Reason::ReplayStoreFull);
            };
            let mut bucket = Bucket::decode(&bytes);
            bucket.record(id, iat, now, self.max_age_seconds)?;
            match self.data.set(&key, &bucket.encode(), Some(cas)) {
                Ok(()) => return Ok(()),
                Err(Status::CasMismatch) => continue,
                Err(_) => return Err(Reason::ReplayStoreFull),
            }
        }
        Err(Reason::ReplayStoreFull)
    }

    fn remembers_since(&self) -> u64 {
        self.remembers_since
    }
}

/// A replay record over in-memory shared data, for tests: `buckets` buckets.
#[cfg(test)]
pub fn in_memory(buckets: usize) -> SharedReplay<crate::shared::Memory> {
    SharedReplay::with_buckets(
        crate::shared::Memory::default(),
        "test".into(),
        buckets,
        60,
        || 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> [u8; 32] {
        let mut id = [0u8; 32];
        id[4..8].copy_from_slice(&i.to_be_bytes());
        id
    }

    #[test]
    fn second_use_within_the_window_is_a_replay() {
        let record = in_memory(8);
        let mut store = &record;
        assert_eq!(store.first_use(&id(1), 100, 110), Ok(()));
        assert_eq!(
            store.first_use(&id(1), 100, 160),
            Err(Reason::RequestSignatureReplayed)
        );
        assert_eq!(store.first_use(&id(2), 100, 160), Ok(()));
    }

    /// An entry is kept while `iat` is within the window: `iat + max_age >= now`, the same
    /// test that accepts a signature.
    #[test]
    fn entries_expire_with_the_window() {
        let mut bucket = Bucket::default();
        bucket.record(&id(1), 10, 10, 60).unwrap();
        bucket.record(&id(2), 100, 100, 60).unwrap();
        bucket.record(&id(3), 150, 150, 60).unwrap();
        assert_eq!(bucket.len(), 2, "iat 10 is outside the window at 150");
        bucket.record(&id(4), 160, 160, 60).unwrap();
        assert_eq!(bucket.len(), 3, "iat 100 is inside it at 160");
    }

    #[test]
    fn full_bucket_fails_closed_until_entries_expire() {
        let mut bucket = Bucket::default();
        for i in 0..BUCKET_ENTRIES as u32 {
            bucket.record(&id(i), 0, 0, 100).unwrap();
        }
        assert_eq!(
            bucket.record(&id(9999), 0, 0, 100),
            Err(Reason::ReplayStoreFull)
        );
        assert_eq!(bucket.record(&id(9999), 101, 101, 100), Ok(()));
    }

    #[test]
    fn buckets_round_trip_through_bytes() {
        let mut bucket = Bucket::default();
        bucket.record(&id(1), 100, 0, 60).unwrap();
        bucket.record(&id(2), u64::MAX, 0, 60).unwrap();
        let decoded = Bucket::decode(&bucket.encode());
        assert_eq!(decoded, bucket);
        assert_eq!(Bucket::decode(&[1, 2, 3]), Bucket::default());
    }

    #[test]
    fn widening_the_window_remembers_since_the_old_window() {
        let first = WindowRecord::configure(None, 60, 1_000);
        assert_eq!(first.remembers_since, 0);
        // The same window again (another VM, a restart): unchanged.
        assert_eq!(WindowRecord::configure(Some(first), 60, 1_500), first);
        // Wider at 2000: signatures from before 1940 may have been forgotten.
        let wide = WindowRecord::configure(Some(first), 600, 2_000);
        assert_eq!(wide.remembers_since, 1_940);
        // Narrower again: the record keeps the wider window (its VMs may still serve).
        let narrow = WindowRecord::configure(Some(wide), 300, 2_100);
        assert_eq!(narrow, wide);
        let wider = WindowRecord::configure(Some(narrow), 900, 3_000);
        assert_eq!(wider.remembers_since, 2_400);
        assert_eq!(WindowRecord::decode(&wider.encode()), Some(wider));
        assert_eq!(WindowRecord::decode(&[1, 2, 3]), None);
    }

    /// Issue 7, finding 8: every bucket exists once a VM is configured, and configuring
    /// another VM later never empties one.
    #[test]
    fn buckets_are_created_at_configure_and_never_emptied_by_a_later_vm() {
        let data = crate::shared::Memory::default();
        let first = SharedReplay::with_buckets(&data, "ns".into(), 4, 60, || 1_000);
        assert_eq!(data.keys(), 4 + 1, "four buckets and the window record");
        assert_eq!((&first).first_use(&id(1), 1_000, 1_000), Ok(()));
        let _second = SharedReplay::with_buckets(&data, "ns".into(), 4, 60, || 1_001);
        assert_eq!(
            (&first).first_use(&id(1), 1_000, 1_001),
            Err(Reason::RequestSignatureReplayed)
        );
    }

    /// Two workers record the same signature at once: the second write finds the bucket
    /// changed (compare-and-swap), reads it again, and sees the signature.
    #[test]
    fn a_signature_raced_by_two_vms_is_accepted_once() {
        let data = crate::shared::Memory::default();
        let ours = SharedReplay::with_buckets(&data, "ns".into(), 1, 60, || 0);
        // Between our read of the bucket and our write, another VM records the signature.
        let mut raced = false;
        *data.before_set.borrow_mut() = Some(Box::new(move |memory, key| {
            if key == "ns.replay.0" && !raced {
                raced = true;
                let (bytes, _) = memory.get(key).unwrap().unwrap();
                let mut bucket = Bucket::decode(&bytes);
                bucket.record(&id(7), 0, 0, 60).unwrap();
                memory.put(key, &bucket.encode());
            }
        }));
        assert_eq!(
            (&ours).first_use(&id(7), 0, 0),
            Err(Reason::RequestSignatureReplayed)
        );
    }

    #[test]
    fn a_missing_bucket_or_endless_contention_fails_closed() {
        let data = crate::shared::Memory::default();
        let record = SharedReplay::with_buckets(&data, "ns".into(), 1, 60, || 0);
        // Contention on every write: another VM always writes first.
        *data.before_set.borrow_mut() = Some(Box::new(|memory, key| {
            if key == "ns.replay.0" {
                memory.put(key, &[]);
            }
        }));
        assert_eq!(
            (&record).first_use(&id(1), 100, 0),
            Err(Reason::ReplayStoreFull)
        );
        // A bucket that does not exist is never written without a token.
        let empty = crate::shared::Memory::default();
        let never_created = SharedReplay {
            data: &empty,
            namespace: "ns".into(),
            buckets: 1,
            remembers_since: 0,
            max_age_seconds: 60,
        };
        assert_eq!(
            (&never_created).first_use(&id(1), 100, 0),
            Err(Reason::ReplayStoreFull)
        );
        assert_eq!(empty.keys(), 0);
    }

    /// The window widens between two configurations: the record remembers since when.
    #[test]
    fn vms_agree_on_the_window_through_the_shared_record() {
        let data = crate::shared::Memory::default();
        let old = SharedReplay::with_buckets(&data, "ns".into(), 1, 60, || 1_000);
        assert_eq!((&old).remembers_since(), 0);
        let wide = SharedReplay::with_buckets(&data, "ns".into(), 1, 600, || 2_000);
        assert_eq!((&wide).remembers_since(), 1_940);
        // Another VM of the new configuration, a moment later: the same answer.
        let other = SharedReplay::with_buckets(&data, "ns".into(), 1, 600, || 2_001);
        assert_eq!((&other).remembers_since(), 1_940);
    }

    /// Review of issue 9: a configuration that widens the window keeps alive the entries
    /// recorded under the narrower one. Before, each entry's expiry was fixed when it was
    /// written, and a proof used at 1010 under a 60-second window was accepted again at 1100
    /// under a 300-second one.
    #[test]
    fn widening_the_window_keeps_the_entries_recorded_under_the_old_one() {
        let data = crate::shared::Memory::default();
        let old = SharedReplay::with_buckets(&data, "ns".into(), 1, 60, || 1_000);
        assert_eq!((&old).first_use(&id(1), 1_000, 1_010), Ok(()));
        let wide = SharedReplay::with_buckets(&data, "ns".into(), 1, 300, || 1_040);
        // The used proof, well inside the new window: still remembered, by both.
        assert_eq!(
            (&wide).first_use(&id(1), 1_000, 1_100),
            Err(Reason::RequestSignatureReplayed)
        );
        // A VM of the old configuration, still serving, writes with the wider window too.
        assert_eq!((&old).first_use(&id(2), 1_100, 1_100), Ok(()));
        assert_eq!(
            (&wide).first_use(&id(1), 1_000, 1_200),
            Err(Reason::RequestSignatureReplayed)
        );
        // And a narrower configuration later does not narrow the record.
        let narrow = SharedReplay::with_buckets(&data, "ns".into(), 1, 30, || 1_250);
        assert_eq!(
            (&narrow).first_use(&id(1), 1_000, 1_260),
            Err(Reason::RequestSignatureReplayed)
        );
    }

    /// A VM of the older configuration reads a bucket, the widening VM's walk widens it, then
    /// the older VM writes: its compare-and-swap fails, it reads the bucket again, and keeps
    /// the wider window instead of writing its own back over it.
    #[test]
    fn a_write_racing_the_widening_walk_keeps_the_wider_window() {
        let data = crate::shared::Memory::default();
        let old = SharedReplay::with_buckets(&data, "ns".into(), 1, 60, || 1_000);
        assert_eq!((&old).first_use(&id(1), 1_000, 1_010), Ok(()));
        let mut walked = false;
        *data.before_set.borrow_mut() = Some(Box::new(move |memory, key| {
            if key == "ns.replay.0" && !walked {
                walked = true;
                let (bytes, _) = memory.get(key).unwrap().unwrap();
                let mut bucket = Bucket::decode(&bytes);
                assert!(bucket.widen(300));
                memory.put(key, &bucket.encode());
            }
        }));
        assert_eq!((&old).first_use(&id(2), 1_020, 1_020), Ok(()));
        *data.before_set.borrow_mut() = None;
        let (bytes, _) = data.get("ns.replay.0").unwrap().unwrap();
        assert_eq!(Bucket::decode(&bytes).window(), 300);
        // Later writes by the older VM keep what the wider window still accepts.
        assert_eq!((&old).first_use(&id(3), 1_100, 1_100), Ok(()));
        let wide = SharedReplay::with_buckets(&data, "ns".into(), 1, 300, || 1_030);
        assert_eq!(
            (&wide).first_use(&id(1), 1_000, 1_110),
            Err(Reason::RequestSignatureReplayed)
        );
    }

    /// What another plugin can write in a bucket's window is bounded: entries are kept no
    /// longer than the widest window a configuration can set.
    #[test]
    fn a_bucket_window_is_bounded() {
        let mut bytes = u64::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7u8; ENTRY_BYTES]);
        let mut bucket = Bucket::decode(&bytes);
        assert_eq!(bucket.window(), MAX_WINDOW_SECONDS);
        bucket
            .record(&id(1), 0, MAX_WINDOW_SECONDS + 1, 60)
            .unwrap();
        assert_eq!(
            bucket.len(),
            2,
            "the stranger's entry (iat 0x0707..) stays; it is in the future"
        );
        // A bucket in the format before windows: no window, entries kept.
        let old = Bucket::decode(&[9u8; ENTRY_BYTES * 2]);
        assert_eq!((old.window(), old.len()), (0, 2));
    }

    #[test]
    fn bucket_index_is_in_range() {
        for i in 0..100 {
            assert!(bucket_of(&[i as u8; 32], 7) < 7);
        }
        assert_eq!(bucket_of(&[9; 32], 0), 0);
    }
}
