//! Every call Tether makes into the host, in one place, and none of them can panic.
//!
//! The proxy-wasm SDK's `hostcalls` panic on any status they do not expect, and a panic traps
//! the VM: every later request on that worker then fails. That is how a key server that reset
//! its connection took down every worker that fetched from it (issue 7, finding 3): the SDK
//! read `:status` from a response that did not exist. Here each call returns the host's
//! status as a value ([`Status`]); the caller turns a failure into a refusal or a no-op.
//!
//! The one SDK call left is `dispatch_http_call` (in `keysets`): it registers the call with
//! the SDK's dispatcher, which routes the answer back; it panics only on statuses Envoy does
//! not return for a call it could not make (`BadArgument` and `InternalFailure` are values).

use std::ptr::{null, null_mut};

use crate::abi::{decode_pairs, encode_pairs, encode_path, Pairs, Status};
use crate::shared::SharedData;

/// The proxy-wasm ABI's map types (`MapType`).
#[derive(Clone, Copy)]
pub enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

/// The proxy-wasm ABI's buffer types (`BufferType`).
#[derive(Clone, Copy)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// The proxy-wasm ABI's log levels.
#[derive(Clone, Copy)]
pub enum Level {
    Info = 2,
    Warn = 3,
    Critical = 5,
}

#[allow(unsafe_code)]
mod ffi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    }
}

fn status(code: u32) -> Result<(), Status> {
    match Status::from_code(code) {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// Takes ownership of bytes the host wrote into VM memory. The host allocates them with the
/// SDK's `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), so they are
/// returned to Rust's allocator as a `Vec` of that length and capacity, as the SDK does.
#[allow(unsafe_code)]
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: `data` was allocated by `proxy_on_memory_allocate(size)` for this call and is
    // owned by nobody else.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Logs `message`; a failure to log is ignored (logging must never fail a request).
#[allow(unsafe_code)]
pub fn log(level: Level, message: &str) {
    // SAFETY: the pointer and length describe `message`, alive for the call.
    let _ = unsafe { ffi::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host's clock, in nanoseconds since the Unix epoch.
#[allow(unsafe_code)]
pub fn now_nanos() -> Result<u64, Status> {
    let mut nanos = 0u64;
    // SAFETY: a valid pointer to a u64.
    status(unsafe { ffi::proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

#[allow(unsafe_code)]
pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { ffi::proxy_set_tick_period_milliseconds(period) })
}

/// Up to `max` bytes of a buffer from `start`; `None` if the host has no such buffer now.
#[allow(unsafe_code)]
pub fn buffer(kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the host fills them with memory it allocated in the VM.
    let code =
        unsafe { ffi::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    match Status::from_code(code) {
        Status::Ok => Ok(owned(data, size)),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Every pair of a header map, raw bytes, in order (repeated names kept).
#[allow(unsafe_code)]
pub fn header_pairs(map: Map) -> Result<Pairs, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the host fills them with memory it allocated in the VM.
    status(unsafe { ffi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    match owned(data, size) {
        None => Ok(Vec::new()),
        Some(bytes) => decode_pairs(&bytes).ok_or(Status::Other(u32::MAX)),
    }
}

/// One header's value; `None` if absent.
#[allow(unsafe_code)]
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the key pointer and length describe `name`; valid out-pointers.
    let code = unsafe {
        ffi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match Status::from_code(code) {
        Status::Ok => Ok(owned(data, size)),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Sets a header (replacing every value it had).
#[allow(unsafe_code)]
pub fn set_header(map: Map, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe `name` and `value`.
    status(unsafe {
        ffi::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a header (or trailer).
#[allow(unsafe_code)]
pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: the pointer and length describe `name`.
    status(unsafe { ffi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A host property (`["connection", "sha256_peer_certificate_digest"]`); `None` if absent.
#[allow(unsafe_code)]
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = encode_path(path);
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the path pointer and length describe `path`; valid out-pointers.
    let code = unsafe { ffi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match Status::from_code(code) {
        Status::Ok => Ok(owned(data, size)),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Sets a property of the stream (Envoy keeps it as filter state `wasm.<path>`, which its
/// access log reads).
#[allow(unsafe_code)]
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = encode_path(path);
    // SAFETY: pointers and lengths describe `path` and `value`.
    status(unsafe {
        ffi::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
    })
}

/// A shared-data value and its compare-and-swap token; `(None, None)` if the key is absent.
#[allow(unsafe_code)]
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: the key pointer and length describe `key`; valid out-pointers.
    let code = unsafe {
        ffi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    match Status::from_code(code) {
        // An existing key with an empty value comes back as a null pointer.
        Status::Ok => Ok((
            Some(owned(data, size).unwrap_or_default()),
            (cas != 0).then_some(cas),
        )),
        Status::NotFound => Ok((None, None)),
        other => Err(other),
    }
}

/// Writes a shared-data value if the key's token is still `cas` (`None`: unconditionally).
/// `Err(Status::CasMismatch)` if another VM wrote it first.
#[allow(unsafe_code)]
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe `key` and `value`.
    status(unsafe {
        ffi::proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Resumes the current request, held by an earlier callback.
#[allow(unsafe_code)]
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers. 0 is the ABI's `StreamType::HttpRequest`.
    status(unsafe { ffi::proxy_continue_stream(0) })
}

/// Answers the current request locally with `status_code`, `headers` and `body`.
#[allow(unsafe_code)]
pub fn send_response(
    status_code: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<(), Status> {
    let headers = encode_pairs(headers);
    // SAFETY: pointers and lengths describe `body` and the serialized `headers`; no details.
    status(unsafe {
        ffi::proxy_send_local_response(
            u32::from(status_code),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Makes `context_id` the current context (the root context acting on a held request).
#[allow(unsafe_code)]
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { ffi::proxy_set_effective_context(context_id) })
}

/// Calls one of the host's foreign functions; `None` if it returned nothing.
#[allow(unsafe_code)]
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: pointers and lengths describe `name` and `arguments`; valid out-pointers.
    status(unsafe {
        ffi::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    })?;
    Ok(owned(data, size))
}

/// Defines a counter; its id.
#[allow(unsafe_code)]
pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: the pointer and length describe `name`; a valid out-pointer. 0 is `Counter`.
    status(unsafe { ffi::proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

#[allow(unsafe_code)]
pub fn increment_counter(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { ffi::proxy_increment_metric(id, by) })
}

/// Envoy's shared data, for the core's [`SharedData`] users (replay record, key sets).
#[derive(Clone, Copy, Default)]
pub struct EnvoySharedData;

impl SharedData for EnvoySharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
        match shared_data(key)? {
            (Some(value), Some(cas)) => Ok(Some((value, cas))),
            // An existing key always has a token; without one there is nothing to swap.
            (Some(value), None) => Ok(Some((value, 0))),
            (None, _) => Ok(None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        set_shared_data(key, value, cas)
    }
}
