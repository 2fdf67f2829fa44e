//! proxy-wasm's wire format for header maps (as the host hands them over) and
//! property paths. Pure, so that it is tested on the host: every read is
//! bounds-checked, since a panic in the VM fails live traffic.
//!
//! A map is `count: u32`, then `count` × (`name_len: u32`, `value_len: u32`), then
//! each name and value followed by a NUL; integers little-endian.

/// A request's or response's headers, read in place: as a proxy-wasm host wrote
/// them (the wire format, checked once), or as pairs a native host lends from
/// its own memory for `'a` (the hook's duration): no allocation per header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap<'a> {
    repr: Repr<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr<'a> {
    /// Empty, or a well-formed map (checked by `decode`).
    Wire(Vec<u8>),
    Lent(Vec<(&'a [u8], &'a [u8])>),
}

impl Default for Repr<'_> {
    fn default() -> Self {
        Repr::Wire(Vec::new())
    }
}

impl HeaderMap<'static> {
    /// Takes a map the host wrote; `None` when it is malformed (never a panic).
    pub fn decode(bytes: Vec<u8>) -> Option<HeaderMap<'static>> {
        let map = HeaderMap {
            repr: Repr::Wire(bytes),
        };
        let mut pairs = map.wire_pairs();
        for _ in pairs.by_ref() {}
        pairs.well_formed().then_some(map)
    }

    /// Encodes `pairs` as the host does (for tests and the in-memory host).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap<'static> {
        HeaderMap {
            repr: Repr::Wire(encode_pairs(
                pairs
                    .iter()
                    .map(|(n, v)| (n.as_ref().as_bytes(), v.as_ref())),
            )),
        }
    }

    /// Encodes pairs whose names are bytes too (not checked as UTF-8: names are
    /// compared as bytes); for tests, which compare it with a lent map.
    #[cfg(test)]
    pub fn from_byte_pairs(pairs: &[(&[u8], &[u8])]) -> HeaderMap<'static> {
        HeaderMap {
            repr: Repr::Wire(encode_pairs(pairs.iter().copied())),
        }
    }
}

/// Encodes the pairs `pairs` yields (walked three times: sizes, lengths, bytes),
/// with no copy of the pairs themselves.
fn encode_pairs<'p>(pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone) -> Vec<u8> {
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
    bytes
}

impl<'a> HeaderMap<'a> {
    /// Pairs a host lends for `'a` (the native module's: Envoy's own buffers, valid
    /// while its hook runs), read where they are.
    pub fn lent(pairs: Vec<(&'a [u8], &'a [u8])>) -> HeaderMap<'a> {
        HeaderMap {
            repr: Repr::Lent(pairs),
        }
    }

    /// The map in the wire format (as a proxy-wasm host takes it, e.g. for an HTTP call).
    pub fn wire(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.repr {
            Repr::Wire(bytes) => bytes.as_slice().into(),
            Repr::Lent(pairs) => encode_pairs(pairs.iter().copied()).into(),
        }
    }

    /// Every (name, value) in the host's order. Names are compared as bytes: Envoy
    /// hands them over lowercase.
    pub fn iter(&self) -> Iter<'_, 'a> {
        match &self.repr {
            Repr::Wire(_) => Iter::Wire(self.wire_pairs()),
            Repr::Lent(pairs) => Iter::Lent(pairs.iter()),
        }
    }

    fn wire_pairs(&self) -> Pairs<'_> {
        let bytes = match &self.repr {
            Repr::Wire(bytes) => bytes.as_slice(),
            Repr::Lent(_) => &[],
        };
        let count = read_u32(bytes, 0).map_or(0, |c| c as usize);
        Pairs {
            bytes,
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
}

/// The pairs of a `HeaderMap`, borrowed for `'m`.
pub enum Iter<'m, 'a> {
    Wire(Pairs<'m>),
    Lent(std::slice::Iter<'m, (&'a [u8], &'a [u8])>),
}

impl<'m> Iterator for Iter<'m, '_> {
    type Item = (&'m [u8], &'m [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Wire(pairs) => pairs.next(),
            Iter::Lent(pairs) => pairs.next().map(|&(name, value)| (name, value)),
        }
    }
}

/// The pairs of a wire-format map; stops early (and says so) at a malformed entry.
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
        let decoded = HeaderMap::decode(odd.wire().to_vec()).unwrap();
        assert_eq!(decoded.iter().count(), 2);
        assert_eq!(decoded.get("ok"), Some(&b"1"[..]));
        assert_eq!(
            HeaderMap::from_byte_pairs(&[]),
            HeaderMap::from_pairs::<&str, &[u8]>(&[])
        );
    }

    #[test]
    fn a_lent_map_reads_as_the_same_map_encoded() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b":status", b"200"),
            (b"x-odd", b"\xff"),
            (b"x-odd", b"second"),
        ];
        let lent = HeaderMap::lent(pairs.to_vec());
        let encoded = HeaderMap::from_byte_pairs(&pairs);
        assert_eq!(lent.iter().collect::<Vec<_>>(), pairs.to_vec());
        assert_eq!(
            lent.iter().collect::<Vec<_>>(),
            encoded.iter().collect::<Vec<_>>()
        );
        assert_eq!(lent.get("x-odd"), Some(&b"\xff"[..]), "the first value");
        assert_eq!(lent.get(":status"), Some(&b"200"[..]));
        assert_eq!(lent.get("x-absent"), None);
        assert_eq!(lent.wire(), encoded.wire());
        assert_eq!(HeaderMap::lent(Vec::new()).iter().count(), 0);
        assert_eq!(HeaderMap::lent(Vec::new()).wire().as_ref(), &[0u8; 4][..]);
    }

    #[test]
    fn maps_round_trip_and_malformed_ones_are_refused() {
        let pairs: [(&str, &[u8]); 3] =
            [(":status", b"200"), ("x-odd", b"\xff\xfe"), ("empty", b"")];
        let bytes = HeaderMap::from_pairs(&pairs).wire().to_vec();
        let decoded = HeaderMap::decode(bytes.clone()).unwrap();
        let read: Vec<(&[u8], &[u8])> = decoded.iter().collect();
        assert_eq!(read.len(), 3);
        assert_eq!(read[1], (&b"x-odd"[..], &b"\xff\xfe"[..]));
        assert_eq!(decoded.get("empty"), Some(&b""[..]));
        assert_eq!(decoded.get(":status"), Some(&b"200"[..]));
        assert_eq!(decoded.get("x-absent"), None);
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
        let mut raw = HeaderMap::from_pairs(&[("abc", b"v")]).wire().to_vec();
        let at = raw.len() - 6;
        raw[at..at + 3].copy_from_slice(b"\xff\xfe\xfd");
        let odd = HeaderMap::decode(raw).unwrap();
        assert_eq!(odd.iter().next(), Some((&b"\xff\xfe\xfd"[..], &b"v"[..])));
        assert_eq!(encode_path(&["request", "time"]), b"request\0time");
        assert_eq!(encode_path(&[]), b"");
    }

    #[test]
    fn a_map_the_decoder_never_saw_stops_iterating_instead_of_panicking() {
        let bytes = HeaderMap::from_pairs(&[("a", b"1"), ("b", b"2")])
            .wire()
            .to_vec();
        for cut in 0..bytes.len() {
            let map = HeaderMap {
                repr: Repr::Wire(bytes[..cut].to_vec()),
            };
            assert!(map.iter().count() <= 2, "cut at {cut}");
            let _ = map.get("b");
        }
    }
}
