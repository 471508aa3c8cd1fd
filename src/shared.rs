//! Proxy-wasm shared data, as the core sees it: a key-value store shared by all of an
//! Envoy's worker VMs (of one `vm_id`), with compare-and-swap. The glue implements it with
//! Envoy's host calls; tests use `Memory`, which behaves as Envoy does.
//!
//! Envoy's semantics, which the callers rely on (proxy-wasm-cpp-host `SharedData::set`): every
//! value carries a token that changes on each write; a write with a token succeeds only if the
//! key's token is still that one; and a write to a key that does not exist always succeeds,
//! whatever token it carries. There is no atomic "create if absent".

use crate::abi::Status;

/// Shared data of one `vm_id`.
pub trait SharedData {
    /// The value of `key` and its compare-and-swap token; `None` if the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, Status>;

    /// Writes `value` if `key`'s token is still `cas` (`None`: unconditionally).
    /// `Err(Status::CasMismatch)` if another VM wrote it first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
}

impl<T: SharedData + ?Sized> SharedData for &T {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        (**self).set(key, value, cas)
    }
}

/// Runs before each write to [`Memory`]: another VM writing in between a read and a write.
#[cfg(test)]
pub type Interleave = Box<dyn FnMut(&Memory, &str)>;

/// An in-memory [`SharedData`] with Envoy's semantics, for tests. `before_set` runs before
/// each write, so that a test can play another VM writing in between a read and a write.
#[cfg(test)]
#[derive(Default)]
pub struct Memory {
    values: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next_cas: std::cell::Cell<u32>,
    pub before_set: std::cell::RefCell<Option<Interleave>>,
    /// Writes made (successful or not).
    pub writes: std::cell::Cell<usize>,
}

#[cfg(test)]
impl Memory {
    /// Writes `value` as another VM would (unconditionally).
    pub fn put(&self, key: &str, value: &[u8]) {
        let cas = self.next_cas.get() + 1;
        self.next_cas.set(cas);
        self.values
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), cas));
    }

    pub fn keys(&self) -> usize {
        self.values.borrow().len()
    }
}

#[cfg(test)]
impl SharedData for Memory {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
        Ok(self.values.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.writes.set(self.writes.get() + 1);
        let hook = self.before_set.borrow_mut().take();
        if let Some(mut hook) = hook {
            hook(self, key);
            *self.before_set.borrow_mut() = Some(hook);
        }
        let current = self.values.borrow().get(key).map(|(_, cas)| *cas);
        match (current, cas) {
            (Some(current), Some(cas)) if current != cas => Err(Status::CasMismatch),
            _ => {
                self.put(key, value);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_behaves_as_envoy_does() {
        let data = Memory::default();
        assert_eq!(data.get("k"), Ok(None));
        // A missing key: any token creates it.
        assert_eq!(data.set("k", b"a", Some(42)), Ok(()));
        let (value, cas) = data.get("k").unwrap().unwrap();
        assert_eq!(value, b"a");
        assert_eq!(data.set("k", b"b", Some(cas + 1)), Err(Status::CasMismatch));
        assert_eq!(data.set("k", b"b", Some(cas)), Ok(()));
        assert_eq!(data.set("k", b"c", Some(cas)), Err(Status::CasMismatch));
        assert_eq!(data.set("k", b"c", None), Ok(()));
        assert_eq!(data.get("k").unwrap().unwrap().0, b"c");
    }
}
