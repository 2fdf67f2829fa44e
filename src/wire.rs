//! proxy-wasm's wire format for header maps (as the host hands them over) and
//! property paths. Pure, so that it is tested on the host: every read is
//! bounds-checked, since a panic in the VM fails live traffic.
//!
//! A map is `count: u32`, then `count` × (`name_len: u32`, `value_len: u32`), then
//! each name and value followed by a NUL; integers little-endian.

/// A header map as the host wrote it, checked once and then read in place: no
/// allocation per header (a request's map is read on every request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// Empty, or a well-formed map (checked by `decode`).
    bytes: Vec<u8>,
}

impl HeaderMap {
    /// Takes a map the host wrote; `None` when it is malformed (never a panic).
    pub fn decode(bytes: Vec<u8>) -> Option<HeaderMap> {
        let map = HeaderMap { bytes };
        let mut pairs = map.iter();
        for _ in pairs.by_ref() {}
        pairs.well_formed().then_some(map)
    }

    /// Encodes `pairs` as the host does (for tests and the in-memory host).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap {
        HeaderMap::encode(
            pairs
                .iter()
                .map(|(n, v)| (n.as_ref().as_bytes(), v.as_ref())),
        )
    }

    /// Encodes pairs whose names are bytes too (a native host's header map, copied
    /// once, without checking the names as UTF-8: they are compared as bytes).
    pub fn from_byte_pairs(pairs: &[(&[u8], &[u8])]) -> HeaderMap {
        HeaderMap::encode(pairs.iter().copied())
    }

    /// Encodes the pairs `pairs` yields (walked three times: sizes, lengths, bytes),
    /// with no copy of the pairs themselves.
    pub fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> HeaderMap {
        let (count, size) = pairs.clone().fold((0, 4), |(count, size), (n, v)| {
            (count + 1, size + n.len() + v.len() + 10)
        });
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&len32(count).to_le_bytes());
        for (name, value) in pairs.clone() {
            bytes.extend_from_slice(&len32(name.len()).to_le_bytes());
            bytes.extend_from_slice(&len32(value.len()).to_le_bytes());
        }
        for (name, value) in pairs {
            bytes.extend_from_slice(name);
            bytes.push(0);
            bytes.extend_from_slice(value);
            bytes.push(0);
        }
        HeaderMap { bytes }
    }

    /// The map in the wire format (as the host takes it, e.g. for an HTTP call).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every (name, value) in the host's order. Names are compared as bytes: Envoy
    /// hands them over lowercase.
    pub fn iter(&self) -> Pairs<'_> {
        let count = read_u32(&self.bytes, 0).map_or(0, |c| c as usize);
        Pairs {
            bytes: &self.bytes,
            count,
            index: 0,
            data: count.checked_mul(8).and_then(|n| n.checked_add(4)),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The pairs of a `HeaderMap`; stops early (and says so) at a malformed entry.
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    index: usize,
    /// Where the next name starts; `None` once the map proved malformed.
    data: Option<usize>,
}

impl Pairs<'_> {
    /// Every pair was read and each name and value ended with its NUL.
    fn well_formed(&self) -> bool {
        self.bytes.is_empty()
            || (self.index == self.count && self.data.is_some_and(|d| d <= self.bytes.len()))
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let pair = (|| {
            let data = self.data?;
            let name_len = read_u32(self.bytes, 4 + self.index * 8)? as usize;
            let value_len = read_u32(self.bytes, 8 + self.index * 8)? as usize;
            let name = self.bytes.get(data..data.checked_add(name_len)?)?;
            let value_at = data.checked_add(name_len)?.checked_add(1)?;
            let value = self.bytes.get(value_at..value_at.checked_add(value_len)?)?;
            // Each name and value ends with its NUL.
            let next = value_at.checked_add(value_len)?.checked_add(1)?;
            (next <= self.bytes.len()).then_some((name, value, next))
        })();
        match pair {
            Some((name, value, next)) => {
                self.index += 1;
                self.data = Some(next);
                Some((name, value))
            }
            None => {
                self.data = None;
                None
            }
        }
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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

    #[test]
    fn byte_pairs_encode_as_the_host_does() {
        let pairs: [(&str, &[u8]); 2] = [("x-session-id", b"u-1"), ("x-odd", b"\xff")];
        let raw: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (n.as_bytes(), *v)).collect();
        assert_eq!(
            HeaderMap::from_byte_pairs(&raw),
            HeaderMap::from_pairs(&pairs)
        );
        // A name that is not UTF-8 is kept as bytes (and matches no &str name).
        let odd = HeaderMap::from_byte_pairs(&[(b"\xff-name", b"v"), (b"ok", b"1")]);
        let decoded = HeaderMap::decode(odd.as_bytes().to_vec()).unwrap();
        assert_eq!(decoded.iter().count(), 2);
        assert_eq!(decoded.get("ok"), Some(&b"1"[..]));
        assert_eq!(
            HeaderMap::from_byte_pairs(&[]),
            HeaderMap::from_pairs::<&str, &[u8]>(&[])
        );
    }

    #[test]
    fn maps_round_trip_and_malformed_ones_are_refused() {
        let pairs: [(&str, &[u8]); 3] =
            [(":status", b"200"), ("x-odd", b"\xff\xfe"), ("empty", b"")];
        let bytes = HeaderMap::from_pairs(&pairs).bytes;
        let decoded = HeaderMap::decode(bytes.clone()).unwrap();
        let read: Vec<(&[u8], &[u8])> = decoded.iter().collect();
        assert_eq!(read.len(), 3);
        assert_eq!(read[1], (&b"x-odd"[..], &b"\xff\xfe"[..]));
        assert_eq!(decoded.get("empty"), Some(&b""[..]));
        assert_eq!(decoded.get(":status"), Some(&b"200"[..]));
        assert!(!decoded.contains("x-absent"));
        assert_eq!(HeaderMap::decode(Vec::new()), Some(HeaderMap::default()));
        assert_eq!(HeaderMap::default().iter().count(), 0);
        // Every truncation, an absurd count and absurd lengths: refused, no panic.
        for cut in 1..bytes.len() {
            assert_eq!(
                HeaderMap::decode(bytes[..cut].to_vec()),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(HeaderMap::decode(u32::MAX.to_le_bytes().to_vec()), None);
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::decode(huge), None);
        // A name that is not UTF-8 is kept as bytes.
        let mut raw = HeaderMap::from_pairs(&[("abc", b"v")]).bytes;
        let at = raw.len() - 6;
        raw[at..at + 3].copy_from_slice(b"\xff\xfe\xfd");
        let odd = HeaderMap::decode(raw).unwrap();
        assert_eq!(odd.iter().next(), Some((&b"\xff\xfe\xfd"[..], &b"v"[..])));
        assert_eq!(encode_path(&["request", "time"]), b"request\0time");
        assert_eq!(encode_path(&[]), b"");
    }

    #[test]
    fn a_map_the_decoder_never_saw_stops_iterating_instead_of_panicking() {
        let bytes = HeaderMap::from_pairs(&[("a", b"1"), ("b", b"2")]).bytes;
        for cut in 0..bytes.len() {
            let map = HeaderMap {
                bytes: bytes[..cut].to_vec(),
            };
            assert!(map.iter().count() <= 2, "cut at {cut}");
            let _ = map.get("b");
        }
    }
}
