//! Scratch directories for certificates, Envoy configs and logs.
//!
//! Integration tests put them under Cargo's `target/tmp` (`CARGO_TARGET_TMPDIR`) rather than
//! `/tmp`, so leftovers are removed by `cargo clean`. Leftovers are expected: the fixtures and
//! the Envoy shared by all tests of a binary live in `static`s, which are never dropped. Each
//! directory name carries the owning process id, and there (never in a shared `/tmp`) the
//! directories of processes that have gone are swept when the next process makes its first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Set this environment variable to keep scratch directories for debugging.
pub const KEEP_ENV: &str = "TETHER_KEEP_SCRATCH";

const PREFIX: &str = "tether-scratch-";

/// A directory removed on drop (unless `TETHER_KEEP_SCRATCH` is set).
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Makes a new, empty directory whose name includes `label`.
    pub fn new(label: &str) -> ScratchDir {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        static SWEEP: Once = Once::new();
        let root = root();
        if let Some(target_tmp) = option_env!("CARGO_TARGET_TMPDIR") {
            SWEEP.call_once(|| sweep_stale(Path::new(target_tmp)));
        }
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{PREFIX}{}-{sequence}-{label}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn root() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Removes the scratch directories of processes that no longer exist.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::env::var_os(KEEP_ENV).is_none() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
