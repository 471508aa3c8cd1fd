//! The replay store in proxy-wasm shared data: one record for all of this Envoy's worker
//! VMs. Buckets are separate shared-data keys, updated with compare-and-swap so that two
//! workers seeing the same signature at once cannot both accept it.

use super::hostcalls;
use crate::abi::Status;
use crate::reject::Reason;
use crate::replay::{bucket_of, Bucket, ReplayStore, WindowRecord};

/// Buckets of [`crate::replay::BUCKET_ENTRIES`] entries each: 524288 live signatures. With
/// the default 60-second window, about 6000 signed requests per second keep fewer than 1% of
/// buckets full (a bucket fills before the average does). Each live entry takes 24 bytes of
/// shared memory, 12 MiB when all are full.
pub const BUCKETS: usize = 8192;
/// Compare-and-swap attempts before giving up (fail closed).
const ATTEMPTS: usize = 8;

/// The replay record under one namespace.
pub struct SharedReplayStore {
    namespace: String,
    /// The earliest `iat` the record is sure to remember (see [`WindowRecord`]).
    remembers_since: u64,
}

impl SharedReplayStore {
    /// The record under `namespace`, set up for a configuration with `max_age_seconds` at
    /// `now`: every bucket created, and the window agreed with the other VMs.
    pub fn configure(namespace: String, max_age_seconds: u64, now: u64) -> Self {
        let mut store = SharedReplayStore {
            namespace,
            remembers_since: 0,
        };
        store.create_buckets();
        store.remembers_since = store.agree_window(max_age_seconds, now);
        store
    }

    /// Reads and updates the shared [`WindowRecord`]; the earliest `iat` to accept. If the
    /// record cannot be read or written, only signatures made from now on (fail closed: a
    /// request signed just before is refused once, as expired).
    fn agree_window(&self, max_age_seconds: u64, now: u64) -> u64 {
        let key = format!("{}.replay.window", self.namespace);
        for _ in 0..ATTEMPTS {
            let Ok((bytes, cas)) = hostcalls::shared_data(&key) else {
                return now;
            };
            let stored = bytes.as_deref().and_then(WindowRecord::decode);
            let record = WindowRecord::configure(stored, max_age_seconds, now);
            // Never later than now: a record claiming more is not Tether's.
            let since = record.remembers_since.min(now);
            if stored == Some(record) {
                return since;
            }
            match hostcalls::set_shared_data(&key, &record.encode(), cas) {
                Ok(()) => return since,
                Err(Status::CasMismatch) => continue,
                Err(_) => return now,
            }
        }
        now
    }

    fn key(&self, bucket: usize) -> String {
        format!("{}.replay.{bucket}", self.namespace)
    }

    /// Creates every bucket that does not exist yet, empty.
    ///
    /// Envoy's shared data has no atomic "create if absent": a write to a missing key
    /// succeeds whatever compare-and-swap token it carries. When the first write to a bucket
    /// also recorded a signature, two workers seeing the same fresh signature at once could
    /// both create the bucket, and both accept it (issue 7, finding 8). Created here, at
    /// configure time, every later write is a compare-and-swap on an existing key.
    ///
    /// Every VM walks every bucket (a few milliseconds at configure): a marker saying "done"
    /// could be written by another plugin to stop the walk.
    fn create_buckets(&self) {
        for bucket in 0..BUCKETS {
            let key = self.key(bucket);
            if let Ok((None, _)) = hostcalls::shared_data(&key) {
                let _ = hostcalls::set_shared_data(&key, &[], None);
            }
        }
    }
}

impl ReplayStore for &SharedReplayStore {
    fn remembers_since(&self) -> u64 {
        self.remembers_since
    }

    fn first_use(&mut self, id: &[u8; 32], expires_at: u64, now: u64) -> Result<(), Reason> {
        let key = self.key(bucket_of(id, BUCKETS));
        for _ in 0..ATTEMPTS {
            let (bytes, cas) = hostcalls::shared_data(&key).map_err(|_| Reason::ReplayStoreFull)?;
            // Every bucket was created at configure time; one missing now was never created
            // (a host that dropped it): fail closed rather than write without a token.
            let (Some(bytes), Some(cas)) = (bytes, cas) else {
                return Err(Reason::ReplayStoreFull);
            };
            let mut bucket = Bucket::decode(&bytes);
            bucket.record(id, expires_at, now)?;
            match hostcalls::set_shared_data(&key, &bucket.encode(), Some(cas)) {
                Ok(()) => return Ok(()),
                Err(Status::CasMismatch) => continue,
                Err(_) => return Err(Reason::ReplayStoreFull),
            }
        }
        Err(Reason::ReplayStoreFull)
    }
}
