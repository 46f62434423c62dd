//! The byte format of operator checkpoint snapshots (`WindowOp::snapshot`,
//! `KeyedAggOp::snapshot`).
//!
//! A snapshot is `MAGIC`, a [`VERSION`] byte, a kind byte naming the operator state it
//! holds, the operator's payload, and a CRC-32C of everything before it (4 bytes,
//! little-endian). Numbers in the payload are little-endian; byte strings and lists are
//! prefixed by their length (`u32`). [`Reader`] decodes it without ever panicking: every
//! read is bounds-checked, and a list's length is checked against the bytes left before
//! anything is allocated for it, so a corrupted length cannot ask for more memory than
//! the input holds.
//!
//! A delta (`WindowOp::snapshot_delta`, `KeyedAggOp::snapshot_delta`) has the same
//! frame, a kind byte of its own, and its [`Generation`]s first in the payload.

/// The first bytes of every snapshot.
pub(crate) const MAGIC: &[u8; 4] = b"FLSN";
/// The format's version; a snapshot of another version is refused. (2: snapshots carry
/// their [`Generation`], and there are deltas. 3: a key's last string field has no
/// length of its own, see `window::encode_key`.)
pub(crate) const VERSION: u8 = 3;

/// Where an operator's state stands in its chain of snapshots: a full snapshot starts a
/// new `chain` (a number drawn so that it is unlikely to repeat), and each snapshot or
/// delta taken numbers the state it describes with the next `seq`. A delta names its
/// chain, the `seq` it follows and its own, so that it is applied only on top of
/// exactly the state it was taken after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    pub chain: u64,
    pub seq: u64,
}

impl Generation {
    /// The generation of a full snapshot taken by an operator at `prev`.
    pub fn full(prev: Option<Generation>) -> Generation {
        static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let chain =
            super::slots::mix(t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(std::process::id()) << 40));
        Generation { chain, seq: prev.map_or(1, |g| g.seq.wrapping_add(1)) }
    }

    /// The generation of the delta that follows this one.
    pub fn next(self) -> Generation {
        Generation { chain: self.chain, seq: self.seq.wrapping_add(1) }
    }

    /// A full snapshot's generation.
    pub fn put(self, w: &mut Writer) {
        w.u64(self.chain);
        w.u64(self.seq);
    }

    pub fn get(r: &mut Reader<'_>) -> Result<Generation, String> {
        Ok(Generation { chain: r.u64("snapshot chain")?, seq: r.u64("snapshot sequence number")? })
    }

    /// A delta's generations: its chain, the sequence number it follows, its own.
    pub fn put_delta(self, w: &mut Writer) {
        w.u64(self.chain);
        w.u64(self.seq.wrapping_sub(1));
        w.u64(self.seq);
    }

    /// Reads a delta's generations and checks that it follows `at` (the operator's
    /// generation; `untouched` false if the operator changed since it): returns the
    /// generation the operator is at once the delta is applied.
    pub fn get_delta(r: &mut Reader<'_>, at: Option<Generation>, untouched: bool) -> Result<Generation, String> {
        let chain = r.u64("delta chain")?;
        let base = r.u64("delta base sequence number")?;
        let seq = r.u64("delta sequence number")?;
        if seq != base.wrapping_add(1) {
            return Err(format!("delta numbered {seq} does not follow its base {base}"));
        }
        let Some(at) = at else {
            return Err(
                "a delta is applied only to an operator restored from a snapshot (or given earlier deltas)".into()
            );
        };
        if !untouched {
            return Err("a delta is applied only to an operator that has processed nothing since its restore".into());
        }
        if chain != at.chain {
            return Err(format!(
                "delta of another snapshot chain ({chain:016x}; the operator's is {:016x}): \
                 it does not follow the snapshot the operator was restored from",
                at.chain
            ));
        }
        if base != at.seq {
            return Err(format!(
                "delta {seq} follows state {base}, but the operator is at {}: deltas apply in order, each once",
                at.seq
            ));
        }
        Ok(Generation { chain, seq })
    }
}

/// Builds a snapshot: header first, payload through the `put_*` methods, then
/// [`Writer::finish`] seals it with its checksum.
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// A snapshot of operator state of kind `kind`.
    pub fn new(kind: u8) -> Writer {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind);
        Writer { out }
    }

    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A count (of list items), refused if it does not fit a `u32`.
    pub fn count(&mut self, n: usize, what: &str) -> Result<(), String> {
        let n = u32::try_from(n).map_err(|_| format!("too many {what} for a snapshot: {n}"))?;
        self.u32(n);
        Ok(())
    }

    /// Bytes as they are (already encoded).
    pub fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Room for a count not known yet: [`Writer::patch_count`] fills it in.
    pub fn count_later(&mut self) -> usize {
        self.u32(0);
        self.out.len() - 4
    }

    /// Fills in the count at `at` (from [`Writer::count_later`]).
    pub fn patch_count(&mut self, at: usize, n: usize, what: &str) -> Result<(), String> {
        let n = u32::try_from(n).map_err(|_| format!("too many {what} for a snapshot: {n}"))?;
        self.out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8], what: &str) -> Result<(), String> {
        self.count(b.len(), what)?;
        self.out.extend_from_slice(b);
        Ok(())
    }

    /// Length-prefixed bytes that `fill` appends (the prefix is patched afterwards).
    pub fn bytes_with(&mut self, what: &str, fill: impl FnOnce(&mut Vec<u8>)) -> Result<(), String> {
        let at = self.out.len();
        self.u32(0);
        fill(&mut self.out);
        let n = self.out.len() - at - 4;
        let n = u32::try_from(n).map_err(|_| format!("{what} too large for a snapshot: {n} bytes"))?;
        self.out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }

    /// The sealed snapshot.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.out);
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out
    }
}

/// Reads a snapshot's payload; every method returns an error naming what is missing.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the header (magic, version, kind `kind`) and checksum of `bytes`, and
    /// returns a reader of the payload.
    pub fn open(bytes: &'a [u8], kind: u8, what: &str) -> Result<Reader<'a>, String> {
        let head = MAGIC.len() + 2;
        if bytes.len() < head + 4 {
            return Err(format!("{what} snapshot truncated: {} bytes", bytes.len()));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(format!("not a {what} snapshot (bad magic)"));
        }
        if bytes[MAGIC.len()] != VERSION {
            return Err(format!("{what} snapshot of version {}, expected {VERSION}", bytes[MAGIC.len()]));
        }
        if bytes[MAGIC.len() + 1] != kind {
            return Err(format!(
                "{what} snapshot holds state of kind {:?}, expected {:?}",
                char::from(bytes[MAGIC.len() + 1]),
                char::from(kind)
            ));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32c::crc32c(body) != u32::from_le_bytes(c) {
            return Err(format!("{what} snapshot corrupted (checksum mismatch)"));
        }
        Ok(Reader { rest: &body[head..] })
    }

    /// A reader of `bytes` as a bare payload (no header, no checksum).
    #[cfg(test)]
    pub fn bare(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!("snapshot truncated in {what}"));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn bool(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("snapshot has {b} for the flag {what}")),
        }
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A list's length, each item at least `min_item` bytes: refused if the bytes left
    /// cannot hold that many, so callers may allocate for it.
    pub fn count(&mut self, min_item: usize, what: &str) -> Result<usize, String> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            return Err(format!("snapshot truncated: {n} {what} do not fit in {} bytes", self.rest.len()));
        }
        Ok(n)
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// Refuses bytes left over after the payload.
    pub fn end(&self, what: &str) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{what} snapshot has {} bytes past its end", self.rest.len()))
        }
    }
}

/// Rewrites the checksum of a (tampered) snapshot so that its payload is decoded: the
/// robustness tests reach the decoders with it.
#[cfg(test)]
pub(crate) fn reseal(bytes: &mut [u8]) {
    if bytes.len() < 4 {
        return;
    }
    let n = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_damage_is_refused() {
        let mut w = Writer::new(b'X');
        w.u32(7);
        w.i64(-3);
        w.bytes(b"abc", "key").expect("bytes");
        w.bytes_with("acc", |o| o.extend_from_slice(b"xy")).expect("bytes");
        let snap = w.finish();
        let mut r = Reader::open(&snap, b'X', "test").expect("open");
        assert_eq!(r.u32("a").expect("u32"), 7);
        assert_eq!(r.i64("b").expect("i64"), -3);
        assert_eq!(r.bytes("c").expect("bytes"), b"abc");
        assert_eq!(r.bytes("d").expect("bytes"), b"xy");
        r.end("test").expect("end");
        assert!(r.u8("e").is_err());
        assert!(Reader::open(&snap, b'Y', "test").is_err(), "other kind");
        for n in 0..snap.len() {
            assert!(Reader::open(&snap[..n], b'X', "test").is_err(), "prefix {n}");
        }
        let mut bad = snap.clone();
        bad[8] ^= 1;
        assert!(Reader::open(&bad, b'X', "test").err().is_some_and(|e| e.contains("checksum")));
        let mut r = Reader::bare(&[255, 255, 255, 255, 1]);
        assert!(r.count(1, "items").is_err(), "a count larger than the input");
    }
}
