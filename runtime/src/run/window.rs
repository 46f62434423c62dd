//! The window operator: `window ... | aggregate { }` over event time, in memory.
//!
//! One [`WindowOp`] per stage instance owns the state of the keys hashed to it:
//!
//! - **Keys** are encoded as bytes (the key fields' slots, nulls marked) and held in
//!   the slots of the [`AccStore`] slab, inline up to the slots' key room (else out of
//!   line). The room grows with the keys seen (`WindowOp::fit_key`).
//! - **Aligned windows** (tumbling, sliding): one slot per (key, window) in the
//!   [`AccStore`] slab, holding the window's end, its key bytes, its revision and the
//!   accumulator words, and one [`SlotIndex`] of slot ids over (key, end). A record
//!   costs one probe of that table and an update of the slot it finds, in the same
//!   cache lines. Windows share their bounds across keys, so firing is by group: a
//!   `BTreeMap` from window end to the slots of that end, in insertion order. Timers
//!   per key are not needed.
//! - **Session windows** are per key: one slot per key, holding its key bytes, its
//!   first open session (bounds, revision, flags) and that session's accumulator, and
//!   a [`SlotIndex`] over the key alone, so a record costs one probe and one slot, as
//!   for aligned windows. A key's further open sessions (out-of-order input opens them)
//!   are kept aside, each with an accumulator slot of its own. Timers by due time
//!   ([`Timers`]: coarse buckets of due times, small enough to stay cached) are
//!   checked lazily: a timer whose session has moved on re-arms it.
//! - **Accumulators** live in an [`AccStore`] slab (`agg.rs`).
//!
//! Time follows `semantics.md`: a record is judged against its own watermark (the
//! `$wm` stamp, `stamp.rs`); a window fires when the operator's watermark reaches
//! `end - 1`; it is kept `allowed_lateness` longer, and a record that lands in it then
//! fires it again at once as the next revision. A record none of whose windows accepts
//! it is late: counted, and handed back for the late output. The operator's watermark is
//! the minimum over its upstream instances (a record's stamp advances its instance's).

use super::agg::{AccLayout, AccStore};
use super::slots::{mix, SlotIndex};
use super::snapshot::{Generation, Reader, Writer};
use super::spill::SpillStore;
use super::stamp::{WM_MAX, WM_MIN};
use super::timers::Timers;
use flow_compiler::ir::{self, Window};
use flow_types::row::{Batch, BatchBuilder, Layout, RowRef, SlotKind};
use rustc_hash::{FxHashMap, FxHasher};
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::Hasher;
use std::sync::Arc;

/// What every instance of a window stage shares.
#[derive(Debug)]
pub(crate) struct WindowSpec {
    pub window: Window,
    pub lateness: i64,
    pub emit_every: Option<i64>,
    /// Key fields of the operator's input rows (after any pre-projection).
    pub key_fields: Vec<usize>,
    pub ts_field: usize,
    pub ts_offset: i64,
    pub stamp_field: usize,
    pub acc: AccLayout,
    /// Rows the operator emits: keys, window_start, window_end, aggregates, revision, `$wm`.
    pub result: Arc<Layout>,
}

impl WindowSpec {
    fn revision_field(&self) -> usize {
        self.key_fields.len() + 2 + self.acc.len()
    }
}

/// Session keys in memory beyond which the session path prefetches (fewer stay in the
/// caches).
const PREFETCH_KEYS: usize = 16 * 1024;

/// Interned keys (of keyed aggregates without windows): bytes stored once, looked up
/// by hash in a [`SlotIndex`].
#[derive(Default)]
pub(crate) struct KeyTable {
    index: SlotIndex,
    keys: Vec<Box<[u8]>>,
    hashes: Vec<u64>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(b);
    h.finish()
}

impl KeyTable {
    /// The hash the table files `key` under.
    fn hash(key: &[u8]) -> u64 {
        mix(hash_bytes(key))
    }

    /// The id of `key`, interning it if new.
    pub(crate) fn intern(&mut self, key: &[u8]) -> u32 {
        let h = KeyTable::hash(key);
        let keys = &self.keys;
        if let Some(id) = self.index.find(h, |id| &*keys[id as usize] == key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = key.into();
                self.hashes[id as usize] = h;
                self.refs[id as usize] = 0;
                id
            }
            None => {
                self.keys.push(key.into());
                self.hashes.push(h);
                self.refs.push(0);
                (self.keys.len() - 1) as u32
            }
        };
        self.index.insert(h, id);
        id
    }

    /// The id of `key` if it is interned.
    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        let keys = &self.keys;
        self.index.find(KeyTable::hash(key), |id| &*keys[id as usize] == key)
    }

    pub(crate) fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// Drops one reference; the key is forgotten with its last window.
    pub(crate) fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r == 0 {
            self.index.remove(self.hashes[id as usize], id);
            self.keys[id as usize] = Box::default();
            self.free.push(id);
        }
    }

    /// Forgets an interned key nothing refers to (a late record's).
    pub(crate) fn forget_if_unused(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            self.refs[id as usize] = 1;
            self.release(id);
        }
    }

    pub(crate) fn key(&self, id: u32) -> &[u8] {
        &self.keys[id as usize]
    }
}

/// Appends the encoding of `row`'s key fields to `out`: per field a null flag byte
/// (0: null, then nothing) and its value: a string's length (`u32`) and bytes, a
/// number's little-endian bytes. The last field's length is implied by the key's, so
/// a key of one string is a flag and the string's bytes (state holds keys inline when
/// they are short: four bytes less keeps more of them there).
pub(crate) fn encode_key(row: &RowRef, fields: &[usize], kinds: &[SlotKind], out: &mut Vec<u8>) {
    for (i, &f) in fields.iter().enumerate() {
        if row.is_null(f) {
            out.push(0);
            continue;
        }
        out.push(1);
        match kinds[f] {
            SlotKind::Str | SlotKind::Encoded => {
                let b = row.encoded(f);
                if i + 1 < fields.len() {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                }
                push_bytes(out, b);
            }
            SlotKind::Dec128 { .. } => out.extend_from_slice(&row.i128(f).to_le_bytes()),
            SlotKind::F64 => {
                let x = row.f64(f);
                let x = if x == 0.0 {
                    0.0
                } else if x.is_nan() {
                    f64::NAN
                } else {
                    x
                };
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            _ => out.extend_from_slice(&row.i64(f).to_le_bytes()),
        }
    }
}

/// Appends `b` to `out` a word at a time, then byte by byte: keys are short, and a
/// call to memcpy for a dozen bytes cost more than the copy (3% of the tumbling path).
#[inline]
fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len());
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let w: &[u8; 8] = w.try_into().expect("8 bytes");
        out.extend_from_slice(w);
    }
    for &x in words.remainder() {
        out.push(x);
    }
}

/// Splits `n` bytes off the front of `key`.
fn key_part<'a>(key: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if key.len() < n {
        return Err("truncated key".into());
    }
    let (a, b) = key.split_at(n);
    *key = b;
    Ok(a)
}

/// Splits the next field off an encoded key: `None` for a null, else its bytes (a
/// string's without its length). `last`: the key's last field (a string's length is
/// what is left).
fn key_field<'a>(key: &mut &'a [u8], kind: SlotKind, last: bool) -> Result<Option<&'a [u8]>, String> {
    let flag = key_part(key, 1)?[0];
    if flag == 0 {
        return Ok(None);
    }
    if flag != 1 {
        return Err(format!("bad null flag {flag} in key"));
    }
    let n = match kind {
        SlotKind::Str | SlotKind::Encoded if last => key.len(),
        SlotKind::Str | SlotKind::Encoded => {
            let mut len = [0u8; 4];
            len.copy_from_slice(key_part(key, 4)?);
            u32::from_le_bytes(len) as usize
        }
        SlotKind::Dec128 { .. } => 16,
        _ => 8,
    };
    key_part(key, n).map(Some)
}

/// Checks that `key` is a whole encoded key of fields of `kinds` (keys read back from
/// a snapshot).
pub(crate) fn check_key(mut key: &[u8], kinds: &[SlotKind]) -> Result<(), String> {
    for (i, &kind) in kinds.iter().enumerate() {
        key_field(&mut key, kind, i + 1 == kinds.len())?;
    }
    if key.is_empty() {
        Ok(())
    } else {
        Err(format!("key has {} bytes past its fields", key.len()))
    }
}

/// Writes an encoded key into fields `0..` of row `r`.
pub(crate) fn decode_key(mut key: &[u8], kinds: &[SlotKind], out: &mut BatchBuilder, r: usize) -> Result<(), String> {
    for (f, &kind) in kinds.iter().enumerate() {
        let Some(b) = key_field(&mut key, kind, f + 1 == kinds.len())? else {
            out.set_null(r, f);
            continue;
        };
        out.clear_null(r, f);
        match kind {
            SlotKind::Str | SlotKind::Encoded => {
                let off = out.arena_push(b).map_err(|e| format!("{e:?}"))?;
                out.set_span(r, f, off, b.len() as u32);
            }
            SlotKind::Dec128 { .. } => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                out.set_i128(r, f, i128::from_le_bytes(a));
            }
            _ => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                out.set_i64(r, f, i64::from_le_bytes(a));
            }
        }
    }
    Ok(())
}

/// One key's window in an aligned group, or one session.
#[derive(Clone, Copy, Debug)]
struct Win {
    acc: u32,
    /// Results emitted so far (the next one's revision).
    emitted: u32,
    /// Changed since the last result.
    dirty: bool,
    /// When it was last updated (the operator's batch count), to spill the coldest.
    used: u32,
}

impl Win {
    fn encode(&self, accs: &AccStore, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.emitted.to_le_bytes());
        out.push(u8::from(self.dirty));
        accs.export(self.acc, out);
    }

    /// A window read back from `bytes`; returns it and the bytes read.
    fn decode(accs: &mut AccStore, bytes: &[u8], used: u32) -> Result<(Win, usize), String> {
        let head = bytes.get(..5).ok_or("truncated window")?;
        let emitted = u32::from_le_bytes(head[..4].try_into().map_err(|_| "truncated window")?);
        let (acc, n) = accs.import(&bytes[5..])?;
        Ok((Win { acc, emitted, dirty: head[4] != 0, used }, 5 + n))
    }
}

/// Store keys: aligned windows by end (order-preserving bytes) then key bytes.
fn aligned_key(end: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(b'A');
    k.extend_from_slice(&((end as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Store keys: a key's sessions.
fn session_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(b'S');
    k.extend_from_slice(key);
    k
}

/// The keys with an open window `[end - size, end)`.
#[derive(Default)]
struct Group {
    /// The slots of its windows in memory, in insertion order, so results come out in a
    /// deterministic order.
    order: Vec<u32>,
    /// Its final result has been emitted (it stays for allowed lateness).
    fired: bool,
    /// The next early result's event time (`emit every`).
    next_early: i64,
    /// Keys whose window here was moved to the spill store.
    spilled: u32,
}

/// A key's open sessions.
type Sessions = SmallVec<[Session; 1]>;

#[derive(Clone, Copy, Debug)]
struct Session {
    start: i64,
    end: i64,
    win: Win,
    fired: bool,
    next_early: i64,
}

/// Header words of an aligned window's slot in the [`AccStore`]: its end,
const H_END: usize = 0;
/// one word of metadata: its key's length (bits 0..13; an out-of-line key's is in its
/// box; bits 13..16 are sessions' [`FIRED`], [`EXTRA`] and [`LIVE`]), when it was last
/// updated (bits 16..32: the batch count, wrapping), results emitted (bits 32..61: the
/// next one's revision), [`CHANGED`], [`DIRTY`] and [`LONG`];
const H_META: usize = 1;
/// then its key bytes, zero-padded words (or, if [`LONG`], an index into `long_keys`).
/// A session key's slot has the same three, for the key's first open session (its
/// end, its revision, ...), then that session's start and, with `emit every`, its
/// next early result (`WindowOp::s_start`, `s_next`); its accumulator is the slot's.
const H_KEY: usize = 2;
const USED_SHIFT: u32 = 16;
const REV_SHIFT: u32 = 32;
const REV_MASK: u64 = (1 << 29) - 1;
/// Changed since the last snapshot or delta (set only while changes are tracked: see
/// [`WindowOp::snapshot_delta`]).
const CHANGED: u64 = 1 << 61;
/// Changed since its last result.
const DIRTY: u64 = 1 << 62;
/// Its key did not fit in the header.
const LONG: u64 = 1 << 63;
/// The most key bytes a header holds.
const INLINE_KEY_MAX: usize = 4096;
/// The most key bytes a header's room grows to for strings (see `WindowOp::fit_key`).
const KEY_ROOM_MAX: usize = 64;

/// Session key slots only: the key's first session has fired;
const FIRED: u64 = 1 << 13;
/// the key has open sessions besides (in `WindowOp::extra`);
const EXTRA: u64 = 1 << 14;
/// the slot holds a key (a timer may name a slot freed since).
const LIVE: u64 = 1 << 15;

fn meta_len(m: u64) -> usize {
    (m & 0x1FFF) as usize
}

fn meta_rev(m: u64) -> u32 {
    ((m >> REV_SHIFT) & REV_MASK) as u32
}

fn meta_used(m: u64) -> u16 {
    (m >> USED_SHIFT) as u16
}

/// The hash of an encoded key of `len` bytes given as zero-padded words.
#[inline]
fn key_hash(len: usize, words: impl Iterator<Item = u64>) -> u64 {
    let mut h = FxHasher::default();
    h.write_usize(len);
    for w in words {
        h.write_u64(w);
    }
    h.finish()
}

/// The little-endian words of `padded` (a whole number of them).
#[inline]
fn words_of(padded: &[u8]) -> impl Iterator<Item = u64> + '_ {
    padded.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// The hash of a window: its key's and its end's.
#[inline]
fn cell_hash(key_hash: u64, end: i64) -> u64 {
    mix(key_hash ^ (end as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Appends `bytes` as zero-padded little-endian words to `out`.
#[inline]
fn pad_words(bytes: &[u8], out: &mut Vec<u64>) {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        out.push(u64::from_le_bytes(a));
    }
    if !tail.is_empty() {
        // Assembled in a register: a byte copy into a stack word and a wide load of it
        // stalls on store forwarding.
        let mut w = 0u64;
        for (i, &b) in tail.iter().enumerate() {
            w |= u64::from(b) << (8 * i);
        }
        out.push(w);
    }
}

/// The current record's key: `len` bytes at `at` in the batch's key buffer, followed
/// by zeros up to a whole word.
#[derive(Clone, Copy)]
struct CurKey {
    at: u32,
    len: u32,
}

impl CurKey {
    fn padded(self, buf: &[u8]) -> &[u8] {
        &buf[self.at as usize..self.at as usize + (self.len as usize).div_ceil(8) * 8]
    }

    fn bytes(self, buf: &[u8]) -> &[u8] {
        &buf[self.at as usize..(self.at + self.len) as usize]
    }
}

/// Out-of-line keys of slots (those longer than the header holds).
#[derive(Default)]
struct LongKeys {
    keys: Vec<Box<[u8]>>,
    free: Vec<u32>,
}

impl LongKeys {
    /// Stores `key`; returns its index.
    fn add(&mut self, key: &[u8]) -> u32 {
        let k: Box<[u8]> = key.into();
        match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = k;
                i
            }
            None => {
                self.keys.push(k);
                (self.keys.len() - 1) as u32
            }
        }
    }

    /// Removes key `i`, returning its bytes.
    fn remove(&mut self, i: u32) -> Box<[u8]> {
        self.free.push(i);
        std::mem::take(&mut self.keys[i as usize])
    }

    /// Keys held.
    fn len(&self) -> usize {
        self.keys.len() - self.free.len()
    }
}

/// The hash of slot `id`'s window (for removals).
fn slot_hash(accs: &AccStore, long: &LongKeys, id: u32) -> u64 {
    cell_hash(slot_key_hash(accs, long, id), accs.header(id)[H_END] as i64)
}

/// The slot hash of session key slot `id`.
fn key_slot_hash(accs: &AccStore, long: &LongKeys, id: u32) -> u64 {
    mix(slot_key_hash(accs, long, id))
}

/// The [`key_hash`] of slot `id`'s key.
fn slot_key_hash(accs: &AccStore, long: &LongKeys, id: u32) -> u64 {
    let h = accs.header(id);
    if h[H_META] & LONG == 0 {
        let len = meta_len(h[H_META]);
        key_hash(len, h[H_KEY..H_KEY + len.div_ceil(8)].iter().copied())
    } else {
        let key = &long.keys[h[H_KEY] as usize];
        let mut w = Vec::new();
        pad_words(key, &mut w);
        key_hash(key.len(), w.into_iter())
    }
}

/// Whether slot `id` holds key `key`, given also as zero-padded words.
#[inline]
fn slot_key_is(accs: &AccStore, long: &LongKeys, id: u32, key: &[u8], words: impl Iterator<Item = u64>) -> bool {
    let h = accs.header(id);
    if h[H_META] & LONG == 0 {
        meta_len(h[H_META]) == key.len() && h[H_KEY..H_KEY + key.len().div_ceil(8)].iter().copied().eq(words)
    } else {
        *long.keys[h[H_KEY] as usize] == key[..]
    }
}

/// Writes key `key` (also given as zero-padded words) into slot `id`'s header: inline
/// if it fits in `key_words`, else out of line. Returns the metadata bits that say so
/// (its length, or [`LONG`]), for the caller to put into [`H_META`].
fn put_key(
    accs: &mut AccStore,
    long: &mut LongKeys,
    key_words: usize,
    id: u32,
    key: &[u8],
    words: impl Iterator<Item = u64>,
) -> u64 {
    let h = accs.header_mut(id);
    if key.len() > key_words * 8 {
        h[H_KEY] = u64::from(long.add(key));
        LONG
    } else {
        for (w, x) in h[H_KEY..].iter_mut().zip(words) {
            *w = x;
        }
        key.len() as u64
    }
}

/// Slot `id`'s key bytes, into `out`.
fn slot_key(accs: &AccStore, long: &LongKeys, id: u32, out: &mut Vec<u8>) {
    out.clear();
    let h = accs.header(id);
    let len = meta_len(h[H_META]);
    if h[H_META] & LONG != 0 {
        out.extend_from_slice(&long.keys[h[H_KEY] as usize]);
    } else {
        for w in &h[H_KEY..H_KEY + len.div_ceil(8)] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(len);
    }
}

/// What processing a batch produced besides results.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Rows (of the operator's input) that every window refused: late.
    pub late: Vec<usize>,
    /// Rows whose aggregate update failed, with why.
    pub failed: Vec<(usize, &'static str)>,
}

/// The state of one instance (see the module docs).
pub(crate) struct WindowOp {
    spec: Arc<WindowSpec>,
    kinds: Vec<SlotKind>,
    key_kinds: Vec<SlotKind>,
    accs: AccStore,
    /// Aligned windows in memory: slot ids by (key, end). Sessions: key slots by key.
    cells: SlotIndex,
    /// The batch being processed: its rows' encoded keys, and per row the key's bytes in
    /// `batch_keys`, its hash and the hash of its latest window (aligned windows).
    batch_keys: Vec<u8>,
    batch_rows: Vec<(CurKey, u64, u64)>,
    /// Header words for a key (aligned windows); longer keys go to `long_keys`.
    key_words: usize,
    /// The last window step `slide_start` found.
    slide_memo: (i64, i64),
    long_keys: LongKeys,
    /// The current record's key as zero-padded words, and a scratch for slot keys.
    probe: Vec<u64>,
    keybuf: Vec<u8>,
    groups: BTreeMap<i64, Group>,
    /// Sessions: a key's open sessions past its first (which its slot holds), by key
    /// slot; a key has some only when [`EXTRA`] is set in its slot.
    extra: FxHashMap<u32, Sessions>,
    /// Sessions: the header words of a key slot's first session's start, and of its
    /// next early result (with `emit every` only).
    s_start: usize,
    s_next: Option<usize>,
    /// Sessions: key slots due at a watermark (see `advance`), and a scratch for them.
    timers: Timers,
    due_keys: Vec<u32>,
    /// Watermark per upstream instance, and their minimum.
    channels: Vec<i64>,
    pub wm: i64,
    /// The earliest watermark at which something may happen (a firing, a cleanup).
    next_due: i64,
    /// The watermark results are stamped with (the one before the current advance).
    emit_stamp: i64,
    results: BatchBuilder,
    scratch: Vec<u8>,
    pub late: u64,
    /// Where windows beyond `budget` go (None: nowhere, everything stays in memory).
    store: Option<Box<dyn SpillStore>>,
    /// Windows (aligned: one key's window; sessions: one key's sessions) kept in memory.
    budget: usize,
    /// Windows in memory, and in the store.
    hot: usize,
    spilled: usize,
    /// Batches processed: when a window was last updated, to spill the coldest.
    epoch: u32,
    /// Spilled sessions' next due times, by key bytes.
    spill_timers: BinaryHeap<Reverse<(i64, Box<[u8]>)>>,
    /// Where the state stands in its chain of snapshots (None before the first
    /// snapshot or restore, and after a failed delta).
    gen: Option<Generation>,
    /// Input processed since the last snapshot, delta or restore (a delta is applied
    /// only to an operator that has processed nothing since).
    touched: bool,
    /// Changes since the last snapshot or delta (see [`WindowOp::snapshot_delta`]).
    changes: Changes,
}

/// What changed since the last snapshot or delta: what [`WindowOp::snapshot_delta`]
/// encodes. Tracked once there is a snapshot to be relative to.
#[derive(Default)]
struct Changes {
    /// [`CHANGED`] while changes are tracked, else 0 (or'ed into a slot's metadata).
    track: u64,
    /// Aligned windows: slots whose [`CHANGED`] bit was set (each once while it is set;
    /// a freed slot's bit is cleared, so stale ids are skipped).
    slots: Vec<u32>,
    /// Sessions: per key id, changed since; and the ids flagged.
    keys: Vec<bool>,
    key_ids: Vec<u32>,
    /// Store keys of windows (or a key's sessions) changed since that left memory, or
    /// were changed in the store: looked up in memory, then in the store, at delta time.
    out: BTreeSet<Vec<u8>>,
    /// Aligned windows: groups created or changed (fired, next early result), and
    /// groups dropped with all their windows.
    groups: BTreeSet<i64>,
    dropped: Vec<i64>,
    /// Sessions: keys whose last session was dropped, each as length-prefixed bytes.
    removed: Vec<u8>,
    removed_n: usize,
}

impl Changes {
    fn on(&self) -> bool {
        self.track != 0
    }

    /// Flags session key `key` as changed.
    #[inline]
    fn key(&mut self, key: u32) {
        let k = key as usize;
        if self.keys.len() <= k {
            self.keys.resize(k + 1, false);
        }
        if !self.keys[k] {
            self.keys[k] = true;
            self.key_ids.push(key);
        }
    }

    /// Records that session key `kb` has no sessions left.
    fn removed(&mut self, kb: &[u8]) {
        self.removed.extend_from_slice(&(kb.len() as u32).to_le_bytes());
        self.removed.extend_from_slice(kb);
        self.removed_n += 1;
    }
}

/// `ts - ts.rem_euclid(slide)`: the start of the last window step at or before `ts`
/// (i64::MIN where that lies below it).
/// `memo` holds the last step found (`[start, start + slide)`, initially empty); a
/// record in it, as nearly every record of a batch is, costs no 64-bit division (which
/// was an eighth of the aligned path's time).
#[inline]
fn slide_start(memo: &mut (i64, i64), ts: i64, slide: i64) -> i64 {
    if ts >= memo.0 && ts < memo.1 {
        return memo.0;
    }
    match ts.checked_sub(ts.rem_euclid(slide)) {
        Some(start) => {
            *memo = (start, start.saturating_add(slide));
            start
        }
        // Clamped, not a step boundary: not remembered.
        None => i64::MIN,
    }
}

/// `end - 1 + lateness`, saturating (the watermark at which a window is gone).
fn gone_at(end: i64, lateness: i64) -> i64 {
    end.saturating_sub(1).saturating_add(lateness)
}

impl WindowOp {
    pub fn new(spec: Arc<WindowSpec>, input: &Layout, upstream: usize) -> WindowOp {
        WindowOp::build(spec, input.slot_kinds.clone(), upstream)
    }

    /// [`WindowOp::new`] for input rows of slot kinds `kinds`.
    fn build(spec: Arc<WindowSpec>, kinds: Vec<SlotKind>, upstream: usize) -> WindowOp {
        let acc = spec.acc.clone();
        let key_kinds: Vec<SlotKind> = spec.key_fields.iter().map(|&f| kinds[f]).collect();
        let results = BatchBuilder::new(spec.result.clone());
        // Room in the header for a key: fixed-width fields exactly, strings' flags and
        // lengths; room for their bytes comes as keys arrive (see `fit_key`).
        let key_bytes: usize = key_kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                SlotKind::Str | SlotKind::Encoded if i + 1 == key_kinds.len() => 1,
                SlotKind::Str | SlotKind::Encoded => 5,
                SlotKind::Dec128 { .. } => 17,
                _ => 9,
            })
            .sum();
        let key_words = key_bytes.min(INLINE_KEY_MAX).div_ceil(8).max(1);
        let s_start = H_KEY + key_words;
        let s_next = spec.emit_every.map(|_| s_start + 1);
        let accs = match spec.window {
            Window::Session { .. } => AccStore::with_header(acc, s_start + 1 + usize::from(s_next.is_some())),
            _ => AccStore::with_header(acc, H_KEY + key_words),
        };
        WindowOp {
            kinds,
            key_kinds,
            accs,
            cells: SlotIndex::default(),
            batch_keys: Vec::new(),
            batch_rows: Vec::new(),
            key_words,
            slide_memo: (1, 0),
            long_keys: LongKeys::default(),
            probe: Vec::new(),
            keybuf: Vec::new(),
            groups: BTreeMap::new(),
            extra: FxHashMap::default(),
            s_start,
            s_next,
            timers: match spec.window {
                Window::Session { gap_ms } => Timers::for_gap(gap_ms),
                _ => Timers::default(),
            },
            due_keys: Vec::new(),
            channels: vec![WM_MIN; upstream.max(1)],
            wm: WM_MIN,
            next_due: WM_MAX,
            emit_stamp: WM_MIN,
            results,
            scratch: Vec::new(),
            late: 0,
            store: None,
            budget: usize::MAX,
            hot: 0,
            epoch: 0,
            spill_timers: BinaryHeap::new(),
            spilled: 0,
            gen: None,
            touched: false,
            changes: Changes::default(),
            spec,
        }
    }

    /// Keeps at most `budget` windows in memory (an aligned window of one key, or one
    /// key's sessions), moving the least recently updated ones into `store`.
    pub fn with_store(mut self, store: Box<dyn SpillStore>, budget: usize) -> WindowOp {
        self.store = Some(store);
        self.budget = budget;
        self
    }

    /// Windows in memory, windows spilled, and the bytes the in-memory state holds.
    pub fn state_size(&self) -> (usize, usize, usize) {
        let bytes = self.accs.bytes()
            + self.cells.bytes()
            + self.long_keys.keys.capacity() * 16
            + self.long_keys.keys.iter().map(|k| k.len()).sum::<usize>()
            + self.groups.values().map(|g| g.order.capacity() * 4 + 96).sum::<usize>()
            + self.extra.capacity() * (4 + std::mem::size_of::<Sessions>())
            + self
                .extra
                .values()
                .filter(|l| l.spilled())
                .map(|l| l.capacity() * std::mem::size_of::<Session>())
                .sum::<usize>()
            + self.timers.bytes();
        (self.hot, self.spilled, bytes)
    }

    /// Takes the results emitted so far (rows of `spec.result`).
    pub fn take_results(&mut self) -> Option<Batch> {
        if self.results.is_empty() {
            return None;
        }
        Some(std::mem::replace(&mut self.results, BatchBuilder::new(self.spec.result.clone())).finish())
    }

    /// Processes `batch` (rows from upstream instance `from`) in order.
    pub fn process(&mut self, batch: &Batch, from: usize) -> Result<Outcome, String> {
        let mut outcome = Outcome::default();
        let spec = self.spec.clone();
        self.touched = true;
        self.epoch = self.epoch.wrapping_add(1);
        let (size, slide) = match spec.window {
            Window::Tumbling { size_ms } => (size_ms, size_ms),
            Window::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            Window::Session { .. } => (0, 0),
        };
        let aligned = !matches!(spec.window, Window::Session { .. });
        // First pass: every row's key and hash, so that the second can prefetch ahead
        // the bucket of a row's slot (its latest aligned window, or its session key) 16
        // rows ahead and the slot that bucket points to 8 rows ahead (see slots.rs).
        self.batch_keys.clear();
        self.batch_rows.clear();
        // (Keys are hashed in a loop of their own: a hash reading the words of a key
        // just written byte-wise would stall on store forwarding.)
        for r in 0..batch.len {
            let row = batch.row(r);
            let at = self.batch_keys.len();
            encode_key(&row, &spec.key_fields, &self.kinds, &mut self.batch_keys);
            let len = self.batch_keys.len() - at;
            let cur = CurKey { at: at as u32, len: len as u32 };
            // (Zeros pushed, not a resize: a call to memset for a few bytes costs more.)
            for _ in len..len.div_ceil(8) * 8 {
                self.batch_keys.push(0);
            }
            if aligned {
                let ts = row.i64(spec.ts_field).saturating_add(spec.ts_offset);
                let end = slide_start(&mut self.slide_memo, ts, slide).saturating_add(size);
                self.batch_rows.push((cur, 0, end as u64));
            } else {
                self.batch_rows.push((cur, 0, 0));
            }
        }
        for (cur, kh, h) in &mut self.batch_rows {
            *kh = key_hash(cur.len as usize, words_of(cur.padded(&self.batch_keys)));
            *h = if aligned { cell_hash(*kh, *h as i64) } else { mix(*kh) };
        }
        // Rows ahead whose bucket, and whose slot, are prefetched.
        const BUCKET_AHEAD: usize = 16;
        const SLOT_AHEAD: usize = 8;
        // Sessions of few keys stay in the caches: prefetching them only costs.
        let ahead = aligned || self.hot > PREFETCH_KEYS;
        if ahead {
            for r in 0..BUCKET_AHEAD.min(batch.len) {
                self.cells.prefetch(self.batch_rows[r].2);
            }
        }
        for r in 0..batch.len {
            if ahead {
                if r + BUCKET_AHEAD < batch.len {
                    self.cells.prefetch(self.batch_rows[r + BUCKET_AHEAD].2);
                }
                if r + SLOT_AHEAD < batch.len {
                    if let Some(id) = self.cells.candidate(self.batch_rows[r + SLOT_AHEAD].2) {
                        self.accs.prefetch(id);
                    }
                }
            }
            let row = batch.row(r);
            let stamp = row.i64(spec.stamp_field);
            if stamp > self.channels[from] {
                self.channels[from] = stamp;
                let m = self.channels.iter().copied().min().unwrap_or(stamp);
                if m > self.wm {
                    self.advance(m)?;
                }
            }
            let ts = row.i64(spec.ts_field).saturating_add(spec.ts_offset);
            let taken = if aligned {
                let (cur, kh, _) = self.batch_rows[r];
                self.aligned(cur, kh, &row, ts, stamp, size, slide, &mut outcome, r)?
            } else {
                let Window::Session { gap_ms } = spec.window else { unreachable!("session") };
                let (cur, _, h) = self.batch_rows[r];
                self.session(cur, h, &row, ts, stamp, gap_ms, &mut outcome, r)?
            };
            if !taken && outcome.failed.last().is_none_or(|(i, _)| *i != r) {
                self.late += 1;
                outcome.late.push(r);
            }
        }
        self.spill_if_over()?;
        Ok(outcome)
    }

    /// A watermark from upstream instance `from`.
    pub fn watermark(&mut self, from: usize, wm: i64) -> Result<(), String> {
        self.touched = true;
        if wm > self.channels[from] {
            self.channels[from] = wm;
            let m = self.channels.iter().copied().min().unwrap_or(wm);
            if m > self.wm {
                self.advance(m)?;
            }
        }
        self.spill_if_over()
    }

    /// End of input: every window fires and is gone.
    pub fn finish(&mut self) -> Result<(), String> {
        self.touched = true;
        for c in &mut self.channels {
            *c = WM_MAX;
        }
        self.advance(WM_MAX)
    }

    fn store(&mut self) -> Result<&mut Box<dyn SpillStore>, String> {
        self.store.as_mut().ok_or_else(|| "window state was spilled without a store".to_string())
    }

    /// The slot of key `cur`'s window ending at `end`, if it is in memory.
    #[inline]
    fn find_cell(&self, cur: CurKey, kh: u64, end: i64) -> Option<u32> {
        let (accs, long) = (&self.accs, &self.long_keys);
        let (key, probe) = (cur.bytes(&self.batch_keys), cur.padded(&self.batch_keys));
        self.cells.find(cell_hash(kh, end), |id| {
            accs.header(id)[H_END] as i64 == end && slot_key_is(accs, long, id, key, words_of(probe))
        })
    }

    /// Loads key `cur` into `scratch` and `probe`, the current key of the paths that
    /// create and restore windows.
    fn load_key(&mut self, cur: CurKey) {
        self.scratch.clear();
        self.scratch.extend_from_slice(cur.bytes(&self.batch_keys));
        self.probe.clear();
        self.probe.extend(words_of(cur.padded(&self.batch_keys)));
    }

    /// Makes slot `id` the current key's window ending at `end`: header, table, group.
    /// `changed`: a new window (a change to track), not one read back or restored.
    fn register_cell(&mut self, id: u32, kh: u64, end: i64, emitted: u32, dirty: bool, changed: bool) {
        self.fit_key(self.scratch.len());
        let key_bits =
            put_key(&mut self.accs, &mut self.long_keys, self.key_words, id, &self.scratch, self.probe.iter().copied());
        let epoch = self.epoch;
        let h = self.accs.header_mut(id);
        h[H_END] = end as u64;
        h[H_META] = key_bits
            | (u64::from(epoch as u16) << USED_SHIFT)
            | ((u64::from(emitted) & REV_MASK) << REV_SHIFT)
            | if dirty { DIRTY } else { 0 }
            | if changed { self.changes.track } else { 0 };
        self.cells.insert(cell_hash(kh, end), id);
        if changed && self.changes.on() {
            self.changes.slots.push(id);
        }
        let every = self.spec.emit_every;
        let size = match self.spec.window {
            Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => size_ms,
            Window::Session { .. } => 0,
        };
        let g = match self.groups.entry(end) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                if self.changes.on() {
                    self.changes.groups.insert(end);
                }
                e.insert(Group { next_early: every.map_or(WM_MAX, |d| end - size + d), ..Group::default() })
            }
        };
        g.order.push(id);
        self.hot += 1;
    }

    /// Makes room in every slot for a key of `len` bytes inline, if more than an eighth
    /// of the slots in memory would otherwise hold theirs out of line and it is at most
    /// [`KEY_ROOM_MAX`] bytes: a slot's room for its key follows the keys seen, so that
    /// short keys take no more than they need.
    #[inline]
    fn fit_key(&mut self, len: usize) {
        if len <= self.key_words * 8 || len > KEY_ROOM_MAX {
            return;
        }
        if (self.long_keys.len() + 1) * 8 > self.hot {
            self.widen_keys(len.div_ceil(8));
        }
    }

    /// Widens every slot's key room to `words` words, and moves the keys held out of
    /// line that fit now into their slots.
    #[cold]
    fn widen_keys(&mut self, words: usize) {
        let extra = words - self.key_words;
        self.accs.widen(H_KEY + self.key_words, extra);
        self.key_words = words;
        self.s_start += extra;
        if let Some(at) = &mut self.s_next {
            *at += extra;
        }
        let mut padded = Vec::new();
        for id in 0..self.accs.slots() {
            let m = self.accs.header(id)[H_META];
            let i = self.accs.header(id)[H_KEY] as u32;
            if m & LONG == 0 || self.long_keys.keys[i as usize].len() > words * 8 {
                continue;
            }
            let key = self.long_keys.remove(i);
            padded.clear();
            pad_words(&key, &mut padded);
            let (accs, long) = (&mut self.accs, &mut self.long_keys);
            let bits = put_key(accs, long, words, id, &key, padded.iter().copied());
            accs.header_mut(id)[H_META] = (m & !LONG) | bits;
        }
    }

    /// Forgets slot `id` (an aligned window in memory): table, out-of-line key, words.
    /// Its group's order is the caller's.
    fn free_cell(&mut self, id: u32) {
        let hash = slot_hash(&self.accs, &self.long_keys, id);
        self.cells.remove(hash, id);
        let h = self.accs.header_mut(id);
        let m = h[H_META];
        // (No slot but a live one says LONG: see `widen_keys`.)
        h[H_META] &= !(CHANGED | LONG);
        if m & LONG != 0 {
            let i = h[H_KEY] as u32;
            self.long_keys.remove(i);
        }
        self.accs.free(id);
        self.hot -= 1;
    }

    /// The current key's window ending at `end` read back from the store into a slot,
    /// if it was spilled.
    fn cell_from_store(&mut self, kh: u64, end: i64) -> Result<Option<u32>, String> {
        if self.groups.get(&end).is_none_or(|g| g.spilled == 0) {
            return Ok(None);
        }
        let skey = aligned_key(end, &self.scratch);
        let Some(bytes) = self.store()?.take(&skey)? else { return Ok(None) };
        let (w, _) = Win::decode(&mut self.accs, &bytes, self.epoch)?;
        self.register_cell(w.acc, kh, end, w.emitted, w.dirty, false);
        if let Some(g) = self.groups.get_mut(&end) {
            g.spilled -= 1;
        }
        self.spilled -= 1;
        Ok(Some(w.acc))
    }

    /// Emits slot `id`'s window as its next revision.
    fn emit_cell(&mut self, id: u32, start: i64, end: i64) -> Result<(), String> {
        slot_key(&self.accs, &self.long_keys, id, &mut self.keybuf);
        let m = self.accs.header(id)[H_META];
        let w = Win { acc: id, emitted: meta_rev(m), dirty: false, used: 0 };
        self.emit_keybuf(start, end, w)?;
        let next = u64::from(meta_rev(m).wrapping_add(1)) & REV_MASK;
        let track = self.changes.track;
        self.accs.header_mut(id)[H_META] = (m & !(DIRTY | (REV_MASK << REV_SHIFT))) | (next << REV_SHIFT) | track;
        if !m & track != 0 {
            self.changes.slots.push(id);
        }
        Ok(())
    }

    /// Adds a record of the current key (hashed `kh`) to each aligned window that holds
    /// `ts` and is not gone for it; false if none took it.
    #[allow(clippy::too_many_arguments)]
    fn aligned(
        &mut self,
        cur: CurKey,
        kh: u64,
        row: &RowRef,
        ts: i64,
        stamp: i64,
        size: i64,
        slide: i64,
        outcome: &mut Outcome,
        r: usize,
    ) -> Result<bool, String> {
        let lateness = self.spec.lateness;
        let last_start = slide_start(&mut self.slide_memo, ts, slide);
        let mut taken = false;
        let mut start = last_start;
        // Windows [start, start + size) holding ts, latest first.
        while start > ts.saturating_sub(size) {
            let end = start.saturating_add(size);
            start = start.saturating_sub(slide);
            if gone_at(end, lateness) <= stamp {
                // This and every earlier window are gone for this record.
                break;
            }
            let found = match self.find_cell(cur, kh, end) {
                Some(id) => Some(id),
                None => {
                    self.load_key(cur);
                    self.cell_from_store(kh, end)?
                }
            };
            let id = match found {
                Some(id) => id,
                None => {
                    // A new window: registered only once the record is in it.
                    let id = self.accs.alloc();
                    if let Err(e) = self.accs.update(id, row, ts) {
                        self.accs.free(id);
                        outcome.failed.push((r, e));
                        return Ok(false);
                    }
                    self.register_cell(id, kh, end, 0, true, true);
                    let g = &self.groups[&end];
                    let due =
                        if g.fired { gone_at(end, lateness) } else { (end - 1).min(g.next_early.saturating_sub(1)) };
                    self.next_due = self.next_due.min(due);
                    if g.fired {
                        // Within allowed lateness: the window fires again, now.
                        self.emit_cell(id, end - size, end)?;
                    }
                    taken = true;
                    continue;
                }
            };
            if let Err(e) = self.accs.update(id, row, ts) {
                outcome.failed.push((r, e));
                return Ok(false);
            }
            let (epoch, track) = (self.epoch, self.changes.track);
            let h = self.accs.header_mut(id);
            let m = h[H_META];
            h[H_META] = (m & !(0xFFFF << USED_SHIFT)) | (u64::from(epoch as u16) << USED_SHIFT) | DIRTY | track;
            if !m & track != 0 {
                // Changed since the last snapshot: once per window and snapshot.
                self.changes.slots.push(id);
            }
            // Only a window the watermark has reached can have fired.
            if end - 1 <= self.wm && self.groups.get(&end).is_some_and(|g| g.fired) {
                // Within allowed lateness: the window fires again, now.
                self.emit_cell(id, end - size, end)?;
            }
            taken = true;
        }
        Ok(taken)
    }

    /// The slot of session key `cur` (whose slot hash is `h`), if it has sessions in
    /// memory.
    #[inline]
    fn find_key(&self, cur: CurKey, h: u64) -> Option<u32> {
        let (accs, long) = (&self.accs, &self.long_keys);
        let (key, probe) = (cur.bytes(&self.batch_keys), cur.padded(&self.batch_keys));
        self.cells.find(h, |id| slot_key_is(accs, long, id, key, words_of(probe)))
    }

    /// The slot of the session key in `scratch` and `probe` (whose slot hash is `h`),
    /// if it has sessions in memory.
    fn find_loaded_key(&self, h: u64) -> Option<u32> {
        let (accs, long, key, probe) = (&self.accs, &self.long_keys, &self.scratch, &self.probe);
        self.cells.find(h, |id| slot_key_is(accs, long, id, key, probe.iter().copied()))
    }

    /// Loads session key `kb` into `scratch` and `probe`; returns its slot hash.
    fn load_key_bytes(&mut self, kb: &[u8]) -> u64 {
        self.scratch.clear();
        self.scratch.extend_from_slice(kb);
        self.probe.clear();
        pad_words(kb, &mut self.probe);
        mix(key_hash(kb.len(), self.probe.iter().copied()))
    }

    /// The first session of key slot `id`.
    fn primary(&self, id: u32) -> Session {
        let h = self.accs.header(id);
        let m = h[H_META];
        Session {
            start: h[self.s_start] as i64,
            end: h[H_END] as i64,
            win: Win { acc: id, emitted: meta_rev(m), dirty: m & DIRTY != 0, used: u32::from(meta_used(m)) },
            fired: m & FIRED != 0,
            next_early: self.s_next.map_or(WM_MAX, |at| h[at] as i64),
        }
    }

    /// Key slot `id`'s open sessions, its own first.
    fn list_of(&self, id: u32) -> Sessions {
        let mut list = Sessions::new();
        list.push(self.primary(id));
        if self.accs.header(id)[H_META] & EXTRA != 0 {
            if let Some(more) = self.extra.get(&id) {
                list.extend(more.iter().copied());
            }
        }
        list
    }

    /// Makes `list` (not empty) key slot `id`'s open sessions. The session whose
    /// accumulator is the slot's stays in the slot; if there is none (it was dropped),
    /// the first one's accumulator moves into the slot.
    fn put_list(&mut self, id: u32, mut list: Sessions) {
        debug_assert!(!list.is_empty(), "a key slot holds at least one session");
        let own = match list.iter().position(|s| s.win.acc == id) {
            Some(i) => i,
            None => {
                let a = list[0].win.acc;
                // The slot's accumulator (a dropped session's) goes with slot `a`.
                self.accs.swap_acc(id, a);
                self.accs.free(a);
                list[0].win.acc = id;
                0
            }
        };
        list.swap(0, own);
        let had_more = self.write_first(id, &list[0], list.len() > 1);
        if list.len() > 1 {
            self.extra.insert(id, list[1..].iter().copied().collect());
        } else if had_more {
            self.extra.remove(&id);
        }
    }

    /// Writes `first` (whose accumulator is the slot's) into key slot `id` as its first
    /// session, flagged as having `more`; returns whether it had more before.
    #[inline]
    fn write_first(&mut self, id: u32, first: &Session, more: bool) -> bool {
        let (s_start, s_next) = (self.s_start, self.s_next);
        let h = self.accs.header_mut(id);
        let had_more = h[H_META] & EXTRA != 0;
        let keep = h[H_META] & (0x1FFF | LIVE | LONG | CHANGED);
        h[H_END] = first.end as u64;
        h[s_start] = first.start as u64;
        if let Some(at) = s_next {
            h[at] = first.next_early as u64;
        }
        h[H_META] = keep
            | (u64::from(first.win.used as u16) << USED_SHIFT)
            | ((u64::from(first.win.emitted) & REV_MASK) << REV_SHIFT)
            | if first.win.dirty { DIRTY } else { 0 }
            | if first.fired { FIRED } else { 0 }
            | if more { EXTRA } else { 0 };
        had_more
    }

    /// Makes `list` (not empty) the sessions of the key in `scratch` and `probe`, new
    /// in memory, whose slot hash is `h`; its first session's slot becomes the key's.
    fn new_key(&mut self, h: u64, list: Sessions) -> u32 {
        let id = list[0].win.acc;
        self.fit_key(self.scratch.len());
        let key_bits =
            put_key(&mut self.accs, &mut self.long_keys, self.key_words, id, &self.scratch, self.probe.iter().copied());
        self.accs.header_mut(id)[H_META] = key_bits | LIVE;
        self.cells.insert(h, id);
        self.hot += 1;
        self.put_list(id, list);
        id
    }

    /// Forgets key slot `id`, whose sessions are gone (their other accumulators freed).
    fn drop_key(&mut self, id: u32) {
        let h = key_slot_hash(&self.accs, &self.long_keys, id);
        self.cells.remove(h, id);
        let hd = self.accs.header_mut(id);
        let m = hd[H_META];
        hd[H_META] = 0;
        if m & LONG != 0 {
            let i = hd[H_KEY] as u32;
            self.long_keys.remove(i);
        }
        if m & EXTRA != 0 {
            self.extra.remove(&id);
        }
        self.accs.free(id);
        self.hot -= 1;
    }

    /// The sessions of the key in `scratch` and `probe` (slot hash `h`) read back from
    /// the store into memory, if they were spilled; returns its slot.
    fn key_from_store(&mut self, h: u64) -> Result<Option<u32>, String> {
        if self.spilled == 0 {
            return Ok(None);
        }
        let skey = session_key(&self.scratch);
        let Some(bytes) = self.store()?.take(&skey)? else { return Ok(None) };
        let list = decode_sessions(&mut self.accs, &bytes, self.epoch)?;
        if list.is_empty() {
            return Err("spilled sessions hold none".into());
        }
        self.spilled -= 1;
        let id = self.new_key(h, list);
        for s in self.list_of(id) {
            self.timers.push(s.due(self.spec.lateness), id);
        }
        Ok(Some(id))
    }

    /// Adds a record of key `cur` (slot hash `h`) to the session it opens, extends or
    /// bridges; false if it is late for that session.
    #[allow(clippy::too_many_arguments)]
    fn session(
        &mut self,
        cur: CurKey,
        h: u64,
        row: &RowRef,
        ts: i64,
        stamp: i64,
        gap: i64,
        outcome: &mut Outcome,
        r: usize,
    ) -> Result<bool, String> {
        let lateness = self.spec.lateness;
        let (mut start, mut end) = (ts, ts.saturating_add(gap));
        let mut found = self.find_key(cur, h);
        if let Some(id) = found {
            // The common case: the key's one session, not fired, takes the record.
            let hd = self.accs.header(id);
            let m = hd[H_META];
            let (s_start, s_end) = (hd[self.s_start] as i64, hd[H_END] as i64);
            if m & (EXTRA | FIRED) == 0 && s_start <= end && s_end >= start {
                let (start, end) = (s_start.min(start), s_end.max(end));
                if gone_at(end, lateness) <= stamp {
                    return Ok(false);
                }
                if let Err(e) = self.accs.update(id, row, ts) {
                    outcome.failed.push((r, e));
                    return Ok(false);
                }
                let (epoch, at) = (self.epoch, self.s_start);
                let hd = self.accs.header_mut(id);
                hd[at] = start as u64;
                hd[H_END] = end as u64;
                hd[H_META] = (m & !(0xFFFF << USED_SHIFT)) | (u64::from(epoch as u16) << USED_SHIFT) | DIRTY;
                // It only grew: its timer stays (see below).
                if self.changes.on() {
                    self.changes.key(id);
                }
                return Ok(true);
            }
        } else if self.spilled > 0 {
            self.load_key(cur);
            found = self.key_from_store(h)?;
        }
        let Some(id) = found else {
            // A new key: its first session, straight into a new slot.
            if gone_at(end, lateness) <= stamp {
                return Ok(false);
            }
            return self.open_key(cur, h, row, ts, gap, outcome, r);
        };
        let mut list = self.list_of(id);
        // Open sessions this record overlaps or touches, merged into one window: into
        // the key slot's own, if it is one of them (it stays in the slot).
        let hit: SmallVec<[usize; 4]> =
            list.iter().enumerate().filter(|(_, s)| s.start <= end && s.end >= start).map(|(i, _)| i).collect();
        // Open sessions never touch each other, so only the record joins them.
        for &i in &hit {
            start = start.min(list[i].start);
            end = end.max(list[i].end);
        }
        if gone_at(end, lateness) <= stamp {
            return Ok(false);
        }
        let into = hit.iter().copied().find(|&i| list[i].win.acc == id).or(hit.first().copied());
        let target = match into {
            Some(i) => list[i],
            None => Session {
                start,
                end,
                win: Win { acc: self.accs.alloc(), emitted: 0, dirty: false, used: 0 },
                fired: false,
                next_early: self.spec.emit_every.map_or(WM_MAX, |d| start.saturating_add(d)),
            },
        };
        if let Err(e) = self.accs.update(target.win.acc, row, ts) {
            if into.is_none() {
                self.accs.free(target.win.acc);
            }
            outcome.failed.push((r, e));
            return Ok(false);
        }
        let mut merged = target;
        merged.start = start;
        merged.end = end;
        merged.win.dirty = true;
        merged.win.used = self.epoch;
        // Fold the other hit sessions into it.
        for &i in &hit {
            if Some(i) == into {
                continue;
            }
            let other = list[i];
            self.accs.merge(merged.win.acc, other.win.acc).map_err(|e| e.to_string())?;
            self.accs.free(other.win.acc);
            merged.win.emitted = merged.win.emitted.max(other.win.emitted);
            merged.fired |= other.fired;
            merged.next_early = merged.next_early.min(other.next_early);
        }
        let folded: SmallVec<[u32; 4]> = hit.iter().filter(|&&i| Some(i) != into).map(|&i| list[i].win.acc).collect();
        list.retain(|s| !folded.contains(&s.win.acc));
        let idx = match list.iter().position(|s| s.win.acc == merged.win.acc) {
            Some(i) => {
                list[i] = merged;
                i
            }
            None => {
                list.push(merged);
                list.len() - 1
            }
        };
        // A record that lands in a session that had fired (within allowed lateness) is
        // an update, emitted now; the session fires again at its end if that moved on.
        if merged.fired {
            self.keybuf.clear();
            self.keybuf.extend_from_slice(cur.bytes(&self.batch_keys));
            self.emit_keybuf(merged.start, merged.end, merged.win)?;
            let s = &mut list[idx];
            s.win.emitted += 1;
            s.win.dirty = false;
            s.fired = s.end - 1 <= self.wm;
        }
        // A session that only grew keeps its timer: the earlier entry pops first and
        // fire_sessions re-arms it at its current due time. New sessions and ones that
        // fired (whose due time may have moved earlier) get an entry now.
        let due = list[idx].due(lateness);
        self.put_list(id, list);
        if into.is_none() || merged.fired {
            self.timers.push(due, id);
        }
        self.next_due = self.next_due.min(due);
        if self.changes.on() {
            self.changes.key(id);
        }
        Ok(true)
    }

    /// Opens key `cur` (slot hash `h`), not in memory, with a record's session
    /// `[ts, ts + gap)` in a new slot; false if the record's update failed.
    #[allow(clippy::too_many_arguments)]
    fn open_key(
        &mut self,
        cur: CurKey,
        h: u64,
        row: &RowRef,
        ts: i64,
        gap: i64,
        outcome: &mut Outcome,
        r: usize,
    ) -> Result<bool, String> {
        let id = self.accs.alloc();
        if let Err(e) = self.accs.update(id, row, ts) {
            self.accs.free(id);
            outcome.failed.push((r, e));
            return Ok(false);
        }
        self.fit_key(cur.len as usize);
        let (key, words) = (cur.bytes(&self.batch_keys), words_of(cur.padded(&self.batch_keys)));
        let key_bits = put_key(&mut self.accs, &mut self.long_keys, self.key_words, id, key, words);
        self.accs.header_mut(id)[H_META] = key_bits | LIVE;
        self.cells.insert(h, id);
        self.hot += 1;
        let s = Session {
            start: ts,
            end: ts.saturating_add(gap),
            win: Win { acc: id, emitted: 0, dirty: true, used: self.epoch },
            fired: false,
            next_early: self.spec.emit_every.map_or(WM_MAX, |d| ts.saturating_add(d)),
        };
        self.write_first(id, &s, false);
        let due = s.due(self.spec.lateness);
        self.timers.push(due, id);
        self.next_due = self.next_due.min(due);
        if self.changes.on() {
            self.changes.key(id);
        }
        Ok(true)
    }

    /// Moves the watermark to `wm`, firing and dropping what it passes.
    fn advance(&mut self, wm: i64) -> Result<(), String> {
        self.emit_stamp = self.wm;
        self.wm = wm;
        if wm < self.next_due {
            return Ok(());
        }
        let mut next_due = WM_MAX;
        match self.spec.window {
            Window::Session { .. } => {
                // Spilled sessions that are due come back first.
                while let Some(Reverse((at, _))) = self.spill_timers.peek() {
                    if *at > wm {
                        next_due = next_due.min(*at);
                        break;
                    }
                    let Some(Reverse((_, kb))) = self.spill_timers.pop() else { break };
                    let h = self.load_key_bytes(&kb);
                    if self.find_loaded_key(h).is_none() {
                        self.key_from_store(h)?;
                    }
                }
                let mut keys = std::mem::take(&mut self.due_keys);
                while self.timers.pop_due(wm, &mut keys) {
                    // The keys due are random: prefetch their slots 8 ahead and, from
                    // the slots (by then cached), the index buckets that dropping them
                    // writes 4 ahead.
                    for (i, &key) in keys.iter().enumerate() {
                        if let Some(&k) = keys.get(i + 8) {
                            self.accs.prefetch(k);
                        }
                        if let Some(&k) = keys.get(i + 4) {
                            if self.accs.header(k)[H_META] & LIVE != 0 {
                                self.cells.prefetch(key_slot_hash(&self.accs, &self.long_keys, k));
                            }
                        }
                        self.fire_sessions(key)?;
                    }
                }
                self.due_keys = keys;
                if let Some(at) = self.timers.first_due() {
                    next_due = next_due.min(at);
                }
                // The keys due next, at a later watermark (most often the next
                // record's): their slots are on the way by then.
                for k in self.timers.next_ids(16) {
                    self.accs.prefetch(k);
                }
            }
            Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => {
                let lateness = self.spec.lateness;
                let due: Vec<i64> = self.groups.keys().copied().take_while(|&end| end - 1 <= wm).collect();
                for end in due {
                    let gone = gone_at(end, lateness) <= wm;
                    let g = self.groups.get_mut(&end).expect("group");
                    if !g.fired {
                        g.fired = true;
                        if self.changes.on() {
                            self.changes.groups.insert(end);
                        }
                        self.emit_group(end, size_ms, true, gone)?;
                    }
                    if gone {
                        self.drop_group(end)?;
                    }
                }
                // Early results of groups still open.
                if let Some(every) = self.spec.emit_every {
                    let early: Vec<i64> = self
                        .groups
                        .iter()
                        .filter(|(_, g)| !g.fired && g.next_early - 1 <= wm)
                        .map(|(&end, _)| end)
                        .collect();
                    for end in early {
                        self.emit_group(end, size_ms, false, false)?;
                        let g = self.groups.get_mut(&end).expect("group");
                        while g.next_early - 1 <= wm {
                            g.next_early = g.next_early.saturating_add(every);
                        }
                        if self.changes.on() {
                            self.changes.groups.insert(end);
                        }
                    }
                }
                for (&end, g) in &self.groups {
                    let due =
                        if g.fired { gone_at(end, lateness) } else { (end - 1).min(g.next_early.saturating_sub(1)) };
                    next_due = next_due.min(due);
                }
            }
        }
        self.next_due = next_due;
        Ok(())
    }

    /// Emits the group's windows: changed ones for early results, all for the final
    /// one. Spilled windows are read back for it (and written back unless `gone`).
    fn emit_group(&mut self, end: i64, size: i64, final_: bool, gone: bool) -> Result<(), String> {
        let g = self.groups.get_mut(&end).expect("group");
        let order = std::mem::take(&mut g.order);
        for &id in &order {
            if final_ || self.accs.header(id)[H_META] & DIRTY != 0 {
                self.emit_cell(id, end - size, end)?;
            }
        }
        self.groups.get_mut(&end).expect("group").order = order;
        if self.groups[&end].spilled == 0 {
            return Ok(());
        }
        let prefix = aligned_key(end, &[]);
        let spilled = self.store()?.take_prefix(&prefix)?;
        let mut back = Vec::new();
        for (k, v) in spilled {
            let (mut w, _) = Win::decode(&mut self.accs, &v, 0)?;
            let kb = &k[prefix.len()..];
            let emitted = final_ || w.dirty;
            if emitted {
                self.emit(kb, end - size, end, w)?;
                w.emitted += 1;
                w.dirty = false;
            }
            if !gone {
                back.clear();
                w.encode(&self.accs, &mut back);
                self.store()?.put(&k, &back)?;
                if emitted && self.changes.on() {
                    // Changed where it lies: in the store.
                    self.changes.out.insert(k);
                }
            }
            self.accs.free(w.acc);
        }
        Ok(())
    }

    fn drop_group(&mut self, end: i64) -> Result<(), String> {
        let Some(g) = self.groups.remove(&end) else { return Ok(()) };
        for id in g.order {
            self.free_cell(id);
        }
        if self.changes.on() {
            self.changes.dropped.push(end);
            // Its windows' changes that left memory go with it.
            if !self.changes.out.is_empty() {
                let prefix = aligned_key(end, &[]);
                let gone: Vec<Vec<u8>> =
                    self.changes.out.range(prefix.clone()..).take_while(|k| k.starts_with(&prefix)).cloned().collect();
                for k in gone {
                    self.changes.out.remove(&k);
                }
            }
        }
        if g.spilled > 0 {
            // Emitted already (emit_group read them): their state goes.
            let _ = self.store()?.take_prefix(&aligned_key(end, &[]))?;
            self.spilled -= g.spilled as usize;
        }
        Ok(())
    }

    /// Fires, updates early and drops the sessions of key slot `key` the watermark has
    /// passed.
    fn fire_sessions(&mut self, key: u32) -> Result<(), String> {
        let m = self.accs.header(key)[H_META];
        if m & LIVE == 0 {
            // A stale timer: the key went since.
            return Ok(());
        }
        if m & EXTRA == 0 {
            return self.fire_one(key);
        }
        let lateness = self.spec.lateness;
        let mut list = self.list_of(key);
        let mut changed = false;
        let mut key_read = false;
        let mut i = 0;
        while i < list.len() {
            let mut s = list[i];
            changed |= self.due_step(key, &mut s, &mut key_read)?;
            list[i] = s;
            if s.fired && gone_at(s.end, lateness) <= self.wm {
                changed = true;
                if list.len() == 1 && self.changes.on() {
                    self.last_session_goes(key, &mut key_read);
                    changed = false;
                }
                // The slot's own accumulator goes with the slot (or its next session's
                // moves in: put_list).
                if s.win.acc != key {
                    self.accs.free(s.win.acc);
                }
                list.remove(i);
                continue;
            }
            self.timers.push(s.due(lateness), key);
            i += 1;
        }
        if list.is_empty() {
            self.drop_key(key);
        } else {
            self.put_list(key, list);
            if changed && self.changes.on() {
                self.changes.key(key);
            }
        }
        Ok(())
    }

    /// [`WindowOp::fire_sessions`] of a key with one open session (nearly every key),
    /// on its slot alone.
    fn fire_one(&mut self, key: u32) -> Result<(), String> {
        let lateness = self.spec.lateness;
        let mut s = self.primary(key);
        let mut key_read = false;
        let changed = self.due_step(key, &mut s, &mut key_read)?;
        if s.fired && gone_at(s.end, lateness) <= self.wm {
            if self.changes.on() {
                self.last_session_goes(key, &mut key_read);
            }
            self.drop_key(key);
            return Ok(());
        }
        // Due again later (a timer the session moved past is set again here).
        self.timers.push(s.due(lateness), key);
        if changed {
            self.write_first(key, &s, false);
            if self.changes.on() {
                self.changes.key(key);
            }
        }
        Ok(())
    }

    /// Fires session `s` of key slot `key`, or gives its early result, if the
    /// watermark says so; returns whether it changed. `key_read`: `keybuf` holds the
    /// key's bytes.
    fn due_step(&mut self, key: u32, s: &mut Session, key_read: &mut bool) -> Result<bool, String> {
        let wm = self.wm;
        let final_ = !s.fired && s.end - 1 <= wm;
        let early = !final_ && !s.fired && s.next_early - 1 <= wm;
        if final_ || (early && s.win.dirty) {
            if !*key_read {
                slot_key(&self.accs, &self.long_keys, key, &mut self.keybuf);
                *key_read = true;
            }
            self.emit_keybuf(s.start, s.end, s.win)?;
            s.win.emitted += 1;
            s.win.dirty = false;
        }
        if final_ {
            s.fired = true;
        } else if early {
            let every = self.spec.emit_every.unwrap_or(i64::MAX);
            while s.next_early - 1 <= wm {
                s.next_early = s.next_early.saturating_add(every);
            }
        }
        Ok(final_ || early)
    }

    /// Records, for the next delta, that key slot `key`'s last session goes (its
    /// bytes go with it). `key_read`: `keybuf` holds the key's bytes.
    fn last_session_goes(&mut self, key: u32, key_read: &mut bool) {
        if !*key_read {
            slot_key(&self.accs, &self.long_keys, key, &mut self.keybuf);
            *key_read = true;
        }
        self.changes.removed(&self.keybuf);
        if let Some(f) = self.changes.keys.get_mut(key as usize) {
            *f = false;
        }
    }

    /// Moves the least recently updated windows to the store while more than the
    /// budget are in memory (down to 3/4 of it, so spills come in rounds).
    fn spill_if_over(&mut self) -> Result<(), String> {
        if self.changes.slots.len() + self.changes.key_ids.len() > 2 * self.hot + 64 {
            self.compact_changes();
        }
        if self.hot <= self.budget || self.store.is_none() {
            return Ok(());
        }
        let target = self.budget / 4 * 3;
        let n = self.hot - target;
        let mut buf = Vec::new();
        match self.spec.window {
            Window::Session { .. } => {
                // Oldest first: by batches since the key's last update (wrapping).
                let mut cands: Vec<(u16, u32)> = Vec::with_capacity(self.hot);
                for id in 0..self.accs.slots() {
                    let m = self.accs.header(id)[H_META];
                    if m & LIVE != 0 {
                        cands.push((u16::MAX - (self.epoch as u16).wrapping_sub(meta_used(m)), id));
                    }
                }
                cands.sort_unstable();
                let mut kb = Vec::new();
                for &(_, key) in cands.iter().take(n) {
                    let list = self.list_of(key);
                    buf.clear();
                    encode_sessions(&self.accs, &list, &mut buf);
                    slot_key(&self.accs, &self.long_keys, key, &mut kb);
                    let due = list.iter().map(|s| s.due(self.spec.lateness)).min().unwrap_or(WM_MAX);
                    let skey = session_key(&kb);
                    self.store()?.put(&skey, &buf)?;
                    if let Some(f) = self.changes.keys.get_mut(key as usize).filter(|f| **f) {
                        // Changed, and leaving memory: remembered by its store key.
                        *f = false;
                        self.changes.out.insert(skey);
                    }
                    self.spill_timers.push(Reverse((due, kb.as_slice().into())));
                    self.next_due = self.next_due.min(due);
                    for s in &list {
                        if s.win.acc != key {
                            self.accs.free(s.win.acc);
                        }
                    }
                    self.drop_key(key);
                    self.spilled += 1;
                }
            }
            _ => {
                let mut cands: Vec<(u16, i64, u32)> = Vec::with_capacity(self.hot);
                for (&end, g) in &self.groups {
                    for &id in &g.order {
                        // Oldest first: by batches since the last update (wrapping).
                        let age = (self.epoch as u16).wrapping_sub(meta_used(self.accs.header(id)[H_META]));
                        cands.push((u16::MAX - age, end, id));
                    }
                }
                cands.sort_unstable();
                let mut gone = rustc_hash::FxHashSet::default();
                let mut skey = Vec::new();
                for &(_, end, id) in cands.iter().take(n) {
                    let m = self.accs.header(id)[H_META];
                    let w = Win { acc: id, emitted: meta_rev(m), dirty: m & DIRTY != 0, used: 0 };
                    buf.clear();
                    w.encode(&self.accs, &mut buf);
                    slot_key(&self.accs, &self.long_keys, id, &mut skey);
                    let k = aligned_key(end, &skey);
                    self.store()?.put(&k, &buf)?;
                    if m & CHANGED != 0 {
                        // Changed, and leaving memory: remembered by its store key.
                        self.changes.out.insert(k);
                    }
                    self.free_cell(id);
                    self.groups.get_mut(&end).expect("group").spilled += 1;
                    self.spilled += 1;
                    gone.insert(id);
                }
                for g in self.groups.values_mut() {
                    if g.spilled > 0 {
                        g.order.retain(|id| !gone.contains(id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends one result row for the key in `keybuf`.
    fn emit_keybuf(&mut self, start: i64, end: i64, w: Win) -> Result<(), String> {
        emit_row(
            &mut self.results,
            &self.spec,
            &self.key_kinds,
            &self.accs,
            self.emit_stamp,
            &self.keybuf,
            start,
            end,
            w,
        )
    }

    /// Appends one result row for the key with bytes `key`.
    fn emit(&mut self, key: &[u8], start: i64, end: i64, w: Win) -> Result<(), String> {
        emit_row(&mut self.results, &self.spec, &self.key_kinds, &self.accs, self.emit_stamp, key, start, end, w)
    }
}

/// Snapshot kinds (`snapshot.rs`): aligned windows, and sessions.
const SNAP_ALIGNED: u8 = b'A';
const SNAP_SESSION: u8 = b'S';

/// Checkpoints.
///
/// A snapshot holds the operator's logical state, whether in memory or spilled:
///
/// - its shape (window parameters, key fields, aggregates, accumulator words), which
///   a restoring operator must share;
/// - the watermark of each upstream channel, the operator's watermark, the watermark
///   results are stamped with, the late count and the batch count;
/// - aligned windows: every group (end, fired, next early result), then every window
///   (end, key bytes, and [`Win::encode`]: revision, dirty flag, accumulator with its
///   extras), those in memory in their group's order first, then the spilled ones;
/// - sessions: per key, its key bytes and its sessions ([`encode_sessions`]: start,
///   end, next early result, fired, revision, dirty flag, accumulator).
///
/// What is derived is rebuilt on restore rather than stored: the slot index, key
/// slots, out-of-line keys, session timers (one per session at its due time: a timer
/// only ever makes the operator look at its key's sessions, so the stale entries of
/// the snapshotted operator make no difference), the next due watermark, and which
/// windows are spilled (a restored operator with a store spills down to its own budget).
// Checkpoint barriers are not wired to the operators yet: only the tests call these.
impl WindowOp {
    /// The operator's complete logical state as bytes, in memory and spilled alike (the
    /// spill store is read, not changed): the operator carries on unaffected. Results
    /// not yet taken ([`WindowOp::take_results`]) are not state: they precede the
    /// snapshot and are the caller's to send on.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        let session = matches!(self.spec.window, Window::Session { .. });
        let mut w = Writer::new(if session { SNAP_SESSION } else { SNAP_ALIGNED });
        let gen = Generation::full(self.gen);
        gen.put(&mut w);
        self.write_globals(&mut w)?;
        let spilled = |prefix: &[u8]| match &self.store {
            Some(s) => s.scan_prefix(prefix),
            None => Ok(Vec::new()),
        };
        if session {
            let spilled = spilled(b"S")?;
            w.count(self.hot + spilled.len(), "session keys")?;
            let mut kb = Vec::new();
            for id in 0..self.accs.slots() {
                if self.accs.header(id)[H_META] & LIVE != 0 {
                    slot_key(&self.accs, &self.long_keys, id, &mut kb);
                    let list = self.list_of(id);
                    w.bytes(&kb, "key")?;
                    w.bytes_with("sessions", |o| encode_sessions(&self.accs, &list, o))?;
                }
            }
            for (k, v) in &spilled {
                w.bytes(k.get(1..).unwrap_or_default(), "key")?;
                w.bytes(v, "sessions")?;
            }
        } else {
            w.count(self.groups.len(), "groups")?;
            for (&end, g) in &self.groups {
                w.i64(end);
                w.u8(u8::from(g.fired));
                w.i64(g.next_early);
            }
            let spilled = spilled(b"A")?;
            let hot: usize = self.groups.values().map(|g| g.order.len()).sum();
            w.count(hot + spilled.len(), "windows")?;
            let mut key = Vec::new();
            for (&end, g) in &self.groups {
                for &id in &g.order {
                    slot_key(&self.accs, &self.long_keys, id, &mut key);
                    let m = self.accs.header(id)[H_META];
                    let win = Win { acc: id, emitted: meta_rev(m), dirty: m & DIRTY != 0, used: 0 };
                    w.i64(end);
                    w.bytes(&key, "key")?;
                    w.bytes_with("window", |o| win.encode(&self.accs, o))?;
                }
            }
            for (k, v) in &spilled {
                w.i64(aligned_end(k)?);
                w.bytes(&k[9..], "key")?;
                w.bytes(v, "window")?;
            }
        }
        self.reset_changes();
        self.gen = Some(gen);
        self.touched = false;
        Ok(w.finish())
    }

    /// Loads a [`WindowOp::snapshot`] into this operator, which must be fresh (built by
    /// [`WindowOp::new`], perhaps [`WindowOp::with_store`], and given nothing yet) and
    /// of the same shape. It then behaves as the snapshotted one would have. Any input
    /// is safe: damaged or foreign bytes are refused with why, and leave the operator
    /// as fresh as it was (unless writing to its spill store failed midway).
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let fresh = self.hot == 0
            && self.spilled == 0
            && self.groups.is_empty()
            && self.timers.is_empty()
            && self.wm == WM_MIN
            && self.epoch == 0
            && self.late == 0;
        if !fresh {
            return Err("a snapshot is restored into a fresh window operator only".into());
        }
        let r = self.restore_state(bytes);
        match r {
            Ok(gen) => {
                self.reset_changes();
                self.gen = Some(gen);
                self.touched = false;
                Ok(())
            }
            Err(e) => {
                let mut blank = WindowOp::build(self.spec.clone(), self.kinds.clone(), self.channels.len());
                blank.store = self.store.take();
                blank.budget = self.budget;
                *self = blank;
                Err(e)
            }
        }
    }

    /// The window's parameters and the accumulators' shape, which a snapshot must
    /// share with the operator it is restored into.
    fn shape(&self) -> [i64; 5] {
        let (a, b) = match self.spec.window {
            Window::Tumbling { size_ms } => (size_ms, size_ms),
            Window::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            Window::Session { gap_ms } => (gap_ms, 0),
        };
        [a, b, self.key_kinds.len() as i64, self.spec.acc.len() as i64, self.spec.acc.width as i64]
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<Generation, String> {
        let session = matches!(self.spec.window, Window::Session { .. });
        let mut r = Reader::open(bytes, if session { SNAP_SESSION } else { SNAP_ALIGNED }, "window")?;
        let gen = Generation::get(&mut r)?;
        let globals = self.read_globals(&mut r)?;
        self.set_globals(globals);
        let lateness = self.spec.lateness;
        let mut next_due = WM_MAX;
        if session {
            let n = r.count(8, "session keys")?;
            for _ in 0..n {
                let kb = r.bytes("key")?;
                let blob = r.bytes("sessions")?;
                check_key(kb, &self.key_kinds)?;
                let h = self.load_key_bytes(kb);
                if self.find_loaded_key(h).is_some() {
                    return Err("window snapshot holds a key's sessions twice".into());
                }
                let list = decode_sessions(&mut self.accs, blob, self.epoch)?;
                if list.is_empty() {
                    return Err("window snapshot holds a key without sessions".into());
                }
                for s in &list {
                    if s.end == i64::MIN || s.start > s.end || s.next_early == i64::MIN || s.win.emitted == u32::MAX {
                        return Err(format!("window snapshot holds a bad session [{}, {})", s.start, s.end));
                    }
                }
                let key = self.new_key(h, list);
                for s in self.list_of(key) {
                    let due = s.due(lateness);
                    self.timers.push(due, key);
                    next_due = next_due.min(due);
                }
            }
        } else {
            let size = match self.spec.window {
                Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => size_ms,
                Window::Session { .. } => 0,
            };
            let n = r.count(17, "groups")?;
            for _ in 0..n {
                let end = r.i64("group end")?;
                let fired = r.bool("group fired")?;
                let next_early = r.i64("group next early result")?;
                if end.checked_sub(size).is_none() || end == i64::MIN || next_early == i64::MIN {
                    return Err(format!("window snapshot holds a bad window end {end}"));
                }
                let g = Group { order: Vec::new(), fired, next_early, spilled: 0 };
                if self.groups.insert(end, g).is_some() {
                    return Err(format!("window snapshot holds the windows ending at {end} twice"));
                }
                let due = if fired { gone_at(end, lateness) } else { (end - 1).min(next_early.saturating_sub(1)) };
                next_due = next_due.min(due);
            }
            let n = r.count(16, "windows")?;
            for _ in 0..n {
                let end = r.i64("window end")?;
                let kb = r.bytes("key")?;
                let wb = r.bytes("window")?;
                if !self.groups.contains_key(&end) {
                    return Err(format!("window snapshot holds a window ending at {end} but no such group"));
                }
                check_key(kb, &self.key_kinds)?;
                let (win, used) = Win::decode(&mut self.accs, wb, self.epoch)?;
                if used != wb.len() {
                    return Err("window snapshot holds a window with bytes past its end".into());
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(kb);
                self.probe.clear();
                pad_words(kb, &mut self.probe);
                let kh = key_hash(kb.len(), self.probe.iter().copied());
                if self.find_loaded(kh, end).is_some() {
                    return Err(format!("window snapshot holds a key's window ending at {end} twice"));
                }
                self.register_cell(win.acc, kh, end, win.emitted, win.dirty, false);
            }
        }
        r.end("window")?;
        self.next_due = next_due;
        self.spill_if_over()?;
        Ok(gen)
    }

    /// The shape, then the small global part of the state: every snapshot and delta
    /// has it.
    fn write_globals(&self, w: &mut Writer) -> Result<(), String> {
        for x in self.shape() {
            w.i64(x);
        }
        w.count(self.channels.len(), "channels")?;
        for &c in &self.channels {
            w.i64(c);
        }
        w.i64(self.wm);
        w.i64(self.emit_stamp);
        w.u64(self.late);
        w.u32(self.epoch);
        Ok(())
    }

    /// Reads [`WindowOp::write_globals`]'s part, checking the shape, without changing
    /// the operator.
    fn read_globals(&self, r: &mut Reader<'_>) -> Result<Globals, String> {
        let shape = self.shape();
        let mut got = [0i64; 5];
        for x in &mut got {
            *x = r.i64("shape")?;
        }
        if got != shape {
            return Err(format!(
                "window snapshot of another shape: [window parameters, keys, aggregates, words] {got:?}, \
                 the operator's {shape:?}"
            ));
        }
        let n = r.count(8, "channels")?;
        if n != self.channels.len() {
            return Err(format!("window snapshot of {n} upstream instances, the operator has {}", self.channels.len()));
        }
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(r.i64("channel watermark")?);
        }
        Ok(Globals {
            channels,
            wm: r.i64("watermark")?,
            emit_stamp: r.i64("result stamp")?,
            late: r.u64("late count")?,
            epoch: r.u32("batch count")?,
        })
    }

    fn set_globals(&mut self, g: Globals) {
        self.channels = g.channels;
        self.wm = g.wm;
        self.emit_stamp = g.emit_stamp;
        self.late = g.late;
        self.epoch = g.epoch;
    }

    /// The slot of the window ending at `end` of the key in `scratch` and `probe`
    /// (hashed `kh`), if it is in memory.
    fn find_loaded(&self, kh: u64, end: i64) -> Option<u32> {
        let (accs, long, key, probe) = (&self.accs, &self.long_keys, &self.scratch, &self.probe);
        self.cells.find(cell_hash(kh, end), |id| {
            accs.header(id)[H_END] as i64 == end && slot_key_is(accs, long, id, key, probe.iter().copied())
        })
    }
}

/// Delta kinds (`snapshot.rs`): aligned windows, and sessions.
const DELTA_ALIGNED: u8 = b'a';
const DELTA_SESSION: u8 = b's';

/// The window end of an aligned window's store key ([`aligned_key`]).
fn aligned_end(k: &[u8]) -> Result<i64, String> {
    let end = k.get(1..9).ok_or("a spilled window's store key is short")?;
    let mut e = [0u8; 8];
    e.copy_from_slice(end);
    Ok((u64::from_be_bytes(e) ^ (1 << 63)) as i64)
}

/// Incremental checkpoints.
///
/// A delta holds what changed since the previous snapshot or delta, in logical terms
/// (where a window lies, in memory or spilled, is not state):
///
/// - its generations (chain, the sequence number it follows, its own: see
///   [`Generation`]), then the shape and the global part every snapshot has
///   (watermarks, result stamp, late count, batch count);
/// - aligned windows: the ends of groups dropped (with all their windows), the groups
///   created or changed (end, fired, next early result), and every window created or
///   changed (end, key bytes, [`Win::encode`]), whole;
/// - sessions: the keys whose last session was dropped, and per key created or changed
///   its key bytes and all its sessions ([`encode_sessions`]).
///
/// Applying one drops first, then writes the rest over what is there.
///
/// Changes are tracked from the first snapshot (or restore) on, so that taking a delta
/// walks the changes alone, never the whole state. An aligned window's slot carries a
/// [`CHANGED`] bit, set (and its id pushed onto a list) where [`DIRTY`] is set: one
/// test-and-set on the path a record takes. A session key has a flag and a list of ids
/// alike. Windows (or a key's sessions) changed and then spilled leave their store key
/// in a set, as do spilled windows changed in the store (a firing's new revision); a
/// delta reads those back from memory or the store. Dropped groups and keys are
/// recorded where they are dropped.
impl WindowOp {
    /// Forgets the changes tracked (a snapshot or delta holds them now) and tracks on.
    fn reset_changes(&mut self) {
        let c = &mut self.changes;
        for &id in &c.slots {
            self.accs.header_mut(id)[H_META] &= !CHANGED;
        }
        c.slots.clear();
        for &k in &c.key_ids {
            if let Some(f) = c.keys.get_mut(k as usize) {
                *f = false;
            }
        }
        c.key_ids.clear();
        c.out.clear();
        c.groups.clear();
        c.dropped.clear();
        c.removed.clear();
        c.removed_n = 0;
        c.track = CHANGED;
    }

    /// Drops the ids of changed slots and keys that are stale (freed since) or listed
    /// twice, so the lists stay within the state's size.
    fn compact_changes(&mut self) {
        let c = &mut self.changes;
        let mut kept = Vec::with_capacity(self.hot);
        for &id in &c.slots {
            let h = self.accs.header_mut(id);
            if h[H_META] & CHANGED != 0 {
                h[H_META] &= !CHANGED;
                kept.push(id);
            }
        }
        for &id in &kept {
            self.accs.header_mut(id)[H_META] |= CHANGED;
        }
        c.slots = kept;
        let mut kept = Vec::new();
        for &k in &c.key_ids {
            if let Some(f) = c.keys.get_mut(k as usize).filter(|f| **f) {
                *f = false;
                kept.push(k);
            }
        }
        for &k in &kept {
            c.keys[k as usize] = true;
        }
        c.key_ids = kept;
    }

    /// The value stored under exactly `skey`, if any (read, not taken).
    fn stored(&self, skey: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some(store) = &self.store else { return Ok(None) };
        Ok(store.scan_prefix(skey)?.into_iter().find(|(k, _)| k == skey).map(|(_, v)| v))
    }

    /// Appends slot `id`'s window (end, key, [`Win::encode`]) to a delta, and clears
    /// its [`CHANGED`] bit.
    fn put_slot(&mut self, w: &mut Writer, id: u32, key: &mut Vec<u8>) -> Result<(), String> {
        slot_key(&self.accs, &self.long_keys, id, key);
        let h = self.accs.header(id);
        let (end, m) = (h[H_END] as i64, h[H_META]);
        let win = Win { acc: id, emitted: meta_rev(m), dirty: m & DIRTY != 0, used: 0 };
        w.i64(end);
        w.bytes(key, "key")?;
        w.bytes_with("window", |o| win.encode(&self.accs, o))?;
        self.accs.header_mut(id)[H_META] &= !CHANGED;
        Ok(())
    }

    /// What changed since the previous [`WindowOp::snapshot`] or `snapshot_delta` (see
    /// above), as bytes to apply with [`WindowOp::apply_delta`] on top of that one. Its
    /// cost is in the changes, not the state. Refused before any full snapshot (or
    /// restore); if it fails, the next must be a full snapshot (this refuses until
    /// then). Results not yet taken are not state, as for [`WindowOp::snapshot`].
    pub fn snapshot_delta(&mut self) -> Result<Vec<u8>, String> {
        let Some(at) = self.gen else {
            return Err("a delta follows a snapshot: take a full snapshot of the window operator first".into());
        };
        let r = self.encode_delta(at.next());
        match &r {
            Ok(_) => {
                self.reset_changes();
                self.gen = Some(at.next());
                self.touched = false;
            }
            Err(_) => self.gen = None,
        }
        r
    }

    fn encode_delta(&mut self, gen: Generation) -> Result<Vec<u8>, String> {
        let session = matches!(self.spec.window, Window::Session { .. });
        let mut w = Writer::new(if session { DELTA_SESSION } else { DELTA_ALIGNED });
        gen.put_delta(&mut w);
        self.write_globals(&mut w)?;
        let out = std::mem::take(&mut self.changes.out);
        if session {
            w.count(self.changes.removed_n, "removed keys")?;
            w.raw(&self.changes.removed);
            let at = w.count_later();
            let mut n = 0;
            for skey in &out {
                let kb = skey.get(1..).unwrap_or_default();
                let h = self.load_key_bytes(kb);
                if let Some(id) = self.find_loaded_key(h) {
                    if let Some(f) = self.changes.keys.get_mut(id as usize) {
                        *f = false;
                    }
                    let list = self.list_of(id);
                    w.bytes(kb, "key")?;
                    w.bytes_with("sessions", |o| encode_sessions(&self.accs, &list, o))?;
                    n += 1;
                } else if self.spilled > 0 {
                    if let Some(v) = self.stored(skey)? {
                        w.bytes(kb, "key")?;
                        w.bytes(&v, "sessions")?;
                        n += 1;
                    }
                }
                // Else dropped since: among the removed keys.
            }
            let ids = std::mem::take(&mut self.changes.key_ids);
            let mut kb = Vec::new();
            for &id in &ids {
                let Some(f) = self.changes.keys.get_mut(id as usize).filter(|f| **f) else { continue };
                *f = false;
                if self.accs.header(id)[H_META] & LIVE != 0 {
                    slot_key(&self.accs, &self.long_keys, id, &mut kb);
                    let list = self.list_of(id);
                    w.bytes(&kb, "key")?;
                    w.bytes_with("sessions", |o| encode_sessions(&self.accs, &list, o))?;
                    n += 1;
                }
            }
            w.patch_count(at, n, "changed keys")?;
        } else {
            let mut dropped = std::mem::take(&mut self.changes.dropped);
            dropped.sort_unstable();
            dropped.dedup();
            w.count(dropped.len(), "dropped groups")?;
            for &end in &dropped {
                w.i64(end);
            }
            let at = w.count_later();
            let mut n = 0;
            for end in &self.changes.groups {
                if let Some(g) = self.groups.get(end) {
                    w.i64(*end);
                    w.u8(u8::from(g.fired));
                    w.i64(g.next_early);
                    n += 1;
                }
            }
            w.patch_count(at, n, "groups")?;
            let at = w.count_later();
            let mut n = 0;
            let mut key = Vec::new();
            for skey in &out {
                let end = aligned_end(skey)?;
                let kb = &skey[9..];
                self.scratch.clear();
                self.scratch.extend_from_slice(kb);
                self.probe.clear();
                pad_words(kb, &mut self.probe);
                let kh = key_hash(kb.len(), self.probe.iter().copied());
                if let Some(id) = self.find_loaded(kh, end) {
                    self.put_slot(&mut w, id, &mut key)?;
                    n += 1;
                } else if self.groups.get(&end).is_some_and(|g| g.spilled > 0) {
                    if let Some(v) = self.stored(skey)? {
                        w.i64(end);
                        w.bytes(kb, "key")?;
                        w.bytes(&v, "window")?;
                        n += 1;
                    }
                }
                // Else dropped since, with its group.
            }
            let slots = std::mem::take(&mut self.changes.slots);
            for &id in &slots {
                if self.accs.header(id)[H_META] & CHANGED != 0 {
                    self.put_slot(&mut w, id, &mut key)?;
                    n += 1;
                }
            }
            w.patch_count(at, n, "windows")?;
        }
        Ok(w.finish())
    }

    /// Applies a [`WindowOp::snapshot_delta`] to this operator, which must stand exactly
    /// where the delta's producer stood before it: restored from that full snapshot,
    /// given the deltas before this one in order, and given no input since. It then
    /// behaves as the producer did after taking the delta. A delta of another chain,
    /// out of order, or applied twice is refused and changes nothing; damaged bytes
    /// are refused too (never a panic), and if the damage is found only while applying,
    /// the operator is left fresh, as a failed [`WindowOp::restore`] leaves it: restore
    /// the snapshot again.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), String> {
        let session = matches!(self.spec.window, Window::Session { .. });
        let mut r = Reader::open(bytes, if session { DELTA_SESSION } else { DELTA_ALIGNED }, "window delta")?;
        let gen = Generation::get_delta(&mut r, self.gen, !self.touched)?;
        let globals = self.read_globals(&mut r)?;
        // From here on the operator changes.
        self.set_globals(globals);
        let res = if session { self.apply_sessions(&mut r) } else { self.apply_windows(&mut r) }
            .and_then(|()| r.end("window delta"))
            .and_then(|()| self.spill_if_over());
        match res {
            Ok(()) => {
                self.reset_changes();
                self.gen = Some(gen);
                self.touched = false;
                Ok(())
            }
            Err(e) => {
                let mut blank = WindowOp::build(self.spec.clone(), self.kinds.clone(), self.channels.len());
                blank.store = self.store.take();
                blank.budget = self.budget;
                if let Some(s) = &mut blank.store {
                    // What the operator spilled is not a fresh operator's.
                    let _ = s.take_prefix(&[]);
                }
                *self = blank;
                Err(e)
            }
        }
    }

    fn apply_windows(&mut self, r: &mut Reader<'_>) -> Result<(), String> {
        let lateness = self.spec.lateness;
        let size = match self.spec.window {
            Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => size_ms,
            Window::Session { .. } => 0,
        };
        let n = r.count(8, "dropped groups")?;
        for _ in 0..n {
            let end = r.i64("dropped group end")?;
            self.drop_group(end)?;
        }
        let n = r.count(17, "groups")?;
        for _ in 0..n {
            let end = r.i64("group end")?;
            let fired = r.bool("group fired")?;
            let next_early = r.i64("group next early result")?;
            if end.checked_sub(size).is_none() || end == i64::MIN || next_early == i64::MIN {
                return Err(format!("window delta holds a bad window end {end}"));
            }
            let g = self.groups.entry(end).or_default();
            g.fired = fired;
            g.next_early = next_early;
        }
        let n = r.count(16, "windows")?;
        for _ in 0..n {
            let end = r.i64("window end")?;
            let kb = r.bytes("key")?;
            let wb = r.bytes("window")?;
            if !self.groups.contains_key(&end) {
                return Err(format!("window delta holds a window ending at {end} but no such group"));
            }
            check_key(kb, &self.key_kinds)?;
            let (win, used) = Win::decode(&mut self.accs, wb, self.epoch)?;
            if used != wb.len() {
                return Err("window delta holds a window with bytes past its end".into());
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(kb);
            self.probe.clear();
            pad_words(kb, &mut self.probe);
            let kh = key_hash(kb.len(), self.probe.iter().copied());
            if let Some(id) = self.find_loaded(kh, end) {
                self.accs.swap_acc(id, win.acc);
                self.accs.free(win.acc);
                let h = self.accs.header_mut(id);
                h[H_META] = (h[H_META] & !(DIRTY | (REV_MASK << REV_SHIFT)))
                    | ((u64::from(win.emitted) & REV_MASK) << REV_SHIFT)
                    | if win.dirty { DIRTY } else { 0 };
                continue;
            }
            if self.groups[&end].spilled > 0 && self.store()?.take(&aligned_key(end, kb))?.is_some() {
                // Its old state was spilled: the new one replaces it, in memory.
                if let Some(g) = self.groups.get_mut(&end) {
                    g.spilled -= 1;
                }
                self.spilled -= 1;
            }
            self.register_cell(win.acc, kh, end, win.emitted, win.dirty, false);
        }
        let mut next_due = WM_MAX;
        for (&end, g) in &self.groups {
            let due = if g.fired { gone_at(end, lateness) } else { (end - 1).min(g.next_early.saturating_sub(1)) };
            next_due = next_due.min(due);
        }
        self.next_due = next_due;
        Ok(())
    }

    fn apply_sessions(&mut self, r: &mut Reader<'_>) -> Result<(), String> {
        let lateness = self.spec.lateness;
        let n = r.count(4, "removed keys")?;
        for _ in 0..n {
            let kb = r.bytes("key")?;
            check_key(kb, &self.key_kinds)?;
            self.forget_key(kb)?;
        }
        let n = r.count(8, "changed keys")?;
        for _ in 0..n {
            let kb = r.bytes("key")?;
            let blob = r.bytes("sessions")?;
            check_key(kb, &self.key_kinds)?;
            let list = decode_sessions(&mut self.accs, blob, self.epoch)?;
            if list.is_empty() {
                return Err("window delta holds a key without sessions".into());
            }
            for s in &list {
                if s.end == i64::MIN || s.start > s.end || s.next_early == i64::MIN || s.win.emitted == u32::MAX {
                    return Err(format!("window delta holds a bad session [{}, {})", s.start, s.end));
                }
            }
            let h = self.load_key_bytes(kb);
            let key = match self.find_loaded_key(h) {
                Some(id) => {
                    // The old sessions go; the slot stays the key's (its timers too).
                    for s in self.list_of(id) {
                        if s.win.acc != id {
                            self.accs.free(s.win.acc);
                        }
                    }
                    self.put_list(id, list);
                    id
                }
                None => {
                    if self.spilled > 0 && self.store()?.take(&session_key(kb))?.is_some() {
                        self.spilled -= 1;
                    }
                    self.new_key(h, list)
                }
            };
            for s in self.list_of(key) {
                let due = s.due(lateness);
                self.timers.push(due, key);
                self.next_due = self.next_due.min(due);
            }
        }
        Ok(())
    }

    /// Drops session key `kb`'s sessions, in memory or spilled.
    fn forget_key(&mut self, kb: &[u8]) -> Result<(), String> {
        let h = self.load_key_bytes(kb);
        match self.find_loaded_key(h) {
            Some(id) => {
                for s in self.list_of(id) {
                    if s.win.acc != id {
                        self.accs.free(s.win.acc);
                    }
                }
                self.drop_key(id);
            }
            None => {
                if self.spilled > 0 && self.store()?.take(&session_key(kb))?.is_some() {
                    self.spilled -= 1;
                }
            }
        }
        Ok(())
    }
}

/// The global part of a snapshot or delta, read.
struct Globals {
    channels: Vec<i64>,
    wm: i64,
    emit_stamp: i64,
    late: u64,
    epoch: u32,
}

/// Appends one result row: keys, bounds, aggregates, revision, `$wm`.
#[allow(clippy::too_many_arguments)]
fn emit_row(
    results: &mut BatchBuilder,
    spec: &WindowSpec,
    key_kinds: &[SlotKind],
    accs: &AccStore,
    stamp: i64,
    key: &[u8],
    start: i64,
    end: i64,
    w: Win,
) -> Result<(), String> {
    let nk = spec.key_fields.len();
    let r = results.push_row();
    decode_key(key, key_kinds, results, r)?;
    results.set_i64(r, nk, start);
    results.set_i64(r, nk + 1, end);
    accs.write(w.acc, results, r, nk + 2)?;
    let rev = spec.revision_field();
    results.set_i64(r, rev, i64::from(w.emitted));
    results.set_i64(r, rev + 1, stamp);
    Ok(())
}

impl Session {
    /// The watermark at which it next needs attention: firing, an early result, or
    /// being dropped once fired.
    fn due(&self, lateness: i64) -> i64 {
        if self.fired {
            gone_at(self.end, lateness)
        } else {
            (self.end - 1).min(self.next_early.saturating_sub(1))
        }
    }
}

fn encode_sessions(accs: &AccStore, list: &[Session], out: &mut Vec<u8>) {
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for s in list {
        out.extend_from_slice(&s.start.to_le_bytes());
        out.extend_from_slice(&s.end.to_le_bytes());
        out.extend_from_slice(&s.next_early.to_le_bytes());
        out.push(u8::from(s.fired));
        s.win.encode(accs, out);
    }
}

fn decode_sessions(accs: &mut AccStore, bytes: &[u8], used: u32) -> Result<Sessions, String> {
    let bad = || "truncated sessions".to_string();
    let i64_at = |at: usize| -> Result<i64, String> {
        Ok(i64::from_le_bytes(bytes.get(at..at + 8).ok_or_else(bad)?.try_into().map_err(|_| bad())?))
    };
    let n = u32::from_le_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let mut at = 4;
    let mut out = Sessions::with_capacity(n.min(64));
    for _ in 0..n {
        let (start, end, next_early) = (i64_at(at)?, i64_at(at + 8)?, i64_at(at + 16)?);
        let fired = *bytes.get(at + 24).ok_or_else(bad)? != 0;
        let (win, used_bytes) = Win::decode(accs, &bytes[at + 25..], used)?;
        at += 25 + used_bytes;
        out.push(Session { start, end, win, fired, next_early });
    }
    if at != bytes.len() {
        return Err(format!("sessions have {} bytes past their end", bytes.len().saturating_sub(at)));
    }
    Ok(out)
}

/// The record type of a window's raw results: keys, bounds, aggregates, revision, `$wm`.
pub(crate) fn result_record(keys: &[flow_types::Field], aggs: &[ir::AggCall]) -> Arc<flow_types::RecordType> {
    use flow_types::{Field, Type};
    let mut fields: Vec<Field> = keys.to_vec();
    fields.push(Field { name: "window_start".into(), ty: Type::timestamp() });
    fields.push(Field { name: "window_end".into(), ty: Type::timestamp() });
    // A window holds at least one record, so an aggregate of a non-null argument
    // always has a value: the aggregates' own types hold.
    for (i, a) in aggs.iter().enumerate() {
        fields.push(Field { name: format!("$agg{i}"), ty: a.ty.clone() });
    }
    fields.push(Field { name: "revision".into(), ty: Type::int() });
    fields.push(Field { name: super::stamp::STAMP_FIELD.into(), ty: Type::timestamp() });
    Arc::new(flow_types::RecordType { name: None, fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::snapshot;
    use crate::run::spill::MemoryStore;
    use flow_types::{Field, RecordType, Type, Value};

    /// Input rows: (k: string, v: int, ts: timestamp, $wm); aggregates count(), sum(v).
    fn input() -> Arc<Layout> {
        let f = |n: &str, ty: Type| Field { name: n.into(), ty };
        let rec = RecordType {
            name: None,
            fields: vec![
                f("k", Type::string()),
                f("v", Type::int()),
                f("ts", Type::timestamp()),
                f(super::super::stamp::STAMP_FIELD, Type::timestamp()),
            ],
        };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    fn spec(window: Window, lateness: i64, emit_every: Option<i64>) -> Arc<WindowSpec> {
        let aggs = vec![
            ir::AggCall { func: "count", arg: None, ty: Type::int() },
            ir::AggCall { func: "sum", arg: None, ty: Type::int() },
        ];
        let acc = AccLayout::new(&aggs, &[None, Some(1)], &input()).expect("layout");
        let keys = vec![Field { name: "k".into(), ty: Type::string() }];
        Arc::new(WindowSpec {
            window,
            lateness,
            emit_every,
            key_fields: vec![0],
            ts_field: 2,
            ts_offset: 0,
            stamp_field: 3,
            acc,
            result: Arc::new(Layout::new(result_record(&keys, &aggs))),
        })
    }

    fn batch(rows: &[(&str, i64, i64, i64)]) -> Batch {
        let mut b = BatchBuilder::new(input());
        for (k, v, ts, wm) in rows {
            b.push_values(&[Value::String((*k).into()), Value::Int(*v), Value::Timestamp(*ts), Value::Timestamp(*wm)])
                .expect("row");
        }
        b.finish()
    }

    /// (key, start, end, count, sum, revision) of every result, and the late row indexes.
    type Res = (String, i64, i64, i64, i64, i64);

    fn run(op: &mut WindowOp, rows: &[(&str, i64, i64, i64)], finish: bool) -> (Vec<Res>, Vec<usize>) {
        let outcome = op.process(&batch(rows), 0).expect("process");
        if finish {
            op.finish().expect("finish");
        }
        let mut out = Vec::new();
        if let Some(b) = op.take_results() {
            for v in b.to_values() {
                let s = |i: usize| match &v[i] {
                    Value::String(s) => s.to_string(),
                    x => panic!("{x:?}"),
                };
                let n = |i: usize| match &v[i] {
                    Value::Int(x) | Value::Timestamp(x) => *x,
                    x => panic!("{x:?}"),
                };
                out.push((s(0), n(1), n(2), n(3), n(4), n(5)));
            }
        }
        (out, outcome.late)
    }

    /// The operator with everything in memory, and one that spills every window after
    /// each batch into a store: they must agree.
    fn both(spec: &Arc<WindowSpec>) -> [WindowOp; 2] {
        [
            WindowOp::new(spec.clone(), &input(), 1),
            WindowOp::new(spec.clone(), &input(), 1).with_store(Box::<MemoryStore>::default(), 0),
        ]
    }

    fn sorted(mut v: Vec<Res>) -> Vec<Res> {
        v.sort();
        v
    }

    const M: i64 = 60_000;

    /// A slot's room for its key starts at a flag byte and grows with the keys seen:
    /// to hold a longer key once more than an eighth of the slots would hold theirs out
    /// of line, moving the out-of-line keys that fit into their slots. Results stay
    /// right throughout.
    #[test]
    fn key_room_grows_with_the_keys() {
        for window in [Window::Tumbling { size_ms: M }, Window::Session { gap_ms: M }] {
            let mut op = WindowOp::new(spec(window, 0, None), &input(), 1);
            assert_eq!(op.key_words, 1);
            let long = |i: usize| format!("account-number-{i:04}");
            let mut rows: Vec<(String, i64, i64, i64)> = (0..40).map(|i| (format!("k{i}"), 1, 10, 0)).collect();
            // Short keys (3 or 4 bytes) fit the first word.
            let (_, late) = run_owned(&mut op, &rows, false);
            assert!(late.is_empty());
            assert_eq!(op.key_words, 1);
            rows.clear();
            // 20-byte keys: the first five go out of line (with n of them there already,
            // (n + 1) * 8 is not over the 40-odd slots); the sixth (6 * 8 > 45) makes
            // the room grow to three words, and the five move in.
            rows.extend((0..5).map(|i| (long(i), 2, 20, 0)));
            let _ = run_owned(&mut op, &rows, false);
            assert_eq!((op.key_words, op.long_keys.len()), (1, 5));
            rows.clear();
            rows.extend((5..7).map(|i| (long(i), 2, 20, 0)));
            // Keys too long for the room ever to hold stay out of line.
            rows.push(("x".repeat(KEY_ROOM_MAX + 1), 3, 30, 0));
            let _ = run_owned(&mut op, &rows, false);
            assert_eq!((op.key_words, op.long_keys.len()), (3, 1));
            // Every key still finds its slot, moved or not: one window each.
            rows.clear();
            rows.extend((0..40).map(|i| (format!("k{i}"), 1, 40, 0)));
            rows.extend((0..7).map(|i| (long(i), 2, 40, 0)));
            rows.push(("x".repeat(KEY_ROOM_MAX + 1), 3, 40, 0));
            let (out, _) = run_owned(&mut op, &rows, true);
            assert_eq!(out.len(), 48, "{window:?}");
            for (k, start, _, count, sum, _) in &out {
                assert_eq!(*count, 2, "{k}");
                assert_eq!(
                    *sum,
                    if k.starts_with('k') {
                        2
                    } else if k.starts_with('a') {
                        4
                    } else {
                        6
                    },
                    "{k}"
                );
                assert!(matches!(window, Window::Session { .. }) || *start == 0);
            }
            assert_eq!(op.state_size().0, 0);
        }
    }

    fn run_owned(op: &mut WindowOp, rows: &[(String, i64, i64, i64)], finish: bool) -> (Vec<Res>, Vec<usize>) {
        let rows: Vec<(&str, i64, i64, i64)> = rows.iter().map(|(k, v, t, w)| (k.as_str(), *v, *t, *w)).collect();
        run(op, &rows, finish)
    }

    proptest::proptest! {
        /// The memo never changes the answer: any sequence of times, near the ends of
        /// i64 too, gives `ts - ts.rem_euclid(slide)` for each (clamped to i64::MIN).
        #[test]
        fn slide_start_memo_agrees_with_the_division(
            slide in 1i64..100_000,
            times in proptest::collection::vec(proptest::prop_oneof![
                -1_000_000i64..1_000_000,
                (i64::MAX - 1_000_000)..=i64::MAX,
                i64::MIN..(i64::MIN + 1_000_000),
            ], 1..50),
        ) {
            let mut memo = (1, 0);
            for ts in times {
                let want = (i128::from(ts) - i128::from(ts.rem_euclid(slide))).max(i128::from(i64::MIN)) as i64;
                proptest::prop_assert_eq!(slide_start(&mut memo, ts, slide), want);
            }
        }
    }

    #[test]
    fn tumbling_boundaries_end_minus_one_and_the_watermark() {
        for mut op in both(&spec(Window::Tumbling { size_ms: M }, 0, None)) {
            let (out, late) = run(
                &mut op,
                &[
                    ("a", 1, 0, WM_MIN),
                    ("a", 2, M - 1, 0),      // end - 1 is inside [0, M)
                    ("a", 4, M, M - 1),      // end is the next window; W = end - 1 fires [0, M)
                    ("b", 8, M - 1, M - 2),  // judged by its own stamp end - 2: still open
                    ("c", 16, M - 1, M - 1), // stamp end - 1: [0, M) is gone: late
                ],
                true,
            );
            assert_eq!(late, vec![4]);
            assert_eq!(
                sorted(out),
                vec![("a".into(), 0, M, 2, 3, 0), ("a".into(), M, 2 * M, 1, 4, 0), ("b".into(), 0, M, 1, 8, 0),]
            );
        }
    }

    #[test]
    fn allowed_lateness_boundary_updates_then_refuses() {
        let l = 10_000;
        for mut op in both(&spec(Window::Tumbling { size_ms: M }, l, None)) {
            let (out, late) = run(
                &mut op,
                &[
                    ("a", 1, 5, WM_MIN),
                    ("a", 2, 10, M - 1),         // fired at end - 1 (rev 0); still within lateness
                    ("a", 4, 20, M - 1 + l - 1), // one before gone: rev 1 with this record
                    ("a", 8, 30, M - 1 + l),     // exactly end - 1 + lateness: late
                ],
                true,
            );
            assert_eq!(late, vec![3]);
            // rev 0 fired before row 1 was added (count 1), then rev 1 (count 2, row 1
            // within lateness), rev 2 (count 3).
            assert_eq!(
                sorted(out),
                vec![("a".into(), 0, M, 1, 1, 0), ("a".into(), 0, M, 2, 3, 1), ("a".into(), 0, M, 3, 7, 2),]
            );
        }
    }

    #[test]
    fn sliding_windows_count_a_record_in_each_open_window() {
        for mut op in both(&spec(Window::Sliding { size_ms: 30, slide_ms: 10 }, 0, None)) {
            // ts 25 is in [0,30), [10,40), [20,50); stamp 30 closes [0,30) (end - 1 = 29).
            let (out, late) = run(&mut op, &[("a", 1, 25, 30), ("a", 2, 5, 30)], true);
            assert_eq!(late, vec![1], "ts 5 is only in closed windows");
            assert_eq!(sorted(out), vec![("a".into(), 10, 40, 1, 1, 0), ("a".into(), 20, 50, 1, 1, 0)]);
        }
    }

    #[test]
    fn sessions_merge_touching_and_bridged_windows() {
        let gap = 100;
        for mut op in both(&spec(Window::Session { gap_ms: gap }, 0, None)) {
            let (out, late) = run(
                &mut op,
                &[
                    ("t", 1, 0, WM_MIN),
                    ("t", 2, 100, WM_MIN), // exactly gap apart: touching, one session
                    ("n", 1, 0, WM_MIN),
                    ("n", 2, 101, WM_MIN), // gap + 1: two sessions
                    ("b", 1, 0, WM_MIN),
                    ("b", 2, 150, WM_MIN),
                    ("b", 4, 75, WM_MIN), // bridges [0,100) and [150,250)
                ],
                true,
            );
            assert!(late.is_empty());
            assert_eq!(
                sorted(out),
                vec![
                    ("b".into(), 0, 250, 3, 7, 0),
                    ("n".into(), 0, 100, 1, 1, 0),
                    ("n".into(), 101, 201, 1, 2, 0),
                    ("t".into(), 0, 200, 2, 3, 0),
                ]
            );
        }
    }

    #[test]
    fn a_late_session_record_that_touches_an_open_session_extends_it_backwards() {
        let gap = 100;
        for mut op in both(&spec(Window::Session { gap_ms: gap }, 0, None)) {
            let (out, late) = run(
                &mut op,
                &[
                    ("s", 1, 500, WM_MIN),
                    ("s", 2, 400, 450), // own [400,500) is late alone, but touches [500,600)
                    ("d", 4, 300, 450), // own [300,400): end - 1 = 399 <= 450, touches nothing
                ],
                true,
            );
            assert_eq!(late, vec![2]);
            assert_eq!(out, vec![("s".into(), 400, 600, 2, 3, 0)]);
        }
    }

    #[test]
    fn early_results_of_sessions() {
        for mut op in both(&spec(Window::Session { gap_ms: 10_000 }, 0, Some(5_000))) {
            let rows = [
                ("a", 1, 1_000, WM_MIN),
                ("b", 1, 1_000, WM_MIN),
                ("a", 2, 3_000, 1_000),
                // A second open session of b, beside the first.
                ("b", 10, 30_000, 1_000),
                ("a", 4, 8_000, 6_000),
                ("a", 16, 9_500, 10_500),
                ("a", 8, 9_000, 11_000),
            ];
            let (out, late) = run(&mut op, &rows, true);
            assert!(late.is_empty());
            // a: early results at 5_999 (its next early result, 1_000 + 5_000 - 1) and
            // at 10_999 (every 5 s; not at 10_500), each with the bounds it had then;
            // the final one at the end of input. b: its first session's early result at
            // 5_999, then it fires at 10_999 (its end - 1) as revision 1; the second
            // session fires at the end as revision 0.
            assert_eq!(
                sorted(out),
                vec![
                    ("a".into(), 1_000, 13_000, 2, 3, 0),
                    ("a".into(), 1_000, 19_500, 4, 23, 1),
                    ("a".into(), 1_000, 19_500, 5, 31, 2),
                    ("b".into(), 1_000, 11_000, 1, 1, 0),
                    ("b".into(), 1_000, 11_000, 1, 1, 1),
                    ("b".into(), 30_000, 40_000, 1, 10, 0),
                ]
            );
        }
    }

    #[test]
    fn early_results_in_event_time() {
        for mut op in both(&spec(Window::Tumbling { size_ms: M }, 0, Some(10_000))) {
            let (out, _) = run(
                &mut op,
                &[("a", 1, 1_000, WM_MIN), ("a", 2, 12_000, 1_000), ("a", 4, 13_000, 12_000), ("a", 8, 14_000, 13_000)],
                true,
            );
            // At stamp 12_000 (>= 9_999) the window has 2 records: rev 0. Nothing changes
            // the 20 s mark before the end; the final result is rev 1 with all 4.
            assert_eq!(sorted(out), vec![("a".into(), 0, M, 2, 3, 0), ("a".into(), 0, M, 4, 15, 1)]);
        }
    }

    #[test]
    fn spilled_state_comes_back_for_late_updates_and_firing() {
        let spec = spec(Window::Tumbling { size_ms: M }, 5 * M, None);
        let [mut mem, mut spill] = both(&spec);
        let rows: Vec<(String, i64, i64, i64)> =
            (0..500).map(|i| (format!("k{}", i % 37), i, (i * 997) % (3 * M), (i * 300) - 1)).collect();
        let mut all = [Vec::new(), Vec::new()];
        for chunk in rows.chunks(50) {
            let refs: Vec<(&str, i64, i64, i64)> = chunk.iter().map(|(k, v, t, w)| (k.as_str(), *v, *t, *w)).collect();
            for (i, op) in [&mut mem, &mut spill].into_iter().enumerate() {
                let (out, late) = run(op, &refs, false);
                all[i].extend(out);
                all[i].push(("late".into(), late.len() as i64, 0, 0, 0, 0));
            }
        }
        for (i, op) in [&mut mem, &mut spill].into_iter().enumerate() {
            let (out, _) = run(op, &[], true);
            all[i].extend(out);
        }
        assert_eq!(spill.state_size().0, 0);
        let [a, b] = all;
        assert!(a.len() > 100);
        assert_eq!(sorted(a), sorted(b));
    }

    /// Runs `rows` through `op` in batches of `chunk`, then finishes: every result, and
    /// the late rows' indexes in `rows`.
    fn run_chunked(op: &mut WindowOp, rows: &[(String, i64, i64, i64)], chunk: usize) -> (Vec<Res>, Vec<usize>) {
        let (mut got, mut late) = (Vec::new(), Vec::new());
        for (c, part) in rows.chunks(chunk).enumerate() {
            let refs: Vec<(&str, i64, i64, i64)> = part.iter().map(|(k, v, t, w)| (k.as_str(), *v, *t, *w)).collect();
            let (out, l) = run(op, &refs, false);
            got.extend(out);
            late.extend(l.into_iter().map(|i| c * chunk + i));
        }
        got.extend(run(op, &[], true).0);
        (got, late)
    }

    /// The aligned windows a reference model computes: every window holding a row's
    /// time that its stamp has not passed counts it; results come once, at the end.
    fn model(rows: &[(String, i64, i64, i64)], size: i64, slide: i64) -> (Vec<Res>, Vec<usize>) {
        let mut wins: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
        let mut late = Vec::new();
        for (r, (k, v, ts, stamp)) in rows.iter().enumerate() {
            let mut taken = false;
            let mut start = ts - ts.rem_euclid(slide);
            while start > ts - size {
                if start + size - 1 > *stamp {
                    let e = wins.entry((k.clone(), start)).or_default();
                    e.0 += 1;
                    e.1 += v;
                    taken = true;
                }
                start -= slide;
            }
            if !taken {
                late.push(r);
            }
        }
        let out = wins.into_iter().map(|((k, st), (n, sum))| (k, st, st + size, n, sum, 0)).collect();
        (out, late)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Keys short, empty and longer than a slot holds inline; times out of order;
        /// many keys (the index grows, windows are freed and their slots reused): the
        /// operator, in memory and spilling, agrees with the model.
        #[test]
        fn aligned_windows_agree_with_a_model(
            rows in proptest::collection::vec((0usize..40, -50i64..50, 0i64..20_000, 0i64..3_000), 1..400),
            sliding in proptest::prelude::any::<bool>(),
            chunk in 1usize..64,
        ) {
            let (size, slide) = if sliding { (1_000, 300) } else { (1_000, 1_000) };
            // Keys of every kind of length: empty, short, some that make the slots'
            // key room grow, and some too long for it ever to hold (out of line).
            let key = |i: usize| match i % 4 {
                0 => String::new(),
                1 => format!("k{i}"),
                2 if i % 8 == 2 => format!("a-key-of-middling-length-{i}"),
                _ => format!("a-rather-long-key-that-does-not-fit-inline-even-when-the-room-grows-{i}"),
            };
            // Stamps never decrease; a row's time may be behind its stamp (late).
            let mut stamp = WM_MIN;
            let rows: Vec<(String, i64, i64, i64)> = rows
                .iter()
                .enumerate()
                .map(|(n, &(k, v, ts, back))| {
                    // Times on a 100 ms grid and stamps at 99 past it, so records land
                    // exactly at a window's end - 1 and at the watermark.
                    let t = (ts / 100 + n as i64 / 2) * 100;
                    let out = (key(k), v, t, stamp);
                    stamp = stamp.max(t - (back / 100) * 100 - 1);
                    out
                })
                .collect();
            let window = if sliding { Window::Sliding { size_ms: size, slide_ms: slide } } else { Window::Tumbling { size_ms: size } };
            let (want, want_late) = model(&rows, size, slide);
            for mut op in both(&spec(window, 0, None)) {
                let (got, late) = run_chunked(&mut op, &rows, chunk);
                proptest::prop_assert_eq!(sorted(got), want.clone());
                proptest::prop_assert_eq!(&late, &want_late);
                proptest::prop_assert_eq!(op.state_size().0, 0);
            }
        }
    }

    /// Session windows as a model computes them (no allowed lateness): before a row,
    /// every session the watermark (its stamp) has reached the end of fires and is gone;
    /// the row then joins the open sessions of its key it overlaps or touches, unless
    /// the merged session is already due for its stamp (late).
    fn session_model(rows: &[(String, i64, i64, i64)], gap: i64) -> (Vec<Res>, Vec<usize>) {
        let mut open: BTreeMap<String, Vec<(i64, i64, i64, i64)>> = BTreeMap::new();
        let (mut out, mut late) = (Vec::new(), Vec::new());
        let fire = |open: &mut BTreeMap<String, Vec<(i64, i64, i64, i64)>>, wm: i64, out: &mut Vec<Res>| {
            for (k, list) in open.iter_mut() {
                list.retain(|&(st, en, n, sum)| {
                    let due = en - 1 <= wm;
                    if due {
                        out.push((k.clone(), st, en, n, sum, 0));
                    }
                    !due
                });
            }
        };
        for (r, (k, v, ts, stamp)) in rows.iter().enumerate() {
            fire(&mut open, *stamp, &mut out);
            let list = open.entry(k.clone()).or_default();
            let (mut st, mut en, mut n, mut sum) = (*ts, ts + gap, 1, *v);
            let hit: Vec<usize> = (0..list.len()).filter(|&i| list[i].0 <= en && list[i].1 >= st).collect();
            for &i in &hit {
                st = st.min(list[i].0);
                en = en.max(list[i].1);
            }
            if en - 1 <= *stamp {
                late.push(r);
                continue;
            }
            for &i in hit.iter().rev() {
                let s = list.remove(i);
                n += s.2;
                sum += s.3;
            }
            list.push((st, en, n, sum));
        }
        fire(&mut open, WM_MAX, &mut out);
        (out, late)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Sessions (merging, bridging, late rows, many keys) in memory and spilling agree
        /// with the model.
        #[test]
        fn sessions_agree_with_a_model(
            rows in proptest::collection::vec((0usize..12, -50i64..50, 0i64..60, 0i64..30), 1..300),
            chunk in 1usize..64,
        ) {
            let gap = 500;
            let key = |i: usize| match i % 3 {
                0 => format!("k{i}"),
                1 if i % 6 == 1 => format!("a-middling-session-key-{i}"),
                1 => format!("k{i}"),
                _ => format!("a-rather-long-session-key-that-does-not-fit-inline-even-when-the-room-grows-{i}"),
            };
            let mut stamp = WM_MIN;
            let rows: Vec<(String, i64, i64, i64)> = rows
                .iter()
                .enumerate()
                .map(|(n, &(k, v, ts, back))| {
                    // A 100 ms grid with stamps 1 ms before it: rows land at a session's
                    // end - 1 and exactly at the watermark.
                    let t = (ts + n as i64 / 3) * 100;
                    let out = (key(k), v, t, stamp);
                    stamp = stamp.max(t - back * 100 - 1);
                    out
                })
                .collect();
            let (want, want_late) = session_model(&rows, gap);
            for mut op in both(&spec(Window::Session { gap_ms: gap }, 0, None)) {
                let (got, late) = run_chunked(&mut op, &rows, chunk);
                proptest::prop_assert_eq!(sorted(got), sorted(want.clone()));
                proptest::prop_assert_eq!(&late, &want_late);
                proptest::prop_assert_eq!(op.state_size().0, 0);
            }
        }
    }

    /// `spec` with aggregates whose accumulators keep extras: count(), sum(v), min(k),
    /// max(k), count_distinct(v), count_distinct(k).
    fn rich_spec(window: Window, lateness: i64, emit_every: Option<i64>) -> Arc<WindowSpec> {
        let call = |func: &'static str, ty: Type| ir::AggCall { func, arg: None, ty };
        let aggs = vec![
            call("count", Type::int()),
            call("sum", Type::int()),
            call("min", Type::string()),
            call("max", Type::string()),
            call("count_distinct", Type::int()),
            call("count_distinct", Type::int()),
        ];
        let acc =
            AccLayout::new(&aggs, &[None, Some(1), Some(0), Some(0), Some(1), Some(0)], &input()).expect("layout");
        let keys = vec![Field { name: "k".into(), ty: Type::string() }];
        Arc::new(WindowSpec {
            window,
            lateness,
            emit_every,
            key_fields: vec![0],
            ts_field: 2,
            ts_offset: 0,
            stamp_field: 3,
            acc,
            result: Arc::new(Layout::new(result_record(&keys, &aggs))),
        })
    }

    /// One input event of an operator with two upstream instances.
    #[derive(Clone, Debug)]
    enum Step {
        /// A batch of (key, v, ts, stamp) rows from an upstream instance.
        Rows(usize, Vec<(String, i64, i64, i64)>),
        /// A watermark from an upstream instance.
        Wm(usize, i64),
    }

    /// What a run produced: every result row as text (all fields: keys, bounds,
    /// aggregates, revision, `$wm`), and per step the late rows.
    #[derive(Default)]
    struct Output {
        rows: Vec<String>,
        late: Vec<Vec<usize>>,
    }

    impl Output {
        fn take(&mut self, op: &mut WindowOp) {
            if let Some(b) = op.take_results() {
                self.rows.extend(b.to_values().iter().map(|v| format!("{v:?}")));
            }
        }

        fn sorted(mut self) -> (Vec<String>, Vec<Vec<usize>>) {
            self.rows.sort();
            (self.rows, self.late)
        }
    }

    fn step(op: &mut WindowOp, s: &Step, out: &mut Output) {
        match s {
            Step::Rows(from, rows) => {
                let refs: Vec<(&str, i64, i64, i64)> =
                    rows.iter().map(|(k, v, t, w)| (k.as_str(), *v, *t, *w)).collect();
                let o = op.process(&batch(&refs), *from).expect("process");
                out.late.push(o.late);
            }
            Step::Wm(from, wm) => {
                op.watermark(*from, *wm).expect("watermark");
                out.late.push(Vec::new());
            }
        }
        out.take(op);
    }

    fn finish(op: &mut WindowOp, out: &mut Output) {
        op.finish().expect("finish");
        out.take(op);
    }

    /// Steps from generated rows (key, v, time, how far the stamp trails, from, and
    /// whether a watermark of the other instance follows the row's batch) on the grids
    /// of the model tests: aligned windows' or sessions'.
    fn steps(raw: &[(usize, i64, i64, i64, bool, bool)], chunk: usize, session: bool) -> Vec<Step> {
        let key = |i: usize| match i % 4 {
            0 if !session => String::new(),
            1 => format!("k{i}"),
            2 if i % 8 == 2 => format!("a-key-of-middling-length-{i}"),
            2 => format!("a-rather-long-key-that-does-not-fit-inline-even-when-the-room-grows-{i}"),
            _ => format!("k{}", i % 7),
        };
        let mut stamp = WM_MIN;
        let mut rows = Vec::new();
        for (n, &(k, v, ts, back, _, _)) in raw.iter().enumerate() {
            let t = if session { (ts % 60 + n as i64 / 3) * 100 } else { (ts / 100 + n as i64 / 2) * 100 };
            rows.push((key(k), v, t, stamp));
            let back = if session { (back % 30) * 100 } else { (back / 100) * 100 };
            stamp = stamp.max(t - back - 1);
        }
        let mut out = Vec::new();
        for (c, part) in rows.chunks(chunk).enumerate() {
            let (_, _, _, _, from, wm) = raw[c * chunk];
            let from = usize::from(from);
            out.push(Step::Rows(from, part.to_vec()));
            if wm {
                out.push(Step::Wm(1 - from, part.last().map_or(WM_MIN, |r| r.3)));
            }
        }
        out
    }

    /// An operator of `spec` with two upstream instances, spilling into a store of
    /// `budget` windows if there is one.
    fn op_with(spec: &Arc<WindowSpec>, budget: Option<usize>) -> WindowOp {
        let op = WindowOp::new(spec.clone(), &input(), 2);
        match budget {
            Some(b) => op.with_store(Box::<MemoryStore>::default(), b),
            None => op,
        }
    }

    /// No store, one that spills everything after each batch, one that spills some.
    fn budget(choice: u8) -> Option<usize> {
        [None, Some(0), Some(5)][choice as usize % 3]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        /// An operator run to the end (A); one run to step k, snapshotted and carried on
        /// (B); and a fresh one restored from B's snapshot and run from step k (C), each
        /// perhaps spilling: B's results before the snapshot and C's after it are A's
        /// (revisions and stamps included), and so are B's own, and the late rows too.
        #[test]
        fn a_restored_window_operator_carries_on_as_the_snapshotted_one(
            raw in proptest::collection::vec(
                (0usize..24, -50i64..50, 0i64..20_000, 0i64..3_000, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
                1..200,
            ),
            kind in 0u8..3,
            late in proptest::prelude::any::<bool>(),
            early in proptest::prelude::any::<bool>(),
            chunk in 1usize..40,
            cut in 0usize..=1000,
            b_budget in 0u8..3,
            c_budget in 0u8..3,
        ) {
            let window = match kind {
                0 => Window::Tumbling { size_ms: 1_000 },
                1 => Window::Sliding { size_ms: 1_000, slide_ms: 300 },
                _ => Window::Session { gap_ms: 500 },
            };
            let spec = rich_spec(window, if late { 700 } else { 0 }, early.then_some(300));
            let steps = steps(&raw, chunk, kind == 2);
            let k = cut * steps.len() / 1000;
            let mut a = op_with(&spec, None);
            let mut want = Output::default();
            for s in &steps {
                step(&mut a, s, &mut want);
            }
            finish(&mut a, &mut want);
            let mut b = op_with(&spec, budget(b_budget));
            let mut before = Output::default();
            for s in &steps[..k] {
                step(&mut b, s, &mut before);
            }
            let snap = b.snapshot().expect("snapshot");
            let mut c = op_with(&spec, budget(c_budget));
            c.restore(&snap).expect("restore");
            let (mut after, mut b_after) = (Output::default(), Output::default());
            for s in &steps[k..] {
                step(&mut c, s, &mut after);
                step(&mut b, s, &mut b_after);
            }
            finish(&mut c, &mut after);
            finish(&mut b, &mut b_after);
            let want = want.sorted();
            for (who, op, rest) in [("restored", &c, after), ("snapshotted", &b, b_after)] {
                let mut got = Output { rows: before.rows.clone(), late: before.late.clone() };
                got.rows.extend(rest.rows);
                got.late.extend(rest.late);
                proptest::prop_assert_eq!(got.sorted(), want.clone(), "{}", who);
                proptest::prop_assert_eq!(op.late, a.late, "{}", who);
                proptest::prop_assert_eq!(op.state_size().0 + op.state_size().1, 0, "{}", who);
            }
        }
    }

    /// Real snapshots mid-run: sliding windows (spilling, some fired and within allowed
    /// lateness, some with early results) and sessions.
    fn real_snapshots() -> Vec<(Arc<WindowSpec>, Vec<u8>)> {
        let raw: Vec<(usize, i64, i64, i64, bool, bool)> = (0..120)
            .map(|i: usize| {
                (
                    i * 7 % 23,
                    i as i64 - 60,
                    (i as i64 * 7_919) % 20_000,
                    (i as i64 * 31) % 3_000,
                    i.is_multiple_of(5),
                    i.is_multiple_of(3),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (window, session) in
            [(Window::Sliding { size_ms: 1_000, slide_ms: 300 }, false), (Window::Session { gap_ms: 500 }, true)]
        {
            let spec = rich_spec(window, 700, Some(300));
            let mut op = op_with(&spec, Some(8));
            let steps = steps(&raw, 7, session);
            let mut sink = Output::default();
            for s in &steps[..steps.len() * 2 / 3] {
                step(&mut op, s, &mut sink);
            }
            let (hot, spilled, _) = op.state_size();
            assert!(hot > 0 && spilled > 0, "windows in memory ({hot}) and spilled ({spilled})");
            assert!(!sink.rows.is_empty());
            out.push((spec, op.snapshot().expect("snapshot")));
        }
        out
    }

    /// Restores `bytes` into a fresh operator (spilling if `n` is even): an error or
    /// not, it must not panic; an error leaves the operator fresh (checked every 64th
    /// `n` by restoring `good` after it).
    fn try_restore(spec: &Arc<WindowSpec>, bytes: &[u8], good: &[u8], n: usize) -> bool {
        let mut op = op_with(spec, n.is_multiple_of(2).then_some(2));
        let ok = op.restore(bytes).is_ok();
        if !ok && n.is_multiple_of(64) {
            op.restore(good).expect("a refused snapshot leaves the operator fresh");
        }
        ok
    }

    #[test]
    fn restoring_damaged_window_snapshots_is_refused_without_panicking() {
        for (spec, snap) in real_snapshots() {
            assert!(try_restore(&spec, &snap, &snap, 0));
            for n in 0..snap.len() {
                assert!(!try_restore(&spec, &snap[..n], &snap, n), "prefix of {n} bytes");
            }
            for bit in 0..snap.len() * 8 {
                let mut bad = snap.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!try_restore(&spec, &bad, &snap, bit), "bit {bit} flipped");
            }
            // Past the checksum: the decoders see the damage.
            let body = snap.len() - 4;
            for n in 6..body {
                let mut cut = snap[..n].to_vec();
                cut.extend_from_slice(&[0; 4]);
                snapshot::reseal(&mut cut);
                assert!(!try_restore(&spec, &cut, &snap, n), "payload cut at {n}");
            }
            let mut refused = 0;
            for at in 6..body {
                for mask in [0x01u8, 0x10, 0x80, 0xFF] {
                    let mut bad = snap.clone();
                    bad[at] ^= mask;
                    snapshot::reseal(&mut bad);
                    refused += usize::from(!try_restore(&spec, &bad, &snap, at));
                }
            }
            assert!(refused > 0);
            // Into an operator of another kind (sessions) or shape (tumbling).
            let other = op_with(&rich_spec(Window::Tumbling { size_ms: 1_000 }, 0, None), None).restore(&snap);
            assert!(other.as_ref().is_err_and(|e| e.contains("shape") || e.contains("kind")), "{other:?}");
            // Into one that is not fresh.
            let mut used = op_with(&spec, None);
            used.restore(&snap).expect("restore");
            assert!(used.restore(&snap).is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random bytes, bare and behind a valid header and checksum, are refused or
        /// restored, never a panic.
        #[test]
        fn restoring_random_bytes_as_a_window_snapshot_does_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            which in 0usize..2,
            keep in 0usize..=1000,
        ) {
            let (spec, snap) = real_snapshots().swap_remove(which);
            let _ = op_with(&spec, Some(1)).restore(&bytes);
            // A real snapshot's first bytes, then random ones, checksummed.
            let mut framed = snap[..6 + keep * (snap.len() - 10) / 1000].to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut framed);
            let _ = op_with(&spec, Some(1)).restore(&framed);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// An operator run to the end (A); one (B), perhaps spilling, that takes a full
        /// snapshot or a delta at random steps (the first a full one) and carries on; and
        /// one (C), perhaps spilling, restored from one of B's full snapshots and given
        /// B's deltas after it in order (up to B's next full snapshot), then run from
        /// there: B's results before that point and C's after it are A's (revisions,
        /// stamps and late rows included). A delta skipping one, one after B's next full
        /// snapshot (another chain), and the last one applied again are refused and
        /// change nothing.
        #[test]
        fn a_window_operator_restored_from_a_snapshot_and_deltas_carries_on_as_the_original(
            raw in proptest::collection::vec(
                (0usize..24, -50i64..50, 0i64..20_000, 0i64..3_000, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
                1..200,
            ),
            kind in 0u8..3,
            late in proptest::prelude::any::<bool>(),
            early in proptest::prelude::any::<bool>(),
            chunk in 1usize..40,
            cuts in proptest::collection::vec((0usize..=1000, 0u8..5), 1..7),
            pick in 0usize..8,
            b_budget in 0u8..3,
            c_budget in 0u8..3,
        ) {
            let window = match kind {
                0 => Window::Tumbling { size_ms: 1_000 },
                1 => Window::Sliding { size_ms: 1_000, slide_ms: 300 },
                _ => Window::Session { gap_ms: 500 },
            };
            let spec = rich_spec(window, if late { 700 } else { 0 }, early.then_some(300));
            let steps = steps(&raw, chunk, kind == 2);
            // (step, full snapshot?), in order; the first is a full one.
            let mut cuts: Vec<(usize, bool)> = cuts.iter().map(|&(c, f)| (c * steps.len() / 1000, f == 0)).collect();
            cuts.sort_by_key(|c| c.0);
            cuts[0].1 = true;
            let mut a = op_with(&spec, None);
            let mut want = Output::default();
            for s in &steps {
                step(&mut a, s, &mut want);
            }
            finish(&mut a, &mut want);
            // B: (step, full?, bytes, its output up to then).
            let mut b = op_with(&spec, budget(b_budget));
            let mut out = Output::default();
            let mut taken = Vec::new();
            let mut at = 0;
            for &(cut, full) in &cuts {
                for s in &steps[at..cut] {
                    step(&mut b, s, &mut out);
                }
                at = cut;
                let bytes = if full { b.snapshot() } else { b.snapshot_delta() }.expect("snapshot");
                taken.push((cut, full, bytes, Output { rows: out.rows.clone(), late: out.late.clone() }));
            }
            let fulls: Vec<usize> = (0..taken.len()).filter(|&i| taken[i].1).collect();
            let base = fulls[pick % fulls.len()];
            let mut c = op_with(&spec, budget(c_budget));
            c.restore(&taken[base].2).expect("restore");
            if base + 2 < taken.len() && !taken[base + 1].1 && !taken[base + 2].1 {
                let skip = c.apply_delta(&taken[base + 2].2);
                proptest::prop_assert!(skip.as_ref().is_err_and(|e| e.contains("in order")), "{:?}", skip);
            }
            let mut last = base;
            for (i, t) in taken.iter().enumerate().skip(base + 1) {
                if t.1 {
                    // Deltas after another full snapshot follow that one.
                    if let Some(d) = taken[i + 1..].iter().find(|d| !d.1) {
                        let other = c.apply_delta(&d.2);
                        proptest::prop_assert!(other.as_ref().is_err_and(|e| e.contains("chain")), "{:?}", other);
                    }
                    break;
                }
                c.apply_delta(&t.2).expect("apply");
                last = i;
            }
            if last > base {
                proptest::prop_assert!(c.apply_delta(&taken[last].2).is_err(), "a delta applied twice");
            }
            let (cut, _, _, before) = &taken[last];
            let mut got = Output { rows: before.rows.clone(), late: before.late.clone() };
            for s in &steps[*cut..] {
                step(&mut c, s, &mut got);
            }
            finish(&mut c, &mut got);
            proptest::prop_assert_eq!(got.sorted(), want.sorted());
            proptest::prop_assert_eq!(c.late, a.late);
            proptest::prop_assert_eq!(c.state_size().0 + c.state_size().1, 0);
        }
    }

    /// Real deltas mid-run, of sliding windows and of sessions (spilling, some fired and
    /// within allowed lateness, some with early results, some dropped): the full
    /// snapshot, and the delta taken some steps later.
    fn real_deltas() -> Vec<(Arc<WindowSpec>, Vec<u8>, Vec<u8>)> {
        let raw: Vec<(usize, i64, i64, i64, bool, bool)> = (0..120)
            .map(|i: usize| {
                (
                    i * 7 % 23,
                    i as i64 - 60,
                    (i as i64 * 7_919) % 20_000,
                    (i as i64 * 31) % 3_000,
                    i.is_multiple_of(5),
                    i.is_multiple_of(3),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (window, session) in
            [(Window::Sliding { size_ms: 1_000, slide_ms: 300 }, false), (Window::Session { gap_ms: 500 }, true)]
        {
            let spec = rich_spec(window, 700, Some(300));
            let mut op = op_with(&spec, Some(8));
            let steps = steps(&raw, 7, session);
            let mut sink = Output::default();
            for s in &steps[..steps.len() / 2] {
                step(&mut op, s, &mut sink);
            }
            let full = op.snapshot().expect("snapshot");
            for s in &steps[steps.len() / 2..steps.len() * 2 / 3] {
                step(&mut op, s, &mut sink);
            }
            assert!(op.state_size().1 > 0, "spilled");
            out.push((spec, full, op.snapshot_delta().expect("delta")));
        }
        out
    }

    /// After a refused delta, `op` is as it was (refused before anything changed: the
    /// delta applies) or fresh (the snapshot restores).
    fn fresh_or_unchanged(mut op: WindowOp, full: &[u8], delta: &[u8]) {
        if op.apply_delta(delta).is_err() {
            op.restore(full).expect("a refused delta leaves the operator as it was, or fresh");
        }
    }

    #[test]
    fn damaged_or_misplaced_window_deltas_are_refused_without_panicking() {
        let real = real_deltas();
        for (n, (spec, full, delta)) in real.iter().enumerate() {
            let restored = || {
                let mut op = op_with(spec, Some(2));
                op.restore(full).expect("restore");
                op
            };
            // Damage the frame's checks catch: refused before anything changes.
            let mut op = restored();
            for n in 0..delta.len() {
                assert!(op.apply_delta(&delta[..n]).is_err(), "prefix of {n} bytes");
            }
            for bit in 0..delta.len() * 8 {
                let mut bad = delta.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(op.apply_delta(&bad).is_err(), "bit {bit} flipped");
            }
            op.apply_delta(delta).expect("the delta, after all that was refused");
            let twice = op.apply_delta(delta);
            assert!(twice.as_ref().is_err_and(|e| e.contains("in order")), "{twice:?}");
            // Past the checksum: the decoders see the damage. A refused delta leaves the
            // operator fresh.
            let body = delta.len() - 4;
            for n in 6..body {
                let mut cut = delta[..n].to_vec();
                cut.extend_from_slice(&[0; 4]);
                snapshot::reseal(&mut cut);
                let mut op = restored();
                assert!(op.apply_delta(&cut).is_err(), "payload cut at {n}");
                if n.is_multiple_of(32) {
                    fresh_or_unchanged(op, full, delta);
                }
            }
            for at in 6..body {
                for mask in [0x01u8, 0x80, 0xFF] {
                    let mut bad = delta.clone();
                    bad[at] ^= mask;
                    snapshot::reseal(&mut bad);
                    let mut op = restored();
                    if op.apply_delta(&bad).is_err() && at.is_multiple_of(16) {
                        fresh_or_unchanged(op, full, delta);
                    }
                }
            }
            // Onto an operator not restored, one that processed input since its restore,
            // one restored from a snapshot of another chain, one of another kind.
            let e = op_with(spec, None).apply_delta(delta);
            assert!(e.as_ref().is_err_and(|e| e.contains("restored")), "{e:?}");
            let mut moved = restored();
            moved.watermark(0, WM_MIN + 1).expect("watermark");
            let e = moved.apply_delta(delta);
            assert!(e.as_ref().is_err_and(|e| e.contains("processed")), "{e:?}");
            let mut other = op_with(spec, None);
            other.restore(full).expect("restore");
            let again = other.snapshot().expect("snapshot");
            let mut other = op_with(spec, None);
            other.restore(&again).expect("restore");
            let e = other.apply_delta(delta);
            assert!(e.as_ref().is_err_and(|e| e.contains("chain")), "{e:?}");
            let (_, _, foreign) = &real[1 - n];
            let e = restored().apply_delta(foreign);
            assert!(e.as_ref().is_err_and(|e| e.contains("kind")), "{e:?}");
            let e = restored().apply_delta(full);
            assert!(e.as_ref().is_err_and(|e| e.contains("kind")), "a full snapshot is no delta: {e:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random bytes, bare and behind a real delta's first bytes and a valid
        /// checksum, are refused or applied, never a panic.
        #[test]
        fn applying_random_bytes_as_a_window_delta_does_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            which in 0usize..2,
            keep in 0usize..=1000,
        ) {
            let (spec, full, delta) = real_deltas().swap_remove(which);
            let restored = || {
                let mut op = op_with(&spec, Some(1));
                op.restore(&full).expect("restore");
                op
            };
            let _ = restored().apply_delta(&bytes);
            let mut framed = delta[..6 + keep * (delta.len() - 10) / 1000].to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut framed);
            let mut op = restored();
            if op.apply_delta(&framed).is_ok() {
                // Whatever it holds, the operator carries on.
                let _ = op.watermark(0, WM_MAX - 1);
                let _ = op.finish();
                let _ = op.take_results();
            }
        }
    }

    /// With RocksDB: the snapshot holds the spilled windows, so the restored operator
    /// needs nothing of the snapshotted one's database, which is gone.
    #[test]
    fn a_snapshot_of_rocksdb_spilled_state_is_self_contained() {
        use crate::run::spill::RocksStore;
        let raw: Vec<(usize, i64, i64, i64, bool, bool)> = (0..150)
            .map(|i: usize| {
                (i * 5 % 19, i as i64, (i as i64 * 6_007) % 20_000, (i as i64 * 37) % 3_000, false, i % 4 == 1)
            })
            .collect();
        for (window, session) in [(Window::Tumbling { size_ms: 1_000 }, false), (Window::Session { gap_ms: 500 }, true)]
        {
            let spec = rich_spec(window, 700, Some(300));
            let steps = steps(&raw, 9, session);
            let k = steps.len() / 2;
            let mut want = Output::default();
            let mut a = op_with(&spec, None);
            for s in &steps {
                step(&mut a, s, &mut want);
            }
            finish(&mut a, &mut want);
            let rocks = |dir: &std::path::Path| {
                let store = RocksStore::open(&dir.join("db"), "window-0").expect("open");
                WindowOp::new(spec.clone(), &input(), 2).with_store(Box::new(store), 4)
            };
            let mut got = Output::default();
            let snap = {
                let dir = tempfile::tempdir().expect("dir");
                let mut b = rocks(dir.path());
                for s in &steps[..k] {
                    step(&mut b, s, &mut got);
                }
                assert!(b.state_size().1 > 0, "spilled");
                b.snapshot().expect("snapshot")
            };
            let dir = tempfile::tempdir().expect("dir");
            let mut c = rocks(dir.path());
            c.restore(&snap).expect("restore");
            for s in &steps[k..] {
                step(&mut c, s, &mut got);
            }
            finish(&mut c, &mut got);
            assert_eq!(got.sorted(), want.sorted());
        }
    }
}
