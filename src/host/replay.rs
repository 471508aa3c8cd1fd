//! The replay store in proxy-wasm shared data: one record for all of this Envoy's worker
//! VMs. Buckets are separate shared-data keys, updated with compare-and-swap so that two
//! workers seeing the same signature at once cannot both accept it.

use super::hostcalls;
use crate::abi::Status;
use crate::reject::Reason;
use crate::replay::{bucket_of, Bucket, ReplayStore};

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
}

impl SharedReplayStore {
    pub fn new(namespace: String) -> Self {
        SharedReplayStore { namespace }
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
    /// A marker key, written once all buckets exist, spares later VMs the walk.
    pub fn create_buckets(&self) {
        let marker = format!("{}.replay.created", self.namespace);
        if let Ok((Some(_), _)) = hostcalls::shared_data(&marker) {
            return;
        }
        for bucket in 0..BUCKETS {
            let key = self.key(bucket);
            if let Ok((None, _)) = hostcalls::shared_data(&key) {
                let _ = hostcalls::set_shared_data(&key, &[], None);
            }
        }
        let _ = hostcalls::set_shared_data(&marker, b"1", None);
    }
}

impl ReplayStore for &SharedReplayStore {
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
