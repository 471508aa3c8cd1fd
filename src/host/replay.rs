//! The replay store in proxy-wasm shared data: one record for all of this Envoy's worker
//! VMs. Buckets are separate shared-data keys, updated with compare-and-swap so that two
//! workers seeing the same signature at once cannot both accept it.

use proxy_wasm::hostcalls;

use crate::reject::Reason;
use crate::replay::{bucket_of, Bucket, ReplayStore};

/// Buckets of [`crate::replay::BUCKET_ENTRIES`] entries each: 524288 live signatures. With
/// the default 60-second window, about 6000 signed requests per second keep fewer than 1% of
/// buckets full (a bucket fills before the average does). Each live entry takes 24 bytes of
/// shared memory, 12 MiB when all are full.
pub const BUCKETS: usize = 8192;
/// Compare-and-swap attempts before giving up (fail closed).
const ATTEMPTS: usize = 8;

pub struct SharedReplayStore;

impl ReplayStore for SharedReplayStore {
    fn first_use(&mut self, id: &[u8; 32], expires_at: u64, now: u64) -> Result<(), Reason> {
        let key = format!("tether.replay.{}", bucket_of(id, BUCKETS));
        for _ in 0..ATTEMPTS {
            let (bytes, cas) =
                hostcalls::get_shared_data(&key).map_err(|_| Reason::ReplayStoreFull)?;
            let mut bucket = Bucket::decode(bytes.as_deref().unwrap_or_default());
            bucket.record(id, expires_at, now)?;
            // A missing key has no CAS: the first writer creates it.
            match hostcalls::set_shared_data(&key, Some(&bucket.encode()), cas) {
                Ok(()) => return Ok(()),
                Err(proxy_wasm::types::Status::CasMismatch) => continue,
                Err(_) => return Err(Reason::ReplayStoreFull),
            }
        }
        Err(Reason::ReplayStoreFull)
    }
}
