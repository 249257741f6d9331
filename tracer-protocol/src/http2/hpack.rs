//! HPACK (RFC 7541) decoding for a passive observer.
//!
//! Written here rather than taken from a crate because the tracer needs what codecs do not
//! offer: a table whose older part may be *unknown* (tracing started mid-connection, or a
//! header block had to be skipped), where a reference into the unknown part yields "unknown"
//! instead of an error or a guess, and bounded memory (values are stored truncated; sizes are
//! accounted with the real lengths).
//!
//! Why references stay exact with an unknown tail: dynamic index `i` names the `i`-th newest
//! insertion, and eviction only removes the oldest entries. So as long as every insertion since
//! we started is seen, the newest entries are exactly ours; only indices past them are unknown.

use std::collections::VecDeque;

use super::huffman;

/// Entries' name bytes kept at most (real lengths still count for the table size).
const MAX_STORED_NAME: usize = 128;
/// Largest dynamic table this decoder holds; a larger agreed size is followed with the
/// overflowing (oldest) entries forgotten, i.e. marked unknown.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Scratch buffers grown beyond this are freed after a block.
const KEEP_SCRATCH: usize = 4096;
/// The protocol's initial SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
#[rustfmt::skip]
static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),];

#[derive(Debug)]
struct Entry {
    /// Truncated to `MAX_STORED_NAME`.
    name: Box<[u8]>,
    name_len: usize,
    /// Truncated to the decoder's `max_value`.
    value: Box<[u8]>,
    /// RFC 7541 4.1 size: real name and value lengths + 32.
    size: usize,
}

/// Why a block could not be decoded. The decoder's table is then unknown (see
/// [`Decoder::poison`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Truncated or over-long integer or string.
    Malformed,
    Huffman,
    /// An index past the static table and every known entry, while the table is fully known.
    BadIndex,
    /// A size update above the limit the decoder's peer announced.
    SizeAboveLimit,
}

/// A table entry's (name, value) as stored.
type EntryRef<'a> = (&'a [u8], &'a [u8]);

/// One decoded header field; `None` when it came from the unknown part of the table.
pub type Field<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// One direction's HPACK decoder.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' RFC sizes.
    size: usize,
    /// The table's current maximum size (as set by the encoder's size updates).
    max_size: usize,
    /// Largest size update allowed (the decoding peer's SETTINGS_HEADER_TABLE_SIZE; the
    /// largest seen, as the observer cannot tell exactly when a change applies).
    limit: usize,
    /// Older entries than ours may exist: indices past `entries` are unknown, not errors.
    unknown_tail: bool,
    max_value: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder for a direction seen from its first byte (the table starts empty).
    pub fn new(max_value: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            limit: DEFAULT_TABLE_SIZE,
            unknown_tail: false,
            max_value,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A decoder for a direction joined mid-way: the table's content is unknown.
    pub fn new_unknown(max_value: usize) -> Self {
        let mut d = Self::new(max_value);
        d.poison();
        d
    }

    /// Forget the table: a block was not decoded, so entries it may have inserted are missing.
    /// Later references reach only entries inserted from now on.
    pub fn poison(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
        // The current maximum is unknown too: any size update up to the protocol's maximum.
        self.limit = self.limit.max(MAX_TABLE_SIZE);
        self.max_size = self.max_size.max(self.limit);
    }

    /// Whether every dynamic reference can be resolved.
    #[cfg(test)]
    pub fn table_known(&self) -> bool {
        !self.unknown_tail
    }

    /// The decoding peer announced SETTINGS_HEADER_TABLE_SIZE = `n`.
    pub fn set_limit(&mut self, n: u32) {
        self.limit = self.limit.max(n as usize);
    }

    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self
                .entries
                .iter()
                .map(|e| e.name.len() + e.value.len())
                .sum::<usize>()
            + self.name_buf.capacity()
            + self.value_buf.capacity()
    }

    /// Decodes a complete header block, calling `f` for each field in order. On `Err` some
    /// fields may have been reported already and the table is poisoned.
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(Field<'_>)) -> Result<(), Error> {
        let r = self.decode_inner(block, &mut f);
        if r.is_err() {
            self.poison();
        }
        // Scratch grown by a long value is not kept.
        for buf in [&mut self.name_buf, &mut self.value_buf] {
            if buf.capacity() > KEEP_SCRATCH {
                *buf = Vec::new();
            }
        }
        r
    }

    fn decode_inner(&mut self, block: &[u8], f: &mut impl FnMut(Field<'_>)) -> Result<(), Error> {
        let mut p = 0;
        while p < block.len() {
            let b = block[p];
            if b & 0x80 != 0 {
                let (idx, n) = integer(&block[p..], 7)?;
                p += n;
                if idx == 0 {
                    return Err(Error::BadIndex);
                }
                match self.lookup(idx)? {
                    Some((name, value)) => f((Some(name), Some(value))),
                    None => f((None, None)),
                }
            } else if b & 0xe0 == 0x20 {
                let (size, n) = integer(&block[p..], 5)?;
                p += n;
                self.size_update(size)?;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = b & 0x40 != 0;
                let (idx, n) = integer(&block[p..], if indexing { 6 } else { 4 })?;
                p += n;
                self.name_buf.clear();
                let mut name = std::mem::take(&mut self.name_buf);
                name.clear();
                let r = if idx == 0 {
                    string(&block[p..], &mut name, usize::MAX).map(|(len, n)| (Some(len), n))
                } else {
                    self.lookup_entry(idx).map(|e| match e {
                        Some((n, len)) => {
                            name.extend_from_slice(n);
                            (Some(len), 0)
                        }
                        None => (None, 0),
                    })
                };
                self.name_buf = name;
                let (name_len, n) = r?;
                p += n;
                let name_known = name_len.is_some();
                let mut value = std::mem::take(&mut self.value_buf);
                value.clear();
                let r = string(&block[p..], &mut value, usize::MAX);
                self.value_buf = value;
                let (value_len, n) = r?;
                p += n;
                if name_known {
                    f((Some(&self.name_buf), Some(&self.value_buf)));
                } else {
                    f((None, Some(&self.value_buf)));
                }
                if indexing {
                    // An entry of unknown name and size: forget the table (later insertions
                    // are known again).
                    if let Some(name_len) = name_len {
                        self.insert(name_len, value_len);
                    } else {
                        self.poison();
                    }
                }
            }
        }
        Ok(())
    }

    /// `idx` (1-based over the static then dynamic table): `Ok(None)` when unknown.
    fn lookup(&self, idx: usize) -> Result<Option<EntryRef<'_>>, Error> {
        if idx <= STATIC_TABLE.len() {
            return Ok(Some(STATIC_TABLE[idx - 1]));
        }
        match self.entries.get(idx - STATIC_TABLE.len() - 1) {
            Some(e) => Ok(Some((&e.name, &e.value))),
            None if self.unknown_tail => Ok(None),
            None => Err(Error::BadIndex),
        }
    }

    /// A name by index: (stored bytes, real length); `Ok(None)` when unknown.
    fn lookup_entry(&self, idx: usize) -> Result<Option<(&[u8], usize)>, Error> {
        if idx == 0 {
            return Err(Error::BadIndex);
        }
        if idx <= STATIC_TABLE.len() {
            let name = STATIC_TABLE[idx - 1].0;
            return Ok(Some((name, name.len())));
        }
        match self.entries.get(idx - STATIC_TABLE.len() - 1) {
            Some(e) => Ok(Some((&e.name, e.name_len))),
            None if self.unknown_tail => Ok(None),
            None => Err(Error::BadIndex),
        }
    }

    fn size_update(&mut self, size: usize) -> Result<(), Error> {
        if size > self.limit {
            return Err(Error::SizeAboveLimit);
        }
        self.max_size = size;
        if size == 0 {
            // Everything evicted: the table is fully known from here on.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
        }
        self.evict();
        Ok(())
    }

    /// Inserts the field in `name_buf`/`value_buf` whose real lengths are given.
    fn insert(&mut self, name_len: usize, value_len: usize) {
        let size = name_len + value_len + 32;
        if size > self.max_size {
            // RFC 7541 4.4: a too large entry empties the table and is not inserted.
            self.entries.clear();
            self.size = 0;
            if self.max_size > MAX_TABLE_SIZE {
                self.unknown_tail = true;
            }
            return;
        }
        let name = &self.name_buf[..self.name_buf.len().min(MAX_STORED_NAME)];
        let value = &self.value_buf[..self.value_buf.len().min(self.max_value)];
        self.entries.push_front(Entry {
            name: name.into(),
            name_len,
            value: value.into(),
            size,
        });
        self.size += size;
        self.evict();
    }

    fn evict(&mut self) {
        // Past our own cap, entries the encoder still has are dropped: they become unknown.
        let cap = self.max_size.min(MAX_TABLE_SIZE);
        while self.size > cap {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
            if self.max_size > MAX_TABLE_SIZE {
                self.unknown_tail = true;
            }
        }
    }
}

/// RFC 7541 5.1 integer with an `n`-bit prefix: (value, bytes used). At most 2^28 or so.
pub fn integer(b: &[u8], n: u8) -> Result<(usize, usize), Error> {
    let mask = (1u16 << n) as usize - 1;
    let first = *b.first().ok_or(Error::Malformed)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut v = mask;
    for (i, &c) in b[1..].iter().enumerate().take(4) {
        v += ((c & 0x7f) as usize) << (7 * i);
        if c & 0x80 == 0 {
            return Ok((v, i + 2));
        }
    }
    Err(Error::Malformed)
}

/// RFC 7541 5.2 string literal appended to `dst`: (decoded length, bytes used). Only the first
/// `keep` decoded bytes are kept for raw strings (Huffman ones are decoded whole).
fn string(b: &[u8], dst: &mut Vec<u8>, keep: usize) -> Result<(usize, usize), Error> {
    let huff = b.first().ok_or(Error::Malformed)? & 0x80 != 0;
    let (len, n) = integer(b, 7)?;
    let raw = b.get(n..n + len).ok_or(Error::Malformed)?;
    if huff {
        let start = dst.len();
        huffman::decode(raw, dst).map_err(|()| Error::Huffman)?;
        Ok((dst.len() - start, n + len))
    } else {
        dst.extend_from_slice(&raw[..raw.len().min(keep)]);
        Ok((len, n + len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Vector = (&'static str, &'static [(&'static str, &'static str)]);

    // RFC 7541 Appendix C.3 to C.6 (blocks and the header lists they decode to).
    const C3: &[Vector] = &[
        (
            "828684410f7777772e6578616d706c652e636f6d",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ],
        ),
        (
            "828684be58086e6f2d6361636865",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ],
        ),
        (
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ],
        ),
    ];
    const C4: &[Vector] = &[
        (
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ],
        ),
        (
            "828684be5886a8eb10649cbf",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ],
        ),
        (
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ],
        ),
    ];
    const RESP3: &[(&str, &str)] = &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ];
    const C5: &[Vector] = &[
        (
            "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            &[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ],
        ),
        (
            "4803333037c1c0bf",
            &[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ],
        ),
        (
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
            RESP3,
        ),
    ];
    const C6: &[Vector] = &[
        (
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
            &[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ],
        ),
        (
            "4883640effc1c0bf",
            &[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ],
        ),
        (
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
            RESP3,
        ),
    ];

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Vec<(Option<String>, Option<String>)> {
        let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let mut out = Vec::new();
        d.decode(block, |(n, v)| out.push((s(n), s(v)))).unwrap();
        out
    }

    fn run(vectors: &[Vector], table_size: usize) -> Decoder {
        let mut d = Decoder::new(512);
        d.max_size = table_size;
        for (block, want) in vectors {
            let got = fields(&mut d, &hex(block));
            let want: Vec<_> = want
                .iter()
                .map(|(n, v)| (Some(n.to_string()), Some(v.to_string())))
                .collect();
            assert_eq!(got, want, "{block}");
        }
        d
    }

    fn table(d: &Decoder) -> Vec<(&[u8], &[u8])> {
        d.entries
            .iter()
            .map(|e| (&e.name[..], &e.value[..]))
            .collect()
    }

    #[test]
    fn rfc7541_c3_c4_requests() {
        for v in [C3, C4] {
            let d = run(v, 4096);
            assert_eq!(d.size, 164);
            assert_eq!(
                table(&d),
                [
                    (&b"custom-key"[..], &b"custom-value"[..]),
                    (b"cache-control", b"no-cache"),
                    (b":authority", b"www.example.com"),
                ]
            );
        }
    }

    #[test]
    fn rfc7541_c5_c6_responses_with_eviction() {
        for v in [C5, C6] {
            let d = run(v, 256);
            assert_eq!(d.size, 215);
            assert_eq!(
                table(&d),
                [
                    (
                        &b"set-cookie"[..],
                        &b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"[..]
                    ),
                    (b"content-encoding", b"gzip"),
                    (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
                ]
            );
        }
    }

    #[test]
    fn unknown_table_yields_unknown_not_errors() {
        // Joined before C.3.3: index 62+ (dynamic) is unknown, statics are known, and what is
        // inserted from now on resolves exactly.
        let mut d = Decoder::new_unknown(512);
        let got = fields(&mut d, &hex(C3[2].0));
        assert_eq!(got[0], (Some(":method".into()), Some("GET".into())));
        assert_eq!(got[3], (None, None));
        assert_eq!(
            got[4],
            (Some("custom-key".into()), Some("custom-value".into()))
        );
        // 0xbe = index 62: the entry just inserted.
        assert_eq!(
            fields(&mut d, &[0xbe]),
            [(Some("custom-key".into()), Some("custom-value".into()))]
        );
        assert_eq!(fields(&mut d, &[0xbf]), [(None, None)]);
        assert!(!d.table_known());
        // A size update to 0 empties the table: everything is known again.
        fields(&mut d, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]);
        assert!(d.table_known());
        assert_eq!(d.decode(&[0xbe], |_| {}), Err(Error::BadIndex));
        // ... and the error poisoned it.
        assert!(!d.table_known());
    }

    #[test]
    fn size_updates_are_bounded_by_settings() {
        let mut d = Decoder::new(512);
        // 0x3f 0xe1 0x1f = size update to 4096: allowed.
        assert!(d.decode(&[0x3f, 0xe1, 0x1f, 0x82], |_| {}).is_ok());
        // 8192 is not, until the decoding peer allows it.
        let up = [0x3f, 0xe1, 0x3f, 0x82];
        assert_eq!(d.decode(&up, |_| {}), Err(Error::SizeAboveLimit));
        let mut d = Decoder::new(512);
        d.set_limit(8192);
        assert!(d.decode(&up, |_| {}).is_ok());
    }

    #[test]
    fn malformed_blocks_never_panic() {
        let mut d = Decoder::new(16);
        for block in [
            &[0xff][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x40],
            &[0x40, 0x85],
            &[0x40, 0x01, b'a', 0x7f],
            &[0x00, 0x81, 0xff],
            &[0x3f],
            &[0x80],
        ] {
            assert!(d.decode(block, |_| {}).is_err(), "{block:?}");
        }
        // Long values are stored truncated but sized in full.
        let mut d = Decoder::new(4);
        d.decode(
            &hex("400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
            |_| {},
        )
        .unwrap();
        assert_eq!(d.size, 10 + 12 + 32);
        assert_eq!(table(&d), [(&b"custom-key"[..], &b"cust"[..])]);
    }

    #[test]
    fn memory_is_bounded_by_our_cap_and_the_rest_is_unknown() {
        let mut d = Decoder::new(512);
        d.set_limit(1 << 20);
        // Size update to 1 MiB (0x3f then 1048576 - 31 in 7-bit groups).
        let mut up = vec![0x3f];
        let mut v = (1usize << 20) - 31;
        while v >= 128 {
            up.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        up.push(v as u8);
        up.push(0x82);
        d.decode(&up, |_| {}).unwrap();
        for i in 0..20_000 {
            let mut b = vec![0x40, 1, b'n', 100];
            b.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 100));
            d.decode(&b, |_| {}).unwrap();
        }
        assert!(d.size <= MAX_TABLE_SIZE);
        assert!(
            d.memory_bytes() < 3 * MAX_TABLE_SIZE,
            "{}",
            d.memory_bytes()
        );
        // The newest entry is known; one past what we keep is unknown, not an error.
        let kept = d.entries.len();
        assert_eq!(fields(&mut d, &[0xbe])[0].0.as_deref(), Some("n"));
        let idx = 62 + kept;
        let mut r = vec![0xff];
        let mut v = idx - 127;
        while v >= 128 {
            r.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        r.push(v as u8);
        assert_eq!(fields(&mut d, &r), [(None, None)]);
    }
}
