//! proxy-wasm's wire format for header maps (as the host hands them over) and
//! property paths. Pure, so that it is tested on the host: the SDK's own
//! decoder slices without bounds checks and unwraps UTF-8 names, and a panic in
//! the VM fails live traffic.
//!
//! A map is `count: u32`, then `count` × (`name_len: u32`, `value_len: u32`), then
//! each name and value followed by a NUL; integers little-endian.

use crate::routing::Header;

/// Decodes a map the host wrote; `None` when it is malformed (never a panic).
/// Names that are not UTF-8 (Envoy never sends them) are decoded lossily.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<Header>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8)? as usize;
        let value_len = read_u32(bytes, 8 + i * 8)? as usize;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len + 1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len + 1)?;
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    // Each name and value ends with its NUL.
    (data <= bytes.len()).then_some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// Encodes a property path (`["request", "time"]`): segments joined by NUL.
pub fn encode_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `pairs` as the host does (the filter itself only decodes maps).
    fn encode_pairs<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Vec<u8> {
        let size = 4 + pairs
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().len() + 10)
            .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&len32(pairs.len()).to_le_bytes());
        for (name, value) in pairs {
            bytes.extend_from_slice(&len32(name.len()).to_le_bytes());
            bytes.extend_from_slice(&len32(value.as_ref().len()).to_le_bytes());
        }
        for (name, value) in pairs {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value.as_ref());
            bytes.push(0);
        }
        bytes
    }

    fn len32(n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    #[test]
    fn maps_round_trip_and_malformed_ones_are_refused() {
        let pairs: [(&str, &[u8]); 3] =
            [(":status", b"200"), ("x-odd", b"\xff\xfe"), ("empty", b"")];
        let bytes = encode_pairs(&pairs);
        let decoded = decode_pairs(&bytes).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[1], ("x-odd".to_string(), b"\xff\xfe".to_vec()));
        assert_eq!(decode_pairs(&[]), Some(Vec::new()));
        // Every truncation, an absurd count and absurd lengths: refused, no panic.
        for cut in 1..bytes.len() {
            assert_eq!(decode_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_pairs(&u32::MAX.to_le_bytes()), None);
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge), None);
        // A name that is not UTF-8 is kept, lossily.
        let odd_name = encode_pairs(&[("\u{fffd}", b"v".as_slice())]);
        let mut raw = odd_name.clone();
        let at = raw.len() - 6;
        raw[at..at + 3].copy_from_slice(b"\xff\xfe\xfd");
        assert!(decode_pairs(&raw).is_some());
        assert_eq!(encode_path(&["request", "time"]), b"request\0time");
        assert_eq!(encode_path(&[]), b"");
    }
}
