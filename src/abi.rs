//! The byte formats of the proxy-wasm ABI (0.2.1) that cross the VM boundary: header maps and
//! property paths. Pure and host-tested; `host::hostcalls` moves the bytes.
//!
//! A header map is `u32 count`, then `count` pairs of `u32 name length, u32 value length`,
//! then each name and value followed by a NUL byte; all integers little-endian.

/// The status codes a host call returns (proxy-wasm ABI `WasmResult`). The host may return
/// any `u32`: codes this version does not know are kept as [`Status::Other`], never trusted
/// to be one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    BadArgument,
    CasMismatch,
    /// Any other code (`InternalFailure`, `BrokenConnection`, `Unimplemented`, ...).
    Other(u32),
}

impl Status {
    pub fn from_code(code: u32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            8 => Status::CasMismatch,
            other => Status::Other(other),
        }
    }
}

/// A header map's pairs as raw bytes: names are ASCII in practice, values may be anything
/// but NUL, CR and LF.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a serialized header map. `None` if the bytes are not a well-formed map (a count
/// or a length running past the end, a missing NUL): the caller treats that as a failed
/// host call, never as an empty map that could be mistaken for "no such header".
pub fn decode_pairs(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let count = word(0)?;
    // Each pair takes at least 10 bytes (two lengths and two NULs): a count the bytes cannot
    // hold is malformed, and must not size an allocation.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut take = |len: usize| -> Option<Vec<u8>> {
        let end = at.checked_add(len)?;
        let field = bytes.get(at..end)?.to_vec();
        if bytes.get(end) != Some(&0) {
            return None;
        }
        at = end + 1;
        Some(field)
    };
    let mut pairs = Vec::with_capacity(count);
    for (name_len, value_len) in sizes {
        let name = take(name_len)?;
        let value = take(value_len)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Serializes header pairs in the same format.
pub fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// A property path (`["connection", "sha256_peer_certificate_digest"]`): its parts joined by
/// NUL bytes.
pub fn encode_path(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs: [(&str, &[u8]); 3] = [
            (":path", b"/orders"),
            ("authorization", b"Bearer x"),
            ("x-empty", b""),
        ];
        let decoded = decode_pairs(&encode_pairs(&pairs)).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(
            decoded[1],
            (b"authorization".to_vec(), b"Bearer x".to_vec())
        );
        assert_eq!(decoded[2], (b"x-empty".to_vec(), Vec::new()));
    }

    #[test]
    fn empty_bytes_are_an_empty_map() {
        assert_eq!(decode_pairs(&[]), Some(Vec::new()));
        assert_eq!(decode_pairs(&encode_pairs(&[])), Some(Vec::new()));
    }

    #[test]
    fn truncated_or_lying_maps_are_malformed_not_a_panic() {
        let good = encode_pairs(&[("a", b"b".as_slice())]);
        for cut in 1..good.len() {
            assert_eq!(decode_pairs(&good[..cut]), None, "cut at {cut}");
        }
        // A count of four billion pairs in 4 bytes.
        assert_eq!(decode_pairs(&u32::MAX.to_le_bytes()), None);
        // A value length running past the end.
        let mut lying = good.clone();
        lying[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode_pairs(&lying), None);
        // A missing NUL terminator.
        let mut unterminated = good;
        let last = unterminated.len() - 1;
        unterminated[last] = b'x';
        assert_eq!(decode_pairs(&unterminated), None);
    }

    #[test]
    fn unknown_status_codes_are_kept_apart() {
        assert_eq!(Status::from_code(0), Status::Ok);
        assert_eq!(Status::from_code(8), Status::CasMismatch);
        assert_eq!(Status::from_code(6), Status::Other(6));
        assert_eq!(Status::from_code(u32::MAX), Status::Other(u32::MAX));
    }

    #[test]
    fn property_paths_are_nul_joined() {
        assert_eq!(
            encode_path(&["connection", "sha256_peer_certificate_digest"]),
            b"connection\0sha256_peer_certificate_digest".to_vec()
        );
        assert_eq!(encode_path(&["plugin_root_id"]), b"plugin_root_id".to_vec());
    }
}
